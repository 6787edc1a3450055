import Tensors

/// A tensor in the compressed-tensors "sparse-bitmask" layout: which elements are stored
/// (1 bit each, rows × ceil(cols/8), little-endian bits), the stored values in row-major
/// order, where each row starts among them, and the dense shape.
///
/// An element is stored when its bit pattern is not all zeros: a kept -0.0 is stored, so
/// densifying gives back the dense bytes exactly.
public struct SparseBitmaskTensor: Equatable, Sendable {
    public let dtype: DType
    public let shape: [Int]
    public let bitmask: [UInt8]
    /// Stored values as raw little-endian bytes of `dtype`.
    public let compressed: [UInt8]
    public let rowOffsets: [Int64]

    public var rows: Int { MatrixView.rows(shape) }
    public var cols: Int { MatrixView.cols(shape) }
    public var storedCount: Int { compressed.count / dtype.size }

    /// Bytes of the four tensors together, as written.
    public var byteCount: Int { bitmask.count + compressed.count + rowOffsets.count * 8 + shape.count * 8 }

    public init(dtype: DType, shape: [Int], bitmask: [UInt8], compressed: [UInt8], rowOffsets: [Int64]) {
        self.dtype = dtype
        self.shape = shape
        self.bitmask = bitmask
        self.compressed = compressed
        self.rowOffsets = rowOffsets
    }

    /// Encodes dense little-endian bytes.
    public init(dense: UnsafeRawBufferPointer, dtype: DType, shape: [Int]) {
        self.dtype = dtype
        self.shape = shape
        let rows = MatrixView.rows(shape)
        let cols = MatrixView.cols(shape)
        let size = dtype.size
        let bpr = (cols + 7) / 8
        var bitmask = [UInt8](repeating: 0, count: rows * bpr)
        var compressed: [UInt8] = []
        compressed.reserveCapacity(dense.count)
        var offsets = [Int64](repeating: 0, count: rows)
        var stored = 0
        for r in 0..<rows {
            offsets[r] = Int64(stored)
            for c in 0..<cols {
                let e = (r * cols + c) * size
                if !SparseBitmaskTensor.isZero(dense, at: e, size: size) {
                    bitmask[r * bpr + c >> 3] |= 1 << UInt8(c & 7)
                    compressed.append(contentsOf: UnsafeRawBufferPointer(rebasing: dense[e..<(e + size)]))
                    stored += 1
                }
            }
        }
        self.bitmask = bitmask
        self.compressed = compressed
        self.rowOffsets = offsets
    }

    @inline(__always) public static func isZero(_ raw: UnsafeRawBufferPointer, at offset: Int, size: Int) -> Bool {
        switch size {
        case 4: return raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self) == 0
        case 2: return raw.loadUnaligned(fromByteOffset: offset, as: UInt16.self) == 0
        case 8: return raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self) == 0
        default: return raw[offset] == 0
        }
    }

    /// Rebuilds the dense bytes, checking that the parts agree with each other.
    public func densify() throws -> [UInt8] {
        let rows = self.rows, cols = self.cols, size = dtype.size
        let bpr = (cols + 7) / 8
        guard bitmask.count == rows * bpr else {
            throw PruningError("bitmask has \(bitmask.count) bytes, shape \(shape) needs \(rows * bpr)")
        }
        guard rowOffsets.count == rows else {
            throw PruningError("row_offsets has \(rowOffsets.count) entries, shape \(shape) needs \(rows)")
        }
        guard compressed.count % size == 0 else {
            throw PruningError("compressed byte count \(compressed.count) is not a multiple of \(size)")
        }
        var dense = [UInt8](repeating: 0, count: rows * cols * size)
        var stored = 0
        try dense.withUnsafeMutableBytes { out in
            try compressed.withUnsafeBytes { src in
                for r in 0..<rows {
                    guard rowOffsets[r] == Int64(stored) else {
                        throw PruningError("row_offsets[\(r)] = \(rowOffsets[r]) but the bitmask puts row \(r) at \(stored)")
                    }
                    for c in 0..<cols where bitmask[r * bpr + c >> 3] & (1 << UInt8(c & 7)) != 0 {
                        guard (stored + 1) * size <= src.count else {
                            throw PruningError("bitmask marks more values than compressed holds (\(src.count / size))")
                        }
                        let dst = (r * cols + c) * size
                        out.baseAddress!.advanced(by: dst).copyMemory(from: src.baseAddress!.advanced(by: stored * size), byteCount: size)
                        stored += 1
                    }
                }
            }
        }
        guard stored * size == compressed.count else {
            throw PruningError("compressed holds \(compressed.count / size) values but the bitmask marks \(stored)")
        }
        return dense
    }
}

/// The sparse parts of a block of dense rows, computed piece by piece so a large tensor
/// is encoded in bounded memory: bitmask rows, stored values, stored count per row.
public enum SparseEncoder {
    /// Appends the bitmask rows of `rows` dense rows.
    public static func appendBitmask(_ dense: UnsafeRawBufferPointer, rows: Int, cols: Int, elementSize size: Int, into out: inout [UInt8]) {
        let bpr = (cols + 7) / 8
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: rows * bpr))
        out.withUnsafeMutableBufferPointer { bits in
            for r in 0..<rows {
                for c in 0..<cols where !SparseBitmaskTensor.isZero(dense, at: (r * cols + c) * size, size: size) {
                    bits[start + r * bpr + c >> 3] |= 1 << UInt8(c & 7)
                }
            }
        }
    }

    /// Appends the stored (nonzero bit pattern) values of dense rows, in row-major order;
    /// returns how many each row stored.
    @discardableResult
    public static func appendStored(_ dense: UnsafeRawBufferPointer, rows: Int, cols: Int, elementSize size: Int, into out: inout [UInt8]) -> [Int] {
        var perRow = [Int](repeating: 0, count: rows)
        for r in 0..<rows {
            for c in 0..<cols {
                let e = (r * cols + c) * size
                if !SparseBitmaskTensor.isZero(dense, at: e, size: size) {
                    out.append(contentsOf: UnsafeRawBufferPointer(rebasing: dense[e..<(e + size)]))
                    perRow[r] += 1
                }
            }
        }
        return perRow
    }
}

/// Applying a mask to raw tensor bytes.
public enum MaskApplication {
    /// Copies `source` into `destination`, writing zero bytes where the mask prunes.
    public static func apply(_ mask: Mask, source: UnsafeRawBufferPointer, elementSize: Int,
                             into destination: UnsafeMutableRawBufferPointer) {
        apply(mask, rows: 0..<mask.rows, source: source, elementSize: elementSize, into: destination)
    }

    /// The same for a range of the mask's rows; `source` holds just those rows.
    public static func apply(_ mask: Mask, rows range: Range<Int>, source: UnsafeRawBufferPointer, elementSize: Int,
                             into destination: UnsafeMutableRawBufferPointer) {
        let cols = mask.cols, bpr = mask.bytesPerRow
        precondition(range.lowerBound >= 0 && range.upperBound <= mask.rows, "row range outside the mask")
        precondition(source.count == range.count * cols * elementSize && destination.count == source.count, "mask and tensor disagree")
        guard !source.isEmpty else { return }
        destination.copyMemory(from: source)
        mask.bits.withUnsafeBufferPointer { bits in
            for (r, maskRow) in range.enumerated() {
                let rowBits = maskRow * bpr
                for b in 0..<bpr where bits[rowBits + b] != 0xFF {
                    let byte = bits[rowBits + b]
                    let first = b * 8
                    for j in 0..<min(8, cols - first) where byte & (1 << UInt8(j)) == 0 {
                        let e = (r * cols + first + j) * elementSize
                        (destination.baseAddress! + e).initializeMemory(as: UInt8.self, repeating: 0, count: elementSize)
                    }
                }
            }
        }
    }
}
