/// A block of a weight matrix in F32: whole tensor, or rows `firstRow ..< firstRow+rows`.
public struct WeightBlock {
    /// Name of the tensor the block belongs to (seeds per-tensor randomness).
    public let name: String
    public let values: UnsafeBufferPointer<Float>
    public let rows: Int
    public let cols: Int
    /// Index of the block's first row within its tensor.
    public let firstRow: Int

    public init(name: String, values: UnsafeBufferPointer<Float>, rows: Int, cols: Int, firstRow: Int = 0) {
        precondition(values.count == rows * cols, "block values do not match rows × cols")
        self.name = name
        self.values = values
        self.rows = rows
        self.cols = cols
        self.firstRow = firstRow
    }
}

/// How important each weight is: larger scores are kept. Every criterion writes one
/// non-negative score per weight, so patterns and outputs never know which criterion ran
/// (Wanda and SparseGPT plug in here). NaN scores order above +inf, so a NaN weight
/// that a spec lets through is never the one pruned for being small.
public protocol ImportanceCriterion: Sendable {
    /// The name written to manifests and reports.
    var name: String { get }
    /// Scores for every weight of `block`, row-major, into `scores` (same count).
    func scores(_ block: WeightBlock, into scores: UnsafeMutableBufferPointer<Float>)
}

/// |w|.
public struct MagnitudeCriterion: ImportanceCriterion {
    public init() {}
    public var name: String { "magnitude" }
    public func scores(_ block: WeightBlock, into scores: UnsafeMutableBufferPointer<Float>) {
        let v = block.values
        for i in 0..<v.count { scores[i] = Float(bitPattern: v[i].bitPattern & 0x7FFF_FFFF) }
    }
}

/// Uniform random scores from a seed: a baseline. The score of a weight depends only on
/// the seed, the tensor's name and the weight's position, so any split into row blocks,
/// any worker and any order give the same mask.
public struct RandomCriterion: ImportanceCriterion {
    public let seed: UInt64
    public init(seed: UInt64) { self.seed = seed }
    public var name: String { "random" }

    public func scores(_ block: WeightBlock, into scores: UnsafeMutableBufferPointer<Float>) {
        let stream = seed ^ RandomCriterion.fnv1a(block.name)
        let base = UInt64(block.firstRow * block.cols)
        for i in 0..<(block.rows * block.cols) {
            let r = RandomCriterion.splitmix64(stream &+ (base &+ UInt64(i)) &* 0x9E37_79B9_7F4A_7C15)
            // 23 random mantissa bits in [1, 2): positive, finite, uniform.
            scores[i] = Float(bitPattern: 0x3F80_0000 | UInt32(truncatingIfNeeded: r >> 41))
        }
    }

    /// SplitMix64 finaliser: a stateless, well-mixed hash of a 64-bit counter.
    @inline(__always) static func splitmix64(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// FNV-1a of a name's UTF-8 bytes: stable across runs and platforms (unlike Hasher).
    static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return h
    }
}
