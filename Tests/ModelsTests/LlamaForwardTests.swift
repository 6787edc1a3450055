import CKernels
import Foundation
import TestSupport
import XCTest
@testable import Models

/// Our forward pass against a numpy reference (float64) on small random checkpoints.
final class LlamaForwardTests: XCTestCase {
    private func requirePython() throws {
        if !Subprocess.pythonHasSafetensors {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy and safetensors is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with numpy and safetensors not installed")
        }
    }

    /// Reads a float32 .npy written by numpy (little-endian, C order).
    private func readNpy(_ path: String) throws -> [Float] {
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let headerLength = Int(data[8]) | Int(data[9]) << 8
        let start = 10 + headerLength
        return stride(from: start, to: data.count, by: 4).map { i in
            Float(bitPattern: UInt32(data[i]) | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2]) << 16 | UInt32(data[i + 3]) << 24)
        }
    }

    private func compare(_ flags: [String], tokens: [Int32]) throws {
        try requirePython()
        let dir = TempDir("llama-ref"); defer { dir.cleanup() }
        let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file("m")] + flags))
        XCTAssertEqual(made.status, 0, made.stderr)
        let ref = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["forward", dir.file("m"), tokens.map(String.init).joined(separator: ","), dir.file("ref.npy")]))
        XCTAssertEqual(ref.status, 0, ref.stderr)
        let expected = try readNpy(dir.file("ref.npy"))
        let model = try LlamaModel(directory: dir.file("m"))
        var hooked: [String: Int] = [:]
        let got = try model.forward(tokens) { name, input, t in
            hooked[name, default: 0] += 1
            XCTAssertEqual(input.count % t, 0)
        }
        XCTAssertEqual(got.count, expected.count)
        var maxRel: Float = 0
        let scale = expected.map(abs).max() ?? 1
        for (a, b) in zip(got, expected) { maxRel = max(maxRel, abs(a - b) / scale) }
        XCTAssertLessThan(maxRel, 1e-4, "max relative difference \(maxRel) \(flags)")
        XCTAssertEqual(hooked.count, 14, "every Linear of both blocks is hooked once")
    }

    func testUntiedHeadWithGroupedQueryAttention() throws {
        try compare([], tokens: [1, 5, 9, 33, 2, 60, 7, 7, 12, 40, 41, 3])
    }

    func testTiedEmbeddings() throws {
        try compare(["--tied", "--seed", "3"], tokens: [0, 63, 17, 4, 4, 28])
    }

    /// 150 positions: attention runs in blocks of 64 query positions (three blocks, the last
    /// one ragged), each seeing only the keys up to its end.
    func testLongSequenceAcrossAttentionBlocks() throws {
        try compare(["--seed", "9"], tokens: (0..<150).map { Int32(($0 * 37 + 5) % 64) })
    }

    func testQwen2AttentionBiases() throws {
        try compare(["--bias", "--seed", "5"], tokens: [8, 9, 10, 11, 50])
    }

    /// The batched block pass (every sequence's rows in one GEMM) against one sequence at
    /// a time: the same outputs within float rounding, the hook shown each sequence's
    /// input in sequence order, and a statistics-only pass showing the same inputs.
    func testBatchedBlockPassMatchesOneSequenceAtATime() throws {
        try requirePython()
        let dir = TempDir("llama-batch"); defer { dir.cleanup() }
        let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file("m"), "--seed", "7"]))
        XCTAssertEqual(made.status, 0, made.stderr)
        let model = try LlamaModel(directory: dir.file("m"))
        let c = model.config, t = 9, samples = 3
        let rope = RotaryTable(headDim: c.headDim, theta: c.ropeTheta, maxTokens: t)
        let windows: [[Int32]] = (0..<samples).map { s in (0..<t).map { Int32(($0 * 7 + s * 13) % c.vocabSize) } }
        let block = try model.block(0)

        var oneByOne: [Float] = []
        var seen: [(String, [Float])] = []
        for w in windows {
            var x = try model.embed(w)
            block.forward(&x, tokens: t, rope: rope) { name, input, _ in seen.append((name, Array(input))) }
            oneByOne += x
        }
        var batched = try windows.flatMap { try model.embed($0) }
        var shown: [(String, [Float])] = []
        block.forward(&batched, samples: samples, tokens: t, rope: rope) { name, input, tokens in
            XCTAssertEqual(tokens, t)
            shown.append((name, Array(input)))
        }
        let scale = oneByOne.map(abs).max()!
        XCTAssertLessThan(zip(batched, oneByOne).map { abs($0 - $1) }.max()! / scale, 1e-5)
        // Per Linear, the same sequence of inputs (the batched pass groups them by layer).
        func byName(_ list: [(String, [Float])]) -> [String: [[Float]]] { Dictionary(grouping: list, by: \.0).mapValues { $0.map(\.1) } }
        let expected = byName(seen), got = byName(shown)
        XCTAssertEqual(Set(got.keys), Set(expected.keys))
        XCTAssertEqual(got.count, 7)
        for (name, inputs) in expected {
            XCTAssertEqual(got[name]?.count, samples, name)
            for (a, b) in zip(inputs, got[name] ?? []) {
                XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()! / max(a.map(abs).max()!, 1e-6), 1e-5, name)
            }
        }
        // Statistics only: the same seven inputs, without the last GEMM.
        var partial = try windows.flatMap { try model.embed($0) }
        var statistics: [(String, [Float])] = []
        block.forward(&partial, samples: samples, tokens: t, rope: rope, statisticsOnly: true) { name, input, _ in statistics.append((name, Array(input))) }
        XCTAssertEqual(statistics.map(\.0), shown.map(\.0))
        XCTAssertEqual(statistics.map(\.1), shown.map(\.1), "the same bytes as the full batched pass")
    }

    /// The vectorized exponential (CKernels) against libm, and the causal softmax.
    func testVectorizedExpAndSoftmax() {
        let xs = stride(from: Float(-87), through: 88, by: 0.013).map { $0 }
        var out = [Float](repeating: 0, count: xs.count)
        pc_exp(xs, &out, xs.count)
        var worst: Float = 0
        for (x, e) in zip(xs, out) { worst = max(worst, abs(e - expf(x)) / expf(x)) }
        XCTAssertLessThan(worst, 3e-7, "relative error against expf")
        var clamped = [Float](repeating: 1, count: 3)
        pc_exp([-1000, 0, 1000], &clamped, 3)
        XCTAssertLessThan(clamped[0], 1e-37)
        XCTAssertEqual(clamped[1], 1)
        XCTAssertTrue(clamped[2].isFinite && clamped[2] > 1e38)

        for count in [1, 5, 8, 13, 16] {
            var row: [Float] = (0..<20).map { Float($0 % 7) - 2.5 }
            let reference = row[0..<count].map { expf($0 - row[0..<count].max()!) }
            let total = reference.reduce(0, +)
            pc_causal_softmax(&row, count, 20)
            for i in 0..<count { XCTAssertEqual(row[i], reference[i] / total, accuracy: 1e-6) }
            XCTAssertEqual(Array(row[count...]), [Float](repeating: 0, count: 20 - count), "future positions zeroed")
        }
    }

    func testConfigErrorsNameTheProblem() throws {
        XCTAssertThrowsError(try LlamaConfig.parse(["architectures": ["GPT2LMHeadModel"]], file: "c.json")) {
            XCTAssertTrue("\($0)".contains("GPT2LMHeadModel is not supported") || "\($0)".contains("'GPT2LMHeadModel' is not supported"), "\($0)")
        }
        XCTAssertThrowsError(try LlamaConfig.parse(["architectures": ["LlamaForCausalLM"], "hidden_size": 30, "num_attention_heads": 4,
                                                    "intermediate_size": 8, "num_hidden_layers": 1, "vocab_size": 5], file: "c.json")) {
            XCTAssertTrue("\($0)".contains("inconsistent attention shape"), "\($0)")
        }
    }
}
