import Foundation
import Models
import Tensors

/// Perplexity of a Llama-family checkpoint on token windows, computed block by block
/// (each block loaded once for all windows).
public enum Evaluator {
    public struct Result: Codable, Sendable, Equatable {
        public let perplexity: Double
        public let tokens: Int
        public let seconds: Double
    }

    public static func perplexity(modelDirectory: String, windows: [[Int32]], label: String, quiet: Bool) throws -> Result {
        let start = Date()
        let model = try LlamaModel(directory: modelDirectory)
        let c = model.config
        guard let t = windows.first?.count, t > 1 else { throw SpecError("evaluation needs windows of at least 2 tokens") }
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
