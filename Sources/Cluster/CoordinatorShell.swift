import Engine
import Foundation
import Logging
import Protocol
import Pruning
import Synchronization
import Tensors
import ZeroMQ
#if canImport(Glibc)
import Glibc
#endif


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
    private let logger: Logger
    private var identities: [String: [UInt8]] = [:]
    private var names: [String: String] = [:]
    private var hosts: [String: String] = [:]
    private var blasCores: [String: String] = [:]
    /// Each worker's direct link for its span groups, as the others reach it (`peerLink`).
    private var links: [String: Prune_V1_PeerLink] = [:]
    private let progress: ProgressReporter
    private var files: [String: FileHandle] = [:]
    /// The work of attempts leased with helpers, for their Help messages (which go out in
    /// the same pass as the Assign), by `CoordinatorCore.key`.
    private var groupWork: [String: Prune_V1_TrainTask] = [:]
    /// What the members of each live span group may still send through this coordinator.
    private var groupBudgets: [String: GroupBudget] = [:]
    /// The failure reason when a signal stopped the coordinator.
    public static let stoppedBySignal = "stopped by signal"
    /// The signal that stopped the coordinator (SIGTERM or SIGINT), 0 when none did.
    public private(set) var stoppedBy: Int32 = 0
    /// Called every loop turn (the embedded launcher restarts dead workers here).
    public var onTurn: (() -> Void)?
    /// Messages dropped as malformed, for tests and status.
    public private(set) var dropped = 0
    /// Bytes received and sent on the ROUTER (routing-id frames not counted).
    public private(set) var wireBytesIn = 0
    public private(set) var wireBytesOut = 0
    /// The coordinator's own computations of disputed tasks: one at a time, off the loop.
    private let recomputeQueue = DispatchQueue(label: "prune.recompute")
    private let recomputed = Inbox<(task: String, result: Result<[ResultPayload], Error>)>()
    /// Results whose stored payloads hold at least `offLoopBytes` are read back and hashed
    /// on this queue, one at a time, so a large model's gradients and training state (up
    /// to gigabytes) do not hold up heartbeats; the loop then validates and commits them.
    private let verifyQueue = DispatchQueue(label: "prune.verify")
    private let verified = Inbox<ReadResult>()
    static let offLoopBytes = UInt64(ProcessInfo.processInfo.environment["PRUNE_TEST_OFF_LOOP_BYTES"].flatMap(Int.init).flatMap { $0 >= 0 ? $0 : nil } ?? 16 << 20)

    /// A result whose payloads were read (and the stored ones verified) off the loop.
    private struct ReadResult: Sendable {
        let task: String, worker: String, attempt: Int, seconds: Double
        /// The payloads in order, or why the result is unusable.
        let payloads: Result<[ResultPayload], ResultUnusable>
    }
    private struct ResultUnusable: Error { let cause: String }

    public init(workload: ClusterWorkload, context: ZMQContext, endpoints: [String], curve: CurveServerConfig?,
                quiet: Bool, logger: Logger) throws {
        self.workload = workload
        self.context = context
        settings = workload.settings
        self.logger = logger
        core = CoordinatorCore(tasks: workload.taskIDs.map {
                                   CoordinatorCore.TaskDefinition(id: $0, dependencies: workload.dependencies(of: $0), verify: workload.verifies(task: $0),
                                                                   affinity: workload.affinity(of: $0), helpers: workload.helpers(of: $0))
                               },
                               done: workload.doneTasks,
                               attempts: Dictionary(try workload.ledger.tasks().map { ($0.id, $0.attempts) }, uniquingKeysWith: max),
                               quarantined: Dictionary(try workload.ledger.quarantined().map { ($0.principal, $0.reason) }, uniquingKeysWith: { a, _ in a }),
                               settings: workload.settings)
        progress = ProgressReporter(label: "prune", total: workload.taskIDs.count, done: workload.doneTaskIDs.count, quiet: quiet)
        router = try ZMQSocket(context, .router)
        try router.setLinger(ms: 500)
        try router.setMaxMessageSize(settings.maxFrameBytes)
        try router.setReceiveHighWaterMark(10_000)
        if let curve {
            let allowed = curve.allowedClients
            let handler = ZAPHandler(context: context) { [logger] mechanism, _, address, credentials in
                guard let key = ZAP.curvePublicKey(mechanism: mechanism, credentials: credentials), allowed.contains(key) else {
                    logger.warning("refused a connection from \(address): its CURVE key is not on the allow-list")
                    return nil
                }
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
        let previous = StopSignal.install()
        defer { StopSignal.restore(previous) }
        if core.outcome == nil { try workload.ledger.setJobValue("state", "running") }
        try execute(core.tick(now: now()))
        while core.outcome == nil {
            if StopSignal.received != 0 {
                stoppedBy = StopSignal.received
                logger.info("stopping on signal; the job can continue with prune resume")
                try workload.ledger.setJobValue("state", "stopped")
                try execute(core.shutdownAll(reason: "coordinator stopped"))
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
            if core.outcome == nil { try collectRecomputations() }
            if core.outcome == nil { try collectVerified() }
            if core.outcome == nil { try execute(core.tick(now: now())) }
            onTurn?()
        }
        try workload.ledger.flush()
        try workload.ledger.markWorkersFinished(at: Date().timeIntervalSince1970)
        try workload.ledger.setJobValue("wire_bytes_in", String(wireBytesIn))
        try workload.ledger.setJobValue("wire_bytes_out", String(wireBytesOut))
        // Tell everyone the job is over.
        try execute(core.shutdownAll(reason: core.outcome == .completed ? "job complete" : "job failed"))
        return core.outcome!
    }

    /// Ends the job as failed (the launcher can start no more workers).
    public func abort(_ reason: String) {
        try? execute(core.abort(reason))
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
        if try relayPeer(frames, from: worker) { return }
        let body = frames.dropFirst().map(\.bytes)
        wireBytesIn += body.reduce(0) { $0 + $1.count }
        let message: WireMessage
        do {
            message = try WireMessage.decode(Array(body), settings: settings)
        } catch {
            dropped += 1
            logger.notice("dropped a malformed message from \(worker): \(error)")
            return
        }
        let t = now()
        if case .hello(let h) = message.envelope.body {
            identities[worker] = identity
            names[worker] = h.workerName
            hosts[worker] = h.host
            blasCores[worker] = h.blasCore
            // The CURVE key the ZAP handler authenticated stands for the worker; without
            // CURVE (ipc://, --insecure loopback) its name does.
            let key = frames[1].metadata("User-Id").flatMap { $0.isEmpty ? nil : $0 }
            try execute(core.hello(worker: worker, name: h.workerName, principal: key, protocolVersion: h.protocolVersion, kernel: h.blasCore, now: t))
            links[worker] = core.isKnown(worker: worker) ? Self.peerLink(h.link, peerAddress: frames[1].metadata("Peer-Address"), key: key) : nil
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
            try execute(core.failed(task: f.taskID, by: worker, attempt: Int(f.attempt), cause: f.cause, retryable: f.retryable, now: t))
        case .goodbye(let g):
            try execute(core.goodbye(worker: worker, reason: g.reason, now: t))
        case .chunkRequest(let c):
            core.heard(from: worker, now: t)
            serveChunk(c, to: worker)
        default:
            dropped += 1
            logger.notice("dropped unexpected \(message.kind) from \(worker)")
        }
    }

    /// A Peer between the members of a training span's group goes on as it came, with
    /// the sender's slot stamped on (its payload is the receivers' to check: they verify
    /// sizes, and the leader recomputes a share to check its content). Returns false when
    /// `frames` (after the routing id) are no Peer. The payload frames are forwarded as
    /// they came, by reference (libzmq counts them), not copied.
    private func relayPeer(_ frames: [ZMQFrame], from worker: String) throws -> Bool {
        guard frames[1].count <= settings.maxEnvelopeBytes,
              let envelope = try? frames[1].withUnsafeBytes({ try Prune_V1_Envelope(serializedBytes: Array($0)) }),
              case .peer(var peer) = envelope.body else { return false }
        wireBytesIn += frames.dropFirst().reduce(0) { $0 + $1.count }
        let payloads = peer.kind == "share" ? 1 : 0
        guard core.isKnown(worker: worker), envelope.protocolVersion == Settings.protocolVersion, frames.count == 2 + payloads,
              envelope.payloads.count == payloads, !envelope.payloads.contains(where: \.stored) else {
            dropped += 1
            return true
        }
        let t = now()
        let key = CoordinatorCore.key(peer.taskID, Int(peer.attempt))
        switch peer.kind {
        case "join", "share":
            guard let route = core.peerRoute(from: worker, task: peer.taskID, attempt: Int(peer.attempt), now: t) else {
                groupBudgets[key] = nil
                dropped += 1
                return true
            }
            // Within the group's budget: one join per member, shares of one size and no
            // more than a span's steps can use, so no member can flood the others.
            let size = payloads == 1 ? frames[2].count : 0
            guard payloads == 0 || Int(clamping: envelope.payloads[0].size) == size,
                  groupBudgets[key]?.admit(peer.kind, slot: route.slot, bytes: size) ?? false else {
                dropped += 1
                return true
            }
            peer.slot = UInt32(route.slot)
            var stamped = envelope
            stamped.body = .peer(peer)
            let relayed = [try ZMQFrame(bytes: try stamped.serializedBytes())] + frames.dropFirst(2)
            for member in route.to {
                guard let identity = identities[member] else { continue }
                if (try? router.send([try ZMQFrame(bytes: identity)] + relayed, dontWait: true)) == true {
                    wireBytesOut += relayed.reduce(0) { $0 + $1.count }
                    core.sent(to: member, now: t)
                }
            }
        case "distrust":
            try execute(core.distrust(from: worker, task: peer.taskID, attempt: Int(peer.attempt), slot: Int(peer.slot), now: t))
        default:
            dropped += 1
        }
        return true
    }

    /// A worker's link as the other members reach it: `announced` (Hello.link) at the
    /// address its connection came from (only the port of a tcp:// link is the worker's
    /// to say, so a worker cannot point the others at another host), and its CURVE key;
    /// nil when it announced none or something that is no tcp:// or ipc:// endpoint.
    static func peerLink(_ announced: String, peerAddress: String?, key: String?) -> Prune_V1_PeerLink? {
        guard !announced.isEmpty, announced.utf8.count <= 256 else { return nil }
        var link = Prune_V1_PeerLink()
        link.curveKey = key ?? ""
        if announced.hasPrefix("ipc://") {
            link.endpoint = announced
            return link
        }
        guard announced.hasPrefix("tcp://"), let colon = announced.lastIndex(of: ":"), colon > announced.index(announced.startIndex, offsetBy: 5),
              let port = UInt16(announced[announced.index(after: colon)...]), port > 0 else { return nil }
        guard let address = peerAddress, !address.isEmpty, address.allSatisfy({ $0.isHexDigit || $0 == "." || $0 == ":" }) else { return nil }
        link.endpoint = "tcp://\(address.contains(":") ? "[\(address)]" : address):\(port)"
        return link
    }

    /// The links of `task`'s attempt's group by slot (an empty one for a member without).
    private func groupLinks(_ task: String, attempt: Int) -> [Prune_V1_PeerLink] {
        core.groupMembers(task, attempt: attempt).map { $0.flatMap { links[$0] } ?? Prune_V1_PeerLink() }
    }

    private func handleResult(_ r: Prune_V1_Result, message: WireMessage, from worker: String) throws {
        let t = now()
        let attempt = Int(r.attempt)
        if case .refuse(let directives) = core.resultArrived(task: r.taskID, by: worker, attempt: attempt, now: t) {
            return try execute(directives)
        }
        // Payloads the worker stored in the artifact directory itself are read back and
        // verified; a missing or corrupt one makes the result unusable. Large ones off the
        // loop (`collectVerified` takes it from there).
        let infos = message.envelope.payloads, frames = message.payloads, read = workload.storedArtifacts
        let readAll: @Sendable () -> Result<[ResultPayload], ResultUnusable> = {
            var payloads: [ResultPayload] = []
            var inline = frames.makeIterator()
            for info in infos {
                if info.stored {
                    guard let bytes = read(info.sha256, info.size) else {
                        return .failure(ResultUnusable(cause: "stored payload '\(info.name)' (\(info.sha256.prefix(12))…) is missing or corrupt in the artifact directory"))
                    }
                    payloads.append(ResultPayload(bytes: bytes, sha256: info.sha256))
                } else {
                    payloads.append(ResultPayload(bytes: inline.next()!, sha256: info.sha256))
                }
            }
            return .success(payloads)
        }
        let storedBytes = infos.reduce(UInt64(0)) { $0 + ($1.stored ? $1.size : 0) }
        if storedBytes > 0, storedBytes >= CoordinatorShell.offLoopBytes {
            let task = r.taskID, seconds = r.seconds
            core.holdLease(task: task, by: worker, attempt: attempt)
            verifyQueue.async { [verified] in
                verified.post(ReadResult(task: task, worker: worker, attempt: attempt, seconds: seconds, payloads: readAll()))
            }
            return
        }
        try accept(ReadResult(task: r.taskID, worker: worker, attempt: attempt, seconds: r.seconds, payloads: readAll()), now: t)
    }

    /// Validates and stores a read result, then tells the core (which checks that the
    /// attempt still holds its lease: a worker may have been dropped meanwhile).
    private func accept(_ result: ReadResult, now t: Int64) throws {
        // Its worker may have been lost while it was read: then it is neither checked nor
        // stored (its artifacts may be gone, or go), and not held against the worker.
        guard core.holdsLease(task: result.task, by: result.worker, attempt: result.attempt) else {
            return try execute(core.resultStale(task: result.task, by: result.worker, attempt: result.attempt, now: t))
        }
        switch result.payloads {
        case .failure(let unusable):
            try execute(core.resultInvalid(task: result.task, by: result.worker, attempt: result.attempt, cause: unusable.cause, now: t))
        case .success(let payloads):
            switch try workload.store(task: result.task, payloads: payloads) {
            case .invalid(let cause):
                try execute(core.resultInvalid(task: result.task, by: result.worker, attempt: result.attempt, cause: cause, now: t))
            case .stored(let digest):
                try execute(core.resultStored(task: result.task, by: result.worker, attempt: result.attempt, digest: digest, seconds: result.seconds, now: t))
            }
        }
    }

    /// Hands the results read off the loop to the core, in the order they were read.
    private func collectVerified() throws {
        for result in verified.drain() where core.outcome == nil { try accept(result, now: now()) }
    }

    /// Starts the coordinator's own computation of a task, off the loop.
    private func startRecomputation(_ task: String) throws {
        let compute: @Sendable () throws -> [ResultPayload]
        do {
            compute = try workload.recomputation(of: task)
        } catch {
            return try execute(core.recomputeFailed(task: task, cause: "\(error)"))
        }
        workload.ledger.log(.init(time: Date().timeIntervalSince1970, kind: "recompute", task: task, worker: nil, detail: "the coordinator computes it"))
        recomputeQueue.async { [recomputed] in
            let result = Result { try compute() }
            recomputed.post((task, result))
        }
    }

    /// Hands finished computations of the coordinator to the core.
    private func collectRecomputations() throws {
        let finished = recomputed.drain()
        for (task, result) in finished {
            switch result {
            case .success(let payloads):
                switch try workload.store(task: task, payloads: payloads) {
                case .stored(let digest): try execute(core.recomputed(task: task, digest: digest, now: now()))
                case .invalid(let cause): try execute(core.recomputeFailed(task: task, cause: cause))
                }
            case .failure(let error):
                try execute(core.recomputeFailed(task: task, cause: "\(error)"))
            }
        }
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
                let name = names[w] ?? w, host = hosts[w] ?? ""
                try workload.ledger.workerJoined(id: w, name: name, host: host, principal: core.principal(of: w) ?? "name:\(name)", at: wall)
                let core = blasCores[w] ?? ""
                logger.info("worker \(name) joined (\(host)\(core.isEmpty ? "" : ", OpenBLAS \(core)"))")
                if workload.verifiesBLASResults, !core.isEmpty, core != BLASThreads.coreName {
                    logger.warning("""
                        worker \(name) computes with OpenBLAS kernel \(core), this coordinator with \(BLASThreads.coreName): \
                        verification may take its results for lies; set OPENBLAS_CORETYPE=\(BLASThreads.coreName) on every host (docs/cluster.md)
                        """)
                }
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
                logger.info("rejected \(names[w] ?? w): \(reason)")
                send(w, .with(.reject(r)))
            case .assign(let w, let taskID, let attempt):
                let work: Prune_V1_Assign.OneOf_Work
                do {
                    guard let w = try workload.work(for: taskID) else { continue }
                    work = w
                } catch let missing as MissingOutput {
                    // An input is gone (deleted, or collected): its producer runs again first.
                    logger.info("\(taskID) waits: \(missing.description)")
                    try execute(core.inputMissing(task: taskID, by: w, attempt: attempt, dependency: missing.task, now: now()))
                    continue
                } catch {
                    // The task's inputs are unusable: no worker can run it, so the job fails
                    // naming it.
                    try execute(core.abort("task \(taskID) cannot start: \(error)"))
                    continue
                }
                var a = Prune_V1_Assign()
                a.taskID = taskID
                a.attempt = UInt32(attempt)
                a.work = work
                let slots = core.slots(of: taskID, attempt: attempt)
                if slots > 1, case .train(let train) = work {
                    a.slots = UInt32(slots)
                    a.links = groupLinks(taskID, attempt: attempt)
                    let key = CoordinatorCore.key(taskID, attempt)
                    groupWork[key] = train
                    // Groups whose lease ended are over: their budgets go.
                    groupBudgets = groupBudgets.filter { !core.helpers(of: $0.value.task).isEmpty }
                    groupBudgets[key] = GroupBudget(task: taskID, steps: train.span.count, shards: Int(train.shards))
                }
                workload.ledger.log(.init(time: wall, kind: "assign", task: taskID, worker: w, detail: "attempt \(attempt)"))
                send(w, .with(.assign(a)))
            case .heartbeat(let w):
                send(w, .with(.heartbeat(Prune_V1_Heartbeat())))
            case .help(let w, let task, let attempt, let slot, let slots):
                // The leader's very work (its Assign just went out, in the same pass).
                let key = CoordinatorCore.key(task, attempt)
                guard let train = groupWork[key] else { continue }
                defer { if slot == slots - 1 { groupWork[key] = nil } }
                var h = Prune_V1_Help()
                h.taskID = task
                h.attempt = UInt32(attempt)
                h.slot = UInt32(slot)
                h.slots = UInt32(slots)
                h.train = train
                h.links = groupLinks(task, attempt: attempt)
                workload.ledger.log(.init(time: wall, kind: "help", task: task, worker: w, detail: "attempt \(attempt) slot \(slot) of \(slots)"))
                send(w, .with(.help(h)))
            case .peerLeft(let w, let task, let attempt, let slot):
                var p = Prune_V1_Peer()
                p.taskID = task
                p.attempt = UInt32(attempt)
                p.kind = "left"
                p.slot = UInt32(slot)
                send(w, .with(.peer(p)))
            case .helpDistrusted(let principal, let leader, let task):
                logger.warning("\(principal)'s share in the span \(task) disagreed with the leader's own computation; it helps \(leader) no more")
                workload.ledger.log(.init(time: wall, kind: "distrust", task: task, worker: nil, detail: principal))
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
                logger.info("worker \(names[w] ?? w) lost (\(reason)); requeued \(requeued.count) task(s)")
                try workload.ledger.workerLeft(id: w, reason: reason, at: wall)
                for task in requeued {
                    workload.ledger.log(.init(time: wall, kind: "requeue", task: task, worker: w, detail: reason))
                }
                identities[w] = nil
                links[w] = nil
            case .requeued(let task, let reason):
                try workload.ledger.markAttemptFailed(task: task, attempts: core.attempts(of: task), cause: reason, at: wall)
            case .commit(let task, let w, let attempt, let digest, let seconds):
                try workload.commit(task: task, worker: w, attempt: attempt, digest: digest, seconds: seconds)
                progress.step(task)
            case .refused(let w, let task, let attempt, let reason, let counted):
                logger.warning("refused the result of \(task) attempt \(attempt) from \(names[w] ?? w): \(reason)")
                try workload.ledger.resultRefused(worker: w, task: task, reason: reason, counted: counted, at: wall)
            case .verified(let task, let detail):
                // Agreement is the routine case: only the ledger hears of it.
                if detail.contains("disagree") || detail.hasSuffix("no worker") { logger.warning("verification of \(task): \(detail)") }
                workload.ledger.log(.init(time: wall, kind: "verify", task: task, worker: nil, detail: detail))
            case .recompute(let task):
                try startRecomputation(task)
            case .quarantined(let principal, let reason):
                logger.warning("quarantined \(principal): \(reason)")
                try workload.ledger.quarantine(principal: principal, reason: reason, at: wall)
            case .reopened(let task, let reason):
                logger.info("reopened \(task): \(reason)")
                try workload.reopen(task: task, reason: reason)
                progress.unstep()
            case .jobCompleted:
                workload.ledger.log(.init(time: wall, kind: "complete", task: nil, worker: nil, detail: ""))
            case .jobFailed(let reason):
                logger.info("job failed: \(reason)")
                workload.ledger.log(.init(time: wall, kind: "failed", task: nil, worker: nil, detail: reason))
                try workload.ledger.setJobValue("state", "failed")
                try workload.ledger.setJobValue("error", reason)
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
            logger.notice("could not send to \(names[worker] ?? worker): \(error)")
        }
    }
}

/// Items handed from another thread to the coordinator's loop.
final class Inbox<Item: Sendable>: Sendable {
    private let items = Mutex<[Item]>([])

    func post(_ item: Item) { items.withLock { $0.append(item) } }

    /// Everything posted so far, in order; the inbox is empty afterwards.
    func drain() -> [Item] { items.withLock { all in defer { all = [] }; return all } }
}

/// What the members of a span group may send through the coordinator (`relayPeer`): one
/// join each; shares all the size of the leader's (a whole gradient), at most what the span
/// can use per member (each step: the leader's prefix, and every shard once).
struct GroupBudget {
    let task: String
    private let sharesPerMember: Int
    private var shareBytes: Int?
    private var joined: Set<Int> = []
    private var shares: [Int: Int] = [:]

    init(task: String, steps: Int, shards: Int) {
        self.task = task
        sharesPerMember = max(1, steps) * (max(1, shards) + 1)
    }

    /// Whether slot `slot` may send this (and it is counted).
    mutating func admit(_ kind: String, slot: Int, bytes: Int) -> Bool {
        switch kind {
        case "join":
            return joined.insert(slot).inserted
        case "share":
            guard bytes > 0, bytes == (shareBytes ?? bytes), shares[slot, default: 0] < sharesPerMember else { return false }
            // The leader's size stands (a helper's first share could be any size; members
            // drop a share of the wrong size unread).
            if slot == 0 { shareBytes = bytes }
            shares[slot, default: 0] += 1
            return true
        default:
            return false
        }
    }
}
