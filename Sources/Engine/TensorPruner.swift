import Pruning
import Tensors

/// Computes one tensor's mask: decode to F32, score, select under the pattern.
public enum TensorPruner {
    public static func mask(_ info: TensorInfo, bytes: UnsafeRawBufferPointer, criterion: any ImportanceCriterion,
                            pattern: SparsityPattern, sparsity: Double) throws -> Mask {
        let n = info.elementCount
        var values = [Float](repeating: 0, count: n)
        var scores = [Float](repeating: 0, count: n)
        values.withUnsafeMutableBufferPointer { FloatConversion.toFloat(bytes, dtype: info.dtype, into: $0) }
        try values.withUnsafeBufferPointer { v in
            try scores.withUnsafeMutableBufferPointer { s in
                criterion.scores(WeightBlock(name: info.name, values: v, rows: info.rows, cols: info.cols), into: s)
                // Scores must be comparable as bit patterns: no negatives, and -0 is 0.
                for i in 0..<n where s[i].sign == .minus {
                    guard s[i] == 0 else { throw PruningError("criterion \(criterion.name) gave a negative score for '\(info.name)'") }
                    s[i] = 0
                }
            }
        }
        return try scores.withUnsafeBufferPointer {
            try MaskSelection.mask(scores: $0, rows: info.rows, cols: info.cols, pattern: pattern, sparsity: sparsity)
        }
    }

    /// NaN and ±Inf counts of a floating tensor.
    public static func nonFiniteCounts(_ info: TensorInfo, bytes: UnsafeRawBufferPointer) -> (nan: Int, inf: Int) {
        var nan = 0, inf = 0
        switch info.dtype {
        case .f32:
            for i in 0..<info.elementCount {
                let b = bytes.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self) & 0x7FFF_FFFF
                if b >= 0x7F80_0000 { if b == 0x7F80_0000 { inf += 1 } else { nan += 1 } }
            }
        case .f16:
            for i in 0..<info.elementCount {
                let b = bytes.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self) & 0x7FFF
                if b >= 0x7C00 { if b == 0x7C00 { inf += 1 } else { nan += 1 } }
            }
        case .bf16:
            for i in 0..<info.elementCount {
                let b = bytes.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self) & 0x7FFF
                if b >= 0x7F80 { if b == 0x7F80 { inf += 1 } else { nan += 1 } }
            }
        default:
            break
        }
        return (nan, inf)
    }

    /// Elements whose bytes are all zero.
    public static func zeroCount(_ raw: UnsafeRawBufferPointer, elementSize: Int) -> Int {
        let n = raw.count / elementSize
        var zeros = 0
        switch elementSize {
        case 4: for i in 0..<n where raw.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self) == 0 { zeros += 1 }
        case 2: for i in 0..<n where raw.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self) == 0 { zeros += 1 }
        case 8: for i in 0..<n where raw.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self) == 0 { zeros += 1 }
        default: for i in 0..<n where raw[i] == 0 { zeros += 1 }
        }
        return zeros
    }
}
