import ArgumentParser
import Cluster
import Engine
import Foundation
import Models

/// `prune bench DENSE [PRUNED ...]`: prefill and decode speed and memory of the project's own
/// forward pass (`LlamaDecoder`: weights in memory, a key/value cache, one BLAS thread),
/// each model in a process of its own so that its peak memory is its own, side by side:
/// every pruned model against the dense measurement of the same run.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generation speed and memory of a Llama-family model, and of its pruned versions beside it.",
        discussion: "Each model runs in its own process: a prompt of --prompt token ids is prefilled, then --decode tokens are generated greedily from the key/value cache; tokens/s is the best of --repeats. Weights with at least --sparse-above of their entries zero are held in CSR and multiplied by the sparse kernel (0 or less: every weight dense).")

    @Argument(help: "A Llama-family checkpoint directory (config.json + safetensors): the dense model, or the only one.")
    var dense: String

    @Argument(help: "Pruned versions of it (a job's out/dense, a structured job's smaller model), each measured against the same run's dense figures.")
    var pruned: [String] = []

    @Option(help: "Prompt tokens prefilled.")
    var prompt = 128

    @Option(help: "Tokens decoded after the prompt.")
    var decode = 64

    @Option(help: "Timed runs of each model in its process (the best is reported).")
    var repeats = 3

    @Option(help: "Rounds: each round runs every model's process once in turn, and the best over all rounds is reported (a drifting machine then favours no model).")
    var rounds = 1

    @Option(help: "Fraction of zeros from which a weight is held sparse.")
    var sparseAbove = 0.5

    @Flag(help: "One JSON object per model instead of the table.")
    var json = false

    func validate() throws {
        guard (1...8192).contains(prompt) else { throw ValidationError("--prompt must be 1 to 8192 tokens") }
        guard (1...8192).contains(decode) else { throw ValidationError("--decode must be 1 to 8192 tokens") }
        guard (1...100).contains(repeats) else { throw ValidationError("--repeats must be 1 to 100") }
        guard (1...20).contains(rounds) else { throw ValidationError("--rounds must be 1 to 20") }
        guard sparseAbove.isFinite, sparseAbove <= 1 else { throw ValidationError("--sparse-above must be a fraction of at most 1") }
        guard pruned.count <= 16 else { throw ValidationError("at most 16 pruned models in one run") }
    }

    func run() throws {
        let options = GenerationSpeed.Options(prompt: prompt, decode: decode, repeats: repeats, sparseAbove: sparseAbove > 0 ? sparseAbove : nil)
        let models = [dense] + pruned
        // Checked here first, so a bad model is one error line before any measurement.
        for model in models { _ = try LlamaConfig.load(model) }
        let results = try GenerationSpeed.measure(models, options: options, rounds: rounds)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            for r in results { print(String(decoding: try encoder.encode(r), as: UTF8.self)) }
            return
        }
        print("prompt \(prompt) tokens, decode \(decode) tokens, best of \(repeats)\(rounds > 1 ? " × \(rounds) interleaved rounds" : ""), OPENBLAS_NUM_THREADS=\(ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"] ?? "1")")
        print("| model | parameters | weights MB | sparse weights | prefill tok/s | decode tok/s | resident MB | peak MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results {
            print(String(format: "| %@ | %d | %.1f | %d of %d | %.1f | %.2f | %.1f | %.1f |", r.model, r.parameters, Double(r.weightBytes) / 1e6,
                         r.sparseWeights, r.linearWeights, r.prefillTokensPerSecond, r.decodeTokensPerSecond,
                         Double(r.residentBytes) / 1e6, Double(r.peakBytes) / 1e6))
        }
        let d = results[0]
        for p in results.dropFirst() {
            print(String(format: "%@ / dense: parameters %.3f×, weights %.3f×, prefill %.2f× faster, decode %.2f× faster, resident %.3f×", p.model,
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
