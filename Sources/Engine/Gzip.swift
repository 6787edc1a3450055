/// gzip decompression (RFC 1952 around RFC 1951 DEFLATE), for data sets shipped as
/// `.gz` (Debian's dataset-fashion-mnist). Every member is decoded and checked against
/// its CRC-32 and length; anything malformed is a `Gzip.Failure` saying what.
public enum Gzip {
    /// What is wrong with the compressed bytes (the caller adds the file name).
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// True when the bytes start with the gzip magic number.
    public static func isGzip(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B
    }

    /// The decompressed bytes of all members; refuses output beyond `limit` bytes.
    public static func decompress(_ bytes: [UInt8], limit: Int = 1 << 32) throws -> [UInt8] {
        try bytes.withUnsafeBufferPointer { input in
            var reader = BitReader(input)
            var out: [UInt8] = []
            if input.count >= 4 {
                // ISIZE of the last member: a capacity hint only (it is the size mod 2³²).
                let hint = Int(input[input.count - 4]) | Int(input[input.count - 3]) << 8
                    | Int(input[input.count - 2]) << 16 | Int(input[input.count - 1]) << 24
                out.reserveCapacity(min(hint, limit, 1 << 30))
            }
            repeat {
                let start = out.count
                try readHeader(&reader)
                try Inflater.inflate(&reader, into: &out, limit: limit)
                reader.alignToByte()
                let crc = try reader.uint32LE(), size = try reader.uint32LE()
                let produced = out.count - start
                guard UInt32(truncatingIfNeeded: produced) == size else {
                    throw Failure("gzip member length \(produced) disagrees with its trailer (\(size))")
                }
                guard CRC32.checksum(out, from: start) == crc else { throw Failure("gzip CRC-32 mismatch: the data is corrupt") }
                // Trailing zero padding is allowed; anything else must be another member.
            } while reader.hasMoreMembers()
            return out
        }
    }

    private static func readHeader(_ r: inout BitReader) throws {
        guard try r.byte() == 0x1F, try r.byte() == 0x8B else { throw Failure("not gzip data (bad magic number)") }
        guard try r.byte() == 8 else { throw Failure("gzip compression method is not deflate") }
        let flags = try r.byte()
        guard flags & 0xE0 == 0 else { throw Failure("gzip header has reserved flag bits set") }
        for _ in 0..<6 { _ = try r.byte() }  // mtime, extra flags, OS
        if flags & 0x04 != 0 {  // FEXTRA
            let n = Int(try r.byte()) | Int(try r.byte()) << 8
            for _ in 0..<n { _ = try r.byte() }
        }
        if flags & 0x08 != 0 { while try r.byte() != 0 {} }  // FNAME
        if flags & 0x10 != 0 { while try r.byte() != 0 {} }  // FCOMMENT
        if flags & 0x02 != 0 { _ = try r.byte(); _ = try r.byte() }  // FHCRC
    }
}

/// Bits of a byte buffer, least significant first, as DEFLATE packs them.
struct BitReader {
    let input: UnsafeBufferPointer<UInt8>
    var position = 0
    var buffer: UInt64 = 0
    var count = 0

    init(_ input: UnsafeBufferPointer<UInt8>) { self.input = input }

    @inline(__always) mutating func refill() {
        while count <= 56 && position < input.count {
            buffer |= UInt64(input[position]) << UInt64(count)
            position += 1
            count += 8
        }
    }

    @inline(__always) mutating func bits(_ n: Int) throws -> Int {
        if count < n { refill() }
        guard count >= n else { throw Gzip.Failure("gzip data is truncated") }
        let v = Int(buffer & ((1 << UInt64(n)) - 1))
        buffer >>= UInt64(n)
        count -= n
        return v
    }

    /// Drops the bits left in the current byte and hands unread whole bytes back.
    mutating func alignToByte() {
        let drop = count % 8
        buffer >>= UInt64(drop)
        count -= drop
        position -= count / 8
        buffer = 0
        count = 0
    }

    mutating func byte() throws -> UInt8 { UInt8(try bits(8)) }

    mutating func uint32LE() throws -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(try byte()) << UInt32(8 * i) }
        return v
    }

    /// After a member: true if another gzip member follows (zero padding ends the data).
    mutating func hasMoreMembers() -> Bool {
        alignToByte()
        guard position < input.count else { return false }
        return input[position...].contains { $0 != 0 }
    }
}

/// A canonical Huffman code: a 9-bit lookup table for short codes, and the counts and
/// symbols (as in zlib's puff.c) for the rest.
struct Huffman {
    static let fastBits = 9
    var counts = [Int](repeating: 0, count: 16)
    var symbols: [Int]
    /// Indexed by the next 9 input bits: symbol << 4 | length, or 0 for a longer code.
    var fast = [UInt16](repeating: 0, count: 1 << Huffman.fastBits)

    init(lengths: [Int]) throws {
        for l in lengths { counts[l] += 1 }
        var left = 1
        for len in 1...15 {
            left = (left << 1) - counts[len]
            guard left >= 0 else { throw Gzip.Failure("deflate data has an over-subscribed Huffman code") }
        }
        var offsets = [Int](repeating: 0, count: 16)
        for len in 1..<15 { offsets[len + 1] = offsets[len] + counts[len] }
        symbols = [Int](repeating: 0, count: lengths.count)
        for (symbol, len) in lengths.enumerated() where len != 0 {
            symbols[offsets[len]] = symbol
            offsets[len] += 1
        }
        var code = 0, index = 0
        for len in 1...15 {
            for _ in 0..<counts[len] {
                if len <= Huffman.fastBits {
                    var reversed = 0
                    for b in 0..<len where code & (1 << b) != 0 { reversed |= 1 << (len - 1 - b) }
                    let entry = UInt16(symbols[index] << 4 | len)
                    var fill = reversed
                    while fill < fast.count {
                        fast[fill] = entry
                        fill += 1 << len
                    }
                }
                code += 1
                index += 1
            }
            code <<= 1
        }
    }
}

/// DEFLATE blocks: stored, fixed and dynamic Huffman.
enum Inflater {
    static let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lengthExtra = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distanceBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
                               4097, 6145, 8193, 12289, 16385, 24577]
    static let distanceExtra = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]
    static let codeLengthOrder = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]

    static let fixed: (Huffman, Huffman) = {
        var lengths = [Int](repeating: 8, count: 288)
        for i in 144..<256 { lengths[i] = 9 }
        for i in 256..<280 { lengths[i] = 7 }
        return (try! Huffman(lengths: lengths), try! Huffman(lengths: [Int](repeating: 5, count: 30)))
    }()

    /// Decodes one DEFLATE stream (up to its final block), appending to `out`.
    static func inflate(_ r: inout BitReader, into out: inout [UInt8], limit: Int) throws {
        var last = false
        while !last {
            last = try r.bits(1) == 1
            switch try r.bits(2) {
            case 0: try stored(&r, into: &out, limit: limit)
            case 1: try codes(&r, fixed.0, fixed.1, into: &out, limit: limit)
            case 2:
                let (lit, dist) = try dynamicTables(&r)
                try codes(&r, lit, dist, into: &out, limit: limit)
            default: throw Gzip.Failure("deflate data has an invalid block type")
            }
        }
    }

    private static func stored(_ r: inout BitReader, into out: inout [UInt8], limit: Int) throws {
        r.alignToByte()
        let len = try r.bits(16), nlen = try r.bits(16)
        guard len == ~nlen & 0xFFFF else { throw Gzip.Failure("deflate stored block length is corrupt") }
        r.alignToByte()
        guard r.position + len <= r.input.count else { throw Gzip.Failure("gzip data is truncated") }
        guard out.count + len <= limit else { throw Gzip.Failure("decompressed data exceeds \(limit) bytes") }
        out.append(contentsOf: r.input[r.position..<(r.position + len)])
        r.position += len
    }

    private static func dynamicTables(_ r: inout BitReader) throws -> (Huffman, Huffman) {
        let nlen = try r.bits(5) + 257, ndist = try r.bits(5) + 1, ncode = try r.bits(4) + 4
        guard nlen <= 286, ndist <= 30 else { throw Gzip.Failure("deflate block has too many length or distance codes") }
        var codeLengths = [Int](repeating: 0, count: 19)
        for i in 0..<ncode { codeLengths[codeLengthOrder[i]] = try r.bits(3) }
        let lengthCode = try Huffman(lengths: codeLengths)
        var lengths: [Int] = []
        lengths.reserveCapacity(nlen + ndist)
        while lengths.count < nlen + ndist {
            let symbol = try decode(&r, lengthCode)
            switch symbol {
            case 0..<16: lengths.append(symbol)
            case 16:
                guard let previous = lengths.last else { throw Gzip.Failure("deflate code lengths repeat with no previous length") }
                lengths += [Int](repeating: previous, count: 3 + (try r.bits(2)))
            case 17: lengths += [Int](repeating: 0, count: 3 + (try r.bits(3)))
            default: lengths += [Int](repeating: 0, count: 11 + (try r.bits(7)))
            }
        }
        guard lengths.count == nlen + ndist else { throw Gzip.Failure("deflate code lengths overrun the table") }
        guard lengths[256] != 0 else { throw Gzip.Failure("deflate block has no end-of-block code") }
        return (try Huffman(lengths: Array(lengths[0..<nlen])), try Huffman(lengths: Array(lengths[nlen...])))
    }

    @inline(__always) private static func decode(_ r: inout BitReader, _ h: Huffman) throws -> Int {
        if r.count < Huffman.fastBits { r.refill() }
        let entry = Int(h.fast[Int(r.buffer & UInt64(h.fast.count - 1))])
        if entry != 0 {
            let len = entry & 15
            guard len <= r.count else { throw Gzip.Failure("gzip data is truncated") }
            r.buffer >>= UInt64(len)
            r.count -= len
            return entry >> 4
        }
        // A code longer than the table: walk it bit by bit (puff.c's decode).
        var code = 0, first = 0, index = 0
        for len in 1...15 {
            code |= try r.bits(1)
            let count = h.counts[len]
            if code - count < first { return h.symbols[index + (code - first)] }
            index += count
            first = (first + count) << 1
            code <<= 1
        }
        throw Gzip.Failure("deflate data has an invalid Huffman code")
    }

    private static func codes(_ r: inout BitReader, _ lit: Huffman, _ dist: Huffman, into out: inout [UInt8], limit: Int) throws {
        while true {
            let symbol = try decode(&r, lit)
            if symbol < 256 {
                guard out.count < limit else { throw Gzip.Failure("decompressed data exceeds \(limit) bytes") }
                out.append(UInt8(symbol))
                continue
            }
            if symbol == 256 { return }
            let l = symbol - 257
            guard l < 29 else { throw Gzip.Failure("deflate data has an invalid length code") }
            let length = lengthBase[l] + (try r.bits(lengthExtra[l]))
            let d = try decode(&r, dist)
            guard d < 30 else { throw Gzip.Failure("deflate data has an invalid distance code") }
            let distance = distanceBase[d] + (try r.bits(distanceExtra[d]))
            guard distance <= out.count else { throw Gzip.Failure("deflate distance reaches before the start of the data") }
            guard out.count + length <= limit else { throw Gzip.Failure("decompressed data exceeds \(limit) bytes") }
            var from = out.count - distance
            for _ in 0..<length {
                out.append(out[from])
                from += 1
            }
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as gzip uses it).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8], from start: Int) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            bytes.withUnsafeBufferPointer { b in
                for i in start..<b.count { c = t[Int((c ^ UInt32(b[i])) & 0xFF)] ^ (c >> 8) }
            }
        }
        return c ^ 0xFFFF_FFFF
    }
}
