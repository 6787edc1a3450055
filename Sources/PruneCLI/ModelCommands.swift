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
        let checkpoint = try Checkpoint(path: model)
        var rows: [[String: Any]] = []
        var totalZeros = 0
        for t in checkpoint.tensors {
            let bytes = checkpoint.bytes(t)
            let zeros = t.dtype.isFloat ? TensorPruner.zeroCount(bytes, elementSize: t.dtype.size) : 0
            totalZeros += zeros
            rows.append(["name": t.name, "dtype": t.dtype.rawValue, "shape": t.shape, "parameters": t.elementCount,
                         "bytes": t.byteCount, "sparsity": t.elementCount == 0 ? 0.0 : Double(zeros) / Double(t.elementCount),
                         "file": checkpoint.shardName(of: t.name)!])
        }
        if json {
            let doc: [String: Any] = ["tensors": rows, "parameters": checkpoint.parameterCount, "bytes": checkpoint.byteCount,
                                      "files": checkpoint.shardNames]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let nameWidth = min(max(checkpoint.tensors.map(\.name.count).max() ?? 4, 4), 70)
        print("\("tensor".padding(toLength: nameWidth, withPad: " ", startingAt: 0))  dtype  shape                 parameters        bytes  sparsity")
        for r in rows {
            let name = (r["name"] as! String).padding(toLength: nameWidth, withPad: " ", startingAt: 0)
            let shape = "[" + (r["shape"] as! [Int]).map(String.init).joined(separator: ", ") + "]"
            let dtype = (r["dtype"] as! String).padding(toLength: 5, withPad: " ", startingAt: 0)
            let shapeColumn = shape.padding(toLength: max(20, shape.count), withPad: " ", startingAt: 0)
            print(String(format: "%@  %@  %@ %11ld %12ld  %7.2f%%", name, dtype, shapeColumn,
                         r["parameters"] as! Int, r["bytes"] as! Int, 100 * (r["sparsity"] as! Double)))
        }
        print(String(format: "%ld tensors in %ld file(s), %ld parameters, %ld bytes, %.2f%% zeros",
                     checkpoint.tensors.count, checkpoint.shards.count, checkpoint.parameterCount, checkpoint.byteCount,
                     100 * Double(totalZeros) / Double(max(checkpoint.parameterCount, 1))))
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
