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

/// `prune init-mlp`: a seeded, freshly initialised MLP classifier for `train:` to start from.
struct InitMLP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init-mlp",
        abstract: "Write a freshly initialised MLP classifier (model.safetensors + mlp.json) for a job's train: to start from.")

    @Argument(help: "Output directory (new, or without a model).")
    var output: String

    @Option(help: "Features per example (784 for 28×28 images).")
    var input = 784

    @Option(help: "Hidden widths, comma-separated.")
    var hidden = "256,128"

    @Option(help: "Classes (the last layer's width).")
    var classes = 10

    @Option(help: "Activation after each hidden layer: relu or gelu.")
    var activation = "relu"

    @Option(help: "Class names, comma-separated (optional).")
    var labels: String?

    @Option(help: "Seed of the initial weights.")
    var seed: UInt64 = 0

    func run() throws {
        let widths = hidden.isEmpty ? [] : hidden.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard widths.allSatisfy({ $0 != nil }) else { throw ValidationError("--hidden must be comma-separated integers, e.g. 256,128") }
        guard let act = MLPConfig.Activation(rawValue: activation), act != .none else { throw ValidationError("--activation must be relu or gelu") }
        var o = MLPInit.Options(input: input, hidden: widths.map { $0! }, classes: classes)
        o.activation = act
        o.seed = seed
        o.labels = labels.map { $0.split(separator: ",").map(String.init) }
        try MLPInit.write(o, to: output)
        print("wrote \(output): MLP \(([input] + o.hidden + [classes]).map(String.init).joined(separator: " → ")), seed \(seed)")
    }
}
