import Engine
import Foundation
import Protocol
import Pruning
import Tensors
import ZeroMQ
#if canImport(Glibc)
import Glibc
#endif

/// Set by SIGTERM/SIGINT while a coordinator runs.
nonisolated(unsafe) private var coordinatorStopRequested: sig_atomic_t = 0

/// CURVE settings of a coordinator on tcp://: its key pair and the worker public keys
/// allowed in (checked by a ZAP handler).
public struct CurveServerConfig: Sendable {
    public var publicKey: String
    public var secretKey: String
    public var allowedClients: Set<String>

    public init(publicKey: String, secretKey: String, allowedClients: Set<String>) {
        self.publicKey = publicKey
        self.secretKey = secretKey
        self.allowedClients = allowedClients
    }
}

/// The coordinator's I/O: one ROUTER socket, one loop. It decodes messages into events
/// for `CoordinatorCore`, carries out the directives, makes results durable (artifact
/// fsync'd, ledger committed) before acknowledging them, and serves checkpoint chunks.
public final class CoordinatorShell {
    public let workload: ClusterWorkload
    private var core: CoordinatorCore
    private let context: ZMQContext
    private let router: ZMQSocket
    private var zap: ZAPHandler?
    private let settings: Settings
    private let log: (String) -> Void
    private var identities: [String: [UInt8]] = [:]
    private var names: [String: String] = [:]
    private let progress: ProgressReporter
    private var files: [String: FileHandle] = [:]
    /// The failure reason when a signal stopped the coordinator.
    public static let stoppedBySignal = "stopped by signal"
    /// Called every loop turn (the embedded launcher restarts dead workers here).
    public var onTurn: (() -> Void)?
    /// Messages dropped as malformed, for tests and status.
    public private(set) var dropped = 0
    /// Bytes received and sent on the ROUTER (routing-id frames not counted).
    public private(set) var wireBytesIn = 0
    public private(set) var wireBytesOut = 0
    private var knownTasks: Set<String>

    public init(workload: ClusterWorkload, context: ZMQContext, endpoints: [String], curve: CurveServerConfig?,
                quiet: Bool, log: @escaping (String) -> Void) throws {
        self.workload = workload
        self.context = context
        settings = workload.settings
        self.log = log
        knownTasks = Set(workload.taskIDs)
        core = CoordinatorCore(tasks: workload.taskIDs.map { CoordinatorCore.TaskDefinition(id: $0, dependencies: workload.dependencies(of: $0)) },
                               done: workload.doneTaskIDs,
                               attempts: Dictionary(try workload.ledger.tasks().map { ($0.id, $0.attempts) }, uniquingKeysWith: max),
                               settings: workload.settings)
        progress = ProgressReporter(label: "prune", total: workload.taskIDs.count, done: workload.doneTaskIDs.count, quiet: quiet)
        router = try ZMQSocket(context, .router)
        try router.setLinger(ms: 500)
        try router.setMaxMessageSize(settings.maxFrameBytes)
        try router.setReceiveHighWaterMark(10_000)
        if let curve {
            let allowed = curve.allowedClients
            let handler = ZAPHandler(context: context) { mechanism, _, _, credentials in
                guard let key = ZAP.curvePublicKey(mechanism: mechanism, credentials: credentials), allowed.contains(key) else { return nil }
                return key
            }
            try handler.start()
            zap = handler
            try router.setZapDomain("prune")
            try router.setCurveServer(secretKey: curve.secretKey)
        }
        for endpoint in endpoints { try router.bind(endpoint) }
        for f in workload.modelFiles { files[f.sha256] = FileHandle(forReadingAtPath: f.path) }
    }

    deinit {
        router.close()
        zap?.stop()
    }

    /// The bound endpoints' actual addresses (tcp://127.0.0.1:* resolved).
    public var boundEndpoint: String { router.lastEndpoint }

    /// Runs until every task is done, the job fails, or SIGTERM/SIGINT stops it (then
    /// the outcome is `.failed("stopped by signal")` and the ledger says "stopped").
    public func run() throws -> CoordinatorCore.Outcome {
        coordinatorStopRequested = 0
        signal(SIGTERM) { _ in coordinatorStopRequested = 1 }
        signal(SIGINT) { _ in coordinatorStopRequested = 1 }
        defer {
            signal(SIGTERM, SIG_DFL)
            signal(SIGINT, SIG_DFL)
        }
        try execute(core.tick(now: now()))
        while core.outcome == nil {
            if coordinatorStopRequested != 0 {
                log("stopping on signal; the job can continue with prune resume")
                try workload.ledger.setJobValue("state", "stopped")
                for worker in core.workerIDs {
                    var s = Prune_V1_Shutdown()
                    s.reason = "coordinator stopped"
                    send(worker, .with(.shutdown(s)))
                }
                try workload.ledger.flush()
                try workload.ledger.markWorkersFinished(at: Date().timeIntervalSince1970)
                return .failed(CoordinatorShell.stoppedBySignal)
            }
            var poller = ZMQPoller()
            _ = poller.add(router)
            let ready = try poller.poll(timeoutMs: min(100, settings.heartbeatMs))
            if ready[0] {
                var handled = 0
                while handled < 1000, let frames = try router.receiveMultipart(dontWait: true) {
                    handled += 1
                    try handle(frames)
                    if core.outcome != nil { break }
                }
            }
            if core.outcome == nil { try execute(core.tick(now: now())) }
            onTurn?()
        }
        try workload.ledger.flush()
        try workload.ledger.markWorkersFinished(at: Date().timeIntervalSince1970)
        try workload.ledger.setJobValue("wire_bytes_in", String(wireBytesIn))
        try workload.ledger.setJobValue("wire_bytes_out", String(wireBytesOut))
        // Tell everyone the job is over.
        for worker in core.workerIDs {
            var s = Prune_V1_Shutdown()
            s.reason = core.outcome == .completed ? "job complete" : "job failed"
            send(worker, .with(.shutdown(s)))
        }
        return core.outcome!
    }

    /// A local worker process is known to have died (the launcher saw it exit): its
    /// tasks go back to the queue now instead of after the heartbeat timeout.
    public func workerProcessExited(named name: String) {
        for (id, n) in names where n == name && core.isKnown(worker: id) {
            try? execute(core.goodbye(worker: id, reason: "process exited", now: now()))
        }
    }

    // MARK: Incoming

    private func handle(_ frames: [ZMQFrame]) throws {
        guard frames.count >= 2 else { dropped += 1; return }
        let identity = frames[0].bytes
        let worker = identity.map { String(format: "%02x", $0) }.joined()
        let body = frames.dropFirst().map(\.bytes)
        wireBytesIn += body.reduce(0) { $0 + $1.count }
        let message: WireMessage
        do {
            message = try WireMessage.decode(Array(body), settings: settings)
        } catch {
            dropped += 1
            log("dropped a malformed message from \(worker): \(error)")
            return
        }
        let t = now()
        if case .hello(let h) = message.envelope.body {
            identities[worker] = identity
            names[worker] = h.workerName
            let directives = core.hello(worker: worker, name: h.workerName, protocolVersion: h.protocolVersion, now: t)
            if directives.contains(.welcome(worker: worker)) {
                try workload.ledger.workerJoined(id: worker, name: h.workerName, host: h.host, at: Date().timeIntervalSince1970)
                log("worker \(h.workerName) joined (\(h.host), \(h.cores) cores)")
            }
            try execute(directives)
            return
        }
        guard core.isKnown(worker: worker) else {
            // Not admitted (never said Hello, was rejected, or was declared dead).
            if message.envelope.protocolVersion != Settings.protocolVersion {
                var r = Prune_V1_Reject()
                r.reason = "protocol version \(message.envelope.protocolVersion) is not supported; this coordinator speaks version \(Settings.protocolVersion)"
                r.coordinatorProtocolVersion = Settings.protocolVersion
                identities[worker] = identity
                send(worker, .with(.reject(r)))
            }
            dropped += 1
            return
        }
        guard message.envelope.protocolVersion == Settings.protocolVersion else { dropped += 1; return }
        switch message.envelope.body {
        case .heartbeat(let hb):
            try execute(core.heartbeat(worker: worker, running: hb.taskIds, now: t))
        case .result(let r):
            try handleResult(r, message: message, from: worker)
        case .fail(let f):
            // Only the current attempt counts: a late Fail for a task leased elsewhere or
            // already done must not touch its ledger row.
            if case .leased(let holder, let attempt, _)? = core.state(of: f.taskID), holder == worker, attempt == Int(f.attempt) {
                try workload.ledger.markAttemptFailed(task: f.taskID, attempts: Int(f.attempt), cause: f.cause, at: Date().timeIntervalSince1970)
            }
            try execute(core.failed(task: f.taskID, by: worker, attempt: Int(f.attempt), cause: f.cause, retryable: f.retryable, now: t))
        case .goodbye(let g):
            try execute(core.goodbye(worker: worker, reason: g.reason, now: t))
        case .chunkRequest(let c):
            core.heard(from: worker, now: t)
            serveChunk(c, to: worker)
        default:
            dropped += 1
            log("dropped unexpected \(message.kind) from \(worker)")
        }
    }

    private func handleResult(_ r: Prune_V1_Result, message: WireMessage, from worker: String) throws {
        let t = now()
        guard knownTasks.contains(r.taskID) else {
            dropped += 1
            log("dropped a result for unknown task \(r.taskID) from \(worker)")
            return
        }
        guard core.wantsResult(task: r.taskID) else {
            try execute(core.completed(task: r.taskID, by: worker, attempt: Int(r.attempt), now: t))
            return
        }
        // Payloads the worker stored in the artifact directory itself are read back and
        // verified here; a missing or corrupt one fails the attempt like a bad result.
        var payloads: [ResultPayload] = []
        var frames = message.payloads.makeIterator()
        for info in message.envelope.payloads {
            if info.stored {
                guard let bytes = workload.storedArtifact(sha256: info.sha256, size: info.size) else {
                    return try refuseResult(r, from: worker, cause: "stored payload '\(info.name)' (\(info.sha256.prefix(12))…) is missing or corrupt in the artifact directory", now: t)
                }
                payloads.append(ResultPayload(bytes: bytes, sha256: info.sha256))
            } else {
                payloads.append(ResultPayload(bytes: frames.next()!, sha256: info.sha256))
            }
        }
        // Durable before acknowledged: the workload writes its artifact and ledger row.
        if let cause = try workload.persist(task: r.taskID, worker: worker, result: r, payloads: payloads) {
            return try refuseResult(r, from: worker, cause: cause, now: t)
        }
        progress.step(r.taskID)
        try execute(core.completed(task: r.taskID, by: worker, attempt: Int(r.attempt), now: t))
    }

    /// An unusable result counts as a failed attempt (retried elsewhere, up to the limit),
    /// logged and recorded like a worker's own Fail.
    private func refuseResult(_ r: Prune_V1_Result, from worker: String, cause: String, now t: Int64) throws {
        log("refused the result of \(r.taskID) from \(names[worker] ?? worker): \(cause)")
        if case .leased(let holder, let attempt, _)? = core.state(of: r.taskID), holder == worker, attempt == Int(r.attempt) {
            try workload.ledger.markAttemptFailed(task: r.taskID, attempts: Int(r.attempt), cause: cause, at: Date().timeIntervalSince1970)
        }
        try execute(core.failed(task: r.taskID, by: worker, attempt: Int(r.attempt), cause: cause, retryable: true, now: t))
    }

    /// An open handle on a file workers may pull (checkpoint files stay open; an
    /// artifact is opened for its request: there are many, each read once or twice).
    private func servable(_ sha256: String) -> (FileHandle, UInt64)? {
        if let handle = files[sha256], let size = workload.modelFiles.first(where: { $0.sha256 == sha256 })?.size { return (handle, size) }
        guard let (path, size) = workload.servableFile(sha256), let handle = FileHandle(forReadingAtPath: path) else { return nil }
        return (handle, size)
    }

    private func serveChunk(_ c: Prune_V1_ChunkRequest, to worker: String) {
        var reply = Prune_V1_Chunk()
        reply.fileSha256 = c.fileSha256
        reply.offset = c.offset
        reply.requestID = c.requestID
        var payload: [UInt8] = []
        if let (handle, size) = servable(c.fileSha256), c.length <= UInt64(settings.chunkBytes), c.offset <= size, c.length <= size - c.offset {
            do {
                try handle.seek(toOffset: c.offset)
                payload = [UInt8](try handle.read(upToCount: Int(c.length)) ?? Data())
                if payload.count != Int(c.length) { reply.error = "short read" ; payload = [] }
            } catch {
                reply.error = "read failed: \(error)"
            }
        } else {
            reply.error = "no such file or range"
        }
        send(worker, .with(.chunk(reply)), payloads: reply.error.isEmpty ? [("chunk", payload)] : [])
    }

    // MARK: Outgoing

    private func execute(_ directives: [CoordinatorCore.Directive]) throws {
        let wall = Date().timeIntervalSince1970
        for d in directives {
            switch d {
            case .welcome(let w):
                var welcome = Prune_V1_Welcome()
                welcome.jobID = workload.jobID
                welcome.heartbeatMs = UInt32(settings.heartbeatMs)
                welcome.liveness = UInt32(settings.liveness)
                welcome.chunkSize = UInt64(settings.chunkBytes)
                welcome.chunkCredit = UInt32(settings.chunkCredit)
                welcome.modelFiles = workload.modelFiles
                welcome.artifactRoot = workload.artifactRoot
                welcome.artifactToken = workload.artifactToken
                welcome.payloadCodings = [NMMaskCoding.name, MaskCoding.name]
                send(w, .with(.welcome(welcome)))
            case .reject(let w, let reason):
                var r = Prune_V1_Reject()
                r.reason = reason
                r.coordinatorProtocolVersion = Settings.protocolVersion
                log("rejected \(names[w] ?? w): \(reason)")
                send(w, .with(.reject(r)))
            case .assign(let w, let taskID, let attempt):
                let work: Prune_V1_Assign.OneOf_Work
                do {
                    guard let w = try workload.work(for: taskID) else { continue }
                    work = w
                } catch {
                    // The task's inputs are gone (e.g. an artifact deleted by hand): no
                    // worker can run it, so the job fails naming it.
                    try execute(core.failed(task: taskID, by: w, attempt: attempt, cause: "\(error)", retryable: false, now: now()))
                    continue
                }
                var a = Prune_V1_Assign()
                a.taskID = taskID
                a.attempt = UInt32(attempt)
                a.work = work
                workload.ledger.log(.init(time: wall, kind: "assign", task: taskID, worker: w, detail: "attempt \(attempt)"))
                send(w, .with(.assign(a)))
            case .heartbeat(let w):
                send(w, .with(.heartbeat(Prune_V1_Heartbeat())))
            case .ack(let w, let task, let attempt, let accepted):
                var a = Prune_V1_Ack()
                a.taskID = task
                a.attempt = UInt32(attempt)
                a.accepted = accepted
                send(w, .with(.ack(a)))
            case .cancel(let w, let task, let attempt):
                var c = Prune_V1_Cancel()
                c.taskID = task
                c.attempt = UInt32(attempt)
                send(w, .with(.cancel(c)))
            case .shutdown(let w, let reason):
                var s = Prune_V1_Shutdown()
                s.reason = reason
                send(w, .with(.shutdown(s)))
            case .workerLost(let w, let requeued, let reason):
                log("worker \(names[w] ?? w) lost (\(reason)); requeued \(requeued.count) task(s)")
                try workload.ledger.workerLeft(id: w, reason: reason, at: wall)
                for task in requeued {
                    workload.ledger.log(.init(time: wall, kind: "requeue", task: task, worker: w, detail: reason))
                }
                identities[w] = nil
            case .requeued(let task, let reason):
                workload.ledger.log(.init(time: wall, kind: "requeue", task: task, worker: nil, detail: reason))
            case .jobCompleted:
                workload.ledger.log(.init(time: wall, kind: "complete", task: nil, worker: nil, detail: ""))
            case .jobFailed(let reason):
                log("job failed: \(reason)")
                workload.ledger.log(.init(time: wall, kind: "failed", task: nil, worker: nil, detail: reason))
                try workload.ledger.setJobValue("state", "failed")
            }
        }
    }

    private func send(_ worker: String, _ envelope: Prune_V1_Envelope, payloads: [(name: String, bytes: [UInt8])] = []) {
        guard let identity = identities[worker] else { return }
        do {
            let frames = try WireMessage.frames(envelope, payloads: payloads)
            try router.send([identity] + frames, dontWait: true)
            wireBytesOut += frames.reduce(0) { $0 + $1.count }
            core.sent(to: worker, now: now())
        } catch {
            log("could not send to \(names[worker] ?? worker): \(error)")
        }
    }
}
