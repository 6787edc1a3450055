import Foundation
import Models
import Pruning
import Tensors

/// Structured pruning of a Llama-family model (`pattern: channels` or `pattern: heads`):
/// which units every decoder block has, in which tensors, how many each keeps, and the
/// config the smaller model gets. Every block keeps the same number of units, which is
/// what one `intermediate_size` / `num_attention_heads` in a stock config can express.
public struct StructuredPlan: Sendable {
    public let kind: UnitKind
    public let score: UnitScore
    public let config: LlamaConfig
    /// The units of each decoder block, in block order.
    public let blocks: [BlockUnits]
    /// The fraction of each block's units removed (the spec's sparsity).
    public let sparsity: Double

    /// The tensors a unit kind removes rows or columns from, in block `b`.
    public static func slices(_ kind: UnitKind, block b: Int) -> [UnitSlice] {
        let p = "model.layers.\(b)."
        switch kind {
        case .channels:
            return [UnitSlice(tensor: p + "mlp.gate_proj.weight", axis: .rows), UnitSlice(tensor: p + "mlp.up_proj.weight", axis: .rows),
                    UnitSlice(tensor: p + "mlp.down_proj.weight", axis: .cols)]
        case .heads:
            return [UnitSlice(tensor: p + "self_attn.q_proj.weight", axis: .rows), UnitSlice(tensor: p + "self_attn.o_proj.weight", axis: .cols)]
        }
    }

    /// The plan for a spec's structured pattern; refuses what the smaller model could not
    /// express, naming the key: a model that is not Llama-family, a method without a unit
    /// score, a sparsity that removes no unit or every unit of a group.
    public init(spec: JobSpec, checkpoint: Checkpoint, kind: UnitKind) throws {
        let file = (checkpoint.directory as NSString).appendingPathComponent("config.json")
        let config: LlamaConfig
        do {
            config = try LlamaConfig.load(checkpoint.directory)
            try config.validate(against: checkpoint, file: file)
        } catch let e as ModelError {
            throw SpecError("pattern: \(kind.rawValue) removes units of a Llama-family model (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM); \(e.description)")
        }
        let score: UnitScore
        switch spec.method {
        case .magnitude: score = .l2
        case .wanda: score = .wanda
        case .taylor: score = .taylor
        case .fisher: score = .fisher
        default:
            throw SpecError("pattern: \(kind.rawValue) scores units with method magnitude (L2 norm), wanda (|W|·‖X‖), taylor or fisher, not \(spec.method.rawValue)")
        }
        try self.init(config: config, kind: kind, score: score, sparsity: spec.sparsity)
    }

    /// The plan for a config (what `prune check` rebuilds from a manifest).
    public init(config: LlamaConfig, kind: UnitKind, score: UnitScore, sparsity: Double) throws {
        self.config = config
        self.kind = kind
        self.score = score
        self.sparsity = sparsity
        blocks = (0..<config.layers).map { b in
            switch kind {
            case .channels:
                return BlockUnits(kind: kind, count: config.intermediateSize, width: 1, groups: 1, slices: StructuredPlan.slices(kind, block: b))
            case .heads:
                return BlockUnits(kind: kind, count: config.heads, width: config.headDim, groups: config.kvHeads, slices: StructuredPlan.slices(kind, block: b))
            }
        }
        guard let first = blocks.first else { throw SpecError("pattern: \(kind.rawValue): the model has no decoder block") }
        let removed = first.removedPerGroup(at: sparsity)
        let perGroup = first.count / first.groups
        guard removed > 0 else {
            let what = kind == .heads ? "\(first.groups) key/value groups of \(perGroup) query heads each lose the same number, at least one each (\(first.groups) of \(first.count) heads, sparsity ≥ \(String(format: "%.4f", Double(first.groups) / Double(first.count))))" : "at least one of \(first.count) channels"
            throw SpecError("sparsity: \(sparsity) removes no \(kind == .heads ? "head" : "channel"): \(what)")
        }
        guard removed < perGroup else {
            throw SpecError("sparsity: \(sparsity) removes every \(kind == .heads ? "query head of each key/value group" : "channel") of a block")
        }
    }

    /// Units each block keeps.
    public var keptPerBlock: Int { blocks[0].keptCount(at: sparsity) }

    /// Every tensor whose shape the units change, with the block's units and the slice.
    public var slicedTensors: [String: (block: Int, slice: UnitSlice)] {
        var out: [String: (block: Int, slice: UnitSlice)] = [:]
        for (b, units) in blocks.enumerated() { for s in units.slices { out[s.tensor] = (b, s) } }
        // Qwen2's query bias loses the rows its weight loses.
        if kind == .heads, config.attentionBias {
            for b in blocks.indices { out["model.layers.\(b).self_attn.q_proj.bias"] = (b, UnitSlice(tensor: "model.layers.\(b).self_attn.q_proj.bias", axis: .rows)) }
        }
        return out
    }

    /// config.json of the smaller model: the source config with the new width, and
    /// `head_dim` written out (hidden_size / num_attention_heads no longer gives it).
    public func rewrittenConfig(_ bytes: [UInt8], file: String) throws -> [UInt8] {
        guard var json = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw CheckpointError(file: file, "cannot read a JSON config")
        }
        switch kind {
        case .channels: json["intermediate_size"] = keptPerBlock
        case .heads:
            json["num_attention_heads"] = keptPerBlock
            json["head_dim"] = config.headDim
        }
        return [UInt8](try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])) + [0x0A]
    }
}
