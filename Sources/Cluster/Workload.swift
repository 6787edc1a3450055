import Foundation
import Protocol
import Pruning
import Tensors

/// What a coordinator schedules: a list of tasks, the work each one carries on the wire,
/// and how a result is made durable. A pruning job (`ClusterJob`) is one workload; the
/// coordinator benchmark's empty tasks (`NoopWorkload`) are another.
public protocol ClusterWorkload: AnyObject {
    /// Identifies the job to workers (the spec's sha256 for a pruning job).
    var jobID: String { get }
    var settings: Settings { get }
    var ledger: Ledger { get }
    /// Checkpoint files workers may read locally or pull in chunks.
    var modelFiles: [Prune_V1_ModelFile] { get }
    /// Every task, in queue order.
    var taskIDs: [String] { get }
    /// Tasks already done when the coordinator starts (a resumed job).
    var doneTaskIDs: Set<String> { get }
    /// Tasks that must be done before `task` may start (the job's DAG).
    func dependencies(of task: String) -> [String]
    /// Where workers that see the coordinator's disk find artifacts ("" when none).
    var artifactRoot: String { get }
    /// A file a worker may pull in chunks, by sha256: a checkpoint file or an artifact.
    func servableFile(_ sha256: String) -> (path: String, size: UInt64)?
    /// The work an Assign carries for a task; nil for an unknown task. Throws when the
    /// task's inputs are unusable (the job cannot go on).
    func work(for task: String) throws -> Prune_V1_Assign.OneOf_Work?
    /// The token a worker must find in `artifactRoot/.coordinator-token` before it stores
    /// results there itself ("" when workers may not).
    var artifactToken: String { get }
    /// A payload a worker stored in the artifact directory: its bytes when present with
    /// this size and sha256, else nil.
    func storedArtifact(sha256: String, size: UInt64) -> [UInt8]?
    /// Validates a result and makes it durable (artifact fsync'd, ledger committed).
    /// Returns nil when done, or why the result is unusable (a failed attempt).
    func persist(task: String, worker: String, result: Prune_V1_Result, payloads: [ResultPayload]) throws -> String?
}

/// One output of a task as the coordinator holds it: its bytes (from a frame, or read
/// back from the artifact directory) and their sha256, already verified.
public struct ResultPayload {
    public let bytes: [UInt8]
    public let sha256: String

    public init(bytes: [UInt8], sha256: String) {
        self.bytes = bytes
        self.sha256 = sha256
    }
}

extension ClusterWorkload {
    public func dependencies(of task: String) -> [String] { [] }
    public var artifactRoot: String { "" }
    public var artifactToken: String { "" }
    public func storedArtifact(sha256: String, size: UInt64) -> [UInt8]? { nil }
    public func servableFile(_ sha256: String) -> (path: String, size: UInt64)? {
        modelFiles.first { $0.sha256 == sha256 }.map { ($0.path, $0.size) }
    }
}

extension ClusterJob: ClusterWorkload {
    public var jobID: String { spec.digest }
    public var taskIDs: [String] { calibration?.tasks.map(\.id) ?? tasks.map(\.id) }
    public var doneTaskIDs: Set<String> { Set(done.keys) }
    public var artifactRoot: String { artifacts.root }
    public var artifactToken: String { artifacts.token }

    public func storedArtifact(sha256: String, size: UInt64) -> [UInt8]? {
        guard SHA256Stream.isHexDigest(sha256), let bytes = artifacts.get(sha256), UInt64(bytes.count) == size else { return nil }
        return bytes
    }

    public func dependencies(of task: String) -> [String] {
        guard let calibration, let t = calibrationTaskByID[task] else { return [] }
        return calibration.dependencies(of: t).map(\.id)
    }

    public func servableFile(_ sha256: String) -> (path: String, size: UInt64)? {
        if let f = modelFiles.first(where: { $0.sha256 == sha256 }) { return (f.path, f.size) }
        // Artifacts are named by their digest; only well-formed names reach the disk.
        guard SHA256Stream.isHexDigest(sha256) else { return nil }
        let path = artifacts.path(for: sha256)
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int else { return nil }
        return (path, UInt64(size))
    }

    public func work(for task: String) throws -> Prune_V1_Assign.OneOf_Work? {
        if let t = calibrationTaskByID[task] { return try calibrationWork(t) }
        return taskByID[task].map { .mask(assignWork($0)) }
    }

    public func persist(task id: String, worker: String, result: Prune_V1_Result, payloads: [ResultPayload]) throws -> String? {
        if let t = calibrationTaskByID[id] { return try persistCalibration(t, worker: worker, result: result, payloads: payloads) }
        guard let task = taskByID[id] else { return "unknown task \(id)" }
        // The mask must have exactly the block's shape.
        guard payloads.count == 1, (try? Mask(rows: task.rowCount, cols: task.tensor.cols, bits: payloads[0].bytes)) != nil else {
            return "result of \(id) is not a \(task.rowCount)×\(task.tensor.cols) mask"
        }
        let digest = try artifacts.put(payloads[0].bytes, sha256: payloads[0].sha256)
        try ledger.markDone(task: id, worker: worker, attempt: Int(result.attempt), resultSHA256: digest,
                            seconds: result.seconds, at: Date().timeIntervalSince1970)
        recordDone(id, digest: digest)
        return nil
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
    public private(set) var doneTaskIDs: Set<String> = []

    public init(tasks: Int, ledgerPath: String, settings: Settings = Settings()) throws {
        self.settings = settings
        taskIDs = (0..<tasks).map { "noop:\($0)" }
        ledger = try Ledger(path: ledgerPath)
        try ledger.insertTasks(taskIDs.map { ($0, "noop", []) })
    }

    public func work(for task: String) -> Prune_V1_Assign.OneOf_Work? {
        .noop(Prune_V1_NoopTask())
    }

    public func persist(task: String, worker: String, result: Prune_V1_Result, payloads: [ResultPayload]) throws -> String? {
        try ledger.markDone(task: task, worker: worker, attempt: Int(result.attempt), resultSHA256: "-", seconds: result.seconds,
                            at: Date().timeIntervalSince1970)
        doneTaskIDs.insert(task)
        return nil
    }
}
