import Tensors

/// A layer's reconstruction error as a function of its sparsity (`allocation:
/// error_budget`): at each level, the Wanda mask (scores |W_ij|·sqrt(H_jj), which rank
/// as the reference's |W_ij|·‖X_j‖ since H_jj = 2/n·‖X_j‖²) and the error it leaves with
/// the kept weights unchanged, ‖(W − Ŵ)X‖² = (n/2)·Σ_rows Δw·H·Δwᵀ, where
/// H = 2/n·Σ XᵀX is the layer input's SparseGPT Hessian.
public enum ErrorCurve {
    /// Rows per product: bounds the scratch to 2 × rowChunk × columns F32.
    static let rowChunk = 256

    /// The dense output energy ‖WX‖² and the error at each of `levels`.
    public static func measure(weights: [Float], rows: Int, hessian: SparseGPT, levels: [Double],
                               pattern: SparsityPattern, layer: String) throws -> (energy: Double, errors: [Double]) {
        let cols = hessian.columns
        guard rows > 0, cols > 0, weights.count == rows * cols else {
            throw PruningError("\(layer): \(weights.count) weights, expected \(rows)×\(cols)")
        }
        guard weights.allSatisfy(\.isFinite) else { throw PruningError("\(layer): a weight is not finite") }
        // H in F32, both triangles (the product runs as one GEMM); its diagonal scores Wanda.
        var full = [Float](repeating: 0, count: cols * cols)
        var norms = [Double](repeating: 0, count: cols)
        hessian.hessian.withUnsafeBufferPointer { h in
            for i in 0..<cols {
                norms[i] = h[i * cols + i]
                for j in i..<cols {
                    full[i * cols + j] = Float(h[i * cols + j])
                    full[j * cols + i] = Float(h[i * cols + j])
                }
            }
        }
        var scores = [Float](repeating: 0, count: rows * cols)
        weights.withUnsafeBufferPointer { w in
            scores.withUnsafeMutableBufferPointer {
                WandaCriterion(norms: norms).scores(WeightBlock(name: layer, values: w, rows: rows, cols: cols), into: $0)
            }
        }
        let scale = Double(hessian.samples) / 2
        let energy = quadratic(weights, rows: rows, cols: cols, h: full) * scale
        var errors: [Double] = []
        for level in levels {
            try Cancellation.checkpoint()
            guard level > 0 else { errors.append(0); continue }
            let mask = try scores.withUnsafeBufferPointer {
                try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: pattern, sparsity: level)
            }
            // Δw = W − Ŵ: the pruned weights, zero where the mask keeps them.
            var delta = weights
            for r in 0..<rows {
                for c in 0..<cols where mask[r, c] { delta[r * cols + c] = 0 }
            }
            errors.append(quadratic(delta, rows: rows, cols: cols, h: full) * scale)
        }
        return (energy, errors)
    }

    /// Σ_rows d·H·dᵀ over the rows of d (rows × cols), the product in F32 (BLAS), the sum in F64.
    static func quadratic(_ d: [Float], rows: Int, cols: Int, h: [Float]) -> Double {
        var product = [Float](repeating: 0, count: min(rowChunk, rows) * cols)
        var total = 0.0
        d.withUnsafeBufferPointer { db in
            h.withUnsafeBufferPointer { hb in
                product.withUnsafeMutableBufferPointer { pb in
                    for r0 in stride(from: 0, to: rows, by: rowChunk) {
                        let r1 = min(r0 + rowChunk, rows)
                        Linalg.gemm(m: r1 - r0, n: cols, k: cols, db.baseAddress! + r0 * cols, lda: cols, hb.baseAddress!, ldb: cols,
                                    pb.baseAddress!, ldc: cols)
                        for e in 0..<((r1 - r0) * cols) { total += Double(db[r0 * cols + e]) * Double(pb[e]) }
                    }
                }
            }
        }
        return total
    }
}
