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

    /// Chooses the targets: names matching a target pattern and no ignore pattern. A name
    /// given exactly must exist and be prunable; regexes skip what cannot be pruned
    /// (integer tensors, 1-D biases and norms).
    public init(spec: JobSpec, checkpoint: Checkpoint) throws {
        pattern = spec.pattern
        sparsity = spec.sparsity
        for target in spec.targets where target.isExact {
            guard let info = checkpoint.info(target.text) else {
                throw SpecError("targets: no tensor named '\(target.text)' in \(checkpoint.directory)")
            }
            guard info.dtype.isFloat, info.shape.count >= 2 else {
                throw SpecError("targets: '\(target.text)' is \(info.dtype.rawValue) \(info.shape); only floating tensors of 2 or more dimensions can be pruned")
            }
        }
        let wanted = NameMatcher(spec.targets), ignored = NameMatcher(spec.ignore)
        var chosen: [PlannedTensor] = []
        for t in checkpoint.tensors {
            guard wanted.matches(t.name), !ignored.matches(t.name),
                  t.dtype.isFloat, t.shape.count >= 2, t.elementCount > 0 else { continue }
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
        targets = chosen
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
