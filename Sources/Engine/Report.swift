import Foundation
import Pruning
import Tensors

/// `report.md`, `report.json` and `report.svg` in the job directory: what was pruned (the
/// model, its files' digests, the spec's digest, method and calibration settings), sizes
/// of dense/ and sparse/, the evaluation figures, wall time per phase, and per layer the
/// target and achieved sparsity and the reconstruction error. report.json is snake_case,
/// like manifest.json, with a format version.
public struct JobReport: Codable, Sendable {
    public static let formatName = "prune-cluster/report"
    public static let formatVersion = 2

    /// The checkpoint the job pruned.
    public struct Model: Codable, Sendable {
        public var path: String
        /// config.json's `architectures[0]` and `model_type` (mlp.json: "mlp").
        public var architecture: String?
        public var modelType: String?
        public var parameters: Int
        /// Shard file name → sha256.
        public var files: [String: String]
    }

    public struct Calibration: Codable, Sendable {
        public var data: String
        public var samples: Int
        public var tokens: Int
        public var mode: String
        public var seed: UInt64
        public var samplesPerTask: Int
    }

    public struct Sizes: Codable, Sendable {
        public var denseBytes: Int
        public var sparseBytes: Int
        public var sparseToDense: Double
        public var prunedDenseBytes: Int
        public var prunedSparseBytes: Int
        public var parameters: Int
        public var prunedParameters: Int
        /// Zero elements of the pruned tensors.
        public var zeros: Int
    }

    /// The evaluation of the dense and the pruned model on the same data.
    public struct Evaluation: Codable, Sendable {
        /// "perplexity" or "accuracy".
        public var metric: String
        public var data: String
        /// Tokens scored (perplexity) or examples classified (accuracy).
        public var count: Int
        public var dense: Double
        public var pruned: Double
    }

    public struct Layer: Codable, Sendable {
        public let name: String
        /// The decoder block (`layers.N.` in the name), nil outside blocks.
        public let block: Int?
        /// The module kind: the name's component before `.weight` (`q_proj`, `down_proj`, `fc1`).
        public let kind: String
        public let targetSparsity: Double
        public let achievedSparsity: Double
        public let reconstructionError: Double?
        /// The error ‖(W − Ŵ)X‖² before the layer's re-fit or swaps (`measures.reconstruction_error_before`).
        public var reconstructionErrorBefore: Double?
        /// `reconstruct: {scope: block}`: the loss of the layer's half (attention or MLP) on
        /// its calibration inputs, Σ (y − teacher)², before and after the block re-fit.
        public var blockLossBefore: Double?
        public var blockLoss: Double?
        /// `allocation: error_budget`: the layer's error ÷ its output energy under Wanda's
        /// mask at each measured sparsity.
        public var errorCurve: [CurvePoint]?
    }

    /// One point of a layer's error curve.
    public struct CurvePoint: Codable, Sendable, Equatable {
        public let sparsity: Double
        public let error: Double
    }

    public struct Phase: Codable, Sendable {
        public let name: String
        public let seconds: Double
        public init(name: String, seconds: Double) {
            self.name = name
            self.seconds = seconds
        }
    }

    public var format = JobReport.formatName
    public var formatVersion = JobReport.formatVersion
    public var specSHA256: String
    public var model: Model
    public var method: String
    public var pattern: String
    public var sparsity: Double
    public var calibration: Calibration?
    public var sizes: Sizes
    public var evaluation: Evaluation?
    /// In the order the phases ran.
    public var phases: [Phase]
    public var layers: [Layer]
    /// What the user should know about the job (a tied tensor pruned).
    public var warnings: [String] = []
    /// `allocation: evolutionary`: the parent's fitness per generation.
    public var search: Manifest.Search?
    /// `train:`: the loss and accuracy per epoch.
    public var training: Manifest.Training?
    /// A structured pattern's units (the smaller model).
    public var structure: Manifest.Structure?
    /// `speed:`: generation speed and memory of the dense and the pruned model.
    public var speed: Speed?

    /// Prefill and decode speed of both models on the project's forward pass (`GenerationSpeed`).
    public struct Speed: Codable, Sendable {
        public var prompt: Int
        public var decode: Int
        public var repeats: Int
        public var dense: GenerationSpeed
        public var pruned: GenerationSpeed
    }

    enum CodingKeys: String, CodingKey {
        case format, formatVersion, specSHA256 = "specSha256", model, method, pattern, sparsity, calibration, sizes, evaluation, phases, layers, warnings
        case search, training, structure, speed
    }

    /// `dense` and `pruned` are the evaluation's figures, when the job evaluated.
    public init(manifest: Manifest, spec: JobSpec, modelDirectory: String, phases: [Phase],
                dense: Evaluator.Measurement?, pruned: Evaluator.Measurement?) {
        specSHA256 = manifest.specSHA256
        let config = JobReport.modelIdentity(modelDirectory)
        model = Model(path: spec.model, architecture: config.architecture, modelType: config.modelType,
                      parameters: manifest.totals.parameters, files: manifest.modelFiles)
        method = manifest.method
        pattern = manifest.pattern
        sparsity = manifest.sparsity
        calibration = spec.calibration.map {
            Calibration(data: $0.data, samples: $0.samples, tokens: $0.tokens, mode: $0.mode.rawValue, seed: $0.seed, samplesPerTask: $0.samplesPerTask)
        }
        structure = manifest.structure
        let t = manifest.totals
        sizes = Sizes(denseBytes: t.denseBytes, sparseBytes: t.sparseBytes, sparseToDense: t.sparseToDenseRatio,
                      prunedDenseBytes: t.prunedDenseBytes, prunedSparseBytes: t.prunedSparseBytes, parameters: t.parameters,
                      prunedParameters: t.prunedParameters, zeros: t.zeros)
        let data = spec.evaluation?.data ?? ""
        switch (dense, pruned) {
        case let (.perplexity(d)?, .perplexity(p)?):
            evaluation = Evaluation(metric: "perplexity", data: data, count: p.tokens, dense: d.perplexity, pruned: p.perplexity)
        case let (.accuracy(d)?, .accuracy(p)?):
            evaluation = Evaluation(metric: "accuracy", data: data, count: p.examples, dense: d.accuracy, pruned: p.accuracy)
        default:
            evaluation = nil
        }
        self.phases = phases
        search = manifest.search
        training = manifest.training
        layers = manifest.tensors.filter(\.value.pruned).sorted { LayerOrder.less($0.key, $1.key) }.map {
            Layer(name: $0.key, block: LayerName.block($0.key), kind: LayerName.kind($0.key), targetSparsity: $0.value.targetSparsity ?? 0,
                  achievedSparsity: $0.value.achievedSparsity, reconstructionError: $0.value.reconstructionError,
                  reconstructionErrorBefore: $0.value.measures?["reconstruction_error_before"],
                  blockLossBefore: $0.value.measures?["block_loss_before"], blockLoss: $0.value.measures?["block_loss"],
                  errorCurve: ErrorCurveMeasures.relativeCurve($0.value.measures))
        }
    }

    /// A curve read at `sparsity`, linear between its points.
    static func interpolate(_ curve: [CurvePoint], at sparsity: Double) -> Double {
        LayerAllocation.interpolate(curve.map(\.error), levels: curve.map(\.sparsity), at: sparsity)
    }

    /// config.json's architecture and model type, or "mlp" for an MLP classifier.
    static func modelIdentity(_ directory: String) -> (architecture: String?, modelType: String?) {
        if MLPConfigFile.exists(in: directory) { return ("mlp", "mlp") }
        guard let data = FileManager.default.contents(atPath: (directory as NSString).appendingPathComponent("config.json")),
              let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { return (nil, nil) }
        return ((json["architectures"] as? [String])?.first, json["model_type"] as? String)
    }

    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }

    public func write(to directory: String) throws {
        try AtomicFileWriter.write([UInt8](try JobReport.encoder().encode(self)) + [0x0A], to: (directory as NSString).appendingPathComponent("report.json"))
        try AtomicFileWriter.write(Array(markdown().utf8), to: (directory as NSString).appendingPathComponent("report.md"))
        try AtomicFileWriter.write(Array(ReportChart(layers: layers, target: sparsity, search: search, training: training).svg().utf8),
                                   to: (directory as NSString).appendingPathComponent("report.svg"))
    }

    /// Both models' generation speed and memory, and the ratios, as markdown.
    private func speedSection(_ speed: Speed) -> String {
        var s = "Speed on the project's forward pass (a prompt of \(speed.prompt) tokens prefilled, \(speed.decode) decoded greedily, best of \(speed.repeats); "
        s += "weights at least half zero held in CSR):\n\n"
        s += "| model | parameters | weights MB | sparse weights | prefill tok/s | decode tok/s | resident MB | peak MB |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        for (name, r) in [("dense", speed.dense), ("pruned", speed.pruned)] {
            s += String(format: "| %@ | %d | %.1f | %d of %d | %.1f | %.2f | %.1f | %.1f |\n", name, r.parameters, Double(r.weightBytes) / 1e6,
                        r.sparseWeights, r.linearWeights, r.prefillTokensPerSecond, r.decodeTokensPerSecond,
                        Double(r.residentBytes) / 1e6, Double(r.peakBytes) / 1e6)
        }
        let d = speed.dense, p = speed.pruned
        s += String(format: "\nPruned against dense: prefill %.2f× as fast, decode %.2f× as fast, weights %.3f× the bytes.\n\n",
                    p.prefillTokensPerSecond / d.prefillTokensPerSecond, p.decodeTokensPerSecond / d.decodeTokensPerSecond,
                    Double(p.weightBytes) / Double(max(d.weightBytes, 1)))
        return s
    }

    /// dense/ and sparse/ sizes and the zeros, as markdown.
    private func sizesTable() -> String {
        var s = ""
        s += "| output | bytes | of dense |\n|---|---:|---:|\n"
        s += "| dense/ | \(sizes.denseBytes) | 1.000 |\n"
        s += "| sparse/ | \(sizes.sparseBytes) | \(String(format: "%.3f", sizes.sparseToDense)) |\n"
        let prunedRatio = Double(sizes.prunedSparseBytes) / Double(max(sizes.prunedDenseBytes, 1))
        s += "| pruned tensors in dense/ | \(sizes.prunedDenseBytes) | |\n"
        s += "| pruned tensors in sparse/ | \(sizes.prunedSparseBytes) | \(String(format: "%.3f", prunedRatio)) of theirs |\n\n"
        s += "\(sizes.prunedParameters) of \(sizes.parameters) parameters pruned; "
        s += "\(String(format: "%.2f", 100 * Double(sizes.zeros) / Double(max(sizes.prunedParameters, 1))))% of them zero.\n\n"
        return s
    }

    public func markdown() -> String {
        var s = "# Pruning report\n\n"
        let identity = [model.architecture, model.modelType].compactMap { $0 }.joined(separator: ", ")
        s += "Model `\(model.path)`" + (identity.isEmpty ? "" : " (\(identity))")
        s += ": \(model.parameters) parameters in \(model.files.count) file(s). Spec sha256 `\(specSHA256.prefix(16))…`.\n\n"
        // heads+channels: each kind has its own fraction.
        let parts = structure?.allParts(sparsity: sparsity) ?? []
        let target = structure?.allocation != nil
            ? String(format: "%.2f of the units' parameters (allocation global%@)", sparsity, structure?.standardization == "robust" ? ", robust standardization" : "")
            : parts.count > 1 ? parts.map { "\($0.kind) \(String(format: "%.2f", $0.sparsity))" }.joined(separator: ", ")
            : String(format: "%.2f", sparsity)
        s += "Method \(method), pattern \(pattern), target sparsity \(target).\n\n"
        for w in warnings { s += "**Warning:** \(w).\n\n" }
        if let c = calibration {
            s += "Calibration: `\(c.data)`, \(c.samples) samples × \(c.tokens) tokens, \(c.mode) mode, seed \(c.seed), "
            s += "\(c.samplesPerTask) samples per task.\n\n"
        }
        if let u = structure {
            let fewer = 100 * Double(u.parametersBefore - u.parametersAfter) / Double(max(u.parametersBefore, 1))
            s += "Structured: \(u.allocation == nil ? "every block keeps" : "blocks keep") \(u.keptText(sparsity: sparsity)) (scored by \(u.score)); "
            s += "dense/ is the smaller model, \(u.parametersAfter) of \(u.parametersBefore) parameters (\(String(format: "%.1f", fewer))% fewer), "
            s += "\(sizes.denseBytes) bytes; there is no sparse/.\n\n"
            // A global allocation's widths, block by block (config.json's *_per_layer lists).
            let perLayer = parts.compactMap { p in p.keptPerLayer.map { (p.kind, p.unitsPerBlock, $0) } }
            if let blocks = perLayer.first?.2.count, u.allocation != nil {
                s += "| block | " + perLayer.map { "\($0.0) kept (of \($0.1))" }.joined(separator: " | ") + " |\n|---|" + perLayer.map { _ in "---:|" }.joined() + "\n"
                for b in 0..<blocks { s += "| \(b) | " + perLayer.map { String($0.2[b]) }.joined(separator: " | ") + " |\n" }
                s += "\n"
            }
        } else {
            s += sizesTable()
        }
        if let e = evaluation {
            let unit = e.metric == "perplexity" ? "tokens" : "examples"
            let title = e.metric == "perplexity" ? "perplexity" : "top-1 accuracy"
            let f = e.metric == "perplexity" ? "%.3f" : "%.4f"
            s += "| evaluation (\(e.count) \(unit)) | \(title) |\n|---|---:|\n"
            s += "| dense | \(String(format: f, e.dense)) |\n| pruned | \(String(format: f, e.pruned)) |\n\n"
        }
        if let speed { s += speedSection(speed) }
        s += "| phase | seconds |\n|---|---:|\n" + phases.map { "| \($0.name) | \(String(format: "%.2f", $0.seconds)) |" }.joined(separator: "\n") + "\n\n"
        if let search, let first = search.generations.first, let last = search.generations.last {
            let evaluations = search.generations.reduce(0) { $0 + $1.candidates }
            s += "Evolutionary search: \(search.generations.count - 1) generations after the start points, \(evaluations) candidate evaluations, "
            s += "levels in steps of \(Int(search.stepWeights.rounded())) weights (at most \(search.levels) each way). The parent's KL divergence "
            s += "from the dense model (each generation on its own sample of \(last.tokens) calibration tokens): "
            s += "\(String(format: "%.4f", first.fitness)) at the start, \(String(format: "%.4f", last.fitness)) at the end (report.svg draws every generation).\n\n"
        }
        if let training {
            s += "Training: \(training.optimizer) at learning rate \(training.learningRate), batches of \(training.batch) in \(training.shards) gradient tasks, "
            s += "\(training.stepsPerEpoch) steps an epoch over \(training.examples) examples (report.svg draws the curve).\n\n"
            func cell(_ v: Double?, _ format: String = "%.4f") -> String { v.map { String(format: format, $0) } ?? "–" }
            if training.epochs.contains(where: { $0.testPerplexity != nil }) || training.startPerplexity != nil {
                // A language model: loss per scored token, perplexity on the evaluation windows.
                s += "| epoch | train loss | train perplexity | evaluation perplexity |\n|---:|---:|---:|---:|\n"
                if let p = training.startPerplexity { s += "| start (masked) | – | – | \(cell(p, "%.3f")) |\n" }
                for e in training.epochs {
                    s += "| \(e.epoch) | \(cell(e.trainLoss)) | \(cell(exp(e.trainLoss), "%.3f")) | \(cell(e.testPerplexity, "%.3f")) |\n"
                }
            } else {
                s += "| epoch | sparsity | train loss | train accuracy | test accuracy |\n|---:|---:|---:|---:|---:|\n"
                for e in training.epochs {
                    s += "| \(e.epoch) | \(cell(e.sparsity, "%.3f")) | \(cell(e.trainLoss)) | \(cell(e.trainAccuracy)) | \(cell(e.testAccuracy)) |\n"
                }
            }
            s += "\n"
            if let a = training.adaptive { s += adaptiveSection(a) }
        }
        s += "![sparsity and reconstruction error by layer](report.svg)\n\n"
        let curves = layers.contains { $0.errorCurve != nil }
        if curves {
            s += "Levels by error budget: each layer's error ‖(W − Ŵ)X‖² ÷ ‖WX‖² under Wanda's mask was measured at "
            s += "\(layers.compactMap(\.errorCurve).first!.count) sparsities (report.svg draws the curves); the last column reads "
            s += "the curve at the layer's level.\n\n"
        }
        // Error before and after a re-fit or swaps; the block re-fit's half losses.
        let before = layers.contains { $0.reconstructionErrorBefore != nil }, blocks = layers.contains { $0.blockLoss != nil }
        if blocks {
            s += "The block re-fit trains each block's attention and MLP halves: a layer's last two columns are its half's loss "
            s += "Σ (y − teacher)² on the calibration tokens before and after (the same for every layer of a half).\n\n"
        }
        func number(_ x: Double?) -> String { x.map { String(format: "%.4g", $0) } ?? "–" }
        s += "| layer | block | kind | target | achieved |" + (before ? " error before |" : "") + " reconstruction error |"
        s += (blocks ? " half's loss before | half's loss after |" : "") + (curves ? " relative error on curve |" : "")
        s += "\n|---|---:|---|---:|---:|" + (before ? "---:|" : "") + "---:|" + (blocks ? "---:|---:|" : "") + (curves ? "---:|" : "") + "\n"
        for l in layers {
            s += "| \(l.name) | \(l.block.map(String.init) ?? "–") | \(l.kind) | \(String(format: "%.4f", l.targetSparsity)) | "
            s += "\(String(format: "%.4f", l.achievedSparsity)) |" + (before ? " \(number(l.reconstructionErrorBefore)) |" : "") + " \(number(l.reconstructionError)) |"
            if blocks { s += " \(number(l.blockLossBefore)) | \(number(l.blockLoss)) |" }
            if curves { s += " \(l.errorCurve.map { String(format: "%.4g", JobReport.interpolate($0, at: l.targetSparsity)) } ?? "–") |" }
            s += "\n"
        }
        return s
    }
}

/// Where an MLP classifier's config lives (Engine cannot see Models' MLPConfig here).
enum MLPConfigFile {
    static func exists(in directory: String) -> Bool {
        FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent("mlp.json"))
    }
}

/// What a pruned tensor's name says about where it sits.
enum LayerName {
    /// N of `….layers.N.…` (or `….h.N.…`, `….blocks.N.…`), nil outside numbered blocks.
    static func block(_ name: String) -> Int? {
        let parts = name.split(separator: ".")
        for (i, p) in parts.enumerated() where i + 1 < parts.count && ["layers", "layer", "h", "blocks", "block"].contains(p) {
            if let n = Int(parts[i + 1]) { return n }
        }
        return nil
    }

    /// The module kind: the component before a trailing `.weight` (`q_proj`), else the last.
    static func kind(_ name: String) -> String {
        var parts = name.split(separator: ".")
        if parts.count > 1, parts.last == "weight" { parts.removeLast() }
        return String(parts.last ?? Substring(name))
    }
}

/// Orders tensor names as a model's layers run: numbers compared as numbers, and within a
/// Llama-family block the projections in the order the forward pass runs them.
enum LayerOrder {
    /// Attention before MLP, and q, k, v, o; gate, up, down.
    static let runOrder = ["self_attn": 0, "mlp": 1, "q_proj": 0, "k_proj": 1, "v_proj": 2, "o_proj": 3,
                           "gate_proj": 0, "up_proj": 1, "down_proj": 2]

    static func less(_ a: String, _ b: String) -> Bool {
        let pa = a.split(separator: "."), pb = b.split(separator: ".")
        for (x, y) in zip(pa, pb) where x != y {
            if let i = Int(x), let j = Int(y) { return i < j }
            if let i = runOrder[String(x)], let j = runOrder[String(y)] { return i < j }
            return x < y
        }
        return pa.count < pb.count
    }
}

extension JobReport {
    /// An adaptive schedule's rounds: level, validation accuracy, and the level it chose.
    func adaptiveSection(_ a: Manifest.Training.Adaptive) -> String {
        var s = "Adaptive schedule: a round meets the budget when its accuracy on the \(a.validationExamples) held-out training examples "
        s += "is at least the start's \(String(format: "%.4f", a.referenceAccuracy)) − \(String(format: "%.4f", a.budget)). "
        if let r = a.chosenRound {
            s += "**Highest sparsity within the budget: \(String(format: "%.3f", a.sparsity))** (round \(r)'s weights and masks were written).\n\n"
        } else {
            s += "**No round met the budget**; the last round's weights (sparsity \(String(format: "%.3f", a.sparsity))) were written.\n\n"
        }
        s += "| round | sparsity | pruned from | validation accuracy | within budget |\n|---:|---:|---|---:|---|\n"
        for r in a.rounds {
            s += "| \(r.round) | \(String(format: "%.3f", r.sparsity)) | \(r.baseRound < 0 ? "start" : "round \(r.baseRound)") | "
            s += "\(r.validationAccuracy.map { String(format: "%.4f", $0) } ?? "–") | \(r.met.map { $0 ? "yes" : "no" } ?? "–") |\n"
        }
        return s + "\n"
    }
}
