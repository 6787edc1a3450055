import Foundation
import Tensors

/// A bad or unsupported model config, naming the file and key.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The parts of a Hugging Face `config.json` the Llama-family forward pass needs
/// (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
///
/// Every value the forward pass uses is checked against its meaning when parsed (types,
/// ranges, supported activations and features: a config the forward pass would compute
/// differently from the reference is refused, not run), and `validate(against:)` checks
/// the config against a checkpoint's tensors (every block present, no extra block, shapes).
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
    /// Biases on the q/k/v projections (Qwen2 always; Llama with `attention_bias`).
    public var attentionBias: Bool
    /// A bias on o_proj too: Llama's `attention_bias` covers all four projections (Qwen2's
    /// o_proj has none). FLAP's compensation for removed heads is this bias.
    public var outputBias = false
    /// Biases on gate/up/down (Llama's `mlp_bias`). FLAP's compensation for removed
    /// channels is down_proj's.
    public var mlpBias = false
    public var architecture: String
    /// Sliding-window attention span (Mistral), nil when attention is over the whole
    /// sequence. The forward pass attends to every earlier position, which equals the
    /// window only for sequences no longer than it: callers refuse longer ones.
    public var slidingWindow: Int? = nil
    /// Per-block widths of a structurally pruned model whose blocks keep different numbers
    /// of MLP channels or query heads (`intermediate_size_per_layer`,
    /// `num_attention_heads_per_layer`; nil: every block has `intermediateSize` and
    /// `heads`, which are then the largest). Stock transformers has no such keys: only
    /// this tool's forward pass reads such a model (`block(_:)`).
    public var layerIntermediateSizes: [Int]? = nil
    public var layerHeads: [Int]? = nil

    /// Block b's config: its own widths where the blocks differ.
    public func block(_ b: Int) -> LlamaConfig {
        guard layerIntermediateSizes != nil || layerHeads != nil else { return self }
        var c = self
        c.layerIntermediateSizes = nil
        c.layerHeads = nil
        if let sizes = layerIntermediateSizes { c.intermediateSize = sizes[b] }
        if let heads = layerHeads { c.heads = heads[b] }
        return c
    }

    /// Whether every block has the same widths (what a stock config expresses).
    public var hasUniformBlocks: Bool { layerIntermediateSizes == nil && layerHeads == nil }

    public static let supported = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]

    /// Bounds on config values: far above any released model, far below what would
    /// make the planner or an allocation blow up.
    public enum Limits {
        /// config.json itself (real ones are a few KiB; it travels in every calibration task).
        public static let configBytes = 256 << 10
        public static let hiddenSize = 1 << 16
        public static let intermediateSize = 1 << 20
        public static let layers = 1 << 10
        public static let heads = 1 << 10
        public static let headDim = 1 << 10
        public static let vocabSize = 1 << 22
    }

    /// Activations (`hidden_act`) that are the SiLU the forward pass computes.
    public static let siluNames: Set<String> = ["silu", "swish"]

    /// Reads `config.json` from a checkpoint directory (or the file itself).
    public static func load(_ path: String) throws -> LlamaConfig {
        var file = path
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            file = (path as NSString).appendingPathComponent("config.json")
        }
        return try parse(bytes: readConfig(file), file: file)
    }

    /// The bytes of config.json, refused when larger than `Limits.configBytes`.
    public static func readConfig(_ file: String) throws -> [UInt8] {
        do {
            return [UInt8](try SmallFile.read(file, limit: Limits.configBytes))
        } catch .unreadable(let reason) {
            throw ModelError("\(file): cannot read a JSON config: \(reason)")
        } catch {
            throw ModelError("\(file): \(error.describe("the config"))")
        }
    }

    /// Parses `config.json` bytes (a worker gets them in its task, not from disk).
    public static func parse(bytes: [UInt8], file: String) throws -> LlamaConfig {
        guard bytes.count <= Limits.configBytes else {
            throw ModelError("\(file): the config is \(bytes.count) bytes, more than the limit of \(SmallFile.describe(bytes: Limits.configBytes))")
        }
        guard let json = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw ModelError("\(file): cannot read a JSON config")
        }
        return try parse(json, file: file)
    }

    public static func parse(_ json: [String: Any], file: String) throws -> LlamaConfig {
        let fields = ConfigFields(json: json, file: file)
        let architecture = (json["architectures"] as? [String])?.first ?? "?"
        guard supported.contains(architecture) else {
            throw ModelError("\(file): architecture '\(architecture)' is not supported (supported: \(supported.joined(separator: ", ")))")
        }
        let hidden = try fields.int("hidden_size", in: 1...Limits.hiddenSize)
        let heads = try fields.int("num_attention_heads", in: 1...Limits.heads)
        let kv = try fields.optionalInt("num_key_value_heads", in: 1...Limits.heads) ?? heads
        let explicitHeadDim = try fields.optionalInt("head_dim", in: 1...Limits.headDim)
        let headDim = explicitHeadDim ?? hidden / heads
        // Without head_dim, Hugging Face computes hidden_size // num_attention_heads: a
        // remainder would silently drop columns.
        guard heads % kv == 0, headDim > 0, headDim % 2 == 0, explicitHeadDim != nil || hidden % heads == 0 else {
            throw ModelError("\(file): inconsistent attention shape (hidden \(hidden), heads \(heads), kv heads \(kv), head_dim \(headDim)): "
                + "heads must be a multiple of kv heads, hidden a multiple of heads unless head_dim is given, and head_dim even")
        }
        if let scaling = json["rope_scaling"], !(scaling is NSNull) {
            throw ModelError("\(file): rope_scaling is not supported yet")
        }
        if let act = try fields.optionalString("hidden_act"), !siluNames.contains(act) {
            throw ModelError("\(file): hidden_act '\(act)' is not supported: the forward pass computes SiLU (silu)")
        }
        // Llama's modelling code honours mlp_bias; Mistral's and Qwen2's have no MLP biases,
        // so a true there would describe tensors the reference does not read.
        let mlpBias = try fields.optionalBool("mlp_bias") == true
        if mlpBias && architecture != "LlamaForCausalLM" {
            throw ModelError("\(file): mlp_bias: true is not supported for \(architecture) (only LlamaForCausalLM has MLP biases)")
        }
        if let factor = try fields.optionalDouble("partial_rotary_factor"), factor != 1 {
            throw ModelError("\(file): partial_rotary_factor \(factor) is not supported (rotary embeddings over the whole head)")
        }
        let eps = try fields.optionalDouble("rms_norm_eps") ?? 1e-6
        // RMSNorm divides by sqrt(mean(x²) + eps): eps must be a small positive number,
        // and still positive in F32.
        guard eps.isFinite, eps > 0, eps < 1, Float(eps) > 0 else {
            throw ModelError("\(file): rms_norm_eps \(eps) is not a small positive number (0 < eps < 1)")
        }
        let theta = try fields.optionalDouble("rope_theta") ?? 10000
        guard theta.isFinite, theta > 0 else {
            throw ModelError("\(file): rope_theta \(theta) is not a positive number (the base of the rotary frequencies)")
        }
        var window: Int?
        if try fields.optionalBool("use_sliding_window") != false {
            window = try fields.optionalInt("sliding_window", in: 1...Int.max)
        }
        var config = LlamaConfig(hiddenSize: hidden, intermediateSize: try fields.int("intermediate_size", in: 1...Limits.intermediateSize),
                                 layers: try fields.int("num_hidden_layers", in: 1...Limits.layers),
                                 heads: heads, kvHeads: kv, headDim: headDim, rmsNormEps: Float(eps),
                                 ropeTheta: theta, vocabSize: try fields.int("vocab_size", in: 1...Limits.vocabSize),
                                 tieWordEmbeddings: try fields.optionalBool("tie_word_embeddings") ?? false,
                                 attentionBias: try fields.optionalBool("attention_bias") ?? (architecture == "Qwen2ForCausalLM"),
                                 architecture: architecture)
        config.slidingWindow = window
        config.layerIntermediateSizes = try fields.optionalIntList("intermediate_size_per_layer", count: config.layers, in: 1...Limits.intermediateSize)
        config.layerHeads = try fields.optionalIntList("num_attention_heads_per_layer", count: config.layers, in: 1...Limits.heads)
        // The scalars stay the largest block's, so buffers sized by them hold any block.
        if let sizes = config.layerIntermediateSizes, sizes.max() != config.intermediateSize {
            throw ModelError("\(file): intermediate_size \(config.intermediateSize) is not the largest of intermediate_size_per_layer (\(sizes.max()!))")
        }
        if let perLayer = config.layerHeads {
            guard perLayer.max() == heads, explicitHeadDim != nil, perLayer.allSatisfy({ $0 % kv == 0 }) else {
                throw ModelError("\(file): num_attention_heads_per_layer must hold multiples of num_key_value_heads (\(kv)) whose largest is num_attention_heads (\(heads)), with head_dim given")
            }
        }
        config.mlpBias = mlpBias
        config.outputBias = config.attentionBias && architecture == "LlamaForCausalLM"
        return config
    }

    /// Refuses sequences longer than a sliding attention window (see `slidingWindow`).
    public func checkSequenceLength(_ tokens: Int, what: String) throws {
        if let w = slidingWindow, tokens > w {
            throw ModelError("\(what) \(tokens) is more than sliding_window \(w) of the model's config.json; sliding-window attention is not supported, so use at most \(w) tokens")
        }
    }

    /// Checks the config against a checkpoint: every tensor the forward pass reads is
    /// present with the shape the config implies, and no tensor of a block is one the
    /// forward pass would ignore (a block beyond `num_hidden_layers`, a bias it does not
    /// add). Nothing is read but the headers.
    public func validate(against checkpoint: Checkpoint, file: String) throws {
        func expect(_ name: String, _ shape: [Int]) throws {
            guard let info = checkpoint.info(name) else {
                throw ModelError("\(checkpoint.directory): tensor '\(name)' is missing (\(file) says \(layers) layers)")
            }
            guard info.shape == shape else {
                throw ModelError("\(checkpoint.directory): tensor '\(name)' has shape \(info.shape), \(file) implies \(shape)")
            }
            guard info.dtype.isFloat else {
                throw ModelError("\(checkpoint.directory): tensor '\(name)' is \(info.dtype.rawValue), not a floating type")
            }
        }
        let h = hiddenSize
        try expect("model.embed_tokens.weight", [vocabSize, h])
        try expect("model.norm.weight", [h])
        if checkpoint.info("lm_head.weight") != nil {
            try expect("lm_head.weight", [vocabSize, h])
        } else if !tieWordEmbeddings {
            throw ModelError("\(checkpoint.directory): lm_head.weight is missing and \(file) has tie_word_embeddings false")
        }
        var read = Set<String>()
        for b in 0..<layers {
            for (name, shape) in blockTensorShapes(block: b) {
                try expect(name, shape)
                read.insert(name)
            }
        }
        for t in checkpoint.tensors where t.name.hasPrefix("model.layers.") && !read.contains(t.name) {
            // Older checkpoints store RoPE's inverse frequencies; they are recomputed.
            if t.name.hasSuffix(".rotary_emb.inv_freq") { continue }
            let index = t.name.dropFirst("model.layers.".count).prefix { $0.isNumber }
            if let n = Int(index), n >= layers {
                throw ModelError("\(checkpoint.directory): tensor '\(t.name)' is in block \(n), but \(file) says num_hidden_layers \(layers)")
            }
            throw ModelError("\(checkpoint.directory): tensor '\(t.name)' is not used by the \(architecture) forward pass of \(file); it would be ignored")
        }
    }

    /// Every tensor of block `b` the forward pass reads, with its shape.
    func blockTensorShapes(block b: Int) -> [(String, [Int])] {
        let c = block(b)
        let p = "model.layers.\(b).", h = hiddenSize, q = c.heads * headDim, kv = kvHeads * headDim, ff = c.intermediateSize
        var shapes: [(String, [Int])] = [
            (p + "input_layernorm.weight", [h]), (p + "post_attention_layernorm.weight", [h]),
            (p + "self_attn.q_proj.weight", [q, h]), (p + "self_attn.k_proj.weight", [kv, h]),
            (p + "self_attn.v_proj.weight", [kv, h]), (p + "self_attn.o_proj.weight", [h, q]),
            (p + "mlp.gate_proj.weight", [ff, h]), (p + "mlp.up_proj.weight", [ff, h]), (p + "mlp.down_proj.weight", [h, ff]),
        ]
        if attentionBias {
            shapes += [(p + "self_attn.q_proj.bias", [q]), (p + "self_attn.k_proj.bias", [kv]), (p + "self_attn.v_proj.bias", [kv])]
        }
        if outputBias { shapes.append((p + "self_attn.o_proj.bias", [h])) }
        if mlpBias {
            shapes += [(p + "mlp.gate_proj.bias", [ff]), (p + "mlp.up_proj.bias", [ff]), (p + "mlp.down_proj.bias", [h])]
        }
        return shapes
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
        if outputBias { names.append(p + "self_attn.o_proj.bias") }
        if mlpBias { names += ["gate_proj", "up_proj", "down_proj"].map { p + "mlp.\($0).bias" } }
        return names
    }

    /// The Linear layers of block `b`, by Hugging Face tensor name, in forward order.
    public func linearNames(block b: Int) -> [String] {
        let p = "model.layers.\(b)."
        return ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"].map { p + $0 + ".weight" }
    }
}

/// Typed reads of config.json values: a value of the wrong type or outside its range is an
/// error naming the key, never a silent default or a trap.
struct ConfigFields {
    let json: [String: Any]
    let file: String

    /// A JSON boolean, as opposed to a number: Foundation bridges both to NSNumber, a
    /// boolean with the Objective-C type "c".
    static func isBool(_ v: Any) -> Bool {
        guard let n = v as? NSNumber else { return false }
        return String(cString: n.objCType) == "c"
    }

    private func present(_ key: String) -> Any? {
        guard let v = json[key], !(v is NSNull) else { return nil }
        return v
    }

    private func shown(_ v: Any) -> String {
        let text = (v as? String).map { "'\($0)'" } ?? "\(v)"
        return text.count > 40 ? String(text.prefix(40)) + "…" : text
    }

    func optionalInt(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let v = present(key) else { return nil }
        // Int(exactly:) of the double: 1e30 or 2.5 is an error, not a trap or a truncation.
        guard !ConfigFields.isBool(v), let n = v as? NSNumber, case let d = n.doubleValue, d.isFinite,
              let i = (v as? Int).flatMap({ Double($0) == d ? $0 : nil }) ?? Int(exactly: d) else {
            throw ModelError("\(file): \(key) must be an integer, found \(shown(v))")
        }
        guard range.contains(i) else {
            let bounds = range.upperBound == Int.max ? "≥ \(range.lowerBound)" : "in \(range.lowerBound)...\(range.upperBound)"
            throw ModelError("\(file): \(key) \(i) is out of range (must be \(bounds))")
        }
        return i
    }

    /// A JSON list of exactly `count` integers in `range`, or nil when absent.
    func optionalIntList(_ key: String, count: Int, in range: ClosedRange<Int>) throws -> [Int]? {
        guard let v = present(key) else { return nil }
        guard let items = v as? [Any], items.count == count else {
            throw ModelError("\(file): \(key) must be a list of \(count) integers (one per layer), found \(shown(v))")
        }
        return try items.enumerated().map { i, item in
            guard let n = try ConfigFields(json: ["\(key)[\(i)]": item], file: file).optionalInt("\(key)[\(i)]", in: range) else {
                throw ModelError("\(file): \(key)[\(i)] must be an integer")
            }
            return n
        }
    }

    func int(_ key: String, in range: ClosedRange<Int>) throws -> Int {
        guard let v = try optionalInt(key, in: range) else { throw ModelError("\(file): missing integer '\(key)'") }
        return v
    }

    func optionalDouble(_ key: String) throws -> Double? {
        guard let v = present(key) else { return nil }
        guard !ConfigFields.isBool(v), let n = v as? NSNumber else {
            throw ModelError("\(file): \(key) must be a number, found \(shown(v))")
        }
        return n.doubleValue
    }

    func optionalBool(_ key: String) throws -> Bool? {
        guard let v = present(key) else { return nil }
        guard ConfigFields.isBool(v), let b = v as? Bool else {
            throw ModelError("\(file): \(key) must be true or false, found \(shown(v))")
        }
        return b
    }

    func optionalString(_ key: String) throws -> String? {
        guard let v = present(key) else { return nil }
        guard let s = v as? String else { throw ModelError("\(file): \(key) must be a string, found \(shown(v))") }
        return s
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
