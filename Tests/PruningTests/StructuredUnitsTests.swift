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

    /// FLAP: only the slice reading the units counts; a head sums its columns'
    /// Var·‖W[:, c]‖² squared; the compensation is the removed columns times their means.
    func testFlapScoresTheReadingSliceAndCompensatesItsRemovedColumns() throws {
        let variance = (0..<8).map { Double($0 % 3) + 0.5 }
        let flap = try block.scores(.flap, weights: weights, fluctuation: ["o": variance])
        let energy = (0..<8).map { c in (0..<3).reduce(0.0) { $0 + Double(o[$1 * 8 + c] * o[$1 * 8 + c]) } }
        for u in 0..<4 {
            let want = (2 * u..<2 * u + 2).reduce(0.0) { $0 + pow(variance[$1] * energy[$1], 2) }
            XCTAssertEqual(flap[u], want, accuracy: 1e-9 * want)
        }
        XCTAssertThrowsError(try block.scores(.flap, weights: weights), "flap without statistics")
        let mean = (0..<8).map { Double($0) - 3.5 }
        let bias = try block.compensation(block.slices[1], weights: o, rows: 3, cols: 8, mean: mean, kept: [1, 2])
        for r in 0..<3 {
            let want = [0, 1, 6, 7].reduce(0.0) { $0 + Double(o[r * 8 + $1]) * mean[$1] }
            XCTAssertEqual(Double(bias[r]), want, accuracy: 1e-5)
        }
        XCTAssertThrowsError(try block.compensation(block.slices[0], weights: q, rows: 8, cols: 3, mean: [0, 0, 0], kept: [1, 2]), "a rows slice has no compensation")
    }

    /// The fluctuation statistic: the mean and sample variance over every token, however
    /// the tokens are split into batches and shards, to rounding; its bytes round-trip and
    /// malformed ones are refused.
    func testFluctuationIsTheMeanAndVarianceOverEveryToken() throws {
        let columns = 3, tokens = 50
        let x: [Float] = (0..<(tokens * columns)).map { i in Float((i * 37) % 101) / 7 + (i % columns == 2 ? 1000 : 0) }
        var whole = FluctuationStatistics(columns: columns)
        x.withUnsafeBufferPointer { whole.add($0, tokens: tokens) }
        var shards = [FluctuationStatistics(columns: columns), FluctuationStatistics(columns: columns)]
        for (i, range) in [0..<7, 7..<20, 20..<50].enumerated() {
            let part = Array(x[(range.lowerBound * columns)..<(range.upperBound * columns)])
            part.withUnsafeBufferPointer { shards[min(i, 1)].add($0, tokens: range.count) }
        }
        var merged = shards[0]
        try merged.merge(with: shards[1])
        for c in 0..<columns {
            let values = (0..<tokens).map { Double(x[$0 * columns + c]) }
            let mean = values.reduce(0, +) / Double(tokens)
            let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(tokens - 1)
            for s in [whole, merged] {
                XCTAssertEqual(s.mean[c], mean, accuracy: 1e-12 * abs(mean))
                XCTAssertEqual(s.fluctuation[c], variance, accuracy: 1e-9 * variance)
            }
        }
        XCTAssertEqual(merged.tokens, tokens)
        let bytes = merged.serialized()
        XCTAssertEqual(try FluctuationStatistics(serialized: bytes), merged)
        XCTAssertEqual(FluctuationStatistics.columns(ofSerialized: bytes), columns)
        XCTAssertNil(FluctuationStatistics.columns(ofSerialized: Array(bytes.dropLast())))
        XCTAssertThrowsError(try FluctuationStatistics(serialized: Array(bytes.dropLast(8))))
        var negative = bytes
        negative[negative.count - 1] = 0xBF   // the last spread's sign bit: -1.x
        XCTAssertThrowsError(try FluctuationStatistics(serialized: negative))
        var wider = FluctuationStatistics(columns: 4)
        XCTAssertThrowsError(try wider.merge(with: merged))
        // What the coordinator checks of a worker's statistic: its token count and means.
        XCTAssertNil(FluctuationStatistics.problem(inSerialized: bytes, samples: 2, tokens: 25))
        XCTAssertNotNil(FluctuationStatistics.problem(inSerialized: bytes, samples: 2, tokens: 24))
        var huge = bytes
        for i in 0..<8 { huge[16 + i] = i == 7 ? 0x7F : 0xFF }   // tokens = Int.max
        XCTAssertNotNil(FluctuationStatistics.problem(inSerialized: huge, samples: 2, tokens: 25))
        var overflowing = try FluctuationStatistics(serialized: huge)
        XCTAssertThrowsError(try overflowing.merge(with: merged), "token counts that overflow are refused, not a trap")
    }
}
