import Foundation

/// The levels of an adaptive schedule (`schedule: {method: adaptive}`): each round's
/// sparsity and the state it starts from, decided from the validation accuracy of the
/// rounds before it. A round meets the budget when its accuracy is at least the start's
/// minus `budget`. The search keeps the highest level that met it (`lo`, the start's 0
/// before any) and the lowest above it that did not (`hi`):
/// - the first round tries `initial`;
/// - while no level has missed, the next round tries `lo + step` (at most `maximum`);
///   once one has, halfway between `lo` and `hi` (bisection);
/// - when `lo` is the maximum or `hi` is one grid step above it, the search is over and
///   the rounds go on fine-tuning `lo` (each from the latest state at `lo` that met the
///   budget);
/// - the last round always fine-tunes `lo` (it trains longest: `train.epochs` more).
/// Every round starts from the state that reached `lo` (pruning further by magnitude),
/// never from a round that failed. The answer, `chosen`, is the last round at `lo` that
/// met the budget (nil when no level met it: then `lo` stays 0 and the last round
/// fine-tunes the dense start). Levels live on a grid of `resolution` (integers inside,
/// so comparisons are exact) and never exceed `maximum`. Pure and deterministic: the
/// coordinator recomputes it from the rounds' weights whenever it needs it (a resumed job
/// decides the same).
public struct AdaptiveLevels: Sendable, Equatable {
    /// Levels are multiples of this.
    public static let resolution = 0.005
    /// Grid steps per unit of sparsity.
    static let steps = 200

    public struct Round: Sendable, Equatable {
        /// The level the round prunes to.
        public var sparsity: Double
        /// The round whose end state it prunes (−1: the job's start).
        public var base: Int
        /// Its validation accuracy and whether it met the budget (nil: not known yet).
        public var accuracy: Double?
        public var met: Bool?
    }

    /// The rounds decided so far: one more than the accuracies given (or all of them).
    public private(set) var rounds: [Round] = []
    /// The last round at the highest level that met the budget (nil: none did).
    public private(set) var chosen: Int?

    /// The round whose weights and masks a finished job writes: the chosen one, or the
    /// last when none met the budget.
    public var written: Int { chosen ?? rounds.count - 1 }

    /// - Parameters:
    ///   - accuracies: the validation accuracy of rounds 0, 1, … as far as they are done.
    ///   - reference: the start's validation accuracy.
    public init(initial: Double, step: Double, maximum: Double, budget: Double, count: Int, reference: Double, accuracies: [Double]) {
        // Grid indices: the maximum rounded down (a level never passes it), the rest to nearest.
        let top = Int((maximum * Double(Self.steps)).rounded(.down))
        let first = min(Self.index(initial), top), stride = max(Self.index(step), 1)
        var lo = 0, loRound = -1
        var hi: Int?
        for r in 0..<count {
            let over = lo >= top || hi.map { $0 - lo < 2 } ?? false
            let level: Int
            if r == count - 1 || over {
                level = lo
            } else if r == 0 {
                level = first
            } else if let hi {
                level = (lo + hi) / 2
            } else {
                level = min(lo + stride, top)
            }
            var round = Round(sparsity: Double(level) / Double(Self.steps), base: loRound)
            guard r < accuracies.count else {
                rounds.append(round)
                break
            }
            let met = accuracies[r] >= reference - budget
            round.accuracy = accuracies[r]
            round.met = met
            rounds.append(round)
            if met, level >= lo {
                lo = level
                loRound = r
                chosen = r
            } else if !met, level > lo {
                // A level above lo that failed narrows the search; a fine-tuning round
                // at lo that drifted below the budget does not (lo met it once).
                hi = min(hi ?? level, level)
            }
        }
    }

    /// The nearest grid index of a level.
    static func index(_ level: Double) -> Int { Int((level * Double(steps)).rounded()) }
}
