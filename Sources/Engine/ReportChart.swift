import Foundation

/// report.svg: one panel with the achieved sparsity of every pruned layer (bars, colored by
/// module kind, grouped by decoder block, the target as a dashed line), and, when the
/// method measured it, one panel with each layer's reconstruction error on a log axis.
/// Layers run left to right in model order; block numbers label the x axis. With
/// `allocation: error_budget`, a last panel draws every layer's error curve (relative
/// error against sparsity, log axis) with a dot at the level it got; with `allocation:
/// evolutionary`, one with the parent's fitness per generation; with `train:`, one with the
/// accuracy per epoch.
struct ReportChart {
    let layers: [JobReport.Layer]
    let target: Double
    var search: Manifest.Search? = nil
    var training: Manifest.Training? = nil

    /// tab10, the matplotlib default: distinguishable, and readable when printed grey.
    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    private let left = 72, right = 24, top = 92, panelHeight = 190, panelGap = 78
    /// Width of one layer's slot and the extra gap between blocks.
    private var slot: Int { layers.count > 120 ? 5 : layers.count > 40 ? 8 : 20 }
    private let blockGap = 6

    /// Module kinds in the order they first appear (a block's q, k, v, o, gate, up, down).
    var kinds: [String] {
        var seen: [String] = []
        for l in layers where !seen.contains(l.kind) { seen.append(l.kind) }
        return seen
    }

    /// Each layer's x (left edge of its bar).
    var positions: [Int] {
        var x = left + blockGap, out: [Int] = []
        for (i, l) in layers.enumerated() {
            if i > 0, l.block != layers[i - 1].block { x += blockGap }
            out.append(x)
            x += slot
        }
        return out
    }

    var width: Int { max(640, (positions.last ?? left) + slot + blockGap + right) }
    var hasErrors: Bool { layers.contains { $0.reconstructionError.map { $0 > 0 && $0.isFinite } ?? false } }
    var hasCurves: Bool { layers.contains { $0.errorCurve.map { $0.contains { $0.error > 0 && $0.error.isFinite } } ?? false } }
    var hasSearch: Bool { (search?.generations.filter { $0.fitness.isFinite }.count ?? 0) > 0 }
    var hasTraining: Bool { !(training?.epochs.isEmpty ?? true) }
    private var panels: Int { 1 + (hasErrors ? 1 : 0) + (hasCurves ? 1 : 0) + (hasSearch ? 1 : 0) + (hasTraining ? 1 : 0) }
    var height: Int { top + panels * (panelHeight + 44) + (panels - 1) * panelGap + 36 }

    func svg() -> String {
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" "
        s += "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        guard !layers.isEmpty else { return s + "<text x=\"\(left)\" y=\"\(top)\">no layer was pruned</text>\n</svg>\n" }
        s += legend()
        s += sparsityPanel(y0: top)
        var y0 = top + panelHeight + 44 + panelGap
        if hasErrors {
            s += errorPanel(y0: y0)
            y0 += panelHeight + 44 + panelGap
        }
        if hasCurves {
            s += curvePanel(y0: y0)
            y0 += panelHeight + 44 + panelGap
        }
        if hasSearch {
            s += searchPanel(y0: y0)
            y0 += panelHeight + 44 + panelGap
        }
        if hasTraining { s += trainingPanel(y0: y0) }
        return s + "</svg>\n"
    }

    private func color(_ kind: String) -> String {
        ReportChart.palette[(kinds.firstIndex(of: kind) ?? 0) % ReportChart.palette.count]
    }

    private func legend() -> String {
        var s = "<text x=\"\(left)\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Pruned layers, in model order</text>\n"
        var x = left
        for kind in kinds {
            s += "<rect x=\"\(x)\" y=\"36\" width=\"12\" height=\"12\" fill=\"\(color(kind))\"/>"
            s += "<text x=\"\(x + 16)\" y=\"46\">\(escape(kind))</text>\n"
            x += 30 + 8 * kind.count
        }
        return s
    }

    /// Axes, the x labels (block numbers) and a title for a panel whose plot area starts at y0.
    private func frame(y0: Int, title: String, yLabel: String) -> String {
        let x1 = width - right, y1 = y0 + panelHeight
        var s = "<text x=\"\(left)\" y=\"\(y0 - 14)\" font-size=\"13\" font-weight=\"bold\">\(escape(title))</text>\n"
        s += "<line x1=\"\(left)\" y1=\"\(y1)\" x2=\"\(x1)\" y2=\"\(y1)\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(left)\" y1=\"\(y0)\" x2=\"\(left)\" y2=\"\(y1)\" stroke=\"black\"/>\n"
        s += "<text transform=\"translate(16 \(y0 + panelHeight / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        // Block numbers under each block's group of bars, thinned to keep them apart.
        let pos = positions
        var groups: [(block: Int, from: Int, to: Int)] = []
        for (i, l) in layers.enumerated() {
            guard let b = l.block else { continue }
            if let last = groups.last, last.block == b { groups[groups.count - 1].to = pos[i] + slot } else { groups.append((b, pos[i], pos[i] + slot)) }
        }
        let groupWidth = groups.map { $0.to - $0.from + blockGap }.max() ?? 1
        let every = max(1, Int((22.0 / Double(groupWidth)).rounded(.up)))
        for (i, g) in groups.enumerated() where i % every == 0 || i == groups.count - 1 {
            let cx = (g.from + g.to) / 2
            s += "<line x1=\"\(cx)\" y1=\"\(y1)\" x2=\"\(cx)\" y2=\"\(y1 + 4)\" stroke=\"black\"/>"
            s += "<text x=\"\(cx)\" y=\"\(y1 + 17)\" text-anchor=\"middle\">\(g.block)</text>\n"
        }
        let xTitle = groups.isEmpty ? "layer" : "decoder block"
        s += "<text x=\"\((left + x1) / 2)\" y=\"\(y1 + 36)\" text-anchor=\"middle\">\(xTitle)</text>\n"
        if groups.isEmpty {
            for (i, l) in layers.enumerated() {
                s += "<text x=\"\(pos[i] + slot / 2)\" y=\"\(y1 + 17)\" text-anchor=\"middle\" font-size=\"10\">\(escape(l.kind))</text>\n"
            }
        }
        return s
    }

    private func sparsityPanel(y0: Int) -> String {
        var s = frame(y0: y0, title: String(format: "Achieved sparsity per layer (dashed: target %.2f)", target), yLabel: "sparsity")
        let y1 = y0 + panelHeight
        func y(_ v: Double) -> Int { y1 - Int((v * Double(panelHeight)).rounded()) }
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            s += "<line x1=\"\(left)\" y1=\"\(y(tick))\" x2=\"\(width - right)\" y2=\"\(y(tick))\" stroke=\"#dddddd\"/>"
            s += "<text x=\"\(left - 6)\" y=\"\(y(tick) + 4)\" text-anchor=\"end\">\(String(format: "%.2f", tick))</text>\n"
        }
        let bar = max(1, slot - 1)
        for (i, l) in layers.enumerated() {
            let x = positions[i], top = y(min(max(l.achievedSparsity, 0), 1))
            s += "<rect x=\"\(x)\" y=\"\(top)\" width=\"\(bar)\" height=\"\(y1 - top)\" fill=\"\(color(l.kind))\">"
            s += "<title>\(escape(l.name)): \(String(format: "%.4f", l.achievedSparsity))</title></rect>\n"
        }
        s += "<line x1=\"\(left)\" y1=\"\(y(target))\" x2=\"\(width - right)\" y2=\"\(y(target))\" stroke=\"black\" stroke-dasharray=\"6 4\"/>\n"
        return s
    }

    private func errorPanel(y0: Int) -> String {
        var s = frame(y0: y0, title: "Reconstruction error ‖(W − Ŵ)X‖² per layer (log scale)", yLabel: "error")
        let logs = layers.compactMap { $0.reconstructionError.flatMap { $0 > 0 && $0.isFinite ? log10($0) : nil } }
        let lo = floor(logs.min()!), hi = max(ceil(logs.max()!), lo + 1)
        let y1 = y0 + panelHeight
        func y(_ v: Double) -> Int { y1 - Int(((v - lo) / (hi - lo) * Double(panelHeight)).rounded()) }
        let decades = Int(hi - lo)
        let step = max(1, (decades + 5) / 6)
        for d in stride(from: Int(lo), through: Int(hi), by: step) {
            s += "<line x1=\"\(left)\" y1=\"\(y(Double(d)))\" x2=\"\(width - right)\" y2=\"\(y(Double(d)))\" stroke=\"#dddddd\"/>"
            s += "<text x=\"\(left - 6)\" y=\"\(y(Double(d)) + 4)\" text-anchor=\"end\">1e\(d)</text>\n"
        }
        for (i, l) in layers.enumerated() {
            guard let e = l.reconstructionError, e > 0, e.isFinite else { continue }
            s += "<circle cx=\"\(positions[i] + max(1, slot - 1) / 2)\" cy=\"\(y(log10(e)))\" r=\"\(slot >= 8 ? 3 : 2)\" fill=\"\(color(l.kind))\">"
            s += "<title>\(escape(l.name)): \(String(format: "%.4g", e))</title></circle>\n"
        }
        return s
    }

    /// Relative error against sparsity for every layer: one thin line per layer in its
    /// kind's colour, a dot where its level lies.
    private func curvePanel(y0: Int) -> String {
        let x1 = width - right, y1 = y0 + panelHeight
        var s = axes(y0: y0, title: "Error curves: ‖(W − Ŵ)X‖² ÷ ‖WX‖² under Wanda's mask (log scale); dots: the chosen levels",
                     yLabel: "relative error", xLabel: "sparsity")
        let logs = layers.flatMap { $0.errorCurve ?? [] }.compactMap { $0.error > 0 && $0.error.isFinite ? log10($0.error) : nil }
        let lo = max(floor(logs.min()!), -8), hi = max(ceil(logs.max()!), lo + 1)
        func x(_ v: Double) -> Double { Double(left) + v * Double(x1 - left) }
        func y(_ e: Double) -> Double { Double(y1) - (min(max(log10(max(e, 1e-300)), lo), hi) - lo) / (hi - lo) * Double(panelHeight) }
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            s += "<line x1=\"\(Int(x(tick)))\" y1=\"\(y1)\" x2=\"\(Int(x(tick)))\" y2=\"\(y1 + 4)\" stroke=\"black\"/>"
            s += "<text x=\"\(Int(x(tick)))\" y=\"\(y1 + 17)\" text-anchor=\"middle\">\(String(format: "%.2f", tick))</text>\n"
        }
        let step = max(1, (Int(hi - lo) + 5) / 6)
        for d in stride(from: Int(lo), through: Int(hi), by: step) {
            let yd = Int(y(pow(10, Double(d))))
            s += "<line x1=\"\(left)\" y1=\"\(yd)\" x2=\"\(x1)\" y2=\"\(yd)\" stroke=\"#dddddd\"/>"
            s += "<text x=\"\(left - 6)\" y=\"\(yd + 4)\" text-anchor=\"end\">1e\(d)</text>\n"
        }
        for l in layers {
            // Points at sparsity 0 have no error to draw on a log axis.
            guard let curve = l.errorCurve?.filter({ $0.error > 0 }), !curve.isEmpty else { continue }
            let points = curve.map { String(format: "%.1f,%.1f", x($0.sparsity), y($0.error)) }.joined(separator: " ")
            s += "<polyline points=\"\(points)\" fill=\"none\" stroke=\"\(color(l.kind))\" stroke-opacity=\"0.45\" stroke-width=\"1\">"
            s += "<title>\(escape(l.name))</title></polyline>\n"
            let at = JobReport.interpolate(l.errorCurve!, at: l.targetSparsity)
            if at > 0 {
                s += "<circle cx=\"\(String(format: "%.1f", x(l.targetSparsity)))\" cy=\"\(String(format: "%.1f", y(at)))\" r=\"2.5\" fill=\"\(color(l.kind))\">"
                s += "<title>\(escape(l.name)): \(String(format: "%.4f", l.targetSparsity)), \(String(format: "%.4g", at))</title></circle>\n"
            }
        }
        return s
    }

    /// A panel's title, axes and axis labels, for a plot that is not by layer.
    private func axes(y0: Int, title: String, yLabel: String, xLabel: String) -> String {
        let x1 = width - right, y1 = y0 + panelHeight
        var s = "<text x=\"\(left)\" y=\"\(y0 - 14)\" font-size=\"13\" font-weight=\"bold\">\(escape(title))</text>\n"
        s += "<line x1=\"\(left)\" y1=\"\(y1)\" x2=\"\(x1)\" y2=\"\(y1)\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(left)\" y1=\"\(y0)\" x2=\"\(left)\" y2=\"\(y1)\" stroke=\"black\"/>\n"
        s += "<text transform=\"translate(16 \(y0 + panelHeight / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        return s + "<text x=\"\((left + x1) / 2)\" y=\"\(y1 + 36)\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
    }

    /// The parent's fitness (KL divergence from the dense model) after each generation.
    private func searchPanel(y0: Int) -> String {
        let points = (search?.generations ?? []).filter { $0.fitness.isFinite }
        return linePanel(y0: y0, title: "Evolutionary search: the parent's KL divergence from the dense model per generation",
                         yLabel: "KL (nats/token)", xLabel: "generation",
                         series: [("fitness", points.map { ($0.generation, $0.fitness, "generation \($0.generation): \(String(format: "%.5f", $0.fitness)) on \($0.tokens) tokens") })])
    }

    /// Training's accuracy per epoch: over the epoch's batches, and on the evaluation data.
    private func trainingPanel(y0: Int) -> String {
        let epochs = training?.epochs ?? []
        if epochs.contains(where: { $0.trainAccuracy == nil }) {
            // A language model: perplexities (train: over the epoch's batches).
            var series = [("train perplexity", epochs.map { ($0.epoch, exp($0.trainLoss), "epoch \($0.epoch): train perplexity \(String(format: "%.3f", exp($0.trainLoss)))") })]
            var test = epochs.compactMap { e in e.testPerplexity.map { (e.epoch, $0, "epoch \(e.epoch): evaluation perplexity \(String(format: "%.3f", $0))") } }
            if let p = training?.startPerplexity, !test.isEmpty { test.insert((0, p, "start (masked): evaluation perplexity \(String(format: "%.3f", p))"), at: 0) }
            if !test.isEmpty { series.append(("evaluation perplexity", test)) }
            return linePanel(y0: y0, title: "Fine-tuning: perplexity per epoch (train: over the epoch's batches; evaluation: the epoch's end weights)",
                             yLabel: "perplexity", xLabel: "epoch", series: series)
        }
        var series = [("train accuracy", epochs.map { ($0.epoch, $0.trainAccuracy ?? 0, "epoch \($0.epoch): train accuracy \(String(format: "%.4f", $0.trainAccuracy ?? 0)), loss \(String(format: "%.4f", $0.trainLoss))") })]
        let test = epochs.compactMap { e in e.testAccuracy.map { (e.epoch, $0, "epoch \(e.epoch): test accuracy \(String(format: "%.4f", $0))") } }
        if !test.isEmpty { series.append(("test accuracy", test)) }
        return linePanel(y0: y0, title: "Training: accuracy per epoch (train: over the epoch's batches; test: the epoch's end weights)",
                         yLabel: "accuracy", xLabel: "epoch", series: series)
    }

    /// A panel of lines over integer x (generations, epochs), one color per series, each
    /// point with a tooltip.
    private func linePanel(y0: Int, title: String, yLabel: String, xLabel: String, series: [(name: String, points: [(x: Int, y: Double, tip: String)])]) -> String {
        let x1 = width - right, y1 = y0 + panelHeight
        var s = axes(y0: y0, title: title, yLabel: yLabel, xLabel: xLabel)
        let values = series.flatMap { $0.points.map(\.y) }
        let lo = min(values.min()!, values.max()! - 1e-9), hi = values.max()!
        let pad = (hi - lo) * 0.08
        let first = series.flatMap { $0.points.map(\.x) }.min()!, last = max(series.flatMap { $0.points.map(\.x) }.max()!, first + 1)
        func x(_ g: Int) -> Double { Double(left) + Double(g - first) / Double(last - first) * Double(x1 - left - 8) + 4 }
        func y(_ v: Double) -> Double { Double(y1) - (v - lo + pad) / (hi - lo + 2 * pad) * Double(panelHeight) }
        for k in 0...4 {
            let v = lo - pad + Double(k) / 4 * (hi - lo + 2 * pad), yv = Int(y(v))
            s += "<line x1=\"\(left)\" y1=\"\(yv)\" x2=\"\(x1)\" y2=\"\(yv)\" stroke=\"#dddddd\"/>"
            s += "<text x=\"\(left - 6)\" y=\"\(yv + 4)\" text-anchor=\"end\">\(String(format: "%.3g", v))</text>\n"
        }
        let every = max(1, (last - first) / 10)
        for g in stride(from: first, through: last, by: every) {
            s += "<text x=\"\(Int(x(g)))\" y=\"\(y1 + 17)\" text-anchor=\"middle\">\(g)</text>\n"
        }
        for (k, line) in series.enumerated() {
            let color = ReportChart.palette[k % ReportChart.palette.count]
            s += "<polyline points=\"\(line.points.map { String(format: "%.1f,%.1f", x($0.x), y($0.y)) }.joined(separator: " "))\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\"/>\n"
            for p in line.points {
                s += "<circle cx=\"\(String(format: "%.1f", x(p.x)))\" cy=\"\(String(format: "%.1f", y(p.y)))\" r=\"2.5\" fill=\"\(color)\"><title>\(escape(p.tip))</title></circle>\n"
            }
            if series.count > 1 {
                s += "<text x=\"\(x1 - 4)\" y=\"\(y0 + 14 + 15 * k)\" text-anchor=\"end\" fill=\"\(color)\">\(escape(line.name))</text>\n"
            }
        }
        return s
    }

    private func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
