import Tensors

/// Training-free refinement of a layer's mask at its level (`refine:` in the spec), in the
/// spirit of DSnoT (Zhang et al. 2024) but on the exact objective: one-for-one swaps
/// (a pruned weight comes back, a kept one goes) that lower the reconstruction error
/// ‖(W − Ŵ)X‖² = (n/2)·Σ_rows Δw·H·Δwᵀ, H the layer input's SparseGPT Hessian (the Gram
/// matrix XᵀX up to the factor). A swap keeps each row's count, and under N:M both weights
/// lie in the same group of M, so the pattern holds.
///
/// Per row, with Δ the pruned weights and g = H·Δ, bringing back pruned j changes the
/// error by −2·w_j·g_j + w_j²·H_jj, pruning kept i by 2·w_i·g_i + w_i²·H_ii, and both by
/// their sum − 2·w_i·w_j·H_ij. Each step takes the j whose return lowers the error most,
/// pairs it with the i that then costs least, and applies the swap when the pair lowers
/// the error; g is updated by two columns of H. At most `maxSwaps` per row; all in F64,
/// rows independent, ties to the lower index: the same mask on every host.
public enum SwapRefinement {
    public struct Result: Sendable {
        public let mask: Mask
        /// ‖(W − Ŵ)X‖² on the calibration inputs before and after.
        public let errorBefore: Double
        public let errorAfter: Double
        public let swaps: Int
    }

    public static func refine(weights: [Float], mask: Mask, hessian: SparseGPT, maxSwaps: Int,
                              pattern: SparsityPattern, layer: String) throws -> Result {
        let rows = mask.rows, cols = mask.cols
        guard hessian.columns == cols, weights.count == rows * cols else {
            throw PruningError("\(layer): refinement of \(rows)×\(cols) weights with a Hessian of \(hessian.columns) columns")
        }
        guard maxSwaps >= 0 else { throw PruningError("\(layer): swaps \(maxSwaps) < 0") }
        var groupSize = 0
        switch pattern {
        case .nm(_, let m): groupSize = m
        case .unstructured, .perRow: groupSize = 0
        case .rows, .units: throw PruningError("\(layer): refinement keeps per-row counts; pattern \(pattern) removes whole rows")
        }
        // H in both triangles, F64.
        var h = hessian.hessian
        h.withUnsafeMutableBufferPointer { Linalg.copyUpperToLower($0.baseAddress!, n: cols) }
        var keep = [Bool](repeating: false, count: rows * cols)
        var delta = [Double](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            for c in 0..<cols {
                keep[r * cols + c] = mask[r, c]
                if !mask[r, c] { delta[r * cols + c] = Double(weights[r * cols + c]) }
            }
        }
        let scale = Double(hessian.samples) / 2
        var g = product(delta, rows: rows, cols: cols, h: h)
        let before = zip(delta, g).reduce(0.0) { $0 + $1.0 * $1.1 } * scale
        var swaps = 0
        h.withUnsafeBufferPointer { hb in
            for r in 0..<rows where maxSwaps > 0 {
                let base = r * cols
                for _ in 0..<maxSwaps {
                    // The pruned weight whose return lowers the error most.
                    var j = -1, gainJ = 0.0
                    for c in 0..<cols where !keep[base + c] {
                        let w = Double(weights[base + c])
                        guard w != 0 else { continue }
                        let gain = -2 * w * g[base + c] + w * w * hb[c * cols + c]
                        if j < 0 || gain < gainJ { j = c; gainJ = gain }
                    }
                    guard j >= 0, gainJ < 0 else { break }
                    let wj = Double(weights[base + j])
                    // The kept weight (in j's group under N:M) that costs least to prune with j back.
                    let from = groupSize > 0 ? j / groupSize * groupSize : 0, to = groupSize > 0 ? from + groupSize : cols
                    var i = -1, costI = 0.0
                    for c in from..<to where keep[base + c] {
                        let w = Double(weights[base + c])
                        let cost = 2 * w * g[base + c] + w * w * hb[c * cols + c] - 2 * w * wj * hb[c * cols + j]
                        if i < 0 || cost < costI { i = c; costI = cost }
                    }
                    guard i >= 0, gainJ + costI < 0 else { break }
                    let wi = Double(weights[base + i])
                    keep[base + j] = true
                    keep[base + i] = false
                    delta[base + j] = 0
                    delta[base + i] = wi
                    for c in 0..<cols { g[base + c] += wi * hb[i * cols + c] - wj * hb[j * cols + c] }
                    swaps += 1
                }
            }
        }
        g = product(delta, rows: rows, cols: cols, h: h)
        let after = zip(delta, g).reduce(0.0) { $0 + $1.0 * $1.1 } * scale
        let refined = Mask(rows: rows, cols: cols, fillRows: { r, bits in
            for c in 0..<cols where keep[r * cols + c] { bits[c >> 3] |= 1 << UInt8(c & 7) }
        })
        return Result(mask: refined, errorBefore: before, errorAfter: after, swaps: swaps)
    }

    /// Δ·H (rows × cols, F64).
    static func product(_ delta: [Double], rows: Int, cols: Int, h: [Double]) -> [Double] {
        var out = [Double](repeating: 0, count: rows * cols)
        delta.withUnsafeBufferPointer { d in
            h.withUnsafeBufferPointer { hb in
                out.withUnsafeMutableBufferPointer { o in
                    Linalg.gemm(m: rows, n: cols, k: cols, d.baseAddress!, lda: cols, hb.baseAddress!, ldb: cols, o.baseAddress!, ldc: cols)
                }
            }
        }
        return out
    }
}
