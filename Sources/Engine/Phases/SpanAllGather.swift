import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// A classifier span's steps taken by a group of workers (`train.exchange: allgather`).
/// Each member computes its slot's shards of a step (`SpanSlots`: contiguous runs in slot
/// order) and sums each aligned run of them into one block (`ShardTreeSum.blocks`), shares
/// its blocks, and builds the step's sum from its own and the others' blocks in
/// `ShardTreeSum`'s tree, then takes the step itself: every member holds the same state
/// after every step, and it is the state `none` and `star` reach (the same F32 additions
/// in the same tree). With two members and a power-of-two shard count each sends one
/// gradient a step, as soon as its shards are done.
///
/// On the span's last step the leader's run is half its usual one and slot 1 takes the
/// rest (`SpanSlots`): the leader recomputes its checks there, after it has sent its last
/// block, while the helpers compute, so the checks cost the group no time of its own.
///
/// The leader takes each helper block from its owner while that helper is in the group;
/// once a helper is gone (it did not join in time, the coordinator says it left, or it was
/// silent for the patience) the leader computes its blocks itself, and shares them while
/// any other helper is there. It checks every block it receives (its size, finite values,
/// each shard's loss triple) and, at one step per helper and span that it picks at random
/// for this attempt (so a helper cannot know which), keeps that step's state and the
/// helper's blocks, and on the span's last step, once its own last block is sent,
/// recomputes them and compares the bytes (then, not at the checked step: a pause in the
/// leader's blocks would tell the helper its check was spent; a check of the last step
/// itself is computed before the helper's blocks come and compared when they do): a block
/// that differs, or is malformed, ends the group (`ShareDisagrees`), and
/// the leader takes the span again alone. A lie the checks miss
/// costs the result its exactness (a wrong block summed in), which is why a verified task
/// never gets helpers. A helper stops (`HelpEnded`) when the leader leaves, is silent for
/// the patience, or this worker gets other work.
final class SpanAllGather {
    /// A helper's share differed from the leader's own computation, or was malformed.
    struct ShareDisagrees: Error, CustomStringConvertible {
        let slot: Int
        let description: String
    }

    /// A helper's part ended before the span's last step: it answers nothing.
    struct HelpEnded: Error, CustomStringConvertible {
        let description: String
    }

    /// A block: step (absolute) and its shards.
    private struct Key: Hashable {
        let step: Int
        let first: Int
        let count: Int
    }

    /// A helper step the leader recomputes: step index in the span, slot.
    private struct Check: Hashable {
        let step: Int
        let slot: Int
    }

    /// How many steps of each helper the leader recomputes per span (all its blocks at each).
    static let checksPerHelper = 1

    private let group: SpanGroup
    private let task: Prune_V1_TrainTask
    private let model: MLPModel
    private let layout: TrainStep.SpanLayout
    /// Each slot's shards of a step, and the blocks they fall into: every step but the
    /// last, and the last (`SpanSlots`).
    private struct Split {
        let ranges: [Range<Int>]
        let blocks: [[Range<Int>]]

        init(slots: Int, shards: Int, lastStep: Bool) {
            ranges = (0..<slots).map { SpanSlots.shards(slot: $0, of: slots, shards: shards, lastStep: lastStep) }
            blocks = ranges.map(ShardTreeSum.blocks)
        }
    }
    private let steady: Split, lastStep: Split
    private let where_: String
    /// Blocks that came before they were needed (at most the current and the next step's).
    private var pending: [Key: SpanShare] = [:]
    /// The step (absolute) being taken.
    private var current = 0
    /// The helpers the leader takes blocks from.
    private var inGroup: Set<Int> = []
    /// How long one of this member's own shards took, to scale the patience with.
    private var shardMs = 0
    /// The step's sum being built, and a block's.
    private var tree: ShardTreeSum
    private var blockTree: ShardTreeSum

    /// The job's example data the task's rows index (`TrainStep.exampleData`).
    private let data: [UInt8]

    init(group: SpanGroup, task: Prune_V1_TrainTask, model: MLPModel, inputs: TaskInputs, where where_: String) throws {
        layout = try TrainStep.SpanLayout(task, where: where_)
        guard group.slots >= 2, group.slots <= layout.shards, group.slot >= 0, group.slot < group.slots else {
            throw PruningError("\(where_): slot \(group.slot) of a group of \(group.slots) for \(layout.shards) shards")
        }
        data = try layout.checkExamples(task, model: model, inputs: inputs, where: where_)
        self.group = group
        self.task = task
        self.model = model
        self.where_ = where_
        let shards = layout.shards
        steady = Split(slots: group.slots, shards: shards, lastStep: false)
        lastStep = Split(slots: group.slots, shards: shards, lastStep: true)
        tree = ShardTreeSum(count: 0)
        blockTree = tree
    }

    /// Takes the span's steps; the leader returns each shard's loss triple, step after
    /// step (as `runSpan` does), a helper nothing.
    /// `epochs` keeps the leader's weights at the epoch ends inside the span.
    func run(_ training: inout MLPTraining, epochs: inout TrainStep.EpochWeights) throws -> [[Double]] {
        // Every share is one whole gradient: the group drops any other size unread.
        TrainStep.zeroSum(model: .mlp(model), training: training)
        group.shareBytes = 4 * TrainStep.kept.summed.count
        tree = ShardTreeSum(count: TrainStep.kept.summed.count)
        blockTree = tree
        return group.slot == 0 ? try lead(&training, epochs: &epochs) : try help(&training)
    }

    /// The split of step k of the span.
    private func split(_ k: Int) -> Split { k == layout.steps - 1 ? lastStep : steady }

    /// Block `block` of step k computed here: its sum and its shards' loss triples.
    private func compute(_ block: Range<Int>, step k: Int, _ training: MLPTraining) throws -> (gradient: [Float], losses: [[Double]]) {
        let began = DispatchTime.now().uptimeNanoseconds
        var losses: [[Double]] = []
        for j in block {
            let shard = try TrainStep.classifierShard(model, task, data: data, training: training, rows: layout.slice(k, j), step: layout.first + k, where: where_)
            try blockTree.push(tensors: shard.tensors)
            losses.append(shard.loss)
        }
        shardMs = Int((DispatchTime.now().uptimeNanoseconds - began) / 1_000_000) / max(1, block.count)
        return (blockTree.finishValues(), losses)
    }

    private func share(_ block: Range<Int>, _ computed: (gradient: [Float], losses: [[Double]])) throws {
        try group.share(SpanShare(step: current, first: block.lowerBound, count: block.count, prefix: false,
                                  losses: computed.losses.flatMap { $0 }, gradient: computed.gradient.withUnsafeBytes { [UInt8]($0) }))
    }

    // MARK: Leader

    private func lead(_ training: inout MLPTraining, epochs: inout TrainStep.EpochWeights) throws -> [[Double]] {
        // The helpers that hold the base state within the patience take part.
        let start = DispatchTime.now().uptimeNanoseconds
        current = layout.first
        var gone: Set<Int> = []
        rendezvous: while inGroup.count + gone.count < group.slots - 1 {
            let left = group.patienceMs - Int((DispatchTime.now().uptimeNanoseconds - start) / 1_000_000)
            guard left > 0 else { break }
            switch try group.next(timeoutMs: left) {
            case .joined(let s) where s > 0 && s < group.slots && !gone.contains(s): inGroup.insert(s)
            case .left(let s): gone.insert(s); inGroup.remove(s)
            case .share(let s, let share): keep(share, from: s)
            case .timeout: break rendezvous
            case .joined, .interrupted: continue
            }
        }
        var generator = SystemRandomNumberGenerator()
        let checked = Self.checks(slots: group.slots, steps: layout.steps, using: &generator)
        var losses: [[Double]] = []
        losses.reserveCapacity(layout.steps * layout.shards)
        // The checked earlier steps' states and the helpers' blocks there, recomputed on the
        // last step; and the last step's checked blocks, computed before they come.
        var audits: [(step: Int, slot: Int, state: MLPTraining, block: Range<Int>, share: SpanShare)] = []
        var lastChecks: [Int: (gradient: [Float], losses: [[Double]])] = [:]
        for k in 0..<layout.steps {
            current = layout.first + k
            pending = pending.filter { $0.key.step >= current }
            let blocks = split(k).blocks
            for block in blocks[0] {
                let own = try compute(block, step: k, training)
                if !inGroup.isEmpty { try share(block, own) }
                try tree.push(owned: own.gradient, level: ShardTreeSum.level(of: block))
                losses += own.losses
            }
            if k == layout.steps - 1 {
                // The leader's last block is out: the checks now, while the helpers compute.
                for audit in audits {
                    let mine = try compute(audit.block, step: audit.step, audit.state)
                    try compare(mine, audit.share, slot: audit.slot, block: audit.block, step: audit.step)
                }
                audits = []
                for i in 1..<group.slots where checked.contains(Check(step: k, slot: i)) {
                    for block in blocks[i] { lastChecks[block.lowerBound] = try compute(block, step: k, training) }
                }
            }
            for i in 1..<group.slots {
                for block in blocks[i] {
                    let recomputed = lastChecks.removeValue(forKey: block.lowerBound)
                    if let share = try awaitShare(block, from: i) {
                        try check(share, slot: i, block: block, step: k)
                        if let recomputed { try compare(recomputed, share, slot: i, block: block, step: k) }
                        if checked.contains(Check(step: k, slot: i)), recomputed == nil { audits.append((k, i, training, block, share)) }
                        try tree.push(bytes: share.gradient, level: ShardTreeSum.level(of: block))
                        losses += stride(from: 0, to: share.losses.count, by: 3).map { Array(share.losses[$0..<($0 + 3)]) }
                    } else {
                        let own = try recomputed ?? compute(block, step: k, training)
                        if !inGroup.isEmpty { try self.share(block, own) }
                        try tree.push(owned: own.gradient, level: ShardTreeSum.level(of: block))
                        losses += own.losses
                    }
                }
            }
            TrainStep.kept.summed.withUnsafeMutableBufferPointer { tree.finish(into: $0) }
            try TrainStep.apply(&training, task.span[k], index: current)
            epochs.after(step: current, training)
        }
        return losses
    }

    /// A checked block, recomputed from its step's state, against the helper's, byte for byte.
    private func compare(_ mine: (gradient: [Float], losses: [[Double]]), _ share: SpanShare, slot: Int, block: Range<Int>, step k: Int) throws {
        guard mine.gradient.withUnsafeBytes({ $0.elementsEqual(share.gradient) }), mine.losses.flatMap({ $0 }) == share.losses else {
            throw ShareDisagrees(slot: slot, description: "helper \(slot)'s block of step \(layout.first + k) shards \(block) differs from the leader's own computation")
        }
    }

    /// The helper steps the leader recomputes: for each helper, `checksPerHelper` steps of
    /// the span (all when it has fewer), drawn at random for this attempt, so a helper
    /// cannot tell which of its blocks are checked. The draw changes no byte of the result:
    /// an honest block equals the recomputation.
    private static func checks<G: RandomNumberGenerator>(slots: Int, steps: Int, using generator: inout G) -> Set<Check> {
        var out: Set<Check> = []
        for slot in 1..<slots {
            var picked = Array(0..<steps)
            picked.shuffle(using: &generator)
            for k in picked.prefix(checksPerHelper) { out.insert(Check(step: k, slot: slot)) }
        }
        return out
    }

    /// Helper `slot`'s block at the current step, or nil once that helper is out of the
    /// group (then the leader computes the block). One deadline for the block: other
    /// messages meanwhile do not extend it, so no member can stall the leader past the
    /// patience by talking.
    private func awaitShare(_ block: Range<Int>, from slot: Int) throws -> SpanShare? {
        let deadline = Deadline(ms: patience)
        while true {
            if let share = pending.removeValue(forKey: Key(step: current, first: block.lowerBound, count: block.count)) { return share }
            guard inGroup.contains(slot) else { return nil }
            switch try group.next(timeoutMs: deadline.leftMs) {
            case .share(let s, let share): keep(share, from: s)
            case .left(let s): inGroup.remove(s)
            case .timeout: inGroup.remove(slot)
            case .joined, .interrupted: continue
            }
        }
    }

    /// A helper's block must have the shape of one: the gradient's size, finite values,
    /// and for each of its shards a finite loss and a count of correct answers within the
    /// shard's examples.
    private func check(_ share: SpanShare, slot: Int, block: Range<Int>, step k: Int) throws {
        let l = share.losses
        var fine = share.gradient.count == 4 * TrainStep.kept.summed.count && l.count == 3 * block.count
            && share.gradient.withUnsafeBytes({ $0.withMemoryRebound(to: Float.self) { FloatVectors.allFinite($0) } })
        for (n, j) in block.enumerated() where fine {
            let loss = l[3 * n], correct = l[3 * n + 1], examples = l[3 * n + 2]
            fine = loss.isFinite && loss >= 0 && examples == Double(layout.slice(k, j).count) && correct >= 0 && correct <= examples && correct == correct.rounded()
        }
        guard fine else {
            throw ShareDisagrees(slot: slot, description: "helper \(slot)'s block of step \(current) shards \(block) is malformed")
        }
    }

    // MARK: Helper

    private func help(_ training: inout MLPTraining) throws -> [[Double]] {
        try group.join()
        for k in 0..<layout.steps {
            current = layout.first + k
            pending = pending.filter { $0.key.step >= current }
            // Own blocks first, each shared as soon as it is summed; then every block of the
            // step in the tree's order.
            var own: [Int: [Float]] = [:]
            let blocks = split(k).blocks
            for block in blocks[group.slot] {
                let computed = try compute(block, step: k, training)
                try share(block, computed)
                own[block.lowerBound] = computed.gradient
            }
            for block in blocks.joined() {
                if let mine = own.removeValue(forKey: block.lowerBound) {
                    try tree.push(owned: mine, level: ShardTreeSum.level(of: block))
                    continue
                }
                let gradient = try awaitHelped(Key(step: current, first: block.lowerBound, count: block.count)).gradient
                guard gradient.count == 4 * tree.count else { throw HelpEnded(description: "a block of \(gradient.count) bytes") }
                try tree.push(bytes: gradient, level: ShardTreeSum.level(of: block))
            }
            TrainStep.kept.summed.withUnsafeMutableBufferPointer { tree.finish(into: $0) }
            try TrainStep.apply(&training, task.span[k], index: current)
        }
        return []
    }

    /// The block a helper needs next (another slot's).
    private func awaitHelped(_ key: Key) throws -> SpanShare {
        let deadline = Deadline(ms: patience)
        while true {
            if let share = pending.removeValue(forKey: key) { return share }
            switch try group.next(timeoutMs: deadline.leftMs) {
            case .share(let s, let share): keep(share, from: s)
            case .left(0): throw HelpEnded(description: "the leader left")
            case .timeout: throw HelpEnded(description: "no block of step \(current) within \(patience) ms")
            case .interrupted: throw HelpEnded(description: "other work came")
            case .left, .joined: continue
            }
        }
    }

    // MARK: Both

    /// Keeps a block for when it is needed: only what its sender may send (a block of its
    /// own slot's; the leader also those of helpers it computed itself), of the current
    /// step or the next.
    private func keep(_ share: SpanShare, from slot: Int) {
        let k = share.step - layout.first
        guard share.step == current || share.step == current + 1, k < layout.steps, slot >= 0, slot < group.slots, slot != group.slot, !share.prefix,
              let owner = split(k).ranges.firstIndex(where: { $0.contains(share.first) }),
              split(k).blocks[owner].contains(share.first..<(share.first + share.count)), slot == owner || (slot == 0 && owner > 0) else { return }
        let key = Key(step: share.step, first: share.first, count: share.count)
        // The first block for a place stands: a second cannot replace one already checked.
        guard pending[key] == nil else { return }
        pending[key] = share
    }

    /// How long to wait for another member: the group's patience, or, on a slow machine,
    /// the time of three whole steps of this member's shards plus the leader's checks (a
    /// helper waits for the leader's next block while the leader computes the blocks of
    /// helpers that left and recomputes checked ones).
    private var patience: Int { max(group.patienceMs, 3 * (layout.shards + group.slots) * shardMs) }

    /// A point in time a wait ends at, however many messages come before it.
    private struct Deadline {
        let until: UInt64
        init(ms: Int) { until = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, ms)) * 1_000_000 }
        /// Milliseconds left (0: over).
        var leftMs: Int {
            let now = DispatchTime.now().uptimeNanoseconds
            return now >= until ? 0 : Int((until - now) / 1_000_000)
        }
    }
}
