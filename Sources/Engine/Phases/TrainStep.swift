import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// The worker side of `TrainPhase`: rebuild the training state at the task's step, then
/// compute a shard's gradient or keep a checkpoint.
///
/// A state is named by its lineage: the start's (sha256 over the architecture, the start
/// tensors, the masks and the optimizer) chained, step by step, with the digests of the
/// step's shard gradients. Every worker applies the same gradients in the same order with
/// the same F32 code, so the same lineage means the same bits; a worker keeps the state it
/// reached last and continues from it when the task has the same base and its steps begin
/// with the ones applied (one step per task in steady state), else starts again from the
/// task's base. Lineages are computed only where a state is handed on (checkpoints).
enum TrainStep {
    static let gradient = "gradient"
    static let checkpoint = "checkpoint"
    static let prune = "prune"

    /// The lineage of the start state: what the coordinator sends must equal what the
    /// worker computes from the same setup.
    static func startLineage(_ r: Prune_V1_TrainTask) -> String {
        var h = SHA256Stream()
        h.update([UInt8]("mlp-train-v1\n".utf8))
        h.update([UInt8](r.mlpJson))
        for p in r.parameters { h.update([UInt8]("\n\(p.name) \(p.dtype) \(p.shape) \(p.fileSha256) \(p.offset) \(p.byteCount)".utf8)) }
        for m in r.masks { h.update([UInt8]("\nmask \(m.parts.map(\.sha256).joined(separator: ","))".utf8)) }
        let o = r.optimizer
        h.update([UInt8]("\n\(o.name) \(o.learningRate.bitPattern) \(o.momentum.bitPattern) \(o.weightDecay.bitPattern) \(o.l1.bitPattern)".utf8))
        return h.finalizeHex()
    }

    /// The lineage after one more step with these shard gradients.
    static func next(_ lineage: String, _ step: Prune_V1_TrainStep) -> String {
        var h = SHA256Stream()
        h.update(Array("\(lineage)\n\(step.batch) \(step.learningRate.bitPattern):\(step.shards.map(\.sha256).joined(separator: ","))".utf8))
        return h.finalizeHex()
    }

    /// A worker's last state (one training at a time: a worker runs one task at a time):
    /// the base it started from and the steps it applied since (their gradients' digests),
    /// which a task's base and steps must begin with for it to continue from here.
    private final class Kept: @unchecked Sendable {
        let lock = NSLock()
        var baseLineage = ""
        var applied: [Prune_V1_TrainStep] = []
        var training: MLPTraining?
        var modelLineage = ""
        var model: MLPModel?
    }
    private static let kept = Kept()

    static func run(_ r: Prune_V1_TrainTask, inputs: TaskInputs) throws -> TaskOutputs {
        let where_ = "train task (\(r.action), step \(Int(r.baseStep) + r.steps.count))"
        guard [gradient, checkpoint, prune].contains(r.action) else { throw PruningError("\(where_): unknown action") }
        let o = r.optimizer
        guard o.learningRate.isFinite, o.learningRate > 0, o.momentum >= 0, o.momentum < 1, o.weightDecay.isFinite, o.weightDecay >= 0,
              o.l1.isFinite, o.l1 >= 0 else {
            throw PruningError("\(where_): bad optimizer parameters")
        }
        let optimizer: MLPTraining.Optimizer
        switch o.name {
        case TrainSpec.Optimizer.sgd.rawValue: optimizer = .sgd(learningRate: o.learningRate, momentum: o.momentum, weightDecay: o.weightDecay)
        case TrainSpec.Optimizer.adamw.rawValue: optimizer = .adamw(learningRate: o.learningRate, weightDecay: o.weightDecay)
        default: throw PruningError("\(where_): unknown optimizer '\(o.name)'")
        }
        let start = startLineage(r)
        guard String(decoding: r.startLineage, as: UTF8.self) == start else { throw PruningError("\(where_): the start's lineage does not match its setup") }
        guard r.hasBase || (r.baseStep == 0 && r.baseLineage == r.startLineage) else { throw PruningError("\(where_): a start without a base state must be step 0 with the start's lineage") }
        let baseLineage = String(decoding: r.baseLineage, as: UTF8.self)

        kept.lock.lock()
        defer { kept.lock.unlock() }
        let model = try self.model(r, lineage: start, inputs: inputs, where: where_)
        var training: MLPTraining
        var from: Int
        // Comparing digests, not hashing a lineage per step: the same base and the same
        // gradients in the same order are the same state.
        if let t = kept.training, kept.baseLineage == baseLineage, kept.applied.count <= r.steps.count,
           zip(kept.applied, r.steps).allSatisfy({ $0.batch == $1.batch && $0.learningRate == $1.learningRate && $0.shards.map(\.sha256) == $1.shards.map(\.sha256) }) {
            training = t
            from = kept.applied.count
        } else {
            training = MLPTraining(parameters: model.parameters, masks: try masks(r, model: model, inputs: inputs, where: where_), optimizer: optimizer, l1: o.l1)
            if r.hasBase {
                try training.restore(try inputs.artifact(r.base))
                guard training.step == Int(r.baseStep) else { throw PruningError("\(where_): the base state is at step \(training.step), not \(r.baseStep)") }
            }
            from = 0
        }
        let count = training.parameterCount
        for k in from..<r.steps.count {
            let s = r.steps[k]
            guard !s.shards.isEmpty, s.batch > 0 else { throw PruningError("\(where_): step \(Int(r.baseStep) + k) has no gradients") }
            var sum = [Float](repeating: 0, count: count)
            for ref in s.shards {
                let g = try FloatPayload.floats(try inputs.artifact(ref), what: "\(where_): gradient")
                guard g.count == count else { throw PruningError("\(where_): a gradient has \(g.count) values, expected \(count)") }
                sum.withUnsafeMutableBufferPointer { out in g.withUnsafeBufferPointer { for i in 0..<count { out[i] += $0[i] } } }
            }
            guard s.learningRate.isFinite, s.learningRate >= 0 else { throw PruningError("\(where_): step \(Int(r.baseStep) + k) has a bad learning rate") }
            training.apply(summedGradient: sum, batch: Int(s.batch), learningRate: s.learningRate > 0 ? s.learningRate : nil)
            guard training.parameters.weights.allSatisfy({ $0.allSatisfy(\.isFinite) }),
                  training.parameters.biases.allSatisfy({ $0?.allSatisfy(\.isFinite) ?? true }) else {
                kept.training = nil
                throw PruningError("train step \(Int(r.baseStep) + k): the weights became non-finite; lower train.learning_rate (the last checkpoint is kept)")
            }
        }
        kept.training = training
        kept.baseLineage = baseLineage
        kept.applied = r.steps
        // The lineage only where a state is handed on (a checkpoint, a round's prune).
        var lineage: String {
            r.steps.reduce(baseLineage) { next($0, $1) }
        }

        if r.action == prune { return try pruned(training, r, model: model, optimizer: optimizer, lineage: lineage, where: where_) }

        if r.action == gradient {
            let width = model.config.input, rows = r.labels.count
            let x = r.inputBytes.isEmpty ? try FloatPayload.floats([UInt8](r.inputs), what: "\(where_): inputs")
                : r.inputBytes.withUnsafeBytes { b in b.map(LabelledData.pixel) }
            guard rows > 0, x.count == rows * width else { throw PruningError("\(where_): \(x.count) input values for \(rows) examples of \(width)") }
            guard r.labels.allSatisfy({ Int($0) < model.classes }) else { throw PruningError("\(where_): a label is outside the model's \(model.classes) classes") }
            let result = MLPGradient.evaluate(model, parameters: training.parameters, x: x, labels: r.labels.map { Int32($0) }, rows: rows)
            let g = MLPTraining.flatten(result.gradients)
            guard result.loss.isFinite, g.allSatisfy(\.isFinite) else {
                throw PruningError("train step \(Int(r.baseStep) + r.steps.count): the loss became \(result.loss) (non-finite gradient); lower train.learning_rate (the last checkpoint is kept)")
            }
            var outputs = TaskOutputs(payloads: [(TrainPhase.gradient.rawValue, FloatPayload.encode(g)),
                                                 (TrainPhase.shardLoss.rawValue, [result.loss, Double(result.correct), Double(rows)].flatMap(FloatPayload.encode))])
            // Read only until the next checkpoint, and recomputed from it if a crash of the
            // machine loses them: not worth two fsyncs a step.
            outputs.volatile = [TrainPhase.gradient.rawValue, TrainPhase.shardLoss.rawValue]
            return outputs
        }

        // Checkpoint: the state, its lineage, and the epoch's running loss and accuracy.
        var sums = [0.0, 0.0, 0.0]
        if !r.resetSums {
            sums = try FloatPayload.doubles(try inputs.artifact(r.baseSums), what: "\(where_): sums")
            guard sums.count == 3 else { throw PruningError("\(where_): sums of \(sums.count) values") }
        }
        for ref in r.losses {
            let l = try FloatPayload.doubles(try inputs.artifact(ref), what: "\(where_): shard loss")
            guard l.count == 3 else { throw PruningError("\(where_): a shard loss of \(l.count) values") }
            for i in 0..<3 { sums[i] += l[i] }
        }
        var payloads: [(name: String, bytes: [UInt8])] = [
            (TrainPhase.state.rawValue, training.serialized()),
            (TrainPhase.lineage.rawValue, Array(lineage.utf8)),
            (TrainPhase.sums.rawValue, sums.flatMap(FloatPayload.encode)),
        ]
        if r.epochEnd { payloads.append((TrainPhase.weights.rawValue, FloatPayload.encode(MLPTraining.flatten(training.parameters)))) }
        return TaskOutputs(payloads: payloads)
    }

    /// A schedule's round: magnitude masks at the round's level (within the job's pattern)
    /// on the base's weights, and the state the round trains from: those weights masked,
    /// a fresh optimizer state, at the round's first step.
    private static func pruned(_ training: MLPTraining, _ r: Prune_V1_TrainTask, model: MLPModel, optimizer: MLPTraining.Optimizer,
                               lineage: String, where where_: String) throws -> TaskOutputs {
        guard r.sparsity.isFinite, r.sparsity >= 0, r.sparsity < 1, r.pruneLayers.count == model.layers.count else {
            throw PruningError("\(where_): bad sparsity or layer list")
        }
        guard Int(r.roundStep) >= training.step else { throw PruningError("\(where_): a round starting at step \(r.roundStep), before its base's \(training.step)") }
        let pattern = try SparsityPattern(parsing: r.pattern)
        var payloads: [(name: String, bytes: [UInt8])] = []
        var masks: [[Bool]?] = []
        for (l, layer) in model.layers.enumerated() {
            guard r.pruneLayers[l] else { masks.append(nil); continue }
            let w = training.parameters.weights[l]
            let mask = try w.withUnsafeBytes {
                try TensorPruner.mask(name: layer.name, dtype: .f32, rows: layer.outFeatures, cols: layer.inFeatures, firstRow: 0, bytes: $0,
                                      criterion: MagnitudeCriterion(), pattern: pattern, sparsity: r.sparsity)
            }
            payloads.append((TrainPhase.mask(layer.name).rawValue, mask.bits))
            masks.append((0..<(layer.outFeatures * layer.inFeatures)).map { mask[$0 / layer.inFeatures, $0 % layer.inFeatures] })
        }
        let next = MLPTraining(parameters: training.parameters, masks: masks, optimizer: optimizer, step: Int(r.roundStep))
        var h = SHA256Stream()
        // The round's step too: an adaptive schedule may prune one base to one level twice.
        h.update(Array("\(lineage)\nprune \(r.sparsity.bitPattern) \(r.pattern) \(r.pruneLayers) at \(r.roundStep)".utf8))
        payloads.append((TrainPhase.state.rawValue, next.serialized()))
        payloads.append((TrainPhase.lineage.rawValue, Array(h.finalizeHex().utf8)))
        return TaskOutputs(payloads: payloads)
    }

    /// The architecture and start weights, kept while the start's lineage stays the same.
    private static func model(_ r: Prune_V1_TrainTask, lineage: String, inputs: TaskInputs, where where_: String) throws -> MLPModel {
        if let m = kept.model, kept.modelLineage == lineage { return m }
        guard r.mlpJson.count <= 1 << 20, let object = try? JSONSerialization.jsonObject(with: r.mlpJson), let json = object as? [String: Any] else {
            throw PruningError("\(where_): mlp.json is not a JSON object")
        }
        let config = try MLPConfig.parse(json, file: "\(where_): mlp.json")
        let model = try MLPModel(config: config, store: WeightStore(reader: TaskTensorReader(r.parameters, inputs: inputs)))
        guard r.masks.count == model.layers.count else { throw PruningError("\(where_): \(r.masks.count) masks for \(model.layers.count) layers") }
        kept.model = model
        kept.modelLineage = lineage
        kept.training = nil
        return model
    }

    /// Each layer's weight mask as kept flags, from its row-block parts in row order.
    private static func masks(_ r: Prune_V1_TrainTask, model: MLPModel, inputs: TaskInputs, where where_: String) throws -> [[Bool]?] {
        try zip(r.masks, model.layers).map { m, layer in
            guard !m.parts.isEmpty else { return nil }
            var bits: [UInt8] = []
            for p in m.parts { bits += try inputs.artifact(p) }
            let mask = try Mask(rows: layer.outFeatures, cols: layer.inFeatures, bits: bits)
            var keep = [Bool](repeating: false, count: layer.outFeatures * layer.inFeatures)
            for r in 0..<layer.outFeatures { for c in 0..<layer.inFeatures where mask[r, c] { keep[r * layer.inFeatures + c] = true } }
            return keep
        }
    }
}
