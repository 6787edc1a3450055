/// Turns scores into a mask under a pattern. Deterministic: among equal scores the
/// weight with the lower index is pruned first.
public enum MaskSelection {
    /// The mask keeping the most important weights of a rows × cols score matrix.
    public static func mask(scores: UnsafeBufferPointer<Float>, rows: Int, cols: Int,
                            pattern: SparsityPattern, sparsity: Double) throws -> Mask {
        precondition(scores.count == rows * cols, "scores do not match rows × cols")
        try pattern.validate(rows: rows, cols: cols)
        guard sparsity >= 0, sparsity < 1 else { throw PruningError("sparsity \(sparsity) is outside [0, 1)") }
        return try scores.withMemoryRebound(to: UInt32.self) { keys in
            switch pattern {
            case .unstructured:
                let k = pattern.plannedPruned(rows: rows, cols: cols, sparsity: sparsity)
                var scratch = RadixSelect.Scratch()
                let cut = RadixSelect.cut(keys, prune: k, digits: RadixSelect.wideDigits, scratch: &scratch)
                var equalLeft = cut.equalPruned
                return Mask.build(rows: rows, cols: cols) { bits, bpr in
                    for r in 0..<rows {
                        fillRow(keys.baseAddress! + r * cols, cols: cols, cut: cut, equalLeft: &equalLeft, into: bits + r * bpr)
                    }
                }
            case .perRow:
                let k = SparsityPattern.count(of: cols, at: sparsity)
                var scratch = RadixSelect.Scratch()
                return Mask.build(rows: rows, cols: cols) { bits, bpr in
                    for r in 0..<rows {
                        let rowKeys = UnsafeBufferPointer(rebasing: keys[(r * cols)..<((r + 1) * cols)])
                        let cut = RadixSelect.cut(rowKeys, prune: k, digits: RadixSelect.narrowDigits, scratch: &scratch)
                        var equalLeft = cut.equalPruned
                        fillRow(rowKeys.baseAddress!, cols: cols, cut: cut, equalLeft: &equalLeft, into: bits + r * bpr)
                    }
                }
            case .nm(let n, let m):
                return nmMask(keys, rows: rows, cols: cols, n: n, m: m)
            case .rows(let norm):
                return rowMask(scores, rows: rows, cols: cols, norm: norm, sparsity: sparsity)
            case .units:
                throw PruningError("pattern \(pattern) removes units across tensors (BlockUnits), not weights of one tensor")
            }
        }
    }

    /// Packs one row: pruned where key < cut, or key == cut while the equal-cut budget
    /// lasts. Once the budget is spent the test is a plain `key >= cut`, branch-free.
    @inline(__always)
    static func fillRow(_ keys: UnsafePointer<UInt32>, cols: Int, cut: RadixSelect.Cut,
                        equalLeft: inout Int, into out: UnsafeMutablePointer<UInt8>) {
        if cut == .none {
            for c in 0..<cols { out[c >> 3] |= 1 << UInt8(c & 7) }
            return
        }
        let t = cut.value
        var c = 0
        // Whole bytes: keys above the cut are kept; keys equal to it are pruned in index
        // order while the budget lasts (rare: only the cut value's ties get here).
        let threshold = SIMD8<UInt32>(repeating: t)
        while c + 8 <= cols {
            let v = UnsafeRawPointer(keys + c).loadUnaligned(as: SIMD8<UInt32>.self)
            var gt = Branchless.bits(v .> threshold)
            let eqMask = v .== threshold
            if any(eqMask) {
                var eq = Branchless.bits(eqMask)
                while eq != 0 {
                    let bit = eq & -eq
                    if equalLeft > 0 { equalLeft -= 1 } else { gt |= bit }
                    eq &= eq - 1
                }
            }
            out[c >> 3] = UInt8(truncatingIfNeeded: gt)
            c += 8
        }
        while c < cols {
            let key = keys[c]
            if key == t && equalLeft > 0 { equalLeft -= 1 } else if key >= t { out[c >> 3] |= 1 << UInt8(c & 7) }
            c += 1
        }
    }

    /// N:M: in each group of m, prune the m−n with the lowest rank, rank counting how many
    /// group members come before a weight in (score, index) order.
    static func nmMask(_ keys: UnsafeBufferPointer<UInt32>, rows: Int, cols: Int, n: Int, m: Int) -> Mask {
        let pruneCount = m - n
        return Mask.build(rows: rows, cols: cols) { bits, bpr in
            var order = [Int](repeating: 0, count: m)
            var ranks = [Int](repeating: 0, count: m)
            for r in 0..<rows {
                let row = bits + r * bpr
                let rowKeys = keys.baseAddress! + r * cols
                var g = 0
                if m == 4 {
                    // 2:4 and friends: two groups make one byte, stored once.
                    while g + 8 <= cols {
                        let lo = rankNibble(rowKeys + g, pruneCount)
                        let hi = rankNibble(rowKeys + g + 4, pruneCount)
                        row[g >> 3] = UInt8(truncatingIfNeeded: lo | (hi << 4))
                        g += 8
                    }
                    if g < cols { row[g >> 3] = UInt8(truncatingIfNeeded: rankNibble(rowKeys + g, pruneCount)) }
                    continue
                }
                while g < cols {
                    let k = rowKeys + g
                    if m <= 16 {
                        // Pairwise: j (< i) comes before i in (score, index) order iff k_j <= k_i.
                        for i in 0..<m { ranks[i] = 0 }
                        for i in 1..<m {
                            for j in 0..<i {
                                let before = k[j] <= k[i] ? 1 : 0
                                ranks[i] &+= before
                                ranks[j] &+= 1 &- before
                            }
                        }
                        for i in 0..<m where ranks[i] >= pruneCount { row[(g + i) >> 3] |= 1 << UInt8((g + i) & 7) }
                    } else {
                        for i in 0..<m { order[i] = i }
                        order.sort { (k[$0], $0) < (k[$1], $1) }
                        for i in order[pruneCount...] { row[(g + i) >> 3] |= 1 << UInt8((g + i) & 7) }
                    }
                    g += m
                }
            }
        }
    }

    /// Keep-bits of one group of four: ranks from six comparisons, no branches.
    @inline(__always)
    static func rankNibble(_ k: UnsafePointer<UInt32>, _ pruneCount: Int) -> Int {
        let b01 = Branchless.lessOrEqual(k[0], k[1]), b02 = Branchless.lessOrEqual(k[0], k[2])
        let b03 = Branchless.lessOrEqual(k[0], k[3]), b12 = Branchless.lessOrEqual(k[1], k[2])
        let b13 = Branchless.lessOrEqual(k[1], k[3]), b23 = Branchless.lessOrEqual(k[2], k[3])
        let r0 = 3 - b01 - b02 - b03
        let r1 = b01 + 2 - b12 - b13
        let r2 = b02 + b12 + 1 - b23
        let r3 = b03 + b13 + b23
        return Branchless.atLeast(r0, pruneCount) | Branchless.atLeast(r1, pruneCount) << 1
            | Branchless.atLeast(r2, pruneCount) << 2 | Branchless.atLeast(r3, pruneCount) << 3
    }

    /// Whole rows: rank rows by the L1 or L2 norm of their scores; prune the lowest.
    static func rowMask(_ scores: UnsafeBufferPointer<Float>, rows: Int, cols: Int, norm: RowNorm, sparsity: Double) -> Mask {
        let k = SparsityPattern.count(of: rows, at: sparsity)
        var rowScores = [Double](repeating: 0, count: rows)
        for r in 0..<rows {
            var acc = 0.0
            for c in 0..<cols {
                let s = Double(scores[r * cols + c])
                acc += norm == .l1 ? s : s * s
            }
            // A NaN weight (allowed by the spec) makes its row rank as most important.
            rowScores[r] = acc.isNaN ? .infinity : (norm == .l1 ? acc : acc.squareRoot())
        }
        let order = (0..<rows).sorted { (rowScores[$0], $0) < (rowScores[$1], $1) }
        var pruned = [Bool](repeating: false, count: rows)
        for r in order.prefix(k) { pruned[r] = true }
        return Mask(rows: rows, cols: cols) { r, row in
            guard !pruned[r] else { return }
            for c in 0..<cols { row[c >> 3] |= 1 << UInt8(c & 7) }
        }
    }
}

/// Comparisons as 0/1 integers by arithmetic, not branches: on random weights a branch
/// mispredicts half the time, and these loops are the whole cost of masking.
enum Branchless {
    @inline(__always) static func greater(_ a: UInt32, _ b: UInt32) -> Int { Int((Int64(b) &- Int64(a)) >> 63) & 1 }
    @inline(__always) static func lessOrEqual(_ a: UInt32, _ b: UInt32) -> Int { 1 &+ Int((Int64(b) &- Int64(a)) >> 63) }
    @inline(__always) static func equal(_ a: UInt32, _ b: UInt32) -> Int { Int(((Int64(a) ^ Int64(b)) &- 1) >> 63) & 1 }
    @inline(__always) static func atLeast(_ a: Int, _ b: Int) -> Int { 1 &+ ((a &- b) >> 63) }

    static let laneBits = SIMD8<UInt32>(1, 2, 4, 8, 16, 32, 64, 128)

    /// Eight lane flags packed into the low byte, lane 0 in bit 0.
    @inline(__always) static func bits(_ mask: SIMDMask<SIMD8<Int32>>) -> Int {
        Int(SIMD8<UInt32>(repeating: 0).replacing(with: laneBits, where: mask).wrappedSum())
    }
}
