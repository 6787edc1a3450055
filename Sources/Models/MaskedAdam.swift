import Foundation

/// Adam (Kingma & Ba 2015; with `weightDecay`, AdamW's decoupled decay) on one weight
/// tensor whose mask is fixed: pruned entries stay exactly 0, and so do their first and
/// second moments, whatever the gradient says there. Used to re-fit the kept weights of a
/// sub-block (block-wise reconstruction) and, later, masked fine-tuning.
///
/// The state (step, moments) serializes to bytes so a job can checkpoint it as an artifact
/// and resume with the same bytes; the update is a fixed elementwise sequence in F32, so it
/// gives the same bits on every host with the same libm.
public struct MaskedAdam: Sendable, Equatable {
    public let learningRate: Float
    public let beta1: Float, beta2: Float, epsilon: Float
    public let weightDecay: Float
    /// Whether each entry is kept (trained); false entries are pruned.
    public let keep: [Bool]
    /// Updates applied so far.
    public private(set) var step = 0
    public private(set) var first: [Float]
    public private(set) var second: [Float]

    public init(keep: [Bool], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0) {
        precondition(learningRate.isFinite && learningRate > 0, "learning rate must be finite and > 0")
        self.keep = keep
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        first = [Float](repeating: 0, count: keep.count)
        second = first
    }

    /// One step on `weights` with `gradient` (the same shape). Pruned entries are set to 0.
    /// `learningRate`, when given, replaces the optimizer's for this step (a schedule's).
    public mutating func update(_ weights: inout [Float], gradient: [Float], learningRate stepSize: Float? = nil) {
        gradient.withUnsafeBufferPointer { update(&weights, summed: $0, scale: 1, l1: 0, learningRate: stepSize) }
    }

    /// One step on the gradient `summed[i] · scale` (+ `l1`·sign(w) where w ≠ 0), read in
    /// place: a training step's summed gradient is never copied to be scaled.
    public mutating func update(_ weights: inout [Float], summed: UnsafeBufferPointer<Float>, scale: Float, l1: Float, learningRate stepSize: Float? = nil) {
        precondition(weights.count == keep.count && summed.count == keep.count, "weights, gradient and mask differ in size")
        let learningRate = stepSize ?? self.learningRate
        step += 1
        let c1 = 1 - powf(beta1, Float(step)), c2 = 1 - powf(beta2, Float(step))
        let (beta1, beta2, epsilon, weightDecay) = (self.beta1, self.beta2, self.epsilon, self.weightDecay)
        keep.withUnsafeBufferPointer { keep in
            first.withUnsafeMutableBufferPointer { first in
                second.withUnsafeMutableBufferPointer { second in
                    weights.withUnsafeMutableBufferPointer { weights in
                        for i in 0..<keep.count {
                            guard keep[i] else { weights[i] = 0; continue }
                            var g = summed[i] * scale
                            if l1 > 0, weights[i] != 0 { g += weights[i] > 0 ? l1 : -l1 }
                            first[i] = beta1 * first[i] + (1 - beta1) * g
                            second[i] = beta2 * second[i] + (1 - beta2) * g * g
                            let mHat = first[i] / c1, vHat = second[i] / c2
                            weights[i] -= learningRate * (mHat / (vHat.squareRoot() + epsilon) + weightDecay * weights[i])
                        }
                    }
                }
            }
        }
    }

    static let magic: [UInt8] = Array("MADAM001".utf8)

    /// The moments and step (not the hyper-parameters or the mask, which the job's spec and
    /// masks give): `OptimizerState` with the first and second moments.
    public func serializedState() -> [UInt8] {
        OptimizerState.encode(magic: MaskedAdam.magic, step: step, buffers: [first, second])
    }

    /// Restores the state `serializedState` wrote; refuses bytes of another size or with
    /// non-finite, negative (second) or nonzero-where-pruned moments.
    public mutating func restore(_ bytes: [UInt8]) throws {
        let (step, buffers) = try OptimizerState.decode(bytes, magic: MaskedAdam.magic, count: keep.count, buffers: 2)
        let m = buffers[0], v = buffers[1]
        for i in 0..<keep.count where v[i] < 0 || (!keep[i] && (m[i] != 0 || v[i] != 0)) {
            throw ModelError("optimizer state: moment \(i) is \(m[i]), \(v[i]) (negative, or nonzero where pruned)")
        }
        self.step = step
        first = m
        second = v
    }
}
