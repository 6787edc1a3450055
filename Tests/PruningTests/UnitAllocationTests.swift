import XCTest
@testable import Pruning

/// `allocation: global` for units (FLAP's AL-AM): scores standardized within a block and
/// kind, then one ranking of every block's removal steps, cut where the removed
/// parameters come closest to the target, within each block's bounds.
final class UnitAllocationTests: XCTestCase {
    // A: 4 channels of 1 parameter; B: 4 heads in 2 key/value groups of 3 parameters each.
    // B's one step removes its weakest head of each group (units 1 and 3): mean −1.25.
    private let a = UnitAllocation.Group(count: 4, groups: 1, unitParameters: 1, scores: [-1, 0, 1, 2])
    private let b = UnitAllocation.Group(count: 4, groups: 2, unitParameters: 3, scores: [0.5, -2, 3, -0.5])

    func testTheWeakestStepsGoFirstUntilTheRemovedParametersAreClosestToTheTarget() throws {
        // 16 parameters. Steps by score: B (6), A1, A2, A3 (1 each); cumulative 6, 7, 8, 9.
        XCTAssertEqual(try UnitAllocation.removed([a, b], target: 0.5), [2, 2], "8 of 16: B's step, then A's two weakest")
        XCTAssertEqual(try UnitAllocation.removed([a, b], target: 0.25), [0, 2], "4: 6 is closer than 0")
        XCTAssertEqual(try UnitAllocation.removed([a, b], target: 0.1), [0, 0], "1.6: nothing is closer than B's 6")
        // Key/value groups lose heads together, and each keeps one: B never removes more than 2.
        XCTAssertEqual(try UnitAllocation.removed([a, b], target: 0.9), [3, 2])
    }

    func testBoundsPerBlockAreKept() throws {
        // max 0.25: A at most 1 channel, B no step (2 of 4 heads would be 0.5).
        XCTAssertEqual(try UnitAllocation.removed([a, b], target: 0.5, max: 0.25), [1, 0])
        // min 0.5: A must lose 2, B its one step, even where the target asks for less.
        XCTAssertEqual(try UnitAllocation.removed([a, b], target: 0.25, min: 0.5), [2, 2])
    }

    func testTiesGoToTheEarlierGroupAndScaleDoesNotMatterAfterStandardizing() throws {
        let same = UnitAllocation.Group(count: 3, groups: 1, unitParameters: 2, scores: [0, 1, 2])
        XCTAssertEqual(try UnitAllocation.removed([same, same], target: 1.0 / 6), [1, 0])
        // Standardized scores of two blocks whose raw scores differ by a factor of 100 rank alike.
        XCTAssertEqual(BlockUnits.zScores([1, 2, 3]), [-1, 0, 1])
        XCTAssertEqual(BlockUnits.zScores([100, 200, 300]), [-1, 0, 1])
        XCTAssertEqual(BlockUnits.zScores([5, 5, 5]), [0, 0, 0], "no spread: all equal")
        // Robust: median 3, quartiles 2 and 4; one huge score does not squeeze the rest.
        XCTAssertEqual(BlockUnits.robustScores([4, 2, 100, 1, 3]), [0.5, -0.5, 48.5, -1, 0])
        XCTAssertEqual(BlockUnits.robustScores([5, 5, 5, 5, 9]), BlockUnits.zScores([5, 5, 5, 5, 9]), "no interquartile spread: the z-score")
        XCTAssertEqual(BlockUnits.standardized([1, 2, 3], .robust), [-1, 0, 1])
        XCTAssertThrowsError(try UnitAllocation.removed([UnitAllocation.Group(count: 3, groups: 2, unitParameters: 1, scores: [0, 1, 2])], target: 0.5),
                             "3 heads do not split into 2 key/value groups")
        XCTAssertThrowsError(try UnitAllocation.removed([UnitAllocation.Group(count: 2, groups: 1, unitParameters: 1, scores: [0, .nan])], target: 0.5))
    }

    /// FLAP's heads: the squared metric of each o_proj column standardized over the
    /// columns, a head's score the mean of its columns'. o is one row of ones, so the
    /// metric is the variance: 1, 2, 3, 4, squared 1, 4, 9, 16 (mean 7.5, sd √43).
    func testFlapHeadsAreTheMeanOfTheirStandardizedColumns() throws {
        let heads = BlockUnits(kind: .heads, count: 2, width: 2, groups: 1,
                               slices: [UnitSlice(tensor: "q", axis: .rows), UnitSlice(tensor: "o", axis: .cols)])
        let weights: [String: (values: [Float], rows: Int, cols: Int)] = ["q": ([Float](repeating: 1, count: 4), 4, 1), "o": ([1, 1, 1, 1], 1, 4)]
        let scores = try heads.standardizedScores(.flap, weights: weights, fluctuation: ["o": [1, 2, 3, 4]])
        XCTAssertEqual(scores[0], -5 / 43.0.squareRoot(), accuracy: 1e-12)
        XCTAssertEqual(scores[1], 5 / 43.0.squareRoot(), accuracy: 1e-12)
        // Channels (and other scores) are z-scores of the unit scores.
        let channels = BlockUnits(kind: .channels, count: 4, width: 1, groups: 1, slices: [UnitSlice(tensor: "o", axis: .cols)])
        XCTAssertEqual(try channels.standardizedScores(.flap, weights: weights, fluctuation: ["o": [1, 2, 3, 4]]), BlockUnits.zScores([1, 2, 3, 4]))
    }
}
