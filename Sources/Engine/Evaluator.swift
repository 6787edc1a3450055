import Foundation
import Models
import Tensors

/// Quality of a model on held-out data: perplexity of a Llama-family checkpoint on token
/// windows (computed block by block, each block loaded once for all windows), or top-1
/// accuracy of an MLP classifier on labelled examples. `compare` picks by what the model
/// directory holds.
public enum Evaluator {
    public struct Result: Codable, Sendable, Equatable {
        public let perplexity: Double
        public let tokens: Int
        public let seconds: Double
    }

    /// Top-1 accuracy of an MLP classifier.
    public struct Accuracy: Codable, Sendable, Equatable {
        /// correct / examples.
        public let accuracy: Double
        public let correct: Int
        public let examples: Int
        public let seconds: Double
    }

    /// One evaluation's figure, by the kind of model.
    public enum Measurement: Sendable, Equatable {
        case perplexity(Result)
        case accuracy(Accuracy)
    }

    /// What a model directory is evaluated by.
    public enum Metric: String, Sendable {
        /// Llama-family models (`config.json`).
        case perplexity
        /// MLP classifiers (`mlp.json`).
        case accuracy

        /// `mlp.json` means accuracy, otherwise `config.json` means perplexity.
        public static func of(modelDirectory: String) throws -> Metric {
            if MLPConfig.exists(in: modelDirectory) { return .accuracy }
            if FileManager.default.fileExists(atPath: (modelDirectory as NSString).appendingPathComponent("config.json")) { return .perplexity }
            throw SpecError("\(modelDirectory): cannot evaluate: neither mlp.json (an MLP classifier: accuracy) nor config.json (a Llama-family model: perplexity)")
        }
    }

    /// Dense and pruned models measured on the same data.
    public struct Comparison: Sendable, Equatable {
        public let dense: Measurement
        public let pruned: Measurement

        /// One line for the terminal, e.g. `perplexity on 8192 tokens: dense 10.630, pruned 65.090 (6.12× dense)`
        /// or `accuracy on 10000 examples: dense 0.8728, pruned 0.8525 (-2.03 points; 8728 → 8525 correct)`.
        public var summary: String {
            switch (dense, pruned) {
            case let (.perplexity(d), .perplexity(p)):
                return String(format: "perplexity on %d tokens: dense %.3f, pruned %.3f (%.2f× dense)", p.tokens, d.perplexity,
                              p.perplexity, p.perplexity / d.perplexity)
            case let (.accuracy(d), .accuracy(p)):
                return String(format: "accuracy on %d examples: dense %.4f, pruned %.4f (%+.2f points; %d → %d correct)",
                              p.examples, d.accuracy, p.accuracy, 100 * (p.accuracy - d.accuracy), d.correct, p.correct)
            default:
                return "dense and pruned were measured differently"
            }
        }
    }

    /// Evaluates the dense model in `original` and the pruned one in `pruned` on `data`:
    /// accuracy on labelled examples for an MLP (`samples`: first examples, nil for all;
    /// `tokens` unused), perplexity for a Llama-family model (`samples` windows, 32 when
    /// nil, of `tokens` tokens).
    public static func compare(original: String, pruned: String, data: String, samples: Int?, tokens: Int, quiet: Bool) throws -> Comparison {
        do {
            switch try Metric.of(modelDirectory: original) {
            case .accuracy:
                let examples = try LabelledData.load(data, limit: samples)
                let dense = try accuracy(modelDirectory: original, data: examples, label: "evaluate dense", quiet: quiet)
                let prunedResult = try accuracy(modelDirectory: pruned, data: examples, label: "evaluate pruned", quiet: quiet)
                return Comparison(dense: .accuracy(dense), pruned: .accuracy(prunedResult))
            case .perplexity:
                let windows = try windows(data: data, modelDirectory: original, samples: samples ?? 32, tokens: tokens)
                let dense = try perplexity(modelDirectory: original, windows: windows, label: "evaluate dense", quiet: quiet)
                let prunedResult = try perplexity(modelDirectory: pruned, windows: windows, label: "evaluate pruned", quiet: quiet)
                return Comparison(dense: .perplexity(dense), pruned: .perplexity(prunedResult))
            }
        } catch let e as ModelError {
            throw SpecError(e.description)
        }
    }

    /// Checks a spec's evaluation inputs before the job starts, so that bad data fails
    /// the job before anything is written rather than after the pruning: for perplexity,
    /// config.json (against the checkpoint) and the windows (against the vocabulary);
    /// for accuracy, mlp.json and the labelled examples' format.
    public static func checkInputs(spec: JobSpec, modelDirectory: String) throws {
        guard let e = spec.evaluation else { return }
        do {
            switch try Metric.of(modelDirectory: modelDirectory) {
            case .accuracy:
                _ = try MLPConfig.load(modelDirectory)
                let examples = try LabelledData.load(e.data, limit: e.samples)
                try checkExamples(examples, model: try MLPModel(directory: modelDirectory), modelDirectory: modelDirectory)
            case .perplexity:
                let configPath = (modelDirectory as NSString).appendingPathComponent("config.json")
                let config = try LlamaConfig.parse(bytes: LlamaConfig.readConfig(configPath), file: configPath)
                try config.validate(against: try Checkpoint(path: modelDirectory), file: configPath)
                try config.checkSequenceLength(e.tokens, what: "evaluation.tokens")
                let w = try windows(data: e.data, modelDirectory: modelDirectory, samples: e.samples ?? 32, tokens: e.tokens)
                try CalibrationData.check(w, vocabularySize: config.vocabSize, source: e.data)
            }
        } catch let e as ModelError {
            throw SpecError(e.description)
        }
    }

    /// Labelled examples fit the classifier: its input width, labels among its classes.
    static func checkExamples(_ data: LabelledData, model: MLPModel, modelDirectory: String) throws {
        let configFile = (modelDirectory as NSString).appendingPathComponent(MLPConfig.fileName)
        guard data.width == model.config.input else {
            throw SpecError("\(data.source): examples have \(data.width) features but \(configFile) expects 'input' \(model.config.input)")
        }
        if let bad = data.labels.firstIndex(where: { $0 >= model.classes }) {
            throw SpecError("\(data.source): label \(data.labels[bad]) of example \(bad) is outside the \(model.classes) classes of \(configFile)")
        }
        guard data.count > 0 else { throw SpecError("\(data.source): no examples to evaluate on") }
    }

    /// Examples per forward pass when measuring accuracy.
    public static let accuracyBatch = 1024

    /// Top-1 accuracy of the MLP in `modelDirectory` on labelled examples.
    public static func accuracy(modelDirectory: String, data: LabelledData, label: String, quiet: Bool) throws -> Accuracy {
        let start = Date()
        let model = try MLPModel(directory: modelDirectory)
        try checkExamples(data, model: model, modelDirectory: modelDirectory)
        let batches = (data.count + accuracyBatch - 1) / accuracyBatch
        let progress = ProgressReporter(label: label, total: batches, quiet: quiet)
        var correct = 0
        for b in 0..<batches {
            let rows = min(accuracyBatch, data.count - b * accuracyBatch)
            let first = b * accuracyBatch
            let x = Array(data.inputs[(first * data.width)..<((first + rows) * data.width)])
            let logits = try model.forward(x, rows: rows)
            let predicted = MLPModel.argmax(logits, rows: rows, classes: model.classes)
            for r in 0..<rows where predicted[r] == data.labels[first + r] { correct += 1 }
            progress.step("batch \(b)")
        }
        return Accuracy(accuracy: Double(correct) / Double(data.count), correct: correct, examples: data.count,
                        seconds: Date().timeIntervalSince(start))
    }

    public static func perplexity(modelDirectory: String, windows: [[Int32]], label: String, quiet: Bool) throws -> Result {
        try perplexity(model: try LlamaModel(directory: modelDirectory), windows: windows, label: label, quiet: quiet)
    }

    /// Perplexity of a model (its store may override tensors: weights a job trained).
    public static func perplexity(model: LlamaModel, windows: [[Int32]], label: String, quiet: Bool) throws -> Result {
        let start = Date()
        let c = model.config
        guard let t = windows.first?.count, t > 1 else { throw SpecError("evaluation needs windows of at least 2 tokens") }
        try c.checkSequenceLength(t, what: "evaluation tokens")
        try CalibrationData.check(windows, vocabularySize: c.vocabSize, source: "evaluation data")
        let rope = RotaryTable(headDim: c.headDim, theta: c.ropeTheta, maxTokens: t)
        var hidden = try windows.map { try model.embed($0) }
        let progress = ProgressReporter(label: label, total: c.layers + 1, quiet: quiet)
        for b in 0..<c.layers {
            let block = try model.block(b)
            for s in hidden.indices { block.forward(&hidden[s], tokens: t, rope: rope) }
            progress.step("block \(b)")
        }
        var nll = 0.0, count = 0
        for (s, window) in windows.enumerated() {
            let logits = try model.logits(hidden[s], tokens: t)
            let (sum, n) = LlamaModel.nextTokenNLL(logits: logits, tokens: window, vocab: c.vocabSize)
            nll += sum
            count += n
        }
        progress.step("head")
        return Result(perplexity: exp(nll / Double(max(count, 1))), tokens: count, seconds: Date().timeIntervalSince(start))
    }

    /// Evaluation windows from a data file: consecutive windows from the start of a text
    /// (or the first rows of token ids).
    public static func windows(data: String, modelDirectory: String, samples: Int, tokens: Int) throws -> [[Int32]] {
        let streams = try CalibrationData.load(data, modelDirectory: modelDirectory)
        if streams.count == 1 {
            let w = CalibrationData.consecutiveWindows(streams[0], count: samples, tokens: tokens)
            guard !w.isEmpty else { throw SpecError("\(data): fewer than \(tokens) tokens to evaluate on") }
            return w
        }
        return try CalibrationData.windows(streams, samples: min(samples, streams.count), tokens: tokens, seed: 0, source: data)
    }
}
