import Foundation
import Pruning
import Yams

/// Recovery with the masks fixed (`reconstruct:` in the spec): `reconstruct: layer`,
/// `reconstruct: block` or a mapping `{scope: block, damp: 0.01, epochs: 2, learning_rate: 3e-3,
/// lr_schedule: constant, tasks_per_step: 2}`.
/// Layer scope re-fits each pruned layer's kept weights to the dense layer's outputs on its
/// calibration inputs (`LayerReconstruction`), inside the layer's prune task, after the mask
/// (and any `refine:` swaps); in sequential mode the next block calibrates on the re-fit
/// weights. Block scope starts from that re-fit and then trains each decoder block's
/// attention and MLP halves to the dense halves' outputs with Adam (`BlockRefitPhase`).
public struct Reconstruct: Sendable, Equatable {
    public enum Scope: String, Sendable, CaseIterable { case layer, block }

    public var scope: Scope = .layer
    /// λ = damp × mean diag H: the pull towards the dense weights (SparseGPT's `percdamp`).
    public var damp = 0.01
    /// Block scope: passes over the calibration shards (one Adam step per shard). The
    /// defaults are the best measured on SmolLM2 at 70% (README): 1e-4 barely moved the
    /// perplexity, 1e-3 and 3e-3 took it from 57.6 (layer re-fit) to 46.3 and 40.8.
    public var epochs = 2
    public static let maxEpochs = 1000
    /// Block scope: Adam's step size.
    public var learningRate = 3e-3
    /// Block scope, `lr_schedule: cosine`: each half's step size falls from `learningRate`
    /// towards 0 over its epochs × shards steps (`CosineSchedule`); `constant` (the
    /// default) keeps it.
    public var cosine = false
    /// Block scope in sequential mode: each Adam step's gradient (one calibration shard)
    /// is the sum of this many tasks' (slices of the shard's windows), which the workers
    /// compute in parallel. Part of the job's identity (it fixes the summation order), not
    /// of the cluster's: the bytes do not depend on the worker count.
    public var tasksPerStep = 2

    static func parse(_ node: Node, method: JobSpec.Method, pattern: SparsityPattern, calibration: JobSpec.Calibration?,
                      file: String) throws -> Reconstruct? {
        var r = Reconstruct()
        if let scalar = node.scalar {
            if let b = Bool.construct(from: scalar) {
                guard b else { return nil }
            } else {
                guard let s = Scope(rawValue: scalar.string) else {
                    throw SpecError("\(where_(file, node)): reconstruct: unknown scope '\(scalar.string)' (known: \(Scope.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                r.scope = s
            }
        } else {
            let fields = try JobSpec.mapping(node, key: "reconstruct", known: ["scope", "damp", "epochs", "learning_rate", "lr_schedule", "tasks_per_step"], file: file)
            if let n = fields["scope"] {
                guard let s = n.scalar.flatMap({ Scope(rawValue: $0.string) }) else {
                    throw SpecError("\(where_(file, n)): reconstruct.scope: '\(n.scalar?.string ?? "?")' is not one of \(Scope.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                r.scope = s
            }
            if let n = fields["damp"] {
                guard let d = n.scalar.flatMap({ Double($0.string) }), d.isFinite, d > 0, d <= 1 else {
                    throw SpecError("\(where_(file, n)): reconstruct.damp: must be a number in (0, 1] (a fraction of the Hessian's mean diagonal)")
                }
                r.damp = d
            }
            if let v = try JobSpec.positiveInt(fields["epochs"], "reconstruct.epochs", file: file, minimum: 1, maximum: maxEpochs) { r.epochs = v }
            if let n = fields["learning_rate"] {
                guard let v = n.scalar.flatMap({ Double($0.string) }), v.isFinite, v > 0, v <= 1 else {
                    throw SpecError("\(where_(file, n)): reconstruct.learning_rate: must be a finite number in (0, 1]")
                }
                r.learningRate = v
            }
            if let v = try JobSpec.cosineSchedule(fields["lr_schedule"], "reconstruct.lr_schedule", file: file) { r.cosine = v }
            if let v = try JobSpec.positiveInt(fields["tasks_per_step"], "reconstruct.tasks_per_step", file: file, minimum: 1,
                                               maximum: calibration?.samplesPerTask ?? 1) { r.tasksPerStep = v }
            if r.scope == .layer, let n = fields["epochs"] ?? fields["learning_rate"] ?? fields["lr_schedule"] ?? fields["tasks_per_step"] {
                throw SpecError("\(where_(file, n)): reconstruct: epochs, learning_rate, lr_schedule and tasks_per_step are for scope block (layer scope solves exactly)")
            }
            if let n = fields["tasks_per_step"], calibration?.mode != .sequential {
                throw SpecError("\(where_(file, n)): reconstruct.tasks_per_step: for calibration mode sequential (in dense mode each half is one task)")
            }
        }
        if case .units = pattern, [.magnitude, .taylor, .fisher].contains(method) {
            // The units come from weights or gradients; the re-fit needs the layer's inputs.
            guard calibration != nil else {
                throw SpecError("\(where_(file, node)): reconstruct: re-fitting the layer that reads the removed units needs its calibration inputs; add a 'calibration' section (data, samples, tokens)")
            }
        } else if !(method == .wanda || method == .sparsegpt || method == .flap) {
            throw SpecError("\(where_(file, node)): reconstruct: re-fitting a layer needs its calibration inputs; use method wanda or sparsegpt (\(method.rawValue) has no calibration; with pattern channels, heads or heads+channels every unit score can be re-fit)")
        }
        if case .rows = pattern {
            throw SpecError("\(where_(file, node)): reconstruct: pattern \(pattern) keeps whole rows unchanged; there is nothing to re-fit")
        }
        return r
    }
}
