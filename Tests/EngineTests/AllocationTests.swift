import Foundation
import Pruning
import TestSupport
import XCTest
@testable import Engine

/// `allocation:` in the spec, and the arithmetic of the levels.
final class AllocationTests: XCTestCase {
    private var dir: TempDir!

    override func setUp() {
        dir = TempDir()
        _ = FileManager.default.createFile(atPath: dir.file("ids.npy"), contents: Data([1]))
    }

    override func tearDown() { dir.cleanup() }

    private func spec(_ allocation: String, method: String = "wanda", sparsity: String = "sparsity: 0.7", pattern: String = "") throws -> JobSpec {
        let calibration = method == "magnitude" ? "" : "calibration: {data: ids.npy}\n"
        return try JobSpec.parse(yaml: "model: m\noutput: o\nmethod: \(method)\n\(sparsity)\n\(pattern)\(calibration)allocation: \(allocation)\n",
                                 file: "job.yaml", baseDirectory: dir.path)
    }

    private func assertRefused(_ allocation: String, method: String = "wanda", sparsity: String = "sparsity: 0.7", pattern: String = "",
                               _ text: String, line: UInt = #line) {
        XCTAssertThrowsError(try spec(allocation, method: method, sparsity: sparsity, pattern: pattern), line: line) { error in
            XCTAssertTrue(error is SpecError, line: line)
            XCTAssertTrue("\(error)".contains(text), "'\(error)' should contain '\(text)'", line: line)
            XCTAssertTrue("\(error)".hasPrefix("job.yaml:"), "names the file and line: \(error)", line: line)
        }
    }

    func testTheSpecTakesANameOrAMappingWithOWLDefaults() throws {
        XCTAssertEqual(try spec("uniform").allocation, Allocation())
        let owl = try spec("owl").allocation
        XCTAssertEqual(owl.method, .owl)
        XCTAssertEqual(owl.m, 5)
        XCTAssertEqual(owl.lambda, 0.08)
        let tuned = try spec("{method: owl, m: 7, lambda: 0.05, min: 0.3, max: 0.9}").allocation
        XCTAssertEqual([tuned.m, tuned.lambda, tuned.min, tuned.max], [7, 0.05, 0.3, 0.9])
        XCTAssertFalse(try spec("{method: owl}", method: "sparsegpt").allocation.method == .uniform)
    }

    func testBadAllocationsAreOneLineNamingTheKey() {
        assertRefused("owls", "allocation: unknown method 'owls'; did you mean 'owl'?")
        assertRefused("global", "allocation: 'global' is not available yet")
        assertRefused("{method: owl, mm: 5}", "unknown key 'allocation.mm'")
        assertRefused("{m: 5}", "allocation: needs a method")
        assertRefused("{method: owl, min: 0.8}", "allocation.min: 0.8 is above the target sparsity 0.7")
        assertRefused("{method: owl, max: 0.6}", "allocation.max: 0.6 is below the target sparsity 0.7")
        assertRefused("{method: owl, lambda: -0.1}", "allocation.lambda: '-0.1' must be a number in [0, 0.5]")
        assertRefused("{method: owl, m: .nan}", "allocation.m: '.nan' must be a number in (0, 1e6]")
        assertRefused("{method: owl, max: 1}", "allocation.max: '1' must be a fraction in [0, 1)")
        assertRefused("{method: uniform, lambda: 0.1}", "allocation.lambda: not used by allocation uniform")
        assertRefused("owl", method: "magnitude", "allocation: owl scores blocks with Wanda's calibration statistics")
        assertRefused("owl", sparsity: "", pattern: "pattern: '2:4'\n", "which pattern 2:4 fixes")
        assertRefused("owl", pattern: "pattern: rows_l2\n", "not built for pattern rows_l2")
    }

    /// SparseGPT's sweep picks the weights of a column block across all rows: a per-row
    /// or whole-row pattern would not hold, so it is refused, not silently broken.
    func testSparseGPTRefusesPatternsItsSweepCannotKeep() {
        for pattern in ["per_row", "rows_l1"] {
            assertRefused("uniform", method: "sparsegpt", pattern: "pattern: \(pattern)\n", "pattern: \(pattern) is not available with method sparsegpt")
        }
        XCTAssertNoThrow(try spec("uniform", method: "sparsegpt", sparsity: "", pattern: "pattern: '2:4'\n"))
    }

    /// The reference's arithmetic (luuyin/OWL lib/prune_all.py), written out by hand for
    /// three equal blocks: ratios 0.01, 0.03, 0.02 at target 0.7, λ = 0.08.
    func testOWLLevelsFollowTheReferenceFormula() throws {
        let levels = try LayerAllocation.owl(outlierRatios: [0.01, 0.03, 0.02], weights: [1, 1, 1], target: 0.7, lambda: 0.08, minimum: 0, maximum: 0.99)
        // normalised: [0, 0.16, 0.08]; minus the mean 0.08, plus density 0.3: [0.22, 0.38, 0.30].
        XCTAssertEqual(levels[0], 0.78, accuracy: 1e-12)
        XCTAssertEqual(levels[1], 0.62, accuracy: 1e-12)
        XCTAssertEqual(levels[2], 0.70, accuracy: 1e-12)
        // Equal ratios: the target everywhere.
        XCTAssertEqual(try LayerAllocation.owl(outlierRatios: [0.02, 0.02], weights: [1, 3], target: 0.6, lambda: 0.08, minimum: 0, maximum: 0.99), [0.6, 0.6])
    }

    func testClampedLevelsAreShiftedBackToTheWeightedTarget() throws {
        let levels = try LayerAllocation.owl(outlierRatios: [0.0, 0.5, 1.0, 0.25], weights: [1, 2, 1, 4], target: 0.5, lambda: 0.3,
                                             minimum: 0.35, maximum: 0.7)
        XCTAssertTrue(levels.allSatisfy { $0 >= 0.35 && $0 <= 0.7 }, "\(levels)")
        let mean = zip(levels, [1.0, 2, 1, 4]).reduce(0) { $0 + $1.0 * $1.1 } / 8
        XCTAssertEqual(mean, 0.5, accuracy: 1e-12)
        // Most outliers, least sparse; the order of the ratios is kept.
        XCTAssertEqual(levels.indices.sorted { levels[$0] > levels[$1] }, [0, 3, 1, 2])
        XCTAssertThrowsError(try LayerAllocation.rebalanced([0.5], weights: [1], target: 0.8, minimum: 0, maximum: 0.7))
    }
}
