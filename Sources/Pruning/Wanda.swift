/// Wanda's calibration statistic for one linear layer: per input column j, the running
/// mean over calibration *samples* of ||X_j||², the squared L2 norm of column j over the
/// tokens seen (locuslab/wanda `WrappedGPT.add_batch`, `scaler_row`).
///
/// The definition is exactly the reference's: a call to `add` with a batch of `samples`
/// sequences (1 by default, as Wanda's calibration hook sees `[1, seqlen, hidden]`) does
/// `scaler *= nsamples/(nsamples+samples); nsamples += samples; scaler += Σ_tokens x² / nsamples`,
/// so after everything `norm_j = Σ_{all tokens} x_tj² / (number of samples)`. It divides
/// by samples (sequences), not tokens: a constant factor per layer, which changes no
/// per-row or N:M ranking, but it is the number Wanda reports, so it is kept.
///
/// Reproducible merging: each `add` sums its tokens in Double (a fixed order within the
/// batch), and those per-batch sums are accumulated *exactly* in a fixed-point integer
/// (the square of a Float is a multiple of 2⁻²⁹⁸, so every sum is too). Integer addition is
/// associative, so statistics split across any number of workers and merged in any order
/// give the same bits as one accumulation over the same batches; the single rounding
/// happens in `norms`.
public struct WandaStatistics: Equatable, Sendable {
    /// Input columns (the layer's in_features).
    public let columns: Int
    /// Calibration samples (sequences) accumulated: Wanda's `nsamples`.
    public private(set) var samples: Int
    /// Per column, `limbCount` 32-bit limbs (held in Int64 so a few adds can carry later),
    /// least significant first; limb i weighs 2^(32i − 352).
    private var limbs: [Int64]
    /// Per column: 0 finite, 1 +infinity seen, 2 NaN seen.
    private var special: [UInt8]

    static let limbCount = 24
    static let limbBias = 352          // bit 0 of limb 0 weighs 2⁻³⁵²: below any Float square
    static let magic: [UInt8] = Array("WANDAST1".utf8)

    /// Empty statistics for a layer with `columns` inputs.
    public init(columns: Int) {
        precondition(columns >= 0, "negative column count")
        self.columns = columns
        samples = 0
        limbs = [Int64](repeating: 0, count: columns * WandaStatistics.limbCount)
        special = [UInt8](repeating: 0, count: columns)
    }

    /// Adds one calibration batch: `tokens` rows of `columns` inputs (row-major, all the
    /// tokens of `samples` sequences).
    public mutating func add(batch: UnsafeBufferPointer<Float>, tokens: Int, columns: Int, samples: Int = 1) {
        precondition(columns == self.columns, "batch has \(columns) columns, statistics \(self.columns)")
        precondition(tokens >= 0 && batch.count == tokens * columns, "batch size does not match tokens × columns")
        precondition(samples >= 0, "negative sample count")
        var sums = [Double](repeating: 0, count: columns)
        if let base = batch.baseAddress {
            sums.withUnsafeMutableBufferPointer { s in
                for t in 0..<tokens {
                    let row = base + t * columns
                    for c in 0..<columns { let x = Double(row[c]); s[c] += x * x }
                }
            }
        }
        for c in 0..<columns { accumulate(sums[c], column: c) }
        self.samples += samples
    }

    /// Adds statistics gathered elsewhere (another worker's share of the batches).
    public mutating func merge(_ other: WandaStatistics) {
        precondition(other.columns == columns, "merging statistics of \(other.columns) columns into \(columns)")
        for i in 0..<limbs.count { limbs[i] += other.limbs[i] }
        for c in 0..<columns {
            special[c] = max(special[c], other.special[c])
            normalize(column: c)
        }
        samples += other.samples
    }

    /// Per column, Σ x² over all tokens / samples: Wanda's `scaler_row` (zero before any sample).
    public var norms: [Double] {
        (0..<columns).map { c in
            switch special[c] {
            case 2: return .nan
            case 1: return .infinity
            default: return samples == 0 ? 0 : exactSum(column: c) / Double(samples)
            }
        }
    }

    /// Adds a non-negative Double exactly: its 53-bit significand lands on two or three limbs.
    private mutating func accumulate(_ v: Double, column c: Int) {
        if v.isNaN { special[c] = 2; return }
        if v.isInfinite { special[c] = max(special[c], 1); return }
        guard v > 0 else { return }
        var m = v.significandBitPattern | (v.isNormal ? 1 << 52 : 0)
        var p = Int(v.exponent) - 52 + WandaStatistics.limbBias
        if !v.isNormal { p = -1074 + WandaStatistics.limbBias }
        if p < 0 { m >>= UInt64(-p); p = 0 }     // below 2⁻³⁵²: never a sum of Float squares
        // Above 2⁴⁰⁰ (a sum of Float squares stays below 2³²⁰): beyond the accumulator.
        if p >= (WandaStatistics.limbCount - 2) * 32 { special[c] = max(special[c], 1); return }
        let base = c * WandaStatistics.limbCount + p >> 5, shift = UInt64(p & 31)
        let lo = (m & 0xFFFF_FFFF) << shift, hi = (m >> 32) << shift
        limbs[base] += Int64(lo & 0xFFFF_FFFF)
        limbs[base + 1] += Int64(lo >> 32) + Int64(hi & 0xFFFF_FFFF)
        limbs[base + 2] += Int64(hi >> 32)
        normalize(column: c)
    }

    /// Carries so every limb but the last is in [0, 2³²): one representation per value.
    private mutating func normalize(column c: Int) {
        let base = c * WandaStatistics.limbCount
        var carry: Int64 = 0
        for i in base..<(base + WandaStatistics.limbCount - 1) {
            let v = limbs[i] + carry
            limbs[i] = v & 0xFFFF_FFFF
            carry = v >> 32
        }
        limbs[base + WandaStatistics.limbCount - 1] += carry
    }

    /// The exact sum as a Double: a function of the (normalised) value only.
    private func exactSum(column c: Int) -> Double {
        let base = c * WandaStatistics.limbCount
        var d = 0.0
        for i in stride(from: WandaStatistics.limbCount - 1, through: 0, by: -1) where limbs[base + i] != 0 {
            d += Double(limbs[base + i]) * Double(sign: .plus, exponent: 32 * i - WandaStatistics.limbBias, significand: 1)
        }
        return d
    }

    /// Little-endian bytes for the wire: "WANDAST1", columns (u64), samples (u64), then per
    /// column a flag byte (0 finite, 1 +inf, 2 NaN), the first nonzero limb, the limb
    /// count, and that many u32 limbs.
    public func serialized() -> [UInt8] {
        var out = WandaStatistics.magic
        out.reserveCapacity(24 + columns * 19)
        appendLE(&out, UInt64(columns))
        appendLE(&out, UInt64(samples))
        for c in 0..<columns {
            let column = limbs[(c * WandaStatistics.limbCount)..<((c + 1) * WandaStatistics.limbCount)]
            let first = column.firstIndex { $0 != 0 }.map { $0 - column.startIndex } ?? 0
            let last = column.lastIndex { $0 != 0 }.map { $0 - column.startIndex + 1 } ?? 0
            out.append(special[c])
            out.append(UInt8(first))
            out.append(UInt8(max(0, last - first)))
            for i in first..<max(first, last) { appendLE(&out, UInt32(truncatingIfNeeded: column[column.startIndex + i])) }
        }
        return out
    }

    /// Reads `serialized()` bytes; refuses anything malformed.
    public init(serialized bytes: [UInt8]) throws {
        var r = ByteReader(bytes: bytes, what: "Wanda statistics")
        guard Array(try r.take(8)) == WandaStatistics.magic else { throw PruningError("Wanda statistics: bad magic") }
        let cols = try r.u64(), n = try r.u64()
        guard cols <= UInt64(bytes.count), n <= UInt64(Int.max) else { throw PruningError("Wanda statistics: implausible header") }
        self.init(columns: Int(cols))
        samples = Int(n)
        for c in 0..<columns {
            let flag = try r.u8(), first = Int(try r.u8()), count = Int(try r.u8())
            guard flag <= 2, first + count <= WandaStatistics.limbCount else {
                throw PruningError("Wanda statistics: column \(c) is malformed")
            }
            special[c] = flag
            for i in 0..<count { limbs[c * WandaStatistics.limbCount + first + i] = Int64(try r.u32()) }
        }
        guard r.atEnd else { throw PruningError("Wanda statistics: \(bytes.count - r.offset) trailing bytes") }
    }
}

/// Wanda importance: |W_ij| · sqrt(norm_j), norm_j the `WandaStatistics` column norm, in
/// F32 as the reference computes it (`torch.abs(W) * torch.sqrt(scaler_row)`). Wanda
/// compares weights within each output row: use it with `SparsityPattern.perRow` for
/// unstructured sparsity (the reference's per-row stable sort, ties pruned lower index
/// first) and with `.nm` for N:M.
public struct WandaCriterion: ImportanceCriterion {
    /// sqrt(norm_j) per input column, in F32.
    public let columnScales: [Float]

    /// From per-column norms (Wanda's `scaler_row`), rounded to F32 like the reference.
    public init(norms: [Double]) {
        columnScales = norms.map { Float($0).squareRoot() }
    }

    public init(statistics: WandaStatistics) { self.init(norms: statistics.norms) }

    public var name: String { "wanda" }

    public func scores(_ block: WeightBlock, into scores: UnsafeMutableBufferPointer<Float>) {
        precondition(block.cols == columnScales.count, "\(block.name): \(block.cols) columns, Wanda statistics have \(columnScales.count)")
        let v = block.values
        columnScales.withUnsafeBufferPointer { s in
            for r in 0..<block.rows {
                let base = r * block.cols
                for c in 0..<block.cols { scores[base + c] = abs(v[base + c]) * s[c] }
            }
        }
    }
}

/// Little-endian append of a fixed-width integer.
func appendLE<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
    withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
}

/// Bounds-checked little-endian reads for the serialised statistics.
struct ByteReader {
    let bytes: [UInt8]
    let what: String
    var offset = 0
    var atEnd: Bool { offset == bytes.count }

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, bytes.count - offset >= n else { throw PruningError("\(what): truncated at byte \(offset)") }
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }
    mutating func u8() throws -> UInt8 { let s = try take(1); return s[s.startIndex] }
    mutating func u64() throws -> UInt64 { try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func u32() throws -> UInt32 { try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func f64() throws -> Double { Double(bitPattern: try u64()) }
}
