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
