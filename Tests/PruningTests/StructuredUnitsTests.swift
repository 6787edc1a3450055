import XCTest
@testable import Pruning

/// A block's units: scores summed over every slice (rows of one tensor, columns of
/// another), the best of each group kept with ties to the lower index, and the masks.
final class StructuredUnitsTests: XCTestCase {
    // 4 units of width 2 in 2 groups: a rows slice (8 × 3) and a cols slice (3 × 8).
    private let block = BlockUnits(kind: .heads, count: 4, width: 2, groups: 2,
                                   slices: [UnitSlice(tensor: "q", axis: .rows), UnitSlice(tensor: "o", axis: .cols)])
    private let q: [Float] = (0..<24).map { Float(($0 * 7) % 11) - 5 }
    private let o: [Float] = (0..<24).map { Float(($0 * 5) % 13) - 6 }

    private var weights: [String: (values: [Float], rows: Int, cols: Int)] { ["q": (q, 8, 3), "o": (o, 3, 8)] }

    /// The naive sum over the unit's weights of f(weight, its input column, its index).
    private func naive(_ f: (Float, Int, String, Int) -> Double) -> [Double] {
        (0..<4).map { u in
            var s = 0.0
            for r in (2 * u)..<(2 * u + 2) { for c in 0..<3 { s += f(q[r * 3 + c], c, "q", r * 3 + c) } }
            for r in 0..<3 { for c in (2 * u)..<(2 * u + 2) { s += f(o[r * 8 + c], c, "o", r * 8 + c) } }
            return s
        }
    }

    func testScoresSumEverySliceOfTheUnit() throws {
        let norms: [String: [Double]] = ["q": [4, 9, 16], "o": (0..<8).map { Double($0 + 1) }]
        let g: [String: [Float]] = ["q": (0..<24).map { Float($0 % 5) - 2 }, "o": (0..<24).map { Float($0 % 3) - 1 }]
        let l2 = try block.scores(.l2, weights: weights)
        for (a, b) in zip(l2, naive { w, _, _, _ in Double(w * w) }.map { $0.squareRoot() }) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        let wanda = try block.scores(.wanda, weights: weights, inputNorms: norms)
        for (a, b) in zip(wanda, naive { w, c, t, _ in Double(abs(w)) * norms[t]![c].squareRoot() }) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        let taylor = try block.scores(.taylor, weights: weights, gradients: g)
        for (a, b) in zip(taylor, naive { w, _, t, k in Double(w) * Double(g[t]![k]) }.map(abs)) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        let fisher = try block.scores(.fisher, weights: weights, gradients: g)
        for (a, b) in zip(fisher, naive { w, _, t, k in Double(w * w) * Double(g[t]![k]) }) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        XCTAssertThrowsError(try block.scores(.wanda, weights: weights), "wanda without statistics")
        XCTAssertThrowsError(try block.scores(.taylor, weights: weights), "taylor without gradients")
        XCTAssertThrowsError(try block.scores(.l2, weights: ["q": (q, 6, 4), "o": (o, 3, 8)]), "a slice of the wrong height")
    }

    func testEachGroupKeepsItsBestWithTiesToTheLowerIndex() throws {
        XCTAssertEqual(block.removedPerGroup(at: 0.5), 1)
        XCTAssertEqual(block.removedPerGroup(at: 0.4), 0, "one of 4 heads cannot be taken from both groups")
        XCTAssertEqual(try block.kept(scores: [1, 2, 5, 3], sparsity: 0.5), [1, 2])
        XCTAssertEqual(try block.kept(scores: [2, 2, 3, 3], sparsity: 0.5), [0, 2], "ties keep the lower index")
        XCTAssertThrowsError(try block.kept(scores: [1, .nan, 2, 3], sparsity: 0.5))
        XCTAssertThrowsError(try block.kept(scores: [1, 2, 3], sparsity: 0.5))
    }

    func testMasksZeroTheRemovedRowsAndColumns() {
        let rows = block.mask(block.slices[0], rows: 8, cols: 3, kept: [1, 2])
        let cols = block.mask(block.slices[1], rows: 3, cols: 8, kept: [1, 2])
        for r in 0..<8 { for c in 0..<3 { XCTAssertEqual(rows[r, c], (2..<6).contains(r)) } }
        for r in 0..<3 { for c in 0..<8 { XCTAssertEqual(cols[r, c], (2..<6).contains(c)) } }
        XCTAssertEqual(block.keptLines([1, 2]), [2, 3, 4, 5])
    }
}
