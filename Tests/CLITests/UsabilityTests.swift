import Foundation
import Tensors
import TestSupport
import XCTest

/// What a user notices first: --version, help that shows a command's own options, a
/// suggestion for a misspelling, Ctrl-C, and a summary line that says how the model fared.
final class UsabilityTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("build the prune binary first (swift build)")
        }
    }

    func testVersionAndHelpOfEachCommandShowItsOwnOptions() throws {
        let version = try Subprocess.prune(["--version"])
        XCTAssertEqual(version.status, 0)
        XCTAssertTrue(version.stdout.hasPrefix("prune-cluster "), version.stdout)
        XCTAssertTrue(version.stdout.contains("protocol \(11)"), version.stdout)
        let worker = try Subprocess.prune(["worker", "--help"]).stdout
        XCTAssertTrue(worker.contains("--server-key"), worker)
        for foreign in ["--allow", "--max-attempts", "--max-refused-results"] { XCTAssertFalse(worker.contains(foreign), "worker --help shows \(foreign)") }
        let coordinator = try Subprocess.prune(["coordinator", "--help"]).stdout
        XCTAssertTrue(coordinator.contains("--allow") && coordinator.contains("--max-refused-results"), coordinator)
        XCTAssertFalse(coordinator.contains("--server-key"), coordinator)
        let root = try Subprocess.prune(["--help"]).stdout
        XCTAssertTrue(root.contains("Wanda") && root.contains("SparseGPT") && !root.contains("magnitude or random"), root)
    }

    func testMisspellingsSuggestTheNearestName() throws {
        let command = try Subprocess.prune(["rnu", "job.yaml"])
        XCTAssertEqual(command.status, 2)
        XCTAssertEqual(command.stderr.split(separator: "\n").count, 1, command.stderr)
        XCTAssertTrue(command.stderr.contains("did you mean 'run'?"), command.stderr)
        let dir = TempDir(); defer { dir.cleanup() }
        try "model: m\noutput: o\nsparsty: 0.5\ncalibration: {data: x, sampels: 3}\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        let key = try Subprocess.prune(["run", "job.yaml"], cwd: dir.path)
        XCTAssertEqual(key.status, 2)
        XCTAssertTrue(key.stderr.contains("unknown key 'sparsty'; did you mean 'sparsity'?"), key.stderr)
        try "model: m\noutput: o\nsparsity: 0.5\nmethod: wanda\ncalibration: {data: job.yaml, sampels: 3}\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        let nested = try Subprocess.prune(["run", "job.yaml"], cwd: dir.path)
        XCTAssertTrue(nested.stderr.contains("unknown key 'calibration.sampels'; did you mean 'calibration.samples'?"), nested.stderr)
        // Nothing near: no guess.
        try "model: m\noutput: o\nzzzzzz: 1\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        XCTAssertFalse(try Subprocess.prune(["run", "job.yaml"], cwd: dir.path).stderr.contains("did you mean"))
    }

    /// Ctrl-C stops a running job with status 130 and the way to continue it; the summary
    /// line of a job that evaluates ends with the perplexity.
    func testCtrlCStopsWith130AndTheSummaryEndsWithThePerplexity() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("model"), dtype: .f32, layers: 2, hidden: 64, intermediate: 128)
        try """
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48,
             "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false}
            """.write(toFile: dir.file("model/config.json"), atomically: false, encoding: .utf8)
        try Data(Npy.int32((0..<(4 * 32)).map { Int32($0 * 7 % 48) }, shape: [4, 32])).write(to: URL(fileURLWithPath: dir.file("eval.npy")))
        try "model: model\noutput: job\nmethod: random\npattern: per_row\nsparsity: 0.5\nevaluation: {data: eval.npy, samples: 4, tokens: 32}\n"
            .write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        let run = try Background(Subprocess.pruneBinary, ["run", "--workers", "1", "--task-weights", "512", "job.yaml"], cwd: dir.path,
                                 environment: ["PRUNE_TEST_TASK_DELAY_MS": "300"])
        XCTAssertTrue(Background.waitUntil(seconds: 30) { run.stderr.contains("joined") }, run.stderr)
        run.kill(SIGINT)
        XCTAssertEqual(run.wait(seconds: 30), 130, run.stderr)
        XCTAssertTrue(run.stderr.contains("prune: stopped by signal; continue with prune resume"), run.stderr)
        let resume = try Subprocess.prune(["resume", "-q", "job", "--task-weights", "512"], cwd: dir.path)
        XCTAssertEqual(resume.status, 0, resume.stderr)
        XCTAssertTrue(resume.stdout.range(of: #"; perplexity [0-9.]+ → [0-9.]+ \([0-9.]+× dense\)\n$"#, options: .regularExpression) != nil, resume.stdout)
    }
}
