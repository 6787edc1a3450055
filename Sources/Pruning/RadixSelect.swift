/// Exact k-th smallest selection over 32-bit keys in linear time, without sorting.
///
/// Non-negative floats order like their bit patterns, so importance scores are selected
/// on as UInt32. Each level histograms one digit of the key among the candidates left by
/// the level above and keeps only the bin holding the k-th key: a few streaming passes
/// whatever the distribution, and the result is the exact value, not an estimate.
public enum RadixSelect {
    /// Digit widths for large arrays (a whole tensor) and for short ones (a row).
    public static let wideDigits = [16, 16]
    public static let narrowDigits = [12, 10, 10]

    /// Where the cut falls for pruning the `k` smallest keys.
    public struct Cut: Equatable, Sendable {
        /// Keys strictly below `value` are pruned.
        public let value: UInt32
        /// Of the keys equal to `value`, this many are pruned too: the first ones by index.
        public let equalPruned: Int
        /// Nothing at all is pruned (k == 0).
        public static let none = Cut(value: 0, equalPruned: 0)
    }

    /// Reusable buffers, so selecting row after row allocates nothing.
    public struct Scratch {
        var histogram: [UInt32] = []
        var candidates: [UInt32] = []
        public init() {}
    }

    /// The cut that prunes exactly `k` of `keys` (0 ≤ k ≤ count), ties broken by index.
    public static func cut(_ keys: UnsafeBufferPointer<UInt32>, prune k: Int, digits: [Int], scratch: inout Scratch) -> Cut {
        precondition(k >= 0 && k <= keys.count, "k out of range")
        if k == 0 { return .none }
        let (value, below) = kthSmallest(keys, k, digits: digits, scratch: &scratch)
        return Cut(value: value, equalPruned: k - below)
    }

    /// Arrays at least this long first try to bracket the answer from a sample.
    static let sampleThreshold = 1 << 18
    static let sampleCount = 1 << 16

    /// The k-th smallest key (1-based) and how many keys are strictly smaller.
    static func kthSmallest(_ keys: UnsafeBufferPointer<UInt32>, _ k: Int, digits: [Int], scratch: inout Scratch) -> (UInt32, Int) {
        if keys.count >= sampleThreshold, let found = sampledKthSmallest(keys, k, digits: digits, scratch: &scratch) {
            return found
        }
        return radixKthSmallest(keys, k, digits: digits, scratch: &scratch)
    }

    /// Floyd–Rivest style: a fixed-stride sample (deterministic) brackets the k-th key
    /// between two sample values; one pass counts the keys below the bracket and gathers
    /// the few inside it; the exact answer is then selected among those. Returns nil when
    /// the bracket missed (then the caller does the full radix select). The result is the
    /// same exact value either way; only the time differs.
    static func sampledKthSmallest(_ keys: UnsafeBufferPointer<UInt32>, _ k: Int, digits: [Int], scratch: inout Scratch) -> (UInt32, Int)? {
        let n = keys.count
        let stride = n / sampleCount
        var sample = (0..<sampleCount).map { keys[$0 * stride] }
        sample.sort()
        let position = Int(Double(k - 1) / Double(n) * Double(sampleCount))
        // The k-th key's rank in the sample has a standard deviation of at most
        // sqrt(sampleCount)/2; a margin of 4 of those misses about once in 30,000 runs.
        let margin = 2 * Int(Double(sampleCount).squareRoot())
        let lo = position - margin <= 0 ? 0 : sample[position - margin]
        let hi = position + margin >= sampleCount - 1 ? UInt32.max : sample[position + margin]
        var below = 0
        var inside: [UInt32] = []
        inside.reserveCapacity(n / sampleCount * (2 * margin + 1) * 2)
        let base = keys.baseAddress!
        // One unsigned compare tests lo ≤ key ≤ hi: a branch that is rarely taken, so it
        // predicts well (two compares would branch at random on half the keys).
        let width = hi &- lo
        let loLanes = SIMD8<UInt32>(repeating: lo), widthLanes = SIMD8<UInt32>(repeating: width)
        let ones = SIMD8<UInt32>(repeating: 1), zeros = SIMD8<UInt32>(repeating: 0)
        var i = 0
        while i + 8 <= n {
            // Lane counters are flushed every 2^20 steps, long before they could overflow.
            var belowLanes = zeros
            let end = min(n - 7, i + 8 << 20)
            while i < end {
                let v = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD8<UInt32>.self)
                belowLanes &+= zeros.replacing(with: ones, where: v .< loLanes)
                let inRange = (v &- loLanes) .<= widthLanes
                if any(inRange) {
                    for j in 0..<8 where inRange[j] { inside.append(v[j] &- lo) }
                }
                i &+= 8
            }
            below &+= Int(belowLanes.wrappedSum())
        }
        while i < n {
            let key = base[i]
            below &+= Branchless.greater(lo, key)
            if key &- lo <= width { inside.append(key &- lo) }
            i &+= 1
        }
        guard below < k, below + inside.count >= k else { return nil }
        // Inside keys are stored as offsets from lo: only the low bits vary, so the radix
        // digits cover just those bits instead of splitting on a near-constant prefix.
        let (offset, belowInside) = inside.withUnsafeBufferPointer {
            radixKthSmallest($0, k - below, digits: digitsCovering(width), scratch: &scratch)
        }
        return (lo &+ offset, below + belowInside)
    }

    /// Digits (most significant first, at most 12 bits each) that together cover every
    /// bit of values up to `maxValue`.
    static func digitsCovering(_ maxValue: UInt32) -> [Int] {
        let used = max(32 - maxValue.leadingZeroBitCount, 1)
        let levels = (used + 11) / 12
        var digits: [Int] = []
        var left = used
        for l in 0..<levels {
            let width = left / (levels - l) + (left % (levels - l) == 0 ? 0 : 1)
            digits.append(width)
            left -= width
        }
        return digits
    }

    static func radixKthSmallest(_ keys: UnsafeBufferPointer<UInt32>, _ k: Int, digits: [Int], scratch: inout Scratch) -> (UInt32, Int) {
        var remaining = k
        var below = 0
        var prefix: UInt32 = 0
        // Digits may cover fewer than 32 bits when every key is known to be small.
        var shift = digits.reduce(0, +)
        var candidateCount = 0
        let maxBins = 1 << (digits.max() ?? 16)
        if scratch.histogram.count < maxBins { scratch.histogram = [UInt32](repeating: 0, count: maxBins) }
        for (level, width) in digits.enumerated() {
            shift -= width
            let bins = 1 << width
            let digitMask = UInt32(bins - 1)
            let s = UInt32(shift)
            let (digit, binCount): (Int, Int) = scratch.histogram.withUnsafeMutableBufferPointer { hist in
                for b in 0..<bins { hist[b] = 0 }
                if level == 0 {
                    for key in keys { hist[Int(key &>> s)] &+= 1 }
                } else {
                    scratch.candidates.withUnsafeBufferPointer { c in
                        for i in 0..<candidateCount { hist[Int((c[i] &>> s) & digitMask)] &+= 1 }
                    }
                }
                var d = 0
                while Int(hist[d]) < remaining {
                    remaining -= Int(hist[d])
                    below += Int(hist[d])
                    d += 1
                }
                return (d, Int(hist[d]))
            }
            prefix |= UInt32(digit) << s
            if level == digits.count - 1 { break }
            // Keep only keys whose digits so far match the prefix: exactly `binCount` of them.
            let high = prefix &>> s
            if scratch.candidates.count < binCount {
                scratch.candidates = [UInt32](unsafeUninitializedCapacity: binCount) { _, n in n = binCount }
            }
            scratch.candidates.withUnsafeMutableBufferPointer { c in
                var n = 0
                if level == 0 {
                    for key in keys where key &>> s == high { c[n] = key; n += 1 }
                } else {
                    for i in 0..<candidateCount where c[i] &>> s == high { c[n] = c[i]; n += 1 }
                }
                candidateCount = n
            }
        }
        return (prefix, below)
    }
}
