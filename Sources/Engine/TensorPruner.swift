import Pruning
import Tensors

/// Computes masks: decode to F32, score, select under the pattern.
public enum TensorPruner {
    /// The mask of a whole tensor.
    public static func mask(_ info: TensorInfo, bytes: UnsafeRawBufferPointer, criterion: any ImportanceCriterion,
                            pattern: SparsityPattern, sparsity: Double) throws -> Mask {
        try mask(name: info.name, dtype: info.dtype, rows: info.rows, cols: info.cols, firstRow: 0, bytes: bytes,
                 criterion: criterion, pattern: pattern, sparsity: sparsity)
    }

    /// The mask of rows `firstRow ..< firstRow + rows` of a tensor, from those rows' bytes.
    /// Patterns that compare across rows (unstructured, whole rows) must be given every row.
    public static func mask(name: String, dtype: DType, rows: Int, cols: Int, firstRow: Int, bytes: UnsafeRawBufferPointer,
                            criterion: any ImportanceCriterion, pattern: SparsityPattern, sparsity: Double) throws -> Mask {
        let n = rows * cols
        guard bytes.count == n * dtype.size else {
            throw PruningError("tensor '\(name)': \(bytes.count) bytes for \(rows) × \(cols) \(dtype.rawValue)")
        }
        var values = [Float](repeating: 0, count: n)
        var scores = [Float](repeating: 0, count: n)
        values.withUnsafeMutableBufferPointer { FloatConversion.toFloat(bytes, dtype: dtype, into: $0) }
        try values.withUnsafeBufferPointer { v in
            try scores.withUnsafeMutableBufferPointer { s in
                criterion.scores(WeightBlock(name: name, values: v, rows: rows, cols: cols, firstRow: firstRow), into: s)
                // Scores must be comparable as bit patterns: no negatives, and -0 is 0.
                for i in 0..<n where s[i].sign == .minus {
                    guard s[i] == 0 else { throw PruningError("criterion \(criterion.name) gave a negative score for '\(name)'") }
                    s[i] = 0
                }
            }
        }
        return try scores.withUnsafeBufferPointer {
            try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: pattern, sparsity: sparsity)
        }
    }

    /// NaN and ±Inf counts of a floating tensor.
    public static func nonFiniteCounts(_ info: TensorInfo, bytes: UnsafeRawBufferPointer) -> (nan: Int, inf: Int) {
        nonFiniteCounts(dtype: info.dtype, bytes: bytes)
    }

    /// NaN and ±Inf counts of raw values of a floating dtype.
    public static func nonFiniteCounts(dtype: DType, bytes: UnsafeRawBufferPointer) -> (nan: Int, inf: Int) {
        var nan = 0, inf = 0
        let count = bytes.count / dtype.size
        switch dtype {
        case .f32:
            for i in 0..<count {
                let b = bytes.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self) & 0x7FFF_FFFF
                if b >= 0x7F80_0000 { if b == 0x7F80_0000 { inf += 1 } else { nan += 1 } }
            }
        case .f16:
            for i in 0..<count {
                let b = bytes.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self) & 0x7FFF
                if b >= 0x7C00 { if b == 0x7C00 { inf += 1 } else { nan += 1 } }
            }
        case .bf16:
            for i in 0..<count {
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
