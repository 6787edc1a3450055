import Foundation
import XCTest
@testable import Pruning

/// The level grid, the one-byte-per-weight level database and the search's steps.
final class EvolutionarySearchTests: XCTestCase {
    /// Every level's mask read from the database is the mask MaskSelection makes at that
    /// level's sparsity (ties included), for per-row and whole-tensor comparison.
    func testTheDatabaseHoldsEveryLevelsMask() throws {
        var rng = SeededNormal(seed: 5)
        let rows = 12, cols = 40
        // Rounded scores so ties occur.
        let scores: [Float] = (0..<(rows * cols)).map { _ in (abs(rng.next()) * 8).rounded() / 8 }
        let sparsities = [0.1, 0.25, 0.3, 0.5, 0.5, 0.7, 0.9]
        for pattern in [SparsityPattern.perRow, .unstructured] {
            let database = try scores.withUnsafeBufferPointer {
                try LevelDatabase.build(scores: $0, rows: rows, cols: cols, pattern: pattern, sparsities: sparsities)
            }
            XCTAssertEqual(database.count, rows * cols)
            for (p, s) in sparsities.enumerated() {
                let expected = try scores.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: pattern, sparsity: s) }
                var ones = [Float](repeating: 1, count: rows * cols)
                let pruned = LevelDatabase.apply(database, position: p, to: &ones)
                XCTAssertEqual(pruned, rows * cols - expected.keptCount, "\(pattern) at \(s)")
                for i in 0..<(rows * cols) {
                    XCTAssertEqual(ones[i] != 0, expected[i / cols, i % cols], "\(pattern) at \(s), weight \(i)")
                }
            }
            // Nothing is pruned below the first level's count, everything above the last kept.
            XCTAssertTrue(database.contains(LevelDatabase.never))
        }
        XCTAssertThrowsError(try scores.withUnsafeBufferPointer {
            try LevelDatabase.build(scores: $0, rows: rows, cols: cols, pattern: .perRow, sparsities: [0.5, 0.4])
        })
    }

    /// EvoPress's grid: Δ weights per step in every layer, bounded by `levels` and by
    /// [min, max]; projection keeps the total and lands near the fractions asked.
    func testTheGridKeepsTheTotalAndProjectsNearby() throws {
        let weights = [1000, 3000, 500, 8000]
        let grid = LevelGrid(weights: weights, target: 0.6, stepWeights: 50, levels: 8, minimum: 0.3, maximum: 0.75)
        // 500 weights: 0.1 per step, so [0.3, 0.75] allows 3 down, 1 up.
        XCTAssertEqual(grid.lowest, [-6, -8, -3, -8])
        XCTAssertEqual(grid.highest, [3, 8, 1, 8])
        for i in weights.indices {
            for l in grid.lowest[i]...grid.highest[i] {
                let pruned = grid.sparsity(layer: i, level: l) * Double(weights[i])
                XCTAssertEqual(pruned - 0.6 * Double(weights[i]), Double(l) * 50, accuracy: 1e-9)
            }
        }
        XCTAssertTrue(grid.isValid([1, -2, 1, 0]))
        XCTAssertFalse(grid.isValid([1, -1, 1, 0]), "the total changes")
        XCTAssertFalse(grid.isValid([0, 0, 2, -2]), "above the 500-weight layer's highest level")
        let projected = grid.project([0.7, 0.55, 0.4, 0.6125])
        XCTAssertTrue(grid.isValid(projected), "\(projected)")
        XCTAssertEqual(projected[0], 2, accuracy: 1)
        XCTAssertEqual(projected[2], -2, accuracy: 1)
        XCTAssertEqual(grid.project([0.6, 0.6, 0.6, 0.6]), [0, 0, 0, 0])
    }

    /// Offspring: distinct, different from the parent, valid, the same for the same seed
    /// and generation and different for another; samples: distinct windows, exact tokens.
    func testOffspringAndSamplesAreSeededAndValid() {
        let grid = LevelGrid(weights: [100, 100, 300, 300, 900], target: 0.5, stepWeights: 10, levels: 4, minimum: 0, maximum: 0.99)
        let parent = [1, -1, 0, 2, -2]
        XCTAssertTrue(grid.isValid(parent))
        let children = EvolutionarySearch.offspring(of: parent, count: 16, grid: grid, seed: 7, generation: 3)
        XCTAssertEqual(children.count, 16)
        XCTAssertEqual(Set(children.map { $0.description }).count, 16)
        for c in children {
            XCTAssertTrue(grid.isValid(c), "\(c)")
            XCTAssertNotEqual(c, parent)
            let moved = zip(c, parent).reduce(0) { $0 + abs($1.0 - $1.1) }
            XCTAssertTrue((2...6).contains(moved), "1 to 3 steps moved: \(c)")
        }
        XCTAssertEqual(EvolutionarySearch.offspring(of: parent, count: 16, grid: grid, seed: 7, generation: 3), children)
        XCTAssertNotEqual(EvolutionarySearch.offspring(of: parent, count: 16, grid: grid, seed: 7, generation: 4), children)
        // A grid too small for that many distinct children still gives the count asked.
        let tiny = LevelGrid(weights: [10, 10], target: 0.5, stepWeights: 1, levels: 1, minimum: 0, maximum: 0.99)
        XCTAssertEqual(EvolutionarySearch.offspring(of: [0, 0], count: 5, grid: tiny, seed: 1, generation: 1).count, 5)

        let sample = EvolutionarySearch.sample(available: 10, length: 64, tokens: 200, seed: 3, generation: 2, stage: 1)
        XCTAssertEqual(sample.map(\.tokens), [64, 64, 64, 8])
        XCTAssertEqual(Set(sample.map(\.window)).count, 4)
        XCTAssertTrue(sample.allSatisfy { (0..<10).contains($0.window) })
        XCTAssertEqual(EvolutionarySearch.sample(available: 10, length: 64, tokens: 200, seed: 3, generation: 2, stage: 1).map(\.window), sample.map(\.window))
        XCTAssertEqual(EvolutionarySearch.select([0.3, 0.1, 0.3, 0.05], survivors: 3), [3, 1, 0])
    }

    /// KL of a distribution from itself is zero; against a shifted one it is the direct
    /// sum Σ p (log p − log q).
    func testNextTokenKLIsTheDirectSum() {
        let vocab = 5
        let a: [Float] = [1, 2, 0.5, -1, 0, 3, 3, 0, 0, -2]
        let b: [Float] = [0, 2, 1.5, -1, 1, 2, 3, 1, 0, -1]
        let reference = NextTokenKL.logProbabilities(a, positions: 2, vocab: vocab)
        XCTAssertEqual(NextTokenKL.sum(reference: reference, candidate: a, positions: 2, vocab: vocab), 0, accuracy: 1e-6)
        var expected = 0.0
        for t in 0..<2 {
            let p = softmax(Array(a[(t * vocab)..<((t + 1) * vocab)])), q = softmax(Array(b[(t * vocab)..<((t + 1) * vocab)]))
            for v in 0..<vocab { expected += p[v] * (log(p[v]) - log(q[v])) }
        }
        XCTAssertEqual(NextTokenKL.sum(reference: reference, candidate: b, positions: 2, vocab: vocab), expected, accuracy: 1e-6)
        XCTAssertGreaterThan(expected, 0)
    }

    private func softmax(_ x: [Float]) -> [Double] {
        let e = x.map { exp(Double($0)) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }
}
