import CZeroMQ

/// The libzmq socket types this module supports.
public enum SocketType: Sendable, CaseIterable {
    case router, dealer, rep, req, pair, push, pull, pub, sub

    var raw: Int32 {
        switch self {
        case .router: ZMQ_ROUTER
        case .dealer: ZMQ_DEALER
        case .rep: ZMQ_REP
        case .req: ZMQ_REQ
        case .pair: ZMQ_PAIR
        case .push: ZMQ_PUSH
        case .pull: ZMQ_PULL
        case .pub: ZMQ_PUB
        case .sub: ZMQ_SUB
        }
    }
}

/// A libzmq socket.
///
/// **Threading:** like the libzmq socket it wraps, a `ZMQSocket` must be used by one thread
/// at a time. It may be created on one thread and handed to another (through anything that
/// acts as a memory barrier: a lock, a queue, `Thread` start), which is why it is `Sendable`;
/// it must not be used concurrently, and ``close()`` belongs to the thread that uses it.
/// Only the owning ``ZMQContext``'s ``ZMQContext/shutdown()`` may be called from elsewhere to
/// unblock it.
///
/// **Errors:** every call goes through one errno gateway: `EINTR` is retried, `EAGAIN`
/// (no message, would block, timeout) is returned as `nil`/`false`, and every other failure
/// throws a ``ZMQError`` (`ETERM` when the context is shut down: ``ZMQError/isTerminated(_:)``).
public final class ZMQSocket: @unchecked Sendable {
    /// The context the socket belongs to; kept alive until the socket is gone.
    public let context: ZMQContext
    /// The socket's type.
    public let type: SocketType
    private var handle: UnsafeMutableRawPointer?

    /// Creates a socket of `type` in `context` (`zmq_socket`).
    public init(_ context: ZMQContext, _ type: SocketType) throws {
        self.context = context
        self.type = type
        var raw: UnsafeMutableRawPointer?
        try zmqRequire("zmq_socket") {
            raw = zmq_socket(context.handle, type.raw)
            return raw == nil ? -1 : 0
        }
        handle = raw
    }

    deinit { close() }

    /// Closes the socket (`zmq_close`). Idempotent. Pending outgoing messages are kept for the
    /// linger period (``setLinger(ms:)``), which also bounds how long the context's termination
    /// waits for them.
    public func close() {
        guard let h = handle else { return }
        handle = nil
        _ = zmq_close(h)
    }

    /// `true` once ``close()`` has run.
    public var isClosed: Bool { handle == nil }

    func live(_ call: String) throws(ZMQError) -> UnsafeMutableRawPointer {
        guard let h = handle else { throw ZMQError(code: errnoENOTSOCK, call: call) }
        return h
    }

    // MARK: Endpoints

    /// Binds to `endpoint`, e.g. `"tcp://127.0.0.1:*"`, `"ipc:///tmp/x.sock"`, `"inproc://name"`.
    /// For wildcard ports read the chosen address from ``lastEndpoint``.
    public func bind(_ endpoint: String) throws {
        let h = try live("zmq_bind")
        try zmqRequire("zmq_bind") { zmq_bind(h, endpoint) }
    }

    /// Connects to `endpoint`. libzmq connects (and reconnects) in the background.
    public func connect(_ endpoint: String) throws {
        let h = try live("zmq_connect")
        try zmqRequire("zmq_connect") { zmq_connect(h, endpoint) }
    }

    /// Stops listening on `endpoint` (use the resolved address from ``lastEndpoint`` for
    /// wildcard binds).
    public func unbind(_ endpoint: String) throws {
        let h = try live("zmq_unbind")
        try zmqRequire("zmq_unbind") { zmq_unbind(h, endpoint) }
    }

    /// Disconnects from `endpoint`.
    public func disconnect(_ endpoint: String) throws {
        let h = try live("zmq_disconnect")
        try zmqRequire("zmq_disconnect") { zmq_disconnect(h, endpoint) }
    }

    /// The last endpoint bound (`ZMQ_LAST_ENDPOINT`), with wildcards resolved, e.g.
    /// `"tcp://127.0.0.1:45123"`; empty when nothing was bound or the socket is closed.
    public var lastEndpoint: String {
        guard let h = handle else { return "" }
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        let ok = (try? zmqRequire("zmq_getsockopt") {
            zmq_getsockopt(h, ZMQ_LAST_ENDPOINT, &buffer, &size)
        }) != nil
        guard ok else { return "" }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    // MARK: Options

    private func set(_ option: Int32, _ name: String, _ value: UnsafeRawPointer?, _ size: Int) throws {
        let h = try live("zmq_setsockopt(\(name))")
        try zmqRequire("zmq_setsockopt(\(name))") { zmq_setsockopt(h, option, value, size) }
    }

    private func set(_ option: Int32, _ name: String, int value: Int32) throws {
        var v = value
        try set(option, name, &v, MemoryLayout<Int32>.size)
    }

    private func set(_ option: Int32, _ name: String, bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try set(option, name, $0.baseAddress, $0.count) }
    }

    private func set(_ option: Int32, _ name: String, string: String) throws {
        try set(option, name, bytes: Array(string.utf8))
    }

    /// `ZMQ_LINGER`: how long pending outgoing messages are kept after ``close()``
    /// (-1 forever, the libzmq default; 0 drop at once).
    public func setLinger(ms: Int32) throws { try set(ZMQ_LINGER, "ZMQ_LINGER", int: ms) }

    /// `ZMQ_SNDHWM`: outgoing messages queued per peer before sends block or drop (0: no limit).
    public func setSendHighWaterMark(_ messages: Int32) throws {
        try set(ZMQ_SNDHWM, "ZMQ_SNDHWM", int: messages)
    }

    /// `ZMQ_RCVHWM`: incoming messages queued per peer (0: no limit).
    public func setReceiveHighWaterMark(_ messages: Int32) throws {
        try set(ZMQ_RCVHWM, "ZMQ_RCVHWM", int: messages)
    }

    /// `ZMQ_MAXMSGSIZE`: a peer that sends a frame larger than `bytes` is disconnected and the
    /// frame is never delivered (-1: no limit). Applies to tcp and ipc, not inproc.
    public func setMaxMessageSize(_ bytes: Int64) throws {
        var v = bytes
        try set(ZMQ_MAXMSGSIZE, "ZMQ_MAXMSGSIZE", &v, MemoryLayout<Int64>.size)
    }

    /// `ZMQ_ROUTING_ID`: the identity a ROUTER peer sees for this socket (1...255 bytes, not
    /// starting with a zero byte). Set before connecting.
    public func setRoutingId(_ bytes: [UInt8]) throws {
        try set(ZMQ_ROUTING_ID, "ZMQ_ROUTING_ID", bytes: bytes)
    }

    /// `ZMQ_ROUTER_MANDATORY`: a ROUTER send to an unknown routing id throws `EHOSTUNREACH`
    /// instead of silently dropping, and a send to a full peer returns `false` (EAGAIN).
    public func setRouterMandatory(_ on: Bool) throws {
        try set(ZMQ_ROUTER_MANDATORY, "ZMQ_ROUTER_MANDATORY", int: on ? 1 : 0)
    }

    /// `ZMQ_ROUTER_HANDOVER`: a new connection with a routing id already in use takes it
    /// over (the old one is dropped) instead of being ignored; useful for reconnecting peers.
    public func setRouterHandover(_ on: Bool) throws {
        try set(ZMQ_ROUTER_HANDOVER, "ZMQ_ROUTER_HANDOVER", int: on ? 1 : 0)
    }

    /// `ZMQ_IMMEDIATE`: queue messages only to completed connections (sends with no
    /// completed connection block, or return `false` with `dontWait`).
    public func setImmediate(_ on: Bool) throws {
        try set(ZMQ_IMMEDIATE, "ZMQ_IMMEDIATE", int: on ? 1 : 0)
    }

    /// `ZMQ_RECONNECT_IVL` and `ZMQ_RECONNECT_IVL_MAX`: reconnect after `ms`, doubling up to
    /// `max` (0: no doubling).
    public func setReconnectInterval(ms: Int32, max: Int32 = 0) throws {
        try set(ZMQ_RECONNECT_IVL, "ZMQ_RECONNECT_IVL", int: ms)
        try set(ZMQ_RECONNECT_IVL_MAX, "ZMQ_RECONNECT_IVL_MAX", int: max)
    }

    /// `ZMQ_HANDSHAKE_IVL`: the longest a ZMTP (and CURVE) handshake may take (0: forever).
    public func setHandshakeInterval(ms: Int32) throws {
        try set(ZMQ_HANDSHAKE_IVL, "ZMQ_HANDSHAKE_IVL", int: ms)
    }

    /// `ZMQ_SNDTIMEO`: a blocking send gives up after `ms` and returns `false` (-1: forever).
    public func setSendTimeout(ms: Int32) throws { try set(ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO", int: ms) }

    /// `ZMQ_RCVTIMEO`: a blocking receive gives up after `ms` and returns `nil` (-1: forever).
    public func setReceiveTimeout(ms: Int32) throws { try set(ZMQ_RCVTIMEO, "ZMQ_RCVTIMEO", int: ms) }

    /// ZMTP heartbeats (`ZMQ_HEARTBEAT_IVL`, `ZMQ_HEARTBEAT_TIMEOUT`, `ZMQ_HEARTBEAT_TTL`):
    /// PING every `intervalMs`, drop the connection when nothing arrives for `timeoutMs`.
    public func setHeartbeat(intervalMs: Int32, timeoutMs: Int32, ttlMs: Int32 = 0) throws {
        try set(ZMQ_HEARTBEAT_IVL, "ZMQ_HEARTBEAT_IVL", int: intervalMs)
        try set(ZMQ_HEARTBEAT_TIMEOUT, "ZMQ_HEARTBEAT_TIMEOUT", int: timeoutMs)
        try set(ZMQ_HEARTBEAT_TTL, "ZMQ_HEARTBEAT_TTL", int: ttlMs)
    }

    /// Makes this socket a CurveZMQ server with the given Z85 secret key (40 characters).
    /// Set before binding. Clients are then authenticated by the context's ZAP handler, if one
    /// is running (``ZAPHandler``); without one every client with the server key is accepted.
    public func setCurveServer(secretKey: String) throws {
        try set(ZMQ_CURVE_SERVER, "ZMQ_CURVE_SERVER", int: 1)
        try set(ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", string: secretKey)
    }

    /// Makes this socket a CurveZMQ client with its own key pair and the server's public key
    /// (all Z85, 40 characters). Set before connecting.
    public func setCurveClient(publicKey: String, secretKey: String, serverKey: String) throws {
        try set(ZMQ_CURVE_SERVERKEY, "ZMQ_CURVE_SERVERKEY", string: serverKey)
        try set(ZMQ_CURVE_PUBLICKEY, "ZMQ_CURVE_PUBLICKEY", string: publicKey)
        try set(ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", string: secretKey)
    }

    /// `ZMQ_ZAP_DOMAIN`: the domain passed to the ZAP handler for connections to this socket.
    public func setZapDomain(_ domain: String) throws {
        try set(ZMQ_ZAP_DOMAIN, "ZMQ_ZAP_DOMAIN", string: domain)
    }

    /// `ZMQ_SUBSCRIBE` (SUB sockets): receive messages whose first frame starts with `prefix`
    /// (empty: everything).
    public func subscribe(_ prefix: [UInt8] = []) throws {
        try set(ZMQ_SUBSCRIBE, "ZMQ_SUBSCRIBE", bytes: prefix)
    }

    /// `ZMQ_UNSUBSCRIBE` (SUB sockets): removes a subscription made with ``subscribe(_:)``.
    public func unsubscribe(_ prefix: [UInt8] = []) throws {
        try set(ZMQ_UNSUBSCRIBE, "ZMQ_UNSUBSCRIBE", bytes: prefix)
    }

    // MARK: Sending

    /// Sends `count` parts; `sendOne(i, flags)` sends part `i` and returns `nil` on EAGAIN.
    /// Only the first part may be non-blocking: once it is accepted, libzmq accepts the rest of
    /// the message, so a multipart message is sent whole or not at all.
    private func sendParts(
        _ count: Int, dontWait: Bool, call: String,
        _ sendOne: (UnsafeMutableRawPointer, Int, Int32) throws -> Int32?
    ) throws -> Bool {
        let h = try live(call)
        guard count > 0 else { throw ZMQError(code: errnoEINVAL, call: call) }
        for i in 0..<count {
            var flags: Int32 = i < count - 1 ? ZMQ_SNDMORE : 0
            if i == 0 && dontWait { flags |= ZMQ_DONTWAIT }
            if try sendOne(h, i, flags) == nil {
                if i == 0 { return false }
                // A later part timed out: the message is broken; report it as an error.
                throw ZMQError(code: errnoEAGAIN, call: call)
            }
        }
        return true
    }

    /// Sends a multipart message, copying each frame's bytes into libzmq.
    /// - Returns: `false` when the message could not be queued without blocking (`dontWait`),
    ///   or the send timeout expired (EAGAIN); nothing was sent then.
    /// - Throws: ``ZMQError`` for every other failure, e.g. `EHOSTUNREACH` from a ROUTER with
    ///   ``setRouterMandatory(_:)`` and an unknown routing id, or `ETERM`.
    @discardableResult
    public func send(_ frames: [[UInt8]], dontWait: Bool = false) throws -> Bool {
        try sendParts(frames.count, dontWait: dontWait, call: "zmq_send") { h, i, flags in
            try frames[i].withUnsafeBytes { buf in
                try zmqCall("zmq_send") { zmq_send(h, buf.baseAddress, buf.count, flags) }
            }
        }
    }

    /// Sends a multipart message of raw buffers (copied into libzmq before returning).
    /// Same results as the `[[UInt8]]` overload.
    @discardableResult
    public func send(buffers: [UnsafeRawBufferPointer], dontWait: Bool = false) throws -> Bool {
        try sendParts(buffers.count, dontWait: dontWait, call: "zmq_send") { h, i, flags in
            let buf = buffers[i]
            return try zmqCall("zmq_send") { zmq_send(h, buf.baseAddress, buf.count, flags) }
        }
    }

    /// Sends a multipart message of frames. The frames stay valid: libzmq shares their
    /// contents by reference count (`zmq_msg_copy`) instead of copying large payloads, so a
    /// received frame can be forwarded without a copy.
    /// Same results as the `[[UInt8]]` overload.
    @discardableResult
    public func send(_ frames: [ZMQFrame], dontWait: Bool = false) throws -> Bool {
        let tmp = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: 1)
        defer { tmp.deallocate() }
        return try sendParts(frames.count, dontWait: dontWait, call: "zmq_msg_send") { h, i, flags in
            zmq_msg_init(tmp)
            defer { zmq_msg_close(tmp) }  // a no-op after a successful send
            try zmqRequire("zmq_msg_copy") { zmq_msg_copy(tmp, frames[i].msg) }
            return try zmqCall("zmq_msg_send") { zmq_msg_send(tmp, h, flags) }
        }
    }

    // MARK: Receiving

    /// Receives one whole multipart message; the frames own libzmq's buffers (no copy).
    /// - Returns: `nil` when no message is waiting (`dontWait`) or the receive timeout
    ///   (``setReceiveTimeout(ms:)``) expired.
    /// - Throws: ``ZMQError``, `ETERM` when the context is shut down.
    public func receiveMultipart(dontWait: Bool = false) throws -> [ZMQFrame]? {
        let h = try live("zmq_msg_recv")
        let first = ZMQFrame()
        let flags: Int32 = dontWait ? ZMQ_DONTWAIT : 0
        guard try zmqCall("zmq_msg_recv", { zmq_msg_recv(first.msg, h, flags) }) != nil else {
            return nil
        }
        var frames = [first]
        var last = first
        while last.more {
            // The rest of a multipart message arrives atomically with its first part.
            let next = ZMQFrame()
            guard try zmqCall("zmq_msg_recv", { zmq_msg_recv(next.msg, h, 0) }) != nil else {
                throw ZMQError(code: errnoEAGAIN, call: "zmq_msg_recv")
            }
            frames.append(next)
            last = next
        }
        return frames
    }

    /// The raw socket handle for ``ZMQPoller``.
    var pollHandle: UnsafeMutableRawPointer? { handle }
}
