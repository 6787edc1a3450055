import Foundation
import Logging
import Protocol
import Pruning
import Tensors
import ZeroMQ
#if canImport(Glibc)
import Glibc
#endif

/// How a worker connects and behaves.
public struct WorkerOptions: Sendable {
    public var endpoint: String
    public var name: String
    /// Directories searched for local copies of checkpoint files (by file name).
    public var dataRoots: [String] = []
    /// CURVE keys (Z85): this worker's pair and the coordinator's public key.
    public var curvePublicKey: String?
    public var curveSecretKey: String?
    public var curveServerKey: String?
    public var settings = Settings()
    /// Exit when the parent process goes away (workers of `prune run`).
    public var exitWithParent = false
    /// Test hook: every task sleeps this long before answering, so tests can kill a
    /// worker mid-task. Set by PRUNE_TEST_TASK_DELAY_MS.
    public var taskDelayMs = 0
    /// Never read checkpoint files locally: pull every byte from the coordinator (a
    /// worker on a host without the files behaves like this by itself).
    public var pullOnly = false
    /// Code the masks sent over the wire: N:M ones by rank (`NMMaskCoding`), others range
    /// coded (`MaskCoding`) where that saves 1/32. Off by default: the coordinator decodes
    /// on its one I/O thread at about 2 ns (N:M) to 6 ns (range) per weight, more than a fast
    /// LAN takes to carry the bits saved (docs/cluster.md, "Masks on the wire").
    public var compressMasks = false
    /// The version announced in Hello (tests use another one to be rejected).
    public var protocolVersion = Settings.protocolVersion
    /// Test hook: the process exits (status 3) when it is given a task, as a worker that
    /// crashes on every task does (set by PRUNE_TEST_EXIT_ON_TASK=1).
    public var testExitOnTask = false
    /// Test hook: a worker that lies (set by PRUNE_TEST_LIE), for the trust tests.
    public var testLie: TestLie = .none

    /// Ways a test worker lies.
    public enum TestLie: String, Sendable {
        case none
        /// Right shape and counts, wrong weights: swaps a kept and a pruned bit of row 0.
        case swapMaskBits = "swap-mask-bits"
    }

    public init(endpoint: String, name: String) {
        self.endpoint = endpoint
        self.name = name
    }
}

/// Set by SIGTERM/SIGINT; the I/O loop checks it after every poll.
nonisolated(unsafe) private var stopRequested: sig_atomic_t = 0

/// A worker process: an I/O thread owning the DEALER socket (Hello, heartbeats from its
/// own thread, reconnects with backoff) and a compute thread running one task at a time.
/// The two talk over an inproc PAIR socket with the same frames as the wire.
public final class Worker {
    public let options: WorkerOptions
    private let context: ZMQContext
    private let logger: Logger

    public init(options: WorkerOptions, logger: Logger) throws {
        self.options = options
        self.logger = logger
        context = try ZMQContext()
    }

    /// Runs until Shutdown, SIGTERM, a Reject, or the parent going away.
    /// Returns the process exit code (0 clean, 2 rejected).
    public func run() throws -> Int32 {
        signal(SIGTERM) { _ in stopRequested = 1 }
        signal(SIGINT) { _ in stopRequested = 1 }
        let parent = getppid()

        let pair = try ZMQSocket(context, .pair)
        try pair.setLinger(ms: 0)
        let pairEndpoint = "inproc://compute-\(UInt64.random(in: 0...UInt64.max))"
        try pair.bind(pairEndpoint)
        let compute = ComputeThread(context: context, endpoint: pairEndpoint, options: options, logger: logger)
        try compute.start()
        defer {
            try? pair.send(try WireMessage.frames(.with(.shutdown(Prune_V1_Shutdown()))), dontWait: true)
            compute.join()
            pair.close()
            // For the job's logs: the memory this worker needed at its peak, and the CPU it
            // used (benchmarks subtract the workers' CPU from the job's to get the coordinator's).
            var usage = rusage()
            if getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage) == 0 {
                func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
                logger.info("peak RSS \(usage.ru_maxrss / 1024) MB, CPU \(String(format: "%.1f", seconds(usage.ru_utime) + seconds(usage.ru_stime))) s")
            }
        }

        var s = options.settings
        var backoff = s.reconnectMs
        var dealer = try connect()
        var lastHeard = now()
        var nextHeartbeat = now() + Int64(s.heartbeatMs)
        // Attempts the coordinator leased on the current connection. A result is sent only
        // for one of these: after a reconnect the coordinator knows this worker under a new
        // routing id, and a result of an earlier connection's lease would be refused.
        var running: [(task: String, attempt: UInt32)] = []
        try send(dealer, hello())

        while true {
            if stopRequested != 0 {
                var bye = Prune_V1_Goodbye()
                bye.reason = "SIGTERM"
                bye.taskIds = running.map(\.task)
                try? send(dealer, .with(.goodbye(bye)))
                logger.info("stopping on signal; told the coordinator")
                return 0
            }
            if options.exitWithParent && getppid() != parent {
                logger.info("parent process is gone; exiting")
                return 0
            }
            var poller = ZMQPoller()
            _ = poller.add(dealer)
            _ = poller.add(pair)
            let wait = max(0, min(Int(nextHeartbeat - now()), 250))
            let ready = try poller.poll(timeoutMs: wait)

            if ready[0] {
                while let frames = try dealer.receiveMultipart(dontWait: true) {
                    lastHeard = now()
                    backoff = s.reconnectMs
                    guard let message = decode(frames) else { continue }
                    switch message.envelope.body {
                    case .welcome(let w):
                        logger.info("welcomed into job \(w.jobID)")
                        // The coordinator's liveness settings rule (chunking goes to compute).
                        if w.heartbeatMs > 0 { s.heartbeatMs = Int(w.heartbeatMs) }
                        if w.liveness > 0 { s.liveness = Int(w.liveness) }
                        try pair.send(frames.map(\.bytes))
                    case .reject(let r):
                        logger.error("rejected by the coordinator: \(r.reason)")
                        FileHandle.standardError.write(Data("prune worker: rejected by the coordinator: \(r.reason)\n".utf8))
                        return 2
                    case .assign(let a):
                        if options.testExitOnTask { exit(3) }
                        running.append((a.taskID, a.attempt))
                        compute.cancellations.register(a.taskID, attempt: a.attempt)
                        try pair.send(frames.map(\.bytes))
                    case .cancel(let c):
                        // Revoked: stop naming it in heartbeats, and stop computing it.
                        running.removeAll { $0.task == c.taskID && (c.attempt == 0 || $0.attempt == c.attempt) }
                        if compute.cancellations.cancel(c.taskID, attempt: c.attempt) {
                            logger.info("coordinator cancelled task \(c.taskID) attempt \(c.attempt)")
                        }
                    case .chunk:
                        try pair.send(frames.map(\.bytes))
                    case .shutdown(let sd):
                        logger.info("coordinator says shut down: \(sd.reason)")
                        return 0
                    case .heartbeat, .ack:
                        break
                    default:
                        logger.info("dropped unexpected \(message.kind) from the coordinator")
                    }
                }
            }
            if ready[1] {
                while let frames = try pair.receiveMultipart(dontWait: true) {
                    let bytes = frames.map(\.bytes)
                    if let m = try? WireMessage.decode(bytes) {
                        let answered: (task: String, attempt: UInt32)?
                        switch m.envelope.body {
                        case .result(let r): answered = (r.taskID, r.attempt)
                        case .fail(let f): answered = (f.taskID, f.attempt)
                        default: answered = nil
                        }
                        if let answered {
                            guard running.contains(where: { $0 == answered }) else {
                                logger.info("dropped the answer to task \(answered.task) attempt \(answered.attempt): not leased on this connection")
                                continue
                            }
                            running.removeAll { $0 == answered }
                        }
                    }
                    if !(try dealer.send(bytes, dontWait: true)) { logger.info("could not queue a message for the coordinator; it will be retried by lease expiry") }
                }
            }
            let t = now()
            if t >= nextHeartbeat {
                var hb = Prune_V1_Heartbeat()
                hb.taskIds = running.map(\.task)
                try send(dealer, .with(.heartbeat(hb)))
                nextHeartbeat = t + Int64(s.heartbeatMs)
            }
            if t - lastHeard > Int64(s.deadAfterMs) {
                // Paranoid Pirate: the coordinator is silent; reconnect with backoff.
                let hint = options.curveServerKey != nil ? " (if this repeats: is this worker's public key on the coordinator's allow-list, and the server key right?)" : ""
                logger.info("coordinator silent for \(t - lastHeard) ms; reconnecting in \(backoff) ms\(hint)")
                dealer.close()
                // Leases belong to the connection: what runs now is cancelled, and the new
                // connection starts clean (the coordinator requeues the tasks).
                for r in running { _ = compute.cancellations.cancel(r.task, attempt: r.attempt) }
                running = []
                let until = now() + Int64(backoff)
                while now() < until && stopRequested == 0 { usleep(50_000) }
                backoff = min(backoff * 2, s.reconnectMaxMs)
                dealer = try connect()
                try send(dealer, hello())
                lastHeard = now()
            }
        }
    }

    private func connect() throws -> ZMQSocket {
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setLinger(ms: 1000)
        // A routing id of our own, unique across processes and runs (libzmq's defaults
        // repeat from one coordinator process to the next, which would mix up workers).
        try dealer.setRoutingId((0..<16).map { _ in UInt8.random(in: 0...255) })
        try dealer.setMaxMessageSize(options.settings.maxFrameBytes)
        if let pub = options.curvePublicKey, let sec = options.curveSecretKey, let server = options.curveServerKey {
            try dealer.setCurveClient(publicKey: pub, secretKey: sec, serverKey: server)
        }
        try dealer.connect(options.endpoint)
        return dealer
    }

    private func hello() -> Prune_V1_Envelope {
        var h = Prune_V1_Hello()
        h.protocolVersion = options.protocolVersion
        h.build = "prune-cluster"
        h.host = ProcessInfo.processInfo.hostName
        h.cores = UInt32(ProcessInfo.processInfo.activeProcessorCount)
        h.memoryBytes = ProcessInfo.processInfo.physicalMemory
        h.dataRoots = options.dataRoots
        h.workerName = options.name
        h.blasCore = BLASThreads.coreName
        var e = Prune_V1_Envelope.with(.hello(h))
        e.protocolVersion = options.protocolVersion
        return e
    }

    /// Never blocks: a DEALER with no working connection (coordinator down, or CURVE
    /// refused) would block a plain send forever. Unsent heartbeats and Hellos are
    /// simply sent again later.
    private func send(_ socket: ZMQSocket, _ envelope: Prune_V1_Envelope) throws {
        var frames = try WireMessage.frames(envelope)
        if envelope.protocolVersion != Settings.protocolVersion {
            // Only the version test sends another version: keep it in the envelope.
            frames[0] = try envelope.serializedBytes()
        }
        try socket.send(frames, dontWait: true)
    }

    private func decode(_ frames: [ZMQFrame]) -> WireMessage? {
        do {
            return try WireMessage.decode(frames.map(\.bytes), settings: options.settings)
        } catch {
            logger.notice("dropped a malformed message from the coordinator: \(error)")
            return nil
        }
    }
}

/// Milliseconds on a monotonic clock.
func now() -> Int64 {
    Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000)
}
