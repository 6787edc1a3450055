/// Decoding of ggml tensor data to F32, exactly as ggml's reference `dequantize_row_*`
/// functions (and gguf-py's `gguf.quants.dequantize`) define it.
///
/// Block layouts (32 elements per block for the quantized types; scales are F16):
/// - Q8_0: `d`, 32 × int8 `q`;          x[i] = q[i] · d
/// - Q4_0: `d`, 16 bytes of nibbles;   x[i] = (q[i] − 8) · d
/// - Q4_1: `d`, `m`, 16 bytes;          x[i] = q[i] · d + m
/// For the 4-bit types byte j holds element j in its low nibble and element j + 16 in its
/// high nibble.
public enum GGUFDequantizer {
    /// Decodes `out.count` elements of `type` from `raw` into `out`.
    ///
    /// `out.count` must be a multiple of the type's block size and `raw` must hold exactly
    /// the blocks for it; `type.canDequantize` must be true. (The callers check these
    /// against the file first; breaking them is a programming error.)
    public static func dequantize(_ raw: UnsafeRawBufferPointer, type: GGMLType, into out: UnsafeMutableBufferPointer<Float>) {
        let (bs, bb) = type.block
        precondition(type.canDequantize, "\(type.name) cannot be dequantized")
        precondition(out.count % bs == 0 && raw.count == out.count / bs * bb, "byte count does not match the element count")
        let blocks = out.count / bs
        switch type {
        case .f32, .f16, .bf16:
            let dtype: DType = type == .f32 ? .f32 : type == .f16 ? .f16 : .bf16
            FloatConversion.toFloat(raw, dtype: dtype, into: out)
        case .q8_0:
            for b in 0..<blocks {
                let base = b &* bb
                let d = f16(raw, base)
                let o = b &* 32
                for i in 0..<32 {
                    out[o &+ i] = Float(Int8(bitPattern: raw[base &+ 2 &+ i])) * d
                }
            }
        case .q4_0:
            for b in 0..<blocks {
                let base = b &* bb
                let d = f16(raw, base)
                let o = b &* 32
                for j in 0..<16 {
                    let q = raw[base &+ 2 &+ j]
                    out[o &+ j] = Float(Int(q & 0x0F) &- 8) * d
                    out[o &+ j &+ 16] = Float(Int(q >> 4) &- 8) * d
                }
            }
        case .q4_1:
            for b in 0..<blocks {
                let base = b &* bb
                let d = f16(raw, base)
                let m = f16(raw, base &+ 2)
                let o = b &* 32
                for j in 0..<16 {
                    let q = raw[base &+ 4 &+ j]
                    out[o &+ j] = Float(q & 0x0F) * d + m
                    out[o &+ j &+ 16] = Float(q >> 4) * d + m
                }
            }
        default:
            preconditionFailure("unreachable: \(type.name) has no dequantizer")
        }
    }

    @inline(__always) private static func f16(_ raw: UnsafeRawBufferPointer, _ at: Int) -> Float {
        FloatConversion.f16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt16.self)))
    }
}
