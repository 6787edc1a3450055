/// FLAP's calibration statistic for one linear layer (An et al. 2024, CASIA-IVA-Lab/FLAP
/// `BiasGPT`): per input column j, the mean of x_j over every calibration token (the
/// `baseline_inp` its bias compensation adds back for removed columns) and the spread of
/// x_j around it (`fluc_inp`, the "fluctuation": a column whose input barely moves can be
/// replaced by its mean, a constant that a bias carries, at little cost).
///
/// Definitions: mean_j = Σ_t x_tj / N and fluctuation_j = Σ_t (x_tj − mean_j)² / (N − 1),
/// the sample variance over all N tokens. The reference updates a running estimate batch by
/// batch, which skips its first batch's spread and reads its old mean through an alias (so
/// its value depends on the batching); the variance over all tokens is what it estimates,
/// and a per-layer constant factor changes no ranking within a layer.
///
/// Reproducible merging: each `add` computes its batch's mean and squared deviations in
/// Double (two passes, a fixed order), and batches and shards combine by Chan et al.'s
/// pairwise update in the order they are given; the callers add samples in order and merge
/// shards in shard order, so the bytes do not depend on how many workers ran.
public struct FluctuationStatistics: CalibrationStatistic, Equatable {
    /// Input columns (the layer's in_features).
    public let columns: Int
    /// Tokens accumulated.
    public private(set) var tokens: Int
    /// Per column, the mean input over the tokens.
    public private(set) var mean: [Double]
    /// Per column, Σ (x − mean)² over the tokens.
    private var squaredDeviations: [Double]

    static let magic: [UInt8] = Array("FLUCTST1".utf8)

    public init(columns: Int) {
        precondition(columns >= 0, "negative column count")
        self.columns = columns
        tokens = 0
        mean = [Double](repeating: 0, count: columns)
        squaredDeviations = [Double](repeating: 0, count: columns)
    }

    /// Per column, the sample variance of the input over the tokens (0 before two tokens).
    public var fluctuation: [Double] {
        tokens < 2 ? [Double](repeating: 0, count: columns) : squaredDeviations.map { $0 / Double(tokens - 1) }
    }

    public mutating func add(_ batch: UnsafeBufferPointer<Float>, tokens n: Int) {
        precondition(n >= 0 && batch.count == n * columns, "batch size does not match tokens × columns")
        guard n > 0, let base = batch.baseAddress else { return }
        var part = FluctuationStatistics(columns: columns)
        part.tokens = n
        for t in 0..<n { for c in 0..<columns { part.mean[c] += Double(base[t * columns + c]) } }
        for c in 0..<columns { part.mean[c] /= Double(n) }
        for t in 0..<n {
            for c in 0..<columns { let d = Double(base[t * columns + c]) - part.mean[c]; part.squaredDeviations[c] += d * d }
        }
        combine(part)
    }

    public mutating func merge(with other: FluctuationStatistics) throws {
        guard other.columns == columns else { throw PruningError("fluctuation statistics: merging \(other.columns) columns into \(columns)") }
        guard !tokens.addingReportingOverflow(other.tokens).overflow else { throw PruningError("fluctuation statistics: token counts overflow") }
        combine(other)
    }

    /// A shard's statistic covers exactly its samples' tokens, with finite means: the
    /// token count weighs the affine re-fit's constant input, so a wrong one would skew it.
    public static func problem(inSerialized bytes: [UInt8], samples: Int, tokens: Int) -> String? {
        guard let statistic = try? FluctuationStatistics(serialized: bytes) else { return "not a fluctuation statistic" }
        guard statistic.tokens == samples * tokens else { return "covers \(statistic.tokens) tokens, not \(samples) × \(tokens)" }
        guard statistic.mean.allSatisfy(\.isFinite) else { return "has a mean that is not finite" }
        return nil
    }

    /// Chan, Golub and LeVeque's pairwise update: exact in real arithmetic, stable in Double.
    private mutating func combine(_ other: FluctuationStatistics) {
        guard other.tokens > 0 else { return }
        guard tokens > 0 else { self = other; return }
        let n = Double(tokens), m = Double(other.tokens), total = n + m
        for c in 0..<columns {
            let delta = other.mean[c] - mean[c]
            squaredDeviations[c] += other.squaredDeviations[c] + delta * delta * n * m / total
            mean[c] += delta * m / total
        }
        tokens += other.tokens
    }

    /// Little-endian bytes: "FLUCTST1", columns and tokens (u64), then every column's mean
    /// and every column's squared deviations (F64).
    public func serialized() -> [UInt8] {
        var out = FluctuationStatistics.magic
        out.reserveCapacity(24 + columns * 16)
        appendLE(&out, UInt64(columns))
        appendLE(&out, UInt64(tokens))
        for v in mean + squaredDeviations { appendLE(&out, v.bitPattern) }
        return out
    }

    public static func columns(ofSerialized bytes: [UInt8]) -> Int? {
        guard bytes.count >= 24, Array(bytes[0..<8]) == magic else { return nil }
        let columns = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[8 + $1]) << (8 * UInt64($1)) }
        guard columns <= UInt64(Int32.max), 24 + Int(columns) * 16 == bytes.count else { return nil }
        return Int(columns)
    }

    public init(serialized bytes: [UInt8]) throws {
        guard let columns = FluctuationStatistics.columns(ofSerialized: bytes) else {
            throw PruningError("fluctuation statistics: \(bytes.count) bytes are not a serialized statistic")
        }
        var r = ByteReader(bytes: bytes, what: "fluctuation statistics")
        _ = try r.take(16)
        let tokens = try r.u64()
        guard tokens <= UInt64(Int.max) else { throw PruningError("fluctuation statistics: \(tokens) tokens") }
        self.init(columns: columns)
        self.tokens = Int(tokens)
        for c in 0..<columns { mean[c] = try r.f64() }
        for c in 0..<columns {
            let v = try r.f64()
            // A spread is never negative; NaN passes (non-finite inputs) and fails scoring.
            guard !(v < 0) else { throw PruningError("fluctuation statistics: column \(c) has a negative spread") }
            squaredDeviations[c] = v
        }
    }

    /// FLAP scores whole units (`BlockUnits.scores` with `.flap`), never single weights.
    public func prune(weights: [Float], rows: Int, options: LayerPruneOptions, layer: String) throws -> PrunedLayer {
        throw PruningError("\(layer): method flap removes whole channels or heads (pattern channels or heads), not single weights")
    }
}
