import Foundation
import Protocol
import Tensors
import XCTest

/// The coded mask frames of `PayloadInfo.coding`: "mask-nm1" (N:M groups by rank) and
/// "mask-rc1" (range coded).
final class MaskCodingTests: XCTestCase {
    /// A packed mask whose bits come from `keep(row, col)`, padding bits 0.
    private func pack(rows: Int, cols: Int, _ keep: (Int, Int) -> Bool) -> [UInt8] {
        let rowBytes = (cols + 7) / 8
        var bits = [UInt8](repeating: 0, count: rows * rowBytes)
        for r in 0..<rows { for c in 0..<cols where keep(r, c) { bits[r * rowBytes + c / 8] |= 1 << (c % 8) } }
        return bits
    }

    /// An N:M mask with the kept places of each group drawn at random.
    private func nm(rows: Int, cols: Int, n: Int, m: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix(seed)
        var kept = Set<Int>()
        for r in 0..<rows {
            for g in stride(from: 0, to: cols, by: m) {
                var places = Array(0..<m)
                for i in 0..<n { places.swapAt(i, i + Int(rng.next() % UInt64(m - i))) }
                for p in places.prefix(n) { kept.insert(r * cols + g + p) }
            }
        }
        return pack(rows: rows, cols: cols) { kept.contains($0 * cols + $1) }
    }

    private func bernoulli(rows: Int, cols: Int, keep: Double, seed: UInt64) -> [UInt8] {
        var rng = SplitMix(seed)
        return pack(rows: rows, cols: cols) { _, _ in Double(rng.next() >> 11) / Double(1 << 53) < keep }
    }

    private func entropy(_ p: Double) -> Double { -(p * log2(p) + (1 - p) * log2(1 - p)) }

    func testEveryKindOfMaskDecodesToItsOwnBits() throws {
        let cases: [(String, [UInt8], Int, Int, Int)] = [
            ("2:4", nm(rows: 16, cols: 64, n: 2, m: 4, seed: 1), 16, 64, 4),
            ("4:8", nm(rows: 8, cols: 96, n: 4, m: 8, seed: 2), 8, 96, 8),
            ("50% odd width", bernoulli(rows: 7, cols: 53, keep: 0.5, seed: 3), 7, 53, 0),
            ("90%", bernoulli(rows: 5, cols: 300, keep: 0.1, seed: 4), 5, 300, 0),
            ("all kept", pack(rows: 3, cols: 17) { _, _ in true }, 3, 17, 0),
            ("none kept", pack(rows: 3, cols: 17) { _, _ in false }, 3, 17, 0),
            ("group ignored: does not divide", bernoulli(rows: 2, cols: 10, keep: 0.5, seed: 5), 2, 10, 4),
        ]
        for (label, bits, rows, cols, group) in cases {
            let frame = try XCTUnwrap(MaskCoding.encode(bits: bits, rows: rows, cols: cols, group: group), label)
            XCTAssertEqual(try MaskCoding.decode(frame, maxBytes: 1 << 20), bits, label)
            XCTAssertEqual(try MaskCoding.decode(frame, maxBytes: Int.max), bits, "\(label): no limit is no overflow")
        }
    }

    func testCodedSizeIsWithinAFewPercentOfTheMasksEntropy() throws {
        let rows = 64, cols = 1024, n = Double(rows * cols)
        // 2:4: log2(6) bits per group of 4.
        let twoFour = try XCTUnwrap(MaskCoding.encode(bits: nm(rows: rows, cols: cols, n: 2, m: 4, seed: 7), rows: rows, cols: cols, group: 4))
        let twoFourBound = n / 4 * log2(6) / 8
        XCTAssertLessThan(Double(twoFour.count), twoFourBound * 1.04, "2:4: \(twoFour.count) bytes, entropy \(Int(twoFourBound))")
        XCTAssertGreaterThan(Double(twoFour.count), twoFourBound * 0.99, "no coder beats the entropy of a random mask")
        // The group is what makes 2:4 cheap: coded as plain bits it stays near 1 bit per weight.
        let blind = try XCTUnwrap(MaskCoding.encode(bits: nm(rows: rows, cols: cols, n: 2, m: 4, seed: 7), rows: rows, cols: cols, group: 0))
        XCTAssertGreaterThan(Double(blind.count), n / 8 * 0.9)
        // 90% unstructured: H(0.1) = 0.469 bits per weight.
        let sparse = try XCTUnwrap(MaskCoding.encode(bits: bernoulli(rows: rows, cols: cols, keep: 0.1, seed: 8), rows: rows, cols: cols, group: 0))
        let sparseBound = n * entropy(0.1) / 8
        XCTAssertLessThan(Double(sparse.count), sparseBound * 1.04, "90%: \(sparse.count) bytes, entropy \(Int(sparseBound))")
    }

    func testHostileFramesAreRefusedOrFailTheirDigest() throws {
        let bits = nm(rows: 8, cols: 64, n: 2, m: 4, seed: 9)
        let frame = try XCTUnwrap(MaskCoding.encode(bits: bits, rows: 8, cols: 64, group: 4))
        XCTAssertThrowsError(try MaskCoding.decode(Array(frame.prefix(10)), maxBytes: 1 << 20)) { XCTAssertTrue("\($0)".contains("PMRC"), "\($0)") }
        var otherVersion = frame; otherVersion[4] = 2
        XCTAssertThrowsError(try MaskCoding.decode(otherVersion, maxBytes: 1 << 20))
        // A header claiming a huge mask: refused before any byte is allocated.
        var huge = frame; huge[5...8] = [0xFF, 0xFF, 0xFF, 0x7F][...]
        XCTAssertThrowsError(try MaskCoding.decode(huge, maxBytes: 1 << 20)) { XCTAssertTrue("\($0)".contains("declares"), "\($0)") }
        // Within the limit but far more bits than a frame this short can code.
        var amplified = frame; amplified[5...8] = [0x00, 0x10, 0x00, 0x00][...]
        XCTAssertThrowsError(try MaskCoding.decode(amplified, maxBytes: 1 << 30)) { XCTAssertTrue("\($0)".contains("claims"), "\($0)") }
        // Padding counts: a one-column mask takes a byte per row however well it codes.
        var narrow = frame; narrow[5...12] = [0x10, 0x27, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00][...]  // 10,000 × 1
        XCTAssertThrowsError(try MaskCoding.decode(narrow, maxBytes: 1 << 30)) { XCTAssertTrue("\($0)".contains("claims"), "\($0)") }
        // So such a mask, all pruned, is never sent coded.
        let column = [UInt8](repeating: 0, count: 100_000)
        XCTAssertNil(MaskCoding.encode(bits: column, rows: 100_000, cols: 1, group: 0))
        XCTAssertEqual(WireMessage.Outgoing(name: "mask", maskBits: column, rows: 100_000, cols: 1, nm: nil, codings: [MaskCoding.name]).info.coding, "")
        XCTAssertNil(MaskCoding.encode(bits: [], rows: 0, cols: 8, group: 0), "an empty mask is not coded")
        var badGroup = frame; badGroup[13] = 5
        XCTAssertThrowsError(try MaskCoding.decode(badGroup, maxBytes: 1 << 20)) { XCTAssertTrue("\($0)".contains("group 5"), "\($0)") }
        // Truncated or flipped coder bytes decode to some other mask: the digest catches it.
        for damaged in [Array(frame.dropLast(8)), frame.enumerated().map { $0.offset == 20 ? $0.element ^ 0x40 : $0.element }] {
            XCTAssertNotEqual(try MaskCoding.decode(damaged, maxBytes: 1 << 20), bits)
        }
        // Random bytes after a valid header never crash the decoder.
        var rng = SplitMix(10)
        for _ in 0..<50 {
            let junk = Array(frame.prefix(15)) + (0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = try? MaskCoding.decode(junk, maxBytes: 1 << 20)
        }
    }

    func testNMMasksDecodeToTheirOwnBitsAtTheirPackedSize() throws {
        // (n, m, rows, cols): groups inside bytes, whole bytes, across bytes, wide groups.
        for (n, m, rows, cols) in [(2, 4, 9, 100), (4, 8, 5, 64), (1, 4, 3, 12), (3, 5, 4, 35), (8, 16, 2, 48), (15, 16, 2, 32)] {
            let bits = nm(rows: rows, cols: cols, n: n, m: m, seed: UInt64(m * 10 + n))
            let frame = try XCTUnwrap(NMMaskCoding.encode(bits: bits, rows: rows, cols: cols, n: n, m: m), "\(n):\(m)")
            XCTAssertEqual(try NMMaskCoding.decode(frame, maxBytes: 1 << 20), bits, "\(n):\(m) \(rows)×\(cols)")
            // As many base-C(M,N) digits per UInt64 as fit.
            var choices = 1.0
            for i in 0..<n { choices = choices * Double(m - i) / Double(i + 1) }
            // The most digits with C^k < 2^64 (C^k = 2^64 itself does not fit).
            let perBlock = Int((64 / log2(choices)).nextDown)
            let groups = rows * cols / m
            XCTAssertEqual(frame.count, 17 + 8 * ((groups + perBlock - 1) / perBlock), "\(n):\(m)")
        }
        // 2:4 packs 24 groups (96 weights) per 64 bits: 0.667 bits per weight.
        let big = try XCTUnwrap(NMMaskCoding.encode(bits: nm(rows: 64, cols: 1536, n: 2, m: 4, seed: 3), rows: 64, cols: 1536, n: 2, m: 4))
        XCTAssertEqual(big.count, 17 + 8 * 1024)
        // A mask that is not N:M everywhere is not coded as N:M.
        var broken = nm(rows: 4, cols: 16, n: 2, m: 4, seed: 4)
        broken[5] ^= 0x01
        XCTAssertNil(NMMaskCoding.encode(bits: broken, rows: 4, cols: 16, n: 2, m: 4))
        XCTAssertNil(NMMaskCoding.encode(bits: broken, rows: 4, cols: 16, n: 2, m: 3), "3 does not divide 16")
        XCTAssertNil(NMMaskCoding.encode(bits: [UInt8](repeating: 0, count: 8), rows: 4, cols: 16, n: 0, m: 4), "0:4 has one choice: not coded")
    }

    func testHostileNMFramesAreRefused() throws {
        let frame = try XCTUnwrap(NMMaskCoding.encode(bits: nm(rows: 4, cols: 64, n: 2, m: 4, seed: 5), rows: 4, cols: 64, n: 2, m: 4))
        XCTAssertThrowsError(try NMMaskCoding.decode(Array(frame.prefix(12)), maxBytes: 1 << 20)) { XCTAssertTrue("\($0)".contains("PMNM"), "\($0)") }
        XCTAssertThrowsError(try NMMaskCoding.decode(frame.dropLast(1).map { $0 }, maxBytes: 1 << 20)) { XCTAssertTrue("\($0)".contains("takes"), "\($0)") }
        var pattern = frame; pattern[13] = 4  // 4:4
        XCTAssertThrowsError(try NMMaskCoding.decode(pattern, maxBytes: 1 << 20)) { XCTAssertTrue("\($0)".contains("4:4"), "\($0)") }
        var huge = frame; huge[5...8] = [0xFF, 0xFF, 0xFF, 0x00][...]
        XCTAssertThrowsError(try NMMaskCoding.decode(huge, maxBytes: 1 << 20))
        var noColumns = frame; noColumns[9...12] = [0, 0, 0, 0][...]
        XCTAssertThrowsError(try NMMaskCoding.decode(noColumns, maxBytes: 1 << 20)) { XCTAssertTrue("\($0)".contains("× 0"), "\($0)") }
        XCTAssertEqual(try NMMaskCoding.decode(frame, maxBytes: Int.max).count, 4 * 8, "no limit is no overflow")
        XCTAssertNil(NMMaskCoding.encode(bits: [], rows: 0, cols: 8, n: 2, m: 4), "an empty mask is not coded")
        // A block whose value needs more digits than it holds groups.
        var digit = frame
        for i in 17..<25 { digit[i] = 0xFF }
        XCTAssertThrowsError(try NMMaskCoding.decode(digit, maxBytes: 1 << 20)) { XCTAssertTrue("\($0)".contains("larger than its digits"), "\($0)") }
    }

    func testWireCodesMasksOnlyWhereItPaysAndReceiversSeeTheBits() throws {
        let rows = 32, cols = 256
        let twoFour = nm(rows: rows, cols: cols, n: 2, m: 4, seed: 11)
        let coded = WireMessage.Outgoing(name: "mask", maskBits: twoFour, rows: rows, cols: cols, nm: (2, 4), codings: [MaskCoding.name])
        XCTAssertEqual(coded.info.coding, MaskCoding.name)
        XCTAssertLessThan(coded.frame.count, twoFour.count * 7 / 10)
        XCTAssertEqual(coded.info.sha256, twoFour.withUnsafeBytes { SHA256Stream.hex($0) }, "the digest names the mask, not the frame")
        let half = bernoulli(rows: rows, cols: cols, keep: 0.5, seed: 12)
        let plain = WireMessage.Outgoing(name: "mask", maskBits: half, rows: rows, cols: cols, nm: nil, codings: [MaskCoding.name])
        XCTAssertEqual(plain.info.coding, "", "a 50% mask is already at its entropy: sent as bits")
        XCTAssertEqual(plain.frame, half)

        // The worker's order decides: N:M enumeration first when both are offered.
        let enumerated = WireMessage.Outgoing(name: "mask", maskBits: twoFour, rows: rows, cols: cols, nm: (2, 4),
                                              codings: [NMMaskCoding.name, MaskCoding.name])
        XCTAssertEqual(enumerated.info.coding, NMMaskCoding.name)
        XCTAssertEqual(enumerated.frame.count, 17 + 8 * ((rows * cols / 4 + 23) / 24))
        let none = WireMessage.Outgoing(name: "mask", maskBits: twoFour, rows: rows, cols: cols, nm: (2, 4), codings: [])
        XCTAssertEqual(none.info.coding, "")

        let frames = try WireMessage.frames(.with(.result(Prune_V1_Result())), outgoing: [coded, plain, enumerated])
        XCTAssertEqual(try WireMessage.decode(frames).payloads, [twoFour, half, twoFour])

        // A coding the receiver does not know, or a coded frame that decodes to other bits.
        var unknown = Prune_V1_Envelope.with(.result(Prune_V1_Result()))
        var info = coded.info; info.coding = "mask-rc9"
        unknown.payloads = [info]
        XCTAssertThrowsError(try WireMessage.decode([try unknown.serializedBytes(), coded.frame])) { XCTAssertTrue("\($0)".contains("unknown coding 'mask-rc9'"), "\($0)") }
        var renamed = Prune_V1_Envelope.with(.result(Prune_V1_Result()))
        var weights = coded.info; weights.name = "weights"
        renamed.payloads = [weights]
        XCTAssertThrowsError(try WireMessage.decode([try renamed.serializedBytes(), coded.frame])) { XCTAssertTrue("\($0)".contains("only a mask"), "\($0)") }
        var lying = Prune_V1_Envelope.with(.result(Prune_V1_Result()))
        var lie = coded.info; lie.sha256 = half.withUnsafeBytes { SHA256Stream.hex($0) }
        lying.payloads = [lie]
        XCTAssertThrowsError(try WireMessage.decode([try lying.serializedBytes(), coded.frame])) { XCTAssertTrue("\($0)".contains("fails its sha256"), "\($0)") }
    }
}

/// A small seeded generator (SplitMix64).
private struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
