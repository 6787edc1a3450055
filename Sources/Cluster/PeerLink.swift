import Foundation
import Logging
import Protocol
import Synchronization
import ZeroMQ

/// A worker's direct link for the span groups it joins (`train.exchange: allgather`,
/// protocol 11): a ROUTER socket its compute thread listens on for the other members'
/// shares, so a share crosses one hop, member to member, instead of two through the
/// coordinator (docs/protocol.md, "Direct links"; the README measures it).
///
/// Where it listens follows how the worker reaches its coordinator: beside the
/// coordinator's ipc:// socket (the same owner-only directory) for `prune run`'s
/// workers; on loopback for a loopback coordinator; on every interface, as a CURVE server
/// with the worker's own key pair, for a remote one (the coordinator fills in the address
/// its connection came from). Under CURVE a ZAP handler admits only the keys of the
/// members of this worker's current group, and a share's sender is the member whose key
/// the link authenticated; without CURVE (owner-only ipc://, or --insecure loopback)
/// links serve groups of two only, where the sender can only be the other member.
final class PeerLinkListener {
    /// The CURVE keys the ZAP handler admits: the current group's other members'.
    final class AdmittedKeys: Sendable {
        let keys = Mutex<Set<String>>([])
    }

    let socket: ZMQSocket
    /// What Hello announces: as bound (a wildcard host for the coordinator to fill in).
    let endpoint: String
    /// This worker's CURVE key pair when its links use CURVE.
    let curve: (publicKey: String, secretKey: String)?
    let admitted: AdmittedKeys
    private let zap: ZAPHandler?

    /// The link for a worker connecting to `coordinator`, or nil when it has none (an
    /// endpoint it cannot tell a link's place from, or a remote coordinator without CURVE).
    init?(context: ZMQContext, options: WorkerOptions, logger: Logger) {
        guard let place = Self.bindEndpoint(coordinator: options.endpoint, curve: options.curveSecretKey != nil) else { return nil }
        let admitted = AdmittedKeys()
        let curve = options.curvePublicKey.flatMap { pub in options.curveSecretKey.map { (publicKey: pub, secretKey: $0) } }
        let served = place.hasPrefix("tcp://") ? curve : nil
        var zap: ZAPHandler?
        let socket: ZMQSocket
        do {
            if served != nil {
                let handler = ZAPHandler(context: context) { mechanism, _, _, credentials in
                    guard let key = ZAP.curvePublicKey(mechanism: mechanism, credentials: credentials),
                          admitted.keys.withLock({ $0.contains(key) }) else { return nil }
                    return key
                }
                try handler.start()
                zap = handler
            }
            socket = try ZMQSocket(context, .router)
            try socket.setLinger(ms: 0)
            try socket.setMaxMessageSize(options.settings.maxFrameBytes)
            try socket.setReceiveHighWaterMark(64)
            if let served {
                try socket.setZapDomain("prune-link")
                try socket.setCurveServer(secretKey: served.secretKey)
            }
            try socket.bind(place)
        } catch {
            zap?.stop()
            logger.notice("no direct link for span groups (\(error)); their shares go through the coordinator")
            return nil
        }
        self.admitted = admitted
        self.curve = served
        self.zap = zap
        self.socket = socket
        endpoint = options.testDeadLink ? Self.deadEndpoint(like: place) : socket.lastEndpoint
    }

    deinit {
        socket.close()
        zap?.stop()
    }

    /// Where a worker of the coordinator at `coordinator` listens: beside an ipc://
    /// socket; loopback for a loopback coordinator; every interface under CURVE; else nil.
    static func bindEndpoint(coordinator: String, curve: Bool) -> String? {
        if coordinator.hasPrefix("ipc://") {
            let directory = (String(coordinator.dropFirst("ipc://".count)) as NSString).deletingLastPathComponent
            guard !directory.isEmpty else { return nil }
            return "ipc://\(directory)/link-\(String(UInt64.random(in: 0...UInt64.max), radix: 16)).sock"
        }
        guard coordinator.hasPrefix("tcp://") else { return nil }
        let rest = coordinator.dropFirst("tcp://".count)
        let host = rest.hasPrefix("[") ? String(rest.prefix { $0 != "]" }.dropFirst()) : String(rest.prefix { $0 != ":" })
        if ["127.0.0.1", "localhost", "::1"].contains(host) { return "tcp://127.0.0.1:*" }
        return curve ? "tcp://*:*" : nil
    }

    /// Test hook (`PRUNE_TEST_LINK=dead`): a link the others can never reach.
    private static func deadEndpoint(like place: String) -> String {
        place.hasPrefix("ipc://") ? place.replacingOccurrences(of: ".sock", with: ".dead.sock") : "tcp://127.0.0.1:1"
    }
}

/// The direct links of a group as one member uses them: a DEALER to each other member's
/// link (kept across groups, one per endpoint and key), `ZMQ_IMMEDIATE` so a send to a
/// link not connected yet (or refused) fails at once and the share goes through the
/// coordinator instead; and who sent a share that came over this member's own link.
struct GroupLinks {
    /// Each slot's link (`nil`: none, or this member's own).
    private let links: [Prune_V1_PeerLink?]
    private let ownSlot: Int
    private let curve: Bool

    /// The group's links from its Assign or Help, checked: a member's link is used only
    /// when it is well formed, its key (under CURVE) is one, and the group can tell its
    /// senders apart (under CURVE by key; without, in a group of two).
    init(_ links: [Prune_V1_PeerLink], slot: Int, slots: Int, listener: PeerLinkListener?) {
        ownSlot = slot
        curve = listener?.curve != nil
        let usable = listener != nil && links.count == slots && (curve || slots == 2)
        self.links = (0..<slots).map { s in
            guard usable, s != slot else { return nil }
            let link = links[s]
            let wellFormed = link.endpoint.utf8.count <= 256 && (link.endpoint.hasPrefix("tcp://") || link.endpoint.hasPrefix("ipc://"))
            let keyed = listener?.curve != nil ? Curve.isValidKey(link.curveKey) : link.curveKey.isEmpty
            return wellFormed && keyed ? link : nil
        }
    }

    /// Slot `s`'s link, if the group uses one.
    func link(_ s: Int) -> Prune_V1_PeerLink? { s >= 0 && s < links.count ? links[s] : nil }

    /// The slot that sent `frames` (routing id, envelope, …) over this member's link:
    /// under CURVE the member whose key the link authenticated; without CURVE, the other
    /// member of a group of two. nil: no member of this group.
    func sender(of frames: [ZMQFrame]) -> Int? {
        guard frames.count >= 2 else { return nil }
        if curve {
            guard let key = frames[1].metadata("User-Id"), !key.isEmpty else { return nil }
            return links.firstIndex { $0?.curveKey == key }
        }
        return links.count == 2 && links[1 - ownSlot] != nil ? 1 - ownSlot : nil
    }
}

extension ComputeThread {
    /// The DEALER to `link` (made and connected on first use, then kept).
    func linkDealer(_ link: Prune_V1_PeerLink) throws -> ZMQSocket {
        let key = link.endpoint + " " + link.curveKey
        if let dealer = linkDealers[key] { return dealer }
        // A worker meets few others; a long-lived one that met many keeps the newest.
        if linkDealers.count >= 16 { linkDealers.values.forEach { $0.close() }; linkDealers = [:] }
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setLinger(ms: 0)
        try dealer.setImmediate(true)
        try dealer.setReconnectInterval(ms: 20, max: 1000)
        if let own = linkListener?.curve, !link.curveKey.isEmpty {
            try dealer.setCurveClient(publicKey: own.publicKey, secretKey: own.secretKey, serverKey: link.curveKey)
        }
        try dealer.connect(link.endpoint)
        linkDealers[key] = dealer
        return dealer
    }
}
