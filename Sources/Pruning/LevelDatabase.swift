import Foundation
import Tensors

/// The sparsity levels an evolutionary search moves between (EvoPress's database): level
/// l of a layer of n weights prunes `target + l·Δ/n` of it, where Δ (`stepWeights`) is the
/// same number of weights for every layer, so moving one step from a layer to another
/// keeps the model's pruned total. A layer's levels run from `lowest[i]` ≤ 0 to
/// `highest[i]` ≥ 0: at most `levels` steps each way, within `[minimum, maximum]`.
public struct LevelGrid: Sendable, Equatable {
    public let target: Double
    public let stepWeights: Double
    public let weights: [Int]
    public let lowest: [Int]
    public let highest: [Int]

    /// The grid of EvoPress's `prune.py`, with bounds.
    public init(weights: [Int], target: Double, stepWeights: Double, levels: Int, minimum: Double, maximum: Double) {
        precondition(stepWeights > 0 && levels >= 0)
        self.target = target
        self.stepWeights = stepWeights
        self.weights = weights
        // Forgiving the binary representation: (0.7 − 0.5) / 0.05 is 3.9999999999999996.
        lowest = weights.map { n in -min(levels, Int(((target - minimum) / (stepWeights / Double(n)) + 1e-9).rounded(.down))) }
        highest = weights.map { n in min(levels, Int(((maximum - target) / (stepWeights / Double(n)) + 1e-9).rounded(.down))) }
    }

    /// A grid as a task carries it.
    public init(weights: [Int], target: Double, stepWeights: Double, lowest: [Int], highest: [Int]) throws {
        guard weights.count == lowest.count, weights.count == highest.count, stepWeights >= 1e-3, stepWeights.isFinite,
              target >= 0, target < 1, weights.allSatisfy({ $0 > 0 && $0 <= 1 << 48 }),
              zip(lowest, highest).allSatisfy({ $0 <= 0 && $1 >= 0 && $1 - $0 < Int(LevelDatabase.never) }) else {
            throw PruningError("level grid: \(weights.count) layers with \(lowest.count)/\(highest.count) bounds, step \(stepWeights), target \(target)")
        }
        self.target = target
        self.stepWeights = stepWeights
        self.weights = weights
        self.lowest = lowest
        self.highest = highest
    }

    public var layers: Int { weights.count }

    /// The sparsity of layer `i` at level `l`.
    /// Never below 0: the lowest level may land a rounding error under it.
    public func sparsity(layer i: Int, level l: Int) -> Double {
        Swift.max(0, target + Double(l) * stepWeights / Double(weights[i]))
    }

    /// Every level's sparsity of layer `i`, lowest first (position p is level lowest + p).
    public func sparsities(layer i: Int) -> [Double] {
        (lowest[i]...highest[i]).map { sparsity(layer: i, level: $0) }
    }

    /// Whether `levels` is a point of the grid that keeps the total: every level within
    /// its layer's bounds and the levels summing to zero.
    public func isValid(_ levels: [Int]) -> Bool {
        levels.count == layers && levels.reduce(0, +) == 0 && levels.indices.allSatisfy { levels[$0] >= lowest[$0] && levels[$0] <= highest[$0] }
    }

    /// The grid point nearest `fractions` (one sparsity per layer, e.g. OWL's levels) that
    /// keeps the total: each rounded to its nearest level, then the layers furthest from
    /// their exact level moved one step at a time until the levels sum to zero.
    public func project(_ fractions: [Double]) -> [Int] {
        precondition(fractions.count == layers)
        let exact = fractions.indices.map { (fractions[$0] - target) * Double(weights[$0]) / stepWeights }
        // Clamped before the conversion: a fraction far off the grid must not trap.
        var levels = exact.indices.map { Int(Swift.min(Double(highest[$0]), Swift.max(Double(lowest[$0]), exact[$0].isNaN ? 0 : exact[$0].rounded()))) }
        var sum = levels.reduce(0, +)
        while sum != 0 {
            let down = sum > 0
            let movable = levels.indices.filter { down ? levels[$0] > lowest[$0] : levels[$0] < highest[$0] }
            // The layer whose rounding overshot most in the direction to undo (first on ties).
            guard let i = movable.max(by: { a, b in
                let ea = Double(levels[a]) - exact[a], eb = Double(levels[b]) - exact[b]
                return down ? (ea, -a) < (eb, -b) : (-ea, -a) < (-eb, -b)
            }) else { break }
            levels[i] += down ? -1 : 1
            sum += down ? -1 : 1
        }
        return levels
    }
}

/// Every level's mask of one layer in one byte per weight. For a threshold criterion the
/// masks of increasing sparsity are nested (a weight pruned at one level is pruned at
/// every higher one), so a weight's byte is the position of the first level that prunes
/// it: the mask at position p prunes exactly the weights whose byte is ≤ p. EvoPress
/// stores every level's weights instead (levels × weights × 2 bytes in F16).
public enum LevelDatabase {
    /// The byte of a weight no level prunes.
    public static let never: UInt8 = 255

    /// The database of a rows × cols score matrix for `sparsities` (ascending, at most 255),
    /// compared as `pattern` compares (`unstructured` or `per_row`): the same masks as
    /// `MaskSelection.mask` at each sparsity, ties to the lower index first.
    public static func build(scores: UnsafeBufferPointer<Float>, rows: Int, cols: Int, pattern: SparsityPattern,
                             sparsities: [Double]) throws -> [UInt8] {
        precondition(scores.count == rows * cols, "scores do not match rows × cols")
        guard !sparsities.isEmpty, sparsities.count < Int(never), zip(sparsities, sparsities.dropFirst()).allSatisfy({ $0 <= $1 }),
              sparsities.allSatisfy({ $0 >= 0 && $0 < 1 }) else {
            throw PruningError("level database: \(sparsities.count) sparsities must be ascending fractions in [0, 1), fewer than 255")
        }
        var out = [UInt8](repeating: never, count: rows * cols)
        // Ranks among `group` (a row, or the whole tensor): weights in ascending (score, index)
        // order; the one at rank r is pruned from the first level whose count exceeds r.
        func fill(_ start: Int, _ count: Int, _ counts: [Int]) {
            var order = [Int32](unsafeUninitializedCapacity: count) { buf, n in
                for i in 0..<count { buf[i] = Int32(i) }
                n = count
            }
            let keys = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(scores)[(start * 4)..<((start + count) * 4)])
            order.sort { a, b in
                let ka = keys.loadUnaligned(fromByteOffset: Int(a) * 4, as: UInt32.self), kb = keys.loadUnaligned(fromByteOffset: Int(b) * 4, as: UInt32.self)
                return ka != kb ? ka < kb : a < b
            }
            var position = 0
            for (rank, i) in order.enumerated() {
                while position < counts.count && counts[position] <= rank { position += 1 }
                if position == counts.count { break }
                out[start + Int(i)] = UInt8(position)
            }
        }
        switch pattern {
        case .perRow:
            let counts = sparsities.map { SparsityPattern.count(of: cols, at: $0) }
            for r in 0..<rows {
                if r % 64 == 0 { try Cancellation.checkpoint() }
                fill(r * cols, cols, counts)
            }
        case .unstructured:
            fill(0, rows * cols, sparsities.map { pattern.plannedPruned(rows: rows, cols: cols, sparsity: $0) })
        default:
            throw PruningError("level database: pattern \(pattern) has no nested levels (use unstructured or per_row)")
        }
        return out
    }

    /// Zeroes the weights that the level at `position` prunes; returns how many it pruned.
    @discardableResult
    public static func apply(_ database: [UInt8], position: Int, to weights: inout [Float]) -> Int {
        precondition(database.count == weights.count && position >= 0 && position < Int(never))
        let p = UInt8(position)
        var pruned = 0
        for i in weights.indices where database[i] <= p {
            weights[i] = 0
            pruned += 1
        }
        return pruned
    }
}
