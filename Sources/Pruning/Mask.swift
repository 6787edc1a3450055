/// Which weights of a rows × cols matrix are kept: a packed bitset, 1 bit per weight,
/// 1 = kept. Each row starts on a byte boundary (rows × ceil(cols/8) bytes, bits
/// little-endian within a byte): the same layout as the `.bitmask` tensors of the sparse
/// output and as masks on the wire, so no conversion is ever needed.
public struct Mask: Equatable, Sendable {
    public let rows: Int
    public let cols: Int
    public private(set) var bits: [UInt8]

    public var bytesPerRow: Int { (cols + 7) / 8 }

    /// A mask keeping every weight (`keepAll`) or none.
    public init(rows: Int, cols: Int, keepAll: Bool = true) {
        self.rows = rows
        self.cols = cols
        let bpr = (cols + 7) / 8
        if keepAll {
            var row = [UInt8](repeating: 0xFF, count: bpr)
            if cols % 8 != 0, bpr > 0 { row[bpr - 1] = UInt8((1 << (cols % 8)) - 1) }
            var all: [UInt8] = []
            all.reserveCapacity(rows * bpr)
            for _ in 0..<rows { all.append(contentsOf: row) }
            bits = all
        } else {
            bits = [UInt8](repeating: 0, count: rows * bpr)
        }
    }

    /// Wraps packed bits; refuses a wrong length or set padding bits.
    public init(rows: Int, cols: Int, bits: [UInt8]) throws {
        let bpr = (cols + 7) / 8
        guard bits.count == rows * bpr else {
            throw PruningError("mask of \(rows)×\(cols) needs \(rows * bpr) bytes, got \(bits.count)")
        }
        if cols % 8 != 0 {
            let padding = UInt8(0xFF) << UInt8(cols % 8)
            for r in 0..<rows where bits[r * bpr + bpr - 1] & padding != 0 {
                throw PruningError("mask row \(r) has bits set past column \(cols)")
            }
        }
        self.rows = rows
        self.cols = cols
        self.bits = bits
    }

    /// Builds a mask row by row: `fill(row, rowBytes)` writes one row's packed bits.
    public init(rows: Int, cols: Int, fillRows fill: (Int, UnsafeMutableBufferPointer<UInt8>) -> Void) {
        self.rows = rows
        self.cols = cols
        let bpr = (cols + 7) / 8
        bits = [UInt8](repeating: 0, count: rows * bpr)
        bits.withUnsafeMutableBufferPointer { all in
            for r in 0..<rows {
                fill(r, UnsafeMutableBufferPointer(rebasing: all[(r * bpr)..<((r + 1) * bpr)]))
            }
        }
    }

    /// Builds a mask by writing packed bits straight into zeroed storage
    /// (`body(bits, bytesPerRow)`); padding bits must stay zero.
    @inline(__always)
    static func build(rows: Int, cols: Int, _ body: (UnsafeMutablePointer<UInt8>, Int) -> Void) -> Mask {
        let bpr = (cols + 7) / 8
        var bits = [UInt8](repeating: 0, count: rows * bpr)
        bits.withUnsafeMutableBufferPointer { if let base = $0.baseAddress { body(base, bpr) } }
        return Mask(rows: rows, cols: cols, uncheckedBits: bits)
    }

    private init(rows: Int, cols: Int, uncheckedBits: [UInt8]) {
        self.rows = rows
        self.cols = cols
        bits = uncheckedBits
    }

    public subscript(row: Int, col: Int) -> Bool {
        get { bits[row * bytesPerRow + col >> 3] & (1 << UInt8(col & 7)) != 0 }
        set {
            let i = row * bytesPerRow + col >> 3
            if newValue { bits[i] |= 1 << UInt8(col & 7) } else { bits[i] &= ~(1 << UInt8(col & 7)) }
        }
    }

    /// Number of kept weights (padding bits are always zero).
    public var keptCount: Int {
        bits.withUnsafeBytes { Mask.popcount($0) }
    }

    /// Number of pruned weights.
    public var prunedCount: Int { rows * cols - keptCount }

    /// Kept weights per row.
    public func keptPerRow() -> [Int] {
        let bpr = bytesPerRow
        return bits.withUnsafeBytes { raw in
            (0..<rows).map { r in Mask.popcount(UnsafeRawBufferPointer(rebasing: raw[(r * bpr)..<((r + 1) * bpr)])) }
        }
    }

    static func popcount(_ raw: UnsafeRawBufferPointer) -> Int {
        var total = 0
        var i = 0
        while i + 8 <= raw.count {
            total += raw.loadUnaligned(fromByteOffset: i, as: UInt64.self).nonzeroBitCount
            i += 8
        }
        while i < raw.count { total += raw[i].nonzeroBitCount; i += 1 }
        return total
    }
}

/// A pruning problem that is the caller's fault (impossible pattern, bad arguments).
public struct PruningError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
