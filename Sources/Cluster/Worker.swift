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
    /// Listen for the shares of this worker's span groups on a direct link (`PeerLinkListener`);
    /// off (`--no-peer-link`), every share goes through the coordinator.
    public var peerLink = true
    /// Test hook: announce a link no one can reach (PRUNE_TEST_LINK=dead), so the others'
    /// shares to this worker go through the coordinator.
    public var testDeadLink = false

    /// Ways a test worker lies.
    public enum TestLie: String, Sendable {
        case none
        /// Right shape and counts, wrong weights: swaps a kept and a pruned bit of row 0.
        case swapMaskBits = "swap-mask-bits"
        /// A plausible fitness, too good: halves a candidate's KL divergence.
        case flatterFitness = "flatter-fitness"
        /// A helper of a training span whose shares are off by one bit: the last bit of
        /// each share's first value flipped.
        case skewShares = "skew-shares"
        /// A helper of a training span whose shares hold a NaN (each share's first value).
        case nanShares = "nan-shares"
    }

    public init(endpoint: String, name: String) {
        self.endpoint = endpoint
        self.name = name
    }
}

/// A worker process: an I/O thread owning the DEALER socket (Hello, heartbeats from its
/// own thread, reconnects with backoff) and a compute thread running one task at a time.
/// The two talk over an inproc PAIR socket with the same frames as the wire. The I/O
/// thread is the shell of `WorkerCore`, which makes every protocol decision.
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
        let previous = StopSignal.install()
        defer { StopSignal.restore(previous) }
        let parent = getppid()

        let pair = try ZMQSocket(context, .pair)
        try pair.setLinger(ms: 0)
        let pairEndpoint = "inproc://compute-\(UInt64.random(in: 0...UInt64.max))"
        try pair.bind(pairEndpoint)
        let compute = ComputeThread(context: context, endpoint: pairEndpoint, options: options, logger: logger)
        try compute.start()
        // The compute thread's link, as Hello announces it on every (re)connect.
        let link = compute.linkEndpoint
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

        var core = WorkerCore(settings: options.settings, curve: options.curveServerKey != nil, now: now())
        var dealer = try connect()
        try send(dealer, hello(link: link))

        /// Carries out directives; returns the exit status when one says to leave.
        /// `frames` are forwarded as they came, by reference (libzmq counts them).
        func execute(_ directives: [WorkerCore.Directive], frames: [ZMQFrame]) throws -> Int32? {
            for d in directives {
                switch d {
                case .forwardToCompute: try pair.send(frames)
                case .forwardToCoordinator:
                    if !(try dealer.send(frames, dontWait: true)) { logger.info("could not queue a message for the coordinator; it will be retried by lease expiry") }
                case .send(let envelope): try send(dealer, envelope)
                case .cancelAttempt(let task, let attempt): _ = compute.cancellations.cancel(task, attempt: attempt)
                case .reconnect(let wait):
                    dealer.close()
                    let until = now() + Int64(wait)
                    while now() < until && StopSignal.received == 0 { usleep(50_000) }
                    dealer = try connect()
                    try send(dealer, hello(link: link))
                    core.reconnected(now: now())
                case .exit(let code): return code
                case .log(let line): logger.info("\(line)")
                case .warn(let line): FileHandle.standardError.write(Data("prune worker: \(line)\n".utf8))
                }
            }
            return nil
        }

        while true {
            if StopSignal.received != 0, let code = try execute(core.stop(), frames: []) { return code }
            if options.exitWithParent && getppid() != parent {
                logger.info("parent process is gone; exiting")
                return 0
            }
            var poller = ZMQPoller()
            _ = poller.add(dealer)
            _ = poller.add(pair)
            let ready = try poller.poll(timeoutMs: core.wait(now: now()))
            if ready[0] {
                while let frames = try dealer.receiveMultipart(dontWait: true) {
                    // A span group's share goes to the compute thread as it came (by
                    // reference, not copied); the compute thread checks it. Never a
                    // blocking send: a flood of shares the compute thread does not read
                    // must not stop this thread's heartbeats (a dropped share is one the
                    // group computes itself or stops for).
                    // The envelope says what it is (parsed once, alone); the compute thread
                    // decodes and checks the whole message.
                    guard let body = Self.envelope(frames, maxEnvelopeBytes: options.settings.fromCoordinator.maxEnvelopeBytes)?.body else {
                        logger.notice("dropped a malformed message from the coordinator")
                        continue
                    }
                    if case .peer = body {
                        _ = core.fromCoordinator(body, now: now())
                        if !(try pair.send(frames, dontWait: true)) { logger.info("dropped a share the compute thread could not take") }
                        continue
                    }
                    if case .assign = body, options.testExitOnTask { exit(3) }
                    if case .assign(let a) = body { compute.cancellations.register(a.taskID, attempt: a.attempt) }
                    if let code = try execute(core.fromCoordinator(body, now: now()), frames: frames) { return code }
                }
            }
            if ready[1] {
                while let frames = try pair.receiveMultipart(dontWait: true) {
                    // Its own compute thread's: the envelope says what it is (the payloads
                    // are the coordinator's to check).
                    let body = Self.envelope(frames, maxEnvelopeBytes: .max)?.body
                    if case .peer? = body {
                        if !(try dealer.send(frames, dontWait: true)) { logger.info("could not queue a share for the coordinator") }
                        continue
                    }
                    _ = try execute(core.fromCompute(body), frames: frames)
                }
            }
            if let code = try execute(core.tick(now: now()), frames: []) { return code }
        }
    }

    /// A message's envelope, read from its first frame alone (the payload frames are not
    /// touched), or nil when that frame is too big or not an envelope with a body.
    static func envelope(_ frames: [ZMQFrame], maxEnvelopeBytes: Int) -> Prune_V1_Envelope? {
        guard let head = frames.first, head.count <= maxEnvelopeBytes,
              let envelope = try? head.withUnsafeBytes({ try Prune_V1_Envelope(serializedBytes: Array($0)) }),
              envelope.body != nil else { return nil }
        return envelope
    }

    /// The body of a Peer message (read from its envelope frame alone), or nil for any other.
    static func peer(_ frames: [ZMQFrame], maxEnvelopeBytes: Int) -> Prune_V1_Envelope.OneOf_Body? {
        guard let body = envelope(frames, maxEnvelopeBytes: maxEnvelopeBytes)?.body, case .peer = body else { return nil }
        return body
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

    private func hello(link: String) -> Prune_V1_Envelope {
        var h = Prune_V1_Hello()
        h.protocolVersion = options.protocolVersion
        h.build = "prune-cluster"
        h.host = ProcessInfo.processInfo.hostName
        h.cores = UInt32(ProcessInfo.processInfo.activeProcessorCount)
        h.memoryBytes = ProcessInfo.processInfo.physicalMemory
        h.dataRoots = options.dataRoots
        h.workerName = options.name
        h.blasCore = BLASThreads.coreName
        h.link = link
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
}

/// Milliseconds on a monotonic clock.
func now() -> Int64 {
    Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000)
}
