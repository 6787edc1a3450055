import Foundation
import Pruning
import Tensors

/// One tensor the job prunes.
public struct PlannedTensor: Sendable, Equatable {
    public let info: TensorInfo
    /// Shard file (relative to the checkpoint directory) that holds it.
    public let shard: String
    public var name: String { info.name }
    public var rows: Int { info.rows }
    public var cols: Int { info.cols }
}

/// What a job will do: which tensors it prunes and how, read from headers only.
public struct Plan: Sendable {
    public let targets: [PlannedTensor]
    public let pattern: SparsityPattern
    public let sparsity: Double
    /// What the user should know about the choice (a tied tensor pruned), for the report.
    public let warnings: [String]
    /// The units of a structured pattern (`channels`, `heads`), nil for the others.
    public let units: StructuredPlan?

    /// Model types whose Linear layers `targets: ["Linear"]` knows: every 2-D `.weight`
    /// that is not an embedding table.
    static let linearKnown = ["llama", "mistral", "qwen2", "bert", "mlp"]

    /// Chooses the targets: names matching a target pattern and no ignore pattern. A name
    /// given exactly (a tensor, or a module: `X` for `X.weight`) must exist and be
    /// prunable, and overrides the default ignore list (not the spec's own); regexes skip
    /// what cannot be pruned (integer tensors, 1-D biases and norms). A tensor tied to
    /// another (`tie_word_embeddings`: the embedding table is the output head) is pruned
    /// only when named exactly, with a warning.
    public init(spec: JobSpec, checkpoint: Checkpoint) throws {
        pattern = spec.pattern
        sparsity = spec.sparsity
        let identity = ModelFacts(directory: checkpoint.directory)
        var named = Set<String>()
        var linear = false
        for target in spec.targets where target.isExact {
            if target.text == JobSpec.linearTargets && checkpoint.info(target.text) == nil {
                guard let type = identity.modelType, Plan.linearKnown.contains(type) else {
                    throw SpecError("targets: 'Linear' stands for the Linear layers of a known architecture (\(Plan.linearKnown.joined(separator: ", "))); this model's is \(identity.modelType ?? "unknown") (config.json model_type): name its tensors or use re: patterns")
                }
                linear = true
                continue
            }
            guard let info = checkpoint.info(target.text) ?? checkpoint.info(target.text + ".weight") else {
                throw SpecError("targets: no tensor named '\(target.text)' in \(checkpoint.directory)")
            }
            guard info.dtype.isFloat, info.shape.count >= 2 else {
                throw SpecError("targets: '\(target.text)' is \(info.dtype.rawValue) \(info.shape); only floating tensors of 2 or more dimensions can be pruned")
            }
            named.insert(info.name)
        }
        let wanted = NameMatcher(spec.targets.filter { !$0.isExact })
        let explicit = NameMatcher(spec.explicitIgnore)
        let defaults = NameMatcher(spec.ignore.filter { p in !spec.explicitIgnore.contains { $0.text == p.text } })
        let tied = identity.tiedTensors(in: checkpoint)
        var chosen: [PlannedTensor] = []
        var warnings: [String] = []
        for t in checkpoint.tensors {
            let exact = named.contains(t.name)
            let matched = exact || wanted.matches(t.name) || (linear && ModelFacts.isLinearWeight(t))
            guard matched, !explicit.matches(t.name), exact || !defaults.matches(t.name),
                  t.dtype.isFloat, t.shape.count >= 2, t.elementCount > 0 else { continue }
            if tied.contains(t.name) {
                guard exact else { continue }
                warnings.append("\(t.name) is tied to the output head (tie_word_embeddings): pruning it prunes the head's weights too")
            }
            do {
                try spec.pattern.validate(rows: t.rows, cols: t.cols)
            } catch let e as PruningError {
                throw SpecError("pattern: tensor '\(t.name)' \(t.shape): \(e.message)")
            }
            chosen.append(PlannedTensor(info: t, shard: checkpoint.shardName(of: t.name)!))
        }
        guard !chosen.isEmpty else {
            throw SpecError("targets: no prunable tensor matched (targets \(Plan.summary(spec.targets)), ignore \(Plan.summary(spec.ignore)))")
        }
        if case .units(let kinds) = spec.pattern {
            // A unit spans tensors and every block keeps the same width: all of them go
            // together, whatever else the targets match.
            let units = try StructuredPlan(spec: spec, checkpoint: checkpoint, kinds: kinds)
            let sliced = units.groups.flatMap(\.slices).map(\.tensor)
            let picked = Set(chosen.map(\.name))
            if let missing = sliced.first(where: { !picked.contains($0) }) {
                throw SpecError("targets: pattern \(spec.pattern) removes units from every block, but '\(missing)' is not targeted (check targets and ignore)")
            }
            let byName = Dictionary(uniqueKeysWithValues: chosen.map { ($0.name, $0) })
            chosen = sliced.map { byName[$0]! }
            self.units = units
        } else {
            units = nil
        }
        targets = chosen
        self.warnings = warnings
    }

    /// Tells the user on stderr what the report will say too.
    public func printWarnings() {
        for w in warnings { FileHandle.standardError.write(Data("prune: warning: \(w)\n".utf8)) }
    }

    /// The first few entries of a pattern list, as `["a", "re:b"]`, then how many more.
    static func summary(_ patterns: [NamePattern], first: Int = 5) -> String {
        let shown = "\(patterns.prefix(first).map(\.text))"
        return patterns.count > first ? "\(shown.dropLast()), … and \(patterns.count - first) more]" : shown
    }

    /// Weights the plan prunes from one tensor.
    public func plannedPruned(_ t: PlannedTensor) -> Int {
        pattern.plannedPruned(rows: t.rows, cols: t.cols, sparsity: sparsity)
    }
}

/// What a checkpoint's config says about its tensors: the model type, and which tensors
/// are tied (one array serving as two weights).
struct ModelFacts {
    let modelType: String?
    let tiesEmbeddings: Bool

    init(directory: String) {
        if FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent("mlp.json")) {
            modelType = "mlp"
            tiesEmbeddings = false
            return
        }
        let config = (try? SmallFile.read((directory as NSString).appendingPathComponent("config.json"), limit: 1 << 20))
            .flatMap { (try? JSONSerialization.jsonObject(with: $0)) as? [String: Any] } ?? [:]
        modelType = config["model_type"] as? String
        // transformers' default when the key is absent: BERT ties, Llama-family models do not.
        tiesEmbeddings = (config["tie_word_embeddings"] as? Bool) ?? (modelType == "bert")
    }

    /// The embedding table and the output head, when they are one array.
    func tiedTensors(in checkpoint: Checkpoint) -> Set<String> {
        guard tiesEmbeddings else { return [] }
        let embeddings = ["embed_tokens.weight", "wte.weight", "word_embeddings.weight"]
        return Set(checkpoint.tensors.map(\.name).filter { name in name == "lm_head.weight" || embeddings.contains { name.hasSuffix($0) } })
    }

    /// A Linear layer's weight: 2-D, named `….weight`, not an embedding table.
    static func isLinearWeight(_ t: TensorInfo) -> Bool {
        let lower = t.name.lowercased()
        return t.shape.count == 2 && t.name.hasSuffix(".weight") && !["embed", "wte.", "wpe."].contains { lower.contains($0) }
    }
}
