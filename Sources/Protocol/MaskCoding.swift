import Foundation

/// Range coding of masks for the wire (`PayloadInfo.coding = "mask-rc1"`).
///
/// A mask sent as packed bits costs 1 bit per weight. That is its entropy only when every
/// bit is a fair coin: an N:M mask has C(M,N) choices per group of M (2:4: log2 6 / 4 =
/// 0.646 bits per weight) and a mask at sparsity s has H(s) bits per weight (90%: 0.469).
/// This coder gets within about 3% of those bounds: an adaptive binary range coder (the
/// LZMA one: 11-bit probabilities, shift-5 adaptation, carry propagation through a cache
/// byte) whose context for each bit is, for N:M masks, its place in the group and how many
/// of the group's earlier weights were kept, so bits the pattern forces cost almost nothing;
/// for other masks the two previous bits of the row.
///
/// Frame: `PMRC`, version 1, rows (u32 LE), cols (u32 LE), group (u16 LE, 0 = none), then
/// the coder's bytes. It decodes to the packed layout of `Mask.bits`: rows × ceil(cols/8)
/// bytes, LSB-first, each row starting on a byte, padding bits 0.
public enum MaskCoding {
    /// The `PayloadInfo.coding` and `Welcome.payload_codings` name of this format.
    public static let name = "mask-rc1"
    static let magic: [UInt8] = Array("PMRC".utf8) + [1]
    static let headerBytes = 5 + 4 + 4 + 2
    /// Groups longer than this are coded as plain rows (the context table grows as M²).
    public static let maxGroup = 64

    /// Why a coded mask frame was refused.
    public struct DecodeError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The bytes of a packed mask of `rows × cols`.
    public static func packedBytes(rows: Int, cols: Int) -> Int { rows * ((cols + 7) / 8) }

    /// Whether a frame header can describe a `rows × cols` mask (u32 fields, none empty).
    static func codable(rows: Int, cols: Int, bits: [UInt8]) -> Bool {
        rows > 0 && cols > 0 && rows <= Int(UInt32.max) && cols <= Int(UInt32.max) && bits.count == packedBytes(rows: rows, cols: cols)
    }

    /// The packed size of the `rows × cols` mask a frame header declares, refused unless
    /// both are positive and it fits `maxBytes` (≤ 0 counts as 1 GiB; capped at 1 TiB so
    /// no product below overflows).
    static func declaredBytes(rows: Int, cols: Int, maxBytes: Int, format: String) throws -> Int {
        let limit = maxBytes > 0 ? min(maxBytes, 1 << 40) : 1 << 30
        guard rows > 0, cols > 0, rows <= limit, cols <= limit * 8 else {
            throw DecodeError(description: "\(format) frame declares a \(rows) × \(cols) mask")
        }
        let (count, overflow) = rows.multipliedReportingOverflow(by: (cols + 7) / 8)
        guard !overflow, count <= limit else {
            throw DecodeError(description: "\(format) frame declares a \(rows) × \(cols) mask, over the \(limit)-byte limit")
        }
        return count
    }

    /// No bit costs less than -log2(2017/2048) = 0.022 bits, so an honest frame holds at
    /// most 46 mask bits per coded bit; a frame is refused when its mask's packed bytes
    /// (padding included) exceed 64 times its coded bytes, and never sent so.
    static func withinAmplification(maskBytes: Int, frameBytes: Int) -> Bool {
        maskBytes <= (frameBytes - headerBytes + 1) * 64
    }

    /// Whether coding could save 1/32 of the packed bytes: true for N:M masks, else when
    /// the binary entropy of the kept fraction is below 31/32 bits per weight (a mask with
    /// 40–60% kept is left as bits without a trial encode).
    public static func mayPay(bits: [UInt8], rows: Int, cols: Int, group: Int) -> Bool {
        if group > 1 && cols % group == 0 { return true }
        let kept = bits.reduce(0) { $0 + $1.nonzeroBitCount }
        let p = Double(kept) / Double(max(1, rows * cols))
        guard p > 0, p < 1 else { return true }
        return -(p * log2(p) + (1 - p) * log2(1 - p)) < 31.0 / 32.0
    }

    /// Codes packed mask bits. `group` is M of an N:M pattern (0 for other patterns); a
    /// group that does not divide `cols` or exceeds `maxGroup` is coded as 0. Nil when the
    /// bytes are not a `rows × cols` mask or the frame would be refused as an amplification
    /// (a narrow mask of almost no entropy).
    public static func encode(bits: [UInt8], rows: Int, cols: Int, group: Int) -> [UInt8]? {
        guard codable(rows: rows, cols: cols, bits: bits) else { return nil }
        let m = (group > 1 && group <= maxGroup && cols % group == 0) ? group : 0
        var out = MaskFrameHeader.bytes(magic, rows: rows, cols: cols, fields: [m])
        out.reserveCapacity(headerBytes + bits.count / 2 + 16)
        var coder = RangeEncoder(output: out)
        var model = ContextModel(group: m)
        var probabilities = model.initialProbabilities
        let rowBytes = (cols + 7) / 8
        bits.withUnsafeBufferPointer { b in
            probabilities.withUnsafeMutableBufferPointer { p in
                for r in 0..<rows {
                    model.startRow()
                    let row = r * rowBytes
                    for c in 0..<cols {
                        let bit = Int(b[row + (c >> 3)] >> (c & 7)) & 1
                        coder.encode(bit, probability: &p[model.context])
                        model.advance(bit)
                    }
                }
            }
        }
        let frame = coder.finish()
        return withinAmplification(maskBytes: bits.count, frameBytes: frame.count) ? frame : nil
    }

    /// Decodes a `mask-rc1` frame into packed mask bits. Refuses a frame whose header is
    /// short, of another version, or names more than `maxBytes` of mask; a frame whose coded
    /// bytes were damaged decodes to some mask, which the sender's sha256 then rejects.
    public static func decode(_ frame: [UInt8], maxBytes: Int) throws -> [UInt8] {
        guard let header = MaskFrameHeader(frame, magic: magic, fieldCount: 1) else {
            throw DecodeError(description: "not a \(name) frame (\(frame.count) bytes, no PMRC v1 header)")
        }
        let rows = header.rows, cols = header.cols, m = header.fields[0]
        let count = try declaredBytes(rows: rows, cols: cols, maxBytes: maxBytes, format: name)
        guard withinAmplification(maskBytes: count, frameBytes: frame.count) else {
            throw DecodeError(description: "\(name) frame of \(frame.count) bytes claims a \(rows) × \(cols) mask")
        }
        guard m == 0 || (m > 1 && m <= maxGroup && cols % m == 0) else {
            throw DecodeError(description: "\(name) frame declares group \(m) for \(cols) columns")
        }
        var bits = [UInt8](repeating: 0, count: count)
        var model = ContextModel(group: m)
        var probabilities = model.initialProbabilities
        let rowBytes = (cols + 7) / 8
        frame.withUnsafeBufferPointer { input in
            var coder = RangeDecoder(input: UnsafeBufferPointer(rebasing: input[headerBytes...]))
            bits.withUnsafeMutableBufferPointer { b in
                probabilities.withUnsafeMutableBufferPointer { p in
                    for r in 0..<rows {
                        model.startRow()
                        let row = r * rowBytes
                        for c in 0..<cols {
                            let bit = coder.decode(probability: &p[model.context])
                            b[row + (c >> 3)] |= UInt8(bit << (c & 7))
                            model.advance(bit)
                        }
                    }
                }
            }
        }
        return bits
    }
}

/// The header both coded-mask formats start with: a 4-byte tag and version 1 (`magic`),
/// rows and cols (u32 LE), then the format's own u16 LE fields.
struct MaskFrameHeader {
    let rows: Int
    let cols: Int
    let fields: [Int]

    static func bytes(_ magic: [UInt8], rows: Int, cols: Int, fields: [Int]) -> [UInt8] {
        var out = magic
        for v in [UInt32(rows), UInt32(cols)] { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        for v in fields { withUnsafeBytes(of: UInt16(v).littleEndian) { out.append(contentsOf: $0) } }
        return out
    }

    /// Nil when the frame is shorter than the header or has another tag or version.
    init?(_ frame: [UInt8], magic: [UInt8], fieldCount: Int) {
        let fieldsAt = magic.count + 8
        guard frame.count >= fieldsAt + 2 * fieldCount, frame.starts(with: magic) else { return nil }
        func read(_ at: Int, _ width: Int) -> Int { (0..<width).reduce(0) { $0 | Int(frame[at + $1]) << (8 * $1) } }
        rows = read(magic.count, 4)
        cols = read(magic.count + 4, 4)
        fields = (0..<fieldCount).map { read(fieldsAt + 2 * $0, 2) }
    }
}

/// Which probability codes the next bit.
struct ContextModel {
    let group: Int
    private(set) var context = 0
    private var position = 0
    private var kept = 0
    private var history = 0

    init(group: Int) {
        self.group = group
    }

    /// P(bit = 0) in units of 1/2048 for each context, all one half.
    var initialProbabilities: [UInt16] { [UInt16](repeating: 1024, count: group > 0 ? group * (group + 1) : 4) }

    mutating func startRow() {
        position = 0; kept = 0; history = 0
        context = 0
    }

    mutating func advance(_ bit: Int) {
        if group > 0 {
            kept += bit
            position += 1
            if position == group { position = 0; kept = 0 }
            context = position * (group + 1) + kept
        } else {
            history = ((history << 1) | bit) & 3
            context = history
        }
    }
}

/// LZMA's binary range encoder.
struct RangeEncoder {
    private var output: [UInt8]
    private var low: UInt64 = 0
    private var range: UInt32 = 0xFFFF_FFFF
    private var cache: UInt8 = 0
    private var cacheSize = 1

    init(output: [UInt8]) { self.output = output }

    @inline(__always)
    mutating func encode(_ bit: Int, probability p: inout UInt16) {
        let bound = (range >> 11) &* UInt32(p)
        if bit == 0 {
            range = bound
            p &+= (2048 &- p) >> 5
        } else {
            low &+= UInt64(bound)
            range &-= bound
            p &-= p >> 5
        }
        while range < (1 << 24) {
            range <<= 8
            shiftLow()
        }
    }

    private mutating func shiftLow() {
        if low < 0xFF00_0000 || low >= (1 << 32) {
            let carry = UInt8(truncatingIfNeeded: low >> 32)
            var byte = cache
            repeat {
                output.append(byte &+ carry)
                byte = 0xFF
                cacheSize -= 1
            } while cacheSize != 0
            cache = UInt8(truncatingIfNeeded: low >> 24)
        }
        cacheSize += 1
        low = (low & 0x00FF_FFFF) << 8
    }

    mutating func finish() -> [UInt8] {
        for _ in 0..<5 { shiftLow() }
        return output
    }
}

/// LZMA's binary range decoder; reads zeros past the end of its input, so a truncated
/// frame decodes to a (wrong) mask instead of failing mid-way.
struct RangeDecoder {
    private let input: UnsafeBufferPointer<UInt8>
    private var next = 0
    private var range: UInt32 = 0xFFFF_FFFF
    private var code: UInt32 = 0

    init(input: UnsafeBufferPointer<UInt8>) {
        self.input = input
        for _ in 0..<5 { code = (code << 8) | UInt32(nextByte()) }
    }

    @inline(__always)
    private mutating func nextByte() -> UInt8 {
        defer { next += 1 }
        return next < input.count ? input[next] : 0
    }

    @inline(__always)
    mutating func decode(probability p: inout UInt16) -> Int {
        let bound = (range >> 11) &* UInt32(p)
        let bit: Int
        if code < bound {
            range = bound
            p &+= (2048 &- p) >> 5
            bit = 0
        } else {
            code &-= bound
            range &-= bound
            p &-= p >> 5
            bit = 1
        }
        while range < (1 << 24) {
            range <<= 8
            code = (code << 8) | UInt32(nextByte())
        }
        return bit
    }
}
