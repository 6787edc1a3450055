import Foundation
import XCTest
@testable import Pruning

/// The error curves of `allocation: error_budget`, against the error computed directly
/// from the calibration inputs and Wanda's own mask.
final class ErrorCurveTests: XCTestCase {
    func testTheCurveIsWandasMaskErrorOnTheCalibrationInputs() throws {
        var rng = SeededNormal(seed: 7)
        let rows = 24, cols = 40, tokens = 96
        let weights = rng.array(rows * cols)
        // Columns of different scales, as activations have.
        var inputs = rng.array(tokens * cols)
        for t in 0..<tokens { for c in 0..<cols { inputs[t * cols + c] *= Float(1 + c % 5) } }
        var hessian = SparseGPT(rows: rows, columns: cols)
        inputs.withUnsafeBufferPointer { hessian.addBatch($0, tokens: tokens) }
        var wanda = WandaStatistics(columns: cols)
        inputs.withUnsafeBufferPointer { wanda.add(batch: $0, tokens: tokens, columns: cols) }

        let levels = [0, 0.25, 0.5, 0.75, 0.9]
        let curve = try ErrorCurve.measure(weights: weights, rows: rows, hessian: hessian, levels: levels, pattern: .perRow, layer: "w")
        // ‖(W − Ŵ)X‖² summed over tokens, in F64, for a mask.
        func direct(_ keep: (Int, Int) -> Bool) -> Double {
            var total = 0.0
            for t in 0..<tokens {
                for r in 0..<rows {
                    var y = 0.0
                    for c in 0..<cols where !keep(r, c) { y += Double(weights[r * cols + c]) * Double(inputs[t * cols + c]) }
                    total += y * y
                }
            }
            return total
        }
        XCTAssertEqual(curve.energy, direct { _, _ in false }, accuracy: 1e-4 * curve.energy)
        XCTAssertEqual(curve.errors[0], 0)
        for (k, level) in levels.enumerated() where level > 0 {
            let options = LayerPruneOptions(pattern: .unstructured, sparsity: level, blockSize: 128, damp: 0.01)
            let mask = try wanda.prune(weights: weights, rows: rows, options: options, layer: "w").mask
            let expected = direct { mask[$0, $1] }
            XCTAssertEqual(curve.errors[k], expected, accuracy: 1e-4 * expected, "level \(level)")
        }
        // More pruned, more error.
        XCTAssertEqual(curve.errors, curve.errors.sorted())
        XCTAssertLessThan(curve.errors.last!, curve.energy)
        XCTAssertThrowsError(try ErrorCurve.measure(weights: Array(weights.dropLast()), rows: rows, hessian: hessian, levels: levels,
                                                    pattern: .perRow, layer: "w"))
    }
}
