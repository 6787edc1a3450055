import Tensors

/// Layer-wise reconstruction with the mask fixed (`reconstruct: {scope: layer}`): the kept
/// weights of each output row are re-fit by least squares so the pruned layer reproduces
/// the dense layer's outputs on the calibration inputs,
///
///     min over ŵ (ŵ_P = 0) of (w − ŵ)·H·(w − ŵ)ᵀ + λ‖w − ŵ‖²,
///
/// H the layer input's SparseGPT Hessian (2/n·Σ XᵀX, so (n/2)·ΔHΔᵀ = ‖(W − Ŵ)X‖²), P the
/// row's pruned columns, K its kept ones, λ = damp × mean diag H (SparseGPT's dampening: a
/// pull towards the dense weights where the calibration data says nothing, e.g. columns
/// whose input is always zero).
///
/// Solved exactly per row, in F64, in whichever form is smaller: with the kept columns,
/// ŵ_K = (H_KK + λI)⁻¹·(w·(H + λI))_K (a |K|×|K| Cholesky); or with the pruned ones, the
/// optimal brain surgeon update of removing P at once, ŵ = w − G[:, P]·(G_PP)⁻¹·w_P with
/// G = (H + λI)⁻¹ (a |P|×|P| Cholesky after one inversion). The two are the same minimiser;
/// the larger system costs (cols/2)³/3 per row at worst (50% or 2:4). Rows are independent
/// and each is one fixed sequence of LAPACK calls: the same bytes on every worker.
///
/// Unlike SparseGPT, which fixes the mask and the update column by column in one sweep,
/// this re-fits every kept weight jointly against the dense ones, for any mask (Wanda,
/// swaps, an allocation, SparseGPT's own).
public enum LayerReconstruction {
    public struct Result: Sendable {
        /// The re-fit weights (F32, rows × cols), exactly 0 where the mask prunes.
        public let weights: [Float]
        /// ‖(W − Ŵ)X‖² on the calibration inputs: the start (the method's weights), and the re-fit.
        public let errorBefore: Double
        public let errorAfter: Double
        /// How far the re-fit is from the exact minimiser: ‖((Ŵ − W)(H + λI))_K‖ / ‖(W(H + λI))_K‖
        /// over the whole layer (the optimality condition; F32 rounding of Ŵ leaves ~1e-7).
        public let residual: Double
    }

    /// Re-fits the kept weights of `dense` under `mask` to the dense outputs. `start` is the
    /// method's result (SparseGPT's updated weights; nil: the dense weights under the mask),
    /// used for `errorBefore` and kept when the re-fit would not lower the error (which only
    /// the dampening can cause).
    public static func refit(dense: [Float], start: [Float]? = nil, mask: Mask, hessian: SparseGPT, damp: Double,
                             layer: String) throws -> Result {
        let rows = mask.rows, cols = mask.cols
        guard hessian.columns == cols, dense.count == rows * cols, start.map({ $0.count == dense.count }) ?? true else {
            throw PruningError("\(layer): reconstruction of \(rows)×\(cols) weights with a Hessian of \(hessian.columns) columns")
        }
        guard damp.isFinite, damp >= 0 else { throw PruningError("\(layer): dampening \(damp) is not a finite value ≥ 0") }
        var h = hessian.hessian
        h.withUnsafeMutableBufferPointer { Linalg.copyUpperToLower($0.baseAddress!, n: cols) }
        let meanDiagonal = (0..<cols).reduce(0.0) { $0 + h[$1 * cols + $1] } / Double(max(cols, 1))
        guard meanDiagonal.isFinite else { throw PruningError("\(layer): the calibration Hessian is not finite") }
        let lambda = meanDiagonal > 0 ? damp * meanDiagonal : damp
        let scale = Double(hessian.samples) / 2

        let masked = start ?? (0..<dense.count).map { mask[$0 / max(cols, 1), $0 % max(cols, 1)] ? dense[$0] : 0 }
        let errorBefore = error(dense: dense, pruned: masked, rows: rows, cols: cols, h: h) * scale

        // Hλ = H + λI and B = W·Hλ, the right-hand sides of the kept-column form.
        var hl = h
        for c in 0..<cols { hl[c * cols + c] += lambda }
        let w64 = dense.map(Double.init)
        let b = product(w64, rows: rows, cols: cols, h: hl)
        var inverse: [Double]? = nil
        var refit = [Float](repeating: 0, count: rows * cols)
        var factored = Factored(), rhs = [Double]()
        for r in 0..<rows {
            let base = r * cols
            var kept: [Int] = [], pruned: [Int] = []
            for c in 0..<cols { if mask[r, c] { kept.append(c) } else { pruned.append(c) } }
            if pruned.isEmpty { for c in 0..<cols { refit[base + c] = dense[base + c] }; continue }
            if kept.isEmpty { continue }
            if kept.count <= pruned.count {
                try solve(hl, source: 0, cols: cols, on: kept, rhs: kept.map { b[base + $0] }, factored: &factored, solution: &rhs, layer: layer)
                for (i, c) in kept.enumerated() { refit[base + c] = Float(rhs[i]) }
            } else {
                if inverse == nil {
                    var g = hl
                    try g.withUnsafeMutableBufferPointer { p in
                        try Linalg.cholesky(p.baseAddress!, n: cols, layer: layer)
                        try Linalg.choleskyInverse(p.baseAddress!, n: cols, layer: layer)
                    }
                    inverse = g
                }
                let g = inverse!
                try solve(g, source: 1, cols: cols, on: pruned, rhs: pruned.map { w64[base + $0] }, factored: &factored, solution: &rhs, layer: layer)
                for c in kept {
                    var update = 0.0
                    for (i, p) in pruned.enumerated() { update += g[c * cols + p] * rhs[i] }
                    refit[base + c] = Float(w64[base + c] - update)
                }
            }
        }
        guard refit.allSatisfy(\.isFinite) else { throw PruningError("\(layer): reconstruction produced non-finite weights") }

        let delta = (0..<dense.count).map { Double(dense[$0]) - Double(refit[$0]) }
        let gradient = product(delta, rows: rows, cols: cols, h: hl)
        var errorAfter = 0.0, residual = 0.0, reference = 0.0
        for r in 0..<rows {
            for c in 0..<cols {
                let i = r * cols + c
                errorAfter += delta[i] * (gradient[i] - lambda * delta[i])
                if mask[r, c] { residual += gradient[i] * gradient[i]; reference += b[i] * b[i] }
            }
        }
        errorAfter *= scale
        let relative = reference > 0 ? (residual / reference).squareRoot() : 0
        guard errorAfter <= errorBefore else {
            return Result(weights: masked, errorBefore: errorBefore, errorAfter: errorBefore, residual: relative)
        }
        return Result(weights: refit, errorBefore: errorBefore, errorAfter: errorAfter, residual: relative)
    }

    /// The affine re-fit of a layer that gains a bias (FLAP's compensation, `method: flap` with
    /// `reconstruct: layer`): the kept weights and a bias b jointly minimise
    /// ‖WX − (ŴX + b1ᵀ)‖² (+ the dampening), the linear re-fit on the input with a constant
    /// 1 appended (`SparseGPT.withConstantInput`). `start` is the method's layer (weights
    /// and bias) and the error before; the bias-only compensation is the special case that
    /// keeps the weights. Returns the weights (rows × cols) and the bias apart.
    public static func refitAffine(dense: [Float], start: (weights: [Float], bias: [Float]), mask: Mask, hessian: SparseGPT,
                                   mean: [Double], tokens: Int, damp: Double, layer: String) throws -> (result: Result, bias: [Float]) {
        let rows = mask.rows, cols = mask.cols
        guard mean.count == cols, hessian.columns == cols, dense.count == rows * cols, start.weights.count == dense.count, start.bias.count == rows else {
            throw PruningError("\(layer): affine re-fit of \(rows)×\(cols) weights with \(mean.count) means and a Hessian of \(hessian.columns) columns")
        }
        let n = cols + 1
        func augmented(_ w: [Float], bias: [Float]?) -> [Float] {
            var out = [Float](repeating: 0, count: rows * n)
            for r in 0..<rows {
                for c in 0..<cols { out[r * n + c] = w[r * cols + c] }
                out[r * n + cols] = bias?[r] ?? 0
            }
            return out
        }
        let keepBias = Mask(rows: rows, cols: n) { r, row in
            for c in 0..<cols where mask[r, c] { row[c >> 3] |= 1 << UInt8(c & 7) }
            row[cols >> 3] |= 1 << UInt8(cols & 7)
        }
        let fit = try refit(dense: augmented(dense, bias: nil), start: augmented(start.weights, bias: start.bias), mask: keepBias,
                            hessian: hessian.withConstantInput(mean: mean, tokens: tokens), damp: damp, layer: layer)
        var weights = [Float](repeating: 0, count: rows * cols), bias = [Float](repeating: 0, count: rows)
        for r in 0..<rows {
            for c in 0..<cols { weights[r * cols + c] = fit.weights[r * n + c] }
            bias[r] = fit.weights[r * n + cols]
        }
        return (Result(weights: weights, errorBefore: fit.errorBefore, errorAfter: fit.errorAfter, residual: fit.residual), bias)
    }

    /// Solves M[S, S]·x = rhs by Cholesky (M symmetric positive definite, cols × cols).
    /// The Cholesky factor of m restricted to `set`, kept while consecutive rows share the
    /// set (a structured pattern's rows all do): the same factor the row would compute.
    struct Factored {
        var source = -1
        var set: [Int] = []
        var system: [Double] = []
    }

    /// Solves m[set, set]·x = rhs; `source` names m (the kept or the pruned form).
    private static func solve(_ m: [Double], source: Int, cols: Int, on set: [Int], rhs: [Double], factored: inout Factored,
                              solution: inout [Double], layer: String) throws {
        let k = set.count
        if factored.source != source || factored.set != set {
            if factored.system.count < k * k { factored.system = [Double](repeating: 0, count: k * k) }
            for (i, a) in set.enumerated() {
                let from = a * cols
                for (j, c) in set.enumerated() { factored.system[i * k + j] = m[from + c] }
            }
            try factored.system.withUnsafeMutableBufferPointer { try Linalg.cholesky($0.baseAddress!, n: k, layer: layer) }
            factored.source = source
            factored.set = set
        }
        solution = rhs
        try factored.system.withUnsafeMutableBufferPointer { s in
            try solution.withUnsafeMutableBufferPointer { x in
                try Linalg.choleskySolve(s.baseAddress!, n: k, x.baseAddress!, layer: layer)
            }
        }
    }

    /// (n/2)⁻¹·‖(W − Ŵ)X‖² = Σ_rows Δ·H·Δᵀ.
    static func error(dense: [Float], pruned: [Float], rows: Int, cols: Int, h: [Double]) -> Double {
        let delta = (0..<dense.count).map { Double(dense[$0]) - Double(pruned[$0]) }
        let g = product(delta, rows: rows, cols: cols, h: h)
        return zip(delta, g).reduce(0.0) { $0 + $1.0 * $1.1 }
    }

    /// A·H (rows × cols, F64).
    static func product(_ a: [Double], rows: Int, cols: Int, h: [Double]) -> [Double] {
        SwapRefinement.product(a, rows: rows, cols: cols, h: h)
    }
}
