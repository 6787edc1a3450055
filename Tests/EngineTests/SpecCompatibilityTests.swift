import Foundation
import Pruning
import Tensors
import TestSupport
import XCTest
@testable import Engine

/// The habits of llm-compressor users, and the safe defaults they must not lose: `ignore`
/// adds to the defaults, tied embeddings stay unpruned unless named, `targets: ["Linear"]`,
/// `mask_structure`, module names for tensors, and recipes with a pruning modifier.
final class SpecCompatibilityTests: XCTestCase {
    private var dir: TempDir!

    override func setUpWithError() throws {
        dir = TempDir("prune-compat")
        try SyntheticModel.write(to: dir.file("m"), layers: 2, hidden: 64, intermediate: 128)
    }

    override func tearDown() { dir?.cleanup() }

    /// SyntheticModel's Llama with config.json saying its embeddings are tied.
    private func config(tied: Bool, modelType: String = "llama") throws {
        let config = """
            {"architectures": ["LlamaForCausalLM"], "model_type": "\(modelType)", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48,
             "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": \(tied)}
            """
        try config.write(toFile: dir.file("m/config.json"), atomically: false, encoding: .utf8)
    }

    private func plan(_ body: String) throws -> Plan {
        let path = dir.file("job-\(UInt32.random(in: 0...UInt32.max)).yaml")
        try "model: m\noutput: job\n\(body)".write(toFile: path, atomically: false, encoding: .utf8)
        let spec = try JobSpec.load(path: path)
        return try Plan(spec: spec, checkpoint: try Checkpoint(path: spec.model))
    }

    private let projections = 2 * 7

    func testIgnoreAddsToTheDefaultsAndTiedEmbeddingsStayUnlessNamed() throws {
        try config(tied: true)
        // llm-compressor's habit: ignore lm_head. The embeddings, tied to it, stay untouched.
        for ignore in ["['re:.*lm_head']", "[lm_head]"] {
            let p = try plan("sparsity: 0.5\nignore: \(ignore)\n")
            XCTAssertEqual(p.targets.count, projections, ignore)
            XCTAssertFalse(p.targets.contains { $0.name.contains("embed") }, ignore)
        }
        // Even with the defaults dropped and everything targeted, a regex never picks a tied table.
        let all = try plan("sparsity: 0.5\ntargets: ['re:.*']\nignore_defaults: false\n")
        XCTAssertFalse(all.targets.contains { $0.name == "model.embed_tokens.weight" || $0.name == "lm_head.weight" })
        XCTAssertTrue(all.warnings.isEmpty)
        // Named exactly, it is pruned, with a warning for the report.
        let named = try plan("sparsity: 0.5\ntargets: [model.embed_tokens.weight]\n")
        XCTAssertEqual(named.targets.map(\.name), ["model.embed_tokens.weight"])
        XCTAssertEqual(named.warnings.count, 1)
        XCTAssertTrue(named.warnings[0].contains("tied to the output head"), named.warnings[0])
        // Untied, the defaults still leave embeddings and head alone; dropping them prunes the head.
        try config(tied: false)
        let untied = try plan("sparsity: 0.5\ntargets: ['re:.*']\nignore_defaults: false\n")
        XCTAssertTrue(untied.targets.contains { $0.name == "lm_head.weight" })
        // The spec's own ignore wins over an exact target; the defaults do not.
        XCTAssertThrowsError(try plan("sparsity: 0.5\ntargets: [model.embed_tokens.weight]\nignore: [model.embed_tokens]\n")) {
            XCTAssertTrue("\($0)".contains("no prunable tensor matched"), "\($0)")
        }
    }

    func testLinearTargetsMaskStructureAndModuleNames() throws {
        try config(tied: false)
        let linear = try plan("sparsity: 0.5\ntargets: [Linear]\n")
        XCTAssertEqual(linear.targets.count, projections, "every projection; lm_head ignored by default")
        XCTAssertEqual(Set(linear.targets.map(\.name)), Set(try plan("sparsity: 0.5\n").targets.map(\.name)))
        let module = try plan("sparsity: 0.5\ntargets: [model.layers.1.mlp.down_proj]\n")
        XCTAssertEqual(module.targets.map(\.name), ["model.layers.1.mlp.down_proj.weight"])
        XCTAssertEqual(try plan("mask_structure: '2:4'\n").pattern, .nm(n: 2, m: 4))
        XCTAssertEqual(try plan("mask_structure: '0:0'\nsparsity: 0.3\n").pattern, .unstructured)
        XCTAssertThrowsError(try plan("mask_structure: '2:4'\npattern: '2:4'\n")) { XCTAssertTrue("\($0)".contains("not both"), "\($0)") }
        try config(tied: false, modelType: "gpt_neox")
        XCTAssertThrowsError(try plan("sparsity: 0.5\ntargets: [Linear]\n")) {
            XCTAssertTrue("\($0)".contains("'Linear' stands for the Linear layers of a known architecture"), "\($0)")
        }
    }

    func testRecipesTranslateOrNameWhatTheyCannotDo() throws {
        try config(tied: false)
        let recipe = """
            sparsity_stage:
              run_type: oneshot
              sparsity_modifiers:
                SparseGPTModifier:
                  sparsity: 0.5
                  mask_structure: "2:4"
                  targets: ["Linear"]
                  ignore: ["re:.*lm_head"]
                  dampening_frac: 0.02
                  block_size: 64
            """
        try recipe.write(toFile: dir.file("recipe.yaml"), atomically: false, encoding: .utf8)
        let spec = try JobSpec.parse(yaml: "model: m\noutput: job\nrecipe: recipe.yaml\ncalibration: {data: recipe.yaml}\n",
                                     file: "job.yaml", baseDirectory: dir.path)
        XCTAssertEqual(spec.method, .sparsegpt)
        XCTAssertEqual(spec.pattern, .nm(n: 2, m: 4))
        XCTAssertEqual(spec.sparsity, 0.5)
        XCTAssertEqual(spec.sparseGPT.damp, 0.02)
        XCTAssertEqual(spec.sparseGPT.blockSize, 64)
        XCTAssertEqual(spec.targets.map(\.text), ["Linear"])
        XCTAssertEqual(spec.ignore.map(\.text), JobSpec.defaultIgnore + ["re:.*lm_head"])
        func refused(_ body: String, _ text: String, spec extra: String = "", file: StaticString = #filePath, line: UInt = #line) {
            let yaml = "model: m\noutput: job\nrecipe:\n" + body.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n") + "\n" + extra
            XCTAssertThrowsError(try JobSpec.parse(yaml: yaml, file: "job.yaml", baseDirectory: dir.path), file: file, line: line) {
                XCTAssertTrue("\($0)".contains(text), "'\($0)' should contain '\(text)'", file: file, line: line)
            }
        }
        refused("stage:\n  quant_modifiers:\n    GPTQModifier: {scheme: W4A16}", "modifier 'GPTQModifier' is not supported")
        refused("stage:\n  mods:\n    WandaPruningModifier: {sparsity: 0.5, sparsty_profile: owl}", "unknown field 'WandaPruningModifier.sparsty_profile'")
        refused("WandaPruningModifier: {sparsity: 0.5, sparsity_profile: owl}", "sparsity_profile 'owl' is not supported yet")
        refused("MagnitudePruningModifier: {init_sparsity: 0.05, final_sparsity: 0.5, start: 0, end: 5}", "gradual schedules are not supported")
        refused("MagnitudePruningModifier: {final_sparsity: 0.5}\nWandaPruningModifier: {sparsity: 0.5}", "more than one modifier")
        refused("SparseGPTModifier: {sparsity: {re:.*: 0.5}}", "must be one number")
        refused("MagnitudePruningModifier: {final_sparsity: 0.5}", "'sparsity' is given both here and in the recipe", spec: "sparsity: 0.4\n")
        // A magnitude recipe runs without calibration.
        let magnitude = try JobSpec.parse(yaml: "model: m\noutput: job\nrecipe: {MagnitudePruningModifier: {final_sparsity: 0.3, mask_structure: '0:0'}}\n",
                                          file: "job.yaml", baseDirectory: dir.path)
        XCTAssertEqual(magnitude.method, .magnitude)
        XCTAssertEqual(magnitude.sparsity, 0.3)
    }

    /// Done when: an llm-compressor recipe with SparseGPTModifier runs as a job.
    func testASparseGPTRecipeRunsAsAJob() throws {
        try config(tied: false)
        var state: UInt64 = 7
        let ids: [Int32] = (0..<(8 * 16)).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32(state >> 33) % 48
        }
        try Data(Npy.int32(ids, shape: [8, 16])).write(to: URL(fileURLWithPath: dir.file("ids.npy")))
        try "SparseGPTModifier:\n  sparsity: 0.5\n  mask_structure: '2:4'\n  targets: [Linear]\n  ignore: [lm_head]\n"
            .write(toFile: dir.file("recipe.yaml"), atomically: false, encoding: .utf8)
        try "model: m\noutput: job\nrecipe: recipe.yaml\ncalibration: {data: ids.npy, samples: 8, tokens: 16, samples_per_task: 4}\n"
            .write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        let summary = try LocalRunner(spec: try JobSpec.load(path: dir.file("job.yaml")), quiet: true).run()
        let pruned = summary.manifest.tensors.filter(\.value.pruned)
        XCTAssertEqual(pruned.count, projections)
        XCTAssertTrue(pruned.values.allSatisfy { $0.method == "sparsegpt" && $0.pattern == "2:4" && $0.valuesUpdated })
        XCTAssertEqual(try Checker.check(original: dir.file("m"), output: dir.file("job")).failures, [])
    }
}
