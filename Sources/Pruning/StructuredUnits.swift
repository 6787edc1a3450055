import Foundation

/// What structured pruning removes whole from a decoder block.
public enum UnitKind: String, Sendable, Codable, CaseIterable {
    /// Query heads: head h is q rows h·d ..< (h+1)·d and the same o columns; every
    /// key/value group loses the same number of its query heads, so the grouped-query
    /// ratio stays a whole number and the key/value heads stay as they are. Without
    /// grouped-query attention (one key/value head per query head) a head goes whole: its
    /// k and v rows with it.
    case heads
    /// MLP channels: channel j is gate row j, up row j and down column j, removed together
    /// (the SwiGLU product of that channel then never reaches the output).
    case channels
}

/// Where a block's units lie in one tensor: `width` consecutive rows (or columns) per unit.
public struct UnitSlice: Sendable, Equatable {
    public enum Axis: String, Sendable { case rows, cols }
    public let tensor: String
    public let axis: Axis
    public init(tensor: String, axis: Axis) {
        self.tensor = tensor
        self.axis = axis
    }
}

/// How a unit's importance is measured.
public enum UnitScore: String, Sendable {
    /// The L1 norm of every weight of the unit (all its slices): Σ|w|.
    case l1
    /// The L2 norm of every weight of the unit (all its slices).
    case l2
    /// Wanda's |W|·‖X‖ summed over the unit's weights, ‖X‖ the norm of each weight's input
    /// column on the calibration data.
    case wanda
    /// First-order Taylor of removing the whole unit: |Σ w·G| over its weights, G the
    /// calibration windows' summed gradient (LLM-Pruner's vector-wise importance).
    case taylor
    /// The diagonal Fisher saliency summed over the unit: Σ w²·Σ g² (each window's
    /// gradient squared, then summed).
    case fisher
    /// FLAP's weighted input fluctuation (WIFV; An et al. 2024): for the slice that reads
    /// the units (down_proj's or o_proj's columns), Var(x_j)·‖W[:, j]‖² per column: how much
    /// of the layer's output moves with column j. A channel's score is its column's; a
    /// head's is Σ over its columns of that score squared (the reference's attention metric).
    /// Removed units are then replaced by their mean contribution, a bias
    /// (`BlockUnits.compensation`).
    case flap

    /// Whether the score reads gradients (`gradients` of `BlockUnits.scores`).
    public var usesGradients: Bool { self == .taylor || self == .fisher }
}

/// How a global allocation makes one block's unit scores comparable with another's.
public enum Standardization: String, Sendable, CaseIterable {
    /// (x − mean) / standard deviation: FLAP's. A few huge scores (a block whose inputs
    /// carry massive activations) inflate the deviation and bunch the rest near the mean.
    case zscore
    /// (x − median) / interquartile range: the bulk of the scores sets the scale.
    case robust
}

/// The units of one decoder block, how they lie in its tensors, and how many go.
public struct BlockUnits: Sendable, Equatable {
    public let kind: UnitKind
    /// Units in the block (intermediate channels, or query heads).
    public let count: Int
    /// Rows or columns per unit in each slice (1 for a channel, head_dim for a head).
    public let width: Int
    /// Groups that each keep the same number of units (the key/value groups for heads, one
    /// group for channels); a group's units are consecutive.
    public let groups: Int
    public let slices: [UnitSlice]

    public init(kind: UnitKind, count: Int, width: Int, groups: Int, slices: [UnitSlice]) {
        self.kind = kind
        self.count = count
        self.width = width
        self.groups = groups
        self.slices = slices
    }

    /// Units each group removes at `sparsity` (the fraction of the block's units), rounded
    /// down as every other pattern rounds its counts.
    public func removedPerGroup(at sparsity: Double) -> Int {
        SparsityPattern.count(of: count, at: sparsity) / groups
    }

    /// Units kept in the whole block at `sparsity`.
    public func keptCount(at sparsity: Double) -> Int { count - groups * removedPerGroup(at: sparsity) }

    /// Scores of every unit (higher: more important), summed in a fixed order in F64.
    /// `weights[tensor]` is the tensor row-major; `inputNorms[tensor]` its input columns'
    /// squared norms on the calibration data (Wanda's statistic), needed for `.wanda`.
    /// `gradients[tensor]` is its summed gradient (Σ g, or Σ g² for `.fisher`), for those.
    /// `fluctuation[tensor]` is the per-column input variance of the slices that read the
    /// units (`.flap`; the other slices do not count).
    public func scores(_ score: UnitScore, weights: [String: (values: [Float], rows: Int, cols: Int)],
                       inputNorms: [String: [Double]] = [:], gradients: [String: [Float]] = [:],
                       fluctuation: [String: [Double]] = [:]) throws -> [Double] {
        var out = [Double](repeating: 0, count: count)
        for slice in slices where score != .flap || slice.axis == .cols {
            guard let w = weights[slice.tensor] else { throw PruningError("units: no weights of '\(slice.tensor)'") }
            let along = slice.axis == .rows ? w.rows : w.cols
            guard along == count * width, w.values.count == w.rows * w.cols else {
                throw PruningError("units: '\(slice.tensor)' is \(w.rows)×\(w.cols); \(count) \(kind.rawValue) of \(width) \(slice.axis.rawValue) need \(count * width) \(slice.axis.rawValue)")
            }
            if score.usesGradients {
                guard let g = gradients[slice.tensor], g.count == w.values.count else {
                    throw PruningError("units: no gradient of \(w.values.count) values for '\(slice.tensor)'")
                }
                // Per weight w·G (Taylor, signed: the unit's terms add before the absolute
                // value) or w²·Σg² (Fisher), into the unit of its row or column.
                for r in 0..<w.rows {
                    for c in 0..<w.cols {
                        let k = r * w.cols + c, x = Double(w.values[k])
                        out[(slice.axis == .rows ? r : c) / width] += score == .taylor ? x * Double(g[k]) : x * x * Double(g[k])
                    }
                }
                continue
            }
            if score == .flap {
                guard let variance = fluctuation[slice.tensor], variance.count == w.cols else {
                    throw PruningError("units: no fluctuation statistic of \(w.cols) columns for '\(slice.tensor)'")
                }
                for (c, metric) in BlockUnits.fluctuationMetric(w, variance: variance).enumerated() {
                    out[c / width] += kind == .heads ? metric * metric : metric
                }
                continue
            }
            var norms: [Double] = []
            if score == .wanda {
                guard let squared = inputNorms[slice.tensor], squared.count == w.cols else {
                    throw PruningError("units: no input statistic of \(w.cols) columns for '\(slice.tensor)'")
                }
                norms = squared.map { max($0, 0).squareRoot() }
            }
            w.values.withUnsafeBufferPointer { v in
                for r in 0..<w.rows {
                    let row = v.baseAddress! + r * w.cols
                    switch slice.axis {
                    case .rows:
                        var sum = 0.0
                        if score == .l2 {
                            for c in 0..<w.cols { let x = Double(row[c]); sum += x * x }
                        } else if score == .l1 {
                            for c in 0..<w.cols { sum += abs(Double(row[c])) }
                        } else {
                            for c in 0..<w.cols { sum += abs(Double(row[c])) * norms[c] }
                        }
                        out[r / width] += sum
                    case .cols:
                        for c in 0..<w.cols {
                            let x = Double(row[c])
                            out[c / width] += score == .l2 ? x * x : score == .l1 ? abs(x) : abs(x) * norms[c]
                        }
                    }
                }
            }
        }
        switch score {
        case .l2: return out.map { $0.squareRoot() }
        case .taylor: return out.map(abs)
        case .l1, .wanda, .fisher, .flap: return out
        }
    }

    /// FLAP's WIFV per column of a slice that reads the units: Var(x_c)·Σ_r W[r, c]² (the
    /// column energy summed in row order).
    static func fluctuationMetric(_ w: (values: [Float], rows: Int, cols: Int), variance: [Double]) -> [Double] {
        var columnEnergy = [Double](repeating: 0, count: w.cols)
        for r in 0..<w.rows { for c in 0..<w.cols { let x = Double(w.values[r * w.cols + c]); columnEnergy[c] += x * x } }
        return (0..<w.cols).map { variance[$0] * columnEnergy[$0] }
    }

    /// Scores comparable across blocks and kinds, for ranking every unit of the model
    /// together (`allocation: global`, FLAP's adaptive structure AL-AM): each score as a
    /// z-score within its block and kind (mean and unbiased standard deviation over the
    /// group's units). FLAP's heads follow the reference: the squared metric of each
    /// o_proj column is standardized over the columns, and a head scores the mean of its
    /// columns'. Order within the group is that of `scores`, so the units a block keeps
    /// for a given count are the same either way.
    public func standardizedScores(_ score: UnitScore, weights: [String: (values: [Float], rows: Int, cols: Int)],
                                   inputNorms: [String: [Double]] = [:], gradients: [String: [Float]] = [:],
                                   fluctuation: [String: [Double]] = [:], standardization: Standardization = .zscore) throws -> [Double] {
        let raw = try scores(score, weights: weights, inputNorms: inputNorms, gradients: gradients, fluctuation: fluctuation)
        guard score == .flap, kind == .heads, width > 1 else { return BlockUnits.standardized(raw, standardization) }
        guard let slice = slices.first(where: { $0.axis == .cols }), let w = weights[slice.tensor], let variance = fluctuation[slice.tensor] else {
            throw PruningError("units: no column slice with its fluctuation statistic to standardize heads by")
        }
        let columns = BlockUnits.standardized(BlockUnits.fluctuationMetric(w, variance: variance).map { $0 * $0 }, standardization)
        return (0..<count).map { u in columns[(u * width)..<((u + 1) * width)].reduce(0, +) / Double(width) }
    }

    /// Scores standardized as `method` says.
    public static func standardized(_ x: [Double], _ method: Standardization) -> [Double] {
        method == .zscore ? zScores(x) : robustScores(x)
    }

    /// (x − median) / interquartile range, quartiles interpolated linearly between order
    /// statistics (numpy's default); the z-score when the quartiles coincide.
    public static func robustScores(_ x: [Double]) -> [Double] {
        guard x.count > 1 else { return x.map { _ in 0 } }
        let sorted = x.sorted()
        func quantile(_ p: Double) -> Double {
            let at = p * Double(sorted.count - 1), below = Int(at.rounded(.down)), f = at - Double(below)
            return below + 1 < sorted.count ? sorted[below] + (sorted[below + 1] - sorted[below]) * f : sorted[below]
        }
        let median = quantile(0.5), spread = quantile(0.75) - quantile(0.25)
        guard spread > 0, spread.isFinite else { return zScores(x) }
        return x.map { ($0 - median) / spread }
    }

    /// (x − mean) / unbiased standard deviation, in F64 and index order (all zeros when
    /// the values do not vary).
    public static func zScores(_ x: [Double]) -> [Double] {
        guard x.count > 1 else { return x.map { _ in 0 } }
        let mean = x.reduce(0, +) / Double(x.count)
        let variance = x.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(x.count - 1)
        let deviation = variance.squareRoot()
        guard deviation > 0, deviation.isFinite else { return x.map { _ in 0 } }
        return x.map { ($0 - mean) / deviation }
    }

    /// FLAP's bias compensation for a slice that reads the units (rows × cols, `.cols`):
    /// per output row, Σ over the removed units' columns c of W[r, c]·mean[c] (in F64,
    /// columns in order), the output those columns gave on average, which a bias adds back.
    public func compensation(_ slice: UnitSlice, weights: [Float], rows: Int, cols: Int, mean: [Double], kept units: [Int]) throws -> [Float] {
        guard slice.axis == .cols, cols == count * width, weights.count == rows * cols, mean.count == cols else {
            throw PruningError("units: '\(slice.tensor)' (\(rows)×\(cols), \(mean.count) means) is not a slice reading \(count) \(kind.rawValue)")
        }
        var removed = [Bool](repeating: true, count: cols)
        for line in keptLines(units) { removed[line] = false }
        let columns = (0..<cols).filter { removed[$0] }
        return (0..<rows).map { r in
            var sum = 0.0
            for c in columns { sum += Double(weights[r * cols + c]) * mean[c] }
            return Float(sum)
        }
    }

    /// The units kept at `sparsity`, ascending: in every group the highest scores, a tie
    /// going to the lower index (so the choice depends on the scores only).
    public func kept(scores: [Double], sparsity: Double) throws -> [Int] {
        try kept(scores: scores, count: keptCount(at: sparsity))
    }

    /// The `total` units kept (a multiple of `groups`), chosen as `kept(scores:sparsity:)` does.
    public func kept(scores: [Double], count total: Int) throws -> [Int] {
        guard scores.count == count else { throw PruningError("units: \(scores.count) scores for \(count) \(kind.rawValue)") }
        guard scores.allSatisfy(\.isFinite) else { throw PruningError("units: a \(kind.rawValue) score is not finite") }
        guard total > 0, total <= count, total % groups == 0 else {
            throw PruningError("units: \(total) kept \(kind.rawValue) is not a positive multiple of \(groups) groups at most \(count)")
        }
        let perGroup = count / groups, keep = total / groups
        var kept: [Int] = []
        for g in 0..<groups {
            let members = Array(g * perGroup ..< (g + 1) * perGroup)
            let best = members.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }.prefix(keep)
            kept += best.sorted()
        }
        return kept
    }

    /// The rows (or columns) of a slice that kept units cover, ascending.
    public func keptLines(_ units: [Int]) -> [Int] {
        units.flatMap { u in u * width ..< (u + 1) * width }
    }

    /// The mask of one slice's tensor (rows × cols) that zeroes every removed unit.
    public func mask(_ slice: UnitSlice, rows: Int, cols: Int, kept units: [Int]) -> Mask {
        var keep = [Bool](repeating: false, count: count * width)
        for line in keptLines(units) { keep[line] = true }
        let full = Mask(rows: 1, cols: cols).bits
        var columns = [UInt8](repeating: 0, count: (cols + 7) / 8)
        if slice.axis == .cols { for c in 0..<cols where keep[c] { columns[c >> 3] |= 1 << UInt8(c & 7) } }
        return Mask(rows: rows, cols: cols) { r, row in
            switch slice.axis {
            case .rows: if keep[r] { for i in row.indices { row[i] = full[i] } }
            case .cols: for i in row.indices { row[i] = columns[i] }
            }
        }
    }
}
