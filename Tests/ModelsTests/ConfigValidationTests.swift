import Foundation
import Models
import Tensors
import TestSupport
import XCTest

/// config.json values are checked against their meaning, and the config against the
/// checkpoint, before any forward pass runs.
final class ConfigValidationTests: XCTestCase {
    private let base: [String: Any] = [
        "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    ]

    private func parse(_ changes: [String: Any]) throws -> LlamaConfig {
        try LlamaConfig.parse(base.merging(changes) { $1 }, file: "config.json")
    }

    private func assertRefused(_ changes: [String: Any], _ text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(changes), "\(changes)", file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(text), "'\(error)' should contain '\(text)'", file: file, line: line)
        }
    }

    func testValuesAreCheckedAgainstTheirMeaning() throws {
        XCTAssertEqual(try parse([:]).layers, 2)
        XCTAssertEqual(try parse(["hidden_act": "silu", "mlp_bias": false, "rope_scaling": NSNull()]).hiddenSize, 32)
        assertRefused(["num_hidden_layers": -1], "num_hidden_layers -1 is out of range (must be in 1...1024)")
        assertRefused(["num_hidden_layers": 1 << 62], "num_hidden_layers 4611686018427387904 is out of range")
        assertRefused(["num_hidden_layers": 1e30], "num_hidden_layers must be an integer, found 1e+30")
        assertRefused(["num_hidden_layers": 2.5], "num_hidden_layers must be an integer")
        assertRefused(["hidden_size": "32"], "hidden_size must be an integer, found '32'")
        assertRefused(["hidden_size": true], "hidden_size must be an integer, found")
        assertRefused(["vocab_size": 1 << 40], "vocab_size 1099511627776 is out of range")
        assertRefused(["rope_theta": 0], "rope_theta 0.0 is not a positive number")
        assertRefused(["rope_theta": -10000], "rope_theta -10000.0 is not a positive number")
        assertRefused(["rms_norm_eps": -1e-6], "rms_norm_eps -1e-06 is not a small positive number")
        assertRefused(["rms_norm_eps": 0], "rms_norm_eps 0.0 is not a small positive number")
        assertRefused(["rms_norm_eps": 1e-300], "is not a small positive number")  // 0 in F32
        assertRefused(["hidden_act": "relu"], "hidden_act 'relu' is not supported: the forward pass computes SiLU")
        assertRefused(["hidden_act": "gelu_pytorch_tanh"], "hidden_act 'gelu_pytorch_tanh' is not supported")
        assertRefused(["architectures": ["Qwen2ForCausalLM"], "mlp_bias": true], "mlp_bias: true is not supported for Qwen2ForCausalLM")
        // Llama's attention_bias covers o_proj too (Qwen2's o_proj has none); mlp_bias all three.
        let llama = try parse(["attention_bias": true, "mlp_bias": true])
        XCTAssertTrue(llama.attentionBias && llama.outputBias && llama.mlpBias)
        let qwen = try parse(["architectures": ["Qwen2ForCausalLM"]])
        XCTAssertTrue(qwen.attentionBias && !qwen.outputBias && !qwen.mlpBias)
        assertRefused(["tie_word_embeddings": 1], "tie_word_embeddings must be true or false, found 1")
        assertRefused(["num_key_value_heads": 3], "inconsistent attention shape")
        assertRefused(["hidden_size": 34], "inconsistent attention shape")  // 34 / 4 heads would drop columns
        assertRefused(["rope_scaling": ["type": "linear", "factor": 2.0]], "rope_scaling is not supported")
        XCTAssertEqual(try parse(["sliding_window": 16]).slidingWindow, 16)
        XCTAssertNil(try parse(["sliding_window": 16, "use_sliding_window": false]).slidingWindow, "Qwen2 turns it off")
        XCTAssertThrowsError(try parse(["sliding_window": 16]).checkSequenceLength(24, what: "calibration.tokens"))
    }

    /// Per-layer widths (a global unit allocation's smaller model): one per layer, each in
    /// range, heads whole key/value groups, the scalars the largest, head_dim given.
    func testPerLayerWidthsAreCheckedAndGiveEachBlockItsOwn() throws {
        let c = try parse(["intermediate_size_per_layer": [64, 40], "num_attention_heads_per_layer": [2, 4], "head_dim": 8])
        XCTAssertFalse(c.hasUniformBlocks)
        XCTAssertEqual([c.block(0).intermediateSize, c.block(1).intermediateSize], [64, 40])
        XCTAssertEqual([c.block(0).heads, c.block(1).heads], [2, 4])
        XCTAssertTrue(c.block(1).hasUniformBlocks, "a block's own config has no lists")
        XCTAssertTrue(try parse([:]).hasUniformBlocks)
        assertRefused(["intermediate_size_per_layer": [64]], "intermediate_size_per_layer must be a list of 2 integers (one per layer)")
        assertRefused(["intermediate_size_per_layer": 64], "intermediate_size_per_layer must be a list of 2 integers")
        assertRefused(["intermediate_size_per_layer": [64, "40"]], "intermediate_size_per_layer[1] must be an integer")
        assertRefused(["intermediate_size_per_layer": [64, 0]], "intermediate_size_per_layer[1] 0 is out of range")
        assertRefused(["intermediate_size_per_layer": [32, 40]], "intermediate_size 64 is not the largest of intermediate_size_per_layer (40)")
        assertRefused(["num_attention_heads_per_layer": [2, 4]], "with head_dim given")
        assertRefused(["num_attention_heads_per_layer": [3, 4], "head_dim": 8], "multiples of num_key_value_heads (2)")
    }

    func testConfigIsCheckedAgainstTheCheckpoint() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("m"), layers: 2, hidden: 32, intermediate: 64)
        let checkpoint = try Checkpoint(path: dir.file("m"))
        XCTAssertNoThrow(try parse([:]).validate(against: checkpoint, file: "config.json"))
        let cases: [([String: Any], String)] = [
            (["num_hidden_layers": 3], "tensor 'model.layers.2.input_layernorm.weight' is missing"),
            (["num_hidden_layers": 1], "tensor 'model.layers.1.input_layernorm.weight' is in block 1, but config.json says num_hidden_layers 1"),
            (["vocab_size": 64], "tensor 'model.embed_tokens.weight' has shape [48, 32], config.json implies [64, 32]"),
            (["intermediate_size": 48], "has shape [64, 32], config.json implies [48, 32]"),
            (["attention_bias": true], "self_attn.q_proj.bias' is missing"),
            (["mlp_bias": true], "mlp.gate_proj.bias' is missing"),
        ]
        for (changes, text) in cases {
            XCTAssertThrowsError(try parse(changes).validate(against: checkpoint, file: "config.json"), "\(changes)") {
                XCTAssertTrue("\($0)".contains(text), "'\($0)' should contain '\(text)'")
            }
        }
        // A tensor the forward pass would ignore (a bias with attention_bias false).
        try SyntheticModel.write(to: dir.file("b"), layers: 2, hidden: 32, intermediate: 64,
                                 extra: [("model.layers.0.self_attn.o_proj.bias", .f32, [32], [UInt8](repeating: 0, count: 128))])
        XCTAssertThrowsError(try parse([:]).validate(against: try Checkpoint(path: dir.file("b")), file: "config.json")) {
            XCTAssertTrue("\($0)".contains("'model.layers.0.self_attn.o_proj.bias' is not used by the LlamaForCausalLM forward pass"), "\($0)")
        }
    }

    func testOversizedOrSpecialConfigFilesAreRefusedBeforeReading() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let padded = base.merging(["pad": String(repeating: "x", count: 300_000)]) { $1 }
        try JSONSerialization.data(withJSONObject: padded).write(to: URL(fileURLWithPath: dir.file("config.json")))
        XCTAssertThrowsError(try LlamaConfig.load(dir.path)) { XCTAssertTrue("\($0)".contains("more than the limit of 256 KiB"), "\($0)") }
        XCTAssertThrowsError(try LlamaConfig.load("/dev/zero")) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
    }
}
