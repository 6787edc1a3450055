import Foundation
import XCTest
@testable import Pruning

/// Mask refinement by swaps: lower error on the calibration inputs, the same counts per
/// row (and per N:M group), errors that match a direct computation.
final class SwapRefinementTests: XCTestCase {
    /// A layer whose inputs have correlated columns (where Wanda's diagonal view misses most).
    private func layer(rows: Int, cols: Int, tokens: Int, seed: UInt64) -> (weights: [Float], inputs: [Float]) {
        var rng = SeededNormal(seed: seed)
        let weights = rng.array(rows * cols)
        let factors = rng.array(tokens * 4)
        let mixing = rng.array(4 * cols)
        var inputs = rng.array(tokens * cols, scale: 0.3)
        for t in 0..<tokens {
            for c in 0..<cols {
                for f in 0..<4 { inputs[t * cols + c] += factors[t * 4 + f] * mixing[f * cols + c] * Float(1 + c % 3) }
            }
        }
        return (weights, inputs)
    }

    private func error(_ weights: [Float], _ inputs: [Float], mask: Mask, tokens: Int) -> Double {
        let rows = mask.rows, cols = mask.cols
        var total = 0.0
        for t in 0..<tokens {
            for r in 0..<rows {
                var y = 0.0
                for c in 0..<cols where !mask[r, c] { y += Double(weights[r * cols + c]) * Double(inputs[t * cols + c]) }
                total += y * y
            }
        }
        return total
    }

    func testSwapsLowerTheErrorAndKeepTheCounts() throws {
        let rows = 16, cols = 48, tokens = 128
        let (weights, inputs) = layer(rows: rows, cols: cols, tokens: tokens, seed: 5)
        var hessian = SparseGPT(rows: rows, columns: cols)
        inputs.withUnsafeBufferPointer { hessian.addBatch($0, tokens: tokens) }
        var wanda = WandaStatistics(columns: cols)
        inputs.withUnsafeBufferPointer { wanda.add(batch: $0, tokens: tokens, columns: cols) }
        for pattern in [SparsityPattern.unstructured, .nm(n: 2, m: 4)] {
            let options = LayerPruneOptions(pattern: pattern, sparsity: 0.6, blockSize: 128, damp: 0.01)
            let mask = try wanda.prune(weights: weights, rows: rows, options: options, layer: "w").mask
            let result = try SwapRefinement.refine(weights: weights, mask: mask, hessian: hessian, maxSwaps: 64,
                                                   pattern: WandaStatistics.comparisonPattern(for: pattern), layer: "w")
            XCTAssertGreaterThan(result.swaps, 0, "\(pattern)")
            XCTAssertEqual(result.errorBefore, error(weights, inputs, mask: mask, tokens: tokens), accuracy: 1e-6 * result.errorBefore)
            XCTAssertEqual(result.errorAfter, error(weights, inputs, mask: result.mask, tokens: tokens), accuracy: 1e-6 * result.errorBefore)
            XCTAssertLessThan(result.errorAfter, 0.95 * result.errorBefore, "\(pattern): swaps on correlated inputs help")
            XCTAssertEqual(result.mask.keptPerRow(), mask.keptPerRow(), "\(pattern)")
            if case .nm(let n, let m) = pattern {
                for r in 0..<rows {
                    for g in stride(from: 0, to: cols, by: m) {
                        XCTAssertEqual((g..<(g + m)).filter { result.mask[r, $0] }.count, n, "row \(r), group \(g)")
                    }
                }
            }
            // Fewer swaps allowed, less gained; none allowed, nothing changed.
            let rule = WandaStatistics.comparisonPattern(for: pattern)
            let few = try SwapRefinement.refine(weights: weights, mask: mask, hessian: hessian, maxSwaps: 1, pattern: rule, layer: "w")
            XCTAssertGreaterThanOrEqual(few.errorAfter, result.errorAfter)
            XCTAssertEqual(try SwapRefinement.refine(weights: weights, mask: mask, hessian: hessian, maxSwaps: 0, pattern: rule, layer: "w").mask, mask)
        }
        XCTAssertThrowsError(try SwapRefinement.refine(weights: weights, mask: Mask(rows: rows, cols: cols), hessian: SparseGPT(rows: rows, columns: cols + 1),
                                                       maxSwaps: 4, pattern: .perRow, layer: "w"))
    }
}
