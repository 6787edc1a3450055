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
    static let span = "span"

    /// The lineage of the start state: what the coordinator sends must equal what the
    /// worker computes from the same setup.
    static func startLineage(_ r: Prune_V1_TrainTask) -> String {
        var h = SHA256Stream()
        h.update([UInt8]("mlp-train-v1\n".utf8))
        h.update([UInt8](r.mlpJson))
        if !r.llamaConfig.isEmpty {
            // A language model's setup: its config, fixed tensors and window length.
            h.update([UInt8]("\nllama \(r.tokens)\n".utf8))
            h.update([UInt8](r.llamaConfig))
            for p in r.forward { h.update([UInt8]("\nfixed \(p.name) \(p.dtype) \(p.shape) \(p.fileSha256) \(p.offset) \(p.byteCount)".utf8)) }
        }
        for p in r.parameters { h.update([UInt8]("\n\(p.name) \(p.dtype) \(p.shape) \(p.fileSha256) \(p.offset) \(p.byteCount)".utf8)) }
        for m in r.masks {
            h.update([UInt8]("\nmask \(m.parts.map(\.sha256).joined(separator: ","))".utf8))
            if m.hasUpdated { h.update([UInt8](" start \(m.updated.sha256)".utf8)) }
        }
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
    final class Kept: @unchecked Sendable {
        let lock = NSLock()
        var baseLineage = ""
        var applied: [Prune_V1_TrainStep] = []
        var training: MLPTraining?
        var modelLineage = ""
        var model: TrainTaskModel?
        /// The summed gradient of a step, reused: a large model's would be a fresh
        /// allocation (zeroed pages) every step otherwise.
        var summed: [Float] = []
        /// A language model's weight masks (kept flags), for its kept-only gradients.
        var keeps: [[Bool]] = [] { didSet { keptCount = keeps.reduce(0) { $0 + $1.count { $0 } } } }
        /// How many weights `keeps` keeps: the values a language model's shard gradient holds.
        private(set) var keptCount = 0
        /// A classifier job's example data (`exampleData`), fetched once and kept while
        /// tasks name the same artifact.
        var examples: (sha256: String, bytes: [UInt8])?

        /// Whether the kept state continues into a task from `base` with `steps`: the same
        /// base with a prefix of the steps applied (how many), or a state whose lineage is
        /// the task's base (a checkpoint of what this worker reached: none applied since).
        func continues(base: String, step: Int, steps: [Prune_V1_TrainStep]) -> Int? {
            guard let training else { return nil }
            // Comparing digests, not hashing a lineage per step: the same base and the same
            // gradients in the same order are the same state.
            if baseLineage == base, applied.count <= steps.count,
               zip(applied, steps).allSatisfy({ $0.batch == $1.batch && $0.learningRate == $1.learningRate && $0.shards.map(\.sha256) == $1.shards.map(\.sha256) }) {
                return applied.count
            }
            if training.step == step, applied.reduce(baseLineage, TrainStep.next) == base { return 0 }
            return nil
        }
    }
    static let kept = Kept()

    static func run(_ r: Prune_V1_TrainTask, inputs: TaskInputs) throws -> TaskOutputs {
        let where_ = "train task (\(r.action), step \(Int(r.baseStep) + r.steps.count))"
        guard [gradient, checkpoint, prune, span].contains(r.action) else { throw PruningError("\(where_): unknown action") }
        guard r.action != span || r.steps.isEmpty else { throw PruningError("\(where_): a span starts at its base, with no steps of others") }
        guard r.action == span || r.epochEnds.isEmpty else { throw PruningError("\(where_): only a span runs across an epoch's end") }
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
        // Bounded before anything is cut: a state of at most 4096 payloads (2 TiB at 512 MiB).
        guard r.stateChunks <= 4096, !r.hasBase || r.baseMore.count + 1 == max(1, Int(r.stateChunks)) else {
            throw PruningError("\(where_): a state of \(r.stateChunks) payloads (base: \(r.baseMore.count + 1))")
        }

        kept.lock.lock()
        defer { kept.lock.unlock() }
        // A classifier job's example data is held only while its tasks come.
        if r.examples.sha256.isEmpty { kept.examples = nil }
        let model = try self.model(r, lineage: start, inputs: inputs, where: where_)
        /// The task's base state, read from its artifacts.
        func restored() throws -> MLPTraining {
            var training = MLPTraining(parameters: model.parameters, masks: try masks(r, model: model, inputs: inputs, where: where_), optimizer: optimizer, l1: o.l1)
            if r.hasBase {
                var state = try inputs.artifact(r.base)
                for more in r.baseMore { state += try inputs.artifact(more) }
                try training.restore(state)
                guard training.step == Int(r.baseStep) else { throw PruningError("\(where_): the base state is at step \(training.step), not \(r.baseStep)") }
            }
            return training
        }
        var training: MLPTraining
        var from: Int
        if let applied = kept.continues(base: baseLineage, step: Int(r.baseStep), steps: r.steps) {
            // Moved out, so the steps below update the only copy in place.
            training = kept.training!
            kept.training = nil
            from = applied
        } else {
            kept.training = nil
            kept.keeps = []
            training = try restored()
            from = 0
        }
        var tree = ShardTreeSum(count: training.parameterCount)
        for k in from..<r.steps.count {
            let s = r.steps[k]
            guard !s.shards.isEmpty, s.batch > 0 else { throw PruningError("\(where_): step \(Int(r.baseStep) + k) has no gradients") }
            zeroSum(model: model, training: training)
            if model.isLanguageModel {
                for ref in s.shards {
                    try inputs.withArtifact(ref) { raw in
                        try addToSum(raw, model: model, training: training, where: where_)
                    }
                }
            } else {
                // A classifier's shards add up in the tree every exchange uses.
                for ref in s.shards {
                    try inputs.withArtifact(ref) { raw in
                        guard raw.count == 4 * tree.count else { throw PruningError("\(where_): a gradient has \(raw.count / 4) values, expected \(tree.count)") }
                        try raw.withMemoryRebound(to: Float.self) { try tree.push($0) }
                    }
                }
                kept.summed.withUnsafeMutableBufferPointer { tree.finish(into: $0) }
            }
            try apply(&training, s, index: Int(r.baseStep) + k)
        }
        if r.action == span {
            var losses: [[Double]]
            let layout = try SpanLayout(r, where: where_)
            var epochs = try EpochWeights(r, layout: layout, where: where_)
            if let group = inputs.spanGroup, group.slots > 1, case .mlp(let m) = model {
                do {
                    losses = try SpanAllGather(group: group, task: r, model: m, inputs: inputs, where: where_).run(&training, epochs: &epochs)
                } catch let wrong as SpanAllGather.ShareDisagrees {
                    // A helper's share was wrong, and with it the steps since: start over
                    // alone from the base (the coordinator stops the group).
                    try group.distrust(slot: wrong.slot)
                    training = try restored()
                    epochs = try EpochWeights(r, layout: layout, where: where_)
                    losses = try runSpan(r, layout: layout, training: &training, epochs: &epochs, model: model, inputs: inputs, where: where_)
                } catch is PruningError where group.slot == 0 {
                    // The span failed in the group (a step diverged, say): a helper's share
                    // the checks missed may be the cause, so no group's failure ends the
                    // task. The leader takes the span again alone, accusing no one; a real
                    // failure fails again there, with its own cause.
                    training = try restored()
                    epochs = try EpochWeights(r, layout: layout, where: where_)
                    losses = try runSpan(r, layout: layout, training: &training, epochs: &epochs, model: model, inputs: inputs, where: where_)
                }
                // A helper answers nothing, and keeps no state: the leader's shares it
                // took are not checked, so its state must not seed a span it leads.
                if group.slot > 0 { return TaskOutputs() }
            } else {
                losses = try runSpan(r, layout: layout, training: &training, epochs: &epochs, model: model, inputs: inputs, where: where_)
            }
            let lineage = spanLineage(baseLineage, r)
            kept.training = training
            kept.baseLineage = lineage
            kept.applied = []
            return try checkpointOutputs(training, r, lineage: lineage, losses: losses, epochs: epochs, inputs: inputs, where: where_)
        }
        kept.training = training
        kept.baseLineage = baseLineage
        kept.applied = r.steps
        // The lineage only where a state is handed on (a checkpoint, a round's prune).
        var lineage: String {
            r.steps.reduce(baseLineage) { next($0, $1) }
        }

        if r.action == prune { return try pruned(training, r, model: model, optimizer: optimizer, lineage: lineage, where: where_) }

        if r.action == gradient, case .llama(let llama) = model {
            let step = Int(r.baseStep) + r.steps.count
            if kept.keeps.count != training.parameters.weights.count { kept.keeps = training.weightKeeps }
            let result = try llama.gradient(training.parameters.weights, keeps: kept.keeps, r, inputs: inputs, where: where_)
            guard result.loss.isFinite, result.gradient.withUnsafeBytes({ $0.withMemoryRebound(to: Float.self) { $0.allSatisfy(\.isFinite) } }) else {
                throw diverged(step: step, loss: result.loss)
            }
            var outputs = TaskOutputs(payloads: [(TrainPhase.gradient.rawValue, result.gradient),
                                                 (TrainPhase.shardLoss.rawValue, [result.loss, 0, Double(result.count)].flatMap(FloatPayload.encode))])
            outputs.volatile = Set(TrainPhase.volatileOutputs.map(\.rawValue))
            return outputs
        }

        if r.action == gradient, case .mlp(let model) = model {
            let rows = r.labels.count
            guard rows > 0 else { throw PruningError("\(where_): a gradient of no examples") }
            guard r.labels.allSatisfy({ Int($0) < model.classes }) else { throw PruningError("\(where_): a label is outside the model's \(model.classes) classes") }
            let data = try exampleData(r, width: model.config.input, inputs: inputs, where: where_)
            let x = inputValues(r, data: data, width: model.config.input, examples: 0..<rows)
            let result = MLPGradient.evaluate(model, parameters: training.parameters, x: x, labels: r.labels.map { Int32($0) }, rows: rows)
            let g = MLPTraining.flatten(result.gradients)
            guard result.loss.isFinite, FloatVectors.allFinite(g) else {
                throw diverged(step: Int(r.baseStep) + r.steps.count, loss: result.loss)
            }
            var outputs = TaskOutputs(payloads: [(TrainPhase.gradient.rawValue, FloatPayload.encode(g)),
                                                 (TrainPhase.shardLoss.rawValue, [result.loss, Double(result.correct), Double(rows)].flatMap(FloatPayload.encode))])
            // Read only until the next checkpoint, and recomputed from it if a crash of the
            // machine loses them: not worth two fsyncs a step.
            outputs.volatile = Set(TrainPhase.volatileOutputs.map(\.rawValue))
            return outputs
        }

        var losses: [[Double]] = []
        for ref in r.losses {
            let l = try FloatPayload.doubles(try inputs.artifact(ref), what: "\(where_): shard loss")
            guard l.count == 3 else { throw PruningError("\(where_): a shard loss of \(l.count) values") }
            losses.append(l)
        }
        return try checkpointOutputs(training, r, lineage: lineage, losses: losses, epochs: nil, inputs: inputs, where: where_)
    }

    /// A checkpoint's payloads: the state, its lineage, and the epoch's running loss and
    /// accuracy (the base's sums, unless the epoch starts here, plus each shard's loss triple in order);
    /// a span's across epochs also each inner epoch's whole sums and end weights.
    private static func checkpointOutputs(_ training: MLPTraining, _ r: Prune_V1_TrainTask, lineage: String, losses: [[Double]],
                                          epochs: EpochWeights?, inputs: TaskInputs, where where_: String) throws -> TaskOutputs {
        var sums = [0.0, 0.0, 0.0]
        if !r.resetSums {
            sums = try FloatPayload.doubles(try inputs.artifact(r.baseSums), what: "\(where_): sums")
            guard sums.count == 3 else { throw PruningError("\(where_): sums of \(sums.count) values") }
        }
        func add(_ some: ArraySlice<[Double]>) { for l in some { for i in 0..<3 { sums[i] += l[i] } } }
        // The losses come step after step, the same count each (a span's shards).
        var inner: [(String, [UInt8])] = [], next = 0
        if let epochs, !epochs.ends.isEmpty {
            let perStep = losses.count / max(1, r.span.count)
            guard perStep * r.span.count == losses.count else { throw PruningError("\(where_): \(losses.count) shard losses for \(r.span.count) steps") }
            for (e, weights) in zip(epochs.ends, epochs.weights) {
                let upTo = (e - Int(r.baseStep)) * perStep
                add(losses[next..<upTo])
                inner.append((TrainPhase.epochSums(e).rawValue, sums.flatMap(FloatPayload.encode)))
                inner.append((TrainPhase.epochWeights(e).rawValue, FloatPayload.encode(weights)))
                sums = [0, 0, 0]
                next = upTo
            }
        }
        add(losses[next...])
        var payloads = chunks(training.serialized(), r)
        payloads.append((TrainPhase.lineage.rawValue, Array(lineage.utf8)))
        payloads.append((TrainPhase.sums.rawValue, sums.flatMap(FloatPayload.encode)))
        if r.epochEnd { payloads.append((TrainPhase.weights.rawValue, FloatPayload.encode(MLPTraining.flatten(training.parameters)))) }
        return TaskOutputs(payloads: payloads + inner)
    }

    /// The weights a span keeps at the epoch ends strictly inside it (`epoch_ends`),
    /// taken as its steps go.
    struct EpochWeights {
        /// Steps (absolute) after which an epoch ends, increasing.
        let ends: [Int]
        /// The flat weights at each end reached so far.
        private(set) var weights: [[Float]] = []

        init(_ r: Prune_V1_TrainTask, layout: SpanLayout, where where_: String) throws {
            ends = r.epochEnds.map(Int.init)
            guard zip(ends, ends.dropFirst()).allSatisfy({ $0 < $1 }), ends.allSatisfy({ $0 > layout.first && $0 < layout.first + layout.steps }) else {
                throw PruningError("\(where_): epoch ends \(ends) are not increasing steps inside the span \(layout.first)..<\(layout.first + layout.steps)")
            }
        }

        /// Called once step `index` (absolute) is applied: keeps the weights if an epoch ends there.
        mutating func after(step index: Int, _ training: MLPTraining) {
            if weights.count < ends.count, ends[weights.count] == index + 1 { weights.append(MLPTraining.flatten(training.parameters)) }
        }
    }

    /// The summed gradient of a step, zeroed (its buffer reused), and a language model's
    /// kept flags read once.
    static func zeroSum(model: TrainTaskModel, training: MLPTraining) {
        let count = training.parameterCount
        if kept.summed.count == count { kept.summed.withUnsafeMutableBufferPointer { $0.update(repeating: 0) } } else { kept.summed = [Float](repeating: 0, count: count) }
        if model.isLanguageModel, kept.keeps.count != training.parameters.weights.count { kept.keeps = training.weightKeeps }
    }

    /// Adds one shard's gradient (F32 bytes) to the step's sum. A language model's
    /// gradients hold only the kept weights' entries (what the masked optimizer reads);
    /// the pruned entries of the sum stay 0.
    private static func addToSum(_ raw: UnsafeRawBufferPointer, model: TrainTaskModel, training: MLPTraining, where where_: String) throws {
        let count = training.parameterCount, compact = model.isLanguageModel, expected = compact ? kept.keptCount : count
        guard raw.count == 4 * expected else { throw PruningError("\(where_): a gradient has \(raw.count / 4) values, expected \(expected)") }
        raw.withMemoryRebound(to: Float.self) { g in kept.summed.withUnsafeMutableBufferPointer { out in
            guard compact else { FloatVectors.add(UnsafeBufferPointer(rebasing: g[0..<count]), to: out.baseAddress!); return }
            var at = 0, j = 0
            for keep in kept.keeps {
                keep.withUnsafeBufferPointer { k in for i in 0..<k.count where k[i] { out[at + i] += g[j]; j += 1 } }
                at += keep.count
            }
        } }
    }

    /// What a shard whose loss or gradient is not finite fails with.
    static func diverged(step: Int, loss: Double) -> PruningError {
        PruningError("train step \(step): the loss became \(loss) (non-finite gradient); lower train.learning_rate (the last checkpoint is kept)")
    }

    /// One optimizer step on the summed gradient; the weights must stay finite.
    static func apply(_ training: inout MLPTraining, _ s: Prune_V1_TrainStep, index: Int) throws {
        guard s.learningRate.isFinite, s.learningRate >= 0, s.batch > 0 else { throw PruningError("train step \(index): a bad learning rate or batch") }
        training.apply(summedGradient: kept.summed, batch: Int(s.batch), learningRate: s.learningRate > 0 ? s.learningRate : nil)
        guard training.parameters.weights.allSatisfy(FloatVectors.allFinite),
              training.parameters.biases.allSatisfy({ $0.map(FloatVectors.allFinite) ?? true }) else {
            kept.training = nil
            throw PruningError("train step \(index): the weights became non-finite; lower train.learning_rate (the last checkpoint is kept)")
        }
    }

    /// The most example data a task may name (checked before it is fetched; a job with
    /// more is refused when it is planned, `MLPTrainee`).
    static let maxExampleDataBytes: UInt64 = 4 << 30

    /// The job's example data a classifier task's `rows` index, checked against the model
    /// and the rows: fetched (and its digest verified) once, then kept while tasks name it.
    static func exampleData(_ r: Prune_V1_TrainTask, width: Int, inputs: TaskInputs, where where_: String) throws -> [UInt8] {
        let e = r.examples, per = Int(r.exampleBytes)
        guard per == 1 || per == 4, width > 0, e.size > 0, e.size <= maxExampleDataBytes, Int(e.size) % (width * per) == 0 else {
            throw PruningError("\(where_): example data of \(e.size) bytes at \(r.exampleBytes) bytes a value for inputs of \(width)")
        }
        let count = Int(e.size) / (width * per)
        guard r.rows.count == r.labels.count, r.rows.allSatisfy({ Int($0) < count }) else {
            throw PruningError("\(where_): \(r.rows.count) examples and \(r.labels.count) labels, or an example outside the \(count) of the data")
        }
        if let kept = kept.examples, kept.sha256 == e.sha256, kept.bytes.count == Int(e.size) { return kept.bytes }
        // The last job's go before this one's come.
        kept.examples = nil
        let bytes = try inputs.artifact(e)
        guard bytes.count == Int(e.size) else { throw PruningError("\(where_): example data of \(bytes.count) bytes, not \(e.size)") }
        kept.examples = (e.sha256, bytes)
        return bytes
    }

    /// The inputs of the task's examples `examples` (positions in its `rows`) as F32, row
    /// after row: IDX bytes scaled as the data loader does, F32 copied.
    static func inputValues(_ r: Prune_V1_TrainTask, data: [UInt8], width: Int, examples: Range<Int>) -> [Float] {
        var x = [Float](repeating: 0, count: examples.count * width)
        let bytes = r.exampleBytes == 1
        data.withUnsafeBytes { all in
            x.withUnsafeMutableBufferPointer { out in
                pixels.withUnsafeBufferPointer { pixel in
                    for (k, i) in examples.enumerated() {
                        let row = Int(r.rows[i]), to = out.baseAddress! + k * width
                        if bytes {
                            let from = all.baseAddress!.assumingMemoryBound(to: UInt8.self) + row * width
                            for c in 0..<width { to[c] = pixel[Int(from[c])] }
                        } else {
                            UnsafeMutableRawPointer(to).copyMemory(from: all.baseAddress! + 4 * row * width, byteCount: 4 * width)
                        }
                    }
                }
            }
        }
        return x
    }

    /// `LabelledData.pixel` of every byte: a lookup instead of a division per value (the
    /// same F32 values; a span converts tens of millions).
    private static let pixels: [Float] = (0...255).map { LabelledData.pixel(UInt8($0)) }

    /// Action span: the task's steps after its base, each step's gradient the sum of its
    /// slices' (the slices a star exchange's gradient tasks take, summed as the tasks after
    /// them sum them: a classifier's in `ShardTreeSum`'s tree, a language model's in shard
    /// order). Returns each slice's loss triple, step after step.
    private static func runSpan(_ r: Prune_V1_TrainTask, layout: SpanLayout, training: inout MLPTraining, epochs: inout EpochWeights,
                                model: TrainTaskModel, inputs: TaskInputs, where where_: String) throws -> [[Double]] {
        let steps = layout.steps, per = layout.per, shards = layout.shards, first = layout.first
        let slice = layout.slice
        var losses: [[Double]] = []
        switch model {
        case .mlp(let m):
            let data = try layout.checkExamples(r, model: m, inputs: inputs, where: where_)
            // Reserved once the examples show the steps are real.
            losses.reserveCapacity(steps * shards)
            var tree = ShardTreeSum(count: training.parameterCount)
            for k in 0..<steps {
                zeroSum(model: model, training: training)
                for j in 0..<shards {
                    let shard = try classifierShard(m, r, data: data, training: training, rows: slice(k, j), step: first + k, where: where_)
                    try tree.push(tensors: shard.tensors)
                    losses.append(shard.loss)
                }
                kept.summed.withUnsafeMutableBufferPointer { tree.finish(into: $0) }
                try apply(&training, r.span[k], index: first + k)
                epochs.after(step: first + k, training)
            }
        case .llama(let llama):
            // The window length bounded before any product of it (steps ≤ 1e6, per ≤ 65536).
            let t = Int(r.tokens)
            guard t >= 2, t <= 8192, r.tokenIds.count % t == 0, r.tokenIds.count / t == steps * per else {
                throw PruningError("\(where_): \(r.tokenIds.count) token ids for \(steps) steps of \(per) windows of \(t)")
            }
            losses.reserveCapacity(steps * shards)
            for k in 0..<steps {
                zeroSum(model: model, training: training)
                for j in 0..<shards {
                    let rows = slice(k, j)
                    var shard = r
                    shard.tokenIds = Array(r.tokenIds[(rows.lowerBound * t)..<(rows.upperBound * t)])
                    let result = try llama.gradient(training.parameters.weights, keeps: kept.keeps, shard, inputs: inputs, where: where_)
                    guard result.loss.isFinite, result.gradient.withUnsafeBytes({ $0.withMemoryRebound(to: Float.self) { $0.allSatisfy(\.isFinite) } }) else {
                        throw diverged(step: first + k, loss: result.loss)
                    }
                    try result.gradient.withUnsafeBytes { try addToSum($0, model: model, training: training, where: where_) }
                    losses.append([result.loss, 0, Double(result.count)])
                }
                try apply(&training, r.span[k], index: first + k)
                epochs.after(step: first + k, training)
            }
        }
        return losses
    }

    /// A span's steps and shards, bounded, and which examples each shard takes.
    struct SpanLayout {
        let steps: Int, per: Int, shards: Int
        /// The step the span starts at (its base's).
        let first: Int

        init(_ r: Prune_V1_TrainTask, where where_: String) throws {
            steps = r.span.count
            per = Int(r.examplesPerStep)
            shards = Int(r.shards)
            first = Int(r.baseStep)
            guard steps > 0, steps <= 1_000_000, shards >= 1, shards <= 64, per >= shards, per <= TrainSpec.maxBatch else {
                throw PruningError("\(where_): a span of \(steps) steps of \(per) examples in \(shards) shards")
            }
        }

        /// Examples [a, b) of the task's that step k's shard j takes.
        func slice(_ k: Int, _ j: Int) -> Range<Int> { (k * per + j * per / shards)..<(k * per + (j + 1) * per / shards) }

        /// A classifier span's examples and labels are those of its steps, labels in range;
        /// returns the example data its rows index (`exampleData`).
        func checkExamples(_ r: Prune_V1_TrainTask, model m: MLPModel, inputs: TaskInputs, where where_: String) throws -> [UInt8] {
            guard r.labels.count == steps * per else {
                throw PruningError("\(where_): \(r.labels.count) labels for \(steps) steps of \(per) examples")
            }
            guard r.labels.allSatisfy({ Int($0) < m.classes }) else { throw PruningError("\(where_): a label is outside the model's \(m.classes) classes") }
            return try TrainStep.exampleData(r, width: m.config.input, inputs: inputs, where: where_)
        }
    }

    /// A classifier span's shard: the gradient (tensor by tensor, in the flat order) and
    /// loss triple of examples `rows` of the task's, at the training's weights. The span's
    /// examples are checked by `runSpan` first.
    static func classifierShard(_ m: MLPModel, _ r: Prune_V1_TrainTask, data: [UInt8], training: MLPTraining, rows: Range<Int>, step: Int,
                                where where_: String) throws -> (tensors: [[Float]], loss: [Double]) {
        // Only the shard's examples as F32 (the span's all would be 4 bytes per pixel at once).
        let x = inputValues(r, data: data, width: m.config.input, examples: rows)
        let result = MLPGradient.evaluate(m, parameters: training.parameters, x: x, labels: r.labels[rows].map { Int32($0) }, rows: rows.count)
        let g = zip(result.gradients.weights, result.gradients.biases).flatMap { [$0] + ($1.map { [$0] } ?? []) }
        guard g.reduce(0, { $0 + $1.count }) == kept.summed.count else {
            throw PruningError("\(where_): a gradient of \(g.reduce(0) { $0 + $1.count }) values for \(kept.summed.count) parameters")
        }
        guard result.loss.isFinite, g.allSatisfy(FloatVectors.allFinite) else { throw diverged(step: step, loss: result.loss) }
        return (g, [result.loss, Double(result.correct), Double(rows.count)])
    }

    /// The lineage of a span's end state: its base's, chained with the steps' divisors,
    /// step sizes, the shard count and the examples (which, from the same state, fix the
    /// gradients and so the state reached).
    static func spanLineage(_ base: String, _ r: Prune_V1_TrainTask) -> String {
        var h = SHA256Stream()
        h.update(Array("\(base)\nspan \(r.shards) \(r.examplesPerStep) \(r.tokens):\(r.span.map { "\($0.batch) \($0.learningRate.bitPattern)" }.joined(separator: ","))\n".utf8))
        h.update(Array("\(r.examples.sha256) \(r.exampleBytes)\n".utf8))
        r.rows.withUnsafeBytes { h.update($0) }
        r.labels.withUnsafeBytes { h.update($0) }
        r.tokenIds.withUnsafeBytes { h.update($0) }
        return h.finalizeHex()
    }

    /// A schedule's round: magnitude masks at the round's level (within the job's pattern)
    /// on the base's weights, and the state the round trains from: those weights masked,
    /// a fresh optimizer state, at the round's first step.
    /// A state's bytes cut into the task's `state_chunks` payloads (`state`, `state:1`, …).
    private static func chunks(_ state: [UInt8], _ r: Prune_V1_TrainTask) -> [(name: String, bytes: [UInt8])] {
        let count = max(1, Int(r.stateChunks)), size = (state.count + count - 1) / count
        return (0..<count).map { k in
            (TrainPhase.stateChunk(k).rawValue, Array(state[min(k * size, state.count)..<min((k + 1) * size, state.count)]))
        }
    }

    private static func pruned(_ training: MLPTraining, _ r: Prune_V1_TrainTask, model taskModel: TrainTaskModel, optimizer: MLPTraining.Optimizer,
                               lineage: String, where where_: String) throws -> TaskOutputs {
        guard case .mlp(let model) = taskModel else { throw PruningError("\(where_): a schedule's rounds prune an MLP classifier") }
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
        payloads += chunks(next.serialized(), r)
        payloads.append((TrainPhase.lineage.rawValue, Array(h.finalizeHex().utf8)))
        return TaskOutputs(payloads: payloads)
    }

    /// The architecture and start weights, kept while the start's lineage stays the same.
    private static func model(_ r: Prune_V1_TrainTask, lineage: String, inputs: TaskInputs, where where_: String) throws -> TrainTaskModel {
        if let m = kept.model, kept.modelLineage == lineage { return m }
        let model: TrainTaskModel
        if !r.llamaConfig.isEmpty {
            model = .llama(try LlamaTrainTask(r, inputs: inputs, where: where_))
        } else {
            guard r.mlpJson.count <= 1 << 20, let object = try? JSONSerialization.jsonObject(with: r.mlpJson), let json = object as? [String: Any] else {
                throw PruningError("\(where_): mlp.json is not a JSON object")
            }
            let config = try MLPConfig.parse(json, file: "\(where_): mlp.json")
            model = .mlp(try MLPModel(config: config, store: WeightStore(reader: TaskTensorReader(r.parameters, inputs: inputs))))
        }
        guard r.masks.count == model.layers.count else { throw PruningError("\(where_): \(r.masks.count) masks for \(model.layers.count) layers") }
        if case .mlp = model, r.masks.contains(where: \.hasUpdated) { throw PruningError("\(where_): updated start values are for a language model's layers") }
        kept.model = model
        kept.modelLineage = lineage
        kept.training = nil
        return model
    }

    /// Each layer's weight mask as kept flags, from its row-block parts in row order.
    private static func masks(_ r: Prune_V1_TrainTask, model: TrainTaskModel, inputs: TaskInputs, where where_: String) throws -> [[Bool]?] {
        try zip(r.masks, model.layers).map { m, layer in
            guard !m.parts.isEmpty else { return nil }
            var bits: [UInt8] = []
            for p in m.parts { bits += try inputs.artifact(p) }
            let mask = try Mask(rows: layer.rows, cols: layer.cols, bits: bits)
            var keep = [Bool](repeating: false, count: layer.rows * layer.cols)
            for r in 0..<layer.rows { for c in 0..<layer.cols where mask[r, c] { keep[r * layer.cols + c] = true } }
            return keep
        }
    }
}

/// The model a train task trains, as the worker builds it from the task's setup.
enum TrainTaskModel {
    case mlp(MLPModel)
    case llama(LlamaTrainTask)

    /// Each weight's shape, in the flat order.
    var layers: [(rows: Int, cols: Int)] {
        switch self {
        case .mlp(let m): return m.layers.map { ($0.outFeatures, $0.inFeatures) }
        case .llama(let l): return l.shapes
        }
    }

    /// Whether gradients travel kept entries only (a language model's).
    var isLanguageModel: Bool {
        if case .llama = self { return true }
        return false
    }

    /// The start parameters (a language model's trained weights have no biases).
    var parameters: MLPGradient.Parameters {
        switch self {
        case .mlp(let m): return m.parameters
        case .llama(let l): return MLPGradient.Parameters(weights: l.start, biases: Array(repeating: nil, count: l.start.count))
        }
    }
}

/// A Llama-family model on a worker: the fixed tensors behind a store, the decoder Linear
/// weights at the start, and the gradient of a shard's windows at given weights.
final class LlamaTrainTask {
    let config: LlamaConfig
    let names: [String]
    let shapes: [(rows: Int, cols: Int)]
    let start: [[Float]]
    /// A task's summed gradient (all entries), reused from task to task.
    private var accumulator: [Float] = []

    init(_ r: Prune_V1_TrainTask, inputs: TaskInputs, where where_: String) throws {
        let config = try LlamaConfig.parse(bytes: [UInt8](r.llamaConfig), file: "\(where_): config.json")
        let expected = (0..<config.layers).flatMap(config.linearNames)
        guard r.parameters.map(\.name) == expected else {
            throw PruningError("\(where_): the trained tensors are not the model's decoder Linear weights in order")
        }
        self.config = config
        let store = WeightStore(reader: TaskTensorReader(r.parameters + r.forward, inputs: inputs))
        names = expected
        let h = config.hiddenSize, kv = config.kvHeads * config.headDim
        let shapes = (0..<config.layers).flatMap { b in
            let own = config.block(b), q = own.heads * config.headDim, i = own.intermediateSize
            return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]
        }
        self.shapes = shapes
        guard r.masks.count == expected.count else { throw PruningError("\(where_): \(r.masks.count) masks for \(expected.count) layers") }
        // A layer whose kept weights the pruning re-fit (SparseGPT, a reconstruction)
        // starts from those values, not the checkpoint's.
        start = try zip(zip(expected, shapes), r.masks).map { named, m in
            let (name, shape) = named
            guard m.hasUpdated else { return try store.load(name, shape: [shape.0, shape.1]) }
            let values = try FloatPayload.floats(try inputs.artifact(m.updated), what: "\(where_): start values of \(name)")
            guard values.count == shape.0 * shape.1, values.allSatisfy(\.isFinite) else {
                throw PruningError("\(where_): start values of \(name): \(values.count) values (expected \(shape.0 * shape.1)), or not all finite")
            }
            return values
        }
    }

    /// The summed next-token cross-entropy of the task's windows and its gradient with
    /// respect to every trained weight at `weights`, windows in order: F32 bytes (the
    /// payload itself) of the entries `keeps` marks kept only, weight after weight: the
    /// masked optimizer never reads the others, and the exchange shrinks with the sparsity.
    func gradient(_ weights: [[Float]], keeps: [[Bool]], _ r: Prune_V1_TrainTask, inputs: TaskInputs, where where_: String) throws -> (gradient: [UInt8], loss: Double, count: Int) {
        let c = config, t = Int(r.tokens)
        // The fixed tensors through this task's inputs (an earlier task's may be gone).
        let store = WeightStore(reader: TaskTensorReader(r.parameters + r.forward, inputs: inputs))
        let model = LlamaModel(config: c, store: store)
        try c.checkSequenceLength(t, what: "\(where_): windows")
        guard t >= 2, !r.tokenIds.isEmpty, r.tokenIds.count % t == 0, r.tokenIds.count / t <= TrainSpec.maxBatch else {
            throw PruningError("\(where_): \(r.tokenIds.count) token ids in windows of \(t)")
        }
        guard r.tokenIds.allSatisfy({ $0 >= 0 && Int($0) < c.vocabSize }) else { throw PruningError("\(where_): a token id is outside the vocabulary") }
        guard weights.count == names.count else { throw PruningError("\(where_): \(weights.count) weights for \(names.count) layers") }
        for (name, w) in zip(names, weights) { store.override(name, with: w) }
        let blocks = try (0..<c.layers).map { try model.block($0) }
        // The store no longer shares the training's arrays (its next step updates them in place).
        store.clearOverrides()
        var offsets: [String: Int] = [:], at = 0
        for (name, s) in zip(names, shapes) {
            offsets[name] = at
            at += s.rows * s.cols
        }
        guard keeps.map(\.count) == shapes.map({ $0.rows * $0.cols }) else { throw PruningError("\(where_): masks of other sizes than the weights") }
        // The windows' sum in a buffer kept from task to task (zeroing it reuses its pages).
        if accumulator.count == at { accumulator.withUnsafeMutableBufferPointer { $0.update(repeating: 0) } } else { accumulator = [Float](repeating: 0, count: at) }
        var loss = 0.0, count = 0
        for w in 0..<(r.tokenIds.count / t) {
            let window = Array(r.tokenIds[(w * t)..<((w + 1) * t)])
            let result = try LlamaGradient.evaluate(model, blocks: blocks, tokens: window) { name, g in
                guard let o = offsets[name] else { return }
                accumulator.withUnsafeMutableBufferPointer { s in g.withUnsafeBufferPointer { d in for k in 0..<d.count { s[o + k] += d[k] } } }
            }
            loss += result.loss
            count += result.count
        }
        let kept = keeps.reduce(0) { $0 + $1.count { $0 } }
        var payload = [UInt8](repeating: 0, count: 4 * kept)
        payload.withUnsafeMutableBytes { raw in raw.withMemoryRebound(to: Float.self) { out in
            accumulator.withUnsafeBufferPointer { s in
                var at = 0, j = 0
                for keep in keeps {
                    keep.withUnsafeBufferPointer { k in for i in 0..<k.count where k[i] { out[j] = s[at + i]; j += 1 } }
                    at += keep.count
                }
            }
        } }
        return (payload, loss, count)
    }
}
