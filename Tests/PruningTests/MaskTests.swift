import Tensors
import XCTest
@testable import Pruning

/// The reference every selection is held to: sort by (score, index) and prune the first k.
func referencePrunedSet(_ keys: [UInt32], k: Int) -> Set<Int> {
    Set(keys.indices.sorted { (keys[$0], $0) < (keys[$1], $1) }.prefix(k))
}

/// Scores with many ties: few distinct values, as quantised weights have.
func tiedScores(_ n: Int, distinct: UInt32, seed: UInt64) -> [Float] {
    var state = seed
    return (0..<n).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(UInt32(truncatingIfNeeded: state >> 33) % distinct) * 0.125
    }
}

func gaussianScores(_ n: Int, seed: UInt64) -> [Float] {
    var state = seed
    return (0..<n).map { _ in
        var acc: Float = 0
        for _ in 0..<4 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            acc += Float(state >> 40) / Float(1 << 24)
        }
        return abs(acc - 2)
    }
}

final class MaskTests: XCTestCase {
    func testKeepAllMaskHasZeroPaddingAndCounts() throws {
        let m = Mask(rows: 3, cols: 13)
        XCTAssertEqual(m.bytesPerRow, 2)
        XCTAssertEqual(m.keptCount, 39)
        XCTAssertEqual(m.keptPerRow(), [13, 13, 13])
        XCTAssertEqual(m.bits[1], 0x1F)
        var n = Mask(rows: 2, cols: 10, keepAll: false)
        n[1, 9] = true
        n[0, 0] = true
        XCTAssertEqual(n.keptPerRow(), [1, 1])
        XCTAssertTrue(n[1, 9])
        XCTAssertFalse(n[1, 8])
        XCTAssertEqual(n.prunedCount, 18)
        XCTAssertThrowsError(try Mask(rows: 1, cols: 10, bits: [0xFF, 0x04]), "padding bit set")
        XCTAssertThrowsError(try Mask(rows: 2, cols: 10, bits: [0xFF]), "wrong length")
    }

    func testRadixCutMatchesSortOnTiesAndSpread() {
        var scratch = RadixSelect.Scratch()
        for (seed, n) in [(1, 1), (2, 7), (3, 1000), (4, 4096), (5, 33333)] as [(UInt64, Int)] {
            for scores in [tiedScores(n, distinct: 5, seed: seed), gaussianScores(n, seed: seed)] {
                let keys = scores.map(\.bitPattern)
                for k in Set([0, 1, n / 3, n / 2, n - 1, n]) where k >= 0 && k <= n {
                    for digits in [RadixSelect.wideDigits, RadixSelect.narrowDigits] {
                        let cut = keys.withUnsafeBufferPointer { RadixSelect.cut($0, prune: k, digits: digits, scratch: &scratch) }
                        // Apply the cut in index order and compare with the sorted reference.
                        var equalLeft = cut.equalPruned
                        var pruned = Set<Int>()
                        if k > 0 {
                            for (i, key) in keys.enumerated() {
                                if key < cut.value { pruned.insert(i) } else if key == cut.value && equalLeft > 0 { equalLeft -= 1; pruned.insert(i) }
                            }
                        }
                        XCTAssertEqual(pruned, referencePrunedSet(keys, k: k), "n=\(n) k=\(k) digits=\(digits)")
                    }
                }
            }
        }
    }

    /// Large arrays take the sampled path; its answer must be the exact one, both when
    /// the sample brackets the k-th key and when it misses and the radix path takes over.
    func testSampledSelectionOnLargeArraysIsExact() {
        var scratch = RadixSelect.Scratch()
        let n = RadixSelect.sampleThreshold + 12345
        for scores in [gaussianScores(n, seed: 11), tiedScores(n, distinct: 3, seed: 12)] {
            let keys = scores.map(\.bitPattern)
            let sorted = keys.sorted()
            for k in [1, n / 5, n / 2, n - 3, n] {
                let cut = keys.withUnsafeBufferPointer { RadixSelect.cut($0, prune: k, digits: RadixSelect.wideDigits, scratch: &scratch) }
                XCTAssertEqual(cut.value, sorted[k - 1], "k=\(k)")
                let below = sorted.firstIndex(of: sorted[k - 1])!
                XCTAssertEqual(cut.equalPruned, k - below, "k=\(k)")
            }
        }
        // A distribution the sample cannot see: one huge run of equal keys placed off the
        // sampling stride, so the bracket misses and the exact fallback must answer.
        var keys = [UInt32](repeating: 1000, count: n)
        let stride = n / RadixSelect.sampleCount
        for i in 0..<n where i % stride != 0 { keys[i] = 5 }
        let sorted = keys.sorted()
        let cut = keys.withUnsafeBufferPointer { RadixSelect.cut($0, prune: n / 2, digits: RadixSelect.wideDigits, scratch: &scratch) }
        XCTAssertEqual(cut.value, sorted[n / 2 - 1])
        XCTAssertNil(keys.withUnsafeBufferPointer { RadixSelect.sampledKthSmallest($0, n / 2, digits: RadixSelect.wideDigits, scratch: &scratch) },
                     "the sample misses this distribution")
    }

    private func prunedSet(_ m: Mask) -> Set<Int> {
        var s = Set<Int>()
        for r in 0..<m.rows { for c in 0..<m.cols where !m[r, c] { s.insert(r * m.cols + c) } }
        return s
    }

    func testUnstructuredEqualsReference() throws {
        let rows = 37, cols = 53
        for scores in [tiedScores(rows * cols, distinct: 3, seed: 9), gaussianScores(rows * cols, seed: 9)] {
            for sparsity in [0.0, 0.3, 0.5, 0.9] {
                let m = try scores.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: .unstructured, sparsity: sparsity) }
                let k = Int((Double(rows * cols) * sparsity).rounded(.down))
                XCTAssertEqual(m.prunedCount, k)
                XCTAssertEqual(prunedSet(m), referencePrunedSet(scores.map(\.bitPattern), k: k))
            }
        }
    }

    func testPerRowEqualsReferenceRowByRow() throws {
        let rows = 9, cols = 1001
        let scores = tiedScores(rows * cols, distinct: 40, seed: 4)
        let m = try scores.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: .perRow, sparsity: 0.6) }
        let k = Int(Double(cols) * 0.6)
        XCTAssertEqual(m.keptPerRow(), [Int](repeating: cols - k, count: rows))
        for r in 0..<rows {
            let rowKeys = Array(scores[(r * cols)..<((r + 1) * cols)]).map(\.bitPattern)
            let expected = referencePrunedSet(rowKeys, k: k)
            let got = Set((0..<cols).filter { !m[r, $0] })
            XCTAssertEqual(got, expected, "row \(r)")
        }
    }

    func testNMKeepsNLargestOfEveryGroup() throws {
        for (n, m) in [(2, 4), (1, 4), (3, 8), (4, 32)] {
            let rows = 5, cols = m * 6
            let scores = tiedScores(rows * cols, distinct: 4, seed: UInt64(m))
            let mask = try scores.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: .nm(n: n, m: m), sparsity: 0) }
            for r in 0..<rows {
                for g in stride(from: 0, to: cols, by: m) {
                    let keys = (g..<(g + m)).map { scores[r * cols + $0].bitPattern }
                    let expected = referencePrunedSet(keys, k: m - n)
                    let got = Set((0..<m).filter { !mask[r, g + $0] })
                    XCTAssertEqual(got, expected, "\(n):\(m) row \(r) group \(g)")
                }
            }
        }
        let scores = [Float](repeating: 1, count: 10)
        XCTAssertThrowsError(try scores.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: 1, cols: 10, pattern: .nm(n: 2, m: 4), sparsity: 0) }) {
            XCTAssertTrue("\($0)".contains("divisible by 4"))
        }
    }

    func testRowsPatternPrunesLowestNormRows() throws {
        // Row 1 has the smallest L1 norm; row 2 the smallest L2 norm (one big, many zero).
        let scores: [Float] = [3, 3, 3, 3,
                               1, 1, 1, 1,
                               4.5, 0, 0, 0,
                               5, 5, 5, 5]
        let l1 = try scores.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: 4, cols: 4, pattern: .rows(.l1), sparsity: 0.5) }
        XCTAssertEqual(l1.keptPerRow(), [4, 0, 0, 4])
        let l2 = try scores.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: 4, cols: 4, pattern: .rows(.l2), sparsity: 0.25) }
        XCTAssertEqual(l2.keptPerRow(), [4, 0, 4, 4])
    }

    func testPatternParsingAndImpossibleValues() {
        XCTAssertEqual(try SparsityPattern(parsing: "2:4"), .nm(n: 2, m: 4))
        XCTAssertEqual(try SparsityPattern(parsing: "rows_l2"), .rows(.l2))
        XCTAssertThrowsError(try SparsityPattern(parsing: "4:4"))
        XCTAssertThrowsError(try SparsityPattern(parsing: "5:4"))
        XCTAssertThrowsError(try SparsityPattern(parsing: "diagonal"))
        let s: [Float] = [1, 2]
        XCTAssertThrowsError(try s.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: 1, cols: 2, pattern: .unstructured, sparsity: 1) })
        XCTAssertEqual(SparsityPattern.nm(n: 2, m: 4).impliedSparsity, 0.5)
    }
}

final class CriterionTests: XCTestCase {
    func testMagnitudeIsAbsoluteValueAndNaNRanksHighest() throws {
        let w: [Float] = [-3, 0.5, -0.0, .nan, 2, -1]
        var s = [Float](repeating: -1, count: w.count)
        w.withUnsafeBufferPointer { v in s.withUnsafeMutableBufferPointer { MagnitudeCriterion().scores(WeightBlock(name: "w", values: v, rows: 2, cols: 3), into: $0) } }
        XCTAssertEqual(Array(s[0..<3]), [3, 0.5, 0])
        XCTAssertEqual(s[3].bitPattern & 0x7FFF_FFFF, s[3].bitPattern, "NaN score is positive")
        let m = try s.withUnsafeBufferPointer { try MaskSelection.mask(scores: $0, rows: 2, cols: 3, pattern: .unstructured, sparsity: 0.84) }
        XCTAssertTrue(m[1, 0], "the NaN weight is kept, never chosen as small")
    }

    func testRandomScoresDoNotDependOnHowRowsAreSplit() {
        let rows = 12, cols = 7
        let w = [Float](repeating: 1, count: rows * cols)
        let c = RandomCriterion(seed: 42)
        var whole = [Float](repeating: 0, count: rows * cols)
        w.withUnsafeBufferPointer { v in whole.withUnsafeMutableBufferPointer { c.scores(WeightBlock(name: "layer", values: v, rows: rows, cols: cols), into: $0) } }
        var pieces: [Float] = []
        for (first, count) in [(0, 5), (5, 1), (6, 6)] {
            var part = [Float](repeating: 0, count: count * cols)
            w.withUnsafeBufferPointer { v in
                let block = UnsafeBufferPointer(rebasing: v[(first * cols)..<((first + count) * cols)])
                part.withUnsafeMutableBufferPointer { c.scores(WeightBlock(name: "layer", values: block, rows: count, cols: cols, firstRow: first), into: $0) }
            }
            pieces += part
        }
        XCTAssertEqual(whole, pieces)
        var other = [Float](repeating: 0, count: rows * cols)
        w.withUnsafeBufferPointer { v in other.withUnsafeMutableBufferPointer { RandomCriterion(seed: 43).scores(WeightBlock(name: "layer", values: v, rows: rows, cols: cols), into: $0) } }
        XCTAssertNotEqual(whole, other, "another seed gives other scores")
        XCTAssertTrue(whole.allSatisfy { $0 >= 1 && $0 < 2 })
    }
}

final class SparseBitmaskTests: XCTestCase {
    func testRoundTripKeepsNegativeZeroAndIsSmaller() throws {
        let values: [Float] = [0, -0.0, 1.5, 0, 0, 0, 0, 0, 0, 2,
                               0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                               3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
        let bytes = values.withUnsafeBytes { Array($0) }
        let s = bytes.withUnsafeBytes { SparseBitmaskTensor(dense: $0, dtype: .f32, shape: [3, 10]) }
        XCTAssertEqual(s.storedCount, 13, "-0.0 has a nonzero bit pattern and is stored")
        XCTAssertEqual(s.rowOffsets, [0, 3, 3])
        XCTAssertEqual(s.bitmask.count, 6)
        XCTAssertEqual(try s.densify(), bytes)
    }

    func testDensifyRefusesInconsistentParts() {
        let bytes = [Float](arrayLiteral: 1, 0, 2, 0).withUnsafeBytes { Array($0) }
        let good = bytes.withUnsafeBytes { SparseBitmaskTensor(dense: $0, dtype: .f32, shape: [2, 2]) }
        let badOffsets = SparseBitmaskTensor(dtype: .f32, shape: [2, 2], bitmask: good.bitmask, compressed: good.compressed, rowOffsets: [0, 2])
        XCTAssertThrowsError(try badOffsets.densify()) { XCTAssertTrue("\($0)".contains("row_offsets")) }
        let short = SparseBitmaskTensor(dtype: .f32, shape: [2, 2], bitmask: good.bitmask, compressed: Array(good.compressed.prefix(4)), rowOffsets: good.rowOffsets)
        XCTAssertThrowsError(try short.densify())
        let wrongMask = SparseBitmaskTensor(dtype: .f32, shape: [2, 2], bitmask: [1], compressed: good.compressed, rowOffsets: good.rowOffsets)
        XCTAssertThrowsError(try wrongMask.densify())
    }

    func testApplyZeroesExactlyThePrunedWeightsInAnyDtype() throws {
        for dtype in [DType.f32, .f16, .bf16] {
            let rows = 3, cols = 11
            let src = (0..<(rows * cols * dtype.size)).map { UInt8(truncatingIfNeeded: $0 | 1) }
            var mask = Mask(rows: rows, cols: cols)
            for (r, c) in [(0, 0), (1, 10), (2, 5), (2, 7)] { mask[r, c] = false }
            var out = [UInt8](repeating: 0xAA, count: src.count)
            src.withUnsafeBytes { s in out.withUnsafeMutableBytes { MaskApplication.apply(mask, source: s, elementSize: dtype.size, into: $0) } }
            for r in 0..<rows {
                for c in 0..<cols {
                    let e = (r * cols + c) * dtype.size
                    let slice = Array(out[e..<(e + dtype.size)])
                    XCTAssertEqual(slice, mask[r, c] ? Array(src[e..<(e + dtype.size)]) : [UInt8](repeating: 0, count: dtype.size))
                }
            }
        }
    }
}
