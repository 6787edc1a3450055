import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// Block-wise reconstruction (`reconstruct: {scope: block}`, calibration mode dense): task
/// `refit:B:PART` re-fits the pruned Linear layers of one half of decoder block B (PART
/// `attention` or `mlp`) so the half reproduces the dense half's output on the dense
/// model's activations, by Adam steps on the kept weights (`SubBlockGradient`,
/// `MaskedAdam`): masks fixed, pruned weights exactly zero. It starts from the layer-wise
/// re-fit of the prune tasks and runs `epochs` passes over the calibration shards, one step
/// per shard in shard order, so its bytes do not depend on the worker count; the halves of
/// every block are independent tasks.
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
        guard calibration.mode == .dense else { throw PruningError("reconstruct: scope block needs calibration mode dense") }
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

    /// `weights:<linear>`: a re-fit layer's F32 weights.
    static func weights(_ layer: String) -> OutputName { OutputName("weights:\(layer)") }
    /// The half's Σ (y − teacher)² over every shard, before and after (two F64).
    static let loss = OutputName("loss")

    private func blockAndPart(_ task: TaskID) -> (Int, SubBlock)? {
        let parts = task.key.split(separator: ":")
        guard task.phase == Self.name, parts.count == 2, let b = Int(parts[0]), let part = SubBlock(rawValue: String(parts[1])) else { return nil }
        return (b, part)
    }

    /// After the prune tasks of the half's layers and the dense pass's tasks whose hidden
    /// states are the block's input.
    public var tasks: [PhaseTask] {
        (0..<calibration.blocks).flatMap { b in
            SubBlock.allCases.compactMap { part -> PhaseTask? in
                let id = BlockRefitPhase.id(block: b, part: part)
                guard let names = layers[id] else { return nil }
                let inputs = b == 0 ? [] : (0..<calibration.shardCount).map { CalibratePhase.id(block: b - 1, shard: $0) }
                return PhaseTask(id, after: names.map(LayerPrunePhase.id(tensor:)) + inputs)
            }
        }
    }

    public func round(of task: TaskID) -> Int { blockAndPart(task)?.0 ?? 0 }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let (b, part) = blockAndPart(task), let names = layers[task] else { throw PruningError("no refit task \(task)") }
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
        r.pruned = try names.map { name in
            var p = Prune_V1_PrunedLinear()
            p.name = name
            let parts = try prune.maskParts(of: name, outputs: outputs)
            guard let mask = parts.masks.first, parts.masks.count == 1 else { throw PruningError("\(name): one mask expected") }
            p.mask = mask
            if let updated = parts.updated { p.weights = updated }
            return p
        }
        r.epochs = UInt32(reconstruct.epochs)
        r.learningRate = reconstruct.learningRate
        return .blockRefit(r)
    }

    public func outputNames(of task: TaskID) -> [OutputName] {
        (layers[task] ?? []).map(BlockRefitPhase.weights) + [BlockRefitPhase.loss]
    }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let names = layers[task], outputs.count == names.count + 1 else { return "result of \(task) has \(outputs.count) payloads" }
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
        for epoch in 0..<Int(r.epochs) {
            for (s, shard) in shards.enumerated() {
                try Cancellation.checkpoint()
                let step = SubBlockGradient.evaluate(part, block: dense, weights: weights, input: shard.input, target: shard.target,
                                                     samples: shard.samples, tokens: t, rope: rope)
                guard step.loss.isFinite else {
                    throw PruningError("\(where_): the loss became \(step.loss) at epoch \(epoch + 1), shard \(s); lower reconstruct.learning_rate")
                }
                for i in optimizers.keys.sorted() { optimizers[i]!.update(&weights[i], gradient: step.gradients[i]) }
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
