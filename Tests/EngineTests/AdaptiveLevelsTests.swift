import XCTest
@testable import Engine

/// The adaptive schedule's decisions (`AdaptiveLevels`) on scripted validation accuracies.
final class AdaptiveLevelsTests: XCTestCase {
    private func levels(_ accuracies: [Double], initial: Double = 0.5, step: Double = 0.2, maximum: Double = 0.95,
                        count: Int = 6) -> AdaptiveLevels {
        AdaptiveLevels(initial: initial, step: step, maximum: maximum, budget: 0.01, count: count, reference: 0.9, accuracies: accuracies)
    }

    /// Up by `step` while the budget holds, bisection between the last level that met it
    /// and the lowest that did not, each round from the state that reached the former; the
    /// last round fine-tunes the highest level that met it, and is the one chosen.
    func testRaisesWhileWithinBudgetAndBisectsAfterAMiss() {
        let a = levels([0.895, 0.85, 0.891, 0.80, 0.89, 0.892])
        XCTAssertEqual(a.rounds.map(\.sparsity), [0.5, 0.7, 0.6, 0.65, 0.625, 0.625])
        XCTAssertEqual(a.rounds.map(\.base), [-1, 0, 0, 2, 2, 4])
        XCTAssertEqual(a.rounds.map(\.met), [true, false, true, false, true, true])
        XCTAssertEqual(a.chosen, 5)
    }

    /// A final fine-tune that drifts below the budget does not count; the round that met
    /// it at that level is chosen.
    func testAFinalRoundBelowTheBudgetLeavesTheEarlierChoice() {
        let a = levels([0.895, 0.85, 0.891, 0.80, 0.89, 0.87])
        XCTAssertEqual(a.chosen, 4)
        XCTAssertEqual(a.rounds[5].base, 4)
    }

    /// Decisions are made one round ahead: with k accuracies known there are k + 1 rounds,
    /// the same as in the full run.
    func testDecidesOneRoundAheadTheSameWay() {
        let full = levels([0.895, 0.85, 0.891, 0.80, 0.89, 0.892])
        for k in 0..<6 {
            let partial = levels(Array([0.895, 0.85, 0.891, 0.80, 0.89, 0.892].prefix(k)))
            XCTAssertEqual(partial.rounds.count, k + 1)
            XCTAssertEqual(partial.rounds.map(\.sparsity), Array(full.rounds.map(\.sparsity).prefix(k + 1)))
            XCTAssertEqual(partial.rounds.map(\.base), Array(full.rounds.map(\.base).prefix(k + 1)))
        }
    }

    /// At the maximum the search is over: the rounds left fine-tune it.
    func testStopsRaisingAtTheMaximum() {
        let a = levels([0.9, 0.9, 0.9, 0.9], step: 0.3, maximum: 0.7, count: 4)
        XCTAssertEqual(a.rounds.map(\.sparsity), [0.5, 0.7, 0.7, 0.7])
        XCTAssertEqual(a.rounds.map(\.base), [-1, 0, 1, 2])
        XCTAssertEqual(a.chosen, 3)
    }

    /// No level meets the budget: the bisection heads towards 0 from the start, nothing is chosen.
    func testNothingWithinTheBudget() {
        let a = levels([0.5, 0.5, 0.5, 0.5], count: 4)
        XCTAssertEqual(a.rounds.map(\.sparsity), [0.5, 0.25, 0.125, 0])
        XCTAssertTrue(a.rounds.allSatisfy { $0.base == -1 })
        XCTAssertNil(a.chosen)
    }

    /// A maximum off the grid: levels round down to it, never past it.
    func testNeverPassesAMaximumOffTheGrid() {
        let a = levels([0.9, 0.9, 0.9], initial: 0.333, step: 0.1, maximum: 0.333, count: 3)
        XCTAssertEqual(a.rounds.map(\.sparsity), [0.33, 0.33, 0.33])
        XCTAssertTrue(a.rounds.allSatisfy { $0.sparsity <= 0.333 })
    }

    /// A bisection down to adjacent grid levels stops and fine-tunes the level that met.
    func testANarrowIntervalEndsTheSearch() {
        let a = levels([0.9, 0.5, 0.5], initial: 0.5, step: 0.008, count: 4)
        // 0.5 met, 0.508 → on the grid 0.51 missed, (0.5 + 0.51)/2 = 0.505 missed; adjacent: over.
        XCTAssertEqual(a.rounds.map(\.sparsity), [0.5, 0.51, 0.505, 0.5])
        XCTAssertEqual(a.chosen, 0)
    }
}
