import Foundation
import Tensors

/// A bad or unsupported model config, naming the file and key.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The parts of a Hugging Face `config.json` the Llama-family forward pass needs
/// (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
public struct LlamaConfig: Sendable, Equatable {
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    public var vocabSize: Int
    public var tieWordEmbeddings: Bool
    /// Qwen2 has biases on q/k/v projections.
    public var attentionBias: Bool
    public var architecture: String

    public static let supported = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]

    /// Reads `config.json` from a checkpoint directory (or the file itself).
    public static func load(_ path: String) throws -> LlamaConfig {
        var file = path
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            file = (path as NSString).appendingPathComponent("config.json")
        }
        guard let data = FileManager.default.contents(atPath: file) else { throw ModelError("\(file): cannot read a JSON config") }
        return try parse(bytes: [UInt8](data), file: file)
    }

    /// Parses `config.json` bytes (a worker gets them in its task, not from disk).
    public static func parse(bytes: [UInt8], file: String) throws -> LlamaConfig {
        guard let json = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw ModelError("\(file): cannot read a JSON config")
        }
        return try parse(json, file: file)
    }

    public static func parse(_ json: [String: Any], file: String) throws -> LlamaConfig {
        func int(_ key: String, default def: Int? = nil) throws -> Int {
            if let v = json[key] as? Int { return v }
            if let v = json[key] as? Double, v == v.rounded() { return Int(v) }
            if let def { return def }
            throw ModelError("\(file): missing integer '\(key)'")
        }
        func double(_ key: String, default def: Double) -> Double {
            (json[key] as? Double) ?? (json[key] as? Int).map(Double.init) ?? def
        }
        let architecture = (json["architectures"] as? [String])?.first ?? "?"
        guard supported.contains(architecture) else {
            throw ModelError("\(file): architecture '\(architecture)' is not supported (supported: \(supported.joined(separator: ", ")))")
        }
        let hidden = try int("hidden_size")
        let heads = try int("num_attention_heads")
        let kv = try int("num_key_value_heads", default: heads)
        let headDim = try int("head_dim", default: heads > 0 ? hidden / heads : 0)
        guard hidden > 0, heads > 0, kv > 0, heads % kv == 0, headDim > 0, headDim % 2 == 0 else {
            throw ModelError("\(file): inconsistent attention shape (hidden \(hidden), heads \(heads), kv heads \(kv), head_dim \(headDim))")
        }
        if json["rope_scaling"] is [String: Any] {
            throw ModelError("\(file): rope_scaling is not supported yet")
        }
        return LlamaConfig(hiddenSize: hidden, intermediateSize: try int("intermediate_size"), layers: try int("num_hidden_layers"),
                           heads: heads, kvHeads: kv, headDim: headDim, rmsNormEps: Float(double("rms_norm_eps", default: 1e-6)),
                           ropeTheta: double("rope_theta", default: 10000), vocabSize: try int("vocab_size"),
                           tieWordEmbeddings: (json["tie_word_embeddings"] as? Bool) ?? false,
                           attentionBias: (json["attention_bias"] as? Bool) ?? (architecture == "Qwen2ForCausalLM"),
                           architecture: architecture)
    }

    /// The Linear layers of block `b` grouped by the input they share (q/k/v read the
    /// same normed states, gate/up too), in forward order: calibration gathers one set
    /// of statistics per group.
    public func linearGroups(block b: Int) -> [[String]] {
        let names = linearNames(block: b)
        return [Array(names[0..<3]), [names[3]], Array(names[4..<6]), [names[6]]]
    }

    /// Every tensor of block `b` the forward pass reads.
    public func blockTensorNames(block b: Int) -> [String] {
        let p = "model.layers.\(b)."
        var names = [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"] + linearNames(block: b)
        if attentionBias { names += ["q_proj", "k_proj", "v_proj"].map { p + "self_attn.\($0).bias" } }
        return names
    }

    /// The Linear layers of block `b`, by Hugging Face tensor name, in forward order.
    public func linearNames(block b: Int) -> [String] {
        let p = "model.layers.\(b)."
        return ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"].map { p + $0 + ".weight" }
    }
}

/// Where a model's tensors come from, decoded to F32: a checkpoint on disk, or (on a
/// worker) byte ranges read from a local copy or pulled from the coordinator.
public protocol TensorReader: AnyObject {
    /// Where the tensors live, for error messages.
    var location: String { get }
    /// The tensor's shape, or nil when it is absent.
    func shape(of name: String) -> [Int]?
    /// The whole tensor decoded to F32.
    func floats(_ name: String) throws -> [Float]
    /// Row `index` of a 2-D tensor decoded to F32 (an embedding lookup needs a few rows).
    func row(_ name: String, _ index: Int) throws -> [Float]
}

/// A checkpoint's tensors, read straight from the mapped files; pages are released
/// after each whole-tensor read so memory holds what the caller keeps.
public final class CheckpointReader: TensorReader {
    public let checkpoint: Checkpoint
    public init(_ checkpoint: Checkpoint) { self.checkpoint = checkpoint }
    public var location: String { checkpoint.directory }
    public func shape(of name: String) -> [Int]? { checkpoint.info(name)?.shape }

    public func floats(_ name: String) throws -> [Float] {
        guard let info = checkpoint.info(name), let shard = checkpoint.shard(of: name) else {
            throw ModelError("\(checkpoint.directory): tensor '\(name)' is missing")
        }
        defer { shard.release(info) }
        return try shard.floats(info)
    }

    public func row(_ name: String, _ index: Int) throws -> [Float] {
        guard let info = checkpoint.info(name), let shard = checkpoint.shard(of: name), info.shape.count == 2,
              index >= 0, index < info.shape[0] else {
            throw ModelError("\(checkpoint.directory): tensor '\(name)' has no row \(index)")
        }
        let width = info.shape[1], rowBytes = width * info.dtype.size
        let bytes = UnsafeRawBufferPointer(rebasing: shard.bytes(info)[(index * rowBytes)..<((index + 1) * rowBytes)])
        return FloatConversion.toFloat(bytes, dtype: info.dtype, count: width)
    }
}

/// Where F32 weights come from: a tensor reader, possibly with some tensors replaced
/// (pruned or updated weights while calibrating block by block).
public final class WeightStore: @unchecked Sendable {
    public let reader: TensorReader
    private var overrides: [String: [Float]] = [:]

    public init(reader: TensorReader) {
        self.reader = reader
    }

    public convenience init(checkpoint: Checkpoint) {
        self.init(reader: CheckpointReader(checkpoint))
    }

    /// The checkpoint behind the reader, when it is one (not on a worker pulling bytes).
    public var checkpoint: Checkpoint? { (reader as? CheckpointReader)?.checkpoint }

    /// Replaces a tensor's values for later loads.
    public func override(_ name: String, with values: [Float]) {
        overrides[name] = values
    }

    public func has(_ name: String) -> Bool { overrides[name] != nil || reader.shape(of: name) != nil }

    /// Forgets replaced values (after a block's pruned outputs are computed), so memory
    /// holds one block's overrides at a time.
    public func clearOverrides() {
        overrides.removeAll()
    }

    /// One row of a 2-D tensor decoded to F32, read straight from the mapped file (an
    /// embedding lookup needs a few rows, not the whole table).
    public func row(_ name: String, _ index: Int, width: Int) throws -> [Float] {
        if let o = overrides[name] { return Array(o[(index * width)..<((index + 1) * width)]) }
        guard let shape = reader.shape(of: name), shape.count == 2, shape[1] == width, index >= 0, index < shape[0] else {
            throw ModelError("\(reader.location): tensor '\(name)' has no row \(index) of width \(width)")
        }
        return try reader.row(name, index)
    }

    /// A tensor decoded to F32, checked against the expected shape.
    public func load(_ name: String, shape: [Int]) throws -> [Float] {
        if let o = overrides[name] {
            guard o.count == shape.reduce(1, *) else { throw ModelError("tensor '\(name)': override has \(o.count) values, expected \(shape)") }
            return o
        }
        guard let actual = reader.shape(of: name) else {
            throw ModelError("\(reader.location): tensor '\(name)' is missing")
        }
        guard actual == shape else {
            throw ModelError("\(reader.location): tensor '\(name)' has shape \(actual), config implies \(shape)")
        }
        return try reader.floats(name)
    }
}
