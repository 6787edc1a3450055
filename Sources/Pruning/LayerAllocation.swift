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

    /// The levels that reach `target` with the least total error (`allocation:
    /// error_budget`). `curves[u][k]` is unit u's error at `levels[k]` (ascending, from the
    /// smallest allowed level to the largest); `weights[u]` its size. Between measured
    /// levels a unit's error is the lower convex hull of its points, so the problem is a
    /// fractional knapsack: every unit starts at `levels[0]`, and hull segments are taken
    /// in order of error added per weight pruned until the pruned weights reach the target,
    /// the last one in part. That is the Lagrangian optimum over the hulls, exact for the
    /// target (ties: lower unit, then lower level first, so every host picks the same).
    public static func errorBudget(curves: [[Double]], levels: [Double], weights: [Double], target: Double) throws -> [Double] {
        guard !curves.isEmpty, curves.count == weights.count else { throw PruningError("error-budget allocation: \(curves.count) curves for \(weights.count) units") }
        guard levels.count >= 2, zip(levels, levels.dropFirst()).allSatisfy({ $0 < $1 }), levels.allSatisfy({ $0.isFinite && $0 >= 0 && $0 < 1 }) else {
            throw PruningError("error-budget allocation: levels must rise within [0, 1)")
        }
        guard levels.first! <= target, target <= levels.last! else {
            throw PruningError("error-budget allocation: the target \(target) is outside [\(levels.first!), \(levels.last!)]")
        }
        guard curves.allSatisfy({ $0.count == levels.count && $0.allSatisfy { $0.isFinite && $0 >= 0 } }) else {
            throw PruningError("error-budget allocation: a curve is not \(levels.count) finite errors ≥ 0")
        }
        guard weights.allSatisfy({ $0 > 0 && $0.isFinite }) else { throw PruningError("error-budget allocation: a unit without weights") }
        struct Segment { let unit: Int, from: Int, to: Int, cost: Double }
        var segments: [Segment] = []
        for (u, curve) in curves.enumerated() {
            // Lower convex hull from the first level (Andrew's monotone chain).
            var hull: [Int] = []
            for k in levels.indices {
                while hull.count >= 2 {
                    let a = hull[hull.count - 2], b = hull[hull.count - 1]
                    // Drop b when it lies on or above the line from a to k.
                    let cross = (levels[b] - levels[a]) * (curve[k] - curve[a]) - (curve[b] - curve[a]) * (levels[k] - levels[a])
                    if cross <= 0 { hull.removeLast() } else { break }
                }
                hull.append(k)
            }
            for (a, b) in zip(hull, hull.dropFirst()) {
                segments.append(Segment(unit: u, from: a, to: b, cost: (curve[b] - curve[a]) / (levels[b] - levels[a]) / weights[u]))
            }
        }
        segments.sort { ($0.cost, $0.unit, $0.from) < ($1.cost, $1.unit, $1.from) }
        var chosen = [Double](repeating: levels[0], count: curves.count)
        let total = weights.reduce(0, +)
        var missing = (target - levels[0]) * total
        for segment in segments where missing > 0 {
            let span = (levels[segment.to] - levels[segment.from]) * weights[segment.unit]
            if span <= missing {
                chosen[segment.unit] = levels[segment.to]
                missing -= span
            } else {
                chosen[segment.unit] = levels[segment.from] + missing / weights[segment.unit]
                missing = 0
            }
        }
        return chosen
    }

    /// A curve's value at `level`, linear between the measured levels (ascending).
    public static func interpolate(_ values: [Double], levels: [Double], at level: Double) -> Double {
        guard let upper = levels.firstIndex(where: { $0 >= level }) else { return values.last ?? 0 }
        guard upper > 0 else { return values[0] }
        let t = (level - levels[upper - 1]) / (levels[upper] - levels[upper - 1])
        return values[upper - 1] + (values[upper] - values[upper - 1]) * t
    }
}
