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

    public init(keep: [Bool], learningRate: Float, momentum: Float = 0.9, weightDecay: Float = 0) {
        precondition(learningRate.isFinite && learningRate > 0, "learning rate must be finite and > 0")
        precondition(momentum >= 0 && momentum < 1 && weightDecay >= 0, "momentum in [0, 1), weight decay ≥ 0")
        self.keep = keep
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        velocity = [Float](repeating: 0, count: keep.count)
    }

    /// One step on `weights` with `gradient` (the same shape). Pruned entries are set to 0.
    public mutating func update(_ weights: inout [Float], gradient: [Float]) {
        precondition(weights.count == keep.count && gradient.count == keep.count, "weights, gradient and mask differ in size")
        step += 1
        for i in 0..<keep.count {
            guard keep[i] else { weights[i] = 0; continue }
            let g = gradient[i] + weightDecay * weights[i]
            // PyTorch starts the buffer at the first gradient; with v = 0 the same formula gives it.
            velocity[i] = momentum * velocity[i] + g
            weights[i] -= learningRate * velocity[i]
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
