import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// The worker's side of block-wise reconstruction in sequential mode (`BlockStepTask`): one
/// piece of one half's Adam run. A loss or gradient task runs the half on a slice of a
/// calibration shard (the inputs the pruned and re-fit blocks before it give), the dense
/// half as teacher on the same inputs; a step task sums a step's slice gradients in slice
/// order and takes one masked Adam step; the finish task keeps the better of the start
/// and the end. Every piece is a pure function of its inputs, so the run's bytes do not
/// depend on which worker ran which piece, or on a resume between them.
enum BlockRefitStep {
    static let loss = "loss", gradient = "gradient", step = "step", finish = "finish"

    /// The half's pruned Linears: where each sits in `SubBlock.linears`, its mask as
    /// keep flags, and its start weights (zero where pruned).
    struct Student {
        var index: [Int] = []
        var keep: [[Bool]] = []
        var start: [[Float]] = []
        var count: [Int] { keep.map(\.count) }
    }

    /// The weights and Adam state of the pruned Linears after some steps.
    struct State {
        var weights: [[Float]]
        var optimizers: [MaskedAdam]

        init(student: Student, learningRate: Float) {
            weights = student.start
            optimizers = student.keep.map { MaskedAdam(keep: $0, learningRate: learningRate) }
        }

        /// Per Linear, in order: its F32 weights, then its Adam state.
        func serialized() -> [UInt8] {
            zip(weights, optimizers).flatMap { FloatPayload.encode($0) + $1.serializedState() }
        }

        /// Reads `serialized`'s bytes back; refuses another size, non-finite weights or
        /// weights or moments that are not zero where pruned.
        mutating func restore(_ bytes: [UInt8], what: String) throws {
            var at = 0
            for i in weights.indices {
                let n = weights[i].count
                guard bytes.count >= at + 4 * n + 24 + 8 * n else { throw PruningError("\(what): \(bytes.count) bytes, too few for the half's weights") }
                let w = try FloatPayload.floats(Array(bytes[at..<(at + 4 * n)]), what: what)
                for j in 0..<n where !w[j].isFinite || (!optimizers[i].keep[j] && w[j] != 0) {
                    throw PruningError("\(what): weight \(j) of Linear \(i) is \(w[j]) (not finite, or nonzero where pruned)")
                }
                weights[i] = w
                at += 4 * n
                try optimizers[i].restore(Array(bytes[at..<(at + 24 + 8 * n)]))
                at += 24 + 8 * n
            }
            guard at == bytes.count else { throw PruningError("\(what): \(bytes.count) bytes, expected \(at)") }
        }
    }

    static func run(_ r: Prune_V1_BlockStepTask, inputs: TaskInputs) throws -> TaskOutputs {
        guard let part = SubBlock(rawValue: r.part) else { throw PruningError("refit step: unknown part \(r.part)") }
        let config = try LlamaConfig.parse(bytes: [UInt8](r.configJson), file: "refit step config")
        let b = Int(r.block), t = Int(r.tokens)
        let where_ = "refit block \(b) \(part.rawValue) (\(r.action))"
        guard b < config.layers, t > 0, r.learningRate.isFinite, r.learningRate > 0, !r.pruned.isEmpty else { throw PruningError("\(where_): bad task parameters") }
        let store = WeightStore(reader: TaskTensorReader(r.weights, inputs: inputs))
        let names = part.linears.map { "model.layers.\(b).\($0).weight" }
        // A saved state holds the current weights: the start is read only where it is used.
        let student = try self.student(r.pruned, names: names, store: store, inputs: inputs, loadStart: !r.hasState || r.action == finish, where: where_)
        var state = State(student: student, learningRate: Float(r.learningRate))
        if r.hasState { try state.restore(try inputs.artifact(r.state), what: "\(where_): state") }

        switch r.action {
        case step:
            guard !r.gradients.isEmpty else { throw PruningError("\(where_): no gradients") }
            var sum = student.count.map { [Float](repeating: 0, count: $0) }
            for ref in r.gradients {
                let g = try FloatPayload.floats(try inputs.artifact(ref), what: "\(where_): gradient")
                guard g.count == student.count.reduce(0, +) else { throw PruningError("\(where_): a gradient has \(g.count) values, expected \(student.count.reduce(0, +))") }
                var at = 0
                for i in sum.indices {
                    for j in 0..<sum[i].count { sum[i][j] += g[at + j] }
                    at += sum[i].count
                }
            }
            for i in sum.indices { state.optimizers[i].update(&state.weights[i], gradient: sum[i]) }
            guard state.weights.allSatisfy({ $0.allSatisfy(\.isFinite) }) else {
                throw PruningError("\(where_): the weights became non-finite; lower reconstruct.learning_rate")
            }
            return TaskOutputs(payloads: [(BlockRefitPhase.state.rawValue, state.serialized())])
        case finish:
            let before = try sum(r.lossesBefore, inputs: inputs, what: "\(where_): loss before")
            var after = try sum(r.lossesAfter, inputs: inputs, what: "\(where_): loss after")
            guard r.hasState, before.isFinite, after.isFinite else { throw PruningError("\(where_): the re-fit diverged (loss \(after)); lower reconstruct.learning_rate") }
            // Never worse than the start on the calibration data.
            var weights = state.weights
            if after > before { weights = student.start; after = before }
            return TaskOutputs(payloads: zip(student.index, weights).map { (BlockRefitPhase.weights(names[$0]).rawValue, FloatPayload.encode($1)) }
                               + [(BlockRefitPhase.loss.rawValue, FloatPayload.encode(before) + FloatPayload.encode(after))])
        case loss, gradient:
            let h = config.hiddenSize, n = Int(r.samples), first = Int(r.firstSample), shardSamples = Int(r.shardSamples)
            guard n >= 1, first + n <= shardSamples else { throw PruningError("\(where_): slice \(first)..<\(first + n) of a shard of \(shardSamples) windows") }
            let hidden = try FloatPayload.floats(try inputs.artifact(r.hidden), what: "hidden states")
            guard hidden.count == shardSamples * t * h else { throw PruningError("\(where_): the shard has \(hidden.count) values, expected \(shardSamples * t * h)") }
            var x = Array(hidden[(first * t * h)..<((first + n) * t * h)])
            let rope = RotaryTable(headDim: config.headDim, theta: config.ropeTheta, maxTokens: t)
            if part == .mlp {
                // The MLP's input: the attention half as re-fit (dense where nothing was pruned).
                let context = WeightStore(reader: TaskTensorReader(r.weights, inputs: inputs))
                try context.override(pruned: r.context, inputs: inputs)
                x = SubBlockGradient.output(.attention, block: try LlamaModel(config: config, store: context).block(b), input: x, samples: n, tokens: t, rope: rope)
            }
            let dense = try LlamaModel(config: config, store: store).block(b)
            let target = SubBlockGradient.output(part, block: dense, input: x, samples: n, tokens: t, rope: rope)
            var weights = try names.map { name -> [Float] in
                guard let shape = store.reader.shape(of: name) else { throw PruningError("\(where_): \(name) is not in the task") }
                return try store.load(name, shape: shape)
            }
            for (k, i) in student.index.enumerated() { weights[i] = state.weights[k] }
            let result = SubBlockGradient.evaluate(part, block: dense, weights: weights, input: x, target: target, samples: n, tokens: t, rope: rope,
                                                   gradients: r.action == gradient)
            guard result.loss.isFinite else { throw PruningError("\(where_): the loss became \(result.loss); lower reconstruct.learning_rate") }
            var payloads = [(BlockRefitPhase.shardLoss.rawValue, FloatPayload.encode(result.loss))]
            if r.action == gradient { payloads.insert((BlockRefitPhase.gradient.rawValue, FloatPayload.encode(student.index.flatMap { result.gradients[$0] })), at: 0) }
            return TaskOutputs(payloads: payloads)
        default:
            throw PruningError("\(where_): unknown action")
        }
    }

    /// The pruned Linears of the task, in `SubBlock.linears` order; without `loadStart`
    /// their start weights are left zero (a restored state replaces them).
    private static func student(_ pruned: [Prune_V1_PrunedLinear], names: [String], store: WeightStore, inputs: TaskInputs, loadStart: Bool,
                                where where_: String) throws -> Student {
        var s = Student()
        for p in pruned {
            guard let i = names.firstIndex(of: p.name), i > (s.index.last ?? -1), let shape = store.reader.shape(of: p.name), shape.count == 2 else {
                throw PruningError("\(where_): \(p.name) is not a Linear of this half (or out of order)")
            }
            let mask = try Mask(rows: shape[0], cols: shape[1], bits: try inputs.artifact(p.mask))
            var start = !loadStart ? [Float](repeating: 0, count: shape[0] * shape[1])
                : p.hasWeights ? try FloatPayload.floats(try inputs.artifact(p.weights), what: "weights of \(p.name)") : try store.load(p.name, shape: shape)
            guard start.count == shape[0] * shape[1] else { throw PruningError("\(where_): start weights of \(p.name) have the wrong size") }
            let keep = (0..<start.count).map { mask[$0 / shape[1], $0 % shape[1]] }
            for j in 0..<keep.count where !keep[j] { start[j] = 0 }
            s.index.append(i)
            s.keep.append(keep)
            s.start.append(start)
        }
        return s
    }

    private static func sum(_ refs: [Prune_V1_ArtifactRef], inputs: TaskInputs, what: String) throws -> Double {
        guard !refs.isEmpty else { throw PruningError("\(what): none") }
        return try refs.reduce(0.0) { total, ref in
            let v = try FloatPayload.doubles(try inputs.artifact(ref), what: what)
            guard v.count == 1, v[0].isFinite, v[0] >= 0 else { throw PruningError("\(what): not one finite F64 ≥ 0") }
            return total + v[0]
        }
    }
}
