import Foundation

/// The state of an MLP classifier's masked training: its parameters, one masked optimizer
/// per tensor (weights keep their pruning mask, biases are all kept) and the step count.
/// A step takes the batch's summed gradient (`MLPGradient`, shard sums added in a fixed
/// binary tree, the Engine's `ShardTreeSum`), divides it by the batch size and updates every tensor: a fixed elementwise
/// sequence in F32, so every host that applies the same gradients gets the same bits.
public struct MLPTraining: Sendable, Equatable {
    /// The optimizer and its hyper-parameters.
    public enum Optimizer: Sendable, Equatable {
        case sgd(learningRate: Float, momentum: Float, weightDecay: Float)
        case adamw(learningRate: Float, weightDecay: Float)
    }

    /// One tensor's optimizer.
    enum TensorOptimizer: Sendable, Equatable {
        case sgd(MaskedSGD)
        case adam(MaskedAdam)

        /// The entries it trains (false: pruned).
        var keep: [Bool] {
            switch self {
            case .sgd(let o): return o.keep
            case .adam(let o): return o.keep
            }
        }

        /// A step with the gradient `summed · scale` (+ `l1`·sign(w) where w ≠ 0).
        mutating func update(_ values: inout [Float], summed: UnsafeBufferPointer<Float>, scale: Float, l1: Float, learningRate: Float?) {
            switch self {
            case .sgd(var o):
                o.update(&values, summed: summed, scale: scale, l1: l1, learningRate: learningRate)
                self = .sgd(o)
            case .adam(var o):
                o.update(&values, summed: summed, scale: scale, l1: l1, learningRate: learningRate)
                self = .adam(o)
            }
        }

        func serializedState() -> [UInt8] {
            switch self {
            case .sgd(let o): return o.serializedState()
            case .adam(let o): return o.serializedState()
            }
        }

        mutating func restore(_ bytes: [UInt8]) throws {
            switch self {
            case .sgd(var o): try o.restore(bytes); self = .sgd(o)
            case .adam(var o): try o.restore(bytes); self = .adam(o)
            }
        }
    }

    public private(set) var parameters: MLPGradient.Parameters
    public private(set) var step = 0
    /// An L1 penalty on the weights (not the biases): λ·sign(w) joins each weight's mean gradient.
    public let l1: Float
    private var optimizers: [TensorOptimizer]

    /// Starts from `parameters` with `masks[l]` (true: kept) on layer l's weight, nil for a
    /// layer trained whole, at step `step`. Pruned weights are zeroed now and stay zero.
    public init(parameters: MLPGradient.Parameters, masks: [[Bool]?], optimizer: Optimizer, l1: Float = 0, step: Int = 0) {
        precondition(masks.count == parameters.weights.count, "one mask slot per layer")
        var p = parameters
        var optimizers: [TensorOptimizer] = []
        func make(_ keep: [Bool]) -> TensorOptimizer {
            switch optimizer {
            case .sgd(let lr, let momentum, let decay): return .sgd(MaskedSGD(keep: keep, learningRate: lr, momentum: momentum, weightDecay: decay))
            case .adamw(let lr, let decay): return .adam(MaskedAdam(keep: keep, learningRate: lr, weightDecay: decay))
            }
        }
        for l in p.weights.indices {
            let keep = masks[l] ?? [Bool](repeating: true, count: p.weights[l].count)
            precondition(keep.count == p.weights[l].count, "mask \(l) differs from its weight in size")
            for i in keep.indices where !keep[i] { p.weights[l][i] = 0 }
            optimizers.append(make(keep))
            if let b = p.biases[l] { optimizers.append(make([Bool](repeating: true, count: b.count))) }
        }
        self.parameters = p
        self.optimizers = optimizers
        self.l1 = l1
        self.step = step
    }

    /// Values in all tensors, in the flat order (layer by layer: weight, then bias).
    public var parameterCount: Int {
        zip(parameters.weights, parameters.biases).reduce(0) { $0 + $1.0.count + ($1.1?.count ?? 0) }
    }

    /// The parameters (or a gradient shaped like them) as one F32 array in the flat order.
    public static func flatten(_ p: MLPGradient.Parameters) -> [Float] {
        var out: [Float] = []
        for (w, b) in zip(p.weights, p.biases) {
            out += w
            if let b { out += b }
        }
        return out
    }

    /// Splits a flat array into tensors shaped like the training's parameters.
    public func unflatten(_ flat: [Float]) -> MLPGradient.Parameters? { MLPTraining.unflatten(flat, like: parameters) }

    /// Splits a flat array into tensors shaped like `shape`'s.
    public static func unflatten(_ flat: [Float], like shape: MLPGradient.Parameters) -> MLPGradient.Parameters? {
        guard flat.count == zip(shape.weights, shape.biases).reduce(0, { $0 + $1.0.count + ($1.1?.count ?? 0) }) else { return nil }
        var at = 0, weights: [[Float]] = [], biases: [[Float]?] = []
        for (w, b) in zip(shape.weights, shape.biases) {
            weights.append(Array(flat[at..<(at + w.count)]))
            at += w.count
            if let b {
                biases.append(Array(flat[at..<(at + b.count)]))
                at += b.count
            } else {
                biases.append(nil)
            }
        }
        return MLPGradient.Parameters(weights: weights, biases: biases)
    }

    /// One optimizer step with the gradient of the summed loss over `batch` examples
    /// (flat order): the mean gradient is `summed / batch`. `learningRate`, when given,
    /// replaces the optimizer's for this step (a learning-rate schedule's).
    public mutating func apply(summedGradient summed: [Float], batch: Int, learningRate: Float? = nil) {
        precondition(summed.count == parameterCount && batch > 0, "a gradient of every parameter, over a nonempty batch")
        let scale = 1 / Float(batch)
        var at = 0, k = 0
        summed.withUnsafeBufferPointer { s in
            for l in parameters.weights.indices {
                let n = parameters.weights[l].count
                optimizers[k].update(&parameters.weights[l], summed: UnsafeBufferPointer(rebasing: s[at..<(at + n)]), scale: scale, l1: l1, learningRate: learningRate)
                at += n
                k += 1
                if let b = parameters.biases[l]?.count {
                    optimizers[k].update(&parameters.biases[l]!, summed: UnsafeBufferPointer(rebasing: s[at..<(at + b)]), scale: scale, l1: 0, learningRate: learningRate)
                    at += b
                    k += 1
                }
            }
        }
        step += 1
    }

    static let magic: [UInt8] = Array("MLPT0001".utf8)

    /// Step, parameters and every tensor's optimizer state: magic, step (u64), parameter
    /// count (u64), the F32 parameters, then per tensor a u64 length and its optimizer state.
    public func serialized() -> [UInt8] {
        var out = MLPTraining.magic
        // Room for the parameters and two moments each (AdamW) up front: a large model's
        // state would otherwise be copied as the array grows.
        out.reserveCapacity(24 + 12 * parameterCount + 64 * optimizers.count)
        withUnsafeBytes(of: UInt64(step).littleEndian) { out += $0 }
        withUnsafeBytes(of: UInt64(parameterCount).littleEndian) { out += $0 }
        for (w, b) in zip(parameters.weights, parameters.biases) {
            w.withUnsafeBytes { out += $0 }
            b?.withUnsafeBytes { out += $0 }
        }
        for o in optimizers {
            let s = o.serializedState()
            withUnsafeBytes(of: UInt64(s.count).littleEndian) { out += $0 }
            out += s
        }
        return out
    }

    /// Restores `serialized`'s bytes into a training of the same architecture, masks and
    /// optimizer; refuses other sizes, non-finite parameters, nonzero pruned weights.
    public mutating func restore(_ bytes: [UInt8]) throws {
        func u64(_ at: Int) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) } }
        let n = parameterCount
        guard bytes.count >= 24 + 4 * n, Array(bytes[0..<8]) == MLPTraining.magic, u64(16) == UInt64(n), u64(8) <= UInt64(Int32.max) else {
            throw ModelError("training state: not an MLP training state of \(n) parameters")
        }
        var flat = [Float](repeating: 0, count: n)
        bytes.withUnsafeBytes { raw in flat.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[24..<(24 + 4 * n)])) } }
        if let i = flat.firstIndex(where: { !$0.isFinite }) { throw ModelError("training state: parameter \(i) is \(flat[i])") }
        var at = 24 + 4 * n
        var restored = optimizers
        for k in restored.indices {
            guard bytes.count >= at + 8 else { throw ModelError("training state: truncated before optimizer state \(k)") }
            let length = u64(at)
            guard length <= UInt64(bytes.count - at - 8) else { throw ModelError("training state: optimizer state \(k) runs past the end") }
            try restored[k].restore(Array(bytes[(at + 8)..<(at + 8 + Int(length))]))
            at += 8 + Int(length)
        }
        guard at == bytes.count else { throw ModelError("training state: \(bytes.count - at) bytes after the last optimizer state") }
        guard let p = unflatten(flat) else { throw ModelError("training state: wrong parameter count") }
        for (l, w) in p.weights.enumerated() {
            let keep = restored[optimizerIndex(weightOf: l)].keep
            if let i = keep.indices.first(where: { !keep[$0] && w[$0] != 0 }) {
                throw ModelError("training state: weight \(i) of layer \(l) is pruned but \(w[i])")
            }
        }
        parameters = p
        optimizers = restored
        step = Int(u64(8))
    }

    /// Each layer's weight mask (true: kept), as its optimizer holds it.
    public var weightKeeps: [[Bool]] { parameters.weights.indices.map { optimizers[optimizerIndex(weightOf: $0)].keep } }

    private func optimizerIndex(weightOf layer: Int) -> Int {
        parameters.biases[..<layer].reduce(layer) { $0 + ($1 == nil ? 0 : 1) }
    }
}
