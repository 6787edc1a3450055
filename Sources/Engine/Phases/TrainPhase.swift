import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// Data-parallel masked training (`train:`, `TrainSpec`) of an MLP classifier or a
/// Llama-family model (`TrainedModel` holds what differs), after the masks: every step's gradient is the sum (`ShardTreeSum`'s tree for a classifier, shard order for a language model) of `shards` tasks
/// `train:grad:T:J` on slices of step T's batch, which the workers compute in parallel;
/// no task applies the steps alone: each task rebuilds the state at its step from the
/// last checkpoint and the gradients since (`TrainStep`; a worker keeps its last state,
/// so it usually applies one step). `train:ckpt:K` keeps the weights and optimizer state
/// after step K as an artifact every `checkpoint_every` steps and at every epoch's end,
/// so the gradients before it can go and a killed job resumes from it; at an epoch's end
/// it also keeps the weights (the report's accuracy curve, and assembly's values).
/// With `train.exchange: none` there are no gradient tasks: each checkpoint task takes
/// the steps since the last checkpoint itself, every step's shards one after another and
/// summed in the same order (`TrainStep`'s action `span`), so the bytes equal the star
/// exchange's; the spans run one after another, a classifier's across epochs (a span
/// keeps the weights and sums of each epoch that ends inside it).
/// The bytes depend on the spec and the data only, never on the worker count.
public final class TrainPhase: Phase, PrunedTensorSource, UpdatedTensorSource {
    public static let name = "train"
    let job: JobContext
    let spec: TrainSpec
    /// What trains and on what: the model-specific half.
    let trainee: any TrainedModel
    /// Tensors in the flat parameter order (weight, then bias, layer by layer), with sizes.
    let parameterNames: [String]
    let parameterSizes: [Int]
    /// How many payloads a checkpoint's state is cut into (each under the frame limit).
    let stateChunks: Int
    /// Where each layer's weight mask comes from (nil: trained whole).
    private let masks: [(source: any PrunedTensorSource, name: String)?]
    let stepsPerEpoch: Int
    /// Whether a checkpoint may fall inside an epoch and a span run across its end (a
    /// classifier's spans): see `init`.
    let spansCrossEpochs: Bool
    /// The most a span's worker holds of the weights of epochs ending inside it (and
    /// sends in its result): 256 MiB.
    static let maxInnerWeightBytes = 256 << 20
    /// Examples 0..<trainCount are trained on; the rest (an adaptive schedule's
    /// validation examples) are held out.
    let trainCount: Int
    /// With a `schedule:`, the rounds (each prunes, then trains); nil: one round of
    /// `train.epochs` with the job's masks.
    let rounds: [ScheduleSpec.Round]?
    /// An adaptive schedule (its rounds' levels are decided as the job runs).
    let adaptive: ScheduleSpec?
    /// The first step of each round (one round without a schedule).
    let roundStarts: [Int]
    let totalSteps: Int
    /// Steps after which a checkpoint task keeps the state, ascending (the last is the end).
    let checkpoints: [Int]
    private var orders: [Int: [Int]] = [:]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard let spec = job.spec.train else { return nil }
        self.job = job
        self.spec = spec
        let trainee: any TrainedModel = try spec.tokens.map { try LlamaTrainee(job: job, spec: spec, tokens: $0) } ?? MLPTrainee(job: job, spec: spec)
        self.trainee = trainee
        let adaptive = job.spec.schedule.flatMap { $0.method == .adaptive ? $0 : nil }
        self.adaptive = adaptive
        let count = trainee.exampleCount
        let held = adaptive.map { $0.validation ?? count / 10 } ?? 0
        guard adaptive == nil || held > 0 else {
            throw SpecError("schedule.validation: \(count) examples of \(trainee.source) leave none to hold out for an adaptive schedule; set schedule.validation")
        }
        guard held < count else {
            throw SpecError("schedule.validation: \(held) held-out examples leave none of the \(count) examples of \(trainee.source) to train on")
        }
        trainCount = count - held
        guard spec.batch <= trainCount else {
            let heldOut = held > 0 ? " (\(held) are held out for validation)" : ""
            throw SpecError("train.batch: \(spec.batch) is more than the \(trainCount) training examples of \(trainee.source)\(heldOut)")
        }
        let sources = earlier.compactMap { $0 as? PrunedTensorSource }
        masks = trainee.layers.map { layer in sources.last { $0.prunedTensors.contains(layer.weight) }.map { ($0, layer.weight) } }
        parameterNames = trainee.parameterNames
        parameterSizes = trainee.parameterSizes
        // Parameters, and at most two moments each (AdamW), with room for the headers.
        let stateBytes = 12 * parameterSizes.reduce(0, +) + 64 * (parameterSizes.count + 1)
        stateChunks = max(1, (stateBytes + TrainPhase.stateChunkBytes - 1) / TrainPhase.stateChunkBytes)
        let perEpoch = trainCount / spec.batch, every = spec.checkpointEvery
        stepsPerEpoch = perEpoch
        let rounds = job.spec.schedule?.rounds(final: job.plan.sparsity, fineTune: spec.epochs)
        self.rounds = rounds
        var starts = [0]
        for r in (rounds ?? []).dropLast() { starts.append(starts.last! + r.epochs * perEpoch) }
        roundStarts = starts
        let total = rounds.map { $0.reduce(0) { $0 + $1.epochs } * perEpoch } ?? perEpoch * spec.epochs
        totalSteps = total
        guard total > 0 else { throw SpecError("train: no steps to take (an epoch of \(perEpoch) batches, \(total / max(perEpoch, 1)) epochs)") }
        // Every `every` steps of an epoch, and its end (so every round's start): counted
        // from the epoch's start, so an epoch shorter than `every` is one span, not cut
        // where a job-wide count of `every` falls (a span costs a task, and with helpers
        // a recomputed share), and no two checkpoints are more than `every` steps apart.
        // A classifier's spans (`exchange: none` or `allgather`) run across epochs instead:
        // every `every` steps of the job, and at each round's end and the job's; a span
        // keeps the weights and sums of the epochs that end inside it (`epochEnds`), so an
        // epoch of a few steps no longer costs a task (its result, commit and next lease)
        // and with helpers a rendezvous.
        // A span holds the weights of each epoch ending inside it until it answers: where
        // they would pass `maxInnerWeightBytes`, spans stop at epochs' ends as a star's do.
        let innerEnds = (every + perEpoch - 1) / perEpoch
        spansCrossEpochs = spec.exchange != .star && !(trainee is LlamaTrainee)
            && innerEnds * 4 * parameterSizes.reduce(0, +) <= TrainPhase.maxInnerWeightBytes
        checkpoints = spansCrossEpochs
            ? (1...total).filter { $0 % every == 0 || $0 == total || starts.contains($0) }
            : (1...total).filter { $0 % perEpoch % every == 0 }
        if spec.exchange == .allgather, trainee is LlamaTrainee {
            throw SpecError("train.exchange: allgather shares each shard's whole gradient through the coordinator every step: for the MLP classifier; a language model trains with star or none")
        }
        if spec.exchange != .star {
            // A span task carries the examples of all its steps: bounded before any is built.
            let longest = zip([0] + checkpoints, checkpoints).map { $1 - $0 }.max() ?? 0
            let step = spec.batch * trainee.bytesPerExample, bytes = longest * step
            guard step <= TrainSpec.maxSpanBytes else {
                throw SpecError("train.exchange: \(spec.exchange.rawValue): one step's \(spec.batch) examples carry \(step) bytes, more than the \(TrainSpec.maxSpanBytes) a task may; lower train.batch\(trainee is LlamaTrainee ? " or train.tokens" : "")")
            }
            guard bytes <= TrainSpec.maxSpanBytes else {
                throw SpecError("train.exchange: \(spec.exchange.rawValue): a task's \(longest) steps of \(spec.batch) examples carry \(bytes) bytes, more than \(TrainSpec.maxSpanBytes); lower train.checkpoint_every")
            }
        }
    }

    /// Whether a step's shards are tasks of their own (`exchange: star`), or a checkpoint
    /// task takes its span's steps alone (`none`).
    var exchanges: Bool { spec.exchange == .star }

    static func gradID(step: Int, shard: Int) -> TaskID { TaskID(name, "grad:\(step):\(shard)") }
    static func checkpointID(step: Int) -> TaskID { TaskID(name, "ckpt:\(step)") }
    static func pruneID(round: Int) -> TaskID { TaskID(name, "prune:\(round)") }
    /// A round's mask of a layer (packed bits, rows × ⌈cols/8⌉).
    static func mask(_ layer: String) -> OutputName { OutputName("mask:\(layer)") }

    static let gradient = OutputName("gradient")
    static let shardLoss = OutputName("shard_loss")
    static let state = OutputName("state")
    static let lineage = OutputName("lineage")
    static let sums = OutputName("sums")
    static let weights = OutputName("weights")
    /// The weights and the sums of the epoch that ends after step `e`, kept by the span
    /// task whose steps run across that end (`epochEnds`).
    static func epochWeights(_ e: Int) -> OutputName { OutputName("weights:\(e)") }
    static func epochSums(_ e: Int) -> OutputName { OutputName("sums:\(e)") }
    /// A state's chunk k ≥ 1 (chunk 0 is `state`).
    static func stateChunk(_ k: Int) -> OutputName { k == 0 ? state : OutputName("state:\(k)") }
    /// What one state payload holds at most: half the frame limit (tests set less with
    /// PRUNE_TEST_STATE_CHUNK_BYTES, to cut a small model's state into several).
    static let stateChunkBytes = ProcessInfo.processInfo.environment["PRUNE_TEST_STATE_CHUNK_BYTES"].flatMap(Int.init).flatMap { $0 > 0 ? $0 : nil } ?? 1 << 29
    private var stateOutputs: [OutputName] { (0..<stateChunks).map(TrainPhase.stateChunk) }

    public func isTransient(_ name: OutputName) -> Bool {
        name == TrainPhase.gradient || name == TrainPhase.shardLoss || name.rawValue.hasPrefix("state")
    }

    /// A gradient task's outputs (`TrainStep` marks the same two volatile).
    public func isVolatile(_ name: OutputName) -> Bool { TrainPhase.volatileOutputs.contains(name) }
    static let volatileOutputs: Set<OutputName> = [TrainPhase.gradient, TrainPhase.shardLoss]

    /// sha256 of the training examples as loaded (inputs, then labels as UInt32): a job
    /// records it, and a resume refuses data that changed since.
    public var dataDigest: String { trainee.dataDigest }

    /// The round step `t` belongs to.
    func round(ofStep t: Int) -> Int {
        var r = 0
        while r + 1 < roundStarts.count, roundStarts[r + 1] <= t { r += 1 }
        return r
    }

    /// The last checkpoint strictly before step `t` (0: the start).
    func lastCheckpoint(before t: Int) -> Int {
        let i = firstCheckpointIndex(atOrAfter: t)
        return i == 0 ? 0 : checkpoints[i - 1]
    }

    /// The index of the first checkpoint at step `t` or after it (`checkpoints.count`: none).
    private func firstCheckpointIndex(atOrAfter t: Int) -> Int {
        var lo = 0, hi = checkpoints.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if checkpoints[mid] < t { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Where the state at step `t` is rebuilt from: a checkpoint task, a round's prune
    /// task (its masked start, at the round's first step), or nil for the job's start.
    /// `round` is the round of the step before `t` (a checkpoint at a round's end
    /// belongs to the round it ends).
    func base(before t: Int, round r: Int) -> (step: Int, task: TaskID?) {
        let k = lastCheckpoint(before: t), start = roundStarts[r]
        if rounds != nil, k <= start { return (start, TrainPhase.pruneID(round: r)) }
        return (k, k > 0 ? TrainPhase.checkpointID(step: k) : nil)
    }

    /// The step at which round `r` ends (a checkpoint with the weights: an epoch's end).
    func roundEnd(_ r: Int) -> Int { r + 1 < roundStarts.count ? roundStarts[r + 1] : totalSteps }

    /// The tasks that decide a round's masks.
    private func maskTasks(round r: Int) -> [TaskID] {
        rounds == nil ? masks.compactMap { $0 }.flatMap { $0.source.producers(of: $0.name) } : [TrainPhase.pruneID(round: r)]
    }

    /// What a task at step `t` rebuilds its state from: its round's masks, the base and
    /// every shard gradient since (none without an exchange: the task takes those steps).
    private func stateInputs(step t: Int, round r: Int) -> [TaskID] {
        let b = base(before: t, round: r)
        return maskTasks(round: r) + (b.task.map { [$0] } ?? [])
            + (exchanges ? (b.step..<t).flatMap { s in (0..<spec.shards).map { TrainPhase.gradID(step: s, shard: $0) } } : [])
    }

    public var tasks: [PhaseTask] {
        var out: [PhaseTask] = []
        var next = 0
        for t in 0..<totalSteps {
            if rounds != nil, let r = roundStarts.firstIndex(of: t) {
                // A round prunes the weights the last one reached (the start's, for the first);
                // an adaptive round those of any round before it, and reads all their weights.
                let earlier = adaptive == nil ? Array((0..<r).suffix(1)) : Array(0..<r)
                out.append(PhaseTask(TrainPhase.pruneID(round: r), after: earlier.flatMap { [TrainPhase.checkpointID(step: roundEnd($0)), TrainPhase.pruneID(round: $0)] }))
            }
            let r = round(ofStep: t)
            if exchanges {
                let inputs = stateInputs(step: t, round: r)
                out += (0..<spec.shards).map { PhaseTask(TrainPhase.gradID(step: t, shard: $0), after: inputs) }
            }
            if next < checkpoints.count, checkpoints[next] == t + 1 {
                // A checkpoint at a round's end belongs to that round (the next one prunes it).
                // A span (all-gather) may be helped by a worker per further shard.
                out.append(PhaseTask(TrainPhase.checkpointID(step: t + 1), after: stateInputs(step: t + 1, round: r),
                                     helpers: spec.exchange == .allgather ? spec.shards - 1 : 0))
                next += 1
            }
        }
        return out
    }

    private enum Piece { case gradient(step: Int, shard: Int), checkpoint(step: Int), prune(round: Int) }

    private func piece(_ task: TaskID) -> Piece? {
        let parts = task.key.split(separator: ":")
        guard task.phase == Self.name else { return nil }
        if exchanges, parts.count == 3, parts[0] == "grad", let t = Int(parts[1]), let j = Int(parts[2]), t >= 0, t < totalSteps, j >= 0, j < spec.shards {
            return .gradient(step: t, shard: j)
        }
        if parts.count == 2, parts[0] == "ckpt", let k = Int(parts[1]), checkpoints.contains(k) { return .checkpoint(step: k) }
        if parts.count == 2, parts[0] == "prune", let r = Int(parts[1]), let rounds, r >= 0, r < rounds.count { return .prune(round: r) }
        return nil
    }

    /// `train.lr_schedule: cosine`: the step size of step s, from `learning_rate` at the
    /// first step down towards 0 at the last, over the whole job (computed here, once, so
    /// every worker applies the same F32 value). With an adaptive schedule the cosine
    /// restarts in each round: a round's accuracy, which decides the next level, is
    /// measured at the end of its own annealing, as the start's was.
    func learningRate(step s: Int) -> Float {
        var first = 0, count = totalSteps
        if adaptive != nil {
            let r = round(ofStep: s)
            first = roundStarts[r]
            count = roundEnd(r) - first
        }
        return CosineSchedule.stepSize(base: spec.learningRate, step: s - first, of: count)
    }

    /// The examples of epoch e in the order it visits them (a seeded Fisher–Yates shuffle).
    func order(epoch e: Int) -> [Int] {
        if let o = orders[e] { return o }
        var order = Array(0..<trainCount)
        var random = SeededRandom(seed: spec.seed, stream: "train-order", UInt64(e))
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, random.below(i + 1)) }
        if orders.count > 4 { orders.removeAll() }
        orders[e] = order
        return order
    }

    /// Examples [first, first + count) of step t's batch that shard j computes.
    func slice(step t: Int, shard j: Int) -> Range<Int> {
        let first = j * spec.batch / spec.shards, end = (j + 1) * spec.batch / spec.shards
        return first..<end
    }

    /// The work's parts every task of round `r` shares: architecture, start, the round's
    /// masks, optimizer. Round −1 (what a schedule's first prune starts from): no masks.
    private func setup(round r: Int, outputs: OutputStore) throws -> Prune_V1_TrainTask {
        var t = Prune_V1_TrainTask()
        trainee.describe(&t, job: job)
        t.stateChunks = UInt32(stateChunks)
        t.masks = try masks.map { m in
            var tm = Prune_V1_TrainMask()
            if let m {
                if rounds == nil {
                    let parts = try m.source.maskParts(of: m.name, outputs: outputs)
                    tm.parts = parts.masks
                    // Values the pruning re-fit (SparseGPT, a reconstruction) are the start.
                    if let updated = parts.updated { tm.updated = updated }
                } else if r >= 0 {
                    tm.parts = [try outputs.ref(TrainPhase.mask(m.name), of: TrainPhase.pruneID(round: r))]
                }
            }
            return tm
        }
        var o = Prune_V1_TrainOptimizer()
        o.name = spec.optimizer.rawValue
        o.learningRate = Float(spec.learningRate)
        o.momentum = Float(spec.momentum)
        o.weightDecay = Float(spec.weightDecay)
        if let rounds, r >= 0 { o.l1 = Float(rounds[r].l1) }
        t.optimizer = o
        t.startLineage = Data(TrainStep.startLineage(t).utf8)
        return t
    }

    /// The base and the gradients since, for the state before step `t` of round `r`.
    private func fillState(_ w: inout Prune_V1_TrainTask, step t: Int, round r: Int, outputs: OutputStore) throws {
        let b = base(before: t, round: r)
        w.baseStep = UInt32(b.step)
        if let task = b.task {
            try setBase(&w, of: task, outputs: outputs)
            w.baseLineage = Data(try outputs.bytes(TrainPhase.lineage, of: task))
        } else {
            w.baseLineage = w.startLineage
        }
        guard exchanges else { return }
        w.steps = try (b.step..<t).map { s in
            var step = trainStep(s)
            step.shards = try (0..<spec.shards).map { try outputs.ref(TrainPhase.gradient, of: TrainPhase.gradID(step: s, shard: $0)) }
            return step
        }
    }

    /// Step s's divisor and step size (its gradients apart).
    private func trainStep(_ s: Int) -> Prune_V1_TrainStep {
        var step = Prune_V1_TrainStep()
        step.batch = UInt32(trainee.scored(examples: spec.batch))
        if spec.cosine { step.learningRate = learningRate(step: s) }
        return step
    }

    /// The examples of step t's batch in order (shard j's slice is `slice(step: t, shard: j)` of them).
    private func batch(step t: Int) -> [Int] {
        let order = order(epoch: t / stepsPerEpoch), first = (t % stepsPerEpoch) * spec.batch
        return (0..<spec.batch).map { order[first + $0] }
    }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let piece = piece(task) else { throw PruningError("no train task \(task)") }
        // What a language model's gradient results are checked against, from the masks.
        if trainee is LlamaTrainee { _ = try keptWeights(outputs: outputs) }
        var w: Prune_V1_TrainTask
        switch piece {
        case .gradient(let t, let j):
            let r = round(ofStep: t)
            w = try setup(round: r, outputs: outputs)
            w.action = TrainStep.gradient
            try fillState(&w, step: t, round: r, outputs: outputs)
            let examples = batch(step: t)
            try trainee.fill(&w, examples: slice(step: t, shard: j).map { examples[$0] }, outputs: outputs)
        case .checkpoint(let k):
            let r = round(ofStep: k - 1)
            w = try setup(round: r, outputs: outputs)
            w.action = exchanges ? TrainStep.checkpoint : TrainStep.span
            try fillState(&w, step: k, round: r, outputs: outputs)
            let b = Int(w.baseStep)
            if exchanges {
                w.losses = try (b..<k).flatMap { s in try (0..<spec.shards).map { try outputs.ref(TrainPhase.shardLoss, of: TrainPhase.gradID(step: s, shard: $0)) } }
            } else {
                // The span's steps, each with its whole batch (the worker cuts the shards).
                w.span = (b..<k).map(trainStep)
                w.shards = UInt32(spec.shards)
                w.examplesPerStep = UInt32(spec.batch)
                try trainee.fill(&w, examples: (b..<k).flatMap(batch), outputs: outputs)
            }
            w.resetSums = b % stepsPerEpoch == 0
            if !w.resetSums { w.baseSums = try outputs.ref(TrainPhase.sums, of: TrainPhase.checkpointID(step: b)) }
            w.epochEnd = k % stepsPerEpoch == 0
            w.epochEnds = epochEnds(after: b, through: k).map(UInt32.init)
        case .prune(let r):
            // The state the last round reached (the start, for the first), pruned further;
            // an adaptive round's base and level come from the rounds before it.
            var base = r - 1, level = rounds![r].sparsity
            if adaptive != nil {
                let decided = try adaptiveLevels(outputs: outputs, done: r).rounds[r]
                base = decided.base
                level = decided.sparsity
            }
            w = try setup(round: base, outputs: outputs)
            w.action = TrainStep.prune
            if base >= 0 {
                let end = roundEnd(base)
                w.baseStep = UInt32(end)
                try setBase(&w, of: TrainPhase.checkpointID(step: end), outputs: outputs)
                w.baseLineage = Data(try outputs.bytes(TrainPhase.lineage, of: TrainPhase.checkpointID(step: end)))
            } else {
                w.baseLineage = w.startLineage
            }
            w.roundStep = UInt32(roundStarts[r])
            guard let level else { throw PruningError("\(task): no level") }
            w.sparsity = level
            w.pattern = job.plan.pattern.description
            w.pruneLayers = masks.map { $0 != nil }
        }
        return .train(w)
    }

    /// The epoch ends strictly between checkpoints `b` and `k`: steps after which an epoch
    /// ends inside a span (none unless spans cross epochs).
    func epochEnds(after b: Int, through k: Int) -> [Int] {
        guard spansCrossEpochs else { return [] }
        return stride(from: (b / stepsPerEpoch + 1) * stepsPerEpoch, to: k, by: stepsPerEpoch).map { $0 }
    }

    /// The checkpoint task that keeps the weights and sums of the epoch ending after step
    /// `e`, and whether it keeps them as its own (`weights`, `sums`: the epoch ends at the
    /// checkpoint) or as an inner epoch's (`epochWeights(e)`, `epochSums(e)`).
    func epochKeeper(_ e: Int) -> (task: TaskID, weights: OutputName, sums: OutputName) {
        // The job's last step is a checkpoint, so one is at or after every epoch's end.
        let k = checkpoints[min(firstCheckpointIndex(atOrAfter: e), checkpoints.count - 1)]
        return k == e ? (TrainPhase.checkpointID(step: k), TrainPhase.weights, TrainPhase.sums)
            : (TrainPhase.checkpointID(step: k), TrainPhase.epochWeights(e), TrainPhase.epochSums(e))
    }

    /// A task's base state: its chunks in order.
    private func setBase(_ w: inout Prune_V1_TrainTask, of task: TaskID, outputs: OutputStore) throws {
        w.base = try outputs.ref(TrainPhase.state, of: task)
        w.baseMore = try (1..<stateChunks).map { try outputs.ref(TrainPhase.stateChunk($0), of: task) }
    }

    public func outputNames(of task: TaskID) -> [OutputName] {
        switch piece(task) {
        case .gradient?: return [TrainPhase.gradient, TrainPhase.shardLoss]
        case .checkpoint(let k)?:
            return stateOutputs + [TrainPhase.lineage, TrainPhase.sums] + (k % stepsPerEpoch == 0 ? [TrainPhase.weights] : [])
                + epochEnds(after: lastCheckpoint(before: k), through: k).flatMap { [TrainPhase.epochSums($0), TrainPhase.epochWeights($0)] }
        case .prune?: return masks.compactMap { $0.map { TrainPhase.mask($0.name) } } + stateOutputs + [TrainPhase.lineage]
        case nil: return []
        }
    }

    private var parameterCount: Int { parameterSizes.reduce(0, +) }

    /// How many values a gradient holds: a language model's hold the kept weights'
    /// entries only (`LlamaTrainTask.gradient`), counted from the masks once (nil until this
    /// process built a train task's work); a classifier's every parameter.
    private func gradientValues() -> Int? { trainee is LlamaTrainee ? keptCache : parameterCount }
    private var keptCache: Int?

    private func keptWeights(outputs: OutputStore) throws -> Int {
        if let keptCache { return keptCache }
        var n = 0
        for (l, layer) in trainee.layers.enumerated() {
            n += try masks[l].map { try $0.source.mask(of: $0.name, outputs: outputs).keptCount } ?? layer.rows * layer.cols
            if layer.bias != nil { n += layer.rows }
        }
        keptCache = n
        return n
    }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        switch piece(task) {
        case .gradient(let t, let j)?:
            let size = outputs.first?.count ?? 0
            guard let values = gradientValues() else { return "result of \(task) arrived before its masks were read" }
            let sized = size == 4 * values
            guard outputs.count == 2, sized, outputs[1].count == 24 else { return "result of \(task) has the wrong sizes" }
            let rows = Double(trainee.scored(examples: slice(step: t, shard: j).count))
            guard let loss = try? FloatPayload.doubles(outputs[1], what: "loss"), loss[0].isFinite, loss[0] >= 0,
                  loss[1] >= 0, loss[1] <= rows, loss[1] == loss[1].rounded(), loss[2] == rows else { return "result of \(task): bad loss or count" }
            return nil
        case .checkpoint(let k)?:
            let c = stateChunks
            guard outputs.count == outputNames(of: task).count, outputs[c].count == 64, outputs[c + 1].count == 24 else { return "result of \(task) has the wrong sizes" }
            // The epoch's running sums so far: every step since the epoch's start scored its
            // whole batch (a span's shard losses never reach the coordinator one by one).
            // Sums (loss, correct, scored) of `steps` steps: finite, non-negative, correct
            // within scored, and scored what those steps' batches score.
            let sound = { (bytes: [UInt8], steps: Int) -> Bool in
                guard bytes.count == 24, let sums = try? FloatPayload.doubles(bytes, what: "sums") else { return false }
                return sums[0].isFinite && sums[0] >= 0 && sums[1] >= 0 && sums[1] <= sums[2]
                    && sums[2] == Double(steps * self.trainee.scored(examples: self.spec.batch))
            }
            guard sound(outputs[c + 1], (k - 1) % stepsPerEpoch + 1) else { return "result of \(task): bad running loss, count or accuracy" }
            let finite = { (weights: [UInt8]) in
                weights.count == 4 * self.parameterCount && weights.withUnsafeBytes({ $0.bindMemory(to: Float.self).allSatisfy(\.isFinite) })
            }
            var next = c + 2
            if k % stepsPerEpoch == 0 {
                guard finite(outputs[next]) else { return "result of \(task): weights of the wrong size or not finite" }
                next += 1
            }
            // Each epoch that ended inside the span: its whole sums, then its end weights.
            for e in epochEnds(after: lastCheckpoint(before: k), through: k) {
                guard sound(outputs[next], stepsPerEpoch) else { return "result of \(task): bad loss, count or accuracy of the epoch ending at step \(e)" }
                guard finite(outputs[next + 1]) else { return "result of \(task): weights at step \(e) of the wrong size or not finite" }
                next += 2
            }
            return nil
        case .prune?:
            let layers = masks.enumerated().compactMap { l, m in m.map { _ in trainee.layers[l] } }
            guard outputs.count == layers.count + stateChunks + 1, outputs.last!.count == 64 else { return "result of \(task) has the wrong sizes" }
            for (k, layer) in layers.enumerated() {
                guard (try? Mask(rows: layer.rows, cols: layer.cols, bits: outputs[k])) != nil else { return "result of \(task): mask \(k) has the wrong size" }
            }
            return nil
        case nil:
            return "no train task \(task)"
        }
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .train(let r) = work else { return nil }
        return try TrainStep.run(r, inputs: inputs)
    }

    // MARK: Outputs

    /// The trained parameters (flat order), from the last checkpoint: read once for all
    /// the tensors assembly asks for (each of them several times), keyed by the digest.
    func finalParameters(outputs: OutputStore) throws -> [Float] {
        let id = TrainPhase.checkpointID(step: try finalRound(outputs: outputs).map(roundEnd) ?? totalSteps)
        let digest = try outputs.ref(TrainPhase.weights, of: id).sha256
        if let cached = finalCache, cached.digest == digest { return cached.values }
        let values = try FloatPayload.floats(try outputs.bytes(TrainPhase.weights, of: id), what: "trained weights")
        finalCache = (digest, values)
        return values
    }
    private var finalCache: (digest: String, values: [Float])?

    // MARK: Adaptive schedule

    /// The round whose end state and masks are the job's result: an adaptive schedule's
    /// chosen round (its last, when none met the budget), another schedule's last; nil
    /// without a schedule.
    func finalRound(outputs: OutputStore) throws -> Int? {
        guard let rounds else { return nil }
        guard adaptive != nil else { return rounds.count - 1 }
        return try adaptiveLevels(outputs: outputs, done: rounds.count).written
    }

    /// An adaptive schedule's decisions once rounds 0..<done are finished: the levels and
    /// bases of rounds 0...done, from each finished round's validation accuracy.
    func adaptiveLevels(outputs: OutputStore, done: Int) throws -> AdaptiveLevels {
        guard let adaptive, let rounds else { throw PruningError("not an adaptive schedule") }
        let accuracies = try (0..<done).map { g -> Double in
            let id = TrainPhase.checkpointID(step: roundEnd(g))
            let digest = try outputs.ref(TrainPhase.weights, of: id).sha256
            if let a = validated[digest] { return a }
            let flat = try FloatPayload.floats(try outputs.bytes(TrainPhase.weights, of: id), what: "round \(g)'s weights")
            let a = try validationAccuracy(flat)
            validated[digest] = a
            return a
        }
        return AdaptiveLevels(initial: adaptive.initial, step: adaptive.step, maximum: job.plan.sparsity, budget: adaptive.budget,
                              count: rounds.count, reference: try referenceAccuracy(), accuracies: accuracies)
    }
    /// Validation accuracy by the digest of the weights it was measured on.
    private var validated: [String: Double] = [:]
    private var reference: Double?

    /// The classifier an adaptive schedule validates (the spec allows one only for it).
    private var classifier: MLPTrainee {
        get throws {
            guard let m = trainee as? MLPTrainee else { throw PruningError("an adaptive schedule validates an MLP classifier") }
            return m
        }
    }

    /// The start's accuracy on the held-out examples: what the budget is measured from.
    func referenceAccuracy() throws -> Double {
        if let reference { return reference }
        let a = try validationAccuracy(MLPTraining.flatten(try classifier.model.parameters))
        reference = a
        return a
    }

    /// The held-out examples (trainCount..<count), copied out once.
    private lazy var validation: (x: [Float], labels: [Int32])? = (try? classifier).map { m in
        (Array(m.data.inputs[(trainCount * m.data.width)...]), m.data.labels[trainCount...].map { Int32(clamping: $0) })
    }

    /// Top-1 accuracy of flat parameters on the held-out examples.
    private func validationAccuracy(_ flat: [Float]) throws -> Double {
        let m = try classifier
        guard let (x, labels) = validation, !labels.isEmpty else { throw PruningError("no validation examples") }
        guard let p = MLPTraining.unflatten(flat, like: m.model.parameters) else { throw PruningError("weights of \(flat.count) values") }
        return m.accuracy(p, x: x, labels: labels)
    }

    /// The level the job's result was pruned to, where a schedule decided it (adaptive).
    func chosenLevel(outputs: OutputStore) throws -> Double? {
        guard adaptive != nil, let rounds else { return nil }
        let levels = try adaptiveLevels(outputs: outputs, done: rounds.count)
        return levels.rounds[levels.written].sparsity
    }

    private func values(_ name: String, outputs: OutputStore) throws -> [Float] {
        guard let i = parameterNames.firstIndex(of: name) else { throw PruningError("\(name) is not trained") }
        let flat = try finalParameters(outputs: outputs)
        let at = parameterSizes[..<i].reduce(0, +)
        guard flat.count == parameterCount else { throw PruningError("trained weights: \(flat.count) values, expected \(parameterCount)") }
        return Array(flat[at..<(at + parameterSizes[i])])
    }

    /// Per epoch: the training loss and accuracy over the epoch's batches (as the
    /// weights moved), and the weights at its end (flat order).
    public func epochs(outputs: OutputStore) throws -> [(loss: Double, accuracy: Double, parameters: [Float])] {
        try (1...(totalSteps / stepsPerEpoch)).map { e in
            let kept = epochKeeper(e * stepsPerEpoch)
            let s = try FloatPayload.doubles(try outputs.bytes(kept.sums, of: kept.task), what: "epoch sums")
            let w = try FloatPayload.floats(try outputs.bytes(kept.weights, of: kept.task), what: "epoch weights")
            return (s[0] / max(s[2], 1), s[1] / max(s[2], 1), w)
        }
    }

    /// The curve for the manifest and report: each epoch's training loss and accuracy, and
    /// the accuracy of its end weights on the evaluation data (when the spec has some).
    func history(outputs: OutputStore) throws -> Manifest.Training {
        let levels = try adaptive.map { _ in try adaptiveLevels(outputs: outputs, done: rounds!.count) }
        let language = trainee is LlamaTrainee
        let epochs = try self.epochs(outputs: outputs).enumerated().map { e, epoch -> Manifest.Training.Epoch in
            let measured = try trainee.evaluate(epoch.parameters, job: job)
            let r = round(ofStep: (e + 1) * stepsPerEpoch - 1)
            return .init(epoch: e + 1, trainLoss: epoch.loss, trainAccuracy: language ? nil : epoch.accuracy, testAccuracy: measured.accuracy,
                         testPerplexity: measured.perplexity, sparsity: levels.map { $0.rounds[r].sparsity } ?? rounds?[r].sparsity)
        }
        var history = Manifest.Training(optimizer: spec.optimizer.rawValue, learningRate: spec.learningRate, batch: spec.batch, shards: spec.shards,
                                        examples: trainCount, stepsPerEpoch: stepsPerEpoch, epochs: epochs)
        if language, rounds == nil {
            // Where fine-tuning started: the pruned weights (re-fit where the pruning re-fit them).
            history.startPerplexity = try trainee.evaluate(try maskedStart(outputs: outputs), job: job).perplexity
        }
        if let adaptive, let levels {
            history.adaptive = .init(budget: adaptive.budget, validationExamples: trainee.exampleCount - trainCount, referenceAccuracy: try referenceAccuracy(),
                                     rounds: levels.rounds.enumerated().map { r, round in
                                         .init(round: r, sparsity: round.sparsity, baseRound: round.base, validationAccuracy: round.accuracy,
                                               met: round.met)
                                     },
                                     chosenRound: levels.chosen, sparsity: levels.rounds[levels.written].sparsity)
        }
        return history
    }

    /// The start's trained tensors (flat order) with the job's masks applied: the values
    /// the pruning gave them where it changed them, else the checkpoint's.
    private func maskedStart(outputs: OutputStore) throws -> [Float] {
        var flat: [Float] = []
        flat.reserveCapacity(parameterCount)
        let reader = WeightStore(checkpoint: job.checkpoint)
        for (l, layer) in trainee.layers.enumerated() {
            var w = try masks[l].flatMap { try $0.source.updatedValues(of: $0.name, outputs: outputs) }
                ?? reader.load(layer.weight, shape: [layer.rows, layer.cols])
            if let m = masks[l] {
                let mask = try m.source.mask(of: m.name, outputs: outputs)
                for r in 0..<layer.rows { for c in 0..<layer.cols where !mask[r, c] { w[r * layer.cols + c] = 0 } }
            }
            flat += w
            if let b = layer.bias { flat += try reader.load(b, shape: [layer.rows]) }
        }
        return flat
    }

    // MARK: PrunedTensorSource, UpdatedTensorSource

    public var prunedTensors: Set<String> { Set(masks.compactMap { $0?.name }) }

    public func producers(of tensor: String) -> [TaskID] { [TrainPhase.checkpointID(step: totalSteps)] }

    /// A schedule's masks are its final round's; otherwise the job's.
    public func maskParts(of tensor: String, outputs: OutputStore) throws -> (masks: [Prune_V1_ArtifactRef], updated: Prune_V1_ArtifactRef?) {
        guard let m = masks.compactMap({ $0 }).first(where: { $0.name == tensor }) else { throw PruningError("\(tensor) is not pruned by this job") }
        if let r = try finalRound(outputs: outputs) { return ([try outputs.ref(TrainPhase.mask(tensor), of: TrainPhase.pruneID(round: r))], nil) }
        return (try m.source.maskParts(of: tensor, outputs: outputs).masks, nil)
    }

    public func mask(of tensor: String, outputs: OutputStore) throws -> Mask {
        guard let m = masks.compactMap({ $0 }).first(where: { $0.name == tensor }) else { throw PruningError("\(tensor) is not pruned by this job") }
        if let r = try finalRound(outputs: outputs), let layer = trainee.layers.first(where: { $0.weight == tensor }) {
            let bits = try outputs.bytes(TrainPhase.mask(tensor), of: TrainPhase.pruneID(round: r))
            return try Mask(rows: layer.rows, cols: layer.cols, bits: bits)
        }
        return try m.source.mask(of: tensor, outputs: outputs)
    }

    public func updatesValues(of tensor: String) -> Bool { true }

    public func updatedValues(of tensor: String, outputs: OutputStore) throws -> [Float]? { try values(tensor, outputs: outputs) }

    public var updatedTensors: Set<String> { Set(parameterNames) }

    public func updatedValues(ofUnpruned tensor: String, outputs: OutputStore) throws -> [Float] { try values(tensor, outputs: outputs) }
}

/// A phase that gives new values to tensors, pruned or not (training updates biases and
/// layers it does not prune): assembly writes them in place of the checkpoint's.
public protocol UpdatedTensorSource {
    var updatedTensors: Set<String> { get }
    func updatedValues(ofUnpruned tensor: String, outputs: OutputStore) throws -> [Float]
}
