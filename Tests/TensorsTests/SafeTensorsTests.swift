import Foundation
import TestSupport
import XCTest
@testable import Tensors

final class DTypeTests: XCTestCase {
    func testBF16RoundsToNearestEven() {
        // 1 + 2^-8 is exactly halfway between two BF16 values: ties go to the even one (1.0).
        XCTAssertEqual(FloatConversion.floatToBF16(Float(bitPattern: 0x3F80_8000)), 0x3F80)
        // 1 + 3·2^-8 is halfway too, and the even neighbour is above.
        XCTAssertEqual(FloatConversion.floatToBF16(Float(bitPattern: 0x3F81_8000)), 0x3F82)
        // Just above halfway rounds up.
        XCTAssertEqual(FloatConversion.floatToBF16(Float(bitPattern: 0x3F80_8001)), 0x3F81)
        XCTAssertEqual(FloatConversion.floatToBF16(-2.5), 0xC020)
        XCTAssertTrue(FloatConversion.bf16ToFloat(FloatConversion.floatToBF16(.nan)).isNaN)
        XCTAssertEqual(FloatConversion.floatToBF16(.infinity), 0x7F80)
    }

    func testF16RoundTripIsExactForEveryF16Value() {
        for bits in UInt16(0)...UInt16.max {
            let f = FloatConversion.f16ToFloat(bits)
            if f.isNaN { continue }
            XCTAssertEqual(FloatConversion.floatToF16(f), bits, "F16 \(bits)")
        }
    }
}

final class SafeTensorsTests: XCTestCase {
    func testWriterRoundTripWithMetadataAndPadding() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = dir.file("a.safetensors")
        let specs = [TensorSpec(name: "w\"eird\nname", dtype: .f32, shape: [2, 3]),
                     TensorSpec(name: "empty", dtype: .bf16, shape: [0, 4]),
                     TensorSpec(name: "ids", dtype: .i64, shape: [3])]
        let w = try SafeTensorsWriter(path: path, tensors: specs, metadata: ["format": "pt", "note": "ünïcode"])
        try [Float](arrayLiteral: 1, -2, 3.5, 0, -0.0, 7).withUnsafeBytes { try w.write($0) }
        try [Int64](arrayLiteral: 5, -1, Int64.max).withUnsafeBytes { try w.write($0) }
        try w.finish()

        let f = try SafeTensorsFile(path: path)
        XCTAssertEqual(f.header.dataStart % 8, 0, "header must be padded to 8 bytes")
        XCTAssertEqual(f.metadata, ["format": "pt", "note": "ünïcode"])
        XCTAssertEqual(f.tensors.map(\.name).sorted(), specs.map(\.name).sorted())
        let weird = try XCTUnwrap(f.info("w\"eird\nname"))
        XCTAssertEqual(try f.floats(weird).map(\.bitPattern), [1, -2, 3.5, 0, -0.0, 7].map { Float($0).bitPattern })
        let ids = try XCTUnwrap(f.info("ids"))
        XCTAssertEqual(Array(f.bytes(ids)), [Int64](arrayLiteral: 5, -1, Int64.max).withUnsafeBytes { Array($0) })
        XCTAssertEqual(f.info("empty")?.byteCount, 0)
    }

    func testWriterLeavesNothingWhenNotFinished() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        do {
            let w = try SafeTensorsWriter(path: dir.file("x.safetensors"), tensors: [TensorSpec(name: "a", dtype: .f32, shape: [4])], metadata: nil)
            try [Float](arrayLiteral: 1, 2).withUnsafeBytes { try w.write($0) }
            XCTAssertThrowsError(try w.finish())
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [])
    }

    func testWriterRefusesExtraBytes() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let w = try SafeTensorsWriter(path: dir.file("x.safetensors"), tensors: [TensorSpec(name: "a", dtype: .u8, shape: [2])], metadata: nil)
        XCTAssertThrowsError(try w.write([1, 2, 3]))
    }

    /// Builds a file from a raw header string and data length, for validation tests.
    private func rawFile(_ dir: TempDir, header: String, data: Int) throws -> String {
        var bytes = [UInt8](repeating: 0, count: 8)
        let h = Array(header.utf8)
        withUnsafeBytes(of: UInt64(h.count).littleEndian) { for i in 0..<8 { bytes[i] = $0[i] } }
        bytes += h + [UInt8](repeating: 0, count: data)
        let path = dir.file("raw-\(UInt32.random(in: 0...UInt32.max)).safetensors")
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    private func assertRejected(_ header: String, data: Int, containing text: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try rawFile(dir, header: header, data: data)
        XCTAssertThrowsError(try SafeTensorsFile(path: path), file: file, line: line) { error in
            let message = String(describing: error)
            XCTAssertTrue(message.contains(text), "'\(message)' should contain '\(text)'", file: file, line: line)
            XCTAssertTrue(message.hasPrefix(path), "the error names the file", file: file, line: line)
        }
    }

    func testHeaderValidation() throws {
        try assertRejected(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#, data: 8, containing: "not valid JSON")
        try assertRejected(#"[1,2]"#, data: 0, containing: "not a JSON object")
        try assertRejected(#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#, data: 8, containing: "unknown dtype 'Q9'")
        try assertRejected(#"{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#, data: 8, containing: "F64 is not supported")
        try assertRejected(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: 8, containing: "needs 12 bytes")
        try assertRejected(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: 4, containing: "outside the data region")
        try assertRejected(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: 12, containing: "overlap")
        try assertRejected(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#, data: 12, containing: "gap of 4 bytes")
        try assertRejected(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: 12, containing: "8 trailing bytes")
        try assertRejected(#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: 4, containing: "not a non-negative integer")
        try assertRejected(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, data: 4, containing: "reversed")
        try assertRejected(#"{"__metadata__":{"k":1}}"#, data: 0, containing: "not a string")
        try assertRejected(#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, data: 4, containing: "too large")
    }

    func testLengthPrefixIsBounded() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let big = dir.file("big.safetensors")
        var bytes = [UInt8](repeating: 0, count: 16)
        withUnsafeBytes(of: UInt64(200_000_000).littleEndian) { for i in 0..<8 { bytes[i] = $0[i] } }
        _ = FileManager.default.createFile(atPath: big, contents: Data(bytes))
        XCTAssertThrowsError(try SafeTensorsFile(path: big)) { XCTAssertTrue("\($0)".contains("exceeds the limit")) }
        let past = dir.file("past.safetensors")
        withUnsafeBytes(of: UInt64(64).littleEndian) { for i in 0..<8 { bytes[i] = $0[i] } }
        _ = FileManager.default.createFile(atPath: past, contents: Data(bytes))
        XCTAssertThrowsError(try SafeTensorsFile(path: past)) { XCTAssertTrue("\($0)".contains("runs past the end")) }
        let tiny = dir.file("tiny.safetensors")
        _ = FileManager.default.createFile(atPath: tiny, contents: Data([8, 0, 0]))
        XCTAssertThrowsError(try SafeTensorsFile(path: tiny)) { XCTAssertTrue("\($0)".contains("truncated")) }
    }

    func testShardedCheckpointThroughIndex() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let names = try SyntheticModel.write(to: dir.path, dtype: .bf16, shards: 3)
        let c = try Checkpoint(path: dir.path)
        XCTAssertEqual(c.shardNames.count, 3)
        XCTAssertEqual(Set(c.tensors.map(\.name)), Set(names))
        XCTAssertEqual(c.sideFiles(), ["config.json"])
        // An index naming a tensor its shard does not hold is refused.
        let indexPath = dir.file(Checkpoint.indexFileName)
        let text = try String(contentsOfFile: indexPath, encoding: .utf8).replacingOccurrences(of: "\"lm_head.weight\"", with: "\"lm_head.missing\"")
        try text.write(toFile: indexPath, atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try Checkpoint(path: dir.path)) { XCTAssertTrue("\($0)".contains("lm_head")) }
    }

    func testEmptyCheckpointIsRefused() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let w = try SafeTensorsWriter(path: dir.file("model.safetensors"), tensors: [], metadata: nil)
        try w.finish()
        XCTAssertThrowsError(try Checkpoint(path: dir.path)) { XCTAssertTrue("\($0)".contains("no tensors")) }
    }
}
