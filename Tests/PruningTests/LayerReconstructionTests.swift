import Foundation
import XCTest
@testable import Pruning

/// Layer-wise reconstruction: the re-fit is the least-squares solution over the kept
/// weights (checked against normal equations solved here without LAPACK), pruned weights
/// stay exactly zero, and the errors match a direct computation on the inputs.
final class LayerReconstructionTests: XCTestCase {
    private let rows = 12, cols = 40, tokens = 200

    /// Weights and inputs with correlated columns (where re-fitting the kept weights pays),
    /// and one column whose input is always zero.
    private func layer(seed: UInt64) -> (weights: [Float], inputs: [Float], hessian: SparseGPT) {
        var rng = SeededNormal(seed: seed)
        let weights = rng.array(rows * cols)
        let factors = rng.array(tokens * 3), mixing = rng.array(3 * cols)
        var inputs = rng.array(tokens * cols, scale: 0.2)
        for t in 0..<tokens {
            for c in 0..<cols {
                for f in 0..<3 { inputs[t * cols + c] += factors[t * 3 + f] * mixing[f * cols + c] }
            }
            inputs[t * cols + 7] = 0
        }
        var hessian = SparseGPT(rows: rows, columns: cols)
        inputs.withUnsafeBufferPointer { hessian.addBatch($0, tokens: tokens) }
        return (weights, inputs, hessian)
    }

    /// ‖(W − Ŵ)X‖² summed over the tokens, in F64.
    private func error(_ dense: [Float], _ pruned: [Float], _ inputs: [Float]) -> Double {
        var total = 0.0
        for t in 0..<tokens {
            for r in 0..<rows {
                var y = 0.0
                for c in 0..<cols { y += (Double(dense[r * cols + c]) - Double(pruned[r * cols + c])) * Double(inputs[t * cols + c]) }
                total += y * y
            }
        }
        return total
    }

    /// Per row, (H_KK + λI)·ŵ_K = (W·(H + λI))_K solved by Gaussian elimination with
    /// partial pivoting, from the inputs (not the accumulator).
    private func normalEquations(_ dense: [Float], _ mask: Mask, _ inputs: [Float], damp: Double) -> [Float] {
        var h = [Double](repeating: 0, count: cols * cols)
        for t in 0..<tokens {
            for i in 0..<cols { for j in 0..<cols { h[i * cols + j] += 2 / Double(tokens) * Double(inputs[t * cols + i]) * Double(inputs[t * cols + j]) } }
        }
        let lambda = damp * (0..<cols).reduce(0.0) { $0 + h[$1 * cols + $1] } / Double(cols)
        for c in 0..<cols { h[c * cols + c] += lambda }
        var out = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            let kept = (0..<cols).filter { mask[r, $0] }, k = kept.count
            guard k > 0 else { continue }
            var a = [Double](repeating: 0, count: k * (k + 1))
            for (i, ci) in kept.enumerated() {
                for (j, cj) in kept.enumerated() { a[i * (k + 1) + j] = h[ci * cols + cj] }
                a[i * (k + 1) + k] = (0..<cols).reduce(0.0) { $0 + Double(dense[r * cols + $1]) * h[$1 * cols + ci] }
            }
            for p in 0..<k {
                let pivot = (p..<k).max { abs(a[$0 * (k + 1) + p]) < abs(a[$1 * (k + 1) + p]) }!
                for j in 0...k { a.swapAt(p * (k + 1) + j, pivot * (k + 1) + j) }
                for i in (p + 1)..<k {
                    let f = a[i * (k + 1) + p] / a[p * (k + 1) + p]
                    for j in p...k { a[i * (k + 1) + j] -= f * a[p * (k + 1) + j] }
                }
            }
            var x = [Double](repeating: 0, count: k)
            for i in stride(from: k - 1, through: 0, by: -1) {
                var s = a[i * (k + 1) + k]
                for j in (i + 1)..<k { s -= a[i * (k + 1) + j] * x[j] }
                x[i] = s / a[i * (k + 1) + i]
            }
            for (i, c) in kept.enumerated() { out[r * cols + c] = Float(x[i]) }
        }
        return out
    }

    func testTheRefitIsTheLeastSquaresSolutionUnderEveryMask() throws {
        let (weights, inputs, hessian) = layer(seed: 11)
        var wanda = WandaStatistics(columns: cols)
        inputs.withUnsafeBufferPointer { wanda.add(batch: $0, tokens: tokens, columns: cols) }
        // 30% (the pruned-column form), 70% (the kept-column form), 2:4 (equal), and a
        // mask with a row kept whole and a row pruned whole.
        var masks: [(String, Mask)] = []
        for (label, pattern, sparsity) in [("30%", SparsityPattern.unstructured, 0.3), ("70%", .unstructured, 0.7), ("2:4", .nm(n: 2, m: 4), 0.5)] {
            let options = LayerPruneOptions(pattern: pattern, sparsity: sparsity, blockSize: 128, damp: 0.01)
            masks.append((label, try wanda.prune(weights: weights, rows: rows, options: options, layer: "w").mask))
        }
        let base = masks[1].1
        masks.append(("whole rows", Mask(rows: rows, cols: cols, fillRows: { r, bits in
            for c in 0..<cols where r == 0 || (r != 1 && base[r, c]) { bits[c >> 3] |= 1 << UInt8(c & 7) }
        })))
        for (label, mask) in masks {
            let masked = (0..<weights.count).map { mask[$0 / cols, $0 % cols] ? weights[$0] : 0 }
            let fit = try LayerReconstruction.refit(dense: weights, mask: mask, hessian: hessian, damp: 0.01, layer: "w")
            for i in 0..<weights.count where !mask[i / cols, i % cols] { XCTAssertEqual(fit.weights[i], 0, "\(label): pruned weight \(i) is exactly zero") }
            let direct = error(weights, masked, inputs), after = error(weights, fit.weights, inputs)
            XCTAssertEqual(fit.errorBefore, direct, accuracy: 1e-6 * direct, label)
            XCTAssertEqual(fit.errorAfter, after, accuracy: 1e-6 * direct, label)
            XCTAssertLessThan(fit.errorAfter, 0.8 * fit.errorBefore, "\(label): re-fitting correlated inputs recovers much")
            XCTAssertLessThan(fit.residual, 1e-5, label)
            let reference = normalEquations(weights, mask, inputs, damp: 0.01)
            let scale = reference.map { abs($0) }.max()!
            for i in 0..<weights.count { XCTAssertEqual(fit.weights[i], reference[i], accuracy: 1e-4 * scale, "\(label): weight \(i)") }
            // The dead input column: nothing pulls its kept weights from the dense ones.
            for r in 0..<rows where mask[r, 7] { XCTAssertEqual(fit.weights[r * cols + 7], weights[r * cols + 7], accuracy: 1e-5, "\(label): row \(r)") }
            if label == "whole rows" {
                XCTAssertEqual(Array(fit.weights[0..<cols]), Array(weights[0..<cols]), "a row kept whole is unchanged")
                XCTAssertEqual(Array(fit.weights[cols..<(2 * cols)]), [Float](repeating: 0, count: cols))
            }
        }
    }

    /// The affine re-fit (FLAP's layer with `reconstruct: layer`): weights and bias satisfy
    /// the least-squares optimality conditions on inputs with nonzero means (every row's
    /// residual sums to zero over the tokens and is orthogonal to each kept input column),
    /// the errors match a direct computation, and it beats both the bias alone and the
    /// re-fit without a bias.
    func testTheAffineRefitIsTheLeastSquaresWeightsAndBias() throws {
        var (weights, inputs, _) = layer(seed: 5)
        for t in 0..<tokens { for c in 0..<cols where c != 7 { inputs[t * cols + c] += Float(c % 5) * 0.3 - 0.4 } }
        var hessian = SparseGPT(rows: rows, columns: cols)
        inputs.withUnsafeBufferPointer { hessian.addBatch($0, tokens: tokens) }
        let mean = (0..<cols).map { c in (0..<tokens).reduce(0.0) { $0 + Double(inputs[$1 * cols + c]) } / Double(tokens) }
        let keptColumns = Set((0..<cols).filter { $0 % 5 != 1 && $0 % 7 != 3 })
        let mask = Mask(rows: rows, cols: cols, fillRows: { _, bits in for c in keptColumns { bits[c >> 3] |= 1 << UInt8(c & 7) } })
        let masked = (0..<weights.count).map { keptColumns.contains($0 % cols) ? weights[$0] : 0 }
        // FLAP's compensation: the removed columns times their means.
        let compensation = (0..<rows).map { r in Float((0..<cols).filter { !keptColumns.contains($0) }.reduce(0.0) { $0 + Double(weights[r * cols + $1]) * mean[$1] }) }
        let (fit, bias) = try LayerReconstruction.refitAffine(dense: weights, start: (masked, compensation), mask: mask, hessian: hessian,
                                                              mean: mean, tokens: tokens, damp: 1e-9, layer: "w")
        func residuals(_ w: [Float], _ b: [Float]) -> [[Double]] {
            (0..<tokens).map { t in (0..<rows).map { r in
                (0..<cols).reduce(0.0) { $0 + (Double(weights[r * cols + $1]) - Double(w[r * cols + $1])) * Double(inputs[t * cols + $1]) } - Double(b[r])
            } }
        }
        func squared(_ e: [[Double]]) -> Double { e.reduce(0.0) { $0 + $1.reduce(0.0) { $0 + $1 * $1 } } }
        let e = residuals(fit.weights, bias)
        let scale = (0..<tokens).reduce(0.0) { acc, t in acc + (0..<rows).reduce(0.0) { $0 + abs(e[t][$1]) } } / Double(tokens * rows)
        for r in 0..<rows {
            XCTAssertEqual((0..<tokens).reduce(0.0) { $0 + e[$1][r] }, 0, accuracy: 1e-3 * scale * Double(tokens), "row \(r): residuals sum to zero")
            for c in keptColumns where c != 7 {
                let dot = (0..<tokens).reduce(0.0) { $0 + e[$1][r] * Double(inputs[$1 * cols + c]) }
                XCTAssertEqual(dot, 0, accuracy: 1e-3 * scale * Double(tokens), "row \(r) column \(c)")
            }
            for c in 0..<cols where !keptColumns.contains(c) { XCTAssertEqual(fit.weights[r * cols + c], 0) }
        }
        XCTAssertEqual(fit.errorAfter, squared(e), accuracy: 1e-5 * squared(e), "the Hessian's Gram is F32")
        XCTAssertEqual(fit.errorBefore, squared(residuals(masked, compensation)), accuracy: 1e-6 * fit.errorBefore)
        XCTAssertLessThan(fit.errorBefore, squared(residuals(masked, [Float](repeating: 0, count: rows))), "the compensation alone helps")
        let linear = try LayerReconstruction.refit(dense: weights, mask: mask, hessian: hessian, damp: 1e-9, layer: "w")
        XCTAssertLessThan(fit.errorAfter, linear.errorAfter, "a bias adds what the kept columns cannot")
        XCTAssertLessThan(fit.errorAfter, fit.errorBefore)
    }

    /// From SparseGPT's result: the error before is SparseGPT's, the re-fit is no worse and
    /// is the same minimiser as from the dense weights (only the mask matters).
    func testTheRefitImprovesOnSparseGPTsUpdate() throws {
        let (weights, inputs, hessian) = layer(seed: 12)
        var updated = weights
        let mask = try hessian.prune(weights: &updated, sparsity: 0.6, layer: "w").mask
        let fit = try LayerReconstruction.refit(dense: weights, start: updated, mask: mask, hessian: hessian, damp: 0.01, layer: "w")
        // The Hessian is an F32 GEMM, whose rounding depends on the OpenBLAS kernel (3e-6
        // relative with SkylakeX's); the direct error is F64 throughout.
        XCTAssertEqual(fit.errorBefore, error(weights, updated, inputs), accuracy: 1e-5 * fit.errorBefore)
        XCTAssertLessThanOrEqual(fit.errorAfter, fit.errorBefore)
        let fromDense = try LayerReconstruction.refit(dense: weights, mask: mask, hessian: hessian, damp: 0.01, layer: "w")
        XCTAssertEqual(fit.weights, fromDense.weights)
        XCTAssertGreaterThan(fromDense.errorBefore, fit.errorBefore, "SparseGPT's update already recovered part of the error")
    }

    func testWrongShapesAndDampeningAreRefused() {
        let (weights, _, hessian) = layer(seed: 13)
        let mask = Mask(rows: rows, cols: cols)
        XCTAssertThrowsError(try LayerReconstruction.refit(dense: weights, mask: mask, hessian: SparseGPT(rows: rows, columns: cols + 1), damp: 0.01, layer: "w"))
        XCTAssertThrowsError(try LayerReconstruction.refit(dense: Array(weights.dropLast()), mask: mask, hessian: hessian, damp: 0.01, layer: "w"))
        XCTAssertThrowsError(try LayerReconstruction.refit(dense: weights, start: [1], mask: mask, hessian: hessian, damp: 0.01, layer: "w"))
        XCTAssertThrowsError(try LayerReconstruction.refit(dense: weights, mask: mask, hessian: hessian, damp: .nan, layer: "w"))
    }
}
