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
    public mutating func update(_ weights: inout [Float], gradient: [Float]) {
        precondition(weights.count == keep.count && gradient.count == keep.count, "weights, gradient and mask differ in size")
        step += 1
        let c1 = 1 - powf(beta1, Float(step)), c2 = 1 - powf(beta2, Float(step))
        for i in 0..<keep.count {
            guard keep[i] else { weights[i] = 0; continue }
            let g = gradient[i]
            first[i] = beta1 * first[i] + (1 - beta1) * g
            second[i] = beta2 * second[i] + (1 - beta2) * g * g
            let mHat = first[i] / c1, vHat = second[i] / c2
            weights[i] -= learningRate * (mHat / (vHat.squareRoot() + epsilon) + weightDecay * weights[i])
        }
    }

    static let magic: [UInt8] = Array("MADAM001".utf8)

    /// The moments and step (not the hyper-parameters or the mask, which the job's spec and
    /// masks give): magic, step (u64), count (u64), first, second (F32 little-endian).
    /// Copied in bulk: checkpoints of a large layer's moments are tens of MB per step.
    public func serializedState() -> [UInt8] {
        var out = MaskedAdam.magic
        out.reserveCapacity(24 + 8 * keep.count)
        withUnsafeBytes(of: UInt64(step).littleEndian) { out += $0 }
        withUnsafeBytes(of: UInt64(keep.count).littleEndian) { out += $0 }
        for moments in [first, second] {
            // Swift's Float is IEEE-754 binary32 in host order; every host this runs on is little-endian.
            moments.withUnsafeBytes { out += $0 }
        }
        return out
    }

    /// Restores the state `serializedState` wrote; refuses bytes of another size or with
    /// non-finite or nonzero-where-pruned moments.
    public mutating func restore(_ bytes: [UInt8]) throws {
        let n = keep.count
        guard bytes.count == 24 + 8 * n, Array(bytes[0..<8]) == MaskedAdam.magic else {
            throw ModelError("optimizer state: \(bytes.count) bytes, expected \(24 + 8 * n) for \(n) weights")
        }
        func u64(_ at: Int) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) } }
        guard u64(16) == UInt64(n), u64(8) <= UInt64(Int32.max) else { throw ModelError("optimizer state: wrong count or step") }
        var m = [Float](repeating: 0, count: n), v = m
        bytes.withUnsafeBytes { raw in
            m.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[24..<(24 + 4 * n)])) }
            v.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[(24 + 4 * n)...])) }
        }
        for i in 0..<n where !m[i].isFinite || !v[i].isFinite || v[i] < 0 || (!keep[i] && (m[i] != 0 || v[i] != 0)) {
            throw ModelError("optimizer state: moment \(i) is \(m[i]), \(v[i]) (not finite, negative, or nonzero where pruned)")
        }
        step = Int(u64(8))
        first = m
        second = v
    }
}
