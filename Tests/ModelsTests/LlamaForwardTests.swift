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

    func testQwen2AttentionBiases() throws {
        try compare(["--bias", "--seed", "5"], tokens: [8, 9, 10, 11, 50])
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
