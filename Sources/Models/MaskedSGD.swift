import Foundation

/// SGD with momentum (PyTorch's form: v ← μ·v + g + λ·w, w ← w − lr·v; no dampening) on
/// one tensor whose mask is fixed: pruned entries and their velocity stay exactly 0,
/// whatever the gradient says there. `MaskedAdam`'s sibling for training the MLP classifier
/// and masked fine-tuning; its state (step, velocity) serializes the same way.
public struct MaskedSGD: Sendable, Equatable {
    public let learningRate: Float
    public let momentum: Float
    /// L2 penalty added to the gradient (classic weight decay, as torch.optim.SGD's).
    public let weightDecay: Float
    /// Whether each entry is kept (trained); false entries are pruned.
    public let keep: [Bool]
    public private(set) var step = 0
    public private(set) var velocity: [Float]
    /// `keep` as F32 bit masks: all ones where kept, zero where pruned.
    private let keepBits: [UInt32]

    public init(keep: [Bool], learningRate: Float, momentum: Float = 0.9, weightDecay: Float = 0) {
        precondition(learningRate.isFinite && learningRate > 0, "learning rate must be finite and > 0")
        precondition(momentum >= 0 && momentum < 1 && weightDecay >= 0, "momentum in [0, 1), weight decay ≥ 0")
        self.keep = keep
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        velocity = [Float](repeating: 0, count: keep.count)
        keepBits = keep.map { $0 ? UInt32.max : 0 }
    }

    /// One step on `weights` with `gradient` (the same shape). Pruned entries are set to 0.
    public mutating func update(_ weights: inout [Float], gradient: [Float]) {
        precondition(weights.count == keep.count && gradient.count == keep.count, "weights, gradient and mask differ in size")
        gradient.withUnsafeBufferPointer { update(&weights, summed: $0, scale: 1, l1: 0) }
    }

    /// One step on `weights` with the gradient `summed[i] · scale`, plus `l1`·sign(w) where
    /// w ≠ 0 (an L1 penalty): training's mean of a batch's summed gradient, without a copy.
    /// Without a penalty, eight entries at a time (the loop is the step's largest cost
    /// outside the GEMMs), the mask applied as bits (kept: all ones, pruned: +0.0 exactly);
    /// each entry gets the same arithmetic, in the same order, as one at a time.
    /// `learningRate`, when given, replaces the optimizer's for this step (a schedule's).
    public mutating func update(_ weights: inout [Float], summed: UnsafeBufferPointer<Float>, scale: Float, l1: Float, learningRate stepSize: Float? = nil) {
        precondition(weights.count == keep.count && summed.count == keep.count, "weights, gradient and mask differ in size")
        step += 1
        let lr = stepSize ?? learningRate, mu = momentum, decay = weightDecay, n = keep.count
        keepBits.withUnsafeBufferPointer { k in
            velocity.withUnsafeMutableBufferPointer { v in
                weights.withUnsafeMutableBufferPointer { w in
                    let g = summed.baseAddress!
                    var i = 0
                    if l1 == 0 {
                        let wp = UnsafeMutableRawPointer(w.baseAddress!), vp = UnsafeMutableRawPointer(v.baseAddress!)
                        let gp = UnsafeRawPointer(g), kp = UnsafeRawPointer(k.baseAddress!)
                        while i + 8 <= n {
                            let bits = kp.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<UInt32>.self)
                            let wi = wp.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                            let gi = gp.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * scale
                            let vi = mu * vp.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) + (gi + decay * wi)
                            vp.storeBytes(of: unsafeBitCast(unsafeBitCast(vi, to: SIMD8<UInt32>.self) & bits, to: SIMD8<Float>.self),
                                          toByteOffset: 4 * i, as: SIMD8<Float>.self)
                            wp.storeBytes(of: unsafeBitCast(unsafeBitCast(wi - lr * vi, to: SIMD8<UInt32>.self) & bits, to: SIMD8<Float>.self),
                                          toByteOffset: 4 * i, as: SIMD8<Float>.self)
                            i += 8
                        }
                    }
                    while i < n {
                        var gi = g[i] * scale
                        if l1 > 0, w[i] != 0 { gi += w[i] > 0 ? l1 : -l1 }
                        // PyTorch starts the buffer at the first gradient; with v = 0 the same formula gives it.
                        let vi = mu * v[i] + (gi + decay * w[i])
                        let kept = k[i] != 0
                        v[i] = kept ? vi : 0
                        w[i] = kept ? w[i] - lr * vi : 0
                        i += 1
                    }
                }
            }
        }
    }

    static let magic: [UInt8] = Array("MSGD0001".utf8)

    /// The velocity and step: `OptimizerState` with one buffer.
    public func serializedState() -> [UInt8] {
        OptimizerState.encode(magic: MaskedSGD.magic, step: step, buffers: [velocity])
    }

    /// Restores `serializedState`'s bytes; refuses another size, or a velocity that is not
    /// finite or not zero where pruned.
    public mutating func restore(_ bytes: [UInt8]) throws {
        let (step, buffers) = try OptimizerState.decode(bytes, magic: MaskedSGD.magic, count: keep.count, buffers: 1)
        if let i = keep.indices.first(where: { !keep[$0] && buffers[0][$0] != 0 }) {
            throw ModelError("optimizer state: velocity \(i) is \(buffers[0][i]), nonzero where pruned")
        }
        self.step = step
        velocity = buffers[0]
    }
}
