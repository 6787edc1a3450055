import ArgumentParser
import Models
import Cluster
import Engine
import Foundation
import Pruning
import Tensors
import Protocol
import ZeroMQ

// The commands about a checkpoint itself: look into it, import one from GGUF.

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a checkpoint's tensors: dtype, shape, parameters, bytes, current sparsity.")

    @Argument(help: "Checkpoint directory or .safetensors file.")
    var model: String

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() throws {
        let inventory = Inventory(try Checkpoint(path: model))
        print(json ? try inventory.json() : inventory.render())
    }
}

struct ImportGGUF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-gguf",
        abstract: "Convert a llama.cpp GGUF (llama architecture; F32, F16, BF16, Q8_0, Q4_0, Q4_1) to safetensors + config.json + tokenizer files.")

    @Argument(help: "The .gguf file.")
    var gguf: String

    @Argument(help: "Output directory (new or empty).")
    var output: String

    @Option(help: "dtype of the written weights: F32, F16 or BF16.")
    var dtype = "F32"

    func run() throws {
        guard let d = DType(rawValue: dtype.uppercased()), d.isFloat else { throw ValidationError("--dtype must be F32, F16 or BF16") }
        let start = Date()
        let summary = try GGUFImporter.importModel(gguf: gguf, to: output, dtype: d)
        let types = summary.sourceTypes.keys.sorted().map { "\($0) \(summary.sourceTypes[$0]!)" }.joined(separator: ", ")
        print(String(format: "wrote %@: %d layers, %d tensors, %d parameters (%@), from %@; %.1fs", summary.outputDirectory, summary.layers,
                     summary.tensorCount, summary.parameterCount, summary.tiedEmbeddings ? "tied embeddings" : "separate lm_head", types,
                     Date().timeIntervalSince(start)))
    }
}
