import Foundation
import Models
import Pruning
import Yams

/// Data-parallel training of an MLP classifier with the job's masks fixed (`train:` in the
/// spec; `TrainPhase`): `epochs` passes over labelled examples in seeded shuffled batches
/// of `batch`, each batch's gradient the sum, in shard order, of `shards` tasks on slices
/// of it (the workers compute them in parallel), one optimizer step per batch. With
/// `sparsity: 0` it trains the dense model; otherwise it fine-tunes the pruned one.
///
///     train: {data: /usr/share/datasets/fashion-mnist, epochs: 10, batch: 128,
///             optimizer: sgd, learning_rate: 0.05, momentum: 0.9}
public struct TrainSpec: Sendable, Equatable {
    public enum Optimizer: String, Sendable, CaseIterable {
        /// SGD with momentum (torch.optim.SGD's form, weight decay as an L2 term).
        case sgd
        /// AdamW: Adam with decoupled weight decay.
        case adamw
    }

    /// Labelled examples: an IDX images file, a directory holding the MNIST-style
    /// training split (`train-images-idx3-ubyte[.gz]`), or `.safetensors` with inputs/labels.
    public var data: String
    /// Only the first this many examples (nil: all).
    public var examples: Int?
    public var epochs = 10
    /// Examples per optimizer step (the last partial batch of an epoch is dropped).
    public var batch = 128
    /// Gradient tasks per step, each on a slice of the batch. Part of the job's identity
    /// (it fixes the summation order), not of the cluster's.
    public var shards = 2
    public var optimizer = Optimizer.sgd
    public var learningRate: Double
    /// SGD's momentum.
    public var momentum = 0.9
    /// SGD: L2 term added to the gradient; AdamW: decoupled decay.
    public var weightDecay = 0.0
    /// `lr_schedule: cosine`: the learning rate falls from `learning_rate` towards 0 over
    /// the job's steps (half a cosine); `constant` (the default) keeps it.
    public var cosine = false
    /// Weights and optimizer state are kept (an artifact) every this many steps and at
    /// every epoch's end; a killed job resumes from the last one.
    public var checkpointEvery = 50
    /// Seeds the order of the examples in every epoch.
    public var seed: UInt64

    public static let maxEpochs = 1000
    public static let maxBatch = 65_536
    /// One gradient task's examples travel in its Assign (at most 1 MiB): slice × width
    /// values, 4 bytes each (1 for IDX images).
    public static let maxTaskBytes = 768 * 1024

    static let keys = ["data", "examples", "epochs", "batch", "shards", "optimizer", "learning_rate", "momentum", "weight_decay",
                       "checkpoint_every", "seed", "lr_schedule"]

    static func parse(_ node: Node, seed: UInt64, model: String, resolve: (String) -> String, file: String) throws -> TrainSpec {
        let f = try JobSpec.mapping(node, key: "train", known: keys, file: file)
        guard let dataNode = f["data"], let data = dataNode.scalar?.string, !data.isEmpty else {
            throw SpecError("\(where_(file, node)): train: missing 'data' (labelled examples: an IDX images file, a directory with train-images-idx3-ubyte[.gz], or .safetensors)")
        }
        guard MLPConfig.exists(in: model) else {
            throw SpecError("\(where_(file, node)): train: training needs an MLP classifier (mlp.json beside the checkpoint); \(model) has none")
        }
        var spec = TrainSpec(data: resolve(data), learningRate: 0.05, seed: seed)
        guard FileManager.default.fileExists(atPath: spec.data) else {
            throw SpecError("\(where_(file, dataNode)): train.data: \(spec.data): no such file or directory")
        }
        if let v = try JobSpec.positiveInt(f["examples"], "train.examples", file: file, minimum: 1, maximum: 10_000_000) { spec.examples = v }
        if let v = try JobSpec.positiveInt(f["epochs"], "train.epochs", file: file, minimum: 1, maximum: maxEpochs) { spec.epochs = v }
        if let v = try JobSpec.positiveInt(f["batch"], "train.batch", file: file, minimum: 1, maximum: maxBatch) { spec.batch = v }
        if let v = try JobSpec.positiveInt(f["shards"], "train.shards", file: file, minimum: 1, maximum: 64) { spec.shards = v }
        if let n = f["shards"], spec.shards > spec.batch {
            throw SpecError("\(where_(file, n)): train.shards: \(spec.shards) slices of a batch of \(spec.batch) leaves some empty")
        }
        if let n = f["optimizer"] {
            guard let o = n.scalar.flatMap({ Optimizer(rawValue: $0.string) }) else {
                throw SpecError("\(where_(file, n)): train.optimizer: '\(n.scalar?.string ?? "?")' is not one of \(Optimizer.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            spec.optimizer = o
            if o == .adamw { spec.learningRate = 1e-3 }
        }
        if let n = f["learning_rate"] {
            guard let v = n.scalar.flatMap({ Double($0.string) }), v.isFinite, v > 0, v <= 10 else {
                throw SpecError("\(where_(file, n)): train.learning_rate: must be a finite number in (0, 10]")
            }
            spec.learningRate = v
        }
        if let n = f["momentum"] {
            guard spec.optimizer == .sgd else { throw SpecError("\(where_(file, n)): train.momentum: for optimizer sgd (AdamW has its own moments)") }
            guard let v = n.scalar.flatMap({ Double($0.string) }), v.isFinite, v >= 0, v < 1 else {
                throw SpecError("\(where_(file, n)): train.momentum: must be a number in [0, 1)")
            }
            spec.momentum = v
        }
        if let n = f["weight_decay"] {
            guard let v = n.scalar.flatMap({ Double($0.string) }), v.isFinite, v >= 0, v < 1 else {
                throw SpecError("\(where_(file, n)): train.weight_decay: must be a number in [0, 1)")
            }
            spec.weightDecay = v
        }
        if let v = try JobSpec.positiveInt(f["checkpoint_every"], "train.checkpoint_every", file: file, minimum: 1, maximum: 100_000) { spec.checkpointEvery = v }
        if let n = f["lr_schedule"] {
            guard let v = n.scalar?.string, v == "cosine" || v == "constant" else {
                throw SpecError("\(where_(file, n)): train.lr_schedule: must be constant or cosine")
            }
            spec.cosine = v == "cosine"
        }
        if let n = f["seed"] {
            guard let v = n.scalar.flatMap({ UInt64($0.string) }) else { throw SpecError("\(where_(file, n)): train.seed: must be a non-negative integer") }
            spec.seed = v
        }
        return spec
    }
}

/// How sparsity arrives during training (`schedule:`; needs `train:`). The job's
/// `sparsity` is the final level; each round prunes by magnitude (the job's pattern) from
/// the weights training reached, then trains with that mask fixed.
/// - `gradual` (Zhu & Gupta 2017): `rounds` levels on the cubic curve
///   s_r = s_f + (s_i − s_f)(1 − r/(rounds − 1))³ from `initial` to the final sparsity,
///   `epochs_per_round` epochs of training after each, and `train.epochs` more after the last.
/// - `penalty`: `epochs` epochs of dense training with an L1 penalty `l1`·Σ|w| on the
///   weights (driving the unimportant ones towards 0), then one prune to the final
///   sparsity and `train.epochs` epochs of fine-tuning without it.
public struct ScheduleSpec: Sendable, Equatable {
    public enum Method: String, Sendable, CaseIterable { case gradual, penalty }
    public var method: Method
    /// gradual: the first round's level.
    public var initial = 0.0
    public var rounds = 8
    public var epochsPerRound = 1
    /// penalty: its strength and the epochs trained with it.
    public var l1 = 1e-4
    public var penaltyEpochs = 5

    /// One round: prune to `sparsity`, then train `epochs` with `l1`.
    public struct Round: Sendable, Equatable {
        public var sparsity: Double
        public var epochs: Int
        public var l1: Double
    }

    /// The rounds for a final sparsity and the fine-tuning epochs after the last prune.
    public func rounds(final: Double, fineTune: Int) -> [Round] {
        switch method {
        case .gradual:
            return (0..<rounds).map { r in
                let f = rounds == 1 ? 1 : Double(r) / Double(rounds - 1)
                let s = final + (initial - final) * pow(1 - f, 3)
                return Round(sparsity: s, epochs: epochsPerRound + (r == rounds - 1 ? fineTune : 0), l1: 0)
            }
        case .penalty:
            return [Round(sparsity: 0, epochs: penaltyEpochs, l1: l1), Round(sparsity: final, epochs: fineTune, l1: 0)]
        }
    }

    static func parse(_ node: Node, sparsity: Double, hasTrain: Bool, file: String) throws -> ScheduleSpec {
        let f = try JobSpec.mapping(node, key: "schedule", known: ["method", "initial", "rounds", "epochs_per_round", "l1", "epochs"], file: file)
        guard hasTrain else { throw SpecError("\(where_(file, node)): schedule: needs train: (the data and optimizer the rounds train with)") }
        guard let m = f["method"], let method = m.scalar.flatMap({ Method(rawValue: $0.string) }) else {
            throw SpecError("\(where_(file, f["method"] ?? node)): schedule.method: must be one of \(Method.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var s = ScheduleSpec(method: method)
        let gradualKeys = ["initial", "rounds", "epochs_per_round"], penaltyKeys = ["l1", "epochs"]
        if let k = (method == .gradual ? penaltyKeys : gradualKeys).first(where: { f[$0] != nil }) {
            throw SpecError("\(where_(file, f[k])): schedule.\(k): not a key of schedule \(method.rawValue)")
        }
        if let n = f["initial"] {
            guard let v = n.scalar.flatMap({ Double($0.string) }), v.isFinite, v >= 0, v < 1 else {
                throw SpecError("\(where_(file, n)): schedule.initial: must be a sparsity in [0, 1)")
            }
            guard v <= sparsity else {
                throw SpecError("\(where_(file, n)): schedule.initial: \(v) is above the final sparsity \(sparsity); a gradual schedule only adds sparsity")
            }
            s.initial = v
        }
        if let v = try JobSpec.positiveInt(f["rounds"], "schedule.rounds", file: file, minimum: 2, maximum: 100) { s.rounds = v }
        if let v = try JobSpec.positiveInt(f["epochs_per_round"], "schedule.epochs_per_round", file: file, minimum: 1, maximum: 100) { s.epochsPerRound = v }
        if let v = try JobSpec.positiveInt(f["epochs"], "schedule.epochs", file: file, minimum: 1, maximum: TrainSpec.maxEpochs) { s.penaltyEpochs = v }
        if let n = f["l1"] {
            guard let v = n.scalar.flatMap({ Double($0.string) }), v.isFinite, v > 0, v < 1 else {
                throw SpecError("\(where_(file, n)): schedule.l1: must be a number in (0, 1) (the penalty's strength)")
            }
            s.l1 = v
        }
        return s
    }
}
