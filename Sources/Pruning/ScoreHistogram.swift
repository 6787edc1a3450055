/// Exact global score thresholds from per-tensor histograms (`allocation: global`).
///
/// Scores are finite and ≥ 0, so their F32 bit patterns order like their values. A
/// threshold is found in two rounds over the tensors, neither of which sends a score:
/// 1. each tensor's histogram of the high 16 bits of its scores (`coarse`); merged, they
///    name the bucket that holds the k-th smallest score (`Cut.locate`);
/// 2. each tensor's count below that bucket and its histogram of the low 16 bits within
///    it (`fine`); merged, they give the k-th score's exact bits.
/// Histograms are sparse (bucket, count) lists in bucket order: a layer's scores span a
/// few dozen binades, so a few thousand of the 65,536 buckets.
public enum ScoreHistogram {
    /// Sparse histogram of 16-bit keys: ascending keys and their counts.
    public struct Counts: Equatable, Sendable {
        public var keys: [UInt16] = []
        public var counts: [UInt64] = []

        public init() {}

        init(dense: [UInt64]) {
            for (k, c) in dense.enumerated() where c > 0 {
                keys.append(UInt16(k))
                counts.append(c)
            }
        }

        public var total: UInt64 { counts.reduce(0, +) }

        /// Little-endian: u32 entry count, then (u16 key, u64 count) per entry.
        public func serialized() -> [UInt8] {
            var out: [UInt8] = []
            out.reserveCapacity(4 + keys.count * 10)
            appendLE(&out, UInt32(keys.count))
            for (k, c) in zip(keys, counts) {
                appendLE(&out, k)
                appendLE(&out, c)
            }
            return out
        }

        /// Refuses anything but ascending distinct keys with counts > 0.
        public init(serialized bytes: [UInt8]) throws {
            var r = ByteReader(bytes: bytes, what: "score histogram")
            let n = Int(try r.u32())
            guard n <= 65536, bytes.count == 4 + n * 10 else { throw PruningError("score histogram: \(n) entries in \(bytes.count) bytes") }
            for _ in 0..<n {
                let k = UInt16(truncatingIfNeeded: try r.take(2).reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
                let c = try r.u64()
                guard c > 0, keys.last.map({ $0 < k }) ?? true else { throw PruningError("score histogram: keys not ascending or a zero count") }
                keys.append(k)
                counts.append(c)
            }
        }

        /// Adds another histogram (merge in a fixed order; sums are exact).
        public mutating func add(_ other: Counts) {
            var dense = [UInt64](repeating: 0, count: 65536)
            for (k, c) in zip(keys, counts) { dense[Int(k)] += c }
            for (k, c) in zip(other.keys, other.counts) { dense[Int(k)] += c }
            self = Counts(dense: dense)
        }
    }

    /// A tensor's round-2 result: its scores below the cut's bucket and the histogram of the
    /// low 16 bits of those in it. Bytes: u64 `below`, then `within`'s.
    public struct Fine: Equatable, Sendable {
        public var below: UInt64
        public var within: Counts

        public init(below: UInt64, within: Counts) {
            self.below = below
            self.within = within
        }

        public func serialized() -> [UInt8] {
            var out: [UInt8] = []
            appendLE(&out, below)
            return out + within.serialized()
        }

        public init(serialized bytes: [UInt8]) throws {
            var r = ByteReader(bytes: bytes, what: "score histogram")
            below = try r.u64()
            within = try Counts(serialized: Array(bytes[r.offset...]))
        }
    }

    /// The cut (round 1's bucket) as a task output: its key as a u64.
    public static func serializedCut(_ key: UInt16) -> [UInt8] {
        var out: [UInt8] = []
        appendLE(&out, UInt64(key))
        return out
    }

    public static func cut(serialized bytes: [UInt8]) throws -> UInt16 {
        var r = ByteReader(bytes: bytes, what: "histogram cut")
        let v = try r.u64()
        guard r.atEnd, v < 65536 else { throw PruningError("histogram cut: \(bytes.count) bytes, not one bucket") }
        return UInt16(v)
    }

    /// Round 1: the histogram of the scores' high 16 bits.
    public static func coarse(_ scores: UnsafeBufferPointer<Float>) throws -> Counts {
        var dense = [UInt64](repeating: 0, count: 65536)
        for s in scores {
            guard s.isFinite, s >= 0 else { throw PruningError("score histogram: a score is negative or not finite") }
            dense[Int(s.bitPattern >> 16)] += 1
        }
        return Counts(dense: dense)
    }

    /// Round 2: scores below bucket `high`, and the histogram of the low 16 bits of those in it.
    public static func fine(_ scores: UnsafeBufferPointer<Float>, high: UInt16) throws -> Fine {
        var dense = [UInt64](repeating: 0, count: 65536)
        var below: UInt64 = 0
        for s in scores {
            guard s.isFinite, s >= 0 else { throw PruningError("score histogram: a score is negative or not finite") }
            let bits = s.bitPattern, h = UInt16(bits >> 16)
            if h < high { below += 1 } else if h == high { dense[Int(bits & 0xFFFF)] += 1 }
        }
        return Fine(below: below, within: Counts(dense: dense))
    }

    /// Where the k-th smallest of the merged counts lies: the key whose cumulative count
    /// first exceeds k − 1 (keys ascending), and how many counts lie below that key. Pruning
    /// `k` scores means pruning all below the key and `k − below` of those at it.
    public static func locate(_ merged: Counts, prune k: UInt64) throws -> (key: UInt16, below: UInt64) {
        guard k > 0, k <= merged.total else { throw PruningError("score histogram: cannot prune \(k) of \(merged.total) scores") }
        var below: UInt64 = 0
        for (key, c) in zip(merged.keys, merged.counts) {
            if below + c >= k { return (key, below) }
            below += c
        }
        throw PruningError("score histogram: the counts do not reach \(k)")
    }

    /// How many of `total` scores a global target prunes (both rounds and the levels use it).
    public static func pruneCount(target: Double, total: UInt64) -> UInt64 {
        min(total, max(1, UInt64((target * Double(total)).rounded())))
    }

    /// Each tensor's level under the exact global threshold, from every tensor's round-2
    /// result (`below` its bucket, `within` it) in a fixed order: the scores below the k-th
    /// smallest are pruned, and the ties at it go to the tensors in order until k is met.
    public static func levels(_ parts: [Fine], sizes: [UInt64], prune k: UInt64) throws -> [Double] {
        guard parts.count == sizes.count, !parts.isEmpty else { throw PruningError("global threshold: \(parts.count) results for \(sizes.count) tensors") }
        var merged = Counts()
        var below: UInt64 = 0
        for (i, p) in parts.enumerated() {
            guard p.below + p.within.total <= sizes[i] else { throw PruningError("global threshold: tensor \(i) counts more scores than it has") }
            below += p.below
            merged.add(p.within)
        }
        guard k > below else { throw PruningError("global threshold: \(below) scores lie below the bucket of the \(k)-th") }
        let exact = try locate(merged, prune: k - below)
        var ties = k - below - exact.below
        return zip(parts, sizes).map { p, size in
            var pruned = p.below
            for (key, c) in zip(p.within.keys, p.within.counts) {
                if key < exact.key { pruned += c } else if key == exact.key {
                    let taken = min(c, ties)
                    pruned += taken
                    ties -= taken
                }
            }
            return Double(pruned) / Double(size)
        }
    }
}
