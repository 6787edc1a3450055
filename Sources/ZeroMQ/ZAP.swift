import Foundation

/// ZAP (ZeroMQ Authentication Protocol, RFC 27) names and helpers.
public enum ZAP {
    /// The inproc endpoint libzmq sends authentication requests to.
    public static let endpoint = "inproc://zeromq.zap.01"

    /// The handler type, also reachable as `ZAP.Handler`.
    public typealias Handler = ZAPHandler

    /// The client's CURVE public key in Z85 when `mechanism` is `"CURVE"` and the credentials
    /// are one 32-byte key (as libzmq sends them); otherwise `nil`.
    public static func curvePublicKey(mechanism: String, credentials: [[UInt8]]) -> String? {
        guard mechanism == "CURVE", credentials.count == 1, credentials[0].count == 32 else {
            return nil
        }
        return Curve.z85Encode(credentials[0])
    }
}

/// Answers a context's ZAP requests on a thread of its own.
///
/// Binds a REP socket on ``ZAP/endpoint`` in the given context; for each request (frames:
/// version `"1.0"`, request id, domain, address, identity, mechanism, credentials...) it calls
/// `authorize(mechanism, domain, address, credentials)` and replies status `"200"` with the
/// returned user id (visible on received frames as metadata `"User-Id"`), or `"400"` when it
/// returns `nil`. Malformed requests get `"500"` and never stop the handler.
///
/// Security: while no handler is bound, libzmq admits every CURVE client that knows the server
/// key. Start the handler before the server socket accepts connections and stop it only after
/// that socket is closed. The handler stops by itself when the context is shut down (`ETERM`).
public final class ZAPHandler: @unchecked Sendable {
    /// Decides one request: returns the user id to grant, or `nil` to deny. Called on the
    /// handler's thread, one request at a time. For CURVE, `credentials` is one frame with
    /// the client's 32-byte public key (see ``ZAP/curvePublicKey(mechanism:credentials:)``).
    public typealias Authorize = @Sendable (
        _ mechanism: String, _ domain: String, _ address: String, _ credentials: [[UInt8]]
    ) -> String?

    private final class State: @unchecked Sendable {
        let lock = NSLock()
        var stopping = false
        var done = false
        var lastError: ZMQError?
        let finished = DispatchSemaphore(value: 0)
        var isStopping: Bool { lock.withLock { stopping } }
        var isDone: Bool { lock.withLock { done } }
    }

    private let context: ZMQContext
    private let authorize: Authorize
    private let lock = NSLock()
    private var state: State?
    private var controlEndpoint: String?

    nonisolated(unsafe) private static var counter = 0
    private static let counterLock = NSLock()

    /// A handler for `context` (not yet running: call ``start()``).
    public init(context: ZMQContext, authorize: @escaping Authorize) {
        self.context = context
        self.authorize = authorize
    }

    deinit { stop() }

    /// `true` between ``start()`` and the end of the handler's thread.
    public var isRunning: Bool {
        lock.withLock {
            guard let state else { return false }
            return state.lock.withLock { !state.stopping && !state.done }
        }
    }

    /// The last unexpected socket error the handler met and survived, if any.
    public var lastError: ZMQError? {
        lock.withLock { state.flatMap { s in s.lock.withLock { s.lastError } } }
    }

    /// Binds the ZAP endpoint and starts answering on a new thread. Calling it again while
    /// running does nothing.
    /// - Throws: ``ZMQError``, e.g. `EADDRINUSE` when the context already has a ZAP handler.
    public func start() throws {
        try lock.withLock {
            if let state, !state.isDone { return }
            let id = Self.counterLock.withLock { Self.counter += 1; return Self.counter }
            let control = "\(ZAP.endpoint).control.\(id)"
            let rep = try ZMQSocket(context, .rep)
            let pull = try ZMQSocket(context, .pull)
            try rep.setLinger(ms: 0)
            try pull.setLinger(ms: 0)
            try rep.bind(ZAP.endpoint)
            try pull.bind(control)
            let state = State()
            let authorize = self.authorize
            let thread = Thread {
                Self.run(rep: rep, control: pull, state: state, authorize: authorize)
                // Unbinding inproc is synchronous (closing is not), so a new handler can bind
                // as soon as stop() returns.
                try? rep.unbind(ZAP.endpoint)
                rep.close()
                pull.close()
                state.lock.withLock { state.done = true }
                state.finished.signal()
            }
            thread.name = "zmq-zap-handler"
            self.state = state
            self.controlEndpoint = control
            thread.start()
        }
    }

    /// Stops the handler and waits for its thread to finish (at once after a context
    /// shutdown). Idempotent. Do not call it from inside `authorize`.
    public func stop() {
        let (state, control) = lock.withLock { () -> (State?, String?) in
            defer { self.state = nil; self.controlEndpoint = nil }
            return (self.state, self.controlEndpoint)
        }
        guard let state else { return }
        state.lock.withLock { state.stopping = true }
        // Wake the thread at once; if this fails (context shut down), the poll timeout or
        // ETERM ends it anyway.
        if let control, let push = try? ZMQSocket(context, .push) {
            try? push.setLinger(ms: 100)
            if (try? push.connect(control)) != nil {
                _ = try? push.send([[]], dontWait: true)
            }
            push.close()
        }
        state.finished.wait()
    }

    private static func run(rep: ZMQSocket, control: ZMQSocket, state: State, authorize: Authorize) {
        var poller = ZMQPoller()
        let repIndex = poller.add(rep)
        let controlIndex = poller.add(control)
        while !state.isStopping {
            do {
                let ready = try poller.poll(timeoutMs: 250)
                if ready[controlIndex] { return }
                guard ready[repIndex], let request = try rep.receiveMultipart(dontWait: true) else {
                    continue
                }
                let reply = answer(request.map(\.bytes), authorize: authorize)
                try rep.send(reply)
            } catch let error as ZMQError {
                if error.isTerminated { return }
                state.lock.withLock { state.lastError = error }
                Thread.sleep(forTimeInterval: 0.01)  // never spin on a persistent error
            } catch {
                return
            }
        }
    }

    /// The RFC 27 reply to one request.
    static func answer(_ frames: [[UInt8]], authorize: Authorize) -> [[UInt8]] {
        func reply(_ id: [UInt8], _ code: String, _ text: String, _ user: String) -> [[UInt8]] {
            [Array("1.0".utf8), id, Array(code.utf8), Array(text.utf8), Array(user.utf8), []]
        }
        let requestId = frames.count > 1 ? frames[1] : []
        guard frames.count >= 6, frames[0] == Array("1.0".utf8) else {
            return reply(requestId, "500", "Malformed ZAP request", "")
        }
        func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
        let user = authorize(text(frames[5]), text(frames[2]), text(frames[3]), Array(frames[6...]))
        if let user {
            return reply(requestId, "200", "OK", user)
        }
        return reply(requestId, "400", "Not authorized", "")
    }
}
