/// Enumerative coding of N:M masks for the wire (`PayloadInfo.coding = "mask-nm1"`).
///
/// In an N:M mask every group of M weights keeps exactly N, so a group is one of C(M,N)
/// choices: log2 C(M,N) bits instead of M (2:4: 2.585 bits per 4 weights). Each group is
/// replaced by its rank among those choices, and the ranks are packed in base C(M,N), as
/// many per little-endian UInt64 as fit (2:4: 24 groups in 64 bits, 0.667 bits per weight,
/// 3% over the entropy; 4:8: 10 groups, 0.8). Table lookups and one division per group:
/// fast enough to be on by default, unlike the range coder (`MaskCoding`).
///
/// Frame: `PMNM`, version 1, rows (u32 LE), cols (u32 LE), N (u16 LE), M (u16 LE), then the
/// blocks, groups in row-major order, the first group in the lowest digit. It decodes to
/// the packed layout of `Mask.bits`.
public enum NMMaskCoding {
    /// The `PayloadInfo.coding` and `Welcome.payload_codings` name of this format.
    public static let name = "mask-nm1"
    static let magic: [UInt8] = Array("PMNM".utf8) + [1]
    static let headerBytes = 5 + 4 + 4 + 2 + 2
    /// Largest M coded (the rank table has 2^M entries).
    public static let maxGroup = 16

    /// The tables of one N:M pattern: rank → group bits, group bits → rank (-1: not N of M).
    struct Tables {
        let choices: Int
        let perBlock: Int
        let patterns: [UInt32]
        let ranks: [Int32]

        init(n: Int, m: Int) {
            var patterns: [UInt32] = []
            var ranks = [Int32](repeating: -1, count: 1 << m)
            for bits in 0..<(1 << m) where bits.nonzeroBitCount == n {
                ranks[bits] = Int32(patterns.count)
                patterns.append(UInt32(bits))
            }
            self.patterns = patterns
            self.ranks = ranks
            choices = patterns.count
            // As many base-C digits as a UInt64 holds (C ≥ 2 for 1 ≤ N < M).
            var k = 0, product: UInt64 = 1
            while true {
                let (next, overflow) = product.multipliedReportingOverflow(by: UInt64(choices))
                if overflow { break }
                product = next
                k += 1
            }
            perBlock = k
        }
    }

    /// Whether `encode` can code a `cols`-wide mask as N:M. Not 0:M: its one choice would
    /// code in no bytes at all, and a frame that short must not stand for a large mask.
    public static func applies(cols: Int, n: Int, m: Int) -> Bool {
        m >= 2 && m <= maxGroup && n >= 1 && n < m && cols > 0 && cols % m == 0
    }

    /// Codes packed mask bits whose every group of `m` keeps exactly `n`; nil when some
    /// group does not (or the pattern is outside `applies`).
    public static func encode(bits: [UInt8], rows: Int, cols: Int, n: Int, m: Int) -> [UInt8]? {
        guard applies(cols: cols, n: n, m: m), MaskCoding.codable(rows: rows, cols: cols, bits: bits) else { return nil }
        let t = Tables(n: n, m: m)
        let groups = rows * (cols / m)
        var out = MaskFrameHeader.bytes(magic, rows: rows, cols: cols, fields: [n, m])
        let blocks = (groups + t.perBlock - 1) / t.perBlock
        out.reserveCapacity(out.count + 8 * blocks)
        let rowBytes = (cols + 7) / 8, perRow = cols / m
        let ok = bits.withUnsafeBufferPointer { b -> Bool in
            t.ranks.withUnsafeBufferPointer { ranks -> Bool in
                var block: UInt64 = 0, scale: UInt64 = 1, inBlock = 0
                for r in 0..<rows {
                    let row = r * rowBytes
                    for g in 0..<perRow {
                        let rank = ranks[Int(groupBits(b, row: row, first: g * m, m: m))]
                        if rank < 0 { return false }
                        block &+= UInt64(rank) &* scale
                        scale &*= UInt64(t.choices)
                        inBlock += 1
                        if inBlock == t.perBlock {
                            withUnsafeBytes(of: block.littleEndian) { out.append(contentsOf: $0) }
                            block = 0; scale = 1; inBlock = 0
                        }
                    }
                }
                if inBlock > 0 { withUnsafeBytes(of: block.littleEndian) { out.append(contentsOf: $0) } }
                return true
            }
        }
        return ok ? out : nil
    }

    /// Decodes a `mask-nm1` frame. Refuses a frame whose header is short, of another
    /// version, names an impossible pattern or more than `maxBytes` of mask, whose length is
    /// not its blocks', or holds a digit out of range.
    public static func decode(_ frame: [UInt8], maxBytes: Int) throws -> [UInt8] {
        guard let header = MaskFrameHeader(frame, magic: magic, fieldCount: 2) else {
            throw MaskCoding.DecodeError(description: "not a \(name) frame (\(frame.count) bytes, no PMNM v1 header)")
        }
        let rows = header.rows, cols = header.cols, n = header.fields[0], m = header.fields[1]
        guard applies(cols: cols, n: n, m: m) else {
            throw MaskCoding.DecodeError(description: "\(name) frame declares a \(rows) × \(cols) mask of pattern \(n):\(m)")
        }
        let count = try MaskCoding.declaredBytes(rows: rows, cols: cols, maxBytes: maxBytes, format: name)
        let t = Tables(n: n, m: m)
        let groups = rows * (cols / m)
        let blocks = (groups + t.perBlock - 1) / t.perBlock
        guard frame.count == headerBytes + 8 * blocks else {
            throw MaskCoding.DecodeError(description: "\(name) frame of \(frame.count) bytes; a \(rows) × \(cols) \(n):\(m) mask takes \(headerBytes + 8 * blocks)")
        }
        var bits = [UInt8](repeating: 0, count: count)
        let rowBytes = (cols + 7) / 8, perRow = cols / m
        let valid = frame.withUnsafeBufferPointer { f -> Bool in
            bits.withUnsafeMutableBufferPointer { b -> Bool in
                var block: UInt64 = 0, left = 0, nextBlock = headerBytes
                let choices = UInt64(t.choices)
                for r in 0..<rows {
                    let row = r * rowBytes
                    for g in 0..<perRow {
                        if left == 0 {
                            block = (0..<8).reduce(0) { $0 | UInt64(f[nextBlock + $1]) << (8 * $1) }
                            nextBlock += 8
                            left = min(t.perBlock, groups - (r * perRow + g))
                            // The digits past the last group of a block must be zero.
                            var limit: UInt64 = 1, overflow = false
                            for _ in 0..<left where !overflow { (limit, overflow) = limit.multipliedReportingOverflow(by: choices) }
                            if !overflow && block >= limit { return false }
                        }
                        let (rest, rank) = block.quotientAndRemainder(dividingBy: choices)
                        block = rest
                        left -= 1
                        setGroupBits(b, row: row, first: g * m, m: m, t.patterns[Int(rank)])
                    }
                }
                return true
            }
        }
        guard valid else { throw MaskCoding.DecodeError(description: "\(name) frame holds a block larger than its digits allow") }
        return bits
    }

    /// The `m` bits of a group starting at column `first`, column `first` in bit 0.
    @inline(__always)
    static func groupBits(_ b: UnsafeBufferPointer<UInt8>, row: Int, first: Int, m: Int) -> UInt32 {
        var byte = row + first >> 3, shift = first & 7
        var value: UInt32 = 0, have = 0
        while have < m {
            value |= UInt32(b[byte] >> shift) << have
            have += 8 - shift
            shift = 0
            byte += 1
        }
        return value & ((1 << m) - 1)
    }

    @inline(__always)
    static func setGroupBits(_ b: UnsafeMutableBufferPointer<UInt8>, row: Int, first: Int, m: Int, _ value: UInt32) {
        var byte = row + first >> 3, shift = first & 7
        var v = value, left = m
        while left > 0 {
            b[byte] |= UInt8(truncatingIfNeeded: v << shift)
            let took = 8 - shift
            v >>= took
            left -= took
            shift = 0
            byte += 1
        }
    }
}
