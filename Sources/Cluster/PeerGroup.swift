import Engine
import Foundation
import Protocol
import Pruning
import Tensors
import ZeroMQ

/// A worker's side of a training span's group (`SpanGroup`). Shares go straight to each
/// other member's link where it takes them (`GroupLinks`), else to the coordinator, which
/// relays them to every other member (a member that gets a share both ways keeps the
/// first: they are the same bytes); join and distrust always go to the coordinator. What
/// comes is read off the compute thread's PAIR socket (the coordinator's) and its link.
/// Anything else that comes meanwhile is kept for after the task; an Assign or a Help ends
/// a helper's part (the coordinator gives work only to a worker it counts idle, so its
/// group is over).
final class PeerGroup: SpanGroup {
    private unowned let thread: ComputeThread
    private let pair: ZMQSocket
    private let task: String
    private let attempt: UInt32
    let slot: Int
    let slots: Int
    /// Missing this many heartbeats' time, a member counts as gone.
    let patienceMs: Int
    var shareBytes = 0
    private let links: GroupLinks
    /// Shares this member sent straight to every other member, and those that went
    /// (also) through the coordinator.
    private(set) var sentDirect = 0, sentRelayed = 0
    /// Shares of this group that came over this member's link.
    private(set) var receivedDirect = 0
    /// The slots whose link took at least one share, and those whose link was tried.
    private var linkTook: Set<Int> = [], linkTried: Set<Int> = []

    init(thread: ComputeThread, pair: ZMQSocket, task: String, attempt: UInt32, slot: Int, slots: Int, links: [Prune_V1_PeerLink]) {
        self.thread = thread
        self.pair = pair
        self.task = task
        self.attempt = attempt
        self.slot = slot
        self.slots = slots
        patienceMs = thread.settings.deadAfterMs
        self.links = GroupLinks(links, slot: slot, slots: slots, listener: thread.linkListener)
        // Under CURVE this member's link admits the group's other members, no one else.
        let keys = (0..<slots).compactMap { self.links.link($0)?.curveKey }.filter { !$0.isEmpty }
        thread.linkListener?.admitted.keys.withLock { $0 = Set(keys) }
        // Connected now (or kept from an earlier group), so the first share can go direct.
        for s in 0..<slots { if let link = self.links.link(s) { _ = try? thread.linkDealer(link) } }
    }

    /// The group is over for this member: its link admits no new connection, and a link
    /// that took none of its shares is connected afresh next time.
    func close() {
        thread.linkListener?.admitted.keys.withLock { $0 = [] }
        for s in linkTried.subtracting(linkTook) { if let link = links.link(s) { thread.dropLinkDealer(link) } }
    }

    /// For the worker's log: how this member's shares went.
    var sentSummary: String { "\(sentDirect) shares sent direct, \(sentRelayed) through the coordinator, \(receivedDirect) received direct" }

    private func frames(_ kind: String, _ fill: (inout Prune_V1_Peer) -> Void = { _ in }, gradient: [UInt8]? = nil) throws -> [ZMQFrame] {
        var p = Prune_V1_Peer()
        p.taskID = task
        p.attempt = attempt
        p.kind = kind
        p.slot = UInt32(slot)
        fill(&p)
        let outgoing = gradient.map { [WireMessage.Outgoing(transient: "gradient", bytes: $0)] } ?? []
        return try WireMessage.frames(.with(.peer(p)), outgoing: outgoing).map { try ZMQFrame(bytes: $0) }
    }

    func join() throws { _ = try pair.send(try frames("join")) }

    func share(_ share: SpanShare) throws {
        var share = share
        if slot > 0, thread.lies == .skewShares, !share.gradient.isEmpty { share.gradient[0] ^= 1 }
        if slot > 0, thread.lies == .nanShares, share.gradient.count >= 4 { share.gradient.replaceSubrange(0..<4, with: FloatPayload.encode([Float.nan])) }
        let message = try frames("share", {
            $0.step = UInt32(clamping: share.step)
            $0.first = UInt32(clamping: share.first)
            $0.count = UInt32(clamping: share.count)
            $0.prefix = share.prefix
            $0.losses = share.losses
        }, gradient: share.gradient)
        // The frames go by reference to every socket (libzmq counts them), not copied.
        var everyone = true
        for s in 0..<slots where s != slot {
            guard let link = links.link(s) else {
                everyone = false
                continue
            }
            linkTried.insert(s)
            guard let dealer = try? thread.linkDealer(link), (try? dealer.send(message, dontWait: true)) == true else {
                everyone = false
                continue
            }
            linkTook.insert(s)
        }
        if everyone {
            sentDirect += 1
        } else {
            _ = try pair.send(message)
            sentRelayed += 1
        }
    }

    func distrust(slot: Int) throws { _ = try pair.send(try frames("distrust") { $0.slot = UInt32(clamping: slot) }) }

    func next(timeoutMs: Int) throws -> SpanEvent {
        let until = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, timeoutMs)) * 1_000_000
        var poller = ZMQPoller()
        poller.add(pair)
        if let listener = thread.linkListener { poller.add(listener.socket) }
        while true {
            try Cancellation.checkpoint()
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < until else { return .timeout }
            if !thread.heldPeers.isEmpty, let event = try fromCoordinator(thread.heldPeers.removeFirst()) { return event }
            guard thread.heldPeers.isEmpty else { continue }
            let ready = try poller.poll(timeoutMs: max(1, Int((until - now) / 1_000_000)))
            if ready.count > 1, ready[1], let frames = try thread.linkListener?.socket.receiveMultipart(dontWait: true),
               let event = fromLink(frames) {
                return event
            }
            if ready[0], let frames = try pair.receiveMultipart(dontWait: true), let event = try fromCoordinator(frames) {
                return event
            }
        }
    }

    /// A share that came over this member's link: from the member of this group it names
    /// (`GroupLinks.mayHaveSent`), for this group's task and attempt, one gradient of the
    /// span's size. Anything else is dropped unread.
    private func fromLink(_ frames: [ZMQFrame]) -> SpanEvent? {
        guard frames.count == 3, let envelope = Worker.envelope(Array(frames.dropFirst()), maxEnvelopeBytes: thread.settings.maxEnvelopeBytes),
              envelope.protocolVersion == Settings.protocolVersion, envelope.payloads.count == 1, !envelope.payloads[0].stored,
              case .peer(let p)? = envelope.body, p.kind == "share", p.taskID == task, p.attempt == attempt, frames[2].count == shareBytes,
              links.mayHaveSent(frames, claimed: Int(p.slot)) else { return nil }
        let sender = Int(p.slot)
        receivedDirect += 1
        return .share(slot: sender, Self.share(p, gradient: frames[2]))
    }

    /// What a message from the coordinator means to the group (nil: nothing for it).
    private func fromCoordinator(_ frames: [ZMQFrame]) throws -> SpanEvent? {
        if case .peer(let p)? = Worker.peer(frames, maxEnvelopeBytes: thread.settings.maxEnvelopeBytes) {
            // Another group's (one this worker left) is stale.
            guard p.taskID == task, p.attempt == attempt else { return nil }
            switch p.kind {
            case "join": return .joined(slot: Int(p.slot))
            case "left": return .left(slot: Int(p.slot))
            case "share" where frames.count == 2 && frames[1].count == shareBytes: return .share(slot: Int(p.slot), Self.share(p, gradient: frames[1]))
            default: return nil
            }
        }
        let bytes = frames.map(\.bytes)
        guard let message = try? WireMessage.decode(bytes, settings: thread.settings.fromCoordinator) else { return nil }
        switch message.envelope.body {
        case .shutdown:
            throw ComputeThread.Stop()
        case .assign, .help, .welcome:
            thread.deferred.append(bytes)
            return slot > 0 ? .interrupted : nil
        default:
            return nil
        }
    }

    /// The one copy of a share on this side, made once its size is right.
    private static func share(_ p: Prune_V1_Peer, gradient: ZMQFrame) -> SpanShare {
        SpanShare(step: Int(p.step), first: Int(p.first), count: Int(p.count), prefix: p.prefix, losses: p.losses, gradient: gradient.bytes)
    }
}
