import Protocol

/// A worker's protocol decisions as a pure value: which coordinator messages go to the
/// compute thread, which answers go out, when to heartbeat, when the coordinator counts as
/// silent and how long to wait before reconnecting, when to stop. Events go in with the
/// time from an injected clock; directives come out for `Worker` (the shell that owns the
/// sockets) to carry out, in order. Tested by feeding events, like `CoordinatorCore`.
///
/// Leases belong to a connection: an answer is sent only for an attempt the coordinator
/// leased on the current connection, and a reconnect cancels whatever was running (the
/// coordinator knows this worker under a new routing id and requeues those tasks).
public struct WorkerCore: Sendable {
    public enum Directive: Sendable, Equatable {
        /// Pass the coordinator's message just handled to the compute thread.
        case forwardToCompute
        /// Send the compute thread's message just handled to the coordinator.
        case forwardToCoordinator
        /// Send a message of the I/O thread's own (Heartbeat, Goodbye).
        case send(Prune_V1_Envelope)
        /// Stop computing this attempt (its token is cancelled).
        case cancelAttempt(task: String, attempt: UInt32)
        /// Close the connection, wait, connect a fresh one and say Hello.
        case reconnect(afterMs: Int)
        /// Leave the run loop with this exit status.
        case exit(code: Int32)
        case log(String)
        /// A warning for stderr beyond the log (e.g. the Reject's reason).
        case warn(String)
    }

    /// An attempt leased on the current connection.
    public struct Lease: Sendable, Equatable {
        public let task: String
        public let attempt: UInt32
    }

    public private(set) var settings: Settings
    public private(set) var running: [Lease] = []
    private var lastHeard: Int64
    private var nextHeartbeat: Int64
    private var backoff: Int
    /// CURVE in use: a silent coordinator may be one that refuses our key.
    private let curve: Bool

    public init(settings: Settings, curve: Bool, now: Int64) {
        self.settings = settings
        self.curve = curve
        lastHeard = now
        nextHeartbeat = now + Int64(settings.heartbeatMs)
        backoff = settings.reconnectMs
    }

    /// Milliseconds until the next heartbeat is due (how long a poll may wait).
    public func wait(now: Int64) -> Int { max(0, min(Int(nextHeartbeat - now), 250)) }

    /// A message from the coordinator.
    public mutating func fromCoordinator(_ body: Prune_V1_Envelope.OneOf_Body?, now: Int64) -> [Directive] {
        lastHeard = now
        backoff = settings.reconnectMs
        switch body {
        case .welcome(let w):
            // The coordinator's liveness settings rule (chunking goes to the compute thread).
            if w.heartbeatMs > 0 { settings.heartbeatMs = Int(w.heartbeatMs) }
            if w.liveness > 0 { settings.liveness = Int(w.liveness) }
            return [.log("welcomed into job \(w.jobID)"), .forwardToCompute]
        case .reject(let r):
            return [.log("rejected by the coordinator: \(r.reason)"), .warn("rejected by the coordinator: \(r.reason)"), .exit(code: 2)]
        case .assign(let a):
            running.append(Lease(task: a.taskID, attempt: a.attempt))
            return [.forwardToCompute]
        case .cancel(let c):
            // Revoked: stop naming it in heartbeats, and stop computing it.
            let revoked = running.filter { $0.task == c.taskID && (c.attempt == 0 || $0.attempt == c.attempt) }
            running.removeAll { revoked.contains($0) }
            return revoked.isEmpty ? [] : [.cancelAttempt(task: c.taskID, attempt: c.attempt),
                                           .log("coordinator cancelled task \(c.taskID) attempt \(c.attempt)")]
        case .chunk, .help, .peer:
            // Chunks, and a training span's group (Help, the members' shares): the compute
            // thread's; a Help is no lease (nothing is answered for it).
            return [.forwardToCompute]
        case .shutdown(let s):
            return [.log("coordinator says shut down: \(s.reason)"), .exit(code: 0)]
        case .heartbeat, .ack:
            return []
        default:
            return [.log("dropped an unexpected message from the coordinator")]
        }
    }

    /// A message from the compute thread: a Result or Fail goes out only for an attempt
    /// leased on this connection; chunk requests always go.
    public mutating func fromCompute(_ body: Prune_V1_Envelope.OneOf_Body?) -> [Directive] {
        let answered: Lease?
        switch body {
        case .result(let r): answered = Lease(task: r.taskID, attempt: r.attempt)
        case .fail(let f): answered = Lease(task: f.taskID, attempt: f.attempt)
        default: answered = nil
        }
        guard let answered else { return [.forwardToCoordinator] }
        guard running.contains(answered) else {
            return [.log("dropped the answer to task \(answered.task) attempt \(answered.attempt): not leased on this connection")]
        }
        running.removeAll { $0 == answered }
        return [.forwardToCoordinator]
    }

    /// Time passes: heartbeat when due; after `deadAfterMs` of silence, give up on the
    /// connection (Paranoid Pirate), cancel what runs, and reconnect after the backoff,
    /// which doubles up to `reconnectMaxMs` until the coordinator answers again.
    public mutating func tick(now: Int64) -> [Directive] {
        var out: [Directive] = []
        if now >= nextHeartbeat {
            var hb = Prune_V1_Heartbeat()
            hb.taskIds = running.map(\.task)
            out.append(.send(.with(.heartbeat(hb))))
            nextHeartbeat = now + Int64(settings.heartbeatMs)
        }
        guard now - lastHeard > Int64(settings.deadAfterMs) else { return out }
        let hint = curve ? " (if this repeats: is this worker's public key on the coordinator's allow-list, and the server key right?)" : ""
        out.append(.log("coordinator silent for \(now - lastHeard) ms; reconnecting in \(backoff) ms\(hint)"))
        out += running.map { .cancelAttempt(task: $0.task, attempt: $0.attempt) }
        running = []
        out.append(.reconnect(afterMs: backoff))
        backoff = min(backoff * 2, settings.reconnectMaxMs)
        return out
    }

    /// The new connection is up and said Hello.
    public mutating func reconnected(now: Int64) {
        lastHeard = now
    }

    /// SIGTERM or SIGINT: tell the coordinator which tasks it will not get, and leave.
    public func stop() -> [Directive] {
        var bye = Prune_V1_Goodbye()
        bye.reason = "SIGTERM"
        bye.taskIds = running.map(\.task)
        return [.send(.with(.goodbye(bye))), .log("stopping on signal; told the coordinator"), .exit(code: 0)]
    }
}
