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
/// coordinator's ipc:// socket (the same owner-only directory, so only this user's
/// processes reach it, as they alone reach the coordinator) for `prune run`'s workers; as
/// a CURVE server with the worker's own key pair on loopback for a loopback coordinator and
/// on every interface for a remote one (the coordinator gives the others the address the
/// worker's connection came from). A plaintext `--insecure` loopback coordinator gets no
/// links: any local process could reach them. Under CURVE a ZAP handler admits only the
/// keys of the other members of this worker's current group, and a share's claimed sender
/// must be a member with the key the link authenticated; over ipc:// links serve groups of
/// two only, where the sender can only be the other member.
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
    /// The ipc:// link's socket file, removed with the link (libzmq removes it only if its
    /// context is shut down before the process exits).
    private let socketFile: String?

    /// The link for a worker connecting to `coordinator`, or nil when it has none (an
    /// endpoint it cannot tell a link's place from, or tcp:// without CURVE).
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
                    guard let key = ZAP.curvePublicKey(mechanism: mechanism, credentials: credentials) else { return nil }
                    // The Assign and the Help go out together, so another member may
                    // connect a moment before this worker's group starts: its key gets a
                    // short grace (a refused DEALER would not try again).
                    let until = DispatchTime.now().uptimeNanoseconds + PeerLinkListener.admissionGraceMs * 1_000_000
                    while !admitted.keys.withLock({ $0.contains(key) }) {
                        guard DispatchTime.now().uptimeNanoseconds < until else { return nil }
                        usleep(5_000)
                    }
                    return key
                }
                try handler.start()
                zap = handler
            }
            socket = try ZMQSocket(context, .router)
            try socket.setLinger(ms: 0)
            try socket.setMaxMessageSize(options.settings.maxFrameBytes)
            // A member sends one share per step and block: a short queue bounds what a
            // member that floods can make this worker hold.
            try socket.setReceiveHighWaterMark(Self.queuedShares)
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
        socketFile = place.hasPrefix("ipc://") ? String(place.dropFirst("ipc://".count)) : nil
        endpoint = options.testDeadLink ? Self.deadEndpoint(like: place) : socket.lastEndpoint
    }

    deinit {
        socket.close()
        zap?.stop()
        if let socketFile { unlink(socketFile) }
    }

    /// How long the ZAP handler waits for a connecting key to join this worker's group.
    static let admissionGraceMs: UInt64 = 2000
    /// Shares queued per connection, both ways.
    static let queuedShares: Int32 = 8

    /// Where a worker of the coordinator at `coordinator` listens: beside an ipc://
    /// socket; loopback for a loopback coordinator; every interface under CURVE; else nil.
    static func bindEndpoint(coordinator: String, curve: Bool) -> String? {
        if coordinator.hasPrefix("ipc://") {
            let directory = (String(coordinator.dropFirst("ipc://".count)) as NSString).deletingLastPathComponent
            guard !directory.isEmpty else { return nil }
            // Named by the process, so the launcher can remove the file of a worker that died.
            return "ipc://\(directory)/\(linkFilePrefix(pid: getpid()))\(String(UInt64.random(in: 0...UInt64.max), radix: 16)).sock"
        }
        guard coordinator.hasPrefix("tcp://"), curve else { return nil }
        let rest = coordinator.dropFirst("tcp://".count)
        let host = rest.hasPrefix("[") ? String(rest.prefix { $0 != "]" }.dropFirst()) : String(rest.prefix { $0 != ":" })
        return ["127.0.0.1", "localhost", "::1"].contains(host) ? "tcp://127.0.0.1:*" : "tcp://*:*"
    }

    /// The start of the name of process `pid`'s ipc:// link file.
    static func linkFilePrefix(pid: pid_t) -> String { "link-\(pid)-" }

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

    /// Whether `frames` (routing id, envelope, …), which came over this member's link
    /// naming slot `claimed` as their sender, may be that member's: under CURVE the link
    /// authenticated that member's key (workers that share a key pair may stand for each
    /// other, as they do for the coordinator); over ipc:// `claimed` is the other member
    /// of a group of two.
    func mayHaveSent(_ frames: [ZMQFrame], claimed: Int) -> Bool {
        guard frames.count >= 2, claimed != ownSlot, let link = link(claimed) else { return false }
        guard curve else { return links.count == 2 }
        guard let key = frames[1].metadata("User-Id"), !key.isEmpty else { return false }
        return link.curveKey == key
    }
}

extension ComputeThread {
    /// The DEALER to `link` (made and connected on first use, then kept).
    func linkDealer(_ link: Prune_V1_PeerLink) throws -> ZMQSocket {
        let key = Self.dealerKey(link)
        if let dealer = linkDealers[key] { return dealer }
        // A worker meets few others; a long-lived one that met many keeps the newest.
        if linkDealers.count >= 16 { linkDealers.values.forEach { $0.close() }; linkDealers = [:] }
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setLinger(ms: 0)
        try dealer.setImmediate(true)
        // A member that stalls holds up few shares here; the rest go through the coordinator.
        try dealer.setSendHighWaterMark(PeerLinkListener.queuedShares)
        try dealer.setReconnectInterval(ms: 20, max: 1000)
        if let own = linkListener?.curve, !link.curveKey.isEmpty {
            try dealer.setCurveClient(publicKey: own.publicKey, secretKey: own.secretKey, serverKey: link.curveKey)
        }
        try dealer.connect(link.endpoint)
        linkDealers[key] = dealer
        return dealer
    }

    /// Forgets the DEALER to `link`: one that took no share in a whole group may have been
    /// refused for good (libzmq does not retry a connection its peer's ZAP refused), so the
    /// next group connects afresh.
    func dropLinkDealer(_ link: Prune_V1_PeerLink) {
        linkDealers.removeValue(forKey: Self.dealerKey(link))?.close()
    }

    private static func dealerKey(_ link: Prune_V1_PeerLink) -> String { link.endpoint + " " + link.curveKey }
}
