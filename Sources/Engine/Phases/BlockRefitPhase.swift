import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// Block-wise reconstruction (`reconstruct: {scope: block}`): the pruned Linear layers of
/// each half of decoder block B (PART `attention` or `mlp`) are re-fit so the half
/// reproduces the dense half's output, by Adam steps on the kept weights
/// (`SubBlockGradient`, `MaskedAdam`): masks fixed, pruned weights exactly zero. The fit
/// starts from the layer-wise re-fit of the prune tasks and runs `epochs` passes over the
/// calibration shards, one step per shard in shard order, at `learning_rate` or, with
/// `lr_schedule: cosine`, at `CosineSchedule`'s falling sizes (the same in both modes).
/// - Dense calibration mode: on the dense model's activations, every half independent:
///   one task `refit:B:PART` per half.
/// - Sequential mode: on the inputs the pruned and re-fit blocks before it give (block B's
///   calibration tasks' hidden states; the MLP half after the re-fit attention half), with
///   the dense half as teacher on those inputs. Each step's gradient is the sum, in slice
///   order, of `tasks_per_step` tasks on slices of the shard (`refit:B:PART:grad:E:S:J`,
///   run in parallel); `refit:B:PART:step:E:S` takes the Adam step and keeps the weights
///   and optimizer state as an artifact, so a killed job resumes at the first unfinished
///   step; `refit:B:PART:before:S`/`after:S` measure the loss; `refit:B:PART` keeps the
///   better of start and end. Block B+1 calibrates on the re-fit block B.
/// Either way the bytes do not depend on the worker count.
///
/// It decides the weights of the tensors it re-fits (assembly reads them here); the masks
/// stay the prune tasks'.
public final class BlockRefitPhase: Phase, RoundedPhase, PrunedTensorSource, ManifestContributor {
    public static let name = "refit"
    let job: JobContext
    let calibration: CalibrationPlan
    let prune: LayerPrunePhase
    let reconstruct: Reconstruct
    /// The pruned Linear layers of each (block, half), in `SubBlock.linears` order.
    private let layers: [TaskID: [String]]
    private let taskOf: [String: TaskID]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard let reconstruct = job.spec.reconstruct, reconstruct.scope == .block, let calibration = job.calibration,
              let prune = earlier.compactMap({ $0 as? LayerPrunePhase }).first else { return nil }
        self.job = job
        self.calibration = calibration
        self.prune = prune
        self.reconstruct = reconstruct
        var layers: [TaskID: [String]] = [:], taskOf: [String: TaskID] = [:]
        for b in 0..<calibration.blocks {
            let targets = Set(calibration.targets(block: b))
            for part in SubBlock.allCases {
                let names = part.linears.map { "model.layers.\(b).\($0).weight" }.filter(targets.contains)
                guard !names.isEmpty else { continue }
                let id = BlockRefitPhase.id(block: b, part: part)
                layers[id] = names
                for name in names { taskOf[name] = id }
            }
        }
        self.layers = layers
        self.taskOf = taskOf
    }

    public static func id(block: Int, part: SubBlock) -> TaskID { TaskID(name, "\(block):\(part.rawValue)") }

    /// The half a pruned Linear of a decoder block belongs to.
    static func part(of linear: String) -> SubBlock? {
        SubBlock.allCases.first { part in part.linears.contains { linear.hasSuffix(".\($0).weight") } }
    }

    /// Sequential mode: where block b+1's calibration reads a pruned Linear of block b (its
    /// half's re-fit weights).
    static func refitWeights(of linear: String, block b: Int, outputs: OutputStore) throws -> Prune_V1_ArtifactRef {
        guard let part = part(of: linear) else { throw PruningError("\(linear) is in no half of block \(b)") }
        return try outputs.ref(weights(linear), of: id(block: b, part: part))
    }

    /// `weights:<linear>`: a re-fit layer's F32 weights.
    static func weights(_ layer: String) -> OutputName { OutputName("weights:\(layer)") }
    /// The half's Σ (y − teacher)² over every shard, before and after (two F64).
    static let loss = OutputName("loss")
    /// Sequential mode: a slice's gradient (F32, the pruned Linears' in order).
    static let gradient = OutputName("gradient")
    /// Sequential mode: the pruned Linears' weights and Adam state after a step.
    static let state = OutputName("state")
    /// Sequential mode: Σ (y − teacher)² over a slice (one F64).
    static let shardLoss = OutputName("shard_loss")

    public func isTransient(_ name: OutputName) -> Bool {
        name == BlockRefitPhase.gradient || name == BlockRefitPhase.state || name == BlockRefitPhase.shardLoss
    }

    // MARK: Sequential mode's pieces

    private enum Piece: Equatable {
        case whole
        case loss(after: Bool, shard: Int)
        case gradient(epoch: Int, shard: Int, slice: Int)
        case step(epoch: Int, shard: Int)
    }

    private var sequential: Bool { calibration.mode == .sequential }

    private func id(_ b: Int, _ part: SubBlock, _ piece: Piece) -> TaskID {
        let base = "\(b):\(part.rawValue)"
        switch piece {
        case .whole: return TaskID(Self.name, base)
        case .loss(let after, let s): return TaskID(Self.name, "\(base):\(after ? "after" : "before"):\(s)")
        case .gradient(let e, let s, let j): return TaskID(Self.name, "\(base):grad:\(e):\(s):\(j)")
        case .step(let e, let s): return TaskID(Self.name, "\(base):step:\(e):\(s)")
        }
    }

    /// Windows [first, first + count) of shard s that gradient slice j covers.
    private func slice(_ j: Int, shard s: Int) -> (first: Int, count: Int) {
        let n = calibration.windows(shard: s).count, k = slices(shard: s)
        let first = j * n / k
        return (first, (j + 1) * n / k - first)
    }

    private func slices(shard s: Int) -> Int { min(reconstruct.tasksPerStep, calibration.windows(shard: s).count) }

    /// The steps in order: epoch by epoch, shard by shard.
    private var steps: [(epoch: Int, shard: Int)] {
        (0..<reconstruct.epochs).flatMap { e in (0..<calibration.shardCount).map { (e, $0) } }
    }

    /// The step before (e, s); nil for the first.
    private func previous(_ e: Int, _ s: Int) -> (epoch: Int, shard: Int)? {
        if s > 0 { return (e, s - 1) }
        return e > 0 ? (e - 1, calibration.shardCount - 1) : nil
    }

    private func blockAndPiece(_ task: TaskID) -> (Int, SubBlock, Piece)? {
        let parts = task.key.split(separator: ":").map(String.init)
        guard task.phase == Self.name, parts.count >= 2, let b = Int(parts[0]), let part = SubBlock(rawValue: parts[1]),
              layers[BlockRefitPhase.id(block: b, part: part)] != nil else { return nil }
        let n = parts.dropFirst(2).compactMap { Int($0) }
        let piece: Piece
        switch (parts.count, parts.count > 2 ? parts[2] : "") {
        case (2, _): piece = .whole
        case (4, "before"), (4, "after"):
            guard n.count == 1, n[0] >= 0, n[0] < calibration.shardCount else { return nil }
            piece = .loss(after: parts[2] == "after", shard: n[0])
        case (6, "grad"):
            guard n.count == 3, n[0] >= 0, n[0] < reconstruct.epochs, n[1] >= 0, n[1] < calibration.shardCount, n[2] >= 0, n[2] < slices(shard: n[1]) else { return nil }
            piece = .gradient(epoch: n[0], shard: n[1], slice: n[2])
        case (5, "step"):
            guard n.count == 2, n[0] >= 0, n[0] < reconstruct.epochs, n[1] >= 0, n[1] < calibration.shardCount else { return nil }
            piece = .step(epoch: n[0], shard: n[1])
        default: return nil
        }
        guard piece == .whole || sequential else { return nil }
        return (b, part, piece)
    }

    /// The sequential tasks of one half, in the order they run.
    private func sequentialTasks(_ b: Int, _ part: SubBlock, start: [TaskID]) -> [PhaseTask] {
        let inputs = { (s: Int) in [CalibratePhase.id(block: b, shard: s)] }
        let context = part == .mlp && layers[BlockRefitPhase.id(block: b, part: .attention)] != nil ? [BlockRefitPhase.id(block: b, part: .attention)] : []
        let state = { (step: (epoch: Int, shard: Int)?) in step.map { [self.id(b, part, .step(epoch: $0.epoch, shard: $0.shard))] } ?? start }
        var out = (0..<calibration.shardCount).map { PhaseTask(id(b, part, .loss(after: false, shard: $0)), after: start + inputs($0) + context) }
        for (e, s) in steps {
            let before = state(previous(e, s))
            let grads = (0..<slices(shard: s)).map { id(b, part, .gradient(epoch: e, shard: s, slice: $0)) }
            out += grads.map { PhaseTask($0, after: before + inputs(s) + context) }
            out.append(PhaseTask(id(b, part, .step(epoch: e, shard: s)), after: before + grads))
        }
        let last = state(steps.last)
        let after = (0..<calibration.shardCount).map { id(b, part, .loss(after: true, shard: $0)) }
        out += after.enumerated().map { PhaseTask($1, after: last + inputs($0) + context) }
        let before = (0..<calibration.shardCount).map { id(b, part, .loss(after: false, shard: $0)) }
        out.append(PhaseTask(id(b, part, .whole), after: start + last + before + after))
        return out
    }

    /// After the prune tasks of the half's layers and the calibration tasks whose hidden
    /// states are the block's input (dense mode: block b−1's output; sequential: block b's).
    public var tasks: [PhaseTask] {
        (0..<calibration.blocks).flatMap { b in
            SubBlock.allCases.flatMap { part -> [PhaseTask] in
                let id = BlockRefitPhase.id(block: b, part: part)
                guard let names = layers[id] else { return [] }
                let start = names.map(LayerPrunePhase.id(tensor:))
                if sequential { return sequentialTasks(b, part, start: start) }
                let inputs = b == 0 ? [] : (0..<calibration.shardCount).map { CalibratePhase.id(block: b - 1, shard: $0) }
                return [PhaseTask(id, after: start + inputs)]
            }
        }
    }

    public func round(of task: TaskID) -> Int { blockAndPiece(task)?.0 ?? 0 }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let (b, part, piece) = blockAndPiece(task), let names = layers[BlockRefitPhase.id(block: b, part: part)] else { throw PruningError("no refit task \(task)") }
        if sequential { return .blockStep(try stepWork(b, part, piece, names: names, outputs: outputs)) }
        var r = Prune_V1_BlockRefitTask()
        r.block = UInt32(b)
        r.part = part.rawValue
        r.configJson = Data(calibration.configJSON)
        r.tokens = UInt32(calibration.tokens)
        r.shardSamples = (0..<calibration.shardCount).map { UInt32(calibration.windows(shard: $0).count) }
        var read = calibration.config.blockTensorNames(block: b)
        if b == 0 {
            r.tokenIds = (0..<calibration.shardCount).flatMap { calibration.windows(shard: $0).flatMap { $0 } }
            read.append(CalibrationWork.embeddingName)
        } else {
            r.hidden = try (0..<calibration.shardCount).map { try outputs.ref(CalibratePhase.hidden, of: CalibratePhase.id(block: b - 1, shard: $0)) }
        }
        r.weights = read.map { job.tensorRef(job.checkpoint.info($0)!) }
        r.pruned = try startLinears(names, outputs: outputs)
        r.epochs = UInt32(reconstruct.epochs)
        r.learningRate = reconstruct.learningRate
        r.cosine = reconstruct.cosine
        return .blockRefit(r)
    }

    /// The half's pruned Linears as the prune tasks left them: mask and start weights.
    private func startLinears(_ names: [String], outputs: OutputStore) throws -> [Prune_V1_PrunedLinear] {
        try names.map { name in
            var p = Prune_V1_PrunedLinear()
            p.name = name
            let parts = try prune.maskParts(of: name, outputs: outputs)
            guard let mask = parts.masks.first, parts.masks.count == 1 else { throw PruningError("\(name): one mask expected") }
            p.mask = mask
            if let updated = parts.updated { p.weights = updated }
            return p
        }
    }

    private func stepWork(_ b: Int, _ part: SubBlock, _ piece: Piece, names: [String], outputs: OutputStore) throws -> Prune_V1_BlockStepTask {
        var r = Prune_V1_BlockStepTask()
        r.block = UInt32(b)
        r.part = part.rawValue
        r.configJson = Data(calibration.configJSON)
        r.tokens = UInt32(calibration.tokens)
        r.weights = calibration.config.blockTensorNames(block: b).map { job.tensorRef(job.checkpoint.info($0)!) }
        r.pruned = try startLinears(names, outputs: outputs)
        r.learningRate = reconstruct.learningRate
        let stateOf = { (step: (epoch: Int, shard: Int)) in try outputs.ref(BlockRefitPhase.state, of: self.id(b, part, .step(epoch: step.epoch, shard: step.shard))) }
        func onSlice(_ s: Int, _ first: Int, _ count: Int) throws {
            r.hidden = try outputs.ref(CalibratePhase.hidden, of: CalibratePhase.id(block: b, shard: s))
            r.shardSamples = UInt32(calibration.windows(shard: s).count)
            r.firstSample = UInt32(first)
            r.samples = UInt32(count)
            if part == .mlp, let attention = layers[BlockRefitPhase.id(block: b, part: .attention)] {
                r.context = try attention.map { name in
                    var p = Prune_V1_PrunedLinear()
                    p.name = name
                    p.mask = try outputs.ref(.mask, of: LayerPrunePhase.id(tensor: name))
                    p.weights = try BlockRefitPhase.refitWeights(of: name, block: b, outputs: outputs)
                    return p
                }
            }
        }
        switch piece {
        case .whole:
            r.action = BlockRefitStep.finish
            r.state = try stateOf(steps.last!)
            r.lossesBefore = try (0..<calibration.shardCount).map { try outputs.ref(BlockRefitPhase.shardLoss, of: id(b, part, .loss(after: false, shard: $0))) }
            r.lossesAfter = try (0..<calibration.shardCount).map { try outputs.ref(BlockRefitPhase.shardLoss, of: id(b, part, .loss(after: true, shard: $0))) }
        case .loss(let after, let s):
            r.action = BlockRefitStep.loss
            if after { r.state = try stateOf(steps.last!) }
            try onSlice(s, 0, calibration.windows(shard: s).count)
        case .gradient(let e, let s, let j):
            r.action = BlockRefitStep.gradient
            if let p = previous(e, s) { r.state = try stateOf(p) }
            let (first, count) = slice(j, shard: s)
            try onSlice(s, first, count)
        case .step(let e, let s):
            r.action = BlockRefitStep.step
            // The schedule's step size for this step, computed here once (the worker takes it as given).
            if reconstruct.cosine {
                r.learningRate = Double(CosineSchedule.stepSize(base: reconstruct.learningRate, step: e * calibration.shardCount + s, of: steps.count))
            }
            if let p = previous(e, s) { r.state = try stateOf(p) }
            r.gradients = try (0..<slices(shard: s)).map { try outputs.ref(BlockRefitPhase.gradient, of: id(b, part, .gradient(epoch: e, shard: s, slice: $0))) }
        }
        return r
    }

    public func outputNames(of task: TaskID) -> [OutputName] {
        guard let (b, part, piece) = blockAndPiece(task) else { return [] }
        switch piece {
        case .whole: return (layers[BlockRefitPhase.id(block: b, part: part)] ?? []).map(BlockRefitPhase.weights) + [BlockRefitPhase.loss]
        case .loss: return [BlockRefitPhase.shardLoss]
        case .gradient: return [BlockRefitPhase.gradient, BlockRefitPhase.shardLoss]
        case .step: return [BlockRefitPhase.state]
        }
    }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let (b, part, piece) = blockAndPiece(task) else { return "no refit task \(task)" }
        let half = BlockRefitPhase.id(block: b, part: part)
        let elements = (layers[half] ?? []).map { job.checkpoint.info($0)?.elementCount ?? 0 }
        let names = outputNames(of: task)
        guard outputs.count == names.count else { return "result of \(task) has \(outputs.count) payloads, expected \(names.count)" }
        switch piece {
        case .whole: break
        case .loss, .gradient:
            guard let v = try? FloatPayload.doubles(outputs.last!, what: "loss"), v.count == 1, v[0].isFinite, v[0] >= 0 else { return "loss of \(task) is not one finite F64 ≥ 0" }
            if names.count == 2 {
                guard let g = try? FloatPayload.floats(outputs[0], what: "gradient"), g.count == elements.reduce(0, +) else { return "gradient of \(task) has the wrong size" }
                if let bad = g.firstIndex(where: { !$0.isFinite }) { return "gradient of \(task) is not finite at \(bad)" }
            }
            return nil
        case .step:
            // Per Linear of n weights: n F32 weights, a 24-byte Adam header, 2n F32 moments.
            let state = outputs[0]
            guard state.count == elements.reduce(0, { $0 + 12 * $1 + 24 }) else { return "state of \(task) has \(state.count) bytes" }
            var at = 0
            for n in elements {
                for range in [at..<(at + 4 * n), (at + 4 * n + 24)..<(at + 12 * n + 24)] {
                    guard let values = try? FloatPayload.floats(Array(state[range]), what: "state"), values.allSatisfy(\.isFinite) else {
                        return "state of \(task) is not finite"
                    }
                }
                at += 12 * n + 24
            }
            return nil
        }
        guard let names = layers[half], outputs.count == names.count + 1 else { return "result of \(task) has \(outputs.count) payloads" }
        for (name, bytes) in zip(names, outputs) {
            guard let info = job.checkpoint.info(name), let values = try? FloatPayload.floats(bytes, what: name), values.count == info.elementCount else {
                return "weights of \(name) from \(task) have the wrong size"
            }
            if let bad = values.firstIndex(where: { !$0.isFinite }) { return "weights of \(name) from \(task) are not finite at \(bad)" }
        }
        guard let loss = try? FloatPayload.doubles(outputs[names.count], what: "loss"), loss.count == 2, loss.allSatisfy({ $0.isFinite && $0 >= 0 }),
              loss[1] <= loss[0] * (1 + 1e-9) else { return "loss of \(task) is not two finite F64 ≥ 0, the second no larger" }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        if case .blockStep(let r) = work { return try BlockRefitStep.run(r, inputs: inputs) }
        guard case .blockRefit(let r) = work else { return nil }
        guard let part = SubBlock(rawValue: r.part) else { throw PruningError("refit task: unknown part \(r.part)") }
        let config = try LlamaConfig.parse(bytes: [UInt8](r.configJson), file: "refit task config")
        let b = Int(r.block), t = Int(r.tokens), h = config.hiddenSize
        let where_ = "refit block \(b) \(part.rawValue)"
        guard b < config.layers, t > 0, !r.shardSamples.isEmpty, r.epochs > 0, r.learningRate.isFinite, r.learningRate > 0 else {
            throw PruningError("\(where_): bad task parameters")
        }
        let store = WeightStore(reader: TaskTensorReader(r.weights, inputs: inputs))
        let model = LlamaModel(config: config, store: store)
        let dense = try model.block(b)
        let rope = RotaryTable(headDim: config.headDim, theta: config.ropeTheta, maxTokens: t)

        // Per shard: the half's input and the dense half's output on it.
        var shards: [(samples: Int, input: [Float], target: [Float])] = []
        var offset = 0
        for (s, count) in r.shardSamples.enumerated() {
            let samples = Int(count)
            var x: [Float]
            if b == 0 {
                guard r.tokenIds.count >= offset + samples * t else { throw PruningError("\(where_): too few token ids") }
                x = try model.embed(Array(r.tokenIds[offset..<(offset + samples * t)]))
                offset += samples * t
            } else {
                guard s < r.hidden.count else { throw PruningError("\(where_): no hidden states of shard \(s)") }
                x = try FloatPayload.floats(try inputs.artifact(r.hidden[s]), what: "hidden states")
            }
            guard x.count == samples * t * h else { throw PruningError("\(where_): shard \(s) has \(x.count) values, expected \(samples * t * h)") }
            if part == .mlp { x = SubBlockGradient.output(.attention, block: dense, input: x, samples: samples, tokens: t, rope: rope) }
            shards.append((samples, x, SubBlockGradient.output(part, block: dense, input: x, samples: samples, tokens: t, rope: rope)))
        }

        // The student: the half's weights, the pruned ones from their prune task, each with its Adam.
        let names = part.linears.map { "model.layers.\(b).\($0).weight" }
        var weights = try names.map { name -> [Float] in
            guard let shape = store.reader.shape(of: name) else { throw PruningError("\(where_): \(name) is not in the task") }
            return try store.load(name, shape: shape)
        }
        var optimizers: [Int: MaskedAdam] = [:]
        for p in r.pruned {
            guard let i = names.firstIndex(of: p.name), let shape = store.reader.shape(of: p.name), shape.count == 2 else {
                throw PruningError("\(where_): \(p.name) is not a Linear of this half")
            }
            let mask = try Mask(rows: shape[0], cols: shape[1], bits: try inputs.artifact(p.mask))
            if p.hasWeights {
                let start = try FloatPayload.floats(try inputs.artifact(p.weights), what: "weights of \(p.name)")
                guard start.count == weights[i].count else { throw PruningError("\(where_): start weights of \(p.name) have the wrong size") }
                weights[i] = start
            }
            let keep = (0..<weights[i].count).map { mask[$0 / shape[1], $0 % shape[1]] }
            for j in 0..<keep.count where !keep[j] { weights[i][j] = 0 }
            optimizers[i] = MaskedAdam(keep: keep, learningRate: Float(r.learningRate))
        }
        let start = weights
        func totalLoss(_ w: [[Float]]) -> Double {
            shards.reduce(0.0) { sum, shard in
                sum + SubBlockGradient.evaluate(part, block: dense, weights: w, input: shard.input, target: shard.target,
                                                samples: shard.samples, tokens: t, rope: rope, gradients: false).loss
            }
        }
        let before = totalLoss(weights)
        let stepCount = Int(r.epochs) * shards.count
        for epoch in 0..<Int(r.epochs) {
            for (s, shard) in shards.enumerated() {
                try Cancellation.checkpoint()
                let step = SubBlockGradient.evaluate(part, block: dense, weights: weights, input: shard.input, target: shard.target,
                                                     samples: shard.samples, tokens: t, rope: rope)
                guard step.loss.isFinite else {
                    throw PruningError("\(where_): the loss became \(step.loss) at epoch \(epoch + 1), shard \(s); lower reconstruct.learning_rate")
                }
                // The same step sizes as sequential mode's step tasks (`CosineSchedule`).
                let size = r.cosine ? CosineSchedule.stepSize(base: r.learningRate, step: epoch * shards.count + s, of: stepCount) : nil
                for i in optimizers.keys.sorted() { optimizers[i]!.update(&weights[i], gradient: step.gradients[i], learningRate: size) }
            }
        }
        var after = totalLoss(weights)
        guard after.isFinite, weights.allSatisfy({ $0.allSatisfy(\.isFinite) }) else {
            throw PruningError("\(where_): the re-fit diverged (loss \(after)); lower reconstruct.learning_rate")
        }
        // Never worse than the start on the calibration data.
        if after > before { weights = start; after = before }
        let trained = optimizers.keys.sorted()
        return TaskOutputs(payloads: trained.map { (BlockRefitPhase.weights(names[$0]).rawValue, FloatPayload.encode(weights[$0])) }
                           + [(BlockRefitPhase.loss.rawValue, FloatPayload.encode(before) + FloatPayload.encode(after))])
    }

    // MARK: PrunedTensorSource

    public var prunedTensors: Set<String> { Set(taskOf.keys) }

    public func producers(of tensor: String) -> [TaskID] { prune.producers(of: tensor) + (taskOf[tensor].map { [$0] } ?? []) }

    public func maskParts(of tensor: String, outputs: OutputStore) throws -> (masks: [Prune_V1_ArtifactRef], updated: Prune_V1_ArtifactRef?) {
        guard let task = taskOf[tensor] else { return try prune.maskParts(of: tensor, outputs: outputs) }
        return (try prune.maskParts(of: tensor, outputs: outputs).masks, try outputs.ref(BlockRefitPhase.weights(tensor), of: task))
    }

    public func mask(of tensor: String, outputs: OutputStore) throws -> Mask { try prune.mask(of: tensor, outputs: outputs) }

    public func updatesValues(of tensor: String) -> Bool { true }

    public func updatedValues(of tensor: String, outputs: OutputStore) throws -> [Float]? {
        guard let task = taskOf[tensor] else { return try prune.updatedValues(of: tensor, outputs: outputs) }
        return try FloatPayload.floats(try outputs.bytes(BlockRefitPhase.weights(tensor), of: task), what: "weights of \(tensor)")
    }

    /// The per-layer error is the layer-wise re-fit's (`measures.layer_reconstruction_error`);
    /// after the block re-fit the layers' own errors are not measured.
    public func reconstructionError(of tensor: String, outputs: OutputStore) throws -> Double? { nil }

    /// Per re-fit tensor: its half's loss before and after (`block_loss_before`,
    /// `block_loss`: Σ (y − teacher)² over the calibration tokens) and the layer-wise
    /// re-fit's error it started from.
    public func measures(outputs: OutputStore) throws -> [String: [String: Double]] {
        var out: [String: [String: Double]] = [:]
        for (tensor, task) in taskOf {
            let loss = try FloatPayload.doubles(try outputs.bytes(BlockRefitPhase.loss, of: task), what: "loss of \(task)")
            guard loss.count == 2 else { throw PruningError("loss of \(task) is not two values") }
            var m = ["block_loss_before": loss[0], "block_loss": loss[1]]
            if let layer = try prune.reconstructionError(of: tensor, outputs: outputs) { m["layer_reconstruction_error"] = layer }
            out[tensor] = m
        }
        return out
    }
}
