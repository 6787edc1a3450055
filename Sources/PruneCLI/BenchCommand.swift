import ArgumentParser
import Cluster
import Engine
import Foundation
import Models

/// `prune bench DENSE [PRUNED]`: prefill and decode speed and memory of the project's own
/// forward pass (`LlamaDecoder`: weights in memory, a key/value cache, one BLAS thread),
/// each model in a process of its own so that its peak memory is its own, side by side.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generation speed and memory of a Llama-family model, and of its pruned version beside it.",
        discussion: "Each model runs in its own process: a prompt of --prompt token ids is prefilled, then --decode tokens are generated greedily from the key/value cache; tokens/s is the best of --repeats. Weights with at least --sparse-above of their entries zero are held in CSR and multiplied by the sparse kernel (0 or less: every weight dense).")

    @Argument(help: "A Llama-family checkpoint directory (config.json + safetensors): the dense model, or the only one.")
    var dense: String

    @Argument(help: "A pruned version of it (a job's out/dense, or a structured job's smaller model).")
    var pruned: String?

    @Option(help: "Prompt tokens prefilled.")
    var prompt = 128

    @Option(help: "Tokens decoded after the prompt.")
    var decode = 64

    @Option(help: "Timed runs of each model (the best is reported).")
    var repeats = 3

    @Option(help: "Fraction of zeros from which a weight is held sparse.")
    var sparseAbove = 0.5

    @Flag(help: "One JSON object per model instead of the table.")
    var json = false

    func validate() throws {
        guard (1...8192).contains(prompt) else { throw ValidationError("--prompt must be 1 to 8192 tokens") }
        guard (1...8192).contains(decode) else { throw ValidationError("--decode must be 1 to 8192 tokens") }
        guard (1...100).contains(repeats) else { throw ValidationError("--repeats must be 1 to 100") }
        guard sparseAbove.isFinite, sparseAbove <= 1 else { throw ValidationError("--sparse-above must be a fraction of at most 1") }
    }

    func run() throws {
        var results: [GenerationSpeed] = []
        let options = GenerationSpeed.Options(prompt: prompt, decode: decode, repeats: repeats, sparseAbove: sparseAbove > 0 ? sparseAbove : nil)
        for model in [dense] + (pruned.map { [$0] } ?? []) {
            // Checked here first, so a bad model is one error line, not a child's failure.
            _ = try LlamaConfig.load(model)
            results.append(try GenerationSpeed.measure(model, options: options))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            for r in results { print(String(decoding: try encoder.encode(r), as: UTF8.self)) }
            return
        }
        print("prompt \(prompt) tokens, decode \(decode) tokens, best of \(repeats), OPENBLAS_NUM_THREADS=\(ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"] ?? "1")")
        print("| model | parameters | weights MB | sparse weights | prefill tok/s | decode tok/s | resident MB | peak MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results {
            print(String(format: "| %@ | %d | %.1f | %d of %d | %.1f | %.2f | %.1f | %.1f |", r.model, r.parameters, Double(r.weightBytes) / 1e6,
                         r.sparseWeights, r.linearWeights, r.prefillTokensPerSecond, r.decodeTokensPerSecond,
                         Double(r.residentBytes) / 1e6, Double(r.peakBytes) / 1e6))
        }
        if results.count == 2 {
            let d = results[0], p = results[1]
            print(String(format: "pruned / dense: parameters %.3f×, weights %.3f×, prefill %.2f× faster, decode %.2f× faster, resident %.3f×",
                         Double(p.parameters) / Double(d.parameters), Double(p.weightBytes) / Double(d.weightBytes),
                         p.prefillTokensPerSecond / d.prefillTokensPerSecond, p.decodeTokensPerSecond / d.decodeTokensPerSecond,
                         Double(p.residentBytes) / Double(d.residentBytes)))
        }
    }
}

/// One model of `prune bench`, in its own process: prints a `GenerationBench` as JSON.
struct BenchOne: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench-one", abstract: "One model of prune bench.", shouldDisplay: false)

    @Argument var model: String
    @Option var prompt = 128
    @Option var decode = 64
    @Option var repeats = 3
    @Option var sparseAbove = 0.5

    func run() throws {
        let result = try GenerationSpeed.measureHere(model, options: .init(prompt: prompt, decode: decode, repeats: repeats,
                                                                           sparseAbove: sparseAbove > 0 ? sparseAbove : nil))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(result), as: UTF8.self))
    }
}
