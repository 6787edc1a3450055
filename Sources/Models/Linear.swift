import CKernels
import COpenBLAS

/// y = x·Wᵀ (+ b) for x: tokens × in, W: out × in (row-major, as checkpoints store it).
@inline(__always)
func linear(_ x: UnsafePointer<Float>, tokens: Int, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
            inFeatures: Int, outFeatures: Int, into y: UnsafeMutablePointer<Float>) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tokens), Int32(outFeatures), Int32(inFeatures),
                1, x, Int32(inFeatures), weight, Int32(inFeatures), 0, y, Int32(outFeatures))
    if let bias {
        for t in 0..<tokens {
            let row = y + t * outFeatures
            for o in 0..<outFeatures { row[o] += bias[o] }
        }
    }
}

/// RMSNorm over rows of width `width`: x · rsqrt(mean(x²) + eps) · w (variance in F32).
func rmsNorm(_ x: UnsafePointer<Float>, rows: Int, width: Int, weight: UnsafePointer<Float>, eps: Float,
             into y: UnsafeMutablePointer<Float>) {
    for r in 0..<rows {
        let row = x + r * width
        var sum: Float = 0
        for i in 0..<width { sum += row[i] * row[i] }
        let scale = 1 / (sum / Float(width) + eps).squareRoot()
        let out = y + r * width
        for i in 0..<width { out[i] = weight[i] * (row[i] * scale) }
    }
}

/// Element-wise loops of the forward pass. The ones with an exponential are C kernels
/// (CKernels: vectorized, the same bytes on every CPU); the rest vectorize in Swift.
enum VectorMath {
    /// Softmax of row[0..<count] in place (max subtracted first); row[count..<total] = 0
    /// (the causal mask's future positions).
    @inline(__always)
    static func causalSoftmax(_ row: UnsafeMutablePointer<Float>, count: Int, total: Int) {
        pc_causal_softmax(row, count, total)
    }

    /// g[i] = silu(g[i]) · u[i] = g[i] / (1 + e^(−g[i])) · u[i].
    @inline(__always)
    static func swiGLU(_ g: UnsafeMutablePointer<Float>, _ u: UnsafePointer<Float>, count: Int) {
        pc_swiglu(g, u, count)
    }

    /// y[i] += x[i].
    static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }

    /// An array whose every element the caller overwrites before reading (a GEMM output
    /// with β = 0, a norm's output): not zeroed first.
    static func scratch(_ count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { _, n in n = count }
    }
}
