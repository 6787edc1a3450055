/// Norm used to rank whole output rows.
public enum RowNorm: String, Sendable, Codable {
    case l1, l2
}

/// Which weights compete with each other for survival.
public enum SparsityPattern: Equatable, Sendable, CustomStringConvertible {
    /// The smallest fraction of the whole tensor.
    case unstructured
    /// The smallest fraction of each output row (the comparison group Wanda uses).
    case perRow
    /// At most `n` nonzero weights in every `m` consecutive weights along the input
    /// dimension (NVIDIA's N:M; 2:4 keeps 2 of every 4).
    case nm(n: Int, m: Int)
    /// Whole output rows with the smallest L1 or L2 norm of their scores.
    case rows(RowNorm)
    /// Whole units of a decoder block, removed from the model's shapes (`StructuredUnits`):
    /// MLP channels (a gate row, an up row and a down column), query heads, or both
    /// (`heads+channels`; in `UnitKind.allCases` order, attention before the MLP).
    case units([UnitKind])

    /// Parses `unstructured`, `per_row`, `N:M`, `rows_l1`, `rows_l2`.
    public init(parsing text: String) throws {
        switch text {
        case "unstructured": self = .unstructured
        case "per_row": self = .perRow
        case "rows_l1": self = .rows(.l1)
        case "rows_l2": self = .rows(.l2)
        case "channels": self = .units([.channels])
        case "heads": self = .units([.heads])
        case "heads+channels", "channels+heads": self = .units([.heads, .channels])
        default:
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let n = Int(parts[0]), let m = Int(parts[1]) else {
                throw PruningError("unknown pattern '\(text)' (expected unstructured, per_row, N:M such as 2:4, rows_l1, rows_l2, channels, heads or heads+channels)")
            }
            guard n >= 0, m >= 1, n < m else {
                throw PruningError("pattern \(text): N:M needs 0 ≤ N < M")
            }
            self = .nm(n: n, m: m)
        }
    }

    public var description: String {
        switch self {
        case .unstructured: return "unstructured"
        case .perRow: return "per_row"
        case .nm(let n, let m): return "\(n):\(m)"
        case .rows(let norm): return "rows_\(norm.rawValue)"
        case .units(let kinds): return kinds.map(\.rawValue).joined(separator: "+")
        }
    }

    /// Whether the pattern removes whole units from the model's shapes.
    public var isStructural: Bool {
        if case .units = self { return true }
        return false
    }

    /// The sparsity an N:M pattern implies; nil for patterns that take a sparsity.
    public var impliedSparsity: Double? {
        if case .nm(let n, let m) = self { return Double(m - n) / Double(m) }
        return nil
    }

    /// Checks the pattern fits a rows × cols matrix.
    public func validate(rows: Int, cols: Int) throws {
        if case .nm(_, let m) = self, cols % m != 0 {
            throw PruningError("N:M pattern \(self) needs the input dimension divisible by \(m), but it is \(cols)")
        }
    }

    /// How many weights this pattern prunes from a rows × cols matrix at `sparsity`.
    /// Counts round down, as Wanda and SparseGPT do.
    public func plannedPruned(rows: Int, cols: Int, sparsity: Double) -> Int {
        switch self {
        case .unstructured: return SparsityPattern.count(of: rows * cols, at: sparsity)
        case .perRow: return rows * SparsityPattern.count(of: cols, at: sparsity)
        case .nm(let n, let m): return rows * (cols / m) * (m - n)
        case .rows: return SparsityPattern.count(of: rows, at: sparsity) * cols
        // A unit spans tensors (rows of one, columns of another): `StructuredUnits` counts.
        case .units: return 0
        }
    }

    /// floor(n × sparsity), forgiving the binary representation of the fraction: 0.29 of
    /// 100 is 29 (the double product is 28.999999999999996).
    public static func count(of n: Int, at sparsity: Double) -> Int {
        guard sparsity > 0, n > 0 else { return 0 }
        guard sparsity < 1 else { return n }
        let exact = Double(n) * sparsity
        return min(n, Int((exact * (1 + 4 * Double.ulpOfOne)).rounded(.down)))
    }
}
