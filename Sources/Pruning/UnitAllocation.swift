import Foundation

/// How many units each block keeps when every unit of the model competes for one budget
/// (`allocation: global` with a structured pattern): FLAP's adaptive structure across
/// layers and modules (AL-AM, An et al. 2024). Every unit carries a score standardized
/// within its block and kind (`BlockUnits.standardizedScores`), and the weakest go first,
/// heads and channels in one ranking, until the parameters removed come closest to the
/// target. Unlike the reference, a unit weighs its real parameter count (a query head
/// 2·hidden·head_dim: its q rows and o columns, key/value heads stay; a channel
/// 3·hidden), key/value groups lose query heads together (one from each, the k-th weakest
/// of every group, scored by their mean) so the grouped-query ratio stays whole, every
/// group keeps one unit of each key/value group, and `min`/`max` bound the fraction of
/// each group (one block's units of one kind). Pure and deterministic: ties go to the earlier group, then the earlier step.
public enum UnitAllocation {
    /// One block's units of one kind.
    public struct Group: Sendable, Equatable {
        public var count: Int
        /// Key/value groups (heads), which lose the same number each; 1 for channels.
        public var groups: Int
        /// Parameters one unit removes.
        public var unitParameters: Int
        /// One standardized score per unit (higher: more important).
        public var scores: [Double]

        public init(count: Int, groups: Int, unitParameters: Int, scores: [Double]) {
            self.count = count
            self.groups = groups
            self.unitParameters = unitParameters
            self.scores = scores
        }
    }

    /// The most removal steps (one unit of each of `groups` key/value groups) a group of
    /// `count` units can take: one unit of each key/value group stays, and at most `max`
    /// of the group goes.
    public static func mostSteps(count: Int, groups: Int, max: Double) -> Int {
        Swift.min(count / groups - 1, Int((max * Double(count) + 1e-9).rounded(.down)) / groups)
    }

    /// Units removed from each group: a multiple of its `groups`, with
    /// `min`·count ≤ removed ≤ `max`·count (rounded inwards) and one unit of each key/value
    /// group kept, the total removed parameters closest to `target` × all the groups'.
    public static func removed(_ groups: [Group], target: Double, min: Double = 0, max: Double = 1) throws -> [Int] {
        struct Step { let score: Double; let group: Int; let step: Int }
        var forced = [Int](repeating: 0, count: groups.count)
        var candidates: [Step] = []
        var total = 0.0, removedParameters = 0.0
        for (g, group) in groups.enumerated() {
            guard group.count > 0, group.groups > 0, group.count % group.groups == 0, group.scores.count == group.count,
                  group.scores.allSatisfy(\.isFinite), group.unitParameters > 0 else {
                throw PruningError("unit allocation: group \(g) is not \(group.count) finite scores in \(group.groups) groups")
            }
            let perGroup = group.count / group.groups
            // Each key/value group's members, weakest first (a tie: the higher index goes
            // first, as `BlockUnits.kept` keeps the lower).
            let order = (0..<group.groups).map { j in
                Array(j * perGroup ..< (j + 1) * perGroup).sorted { group.scores[$0] != group.scores[$1] ? group.scores[$0] < group.scores[$1] : $0 > $1 }
            }
            let most = mostSteps(count: group.count, groups: group.groups, max: max)
            let least = Swift.min(most, (Int((min * Double(group.count) - 1e-9).rounded(.up)) + group.groups - 1) / group.groups)
            forced[g] = least
            removedParameters += Double(least * group.groups * group.unitParameters)
            total += Double(group.count * group.unitParameters)
            if least < most {
                for k in (least + 1)...most {
                    let score = order.reduce(0.0) { $0 + group.scores[$1[k - 1]] } / Double(group.groups)
                    candidates.append(Step(score: score, group: g, step: k))
                }
            }
        }
        // A group's step scores never fall (the k-th weakest of each key/value group), so
        // taking steps in score order removes every group's weakest first.
        candidates.sort { $0.score != $1.score ? $0.score < $1.score : ($0.group != $1.group ? $0.group < $1.group : $0.step < $1.step) }
        let goal = target * total
        var best = 0, bestDistance = abs(removedParameters - goal), running = removedParameters
        for (i, step) in candidates.enumerated() {
            let group = groups[step.group]
            running += Double(group.groups * group.unitParameters)
            let distance = abs(running - goal)
            if distance < bestDistance { best = i + 1; bestDistance = distance }
        }
        var steps = forced
        for step in candidates.prefix(best) { steps[step.group] = Swift.max(steps[step.group], step.step) }
        return zip(steps, groups).map { $0 * $1.groups }
    }
}
