import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// A classifier span's steps taken by a group of workers (`train.exchange: allgather`).
/// Each member computes its slot's shards of a step (`SpanSlots`), shares them, and
/// builds the step's sum in shard order from its own and the others' shares, then takes
/// the step itself: every member holds the same state after every step, and it is the
/// state `none` and `star` reach (the same F32 additions in the same order).
///
/// The leader (slot 0) shares the running sum of its shards (a prefix of the step's sum)
/// and takes each helper shard from its owner while that helper is in the group; once a
/// helper is gone (it did not join in time, the coordinator says it left, or it was silent
/// for the patience) the leader computes its shards itself, and shares them while any other
/// helper is there. It recomputes shares it picks at random for this attempt (two per
/// helper and span, so a helper cannot know which) and compares the bytes: a share that
/// differs, or is malformed (its size, a non-finite value, an impossible loss) ends the
/// group (`ShareDisagrees`), and the leader takes the span again alone. A lie the checks
/// miss costs the result its exactness (a wrong share summed in), which is why a verified
/// task never gets helpers. A helper stops (`HelpEnded`) when the leader leaves, is silent
/// for the patience, or this worker gets other work.
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

    private struct Key: Hashable {
        let step: Int
        let first: Int
        let prefix: Bool
    }

    /// A helper share the leader recomputes: step index in the span, shard.
    private struct Check: Hashable {
        let step: Int
        let shard: Int
    }

    /// How many of each helper's shares the leader recomputes per span.
    static let checksPerHelper = 2

    private let group: SpanGroup
    private let task: Prune_V1_TrainTask
    private let model: MLPModel
    private let layout: TrainStep.SpanLayout
    /// Each slot's shards of every step.
    private let ranges: [Range<Int>]
    private let where_: String
    /// Shares that came before they were needed (at most the current and the next step's).
    private var pending: [Key: SpanShare] = [:]
    /// The step (absolute) being taken.
    private var current = 0
    /// The helpers the leader takes shares from.
    private var inGroup: Set<Int> = []
    /// How long one of this member's own shards took, to scale the patience with.
    private var shardMs = 0

    init(group: SpanGroup, task: Prune_V1_TrainTask, model: MLPModel, where where_: String) throws {
        layout = try TrainStep.SpanLayout(task, where: where_)
        try layout.checkExamples(task, model: model, where: where_)
        guard group.slots >= 2, group.slots <= layout.shards, group.slot >= 0, group.slot < group.slots else {
            throw PruningError("\(where_): slot \(group.slot) of a group of \(group.slots) for \(layout.shards) shards")
        }
        self.group = group
        self.task = task
        self.model = model
        self.where_ = where_
        let shards = layout.shards
        ranges = (0..<group.slots).map { SpanSlots.shards(slot: $0, of: group.slots, shards: shards) }
    }

    /// Takes the span's steps; the leader returns each shard's loss triple, step after
    /// step (as `runSpan` does), a helper nothing.
    func run(_ training: inout MLPTraining) throws -> [[Double]] {
        // Every share is one whole gradient: the group drops any other size unread.
        TrainStep.zeroSum(model: .mlp(model), training: training)
        group.shareBytes = 4 * TrainStep.kept.summed.count
        return group.slot == 0 ? try lead(&training) : try help(&training)
    }

    // MARK: Leader

    private func lead(_ training: inout MLPTraining) throws -> [[Double]] {
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
        let checked = Self.checks(ranges: ranges, steps: layout.steps, using: &generator)
        var losses: [[Double]] = []
        losses.reserveCapacity(layout.steps * layout.shards)
        for k in 0..<layout.steps {
            current = layout.first + k
            pending = pending.filter { $0.key.step >= current }
            TrainStep.zeroSum(model: .mlp(model), training: training)
            let began = DispatchTime.now().uptimeNanoseconds
            var own: [Double] = []
            for j in ranges[0] {
                let shard = try TrainStep.classifierShard(model, task, training: training, rows: layout.slice(k, j), step: current, where: where_)
                TrainStep.addToSum(shard.tensors)
                losses.append(shard.loss)
                own += shard.loss
            }
            shardMs = Int((DispatchTime.now().uptimeNanoseconds - began) / 1_000_000) / max(1, ranges[0].count)
            if !inGroup.isEmpty {
                try group.share(SpanShare(step: current, first: 0, count: ranges[0].count, prefix: true, losses: own,
                                          gradient: TrainStep.kept.summed.withUnsafeBytes { [UInt8]($0) }))
            }
            for i in 1..<group.slots {
                for j in ranges[i] {
                    if let share = try awaitShare(shard: j, from: i) {
                        try check(share, slot: i, rows: layout.slice(k, j).count)
                        if checked.contains(Check(step: k, shard: j)) {
                            // The seeded check: this share recomputed here, byte for byte.
                            let mine = try TrainStep.classifierShard(model, task, training: training, rows: layout.slice(k, j), step: current, where: where_)
                            guard Self.bytes(mine.tensors) == share.gradient, mine.loss == share.losses else {
                                throw ShareDisagrees(slot: i, description: "helper \(i)'s share of step \(current) shard \(j) differs from the leader's own computation")
                            }
                        }
                        Self.add(share.gradient)
                        losses.append(share.losses)
                    } else {
                        let shard = try TrainStep.classifierShard(model, task, training: training, rows: layout.slice(k, j), step: current, where: where_)
                        TrainStep.addToSum(shard.tensors)
                        losses.append(shard.loss)
                        if !inGroup.isEmpty {
                            try group.share(SpanShare(step: current, first: j, count: 1, prefix: false, losses: shard.loss, gradient: Self.bytes(shard.tensors)))
                        }
                    }
                }
            }
            try TrainStep.apply(&training, task.span[k], index: current)
        }
        return losses
    }

    /// The helper shares the leader recomputes: for each helper, `checksPerHelper` steps
    /// of the span (all when it has fewer), one of that helper's shards at each, drawn at
    /// random for this attempt, so a helper cannot tell which of its shares are checked.
    /// The draw changes no byte of the result: an honest share equals the recomputation.
    private static func checks<G: RandomNumberGenerator>(ranges: [Range<Int>], steps: Int, using generator: inout G) -> Set<Check> {
        var out: Set<Check> = []
        for range in ranges.dropFirst() where !range.isEmpty {
            var picked = Array(0..<steps)
            picked.shuffle(using: &generator)
            for k in picked.prefix(checksPerHelper) {
                out.insert(Check(step: k, shard: Int.random(in: range, using: &generator)))
            }
        }
        return out
    }

    /// Helper `slot`'s share of `shard` at the current step, or nil once that helper is
    /// out of the group (then the leader computes the shard). One deadline for the
    /// share: other messages meanwhile do not extend it, so no member can stall the
    /// leader past the patience by talking.
    private func awaitShare(shard j: Int, from slot: Int) throws -> SpanShare? {
        let deadline = Deadline(ms: patience)
        while true {
            if let share = pending.removeValue(forKey: Key(step: current, first: j, prefix: false)) { return share }
            guard inGroup.contains(slot) else { return nil }
            switch try group.next(timeoutMs: deadline.leftMs) {
            case .share(let s, let share): keep(share, from: s)
            case .left(let s): inGroup.remove(s)
            case .timeout: inGroup.remove(slot)
            case .joined, .interrupted: continue
            }
        }
    }

    /// A helper's share must have the shape of one shard's: the gradient's size, finite
    /// values, a finite loss, a count of correct answers within the shard's examples.
    private func check(_ share: SpanShare, slot: Int, rows: Int) throws {
        let l = share.losses
        guard share.gradient.count == 4 * TrainStep.kept.summed.count, l.count == 3, l[0].isFinite, l[0] >= 0,
              l[2] == Double(rows), l[1] >= 0, l[1] <= l[2], l[1] == l[1].rounded(),
              share.gradient.withUnsafeBytes({ $0.withMemoryRebound(to: Float.self) { FloatVectors.allFinite($0) } }) else {
            throw ShareDisagrees(slot: slot, description: "helper \(slot)'s share of step \(current) shard \(share.first) is malformed")
        }
    }

    // MARK: Helper

    private func help(_ training: inout MLPTraining) throws -> [[Double]] {
        try group.join()
        let mine = ranges[group.slot]
        for k in 0..<layout.steps {
            current = layout.first + k
            pending = pending.filter { $0.key.step >= current }
            var own: [Int: [UInt8]] = [:]
            TrainStep.zeroSum(model: .mlp(model), training: training)
            let began = DispatchTime.now().uptimeNanoseconds
            for j in mine {
                let shard = try TrainStep.classifierShard(model, task, training: training, rows: layout.slice(k, j), step: current, where: where_)
                let bytes = Self.bytes(shard.tensors)
                try group.share(SpanShare(step: current, first: j, count: 1, prefix: false, losses: shard.loss, gradient: bytes))
                own[j] = bytes
            }
            shardMs = Int((DispatchTime.now().uptimeNanoseconds - began) / 1_000_000) / max(1, mine.count)
            let prefix = try awaitHelped(Key(step: current, first: 0, prefix: true))
            try copyPrefix(prefix.gradient)
            for j in ranges[1].lowerBound..<layout.shards {
                let gradient = try own[j] ?? awaitHelped(Key(step: current, first: j, prefix: false)).gradient
                guard gradient.count == 4 * TrainStep.kept.summed.count else { throw HelpEnded(description: "a share of \(gradient.count) bytes") }
                Self.add(gradient)
            }
            try TrainStep.apply(&training, task.span[k], index: current)
        }
        return []
    }

    /// The share a helper needs next (the leader's prefix, or another slot's shard).
    private func awaitHelped(_ key: Key) throws -> SpanShare {
        let deadline = Deadline(ms: patience)
        while true {
            if let share = pending.removeValue(forKey: key) { return share }
            switch try group.next(timeoutMs: deadline.leftMs) {
            case .share(let s, let share): keep(share, from: s)
            case .left(0): throw HelpEnded(description: "the leader left")
            case .timeout: throw HelpEnded(description: "no share of step \(current) within \(patience) ms")
            case .interrupted: throw HelpEnded(description: "other work came")
            case .left, .joined: continue
            }
        }
    }

    private func copyPrefix(_ gradient: [UInt8]) throws {
        guard gradient.count == 4 * TrainStep.kept.summed.count else { throw HelpEnded(description: "a prefix of \(gradient.count) bytes") }
        TrainStep.kept.summed.withUnsafeMutableBytes { out in
            gradient.withUnsafeBytes { out.copyMemory(from: $0) }
        }
    }

    // MARK: Both

    /// Keeps a share for when it is needed: only what its sender may send (the leader: its
    /// prefix, or any helper shard it computed itself; a helper: its own shards), of the
    /// current step or the next.
    private func keep(_ share: SpanShare, from slot: Int) {
        guard share.step == current || share.step == current + 1, slot >= 0, slot < group.slots, slot != group.slot else { return }
        let allowed: Bool
        if share.prefix {
            allowed = slot == 0 && share.first == 0 && share.count == ranges[0].count
        } else {
            allowed = share.count == 1 && share.first >= ranges[1].lowerBound && share.first < layout.shards
                && (slot == 0 || ranges[slot].contains(share.first))
        }
        let key = Key(step: share.step, first: share.first, prefix: share.prefix)
        // The first share for a place stands: a second cannot replace one already checked.
        guard allowed, pending[key] == nil else { return }
        pending[key] = share
    }

    /// How long to wait for another member: the group's patience, or, on a slow machine,
    /// the time of three whole steps of this member's shards plus the leader's checks (a
    /// helper waits for the leader's next prefix while the leader computes the shards of
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

    /// A gradient's tensors as one F32 payload, in the flat order.
    private static func bytes(_ tensors: [[Float]]) -> [UInt8] {
        let count = 4 * tensors.reduce(0) { $0 + $1.count }
        return [UInt8](unsafeUninitializedCapacity: count) { out, initialized in
            var at = 0
            for t in tensors {
                t.withUnsafeBytes { if let from = $0.baseAddress { UnsafeMutableRawPointer(out.baseAddress! + at).copyMemory(from: from, byteCount: $0.count) } }
                at += t.count * 4
            }
            initialized = count
        }
    }

    /// Adds a share's F32 gradient (the size checked) to the step's sum.
    private static func add(_ gradient: [UInt8]) {
        gradient.withUnsafeBytes { raw in
            raw.withMemoryRebound(to: Float.self) { g in
                TrainStep.kept.summed.withUnsafeMutableBufferPointer { FloatVectors.add(g, to: $0.baseAddress!) }
            }
        }
    }
}
