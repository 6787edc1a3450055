import Foundation
import Protocol
import Pruning

/// One member's share of a training step's gradient (`train.exchange: allgather`): the
/// F32 sum of shards [first, first + count) of step `step`, an aligned run
/// (`ShardTreeSum.blocks`), and each shard's loss triple (loss, correct, examples).
/// `prefix` (a running sum from shard 0, the protocol's earlier form) is no longer sent;
/// a share that sets it is dropped.
public struct SpanShare: Sendable {
    public var step: Int
    public var first: Int
    public var count: Int
    public var prefix: Bool
    public var losses: [Double]
    public var gradient: [UInt8]

    public init(step: Int, first: Int, count: Int, prefix: Bool, losses: [Double], gradient: [UInt8]) {
        self.step = step
        self.first = first
        self.count = count
        self.prefix = prefix
        self.losses = losses
        self.gradient = gradient
    }
}

/// What a member of a span's group hears next.
public enum SpanEvent: Sendable {
    /// Slot `slot` holds the span's base state and is ready for its first step.
    case joined(slot: Int)
    case share(slot: Int, SpanShare)
    /// Slot `slot`'s worker is gone (slot 0: the leader; a helper then stops).
    case left(slot: Int)
    /// Nothing within the wait.
    case timeout
    /// This worker has other work now (an Assign came): a helper stops.
    case interrupted
}

/// A training span's group as one member sees it (`train.exchange: allgather`). Slot 0
/// is the leader, the worker leasing the span task; slots 1 ..< `slots` are workers that
/// were idle when it was leased. Messages go through the coordinator, which stamps each
/// with its sender's slot. Only a worker has one (`TaskInputs.spanGroup`).
public protocol SpanGroup: AnyObject {
    var slot: Int { get }
    var slots: Int { get }
    /// How long a member waits for another before it counts it gone (milliseconds).
    var patienceMs: Int { get }
    /// The size of every share (one whole gradient); `next` drops a share of any other
    /// size before it is copied. Set by the span before its first wait.
    var shareBytes: Int { get set }
    /// A helper holds the base state: tells the leader.
    func join() throws
    func share(_ share: SpanShare) throws
    /// The leader found slot `slot`'s share wrong (the coordinator stops the group).
    func distrust(slot: Int) throws
    func next(timeoutMs: Int) throws -> SpanEvent
}

extension TaskInputs {
    /// No group: the task runs alone (the coordinator's recomputation, in-process runs).
    public var spanGroup: SpanGroup? { nil }
}

/// Which shards of each step a slot of a span's group computes: contiguous runs in slot
/// order, each cut into aligned runs that are subtrees of the step's `ShardTreeSum`.
public enum SpanSlots {
    /// Slot `slot`'s run. On a span's last step (`lastStep`) the leader keeps the first
    /// half of its run (all of a run of one) and slot 1 takes the rest before its own: the
    /// leader recomputes its checked helper blocks in that time, while the helpers compute
    /// (`SpanAllGather`), instead of after the step with the helpers idle.
    public static func shards(slot: Int, of slots: Int, shards: Int, lastStep: Bool = false) -> Range<Int> {
        func even(_ s: Int) -> Range<Int> { (s * shards / slots)..<((s + 1) * shards / slots) }
        guard lastStep, slot <= 1 else { return even(slot) }
        let lead = even(0), kept = lead.lowerBound + max(1, lead.count / 2)
        return slot == 0 ? lead.lowerBound..<kept : kept..<even(1).upperBound
    }
}
