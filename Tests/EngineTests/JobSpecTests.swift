import Foundation
import Pruning
import TestSupport
import Tensors
import XCTest
@testable import Engine

final class JobSpecTests: XCTestCase {
    private func parse(_ yaml: String) throws -> JobSpec {
        try JobSpec.parse(yaml: yaml, file: "job.yaml", baseDirectory: "/base")
    }

    private func assertSpecError(_ yaml: String, _ text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(yaml), file: file, line: line) { error in
            XCTAssertTrue(error is SpecError, file: file, line: line)
            XCTAssertTrue("\(error)".contains(text), "'\(error)' should contain '\(text)'", file: file, line: line)
        }
    }

    func testDefaultsAndRelativePaths() throws {
        let s = try parse("model: m\noutput: /abs/job\nsparsity: 0.5\n")
        XCTAssertEqual(s.model, "/base/m")
        XCTAssertEqual(s.output, "/abs/job")
        XCTAssertEqual(s.method, .magnitude)
        XCTAssertEqual(s.pattern, .unstructured)
        XCTAssertEqual(s.ignore.map(\.text), JobSpec.defaultIgnore)
        XCTAssertEqual(s.digest.count, 64)
        let nm = try parse("model: m\noutput: o\npattern: '2:4'\n")
        XCTAssertEqual(nm.sparsity, 0.5, "N:M implies its sparsity")
    }

    func testErrorsNameTheKeyAndLine() {
        assertSpecError("model: m\noutput: o\nsparsty: 0.5\n", "job.yaml:3: unknown key 'sparsty'")
        assertSpecError("model: m\noutput: o\nsparsity: 1.5\n", "sparsity: 1.5 is outside [0, 1)")
        assertSpecError("model: m\noutput: o\nsparsity: -0.1\n", "outside [0, 1)")
        assertSpecError("model: m\noutput: o\nsparsity: half\n", "is not a number")
        assertSpecError("model: m\noutput: o\npattern: '4:4'\n", "N:M needs 0 ≤ N < M")
        assertSpecError("model: m\noutput: o\npattern: '0:4'\n", "would prune every weight")
        assertSpecError("model: m\noutput: o\npattern: '2:4'\nsparsity: 0.7\n", "disagrees with pattern 2:4")
        assertSpecError("output: o\nsparsity: 0.5\n", "missing required key 'model'")
        assertSpecError("model: m\noutput: o\n", "missing required key 'sparsity'")
        assertSpecError("model: m\noutput: o\nsparsity: 0.5\nmethod: wanda2\n", "method: 'wanda2' is not one of")
        assertSpecError("model: m\noutput: o\nsparsity: 0.5\ntargets: ['re:(']\n", "not a valid regular expression")
        assertSpecError("model: m\noutput: o\nsparsity: 0.5\ntargets: x\n", "must be a list")
        assertSpecError("- a\n- b\n", "must be a mapping")
        assertSpecError("model: [\n", "not valid YAML")
    }

    func testNamePatternsMatchLikePythonReMatch() throws {
        let p = try NamePattern("re:.*lm_head")
        XCTAssertTrue(p.matches("lm_head.weight"))
        XCTAssertFalse(p.matches("model.norm.weight"))
        let exact = try NamePattern("a.weight")
        XCTAssertTrue(exact.matches("a.weight"))
        XCTAssertFalse(exact.matches("a.weight2"))
    }
}

/// Bounds checked while parsing, before anything is read or allocated.
final class JobSpecLimitTests: XCTestCase {
    private func assertSpecError(_ yaml: String, _ text: String, base: String = "/base", file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try JobSpec.parse(yaml: yaml, file: "job.yaml", baseDirectory: base), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(text), "'\(error)' should contain '\(text)'", file: file, line: line)
        }
    }

    func testPatternListsAreBounded() throws {
        let many = (0...JobSpec.Limits.patternEntries).map { "  - t\($0)" }.joined(separator: "\n")
        assertSpecError("model: m\noutput: o\nsparsity: 0.5\nignore:\n\(many)\n", "'ignore' has 100001 entries, more than the limit of 100000")
        let long = String(repeating: "x", count: 5000)
        assertSpecError("model: m\noutput: o\nsparsity: 0.5\ntargets: ['\(long)']\n", "an entry of 5000 bytes is longer than the limit of 1024")
        let regexes = (0...JobSpec.Limits.regexEntries).map { "  - re:a\($0)" }.joined(separator: "\n")
        assertSpecError("model: m\noutput: o\nsparsity: 0.5\ntargets:\n\(regexes)\n", "more than 1000 re: entries")
        let heavy = (0..<20).map { _ in "  - 're:(a{1,400})'" }.joined(separator: "\n")
        assertSpecError("model: m\noutput: o\nsparsity: 0.5\ntargets:\n\(heavy)\n", "compile to more than 10000 states")
        // Many exact names are fine: they are looked up in a set.
        let names = (0..<50_000).map { "  - model.layers.\($0).mlp.up_proj.weight" }.joined(separator: "\n")
        XCTAssertEqual(try JobSpec.parse(yaml: "model: m\noutput: o\nsparsity: 0.5\nignore:\n\(names)\n", file: "job.yaml", baseDirectory: "/base").explicitIgnore.count, 50_000)
    }

    func testCalibrationAndEvaluationSizesAreBounded() {
        let dir = TempDir(); defer { dir.cleanup() }
        _ = FileManager.default.createFile(atPath: dir.file("ids.npy"), contents: Data([1]))
        func calibration(_ body: String) -> String { "model: m\noutput: o\nmethod: wanda\nsparsity: 0.5\ncalibration: {data: ids.npy, \(body)}\n" }
        assertSpecError(calibration("samples: 2147483648"), "calibration.samples: 2147483648 is more than the limit of 65536", base: dir.path)
        assertSpecError(calibration("tokens: 9999999999"), "calibration.tokens: 9999999999 is more than the limit of 131072", base: dir.path)
        assertSpecError(calibration("samples: 4096, tokens: 4096"), "samples × tokens = 4096 × 4096 is more than the limit of 4194304", base: dir.path)
        assertSpecError(calibration("samples: 64, tokens: 4096, samples_per_task: 64"), "samples_per_task × tokens = 64 × 4096 is more than the limit of 131072", base: dir.path)
        assertSpecError(calibration("samples: -1"), "calibration.samples: must be an integer ≥ 1", base: dir.path)
        let evaluation = "model: m\noutput: o\nsparsity: 0.5\nevaluation: {data: ids.npy, samples: 1000, tokens: 4096}\n"
        assertSpecError(evaluation, "evaluation: samples × tokens = 1000 × 4096 is more than the limit of 1048576", base: dir.path)
        assertSpecError("model: m\noutput: o\nsparsity: 0.5\nevaluation: {data: ids.npy, tokens: 100000}\n", "evaluation.tokens: 100000 is more than the limit of 32768", base: dir.path)
        XCTAssertNoThrow(try JobSpec.parse(yaml: calibration("samples: 128, tokens: 2048, samples_per_task: 32"), file: "job.yaml", baseDirectory: dir.path))
    }

    func testOutputMayNotOverlapTheModel() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try FileManager.default.createDirectory(atPath: dir.file("model"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir.file("alias"), withDestinationPath: dir.file("model"))
        assertSpecError("model: model\noutput: model/job\nsparsity: 0.5\n", "output: \(dir.file("model/job")) is inside the model directory", base: dir.path)
        assertSpecError("model: model\noutput: alias/deeper/job\nsparsity: 0.5\n", "is inside the model directory", base: dir.path)
        assertSpecError("model: model\noutput: model\nsparsity: 0.5\n", "is the model directory itself", base: dir.path)
        assertSpecError("model: job/out/dense\noutput: job\nsparsity: 0.5\n", "is inside the output directory", base: dir.path)
        XCTAssertNoThrow(try JobSpec.parse(yaml: "model: model\noutput: model-job\nsparsity: 0.5\n", file: "job.yaml", baseDirectory: dir.path))
        // Beside a single-file checkpoint is fine: its directory is not the checkpoint.
        XCTAssertNoThrow(try JobSpec.parse(yaml: "model: model/m.safetensors\noutput: model/job\nsparsity: 0.5\n", file: "job.yaml", baseDirectory: dir.path))
    }

    func testOversizedOrSpecialSpecFilesAreRefusedBeforeReading() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let big = dir.file("big.yaml")
        _ = FileManager.default.createFile(atPath: big, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
        try handle.truncate(atOffset: UInt64(JobSpec.Limits.specBytes + 1))
        try handle.close()
        XCTAssertThrowsError(try JobSpec.load(path: big)) { XCTAssertTrue("\($0)".contains("the job spec is 16777217 bytes, more than the limit of 16 MiB"), "\($0)") }
        XCTAssertThrowsError(try JobSpec.load(path: "/dev/zero")) { XCTAssertTrue("\($0)".contains("the job spec is not a regular file"), "\($0)") }
        XCTAssertThrowsError(try JobSpec.load(path: dir.file("missing.yaml"))) { XCTAssertTrue("\($0)".contains("cannot read the job spec: No such file or directory"), "\($0)") }
    }
}
