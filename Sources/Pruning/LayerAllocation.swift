/// Per-layer sparsity levels whose mean over all targeted weights (weighted by size) is
/// the job's target. Pure arithmetic in F64 in a fixed order, so every worker computes the
/// same levels from the same inputs.
public enum LayerAllocation {
    /// OWL (Yin et al. 2024, luuyin/OWL `prune_wanda_outlier`): a unit's (decoder block's)
    /// outlier ratio (the fraction of its Wanda scores above M × their mean) is mapped
    /// linearly onto [0, 2λ], centred on the target density: the units with the most
    /// outliers keep the most weights. Then clamped to [minimum, maximum] and shifted so
    /// the size-weighted mean is the target again (the reference's mean is unweighted;
    /// the two agree when all units are the same size, as a Llama's blocks are).
    public static func owl(outlierRatios ratios: [Double], weights: [Double], target: Double, lambda: Double,
                           minimum: Double, maximum: Double) throws -> [Double] {
        guard !ratios.isEmpty, ratios.count == weights.count else { throw PruningError("OWL allocation: \(ratios.count) ratios for \(weights.count) units") }
        guard ratios.allSatisfy({ $0.isFinite && $0 >= 0 && $0 <= 1 }) else { throw PruningError("OWL allocation: an outlier ratio outside [0, 1]") }
        let low = ratios.min()!, high = ratios.max()!
        // All ratios equal: nothing tells the units apart, so every one gets the target.
        let spread = high > low ? ratios.map { ($0 - low) / (high - low) * 2 * lambda } : ratios.map { _ in 0.0 }
        let mean = spread.reduce(0, +) / Double(spread.count)
        let levels = spread.map { 1 - ($0 - mean + (1 - target)) }
        return try rebalanced(levels, weights: weights, target: target, minimum: minimum, maximum: maximum)
    }

    /// `levels` clamped to [minimum, maximum] and shifted by one δ so that the
    /// size-weighted mean is `target`; unchanged when they already are.
    public static func rebalanced(_ levels: [Double], weights: [Double], target: Double, minimum: Double, maximum: Double) throws -> [Double] {
        let total = weights.reduce(0, +)
        guard total > 0, minimum <= target, target <= maximum else {
            throw PruningError("allocation: the target \(target) is outside [\(minimum), \(maximum)]")
        }
        func mean(_ delta: Double) -> Double {
            zip(levels, weights).reduce(0) { $0 + Swift.min(maximum, Swift.max(minimum, $1.0 + delta)) * $1.1 } / total
        }
        if levels.allSatisfy({ $0 >= minimum && $0 <= maximum }) && abs(mean(0) - target) < 1e-12 { return levels }
        // The mean rises with δ: bisect on it (a fixed number of steps, the same on every host).
        var lo = -1.0, hi = 1.0
        for _ in 0..<100 {
            let mid = (lo + hi) / 2
            if mean(mid) < target { lo = mid } else { hi = mid }
        }
        let delta = (lo + hi) / 2
        return levels.map { Swift.min(maximum, Swift.max(minimum, $0 + delta)) }
    }
}
