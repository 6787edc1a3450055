import Tensors

/// SparseGPT for one linear layer (Frantar & Alistarh 2023), after IST-DASLab/sparsegpt
/// `sparsegpt.py`: `addBatch` is its `add_batch`, `prune` its `fasterprune`.
///
/// The Hessian H = 2/n·Σ XᵀX (n = calibration samples, X a sample's tokens × columns) is
/// kept as a running weighted mean exactly like `add_batch`, so partial Hessians from
/// several workers `merge` into the same matrix. Precision: each batch's Gram XᵀX is
/// computed in F32 (as the reference computes everything), accumulated and merged in
/// F64; the factorisation runs in F64 (robust on ill-conditioned Hessians) and its result
/// is rounded to F32 for the column sweep, which runs in F32 like the reference.
/// Memory: H is columns² F64; `prune` adds a working F64 copy of it and the F32 factor
/// (1.5 × H more at the peak), plus two copies of the weights.
public struct SparseGPT: Equatable, Sendable {
    /// Output features (rows of W).
    public let rows: Int
    /// Input features (columns of W, order of H).
    public let columns: Int
    /// Calibration samples accumulated: the reference's `nsamples`.
    public private(set) var samples: Int
    /// H, columns × columns row-major F64; only the upper triangle is kept (the strictly
    /// lower one stays zero).
    public private(set) var hessian: [Double]

    static let magic: [UInt8] = Array("SPGPTH01".utf8)
    /// Rows of H computed per Gram tile in `addBatch` (bounds the F32 scratch).
    static let gramTile = 256

    /// An empty accumulator for a rows × columns weight.
    public init(rows: Int, columns: Int) {
        precondition(rows >= 0 && columns >= 0, "negative dimensions")
        self.rows = rows
        self.columns = columns
        samples = 0
        hessian = [Double](repeating: 0, count: columns * columns)
    }

    /// Adds a calibration batch: `tokens` rows of `columns` inputs, row-major, the tokens of
    /// `samples` sequences (1, as the reference's hook sees `[1, seqlen, hidden]`). Exactly
    /// `H *= n/(n+samples); n += samples; H += (2/n)·XᵀX`.
    public mutating func addBatch(_ x: UnsafeBufferPointer<Float>, tokens: Int, samples: Int = 1) {
        precondition(tokens >= 0 && x.count == tokens * columns, "batch size does not match tokens × columns")
        precondition(samples > 0, "a batch holds at least one sample")
        let total = self.samples + samples
        let beta = Double(self.samples) / Double(total), alpha = 2 / Double(total)
        self.samples = total
        let n = columns
        guard tokens > 0, let xb = x.baseAddress else {
            for i in 0..<hessian.count { hessian[i] *= beta }
            return
        }
        let tile = SparseGPT.gramTile
        var gram = [Float](repeating: 0, count: min(tile, n) * n)
        hessian.withUnsafeMutableBufferPointer { hb in
            gram.withUnsafeMutableBufferPointer { gb in
                guard let h = hb.baseAddress, let g = gb.baseAddress else { return }
                for r0 in stride(from: 0, to: n, by: tile) {
                    // Rows r0..<r1 of XᵀX from column r0 on (the upper triangle and a
                    // tile-sized diagonal block), then folded into H in F64.
                    let r1 = min(r0 + tile, n), width = n - r0
                    Linalg.gemm(transA: true, m: r1 - r0, n: width, k: tokens, xb + r0, lda: n, xb + r0, ldb: n, g, ldc: width)
                    for i in r0..<r1 {
                        let hrow = h + i * n, grow = g + (i - r0) * width
                        for j in i..<n { hrow[j] = beta * hrow[j] + alpha * Double(grow[j - r0]) }
                    }
                }
            }
        }
    }

    /// Adds another accumulator's Hessian (another worker's batches): the sample-weighted
    /// mean (n_a·H_a + n_b·H_b)/(n_a + n_b), the same matrix one accumulator would hold up to
    /// rounding. Merge in a fixed order for reproducible bytes.
    public mutating func merge(_ other: SparseGPT) {
        precondition(other.rows == rows && other.columns == columns, "merging Hessians of different layers")
        guard other.samples > 0 else { return }
        guard samples > 0 else { self = other; return }
        let total = samples + other.samples
        let wa = Double(samples) / Double(total), wb = Double(other.samples) / Double(total)
        hessian.withUnsafeMutableBufferPointer { a in
            other.hessian.withUnsafeBufferPointer { b in
                for i in 0..<a.count { a[i] = wa * a[i] + wb * b[i] }
            }
        }
        samples = total
    }

    /// The same Hessian for another layer reading the same input (q/k/v share one; so
    /// do gate/up): only the output row count differs.
    public func withRows(_ rows: Int) -> SparseGPT {
        SparseGPT(rows: rows, columns: columns, samples: samples, hessian: hessian)
    }

    /// The Hessian of the input with a constant 1 appended (columns + 1): the last row and
    /// column are 2/n·Σx and 2/n·tokens, from the input's column means over `tokens`
    /// tokens. An affine layer (weights and a bias) is a linear one on that input.
    public func withConstantInput(mean: [Double], tokens: Int) -> SparseGPT {
        precondition(mean.count == columns, "\(mean.count) means for \(columns) columns")
        let n = columns + 1, scale = 2 / Double(max(samples, 1))
        var h = [Double](repeating: 0, count: n * n)
        for i in 0..<columns {
            for j in i..<columns { h[i * n + j] = hessian[i * columns + j] }
            h[i * n + columns] = scale * mean[i] * Double(tokens)
        }
        h[columns * n + columns] = scale * Double(tokens)
        return SparseGPT(rows: rows, columns: n, samples: samples, hessian: h)
    }

    private init(rows: Int, columns: Int, samples: Int, hessian: [Double]) {
        self.rows = rows
        self.columns = columns
        self.samples = samples
        self.hessian = hessian
    }

    /// Little-endian bytes for the wire: "SPGPTH01", rows, columns, samples (u64 each), then
    /// H's upper triangle row by row as F64 (columns·(columns+1)/2 values).
    public func serialized() -> [UInt8] {
        var out = SparseGPT.magic
        out.reserveCapacity(32 + columns * (columns + 1) * 4)
        for v in [rows, columns, samples] { appendLE(&out, UInt64(v)) }
        for i in 0..<columns {
            for j in i..<columns { appendLE(&out, hessian[i * columns + j].bitPattern) }
        }
        return out
    }

    /// The (rows, columns, samples) of `serialized()` bytes when magic and length agree,
    /// without building the matrix (a coordinator checks results it only stores).
    public static func serializedHeader(_ bytes: [UInt8]) -> (rows: Int, columns: Int, samples: Int)? {
        guard bytes.count >= 32, Array(bytes[0..<8]) == magic else { return nil }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) } }
        let rows = u64(8), cols = u64(16), n = u64(24)
        guard rows <= UInt64(Int32.max), cols <= UInt64(Int32.max), n <= UInt64(Int.max),
              Int(cols) * (Int(cols) + 1) / 2 * 8 == bytes.count - 32 else { return nil }
        return (Int(rows), Int(cols), Int(n))
    }

    /// Reads `serialized()` bytes; refuses anything malformed.
    public init(serialized bytes: [UInt8]) throws {
        var r = ByteReader(bytes: bytes, what: "SparseGPT Hessian")
        guard Array(try r.take(8)) == SparseGPT.magic else { throw PruningError("SparseGPT Hessian: bad magic") }
        let rows = try r.u64(), cols = try r.u64(), n = try r.u64()
        guard rows <= UInt64(Int32.max), cols <= UInt64(Int32.max), n <= UInt64(Int.max),
              Int(cols) * (Int(cols) + 1) / 2 * 8 == bytes.count - 32 else {
            throw PruningError("SparseGPT Hessian: header (\(rows)×\(cols), \(n) samples) does not match \(bytes.count) bytes")
        }
        self.init(rows: Int(rows), columns: Int(cols))
        samples = Int(n)
        for i in 0..<columns {
            for j in i..<columns { hessian[i * columns + j] = try r.f64() }
        }
    }

    /// Prunes `weights` (rows × columns, row-major) in place and updates the kept weights to
    /// compensate (OBS), in blocks of `blockSize` columns, exactly as `fasterprune`:
    /// - dead inputs (H_ii = 0) get H_ii = 1 and W[:, i] = 0; H += percDamp·mean(diag H)·I;
    ///   Hinv = upper Cholesky factor of H⁻¹ (`Linalg.upperCholeskyOfInverse`);
    /// - unstructured (m == 0): per block, the reference's rule: with tmp = w²/Hinv_jj²,
    ///   the threshold is the sorted block's element at index ⌊numel·sparsity⌋ and every
    ///   tmp ≤ threshold is pruned, i.e. ⌊numel·sparsity⌋ + 1 per block (plus ties), chosen
    ///   globally within the block from the weights as they enter it;
    /// - N:M (m > 0, n kept of every m inputs, so m − n pruned; sparsity ignored): chosen
    ///   every m columns from the current (already updated) weights, ties pruned lower
    ///   index first;
    /// - the column sweep W1[:, i:] -= err·Hinv1[i, i:] and the block update
    ///   W[:, i2:] -= Err1·Hinv[i1:i2, i2:] (sgemm).
    /// Sparsity 0 (unstructured) returns at once with every weight kept (the reference
    /// would still prune one weight per block).
    ///
    /// Returns the mask (1 = kept) and the reconstruction error ‖WX − ŴX‖²_F summed over
    /// every calibration token, from the accumulated (undamped) Hessian as
    /// (n/2)·trace((W − Ŵ)·H·(W − Ŵ)ᵀ) in F64 (n = samples, so ΣXᵀX = n/2·H; one dsymm of
    /// rows × columns²). Dead inputs add nothing (their row and column of H are zero).
    /// Divide by the token count for a per-token mean. (The reference prints instead its
    /// OBS estimate Σ(w − q)²/d²/2, which is ½·trace(ΔW·H_damped·ΔWᵀ): per sample, and
    /// including the dampening.)
    public func prune(weights: inout [Float], sparsity: Double, n: Int = 0, m: Int = 0, blockSize: Int = 128,
                      percDamp: Double = 0.01, layer: String = "layer") throws -> (mask: Mask, error: Double) {
        let rows = rows, cols = columns
        guard weights.count == rows * cols else {
            throw PruningError("\(layer): \(weights.count) weights, the Hessian is for \(rows)×\(cols)")
        }
        guard sparsity.isFinite, sparsity >= 0, sparsity < 1 else { throw PruningError("\(layer): sparsity \(sparsity) is outside [0, 1)") }
        guard blockSize > 0 else { throw PruningError("\(layer): block size \(blockSize) must be positive") }
        guard percDamp.isFinite, percDamp >= 0 else { throw PruningError("\(layer): dampening \(percDamp) must be ≥ 0") }
        let nm = m > 0
        if nm {
            guard n >= 0, n < m else { throw PruningError("\(layer): N:M needs 0 ≤ N < M, got \(n):\(m)") }
            guard cols % m == 0, blockSize % m == 0 else {
                throw PruningError("\(layer): \(n):\(m) needs columns (\(cols)) and block size (\(blockSize)) divisible by \(m)")
            }
        }
        guard samples > 0 else { throw PruningError("\(layer): no calibration samples for SparseGPT") }
        if !nm && sparsity == 0 || rows == 0 || cols == 0 { return (Mask(rows: rows, cols: cols), 0) }

        // Hinv: the upper Cholesky factor of (H + dead fix + damping)⁻¹, F64 then F32.
        var h = hessian
        var dead: [Int] = []
        for i in 0..<cols where h[i * cols + i] == 0 { dead.append(i); h[i * cols + i] = 1 }
        for i in dead { for r in 0..<rows { weights[r * cols + i] = 0 } }
        var meanDiag = 0.0
        for i in 0..<cols { meanDiag += h[i * cols + i] }
        let damp = percDamp * meanDiag / Double(cols)
        for i in 0..<cols { h[i * cols + i] += damp }
        try Cancellation.checkpoint()
        try h.withUnsafeMutableBufferPointer { hb in
            guard let base = hb.baseAddress else { return }
            try Linalg.upperCholeskyOfInverse(base, n: cols, layer: layer)
        }
        let hinv = h.map { Float($0) }
        h = []

        let start = weights
        var keep = [UInt8](repeating: 0, count: rows * ((cols + 7) / 8))
        weights.withUnsafeMutableBufferPointer { wb in
            hinv.withUnsafeBufferPointer { ub in
                keep.withUnsafeMutableBufferPointer { kb in
                    guard let w = wb.baseAddress, let u = ub.baseAddress, let k = kb.baseAddress else { return }
                    SparseGPT.sweep(w: w, u: u, keep: k, rows: rows, cols: cols, sparsity: sparsity,
                                    pruneN: nm ? m - n : 0, m: m, blockSize: blockSize)
                }
            }
        }
        // The sweep stops early when the task is cancelled; its half-swept weights are dropped.
        try Cancellation.checkpoint()
        let mask = try Mask(rows: rows, cols: cols, bits: keep)
        return (mask, reconstructionError(start: start, pruned: weights))
    }

    /// How many weights the unstructured rule prunes, finite weights assumed and before
    /// ties at a block's threshold (each tie prunes one more): Σ over blocks of ⌊rows·count·sparsity⌋ + 1, and 0 at sparsity 0. This is
    /// the reference's count, a little above `SparsityPattern.plannedPruned` (one weight per
    /// block): a checker comparing achieved and planned sparsity should use this.
    public static func plannedPruned(rows: Int, columns: Int, sparsity: Double, blockSize: Int = 128) -> Int {
        guard sparsity > 0, rows > 0, blockSize > 0 else { return 0 }
        return stride(from: 0, to: columns, by: blockSize).reduce(0) { total, i1 in
            let numel = rows * min(blockSize, columns - i1)
            return total + min(Int(Double(numel) * sparsity), numel - 1) + 1
        }
    }

    /// The blocked OBS sweep over W (rows × cols) with Hinv `u` (upper, cols × cols, F32).
    static func sweep(w: UnsafeMutablePointer<Float>, u: UnsafePointer<Float>, keep: UnsafeMutablePointer<UInt8>,
                      rows: Int, cols: Int, sparsity: Double, pruneN: Int, m: Int, blockSize: Int) {
        let bs = min(blockSize, cols), bpr = (cols + 7) / 8
        let w1 = UnsafeMutablePointer<Float>.allocate(capacity: rows * bs)        // W1, rows × count
        let err1 = UnsafeMutablePointer<Float>.allocate(capacity: rows * bs)      // Err1
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: rows * bs)       // w²/d² scores
        let pruned = UnsafeMutablePointer<Bool>.allocate(capacity: rows * bs)     // mask1
        defer { w1.deallocate(); err1.deallocate(); tmp.deallocate(); pruned.deallocate() }
        var scratch = RadixSelect.Scratch()
        var keys = [UInt32](repeating: 0, count: max(m, 1))

        for i1 in stride(from: 0, to: cols, by: bs) {
            if Cancellation.isCancelled { return }
            let i2 = min(i1 + bs, cols), count = i2 - i1, numel = rows * count
            for r in 0..<rows { (w1 + r * count).update(from: w + r * cols + i1, count: count) }
            pruned.update(repeating: false, count: numel)
            if pruneN == 0 {
                // tmp = W1² / diag(Hinv1)²; thresh = sort(tmp)[⌊numel·sparsity⌋]; mask1 = tmp ≤ thresh.
                for r in 0..<rows {
                    for j in 0..<count {
                        let d = u[(i1 + j) * cols + i1 + j], x = w1[r * count + j]
                        tmp[r * count + j] = (x * x) / (d * d)
                    }
                }
                let k = min(Int(Double(numel) * sparsity), numel - 1)
                let thresh = tmp.withMemoryRebound(to: UInt32.self, capacity: numel) { kp in
                    Float(bitPattern: RadixSelect.cut(UnsafeBufferPointer(start: kp, count: numel), prune: k + 1,
                                                      digits: RadixSelect.wideDigits, scratch: &scratch).value)
                }
                for e in 0..<numel { pruned[e] = tmp[e] <= thresh }
            }
            for i in 0..<count {
                let urow = u + (i1 + i) * cols + i1      // Hinv1[i, :]
                if pruneN > 0 && i % m == 0 {
                    // The m − n smallest w²/d² of each group, from the current weights.
                    for r in 0..<rows {
                        for j in 0..<m {
                            let d = u[(i1 + i + j) * cols + i1 + i + j], x = w1[r * count + i + j]
                            keys[j] = ((x * x) / (d * d)).bitPattern
                        }
                        for j in 0..<m {
                            var rank = 0
                            for l in 0..<m where keys[l] < keys[j] || (keys[l] == keys[j] && l < j) { rank += 1 }
                            if rank < pruneN { pruned[r * count + i + j] = true }
                        }
                    }
                }
                let d = urow[i]
                for r in 0..<rows {
                    let row = w1 + r * count
                    guard pruned[r * count + i] else { err1[r * count + i] = 0; continue }
                    // q = 0: err = (w − q)/d; W1[r, i+1:] -= err·Hinv1[i, i+1:].
                    let e = row[i] / d
                    err1[r * count + i] = e
                    row[i] = 0
                    for j in (i + 1)..<count { row[j] -= e * urow[j] }
                }
            }
            for r in 0..<rows {
                (w + r * cols + i1).update(from: w1 + r * count, count: count)
                for j in 0..<count where !pruned[r * count + j] { keep[r * bpr + (i1 + j) >> 3] |= 1 << UInt8((i1 + j) & 7) }
            }
            // W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]
            Linalg.gemm(m: rows, n: cols - i2, k: count, alpha: -1, err1, lda: count, u + i1 * cols + i2, ldb: cols,
                        beta: 1, w + i2, ldc: cols)
        }
    }

    /// (n/2)·Σ_rows Δw·H·Δwᵀ with Δw = start − pruned, in F64, 256 rows at a time.
    func reconstructionError(start: [Float], pruned: [Float]) -> Double {
        let cols = columns, chunk = 256
        var delta = [Double](repeating: 0, count: min(chunk, rows) * cols)
        var product = delta
        var total = 0.0
        for r0 in stride(from: 0, to: rows, by: chunk) {
            let r1 = min(r0 + chunk, rows)
            for e in 0..<((r1 - r0) * cols) { delta[e] = Double(start[r0 * cols + e]) - Double(pruned[r0 * cols + e]) }
            delta.withUnsafeBufferPointer { d in
                product.withUnsafeMutableBufferPointer { p in
                    hessian.withUnsafeBufferPointer { h in
                        guard let db = d.baseAddress, let pb = p.baseAddress, let hb = h.baseAddress else { return }
                        Linalg.symmRight(m: r1 - r0, n: cols, db, ldb: cols, symmetricUpper: hb, pb, ldc: cols)
                    }
                }
            }
            for e in 0..<((r1 - r0) * cols) { total += delta[e] * product[e] }
        }
        return total * Double(samples) / 2
    }
}
