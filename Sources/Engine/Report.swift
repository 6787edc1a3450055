import Foundation
import Tensors

/// `report.md`, `report.json` and `report.svg` in the job directory: per layer the target
/// and achieved sparsity and the reconstruction error; sizes of dense/ and sparse/; the
/// evaluation figures; wall time per phase.
public struct JobReport: Codable, Sendable {
    public struct Layer: Codable, Sendable {
        public let name: String
        public let targetSparsity: Double
        public let achievedSparsity: Double
        public let reconstructionError: Double?
    }

    public var method: String
    public var pattern: String
    public var sparsity: Double
    public var layers: [Layer]
    public var denseBytes: Int
    public var sparseBytes: Int
    public var sparseToDense: Double
    /// Perplexity evaluation (Llama-family models); absent otherwise.
    public var densePerplexity: Double?
    public var prunedPerplexity: Double?
    public var evaluatedTokens: Int?
    /// Top-1 accuracy evaluation (MLP classifiers); absent otherwise.
    public var denseAccuracy: Double?
    public var prunedAccuracy: Double?
    public var evaluatedExamples: Int?
    /// Phase name → seconds, in the order the phases ran.
    public var phases: [Phase]

    public struct Phase: Codable, Sendable {
        public let name: String
        public let seconds: Double
        public init(name: String, seconds: Double) {
            self.name = name
            self.seconds = seconds
        }
    }

    /// `dense` and `pruned` are the evaluation's figures, when the job evaluated.
    public init(manifest: Manifest, phases: [Phase], dense: Evaluator.Measurement?, pruned: Evaluator.Measurement?) {
        method = manifest.method
        pattern = manifest.pattern
        sparsity = manifest.sparsity
        layers = manifest.tensors.filter(\.value.pruned).sorted { LayerOrder.less($0.key, $1.key) }.map {
            Layer(name: $0.key, targetSparsity: $0.value.targetSparsity ?? 0, achievedSparsity: $0.value.achievedSparsity,
                  reconstructionError: $0.value.reconstructionError)
        }
        denseBytes = manifest.totals.denseBytes
        sparseBytes = manifest.totals.sparseBytes
        sparseToDense = manifest.totals.sparseToDenseRatio
        for (measurement, isDense) in [(dense, true), (pruned, false)] {
            switch measurement {
            case .perplexity(let r):
                if isDense { densePerplexity = r.perplexity } else { prunedPerplexity = r.perplexity }
                evaluatedTokens = r.tokens
            case .accuracy(let a):
                if isDense { denseAccuracy = a.accuracy } else { prunedAccuracy = a.accuracy }
                evaluatedExamples = a.examples
            case nil:
                break
            }
        }
        self.phases = phases
    }

    public func write(to directory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFileWriter.write([UInt8](try encoder.encode(self)) + [0x0A], to: (directory as NSString).appendingPathComponent("report.json"))
        try AtomicFileWriter.write(Array(markdown().utf8), to: (directory as NSString).appendingPathComponent("report.md"))
        try AtomicFileWriter.write(Array(svg().utf8), to: (directory as NSString).appendingPathComponent("report.svg"))
    }

    public func markdown() -> String {
        var s = "# Pruning report\n\n"
        s += "Method \(method), pattern \(pattern), target sparsity \(String(format: "%.2f", sparsity)).\n\n"
        s += "| output | bytes |\n|---|---:|\n| dense/ | \(denseBytes) |\n| sparse/ | \(sparseBytes) (\(String(format: "%.3f", sparseToDense))× dense) |\n\n"
        if densePerplexity != nil || prunedPerplexity != nil {
            s += "| evaluation (\(evaluatedTokens ?? 0) tokens) | perplexity |\n|---|---:|\n"
            if let d = densePerplexity { s += "| dense | \(String(format: "%.3f", d)) |\n" }
            if let p = prunedPerplexity { s += "| pruned | \(String(format: "%.3f", p)) |\n" }
            s += "\n"
        }
        if denseAccuracy != nil || prunedAccuracy != nil {
            s += "| evaluation (\(evaluatedExamples ?? 0) examples) | top-1 accuracy |\n|---|---:|\n"
            if let d = denseAccuracy { s += "| dense | \(String(format: "%.4f", d)) |\n" }
            if let p = prunedAccuracy { s += "| pruned | \(String(format: "%.4f", p)) |\n" }
            s += "\n"
        }
        s += "| phase | seconds |\n|---|---:|\n" + phases.map { "| \($0.name) | \(String(format: "%.2f", $0.seconds)) |" }.joined(separator: "\n") + "\n\n"
        s += "![sparsity and error by layer](report.svg)\n\n"
        s += "| layer | target | achieved | reconstruction error |\n|---|---:|---:|---:|\n"
        for l in layers {
            s += "| \(l.name) | \(String(format: "%.4f", l.targetSparsity)) | \(String(format: "%.4f", l.achievedSparsity)) | \(l.reconstructionError.map { String(format: "%.4g", $0) } ?? "–") |\n"
        }
        return s
    }

    /// Bars: achieved sparsity per layer (left axis, 0–1); dots: log10 reconstruction error.
    public func svg() -> String {
        let width = max(400, 12 * layers.count + 80), height = 260, left = 50, top = 20, plotH = 200
        let barW = max(2, (width - left - 20) / max(layers.count, 1) - 2)
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" font-family=\"sans-serif\" font-size=\"10\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(left)\" y=\"12\">achieved sparsity per layer (bars, 0–1); log10 reconstruction error (dots)</text>\n"
        s += "<line x1=\"\(left)\" y1=\"\(top + plotH)\" x2=\"\(width - 10)\" y2=\"\(top + plotH)\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(top + plotH)\" stroke=\"black\"/>\n"
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let y = top + plotH - Int(tick * Double(plotH))
            s += "<text x=\"\(left - 30)\" y=\"\(y + 3)\">\(String(format: "%.2f", tick))</text>\n"
        }
        let errors = layers.compactMap { $0.reconstructionError.map { log10(max($0, 1e-30)) } }
        let lo = errors.min() ?? 0, hi = errors.max() ?? 1
        for (i, l) in layers.enumerated() {
            let x = left + 4 + i * (barW + 2)
            let h = Int(l.achievedSparsity * Double(plotH))
            s += "<rect x=\"\(x)\" y=\"\(top + plotH - h)\" width=\"\(barW)\" height=\"\(h)\" fill=\"#4a7ebb\"><title>\(l.name): \(String(format: "%.4f", l.achievedSparsity))</title></rect>\n"
            if let e = l.reconstructionError {
                let v = hi > lo ? (log10(max(e, 1e-30)) - lo) / (hi - lo) : 0.5
                s += "<circle cx=\"\(x + barW / 2)\" cy=\"\(top + plotH - Int(v * Double(plotH)))\" r=\"2.5\" fill=\"#d9534f\"><title>\(l.name): error \(String(format: "%.4g", e))</title></circle>\n"
            }
        }
        return s + "</svg>\n"
    }
}

/// Orders tensor names as a model's layers run: numbers compared as numbers.
enum LayerOrder {
    static func less(_ a: String, _ b: String) -> Bool {
        let pa = a.split(separator: "."), pb = b.split(separator: ".")
        for (x, y) in zip(pa, pb) where x != y {
            if let i = Int(x), let j = Int(y) { return i < j }
            return x < y
        }
        return pa.count < pb.count
    }
}
