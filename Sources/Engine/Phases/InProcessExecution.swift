import Foundation
import Protocol
import Pruning
import Tensors

/// The in-process executor (`prune run --workers 0`): the job's DAG run task by task in
/// queue order (every task's dependencies come before it). Each task's work is built by
/// its phase, run by its phase (`PhaseRegistry.run`, the code a worker runs), checked by
/// its phase, and its outputs are held in memory; a transient output is dropped as soon as
/// every task that reads it is done. The cluster executor (`ClusterJob`) runs the same
/// phases, so the two give the same bytes.
public final class InProcessExecution {
    public let dag: JobDAG
    /// The outputs of done tasks (assembly reads them).
    public let outputs = MemoryOutputs()

    public init(dag: JobDAG) {
        self.dag = dag
    }

    public func run(progress: ProgressReporter?) throws {
        let inputs = MemoryTaskInputs(job: dag.job, outputs: outputs)
        var done = Set<TaskID>()
        for task in dag.tasks {
            guard let phase = dag.phase(of: task.id) else { throw PruningError("no phase runs \(task.id)") }
            let work = try phase.work(for: task.id, outputs: outputs)
            let produced = try PhaseRegistry.run(work, task: task.id.description, inputs: inputs)
            let names = phase.outputNames(of: task.id)
            guard produced.payloads.map(\.name) == names.map(\.rawValue) else {
                throw PruningError("task \(task.id) produced \(produced.payloads.map(\.name)), expected \(names.map(\.rawValue))")
            }
            if let problem = phase.problem(in: produced.payloads.map(\.bytes), of: task.id) { throw PruningError(problem) }
            outputs.store(task.id, Array(zip(names, produced.payloads.map(\.bytes))))
            done.insert(task.id)
            for finished in task.dependencies + [task.id] where dag.dependents(of: finished).allSatisfy(done.contains) {
                if let owner = dag.phase(of: finished) { outputs.drop(of: finished, where: owner.isTransient) }
            }
            progress?.step(task.id.description)
        }
    }
}

/// Outputs of done tasks held in memory. A reference's "digest" is a key of this store
/// (`mem-N`): the bytes never leave the process, so nothing needs hashing.
public final class MemoryOutputs: OutputStore {
    private var names: [TaskID: [OutputName: String]] = [:]
    private var blobs: [String: [UInt8]] = [:]
    private var next = 0

    func store(_ task: TaskID, _ outputs: [(OutputName, [UInt8])]) {
        var keys: [OutputName: String] = [:]
        for (name, bytes) in outputs {
            next += 1
            let key = "mem-\(next)"
            blobs[key] = bytes
            keys[name] = key
        }
        names[task] = keys
    }

    /// Drops the outputs of `task` that `transient` says nobody reads any more.
    func drop(of task: TaskID, where transient: (OutputName) -> Bool) {
        guard var keys = names[task] else { return }
        for (name, key) in keys where transient(name) {
            blobs[key] = nil
            keys[name] = nil
        }
        names[task] = keys
    }

    public func ref(_ name: OutputName, of task: TaskID) throws -> Prune_V1_ArtifactRef {
        guard let key = names[task]?[name], let bytes = blobs[key] else {
            throw MissingOutput(task: task.description, "output '\(name)' of \(task) is not held")
        }
        var ref = Prune_V1_ArtifactRef()
        ref.sha256 = key
        ref.size = UInt64(bytes.count)
        return ref
    }

    public func bytes(_ name: OutputName, of task: TaskID) throws -> [UInt8] {
        guard let key = names[task]?[name], let bytes = blobs[key] else {
            throw MissingOutput(task: task.description, "output '\(name)' of \(task) is not held")
        }
        return bytes
    }

    public func provide(_ bytes: [UInt8]) throws -> Prune_V1_ArtifactRef {
        // Named by content: what a task keeps of it (`TrainStep.exampleData`) outlives
        // this store, and another job's provided bytes must never pass for these.
        let key = "provided-" + bytes.withUnsafeBytes { SHA256Stream.hex($0) }
        blobs[key] = bytes
        var ref = Prune_V1_ArtifactRef()
        ref.sha256 = key
        ref.size = UInt64(bytes.count)
        return ref
    }

    func blob(_ key: String) -> [UInt8]? { blobs[key] }
}

/// Inputs of a task run in this process: the checkpoint's mapped files and the outputs
/// held in memory.
struct MemoryTaskInputs: TaskInputs {
    let job: JobContext
    let outputs: MemoryOutputs

    func withTensorBytes<R>(_ ref: Prune_V1_TensorRef, _ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard let info = job.checkpoint.info(ref.name), let shard = job.checkpoint.shard(of: ref.name),
              range.lowerBound >= 0, range.upperBound <= info.byteCount else {
            throw PruningError("tensor '\(ref.name)': byte range \(range) outside the checkpoint's tensor")
        }
        // Pages go once used: memory holds what a task computes with, not the checkpoint.
        defer { shard.release(info) }
        return try body(UnsafeRawBufferPointer(rebasing: shard.bytes(info)[range]))
    }

    func artifact(_ ref: Prune_V1_ArtifactRef) throws -> [UInt8] {
        guard let bytes = outputs.blob(ref.sha256) else { throw PruningError("output \(ref.sha256) is not held") }
        return bytes
    }
}
