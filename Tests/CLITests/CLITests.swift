import Foundation
import Tensors
import TestSupport
import XCTest

/// Runs the real `prune` binary as a user would.
final class CLITests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            XCTFail("build the prune binary first (swift build): \(Subprocess.pruneBinary)")
            return
        }
    }

    private func requirePython() throws {
        if !Subprocess.pythonHasSafetensors {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy, safetensors and ml_dtypes is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with numpy, safetensors and ml_dtypes not installed")
        }
    }

    func testRunCheckInspectDensifyAndPythonSeesThePromisedZeros() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("model"), dtype: .bf16, shards: 2, layers: 2, hidden: 64, intermediate: 128)
        try "model: model\noutput: job\nmethod: magnitude\nsparsity: 0.5\npattern: unstructured\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)

        let run = try Subprocess.prune(["run", "job.yaml"], cwd: dir.path)
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("14 tensors pruned"), run.stdout)
        XCTAssertTrue(run.stderr.contains("prune 14/14"), "plain progress lines when not a TTY: \(run.stderr)")

        let check = try Subprocess.prune(["check", "model", "job"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("check passed"), check.stdout)

        let inspect = try Subprocess.prune(["inspect", "job/out/dense"], cwd: dir.path)
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("model.layers.1.mlp.down_proj.weight"))
        XCTAssertTrue(inspect.stdout.contains("50.00%"), inspect.stdout)

        let densify = try Subprocess.prune(["densify", "job/out/sparse", "rebuilt"], cwd: dir.path)
        XCTAssertEqual(densify.status, 0, densify.stderr)
        for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", Checkpoint.indexFileName] {
            XCTAssertEqual(FileManager.default.contents(atPath: dir.file("rebuilt/" + shard)),
                           FileManager.default.contents(atPath: dir.file("job/out/dense/" + shard)), shard)
        }

        try requirePython()
        let py = try XCTUnwrap(try Subprocess.python("check_pruned.py", [dir.file("model"), dir.file("job/out")]))
        XCTAssertEqual(py.status, 0, py.stdout + py.stderr)
        XCTAssertTrue(py.stdout.contains("ok: 14 pruned tensors"), py.stdout)
    }

    func testCheckExitsOneWhenTheOutputIsWrong() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("model"))
        try "model: model\noutput: job\nsparsity: 0.5\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        XCTAssertEqual(try Subprocess.prune(["run", "-q", "job.yaml"], cwd: dir.path).status, 0)
        // Checking against another model: every pruned tensor's kept weights differ.
        try SyntheticModel.write(to: dir.file("other"), seed: 99)
        let check = try Subprocess.prune(["check", "other", "job"], cwd: dir.path)
        XCTAssertEqual(check.status, 1, check.stdout)
        XCTAssertTrue(check.stdout.contains("FAIL tensor"), check.stdout)
    }

    func testBadInputExitsTwoWithOneLineAndWritesNothing() throws {
        try requirePython()
        let dir = TempDir(); defer { dir.cleanup() }
        let r = try XCTUnwrap(try Subprocess.python("hostile.py", [dir.file("cases")]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let expected = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("cases/expected.json")))) as! [String: String]
        XCTAssertGreaterThanOrEqual(expected.count, 15)
        for (name, text) in expected.sorted(by: { $0.key < $1.key }) {
            let spec = "model: cases/\(name)\noutput: out-\(name)\nsparsity: 0.5\ntargets: ['re:.*weight']\nignore: []\n"
            try spec.write(toFile: dir.file("\(name).yaml"), atomically: false, encoding: .utf8)
            let run = try Subprocess.prune(["run", "\(name).yaml"], cwd: dir.path)
            XCTAssertEqual(run.status, 2, "\(name): \(run.stderr)")
            let lines = run.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "\(name): one line, got \(run.stderr)")
            XCTAssertTrue(run.stderr.lowercased().contains(text), "\(name): '\(run.stderr)' should contain '\(text)'")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("out-\(name)")), "\(name): nothing written")
            let inspect = try Subprocess.prune(["inspect", "cases/\(name)"], cwd: dir.path)
            if !["nan_weights", "inf_weights"].contains(name) {
                XCTAssertEqual(inspect.status, 2, "inspect \(name)")
            }
        }
    }

    func testUsageErrorsAndUnwritableOutputExitTwo() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        XCTAssertEqual(try Subprocess.prune(["frobnicate"]).status, 2)
        XCTAssertEqual(try Subprocess.prune(["run"]).status, 2)
        XCTAssertEqual(try Subprocess.prune(["run", dir.file("missing.yaml")]).status, 2)
        XCTAssertEqual(try Subprocess.prune(["--help"]).status, 0)
        XCTAssertEqual(try Subprocess.prune([]).status, 2, "no subcommand is a usage error")
        try SyntheticModel.write(to: dir.file("model"))
        try "model: model\noutput: /proc/prune-cannot-write-here/job\nsparsity: 0.5\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        let run = try Subprocess.prune(["run", "job.yaml"], cwd: dir.path)
        XCTAssertEqual(run.status, 2, run.stderr)
        XCTAssertTrue(run.stderr.contains("output:"), run.stderr)
        XCTAssertEqual(run.stderr.split(separator: "\n").count, 1, run.stderr)
    }
}
