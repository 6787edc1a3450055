import Foundation
import Tensors

/// The steps of an evolutionary search over per-layer sparsity levels in the style of
/// EvoPress (Sieberling et al. 2025, `evo_prune_search.py`): offspring by level-switch
/// mutation, selection in stages on growing samples of calibration tokens, fitness the KL
/// divergence from the dense model. Each step is a pure function of its inputs and a
/// seed, so a generation computed on any worker, or again after a crash, is the same.
public enum EvolutionarySearch {
    /// `count` distinct offspring of `parent`: each moves 1–3 level steps (fewer more
    /// likely: the least of two draws from 1…3) from one layer to another, within the
    /// grid's bounds. A small grid may not hold `count` distinct children different from
    /// the parent; then repeats fill the rest (their fitness is measured again, harmlessly).
    public static func offspring(of parent: [Int], count: Int, grid: LevelGrid, seed: UInt64, generation: Int) -> [[Int]] {
        var random = SeededRandom(seed: seed, stream: "offspring", UInt64(generation))
        var children: [[Int]] = []
        var attempts = 0
        while children.count < count {
            var child = parent
            let flips = min(random.below(3), random.below(3)) + 1
            for _ in 0..<flips {
                let lower = child.indices.filter { child[$0] > grid.lowest[$0] }
                let raise = child.indices.filter { child[$0] < grid.highest[$0] }
                guard !lower.isEmpty, !raise.isEmpty else { break }
                let down = lower[random.below(lower.count)]
                let others = raise.filter { $0 != down }
                guard !others.isEmpty else { break }
                let up = others[random.below(others.count)]
                child[down] -= 1
                child[up] += 1
            }
            attempts += 1
            if (child != parent && !children.contains(child)) || attempts > 64 * count { children.append(child) }
        }
        return children
    }

    /// The calibration windows a selection stage scores on: ⌈tokens / length⌉ distinct
    /// windows of `available` (each `length` tokens), drawn with the seed for this
    /// generation and stage, the last cut so the sample holds `tokens` tokens. Every
    /// candidate of the stage is scored on the same sample.
    public static func sample(available: Int, length: Int, tokens: Int, seed: UInt64, generation: Int, stage: Int) -> [(window: Int, tokens: Int)] {
        precondition(available > 0 && length > 0 && tokens > 0)
        let wanted = min(available, (tokens + length - 1) / length)
        var random = SeededRandom(seed: seed, stream: "sample", UInt64(generation) << 16 | UInt64(stage))
        var pool = Array(0..<available)
        var out: [(window: Int, tokens: Int)] = []
        var left = min(tokens, available * length)
        for k in 0..<wanted {
            let j = k + random.below(available - k)
            pool.swapAt(k, j)
            out.append((pool[k], min(length, left)))
            left -= min(length, left)
        }
        return out
    }

    /// The indices of the `survivors` least fitness values, best first (ties: lower index).
    public static func select(_ fitness: [Double], survivors: Int) -> [Int] {
        Array(fitness.indices.sorted { (fitness[$0], $0) < (fitness[$1], $1) }.prefix(survivors))
    }
}

/// The next-token KL divergence of a model from a reference, the fitness EvoPress
/// searches with: Σ_v p(v) (log p(v) − log q(v)) per position, p the reference's
/// distribution, q the candidate's, summed over positions in order in F64.
public enum NextTokenKL {
    /// Log-probabilities (F32) of `positions` rows of `vocab` logits.
    public static func logProbabilities(_ logits: [Float], positions: Int, vocab: Int) -> [Float] {
        precondition(logits.count >= positions * vocab)
        var out = [Float](repeating: 0, count: positions * vocab)
        for t in 0..<positions {
            let lse = logSumExp(logits, row: t, vocab: vocab)
            for v in 0..<vocab { out[t * vocab + v] = Float(Double(logits[t * vocab + v]) - lse) }
        }
        return out
    }

    /// The KL summed over the first `positions` rows: the reference as log-probabilities,
    /// the candidate as logits.
    public static func sum(reference: [Float], candidate logits: [Float], positions: Int, vocab: Int) -> Double {
        precondition(reference.count >= positions * vocab && logits.count >= positions * vocab)
        var total = 0.0
        for t in 0..<positions {
            let lse = logSumExp(logits, row: t, vocab: vocab)
            var kl = 0.0
            for v in 0..<vocab {
                let p = reference[t * vocab + v]
                kl += Double(expf(p)) * (Double(p) - (Double(logits[t * vocab + v]) - lse))
            }
            total += kl
        }
        return total
    }

    private static func logSumExp(_ logits: [Float], row t: Int, vocab: Int) -> Double {
        var m = -Float.infinity
        for v in 0..<vocab { m = max(m, logits[t * vocab + v]) }
        var s = 0.0
        for v in 0..<vocab { s += Double(expf(logits[t * vocab + v] - m)) }
        return log(s) + Double(m)
    }
}

/// A deterministic stream of random numbers from a seed and a stream name and counter
/// (SplitMix64 over a counter): the same on every platform and Swift version, unlike the
/// standard library's generators and `random(in:)`.
public struct SeededRandom {
    private var state: UInt64

    public init(seed: UInt64, stream: String, _ counter: UInt64) {
        state = RandomCriterion.splitmix64(seed ^ RandomCriterion.fnv1a(stream) ^ RandomCriterion.splitmix64(counter))
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return RandomCriterion.splitmix64(state)
    }

    /// Uniform in 0..<n (n ≥ 1); the modulo bias is below 2⁻⁵⁰ for the n used here.
    public mutating func below(_ n: Int) -> Int {
        precondition(n > 0)
        return Int(next() % UInt64(n))
    }
}
