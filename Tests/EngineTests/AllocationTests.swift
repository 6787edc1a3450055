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
        let calibration = ["magnitude", "random"].contains(method) ? "" : "calibration: {data: ids.npy}\n"
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
        XCTAssertEqual(try spec("global", method: "magnitude").allocation.method, .global)
    }

    /// evolutionary: EvoPress's search at a budget for one small machine, every key tunable.
    func testEvolutionaryTakesItsBudget() throws {
        let a = try spec("evolutionary").allocation
        XCTAssertEqual(a.method, .evolutionary)
        XCTAssertEqual([a.generations, a.offspring, a.levels], [40, 8, 8])
        XCTAssertEqual(a.survivors, [2, 1])
        XCTAssertEqual(a.tokens, [512, 2048])
        XCTAssertEqual(a.tokensPerTask, 1024)
        let tuned = try spec("{method: evolutionary, generations: 5, offspring: 16, survivors: [4, 2, 1], tokens: [256, 1024, 4096], tokens_per_task: 512, levels: 4, seed: 9, lambda: 0.1}").allocation
        XCTAssertEqual(tuned.tokensPerTask, 512)
        XCTAssertEqual([tuned.generations, tuned.offspring, tuned.levels], [5, 16, 4])
        XCTAssertEqual(tuned.survivors, [4, 2, 1])
        XCTAssertEqual(tuned.tokens, [256, 1024, 4096])
        XCTAssertEqual(tuned.seed, 9)
        XCTAssertEqual(tuned.lambda, 0.1)
        // EvoPress's step: 0.5 · min(s, 1 − s) / levels × hidden² (SmolLM2: hidden 576, s 0.7).
        XCTAssertEqual(a.stepWeights(target: 0.7, hidden: 576), 0.5 * 0.3 / 8 * 576 * 576, accuracy: 1e-9)
    }

    func testErrorBudgetMeasuresEveryStepBetweenItsBounds() throws {
        let a = try spec("error_budget").allocation
        XCTAssertEqual(a.method, .errorBudget)
        XCTAssertEqual(a.error, .output)
        XCTAssertEqual(a.curveLevels.count, 21)
        XCTAssertEqual(a.curveLevels.first, 0)
        XCTAssertEqual(a.curveLevels.last, 0.99)
        let tuned = try spec("{method: error_budget, step: 0.1, min: 0.42, max: 0.9, error: absolute}").allocation
        XCTAssertEqual(tuned.error, .absolute)
        // The bounds, and the multiples of the step strictly between them.
        XCTAssertEqual(tuned.curveLevels.count, 6)
        for (level, expected) in zip(tuned.curveLevels, [0.42, 0.5, 0.6, 0.7, 0.8, 0.9]) { XCTAssertEqual(level, expected, accuracy: 1e-12) }
    }

    func testBadAllocationsAreOneLineNamingTheKey() {
        assertRefused("owls", "allocation: unknown method 'owls'; did you mean 'owl'?")
        assertRefused("evolutionary", method: "magnitude", "allocation: evolutionary scores candidates by the KL divergence")
        assertRefused("{method: evolutionary, survivors: [2, 1], tokens: [256]}", "allocation.survivors: 2 stages, but allocation.tokens gives 1")
        assertRefused("{method: evolutionary, survivors: [4, 2]}", "allocation.survivors: [4, 2] must shrink to 1")
        assertRefused("{method: evolutionary, offspring: 3, survivors: [4, 1]}", "starting at most offspring (3)")
        assertRefused("{method: evolutionary, tokens: [512, 100000]}", "allocation.tokens: [512, 100000] must grow and stay within the calibration set's 16384 tokens")
        assertRefused("{method: evolutionary, tokens: [2048, 512]}", "must grow")
        assertRefused("{method: evolutionary, generations: -1}", "allocation.generations: '-1' must be an integer in [0, 100000]")
        assertRefused("{method: evolutionary, survivors: []}", "allocation.survivors: must be a list of 1 to 8 integers")
        assertRefused("{method: evolutionary, levels: 200}", "allocation.levels: '200' must be an integer in [1, 100]")
        assertRefused("{method: evolutionary, tokens_per_task: 0}", "allocation.tokens_per_task: '0' must be an integer in [1, 262144]")
        assertRefused("{method: evolutionary, seed: -3}", "allocation.seed: '-3' must be an integer ≥ 0")
        assertRefused("{method: evolutionary, step: 0.1}", "allocation.step: not used by allocation evolutionary")
        assertRefused("evolutionary", sparsity: "sparsity: 0", "around the target sparsity, which is 0")
        assertRefused("{method: owl, generations: 3}", "allocation.generations: not used by allocation owl")
        assertRefused("evolutionary", sparsity: "", pattern: "pattern: '2:4'\n", "allocation: evolutionary sets a sparsity per layer")
        assertRefused("{method: global, m: 3}", "allocation.m: not used by allocation global")
        assertRefused("global", method: "random", "allocation: global compares scores across layers")
        assertRefused("{method: owl, step: 0.1}", "allocation.step: not used by allocation owl")
        assertRefused("{method: error_budget, lambda: 0.1}", "allocation.lambda: not used by allocation error_budget")
        assertRefused("{method: error_budget, step: 0.001}", "allocation.step: '0.001' must be a fraction in [0.005, 0.25]")
        assertRefused("{method: error_budget, error: squared}", "allocation.error: 'squared' must be one of output, uniform, absolute")
        assertRefused("{method: error_budget, max: 0.6}", "allocation.max: 0.6 is below the target sparsity 0.7")
        assertRefused("error_budget", method: "magnitude", "allocation: error_budget measures each layer's error on calibration inputs")
        assertRefused("error_budget", sparsity: "", pattern: "pattern: '2:4'\n", "allocation: error_budget sets a sparsity per layer")
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

    /// The knapsack over the curves' hulls against every grid allocation that meets the
    /// target: with convex curves and equal units the optimum lies on the grid, so the two
    /// agree; the chosen levels always meet the weighted target exactly.
    func testErrorBudgetFindsTheLeastTotalErrorThatMeetsTheTarget() throws {
        let levels = [0, 0.25, 0.5, 0.75]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            // Convex curves: cumulative sums of rising increments.
            let curves = (0..<3).map { _ -> [Double] in
                let steps = (0..<3).map { _ in Double.random(in: 0...1, using: &rng) }.sorted()
                return [0, steps[0], steps[0] + steps[1], steps[0] + steps[1] + steps[2]]
            }
            let chosen = try LayerAllocation.errorBudget(curves: curves, levels: levels, weights: [1, 1, 1], target: 0.5)
            XCTAssertEqual(chosen.reduce(0, +) / 3, 0.5, accuracy: 1e-12)
            var best = Double.infinity
            for a in 0..<4 { for b in 0..<4 { for c in 0..<4 where a + b + c == 6 { best = min(best, curves[0][a] + curves[1][b] + curves[2][c]) } } }
            // The total error of the chosen levels, read off each curve (on the grid here).
            let total = zip(curves, chosen).reduce(0.0) { sum, pair in
                let k = try! XCTUnwrap(levels.firstIndex { abs($0 - pair.1) < 1e-9 }, "\(chosen) on the grid")
                return sum + pair.0[k]
            }
            XCTAssertEqual(total, best, accuracy: 1e-12, "\(curves) → \(chosen)")
        }
    }

    /// Unequal units share the target by weight; a bump above the hull is never a stop;
    /// a unit whose error does not grow takes the most; bad input is refused.
    func testErrorBudgetWeighsUnitsAndUsesTheHull() throws {
        let levels = [0.0, 0.5, 0.9]
        // Unit 0 costs nothing up to 0.9; unit 1 is steep; unit 0 is 3× unit 1's size.
        let chosen = try LayerAllocation.errorBudget(curves: [[0, 0, 0], [0, 5, 50]], levels: levels, weights: [3, 1], target: 0.7)
        XCTAssertEqual(chosen[0], 0.9, accuracy: 1e-12)
        XCTAssertEqual((3 * chosen[0] + chosen[1]) / 4, 0.7, accuracy: 1e-12)
        // A curve with a bump at 0.5 (above the chord from 0 to 0.9): its hull goes straight
        // to 0.9, so at target 0.45 the level is part of that segment, and the other unit's
        // steeper curve stays at 0.
        let hull = try LayerAllocation.errorBudget(curves: [[0, 9, 9], [0, 100, 200]], levels: levels, weights: [1, 1], target: 0.45)
        XCTAssertEqual(hull[0], 0.9, accuracy: 1e-12)
        XCTAssertEqual(hull[1], 0.0, accuracy: 1e-12)
        XCTAssertThrowsError(try LayerAllocation.errorBudget(curves: [[0, 1, 2]], levels: levels, weights: [1], target: 0.95))
        XCTAssertThrowsError(try LayerAllocation.errorBudget(curves: [[0, .nan, 2]], levels: levels, weights: [1], target: 0.5))
        XCTAssertThrowsError(try LayerAllocation.errorBudget(curves: [[0, 1]], levels: levels, weights: [1], target: 0.5))
        XCTAssertThrowsError(try LayerAllocation.errorBudget(curves: [[0, 1, 2]], levels: [0, 0.9, 0.5], weights: [1], target: 0.5))
    }

    private func refineSpec(_ refine: String, method: String = "wanda", pattern: String = "") throws -> JobSpec {
        let calibration = method == "magnitude" ? "" : "calibration: {data: ids.npy}\n"
        return try JobSpec.parse(yaml: "model: m\noutput: o\nmethod: \(method)\nsparsity: 0.5\n\(pattern)\(calibration)refine: \(refine)\n",
                                 file: "job.yaml", baseDirectory: dir.path)
    }

    func testRefineTakesAMethodOrAMappingAndRefusesWhatItCannotServe() throws {
        XCTAssertEqual(try refineSpec("swap").refine, Refine())
        XCTAssertEqual(try refineSpec("true").refine, Refine())
        XCTAssertNil(try refineSpec("false").refine)
        XCTAssertEqual(try refineSpec("{method: swap, swaps: 7}").refine?.swaps, 7)
        for (refine, method, pattern, text) in [
            ("swop", "wanda", "", "refine: unknown method 'swop'"),
            ("{swaps: 0}", "wanda", "", "refine.swaps: must be an integer ≥ 1"),
            ("{swaps: 5, rounds: 2}", "wanda", "", "unknown key 'refine.rounds'"),
            ("swap", "sparsegpt", "", "refine: swaps keep the layer's weights and need its calibration inputs; use method wanda (sparsegpt updates the kept weights)"),
            ("swap", "magnitude", "", "use method wanda (magnitude has no calibration)"),
            ("swap", "wanda", "pattern: rows_l2\n", "refine: swaps keep each row's count"),
        ] {
            XCTAssertThrowsError(try refineSpec(refine, method: method, pattern: pattern)) { error in
                XCTAssertTrue("\(error)".contains(text) && "\(error)".hasPrefix("job.yaml:"), "'\(error)' should contain '\(text)'")
            }
        }
    }

    private func reconstructSpec(_ reconstruct: String, method: String = "wanda", pattern: String = "", extra: String = "",
                                 mode: String = "sequential") throws -> JobSpec {
        let calibration = method == "magnitude" ? "" : "calibration: {data: ids.npy, mode: \(mode)}\n"
        return try JobSpec.parse(yaml: "model: m\noutput: o\nmethod: \(method)\nsparsity: 0.5\n\(pattern)\(calibration)\(extra)reconstruct: \(reconstruct)\n",
                                 file: "job.yaml", baseDirectory: dir.path)
    }

    func testReconstructTakesAScopeOrAMappingAndRefusesWhatItCannotServe() throws {
        XCTAssertEqual(try reconstructSpec("layer").reconstruct, Reconstruct())
        XCTAssertEqual(try reconstructSpec("true").reconstruct, Reconstruct())
        XCTAssertNil(try reconstructSpec("false").reconstruct)
        XCTAssertEqual(try reconstructSpec("{scope: layer, damp: 0.1}").reconstruct?.damp, 0.1)
        XCTAssertTrue(try reconstructSpec("layer", method: "sparsegpt").updatesKeptWeights)
        XCTAssertTrue(try reconstructSpec("layer", extra: "refine: swap\n").updatesKeptWeights)
        XCTAssertFalse(try reconstructSpec("false").updatesKeptWeights)
        let block = try XCTUnwrap(try reconstructSpec("{scope: block, epochs: 2, learning_rate: 0.001}", mode: "dense").reconstruct)
        XCTAssertEqual([block.scope.rawValue, "\(block.epochs)", "\(block.learningRate)"], ["block", "2", "0.001"])
        XCTAssertEqual(try reconstructSpec("block", mode: "dense").reconstruct?.epochs, Reconstruct().epochs)
        XCTAssertEqual(try reconstructSpec("block", mode: "dense").reconstruct?.cosine, false)
        XCTAssertEqual(try reconstructSpec("{scope: block, lr_schedule: cosine}").reconstruct?.cosine, true)
        XCTAssertEqual(try reconstructSpec("{scope: block, tasks_per_step: 4}").reconstruct?.tasksPerStep, 4)
        XCTAssertThrowsError(try reconstructSpec("{scope: block, tasks_per_step: 2}", mode: "dense")) { error in
            XCTAssertTrue("\(error)".contains("reconstruct.tasks_per_step: for calibration mode sequential"), "\(error)")
        }
        for (reconstruct, method, pattern, text) in [
            ("blocks", "wanda", "", "reconstruct: unknown scope 'blocks' (known: layer, block)"),
            ("{scope: model}", "wanda", "", "reconstruct.scope: 'model' is not one of layer, block"),
            ("{scope: block, tasks_per_step: 0}", "wanda", "", "reconstruct.tasks_per_step: must be an integer ≥ 1"),
            ("{scope: block, tasks_per_step: 9}", "wanda", "", "reconstruct.tasks_per_step"),
            ("{scope: layer, epochs: 2}", "wanda", "", "reconstruct: epochs, learning_rate, lr_schedule and tasks_per_step are for scope block"),
            ("{scope: layer, tasks_per_step: 2}", "wanda", "", "reconstruct: epochs, learning_rate, lr_schedule and tasks_per_step are for scope block"),
            ("{scope: layer, lr_schedule: cosine}", "wanda", "", "reconstruct: epochs, learning_rate, lr_schedule and tasks_per_step are for scope block"),
            ("{scope: block, lr_schedule: linear}", "wanda", "", "reconstruct.lr_schedule: must be constant or cosine"),
            ("{scope: block, epochs: 0}", "wanda", "", "reconstruct.epochs: must be an integer ≥ 1"),
            ("{scope: block, epochs: 1001}", "wanda", "", "reconstruct.epochs"),
            ("{scope: block, learning_rate: 0}", "wanda", "", "reconstruct.learning_rate: must be a finite number in (0, 1]"),
            ("{scope: block, learning_rate: .inf}", "wanda", "", "reconstruct.learning_rate: must be a finite number in (0, 1]"),
            ("{damp: 0}", "wanda", "", "reconstruct.damp: must be a number in (0, 1]"),
            ("{damp: .nan}", "wanda", "", "reconstruct.damp: must be a number in (0, 1]"),
            ("{scope: layer, rounds: 2}", "wanda", "", "unknown key 'reconstruct.rounds'"),
            ("layer", "magnitude", "", "reconstruct: re-fitting a layer needs its calibration inputs; use method wanda or sparsegpt (magnitude has no calibration; with pattern channels, heads or heads+channels every unit score can be re-fit)"),
            ("layer", "wanda", "pattern: rows_l2\n", "reconstruct: pattern rows_l2 keeps whole rows unchanged"),
        ] {
            XCTAssertThrowsError(try reconstructSpec(reconstruct, method: method, pattern: pattern)) { error in
                XCTAssertTrue("\(error)".contains(text) && "\(error)".hasPrefix("job.yaml:"), "'\(error)' should contain '\(text)'")
            }
        }
    }
}
