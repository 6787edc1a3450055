/// Loops over F32 buffers eight lanes at a time, for a training step's hot paths (the
/// scalar forms cost a small model's step as much as its gradient's GEMMs).
public enum FloatVectors {
    /// Whether every value is finite: v − v is 0 for a finite v and NaN for ±Inf or NaN,
    /// and a NaN stays in its lane's sum.
    public static func allFinite(_ values: UnsafeBufferPointer<Float>) -> Bool {
        let n = values.count, wide = n / 8 * 8
        var lanes = SIMD8<Float>(repeating: 0)
        if let base = values.baseAddress {
            let raw = UnsafeRawPointer(base)
            var i = 0
            while i < wide {
                let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                lanes += v - v
                i += 8
            }
        }
        var tail: Float = 0
        for i in wide..<n { tail += values[i] - values[i] }
        return lanes == SIMD8<Float>(repeating: 0) && tail == 0
    }

    public static func allFinite(_ values: [Float]) -> Bool { values.withUnsafeBufferPointer(allFinite) }

    /// destination[i] += source[i] for every i of source: each sum rounded once, as the
    /// scalar loop's, so the bits do not depend on which of the two ran.
    public static func add(_ source: UnsafeBufferPointer<Float>, to destination: UnsafeMutablePointer<Float>) {
        let n = source.count, wide = n / 8 * 8
        guard let s = source.baseAddress else { return }
        let from = UnsafeRawPointer(s), to = UnsafeMutableRawPointer(destination)
        var i = 0
        while i < wide {
            let sum = to.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) + from.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            to.storeBytes(of: sum, toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        for i in wide..<n { destination[i] += s[i] }
    }
}
