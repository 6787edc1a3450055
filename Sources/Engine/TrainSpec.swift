import Foundation
import Models
import Pruning
import Yams

/// Data-parallel training with the job's masks fixed (`train:` in the spec;
/// `TrainPhase`): `epochs` passes over the examples in seeded shuffled batches of `batch`,
/// each batch's gradient the sum of `shards` tasks on slices of it (a classifier's in a
/// fixed binary tree, `ShardTreeSum`; a language model's in shard order) (the
/// workers compute them in parallel), one optimizer step per batch. With `sparsity: 0` it
/// trains the dense model; otherwise it fine-tunes the pruned one.
/// - An MLP classifier (mlp.json): labelled examples, softmax cross-entropy.
/// - A Llama-family model (config.json): a text's consecutive windows of `tokens` tokens,
///   next-token cross-entropy (the mean over the batch's scored tokens); the decoder's
///   Linear weights train, embeddings, norms and head stay fixed. AdamW at 2e-5 by default.
///
///     train: {data: /usr/share/datasets/fashion-mnist, epochs: 10, batch: 128,
///             optimizer: sgd, learning_rate: 0.05, momentum: 0.9}
///     train: {data: kjv.txt, tokens: 128, examples: 600, batch: 4, epochs: 1}
public struct TrainSpec: Sendable, Equatable {
    public enum Optimizer: String, Sendable, CaseIterable {
        /// SGD with momentum (torch.optim.SGD's form, weight decay as an L2 term).
        case sgd
        /// AdamW: Adam with decoupled weight decay.
        case adamw
    }

    /// How a step's shard gradients meet (`train.exchange`).
    public enum Exchange: String, Sendable, CaseIterable {
        /// Every shard of every step is a task of its own, run on the workers in parallel;
        /// each task reads the others' gradients of the step before (through the
        /// coordinator's artifact store).
        case star
        /// No exchange: one task takes every step from a checkpoint to the next alone,
        /// computing each step's shards one after another and summing them in the same
        /// order, so the bytes equal `star`'s. For models whose step computes in less time
        /// than an exchange and a round trip through the coordinator take (a small
        /// classifier); spans run one after another, so more workers do not speed it up.
        case none
        /// Spans as `none`, each helped by the workers idle when it starts: every member
        /// of the span's group computes its slice of each step's shards and shares the sum of
        /// each aligned run of them with the others through the coordinator (an all-gather
        /// of subtrees of the step's `ShardTreeSum`), and every member adds them up and
        /// takes the step itself, so the bytes equal `star`'s and `none`'s whoever computed
        /// which shard. The leader can compute any run itself, so a helper that is slow or
        /// dies costs time, never the result; it recomputes each helper's runs at one step
        /// per span, picked at random, and checks every share's values, so a lying helper is
        /// caught with a probability that grows with how much it lies (a share off in every
        /// step is caught in its first span; a lie at one step of a span escapes with odds
        /// 1 − 1/steps). Verified tasks get no
        /// helpers. For the MLP classifier (a language model's shares would be its whole
        /// gradient).
        case allgather
    }

    /// Labelled examples: an IDX images file, a directory holding the MNIST-style
    /// training split (`train-images-idx3-ubyte[.gz]`), or `.safetensors` with inputs/labels.
    /// For a Llama model: a text (or token ids) that calibration data could be.
    public var data: String
    /// Only the first this many examples (nil: all); for a Llama model, windows.
    public var examples: Int?
    /// A Llama model's window length in tokens (nil: an MLP classifier).
    public var tokens: Int?
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
    /// Weights and optimizer state are kept (an artifact) every this many steps of an
    /// epoch (counted from its start) and at its end; a killed job resumes from the last one.
    /// A classifier's spans (`exchange: none`, `allgather`) count the steps of the job
    /// instead and run across epochs (their tasks keep each inner epoch's weights).
    public var checkpointEvery = 50
    /// Seeds the order of the examples in every epoch.
    public var seed: UInt64
    /// `exchange: none` (or `allgather`) runs each span between checkpoints as one task
    /// (see `Exchange`).
    public var exchange = Exchange.star

    public static let maxEpochs = 1000
    public static let maxBatch = 65_536
    /// With `exchange: none` a task carries the examples of every step of its span (a
    /// classifier's by index, a language model's token ids).
    public static let maxSpanBytes = 64 << 20

    /// A finite number at `node` that `valid` accepts, or nil when the key is absent;
    /// refused with `rule` (what the key takes) otherwise.
    static func number(_ node: Node?, _ key: String, file: String, rule: String, _ valid: (Double) -> Bool) throws -> Double? {
        guard let node else { return nil }
        guard let v = node.scalar.flatMap({ Double($0.string) }), v.isFinite, valid(v) else { throw SpecError("\(where_(file, node)): \(key): must be \(rule)") }
        return v
    }

    /// One of `E`'s values at `node`, or nil when the key is absent; refused with the list
    /// of values otherwise.
    static func choice<E: RawRepresentable & CaseIterable>(_ node: Node?, _ key: String, _: E.Type, file: String) throws -> E? where E.RawValue == String {
        guard let node else { return nil }
        guard let value = node.scalar.flatMap({ E(rawValue: $0.string) }) else {
            throw SpecError("\(where_(file, node)): \(key): '\(node.scalar?.string ?? "?")' is not one of \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    static let keys = ["data", "examples", "epochs", "batch", "shards", "optimizer", "learning_rate", "momentum", "weight_decay",
                       "checkpoint_every", "seed", "lr_schedule", "tokens", "exchange"]

    static func parse(_ node: Node, seed: UInt64, model: String, resolve: (String) -> String, file: String) throws -> TrainSpec {
        let f = try JobSpec.mapping(node, key: "train", known: keys, file: file)
        guard let dataNode = f["data"], let data = dataNode.scalar?.string, !data.isEmpty else {
            throw SpecError("\(where_(file, node)): train: missing 'data' (labelled examples: an IDX images file, a directory with train-images-idx3-ubyte[.gz], or .safetensors)")
        }
        let llama = !MLPConfig.exists(in: model)
        if llama, (try? LlamaConfig.load(model)) == nil {
            throw SpecError("\(where_(file, node)): train: training needs an MLP classifier (mlp.json) or a Llama-family model (config.json) beside the checkpoint; \(model) has neither")
        }
        var spec = TrainSpec(data: resolve(data), learningRate: 0.05, seed: seed)
        if llama {
            spec.tokens = 128
            spec.optimizer = .adamw
            spec.learningRate = 2e-5
            spec.batch = 4
            spec.epochs = 1
            spec.checkpointEvery = 10
        }
        if let n = f["tokens"] {
            guard llama else { throw SpecError("\(where_(file, n)): train.tokens: the window length of a Llama model's text; an MLP classifier takes labelled examples") }
            spec.tokens = try JobSpec.positiveInt(n, "train.tokens", file: file, minimum: 2, maximum: 8192)
        }
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
        if let o = try choice(f["optimizer"], "train.optimizer", Optimizer.self, file: file) {
            spec.optimizer = o
            if !llama { spec.learningRate = o == .adamw ? 1e-3 : 0.05 }
        }
        if let v = try number(f["learning_rate"], "train.learning_rate", file: file, rule: "a finite number in (0, 10]", { $0 > 0 && $0 <= 10 }) {
            spec.learningRate = v
        }
        if let n = f["momentum"] {
            guard spec.optimizer == .sgd else { throw SpecError("\(where_(file, n)): train.momentum: for optimizer sgd (AdamW has its own moments)") }
            spec.momentum = try number(n, "train.momentum", file: file, rule: "a number in [0, 1)", { $0 >= 0 && $0 < 1 })!
        }
        if let v = try number(f["weight_decay"], "train.weight_decay", file: file, rule: "a number in [0, 1)", { $0 >= 0 && $0 < 1 }) { spec.weightDecay = v }
        if let v = try JobSpec.positiveInt(f["checkpoint_every"], "train.checkpoint_every", file: file, minimum: 1, maximum: 100_000) { spec.checkpointEvery = v }
        if let v = try JobSpec.cosineSchedule(f["lr_schedule"], "train.lr_schedule", file: file) { spec.cosine = v }
        if let e = try choice(f["exchange"], "train.exchange", Exchange.self, file: file) { spec.exchange = e }
        if let n = f["seed"] {
            guard let v = n.scalar.flatMap({ UInt64($0.string) }) else { throw SpecError("\(where_(file, n)): train.seed: must be a non-negative integer") }
            spec.seed = v
        }
        return spec
    }
}

/// How sparsity arrives during training (`schedule:`; needs `train:`). The job's
/// `sparsity` is the final level (`adaptive`: the highest it may reach); each round prunes
/// by magnitude (the job's pattern) from the weights training reached, then trains with
/// that mask fixed.
/// - `gradual` (Zhu & Gupta 2017): `rounds` levels on the cubic curve
///   s_r = s_f + (s_i − s_f)(1 − r/(rounds − 1))³ from `initial` to the final sparsity,
///   `epochs_per_round` epochs of training after each, and `train.epochs` more after the last.
/// - `penalty`: `epochs` epochs of dense training with an L1 penalty `l1`·Σ|w| on the
///   weights (driving the unimportant ones towards 0), then one prune to the final
///   sparsity and `train.epochs` epochs of fine-tuning without it.
/// - `adaptive`: each round's level is decided from the rounds before it
///   (`AdaptiveLevels`): up by `step` from `initial` while the accuracy on `validation`
///   held-out training examples stays within `budget` of the start's, halfway back
///   towards the last level that met it when it does not; the last round fine-tunes the
///   highest level that met the budget for `epochs_per_round` + `train.epochs` epochs.
public struct ScheduleSpec: Sendable, Equatable {
    public enum Method: String, Sendable, CaseIterable { case gradual, penalty, adaptive }
    public var method: Method
    /// gradual: the first round's level; adaptive: the first level tried.
    public var initial = 0.0
    public var rounds = 8
    public var epochsPerRound = 1
    /// penalty: its strength and the epochs trained with it.
    public var l1 = 1e-4
    public var penaltyEpochs = 5
    /// adaptive: how far a level is raised after a round that met the budget.
    public var step = 0.1
    /// adaptive: the accuracy (a fraction: 0.01 is one point) a round may lose against
    /// the start's on the validation examples.
    public var budget = 0.01
    /// adaptive: training examples held out to validate each round on (nil: a tenth).
    public var validation: Int?

    /// One round: prune to `sparsity` (nil: decided as the job runs, `adaptive`), then
    /// train `epochs` with `l1`.
    public struct Round: Sendable, Equatable {
        public var sparsity: Double?
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
        case .adaptive:
            return (0..<rounds).map { r in Round(sparsity: nil, epochs: epochsPerRound + (r == rounds - 1 ? fineTune : 0), l1: 0) }
        }
    }

    static func parse(_ node: Node, sparsity: Double, hasTrain: Bool, file: String) throws -> ScheduleSpec {
        let f = try JobSpec.mapping(node, key: "schedule", known: ["method", "initial", "rounds", "epochs_per_round", "l1", "epochs", "step", "budget", "validation"],
                                    file: file)
        guard hasTrain else { throw SpecError("\(where_(file, node)): schedule: needs train: (the data and optimizer the rounds train with)") }
        guard let m = f["method"], let method = m.scalar.flatMap({ Method(rawValue: $0.string) }) else {
            throw SpecError("\(where_(file, f["method"] ?? node)): schedule.method: must be one of \(Method.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var s = ScheduleSpec(method: method)
        let keys: [Method: [String]] = [.gradual: ["initial", "rounds", "epochs_per_round"], .penalty: ["l1", "epochs"],
                                        .adaptive: ["initial", "rounds", "epochs_per_round", "step", "budget", "validation"]]
        if let k = f.keys.sorted().first(where: { $0 != "method" && !keys[method]!.contains($0) }) {
            throw SpecError("\(where_(file, f[k])): schedule.\(k): not a key of schedule \(method.rawValue)")
        }
        if method == .adaptive {
            s.initial = min(0.5, sparsity)
            s.rounds = 6
        }
        if let n = f["initial"], let v = try TrainSpec.number(n, "schedule.initial", file: file, rule: "a sparsity in [0, 1)", { $0 >= 0 && $0 < 1 }) {
            guard v <= sparsity else {
                throw SpecError("\(where_(file, n)): schedule.initial: \(v) is above the final sparsity \(sparsity); the \(method.rawValue) schedule only adds sparsity")
            }
            s.initial = v
        }
        if method == .adaptive, s.initial < AdaptiveLevels.resolution {
            throw SpecError("\(where_(file, f["initial"] ?? node)): schedule.initial: an adaptive schedule needs a first level of at least \(AdaptiveLevels.resolution) (sparsity \(sparsity))")
        }
        if let v = try JobSpec.positiveInt(f["rounds"], "schedule.rounds", file: file, minimum: 2, maximum: 100) { s.rounds = v }
        if let v = try JobSpec.positiveInt(f["epochs_per_round"], "schedule.epochs_per_round", file: file, minimum: 1, maximum: 100) { s.epochsPerRound = v }
        if let v = try JobSpec.positiveInt(f["epochs"], "schedule.epochs", file: file, minimum: 1, maximum: TrainSpec.maxEpochs) { s.penaltyEpochs = v }
        if let v = try JobSpec.positiveInt(f["validation"], "schedule.validation", file: file, minimum: 1, maximum: 10_000_000) { s.validation = v }
        if let v = try TrainSpec.number(f["l1"], "schedule.l1", file: file, rule: "a number in (0, 1) (the penalty's strength)", { $0 > 0 && $0 < 1 }) { s.l1 = v }
        if let v = try TrainSpec.number(f["step"], "schedule.step", file: file, rule: "a number in [\(AdaptiveLevels.resolution), 1) (how far a round raises the level)",
                                        { $0 >= AdaptiveLevels.resolution && $0 < 1 }) { s.step = v }
        if let v = try TrainSpec.number(f["budget"], "schedule.budget", file: file, rule: "an accuracy loss in [0, 1) (0.01 is one point)", { $0 >= 0 && $0 < 1 }) {
            s.budget = v
        }
        return s
    }
}
