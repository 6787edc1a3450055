import Foundation

/// The levels of an adaptive schedule (`schedule: {method: adaptive}`): each round's
/// sparsity and the state it starts from, decided from the validation accuracy of the
/// rounds before it. A round meets the budget when its accuracy is at least the start's
/// minus `budget`. The search keeps the highest level that met it (`lo`, the start's 0
/// before any) and the lowest that did not (`hi`):
/// - the first round tries `initial`;
/// - after a round that met the budget, the next tries `lo + step` (at most `maximum`);
///   after one that did not, halfway between `lo` and `hi` (bisection);
/// - when `lo` is the maximum or the interval is narrower than twice `resolution`, the
///   search is over and the rounds go on fine-tuning `lo` (each from the latest state
///   at `lo` that met the budget);
/// - the last round always fine-tunes `lo` (it trains longest: `train.epochs` more).
/// Every round starts from the state that reached `lo` (pruning further by magnitude),
/// never from a round that failed. The answer, `chosen`, is the last round at `lo` that
/// met the budget. Pure and deterministic: the coordinator recomputes it from the
/// rounds' weights whenever it needs it (a resumed job decides the same).
public struct AdaptiveLevels: Sendable, Equatable {
    /// Levels are multiples of this (a bisection stops below twice it).
    public static let resolution = 0.005

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

    /// - Parameters:
    ///   - accuracies: the validation accuracy of rounds 0, 1, … as far as they are done.
    ///   - reference: the start's validation accuracy.
    public init(initial: Double, step: Double, maximum: Double, budget: Double, count: Int, reference: Double, accuracies: [Double]) {
        var lo = 0.0, loRound = -1
        var hi: Double?
        for r in 0..<count {
            let over = lo >= maximum || hi.map { $0 - lo < 2 * Self.resolution } ?? false
            let level: Double
            if r == count - 1 || over {
                level = lo
            } else if r == 0 {
                level = Self.quantized(min(initial, maximum))
            } else if let hi {
                level = Self.quantized((lo + hi) / 2)
            } else {
                level = Self.quantized(min(lo + step, maximum))
            }
            var round = Round(sparsity: level, base: loRound)
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

    /// A level on the grid of `resolution` (so decisions print and compare exactly:
    /// k / 200 is the double the decimal k·0.005 parses to).
    static func quantized(_ level: Double) -> Double {
        (level * 200).rounded() / 200
    }
}
