import Pruning
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
