import Foundation
import TestSupport
import XCTest
@testable import Tensors

/// Files written by Python's `safetensors` are read bit-exactly, and files we write load
/// in Python bit-exactly, for every supported dtype; F32 → F16/BF16 rounding matches numpy
/// and ml_dtypes.
final class PythonInteropTests: XCTestCase {
    private func requirePython() throws {
        if !Subprocess.pythonHasSafetensors {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy, safetensors and ml_dtypes is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with numpy, safetensors and ml_dtypes not installed")
        }
    }

    private struct Expected {
        let dtype: DType
        let shape: [Int]
        let bytes: [UInt8]
    }

    private func loadExpected(_ dir: String) throws -> (tensors: [String: Expected], metadata: [String: String]) {
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/expected/index.json"))) as! [String: Any]
        var tensors: [String: Expected] = [:]
        for (name, v) in index where name != "__metadata__" {
            let d = v as! [String: Any]
            tensors[name] = Expected(dtype: DType(rawValue: d["dtype"] as! String)!, shape: d["shape"] as! [Int],
                                     bytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/expected/\(name).bin"))))
        }
        return (tensors, index["__metadata__"] as? [String: String] ?? [:])
    }

    func testReadsPythonWrittenFilesBitExactly() throws {
        try requirePython()
        let dir = TempDir(); defer { dir.cleanup() }
        let r = try XCTUnwrap(try Subprocess.python("st_fixtures.py", ["write", dir.path]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let (expected, metadata) = try loadExpected(dir.path)
        XCTAssertEqual(Set(expected.values.map(\.dtype)), Set(DType.allCases), "fixtures cover every supported dtype")
        let file = try SafeTensorsFile(path: dir.file("all_dtypes.safetensors"))
        XCTAssertEqual(file.metadata, metadata)
        XCTAssertEqual(Set(file.tensors.map(\.name)), Set(expected.keys))
        for (name, e) in expected {
            let info = try XCTUnwrap(file.info(name))
            XCTAssertEqual(info.dtype, e.dtype, name)
            XCTAssertEqual(info.shape, e.shape, name)
            XCTAssertEqual(Array(file.bytes(info)), e.bytes, name)
        }
        // Our F32 → F16 and F32 → BF16 conversions round exactly as numpy and ml_dtypes do.
        let source = try file.floats(try XCTUnwrap(file.info("rounding_f32")))
        for (dtype, bin) in [(DType.f16, "rounding_f16.bin"), (.bf16, "rounding_bf16.bin")] {
            var ours = [UInt8](repeating: 0, count: source.count * 2)
            source.withUnsafeBufferPointer { v in ours.withUnsafeMutableBytes { FloatConversion.fromFloat(v, dtype: dtype, into: $0) } }
            let theirs = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir.path + "/expected/" + bin)))
            XCTAssertEqual(ours, theirs, "\(dtype) rounding differs from numpy/ml_dtypes")
        }
    }

    func testPythonReadsOurFilesBitExactly() throws {
        try requirePython()
        let dir = TempDir(); defer { dir.cleanup() }
        let r = try XCTUnwrap(try Subprocess.python("st_fixtures.py", ["write", dir.path]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let (expected, metadata) = try loadExpected(dir.path)
        // Write the expected tensors with our writer, then let Python verify them.
        let ours = dir.file("ours.safetensors")
        let names = expected.keys.sorted()
        let w = try SafeTensorsWriter(path: ours, tensors: names.map { TensorSpec(name: $0, dtype: expected[$0]!.dtype, shape: expected[$0]!.shape) },
                                      metadata: metadata)
        for n in names { try w.write(expected[n]!.bytes) }
        try w.finish()
        let v = try XCTUnwrap(try Subprocess.python("st_fixtures.py", ["verify", ours, dir.path + "/expected"]))
        XCTAssertEqual(v.status, 0, v.stdout + v.stderr)
        XCTAssertTrue(v.stdout.contains("ok \(names.count) tensors"), v.stdout)
    }
}
