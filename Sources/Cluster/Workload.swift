import Engine
import Foundation
import Protocol
import Pruning
import Tensors

/// What a coordinator schedules: a list of tasks, the work each one carries on the wire,
/// and how a result is checked and made durable. A pruning job (`ClusterJob`) is one
/// workload; the coordinator benchmark's empty tasks (`NoopWorkload`) are another.
public protocol ClusterWorkload: AnyObject {
    /// Identifies the job to workers (the spec's sha256 for a pruning job).
    var jobID: String { get }
    var settings: Settings { get }
    var ledger: Ledger { get }
    /// Checkpoint files workers may read locally or pull in chunks.
    var modelFiles: [Prune_V1_ModelFile] { get }
    /// Every task, in queue order.
    var taskIDs: [String] { get }
    /// Tasks already done when the coordinator starts (a resumed job), with their results.
    var doneTasks: [String: CoordinatorCore.DoneTask] { get }
    /// Tasks that must be done before `task` may start (the job's DAG).
    func dependencies(of task: String) -> [String]
    /// Whether a task's result is checked by a second run before it is accepted.
    func verifies(task: String) -> Bool
    /// Tasks with the same key are best run by the same worker (nil: any worker).
    func affinity(of task: String) -> String?
    /// How many idle workers may help a task when it starts (a training span's all-gather).
    func helpers(of task: String) -> Int
    /// Whether verified results come from BLAS, whose last bits depend on the CPU kernel.
    var verifiesBLASResults: Bool { get }
    /// Where workers that see the coordinator's disk find artifacts ("" when none).
    var artifactRoot: String { get }
    /// A file a worker may pull in chunks, by sha256: a checkpoint file or an artifact.
    func servableFile(_ sha256: String) -> (path: String, size: UInt64)?
    /// The work an Assign carries for a task; nil for an unknown task. Throws
    /// `MissingOutput` when an output it needs from a done task is gone, any other error
    /// when the task's inputs are unusable (the job cannot go on).
    func work(for task: String) throws -> Prune_V1_Assign.OneOf_Work?
    /// The token a worker must find in `artifactRoot/.coordinator-token` before it stores
    /// results there itself ("" when workers may not).
    var artifactToken: String { get }
    /// Reads a payload a worker stored in the artifact directory: its bytes when present
    /// with this size and sha256, else nil. Safe to call on another thread (a large result
    /// is read and hashed off the coordinator's loop).
    var storedArtifacts: @Sendable (_ sha256: String, _ size: UInt64) -> [UInt8]? { get }
    /// Validates a result's payloads and stores them as artifacts (nothing is recorded
    /// as done yet). Returns the digest that names the whole result, or why the result is
    /// unusable.
    func store(task: String, payloads: [ResultPayload]) throws -> StoredResult
    /// Makes a stored result the task's: the ledger row committed (durable before the
    /// worker is acknowledged).
    func commit(task: String, worker: String, attempt: Int, digest: String, seconds: Double) throws
    /// A done task is pending again; its recorded result is forgotten.
    func reopen(task: String, reason: String) throws
    /// The coordinator's own computation of a task, as a function that is safe to run on
    /// another thread; its outputs are then stored with `store`.
    func recomputation(of task: String) throws -> @Sendable () throws -> [ResultPayload]
}

/// A validated result, or why it is unusable.
public enum StoredResult: Sendable, Equatable {
    case stored(digest: String)
    case invalid(String)
}

/// One output of a task as the coordinator holds it: its bytes (from a frame, or read
/// back from the artifact directory) and their sha256, already verified.
public struct ResultPayload: Sendable {
    public let bytes: [UInt8]
    public let sha256: String

    public init(bytes: [UInt8], sha256: String) {
        self.bytes = bytes
        self.sha256 = sha256
    }
}

extension ClusterWorkload {
    /// Tasks already done when the coordinator starts.
    public var doneTaskIDs: Set<String> { Set(doneTasks.keys) }
    public func dependencies(of task: String) -> [String] { [] }
    public func verifies(task: String) -> Bool { false }
    public func affinity(of task: String) -> String? { nil }
    public func helpers(of task: String) -> Int { 0 }
    public var verifiesBLASResults: Bool { false }
    public func reopen(task: String, reason: String) throws {}
    public func recomputation(of task: String) throws -> @Sendable () throws -> [ResultPayload] {
        throw JobFailed("this workload cannot compute \(task) on the coordinator")
    }
    public var artifactRoot: String { "" }
    public var artifactToken: String { "" }
    public var storedArtifacts: @Sendable (_ sha256: String, _ size: UInt64) -> [UInt8]? { { _, _ in nil } }
    public func servableFile(_ sha256: String) -> (path: String, size: UInt64)? {
        modelFiles.first { $0.sha256 == sha256 }.map { ($0.path, $0.size) }
    }
}

extension ClusterJob: ClusterWorkload {
    public var jobID: String { spec.digest }
    public var taskIDs: [String] { dag.tasks.map(\.id.description) }
    public var doneTasks: [String: CoordinatorCore.DoneTask] {
        done.reduce(into: [:]) { $0[$1.key] = CoordinatorCore.DoneTask(digest: $1.value, producer: producers[$1.key] ?? "") }
    }
    public var artifactRoot: String { artifacts.root }
    public var artifactToken: String { artifacts.token }

    public var storedArtifacts: @Sendable (_ sha256: String, _ size: UInt64) -> [UInt8]? {
        { [artifacts] sha256, size in SHA256Stream.isHexDigest(sha256) ? artifacts.get(sha256, size: size) : nil }
    }

    public func dependencies(of task: String) -> [String] {
        guard let id = TaskID(task), let t = dag.task(id) else { return [] }
        return t.dependencies.map(\.description)
    }

    public func affinity(of task: String) -> String? {
        TaskID(task).flatMap { dag.task($0)?.affinity }
    }

    public func helpers(of task: String) -> Int {
        TaskID(task).flatMap { dag.task($0)?.helpers } ?? 0
    }

    public var verifiesBLASResults: Bool { verifyFraction > 0 && spec.runsCalibration }

    /// A seeded fraction (`verifyFraction`) of the tasks, the same on every run and resume,
    /// and, when any are verified, every task its phase says decides too much to trust
    /// unchecked (a search's selections).
    public func verifies(task: String) -> Bool {
        if verifyFraction > 0, let id = TaskID(task), let phase = dag.phase(of: id) as? AlwaysVerified, phase.alwaysVerified(id) { return true }
        return TaskSample.contains(task, fraction: verifyFraction, seed: spec.seed)
    }

    public func servableFile(_ sha256: String) -> (path: String, size: UInt64)? {
        if let f = modelFiles.first(where: { $0.sha256 == sha256 }) { return (f.path, f.size) }
        // Artifacts are named by their digest; only well-formed names reach the disk.
        guard SHA256Stream.isHexDigest(sha256) else { return nil }
        let path = artifacts.path(for: sha256)
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int else { return nil }
        return (path, UInt64(size))
    }

    /// The task and the phase that owns it, nil for an id this job does not have.
    private func owned(_ task: String) -> (id: TaskID, phase: any Phase)? {
        guard let id = TaskID(task), dag.task(id) != nil, let phase = dag.phase(of: id) else { return nil }
        return (id, phase)
    }

    public func work(for task: String) throws -> Prune_V1_Assign.OneOf_Work? {
        guard let (id, phase) = owned(task) else { return nil }
        return try phase.work(for: id, outputs: outputs)
    }

    /// Checks the payloads with the task's phase (count, sizes, parseable contents) and
    /// stores each as an artifact; the result is named by its outputs' digests.
    public func store(task: String, payloads: [ResultPayload]) throws -> StoredResult {
        guard let (id, phase) = owned(task) else { return .invalid("unknown task \(task)") }
        let names = phase.outputNames(of: id)
        guard payloads.count == names.count else { return .invalid("result of \(task) has \(payloads.count) payloads, expected \(names.count)") }
        if let problem = phase.problem(in: payloads.map(\.bytes), of: id) { return .invalid(problem) }
        var stored: [(name: String, digest: String)] = []
        for (name, payload) in zip(names, payloads) {
            stored.append((name.rawValue, try artifacts.put(payload.bytes, sha256: payload.sha256, durable: !phase.isVolatile(name))))
        }
        return .stored(digest: ResultDigests.format(stored))
    }

    public func commit(task: String, worker: String, attempt: Int, digest: String, seconds: Double) throws {
        let volatile = owned(task).map { id, phase in phase.outputNames(of: id).allSatisfy(phase.isVolatile) } ?? false
        try ledger.markDone(task: task, worker: worker, attempt: attempt, resultSHA256: digest, seconds: seconds, at: Date().timeIntervalSince1970,
                            durable: !volatile)
        recordDone(task, digest: digest)
        if let id = TaskID(task) { try collectFinished(after: id) }
    }

    public func reopen(task: String, reason: String) throws {
        ledger.log(.init(time: Date().timeIntervalSince1970, kind: "reopen", task: task, worker: nil, detail: reason))
        try ledger.markPending(task: task, cause: reason)
        try forgetDone(task)
    }

    public func recomputation(of task: String) throws -> @Sendable () throws -> [ResultPayload] {
        guard let work = try work(for: task) else { throw JobFailed("unknown task \(task)") }
        let files = modelFiles, store = artifacts
        return {
            let inputs = CoordinatorInputs(modelFiles: files, artifacts: store)
            return try PhaseRegistry.run(work, task: task, inputs: inputs).payloads.map { p in
                ResultPayload(bytes: p.bytes, sha256: p.bytes.withUnsafeBytes { SHA256Stream.hex($0) })
            }
        }
    }
}

/// A seeded, stable sample of tasks: a task is in it when the hash of (seed, task id)
/// falls below `fraction`. The same tasks on every run, whatever the order or workers.
public enum TaskSample {
    public static func contains(_ task: String, fraction: Double, seed: UInt64) -> Bool {
        guard fraction > 0 else { return false }
        guard fraction < 1 else { return true }
        let digest = Array("verify:\(seed):\(task)".utf8).withUnsafeBytes { SHA256Stream.hex($0) }
        let value = UInt64(digest.prefix(16), radix: 16) ?? 0
        return Double(value) / 18446744073709551616.0 < fraction
    }
}

/// Empty tasks through the whole loop (assign, result, durable ledger row, ack): the
/// coordinator-overhead benchmark.
public final class NoopWorkload: ClusterWorkload {
    public let jobID = "noop"
    public let settings: Settings
    public let ledger: Ledger
    public let modelFiles: [Prune_V1_ModelFile] = []
    public let taskIDs: [String]
    public private(set) var doneTasks: [String: CoordinatorCore.DoneTask] = [:]

    public init(tasks: Int, ledgerPath: String, settings: Settings = Settings()) throws {
        self.settings = settings
        taskIDs = (0..<tasks).map { "noop:\($0)" }
        ledger = try Ledger(path: ledgerPath)
        try ledger.insertTasks(taskIDs.map { ($0, "noop", []) })
    }

    public func work(for task: String) -> Prune_V1_Assign.OneOf_Work? {
        .noop(Prune_V1_NoopTask())
    }

    public func store(task: String, payloads: [ResultPayload]) throws -> StoredResult {
        .stored(digest: "-")
    }

    public func commit(task: String, worker: String, attempt: Int, digest: String, seconds: Double) throws {
        try ledger.markDone(task: task, worker: worker, attempt: attempt, resultSHA256: digest, seconds: seconds, at: Date().timeIntervalSince1970)
        doneTasks[task] = CoordinatorCore.DoneTask(digest: digest, producer: "")
    }
}
