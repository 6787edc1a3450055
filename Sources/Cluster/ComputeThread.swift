import Engine
import Foundation
import Logging
import Protocol
import Pruning
import Tensors
import Synchronization
import ZeroMQ
#if canImport(Glibc)
import Glibc
#endif

/// The cancellation tokens of the task attempts a worker holds. The I/O thread registers
/// each Assign before passing it to the compute thread and cancels the token when a
/// Cancel names that attempt; the compute thread runs the attempt with its token bound
/// (`Cancellation.run(with:)`), so the work stops at its next checkpoint.
final class TaskCancellations: Sendable {
    private let held = Mutex<[String: [UInt32: CancellationToken]]>([:])

    /// A fresh token for an attempt the coordinator just assigned.
    func register(_ task: String, attempt: UInt32) {
        held.withLock { $0[task, default: [:]][attempt] = CancellationToken() }
    }

    /// The attempt's token (a fresh one if it was never registered).
    func token(_ task: String, attempt: UInt32) -> CancellationToken {
        held.withLock { held in
            if let token = held[task]?[attempt] { return token }
            let token = CancellationToken()
            held[task, default: [:]][attempt] = token
            return token
        }
    }

    /// Cancels the attempt (attempt 0: every attempt of the task held). Returns whether
    /// this worker held it.
    func cancel(_ task: String, attempt: UInt32) -> Bool {
        held.withLock { held in
            let tokens = held[task].map { attempt == 0 ? Array($0.values) : $0[attempt].map { [$0] } ?? [] } ?? []
            tokens.forEach { $0.cancel() }
            return !tokens.isEmpty
        }
    }

    /// The attempt ended (answered, dropped, or never started).
    func finish(_ task: String, attempt: UInt32) {
        held.withLock { held in
            held[task]?[attempt] = nil
            if held[task]?.isEmpty == true { held[task] = nil }
        }
    }
}

/// The worker's compute side: runs one task at a time on a thread of its own, so the
/// I/O thread keeps heartbeating however long a task takes.
final class ComputeThread: @unchecked Sendable {
    let context: ZMQContext
    private let endpoint: String
    private var options: WorkerOptions
    /// Messages that arrived while a task was fetching chunks (or waiting for its span
    /// group), handled after it.
    var deferred: [[[UInt8]]] = []
    /// Peer messages that arrived while a task was fetching chunks, for its span group (as
    /// they came, not copied); at most `maxHeldPeers`, the rest dropped (a member that
    /// misses a share computes it or stops), and all gone once the task ends.
    var heldPeers: [[ZMQFrame]] = []
    static let maxHeldPeers = 64
    private let logger: Logger
    private let finished = DispatchSemaphore(value: 0)
    let source: TensorSource
    /// The coordinator's artifact directory, read directly when this host sees it.
    var artifactRoot = ""
    /// Where this worker stores its results itself (nil: it sends them in frames): the
    /// coordinator's artifact directory, when this host sees that very directory.
    var resultStore: ArtifactStore?
    /// The codings this worker tries for masks it sends, in order, among those the
    /// coordinator's Welcome lists; none without --compress-masks.
    var maskCodings: [String] = []
    /// Shared with the I/O thread, which cancels what the coordinator revokes.
    let cancellations = TaskCancellations()
    /// Where the other members of this worker's span groups send it their shares (nil:
    /// it has no link; theirs come through the coordinator).
    private(set) var linkListener: PeerLinkListener?
    /// DEALERs to other workers' links, by endpoint and key (`linkDealer`).
    var linkDealers: [String: ZMQSocket] = [:]
    /// The link Hello announces (empty: none).
    var linkEndpoint: String { linkListener?.endpoint ?? "" }

    struct Stop: Error {}

    /// The protocol settings this worker runs with (the coordinator's, once welcomed).
    var settings: Settings { options.settings }
    /// How this worker lies (tests only).
    var lies: WorkerOptions.TestLie { options.testLie }

    init(context: ZMQContext, endpoint: String, options: WorkerOptions, logger: Logger) {
        self.context = context
        self.endpoint = endpoint
        self.options = options
        self.logger = logger
        source = TensorSource(dataRoots: options.dataRoots, pullOnly: options.pullOnly)
    }

    func start() throws {
        let socket = try ZMQSocket(context, .pair)
        try socket.setLinger(ms: 0)
        try socket.connect(endpoint)
        // Bound before Hello names it; the compute thread uses it from then on.
        linkListener = options.peerLink ? PeerLinkListener(context: context, options: options, logger: logger) : nil
        let thread = Thread { [self] in
            self.loop(socket)
            socket.close()
            self.linkDealers.values.forEach { $0.close() }
            self.linkDealers = [:]
            self.linkListener = nil
            self.finished.signal()
        }
        thread.name = "compute"
        thread.stackSize = 8 << 20
        thread.start()
    }

    func join() { finished.wait() }

    private func loop(_ pair: ZMQSocket) {
        while true {
            // A group's messages live no longer than its task.
            heldPeers.removeAll()
            let bytes: [[UInt8]]
            if !deferred.isEmpty {
                bytes = deferred.removeFirst()
            } else {
                guard let frames = try? pair.receiveMultipart() else { return }
                // A Peer for a group this worker is no longer in: dropped unread.
                if Worker.peer(frames, maxEnvelopeBytes: options.settings.maxEnvelopeBytes) != nil { continue }
                bytes = frames.map(\.bytes)
            }
            guard let message = try? WireMessage.decode(bytes, settings: options.settings.fromCoordinator) else {
                refuseUndecodable(bytes, pair: pair)
                continue
            }
            switch message.envelope.body {
            case .welcome(let w):
                source.announce(w.modelFiles)
                // A pull-only worker fetches everything over the wire, artifacts too.
                artifactRoot = options.pullOnly ? "" : w.artifactRoot
                // Results stored in place cross no socket: the wire then carries a digest
                // per output instead of its bytes, and the fsync is done here, not on the
                // coordinator's one thread.
                let shared = !options.pullOnly && ArtifactStore.sharedWithCoordinator(root: w.artifactRoot, token: w.artifactToken)
                resultStore = shared ? try? ArtifactStore(root: w.artifactRoot) : nil
                if !w.artifactRoot.isEmpty { logger.info(resultStore != nil ? "storing results in \(w.artifactRoot)" : "sending results over the wire") }
                let wanted = options.compressMasks ? [NMMaskCoding.name, MaskCoding.name] : []
                maskCodings = wanted.filter(w.payloadCodings.contains)
                if w.chunkSize > 0 { options.settings.chunkBytes = Int(w.chunkSize) }
                // A span group's patience follows the coordinator's liveness.
                if w.heartbeatMs > 0 { options.settings.heartbeatMs = Int(w.heartbeatMs) }
                if w.liveness > 0 { options.settings.liveness = Int(w.liveness) }
                if w.chunkCredit > 0 { options.settings.chunkCredit = Int(w.chunkCredit) }
            case .assign(let a):
                let token = cancellations.token(a.taskID, attempt: a.attempt)
                defer { cancellations.finish(a.taskID, attempt: a.attempt) }
                do {
                    // nil: the coordinator cancelled this attempt; it wants nothing back.
                    guard let reply = try Cancellation.run(with: token, { try run(a, pair: pair) }) else { continue }
                    try pair.send(reply)
                } catch {
                    // Stop (Shutdown while fetching) or a dead PAIR socket: this thread is done.
                    return
                }
            case .help(let h):
                do {
                    try help(h, pair: pair)
                } catch {
                    return
                }
            case .shutdown:
                return
            default:
                break
            }
        }
    }

    /// An Assign whose payloads do not decode (a digest or size that does not match) is
    /// answered with a retryable Fail, so its lease ends now rather than never; anything
    /// else undecodable is dropped.
    private func refuseUndecodable(_ bytes: [[UInt8]], pair: ZMQSocket) {
        guard let head = bytes.first, head.count <= options.settings.maxEnvelopeBytes,
              let envelope = try? Prune_V1_Envelope(serializedBytes: head), case .assign(let a) = envelope.body else { return }
        failRetryably(a, cause: "the assignment did not decode on worker \(options.name)", pair: pair)
    }

    /// The coordinator's message for `a` was bad, not the task: a retryable Fail (another
    /// try may do), and the attempt's token is finished.
    private func failRetryably(_ a: Prune_V1_Assign, cause: String, pair: ZMQSocket) {
        var fail = Prune_V1_Fail()
        fail.taskID = a.taskID
        fail.attempt = a.attempt
        fail.cause = cause
        fail.retryable = true
        logger.notice("task \(a.taskID) attempt \(a.attempt): \(cause)")
        try? pair.send(WireMessage.frames(.with(.fail(fail))))
        cancellations.finish(a.taskID, attempt: a.attempt)
    }

    /// Helps another worker's training span (a Help): the span's steps in the group,
    /// until its end or until the group ends for this worker. Nothing is answered.
    private func help(_ h: Prune_V1_Help, pair: ZMQSocket) throws {
        guard h.slot > 0, h.slot < h.slots else { return }
        let group = PeerGroup(thread: self, pair: pair, task: h.taskID, attempt: h.attempt, slot: Int(h.slot), slots: Int(h.slots), links: h.links)
        defer { group.close() }
        do {
            _ = try PhaseRegistry.run(.train(h.train), task: h.taskID, inputs: WorkerInputs(thread: self, pair: pair, group: group))
            logger.info("helped \(h.taskID) attempt \(h.attempt) as slot \(h.slot) of \(h.slots); \(group.sentSummary)")
        } catch is Stop {
            throw Stop()
        } catch {
            logger.info("stopped helping \(h.taskID) attempt \(h.attempt): \(error)")
        }
    }

    /// Runs a task and returns the frames to send: Result (+ payloads) or Fail; nil when
    /// the coordinator cancelled the attempt (before it started or at a checkpoint).
    private func run(_ a: Prune_V1_Assign, pair: ZMQSocket) throws -> [[UInt8]]? {
        let start = DispatchTime.now().uptimeNanoseconds
        do {
            let group = a.slots > 1 ? PeerGroup(thread: self, pair: pair, task: a.taskID, attempt: a.attempt, slot: 0, slots: Int(a.slots), links: a.links) : nil
            defer { group?.close() }
            var outputs = try PhaseRegistry.run(a.work, task: a.taskID, inputs: WorkerInputs(thread: self, pair: pair, group: group))
            if let group { logger.info("led \(a.taskID) attempt \(a.attempt) in a group of \(a.slots); \(group.sentSummary)") }
            try NoopPhase.sleep(ms: options.taskDelayMs)
            if options.testLie == .swapMaskBits { Self.swapFirstKeptAndPruned(&outputs) }
            if options.testLie == .flatterFitness { Self.halveFitness(&outputs) }
            var result = Prune_V1_Result()
            result.taskID = a.taskID
            result.attempt = a.attempt
            result.kept = outputs.kept
            let payloads = outputs.payloads
            // Stored in place: durable (fsync, rename) before the Result leaves, as the
            // coordinator's own writes are before it acknowledges; volatile outputs only
            // complete (a resume verifies them and reruns their task if they are gone).
            let stored = try resultStore.map { store in
                try payloads.map { p in (name: p.name, sha256: try store.put(p.bytes, durable: !outputs.volatile.contains(p.name)), size: p.bytes.count) }
            }
            result.seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            if let stored, !stored.isEmpty { return try WireMessage.frames(.with(.result(result)), stored: stored) }
            let outgoing = payloads.map { p -> WireMessage.Outgoing in
                if p.name == OutputName.mask.rawValue, let shape = outputs.maskShape, !maskCodings.isEmpty {
                    return WireMessage.Outgoing(name: p.name, maskBits: p.bytes, rows: shape.rows, cols: shape.cols, nm: shape.nm, codings: maskCodings)
                }
                return WireMessage.Outgoing(name: p.name, bytes: p.bytes)
            }
            return try WireMessage.frames(.with(.result(result)), outgoing: outgoing)
        } catch is Stop {
            throw Stop()
        } catch is CancelledError {
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            logger.info("task \(a.taskID) attempt \(a.attempt): cancelled by the coordinator after \(String(format: "%.2f", seconds)) s; nothing sent")
            return nil
        } catch {
            var fail = Prune_V1_Fail()
            fail.taskID = a.taskID
            fail.attempt = a.attempt
            fail.cause = String(describing: error)
            // Bad input fails the same way everywhere: retrying cannot help.
            fail.retryable = !(error is PruningError || error is SpecError || error is CheckpointError)
            logger.info("task \(a.taskID) failed: \(fail.cause)")
            return try WireMessage.frames(.with(.fail(fail)))
        }
    }

    /// Test hook (`PRUNE_TEST_LIE=swap-mask-bits`): a worker that lies within the rules.
    /// Row 0 of its mask keeps one pruned weight and prunes one kept weight instead: the
    /// shape and the count of every row stay right, the weights are wrong.
    /// A fitness task's result (one payload, a KL sum and a count) with the sum halved.
    private static func halveFitness(_ outputs: inout TaskOutputs) {
        guard outputs.payloads.count == 1, outputs.payloads[0].name == EvolutionPhase.fitness.rawValue,
              let v = try? FloatPayload.doubles(outputs.payloads[0].bytes, what: "fitness"), v.count == 2 else { return }
        outputs.payloads[0].bytes = FloatPayload.encode(v[0] / 2) + FloatPayload.encode(v[1])
    }

    private static func swapFirstKeptAndPruned(_ outputs: inout TaskOutputs) {
        guard let i = outputs.payloads.firstIndex(where: { $0.name == OutputName.mask.rawValue }), let shape = outputs.maskShape, shape.cols > 1 else { return }
        var bits = outputs.payloads[i].bytes
        func bit(_ c: Int) -> Bool { bits[c / 8] & (1 << (c % 8)) != 0 }
        guard let kept = (0..<shape.cols).first(where: bit), let pruned = (0..<shape.cols).first(where: { !bit($0) }) else { return }
        bits[kept / 8] ^= 1 << (kept % 8)
        bits[pruned / 8] ^= 1 << (pruned % 8)
        outputs.payloads[i].bytes = bits
    }

    /// Pulls a byte range from the coordinator with at most `chunkCredit` requests in
    /// flight (credit-based flow control, ZeroMQ guide ch.7).
    func fetch(file: String, offset: Int, count: Int, pair: ZMQSocket) throws -> [UInt8] {
        let chunk = options.settings.chunkBytes
        let credit = options.settings.chunkCredit
        var buffer = [UInt8](repeating: 0, count: count)
        var next = 0, received = 0
        var outstanding: [UInt64: (offset: Int, length: Int)] = [:]
        var requestID: UInt64 = 0
        try pair.setReceiveTimeout(ms: Int32(options.settings.leaseMs * 3))
        defer { try? pair.setReceiveTimeout(ms: -1) }
        while received < count {
            try Cancellation.checkpoint()
            while outstanding.count < credit && next < count {
                let length = min(chunk, count - next)
                requestID += 1
                var request = Prune_V1_ChunkRequest()
                request.fileSha256 = file
                request.offset = UInt64(offset + next)
                request.length = UInt64(length)
                request.requestID = requestID
                try pair.send(try WireMessage.frames(.with(.chunkRequest(request))))
                outstanding[requestID] = (next, length)
                next += length
            }
            guard let frames = try pair.receiveMultipart() else {
                throw ZMQError(code: EAGAIN, call: "chunk fetch timed out")
            }
            if Worker.peer(frames, maxEnvelopeBytes: options.settings.maxEnvelopeBytes) != nil {
                // A span group's, before the group listens (the leader restoring its base):
                // kept as it came, not decoded or copied, for the group.
                if heldPeers.count < Self.maxHeldPeers { heldPeers.append(frames) }
                continue
            }
            guard let message = try? WireMessage.decode(frames.map(\.bytes), settings: options.settings.fromCoordinator) else { continue }
            switch message.envelope.body {
            case .chunk(let c):
                guard let slot = outstanding.removeValue(forKey: c.requestID) else { continue }
                guard c.error.isEmpty else { throw CheckpointError(file: file, "coordinator cannot send bytes: \(c.error)") }
                guard message.payloads.count == 1, message.payloads[0].count == slot.length else {
                    throw PruningError("chunk \(c.requestID) has the wrong size")
                }
                buffer.withUnsafeMutableBytes { out in
                    message.payloads[0].withUnsafeBytes { out.baseAddress!.advanced(by: slot.offset).copyMemory(from: $0.baseAddress!, byteCount: slot.length) }
                }
                received += slot.length
            case .shutdown:
                throw Stop()
            default:
                // An Assign (or Welcome) while fetching: keep it for after this task.
                deferred.append(frames.map(\.bytes))
            }
        }
        return buffer
    }
}

/// A worker's inputs: tensors from its local copy of the checkpoint (mapped, no copy) or
/// pulled from the coordinator in chunks; artifacts from the coordinator's artifact
/// directory when this host sees it, else pulled. Everything pulled is checked.
struct WorkerInputs: TaskInputs {
    let thread: ComputeThread
    let pair: ZMQSocket
    var group: PeerGroup?

    var spanGroup: SpanGroup? { group }

    func withTensorBytes<R>(_ ref: Prune_V1_TensorRef, _ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard range.lowerBound >= 0, range.upperBound <= Int(clamping: ref.byteCount) else {
            throw PruningError("tensor '\(ref.name)': byte range \(range) outside its \(ref.byteCount) bytes")
        }
        try Cancellation.checkpoint()
        let offset = Int(clamping: ref.offset) + range.lowerBound
        if let file = thread.source.localFile(ref.fileSha256) {
            guard offset <= file.size - range.count else { throw PruningError("tensor '\(ref.name)': byte range outside \(file.path)") }
            // The mapped pages go once used: a worker's RSS stays what it computes with,
            // not every checkpoint page it ever read.
            defer { file.release(offset..<(offset + range.count)) }
            return try body(file.bytes(offset..<(offset + range.count)))
        }
        let bytes = try thread.fetch(file: ref.fileSha256, offset: offset, count: range.count, pair: pair)
        return try bytes.withUnsafeBytes { try body($0) }
    }

    func withArtifact<R>(_ ref: Prune_V1_ArtifactRef, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        if !thread.artifactRoot.isEmpty {
            let path = ArtifactStore.path(for: ref.sha256, root: thread.artifactRoot)
            if let file = try? MappedFile(path: path), file.size == Int(clamping: ref.size), file.size > 0 {
                // The mapping lives until body returns.
                let result: R? = try withExtendedLifetime(file) {
                    let bytes = file.bytes(0..<file.size)
                    return SHA256Stream.hex(bytes) == ref.sha256 ? try body(bytes) : nil
                }
                if let result { return result }
            }
        }
        return try artifact(ref).withUnsafeBytes(body)
    }

    func artifact(_ ref: Prune_V1_ArtifactRef) throws -> [UInt8] {
        // Mapped, hashed in place and copied once, as the coordinator reads its store (a
        // classifier's example data is tens of megabytes). Only a well-formed digest names a file.
        if !thread.artifactRoot.isEmpty, ref.size > 0, SHA256Stream.isHexDigest(ref.sha256),
           let bytes = ArtifactStore.get(ref.sha256, size: ref.size, root: thread.artifactRoot) {
            return bytes
        }
        let bytes = try thread.fetch(file: ref.sha256, offset: 0, count: Int(clamping: ref.size), pair: pair)
        guard bytes.withUnsafeBytes({ SHA256Stream.hex($0) }) == ref.sha256 else {
            throw PruningError("artifact \(ref.sha256.prefix(12))…: pulled bytes do not match their digest")
        }
        return bytes
    }
}
