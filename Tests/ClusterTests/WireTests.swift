import Protocol
import Tensors
import XCTest

/// Decoding of payload descriptions: frames that travel, and payloads a worker stored in
/// the coordinator's artifact directory (described, no frame).
final class WireTests: XCTestCase {
    private func envelope(_ infos: [(name: String, bytes: [UInt8], stored: Bool)]) throws -> [UInt8] {
        var e = Prune_V1_Envelope.with(.result(Prune_V1_Result()))
        e.payloads = infos.map { p in
            var info = Prune_V1_PayloadInfo()
            info.name = p.name
            info.size = UInt64(p.bytes.count)
            info.sha256 = p.bytes.withUnsafeBytes { SHA256Stream.hex($0) }
            info.stored = p.stored
            return info
        }
        return try e.serializedBytes()
    }

    func testStoredPayloadsNeedNoFrameAndFramedOnesKeepTheirOrder() throws {
        let mask: [UInt8] = [1, 2, 3], weights: [UInt8] = [4, 5, 6, 7]
        let head = try envelope([("mask", mask, true), ("weights", weights, false)])
        let m = try WireMessage.decode([head, weights])
        XCTAssertEqual(m.payloads, [weights])
        XCTAssertEqual(m.envelope.payloads.map(\.stored), [true, false])

        let all = try WireMessage.frames(.with(.result(Prune_V1_Result())), stored: [("mask", String(repeating: "0f", count: 32), 3)])
        XCTAssertEqual(all.count, 1, "no payload frame")
        XCTAssertEqual(try WireMessage.decode(all).envelope.payloads.first?.size, 3)
    }

    func testFrameCountMustMatchTheUnstoredPayloads() throws {
        let head = try envelope([("mask", [1, 2, 3], true), ("weights", [4], false)])
        XCTAssertThrowsError(try WireMessage.decode([head])) { XCTAssertTrue("\($0)".contains("0 payload frames, envelope declares 1"), "\($0)") }
        XCTAssertThrowsError(try WireMessage.decode([head, [4], [1, 2, 3]]))
        XCTAssertThrowsError(try WireMessage.decode([head, [5]])) { XCTAssertTrue("\($0)".contains("fails its sha256"), "\($0)") }
    }

    func testStoredPayloadMustNameAWellFormedDigest() throws {
        var e = Prune_V1_Envelope.with(.result(Prune_V1_Result()))
        var info = Prune_V1_PayloadInfo()
        info.name = "mask"
        info.size = 3
        info.sha256 = "../../etc/passwd"
        info.stored = true
        e.payloads = [info]
        XCTAssertThrowsError(try WireMessage.decode([try e.serializedBytes()])) { XCTAssertTrue("\($0)".contains("names no sha256"), "\($0)") }
    }
}
