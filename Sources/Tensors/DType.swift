/// Element types a checkpoint may hold.
///
/// Floating types (F32, F16, BF16) are computed on in F32 and written back in their own
/// type; integer and bool tensors are carried through untouched, byte for byte.
/// Anything else (F64, F8, complex) is refused with an error naming the tensor.
public enum DType: String, Sendable, CaseIterable, Codable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i8 = "I8", i16 = "I16", i32 = "I32", i64 = "I64"
    case u8 = "U8", u16 = "U16", u32 = "U32", u64 = "U64"
    case bool = "BOOL"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .i8, .u8, .bool: return 1
        case .f16, .bf16, .i16, .u16: return 2
        case .f32, .i32, .u32: return 4
        case .i64, .u64: return 8
        }
    }

    /// True for the types we can score and prune (computed in F32).
    public var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 }

    /// The dtype names of the safetensors format that we recognise but do not support.
    static let knownUnsupported: Set<String> = ["F64", "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "I4", "U4"]
}

/// Conversions between storage types and F32.
public enum FloatConversion {
    /// BF16 bits to F32 (exact).
    @inline(__always) public static func bf16ToFloat(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// F32 to BF16 bits, rounded to nearest even; NaN stays a quiet NaN of the same sign.
    @inline(__always) public static func floatToBF16(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let roundingBias: UInt32 = 0x7FFF &+ ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
    }

    /// F16 bits to F32 (exact).
    @inline(__always) public static func f16ToFloat(_ bits: UInt16) -> Float {
        Float(Float16(bitPattern: bits))
    }

    /// F32 to F16 bits, rounded to nearest even.
    @inline(__always) public static func floatToF16(_ value: Float) -> UInt16 {
        Float16(value).bitPattern
    }

    /// Decodes `count` elements of a floating dtype from raw little-endian bytes into F32.
    public static func toFloat(_ raw: UnsafeRawBufferPointer, dtype: DType, into out: UnsafeMutableBufferPointer<Float>) {
        let count = out.count
        precondition(raw.count >= count * dtype.size, "byte span too short for \(count) \(dtype.rawValue)")
        switch dtype {
        case .f32:
            for i in 0..<count { out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self))) }
        case .f16:
            for i in 0..<count { out[i] = f16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self))) }
        case .bf16:
            for i in 0..<count { out[i] = bf16ToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self))) }
        default:
            preconditionFailure("toFloat called on non-float dtype \(dtype.rawValue)")
        }
    }

    /// Convenience: decode into a new array.
    public static func toFloat(_ raw: UnsafeRawBufferPointer, dtype: DType, count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, n in
            toFloat(raw, dtype: dtype, into: buf)
            n = count
        }
    }

    /// Encodes F32 values into raw little-endian bytes of a floating dtype.
    public static func fromFloat(_ values: UnsafeBufferPointer<Float>, dtype: DType, into raw: UnsafeMutableRawBufferPointer) {
        let count = values.count
        precondition(raw.count >= count * dtype.size, "byte span too short")
        switch dtype {
        case .f32:
            for i in 0..<count { raw.storeBytes(of: values[i].bitPattern.littleEndian, toByteOffset: i &* 4, as: UInt32.self) }
        case .f16:
            for i in 0..<count { raw.storeBytes(of: floatToF16(values[i]).littleEndian, toByteOffset: i &* 2, as: UInt16.self) }
        case .bf16:
            for i in 0..<count { raw.storeBytes(of: floatToBF16(values[i]).littleEndian, toByteOffset: i &* 2, as: UInt16.self) }
        default:
            preconditionFailure("fromFloat called on non-float dtype \(dtype.rawValue)")
        }
    }
}
