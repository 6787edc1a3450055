import Foundation
import Models
import Pruning
import Tensors

/// Structured pruning of a Llama-family model (`pattern: channels`, `heads` or
/// `heads+channels`): which units every decoder block has, in which tensors, how many each
/// keeps, and the config the smaller model gets. The units fall in groups, one per decoder
/// block and kind (heads before channels within a block). By default every block keeps
/// the same number of each kind, which is what one `intermediate_size` /
/// `num_attention_heads` in a stock config can express; `allocation: global` ranks every
/// block's units together (`UnitAllocation`) and writes per-layer widths instead.
public struct StructuredPlan: Sendable {
    /// The kinds removed, in `UnitKind.allCases` order.
    public let kinds: [UnitKind]
    public let score: UnitScore
    /// The Llama-family config; nil for an MLP classifier (whose widths are its tensors').
    public let config: LlamaConfig?
    /// The unit groups in order: per decoder block (an MLP's hidden layer), one per kind.
    public let groups: [BlockUnits]
    /// The decoder block (hidden layer) of each group.
    public let blockOf: [Int]
    /// Every tensor whose shape the units change, with each cut: the group whose units it
    /// loses and along which axis (an MLP's middle weight loses rows to one hidden layer and
    /// columns to the one before; a bias loses its weight's rows).
    public let slicedTensors: [String: [(group: Int, slice: UnitSlice)]]
    /// The fraction of each block's channels (or heads, alone) removed: the spec's sparsity.
    /// With a global allocation: the fraction of all the units' parameters removed.
    public let sparsity: Double
    /// `allocation: global`: every block's units ranked together, the fraction each block
    /// removes within these bounds (`allocation.min`...`max`; nil: every block removes
    /// `sparsity` of its units).
    public let global: ClosedRange<Double>?
    /// How a global allocation standardizes each group's scores (`allocation.standardize`).
    public let standardization: Standardization
    /// The fraction of each block's heads removed (`head_sparsity`; the spec's sparsity
    /// unless `heads+channels` gives its own).
    public let headSparsity: Double

    /// A bias tensor the smaller model gains.
    public struct AddedBias: Sendable, Equatable {
        /// Its name (`…down_proj.bias`).
        public let name: String
        /// The weight it belongs to: the bias goes in its shard, with its dtype.
        public let weight: String
        public let length: Int
        /// FLAP's compensation (the removed units' mean output) rather than zeros.
        public let compensates: Bool
    }

    /// The fraction of a kind's units each block removes.
    public func sparsity(of kind: UnitKind) -> Double { kind == .heads ? headSparsity : sparsity }

    /// The fraction of group g's units removed.
    public func sparsity(ofGroup g: Int) -> Double { sparsity(of: groups[g].kind) }

    /// Units each block keeps of a kind (0 when the plan does not remove that kind); nil
    /// when a global allocation decides it per block (then: `keptCounts`).
    public func keptPerBlock(_ kind: UnitKind) -> Int? {
        guard global == nil else { return nil }
        return groups.first { $0.kind == kind }.map { $0.keptCount(at: sparsity(of: kind)) } ?? 0
    }

    /// The units each block keeps of a kind, in block order, from every group's kept units.
    public func keptPerLayer(_ kind: UnitKind, kept: [[Int]]) -> [Int] {
        groups.indices.filter { groups[$0].kind == kind }.map { kept[$0].count }
    }

    /// The units group g keeps: at the uniform fraction, or (global) as the allocation
    /// decided, `allocated[g]`.
    public func keptCount(ofGroup g: Int, allocated: [Int]? = nil) -> Int {
        if let allocated { return allocated[g] }
        return groups[g].keptCount(at: sparsity(ofGroup: g))
    }

    /// The parameters one unit of a kind carries in the weights it is cut from: a
    /// channel its gate and up rows and down column, a query head its q rows and o columns
    /// (key/value heads stay; without grouped-query attention its own k and v rows too),
    /// with the biases those rows have.
    public func unitParameters(_ kind: UnitKind) -> Int {
        guard let config else { return 1 }
        switch kind {
        case .channels: return 3 * config.hiddenSize + (config.mlpBias ? 2 : 0)
        case .heads:
            let projections = headsTakeKeyValues ? 3 : 1
            return config.headDim * ((projections + 1) * config.hiddenSize + (config.attentionBias ? projections : 0))
        }
    }

    /// A model without grouped-query attention (as many key/value heads as query heads,
    /// Llama-2-7B's multi-head attention) has no group whose query heads could go while its
    /// key/value head stays: a head goes whole, its q, k and v rows and o columns, and the
    /// config's `num_key_value_heads` shrinks with `num_attention_heads`.
    public var headsTakeKeyValues: Bool { config.map(StructuredPlan.headsTakeKeyValues) ?? false }

    static func headsTakeKeyValues(_ config: LlamaConfig) -> Bool { config.kvHeads == config.heads && config.heads > 1 }

    /// Tensors the smaller model gains (`method: flap`), for the units `kept`: the bias of
    /// the layer that reads the units, carrying the removed units' mean output, and the
    /// zero biases its config flag brings along (Llama's `mlp_bias` gives gate, up and down
    /// biases; its `attention_bias` gives q, k, v and o biases).
    public func addedBiases(kept: [[Int]]) -> [AddedBias] {
        guard score == .flap, let config else { return [] }
        return kinds.flatMap { StructuredPlan.compensationBiases(config: config, kind: $0, kept: keptPerLayer($0, kept: kept)) }
    }

    /// The groups of decoder block b, in `kinds` order.
    public func groups(ofBlock b: Int) -> [Int] { blockOf.indices.filter { blockOf[$0] == b } }

    /// `heads`, `channels` or `heads+channels`: the pattern's name.
    public var kindName: String { SparsityPattern.units(kinds).description }

    /// The tensors a unit kind removes rows or columns from, in block `b`; `keyValues`: a
    /// head takes its key and value rows too (`headsTakeKeyValues`).
    public static func slices(_ kind: UnitKind, block b: Int, keyValues: Bool = false) -> [UnitSlice] {
        let p = "model.layers.\(b)."
        switch kind {
        case .channels:
            return [UnitSlice(tensor: p + "mlp.gate_proj.weight", axis: .rows), UnitSlice(tensor: p + "mlp.up_proj.weight", axis: .rows),
                    UnitSlice(tensor: p + "mlp.down_proj.weight", axis: .cols)]
        case .heads:
            return [UnitSlice(tensor: p + "self_attn.q_proj.weight", axis: .rows)]
                + (keyValues ? [UnitSlice(tensor: p + "self_attn.k_proj.weight", axis: .rows), UnitSlice(tensor: p + "self_attn.v_proj.weight", axis: .rows)] : [])
                + [UnitSlice(tensor: p + "self_attn.o_proj.weight", axis: .cols)]
        }
    }

    /// The plan for a spec's structured pattern; refuses what the smaller model could not
    /// express, naming the key: a model that is not Llama-family, a method without a unit
    /// score, a sparsity that removes no unit or every unit of a group.
    public init(spec: JobSpec, checkpoint: Checkpoint, kinds: [UnitKind]) throws {
        let name = SparsityPattern.units(kinds).description
        if MLPConfig.exists(in: checkpoint.directory) {
            guard kinds == [.channels] else { throw SpecError("pattern: \(name): an MLP classifier has no attention heads (pattern channels removes hidden neurons)") }
            guard spec.method == .magnitude else {
                throw SpecError("pattern: channels on an MLP classifier scores neurons by the L2 norm of their weights (method magnitude), not \(spec.method.rawValue)")
            }
            try self.init(mlp: checkpoint, sparsity: spec.sparsity, score: spec.unitNorm)
            return
        }
        let file = (checkpoint.directory as NSString).appendingPathComponent("config.json")
        let config: LlamaConfig
        do {
            config = try LlamaConfig.load(checkpoint.directory)
            try config.validate(against: checkpoint, file: file)
        } catch let e as ModelError {
            throw SpecError("pattern: \(name) removes units of a Llama-family model (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM); \(e.description)")
        }
        let score: UnitScore
        switch spec.method {
        case .magnitude: score = spec.unitNorm
        case .wanda: score = .wanda
        case .taylor: score = .taylor
        case .fisher: score = .fisher
        case .flap: score = .flap
        default:
            throw SpecError("pattern: \(name) scores units with method magnitude (L2 norm), wanda (|W|·‖X‖), taylor, fisher or flap, not \(spec.method.rawValue)")
        }
        let global = spec.allocation.method == .global ? spec.allocation.min...spec.allocation.max : nil
        try self.init(config: config, kinds: kinds, score: score, sparsity: spec.sparsity, headSparsity: spec.headSparsity, global: global,
                      standardization: spec.allocation.standardize)
    }

    /// The plan for a config (what `prune check` rebuilds from a manifest).
    /// `checking`: rebuilding the plan of a job already written (`prune check`), which
    /// does not refuse a head level that an earlier version rounded down per group.
    public init(config: LlamaConfig, kinds: [UnitKind], score: UnitScore, sparsity: Double, headSparsity: Double? = nil,
                global: ClosedRange<Double>? = nil, standardization: Standardization = .zscore, checking: Bool = false) throws {
        precondition(!kinds.isEmpty && kinds == UnitKind.allCases.filter(kinds.contains), "kinds in UnitKind.allCases order")
        guard config.hasUniformBlocks else {
            throw SpecError("pattern: \(SparsityPattern.units(kinds).description): the model's blocks already differ in width (a per-layer config); prune the model it came from")
        }
        self.config = config
        self.kinds = kinds
        self.score = score
        self.sparsity = sparsity
        self.headSparsity = headSparsity ?? sparsity
        self.global = global
        self.standardization = standardization
        var groups: [BlockUnits] = [], blockOf: [Int] = []
        let wholeHeads = StructuredPlan.headsTakeKeyValues(config)
        if wholeHeads, kinds.contains(.heads), global != nil {
            throw SpecError("allocation: global would give each block its own number of heads; without grouped-query attention (num_key_value_heads = num_attention_heads) that needs per-layer key/value heads, which the config cannot say: use uniform widths")
        }
        for b in 0..<config.layers {
            for kind in kinds {
                switch kind {
                case .channels:
                    groups.append(BlockUnits(kind: kind, count: config.intermediateSize, width: 1, groups: 1, slices: StructuredPlan.slices(kind, block: b)))
                case .heads:
                    groups.append(BlockUnits(kind: kind, count: config.heads, width: config.headDim, groups: wholeHeads ? 1 : config.kvHeads,
                                             slices: StructuredPlan.slices(kind, block: b, keyValues: wholeHeads)))
                }
                blockOf.append(b)
            }
        }
        self.groups = groups
        self.blockOf = blockOf
        // Qwen2's query bias loses the rows its weight loses (and whole heads their key and value biases' too).
        let biased = wholeHeads ? ["q_proj", "k_proj", "v_proj"] : ["q_proj"]
        slicedTensors = StructuredPlan.cuts(groups, biases: kinds.contains(.heads) && config.attentionBias
                                            ? groups.indices.filter { groups[$0].kind == .heads }.flatMap { g in biased.map { ("model.layers.\(blockOf[g]).self_attn.\($0).bias", g) } } : [])
        guard !groups.isEmpty else { throw SpecError("pattern: \(kindName): the model has no decoder block") }
        if score == .flap {
            for kind in kinds { try StructuredPlan.checkCompensation(config: config, kind: kind) }
        }
        // A global allocation decides each block's count from the scores; the target must
        // be within what the units can give.
        if let global {
            for kind in kinds {
                let first = groups.first { $0.kind == kind }!
                guard UnitAllocation.mostSteps(count: first.count, groups: first.groups, max: global.upperBound) > 0 else {
                    throw SpecError("pattern: \(kindName): allocation global keeps one \(kind == .heads ? "query head of each of the \(first.groups) key/value groups" : "channel") and at most allocation.max \(global.upperBound) of a block's \(first.count) goes: no \(kind == .heads ? "head" : "channel") can be removed")
                }
            }
            let total = groups.reduce(0.0) { $0 + Double($1.count * unitParameters($1.kind)) }
            let most = groups.reduce(0.0) { $0 + Double(UnitAllocation.mostSteps(count: $1.count, groups: $1.groups, max: global.upperBound) * $1.groups * unitParameters($1.kind)) }
            guard sparsity * total <= most * (1 + 1e-9) else {
                throw SpecError("sparsity: \(sparsity) of the units' parameters is more than allocation global can remove (\(String(format: "%.4f", most / total)): one query head of each key/value group and one channel stay in every block, at most allocation.max \(global.upperBound) of each)")
            }
            return
        }
        for kind in kinds {
            let first = groups.first { $0.kind == kind }!, s = kind == .heads ? self.headSparsity : sparsity
            let key = kind == .heads && kinds.count > 1 ? "head_sparsity" : "sparsity"
            let removed = first.removedPerGroup(at: s)
            let perGroup = first.count / first.groups
            let asked = SparsityPattern.count(of: first.count, at: s)
            guard removed > 0 else {
                let what = kind == .heads && first.groups > 1 ? "\(first.groups) key/value groups of \(perGroup) query heads each lose the same number, at least one each (\(first.groups) of \(first.count) heads, \(key) ≥ \(String(format: "%.4f", Double(first.groups) / Double(first.count))))" : "at least one of \(first.count) \(kind == .heads ? "heads" : "channels")"
                let defaulted = key == "head_sparsity" && headSparsity == nil ? " (head_sparsity defaults to sparsity; set it)" : ""
                throw SpecError("\(key): \(s) removes no \(kind == .heads ? "head" : "channel"): \(what)\(defaulted)")
            }
            // Every key/value group loses the same number of query heads, or the grouped-query
            // ratio breaks: a level between two whole numbers per group is refused, not rounded.
            guard asked == removed * first.groups || checking else {
                let below = Double(removed * first.groups) / Double(first.count), above = Double((removed + 1) * first.groups) / Double(first.count)
                throw SpecError("\(key): \(s) removes \(asked) of \(first.count) query heads, which \(first.groups) key/value groups cannot lose equally (the grouped-query ratio needs a multiple of \(first.groups)): \(key) \(String(format: "%.4f", below)) removes \(removed * first.groups)\(removed + 1 < perGroup ? String(format: ", %.4f removes \((removed + 1) * first.groups)", above) : "")\(key == "head_sparsity" && headSparsity == nil ? " (head_sparsity defaults to sparsity; set it)" : "")")
            }
            guard removed < perGroup else {
                throw SpecError("\(key): \(s) removes every \(kind == .heads ? "query head of each key/value group" : "channel") of a block")
            }
        }
    }

    /// FLAP's biases: only Llama's config switches them on (Mistral's and Qwen2's
    /// modelling code has no o_proj or MLP biases), and only where the model has none yet
    /// (the compensation is the whole bias).
    private static func checkCompensation(config: LlamaConfig, kind: UnitKind) throws {
        guard config.architecture == "LlamaForCausalLM" else {
            throw SpecError("method: flap writes its compensation as biases, which only LlamaForCausalLM's config can switch on (mlp_bias, attention_bias), not \(config.architecture)")
        }
        switch kind {
        case .channels:
            guard !config.mlpBias else { throw SpecError("method: flap adds MLP biases, but the model already has them (mlp_bias true)") }
        case .heads:
            guard !config.attentionBias else { throw SpecError("method: flap adds attention biases, but the model already has them (attention_bias true)") }
        }
    }

    /// FLAP's biases for every block, whose kept units of `kind` are `kept[b]`.
    private static func compensationBiases(config: LlamaConfig, kind: UnitKind, kept: [Int]) -> [AddedBias] {
        let h = config.hiddenSize, d = config.headDim
        return (0..<config.layers).flatMap { b -> [AddedBias] in
            let p = "model.layers.\(b).", keyValueHeads = headsTakeKeyValues(config) ? kept[b] : config.kvHeads
            let parts: [(String, Int, Bool)] = kind == .channels
                ? [("mlp.gate_proj", kept[b], false), ("mlp.up_proj", kept[b], false), ("mlp.down_proj", h, true)]
                : [("self_attn.q_proj", kept[b] * d, false), ("self_attn.k_proj", keyValueHeads * d, false),
                   ("self_attn.v_proj", keyValueHeads * d, false), ("self_attn.o_proj", h, true)]
            return parts.map { AddedBias(name: p + $0.0 + ".bias", weight: p + $0.0 + ".weight", length: $0.1, compensates: $0.2) }
        }
    }

    /// An MLP classifier's hidden neurons (`mlp.json`): neuron j of hidden layer i is row j
    /// of layer i's weight and bias and column j of layer i+1's weight. Every hidden layer
    /// removes ⌊width·s⌋ of its own; nothing in mlp.json names a width, so it stays as it is.
    public init(mlp checkpoint: Checkpoint, sparsity: Double, score: UnitScore = .l2) throws {
        let file = (checkpoint.directory as NSString).appendingPathComponent(MLPConfig.fileName)
        let mlp: MLPConfig
        do {
            mlp = try MLPConfig.load(file)
            _ = try MLPModel(config: mlp, store: WeightStore(checkpoint: checkpoint), file: file)
        } catch let e as ModelError {
            throw SpecError("pattern: channels: \(e.description)")
        }
        guard mlp.layers.count >= 2 else { throw SpecError("pattern: channels: \(file) has no hidden layer to remove neurons from") }
        config = nil
        kinds = [.channels]
        self.score = score
        global = nil
        standardization = .zscore
        self.sparsity = sparsity
        headSparsity = sparsity
        var blocks: [BlockUnits] = []
        var biases: [(tensor: String, group: Int)] = []
        for i in 0..<(mlp.layers.count - 1) {
            let width = checkpoint.info(mlp.layers[i].weight)!.rows
            blocks.append(BlockUnits(kind: .channels, count: width, width: 1, groups: 1,
                                     slices: [UnitSlice(tensor: mlp.layers[i].weight, axis: .rows), UnitSlice(tensor: mlp.layers[i + 1].weight, axis: .cols)]))
            if let bias = mlp.layers[i].bias { biases.append((bias, i)) }
            let removed = blocks[i].removedPerGroup(at: sparsity)
            guard removed > 0, removed < width else {
                throw SpecError("sparsity: \(sparsity) removes \(removed) of the \(width) neurons of '\(mlp.layers[i].weight)': at least one, and not all")
            }
        }
        groups = blocks
        blockOf = Array(blocks.indices)
        slicedTensors = StructuredPlan.cuts(blocks, biases: biases)
    }

    /// The cuts of every group's slices, and of `biases` (1-D tensors that lose the rows of
    /// group g's removed units).
    private static func cuts(_ groups: [BlockUnits], biases: [(tensor: String, group: Int)]) -> [String: [(group: Int, slice: UnitSlice)]] {
        var out: [String: [(group: Int, slice: UnitSlice)]] = [:]
        for (g, units) in groups.enumerated() { for s in units.slices { out[s.tensor, default: []].append((g, s)) } }
        for (bias, g) in biases { out[bias, default: []].append((g, UnitSlice(tensor: bias, axis: .rows))) }
        return out
    }

    /// The rows and the columns a sliced tensor keeps (nil: all of them), from every group's kept units.
    public func keptLines(_ cuts: [(group: Int, slice: UnitSlice)], kept: [[Int]]) -> (rows: [Int]?, cols: [Int]?) {
        var rows: [Int]?, cols: [Int]?
        for cut in cuts {
            let lines = groups[cut.group].keptLines(kept[cut.group])
            if cut.slice.axis == .rows { rows = lines } else { cols = lines }
        }
        return (rows, cols)
    }

    /// config.json of the smaller model whose groups keep `kept`: the source config with
    /// the new widths, and `head_dim` written out (hidden_size / num_attention_heads no
    /// longer gives it). Blocks of different widths (a global allocation) get
    /// `intermediate_size_per_layer` / `num_attention_heads_per_layer`, the scalar the
    /// largest: stock transformers does not read those keys and refuses the shapes.
    public func rewrittenConfig(_ bytes: [UInt8], file: String, kept: [[Int]]) throws -> [UInt8] {
        guard let config else { return bytes }
        guard var json = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw CheckpointError(file: file, "cannot read a JSON config")
        }
        for kind in kinds {
            let widths = keptPerLayer(kind, kept: kept)
            let key = kind == .channels ? "intermediate_size" : "num_attention_heads"
            json[key] = widths.max() ?? 0
            if Set(widths).count > 1 { json[key + "_per_layer"] = widths }
            if kind == .heads {
                json["head_dim"] = config.headDim
                if headsTakeKeyValues { json["num_key_value_heads"] = widths.max() ?? 0 }
            }
            if score == .flap { json[kind == .channels ? "mlp_bias" : "attention_bias"] = true }
        }
        return [UInt8](try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])) + [0x0A]
    }
}
