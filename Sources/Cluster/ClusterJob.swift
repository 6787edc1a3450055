import Engine
import Foundation
import Protocol
import Pruning
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// A job as the coordinator holds it: spec, checkpoint headers, plan, tasks, ledger and
/// artifact store, opened fresh (`prepare`) or from a job directory (`resume`).
public final class ClusterJob {
    public let spec: JobSpec
    public let checkpoint: Checkpoint
    public let plan: Plan
    /// The job's phases and their tasks (`PhaseRegistry`).
    public let dag: JobDAG
    public let directory: JobDirectory
    public let ledger: Ledger
    public let artifacts: ArtifactStore
    /// Checkpoint files with their digests, as announced to workers.
    public var modelFiles: [Prune_V1_ModelFile] { dag.job.modelFiles }
    /// Tasks done (with their result digests), as `ResultDigests` text.
    public private(set) var done: [String: String] = [:]
    /// Each done task's outputs as parsed from its recorded result (the record they came
    /// from: a re-run's new record parses again).
    var parsedResults: [String: (record: String, outputs: [(name: String, digest: String)])] = [:]
    /// Sizes of artifacts known to be in the store, by digest (`ArtifactOutputs.ref`).
    var artifactSizes: [String: Int] = [:]
    /// Done tasks whose transient outputs (activations, statistics) were deleted once
    /// every task reading them was done.
    var collected: Set<String> = []
    /// How many outputs of done tasks name each digest (a collected task's transient
    /// outputs no longer count): a collected output's file goes only when no other output
    /// holds the same bytes. Kept as counts, so a collection costs its own outputs, not a
    /// pass over every done task (a training job has thousands).
    var holders: [String: Int] = [:]
    /// The worker identity (principal) whose result each done task holds, where known.
    public private(set) var producers: [String: String] = [:]
    /// The fraction of tasks run twice and compared before they are accepted (the spec's
    /// `verify`, or the default of the transport: see `JobSpec.defaultVerify`).
    public private(set) var verifyFraction = 0.0

    /// Sets the verified fraction before the coordinator starts: the spec's `verify`, or
    /// the default for where the workers run.
    public func configureVerification(remoteWorkers: Bool) {
        verifyFraction = spec.verify ?? JobSpec.defaultVerify(remoteWorkers: remoteWorkers)
    }
    public let settings: Settings
    /// The heartbeat of a Llama fine-tune's cluster, unless another was set.
    public static let fineTuneHeartbeatMs = 3000
    /// Whether this run created the job directory (removed again if the run fails on bad input).
    public let createdDirectory: Bool
    /// When this coordinator opened the job (for the report's phase times).
    public let openedAt = Date()
    /// Held while this process coordinates the job.
    var lock: JobLock?

    public var ledgerPath: String { (directory.path as NSString).appendingPathComponent("ledger.sqlite") }

    private init(spec: JobSpec, checkpoint: Checkpoint, plan: Plan, calibration: CalibrationPlan?, directory: JobDirectory, ledger: Ledger,
                 modelFiles: [Prune_V1_ModelFile], settings: Settings, created: Bool) throws {
        self.spec = spec
        self.checkpoint = checkpoint
        self.plan = plan
        self.directory = directory
        self.ledger = ledger
        var settings = settings
        // A Llama fine-tune's coordinator checks every training state (12 bytes a trained
        // weight: 1.27 GB for SmolLM2) and shard gradient on its event loop (reading and
        // hashing them happens off it); when it did all of it on the loop, the default 1 s
        // heartbeat (three missed: lost) dropped its workers now and then. 3 s is the margin.
        if spec.train?.tokens != nil, settings.heartbeatMs == Settings().heartbeatMs { settings.heartbeatMs = ClusterJob.fineTuneHeartbeatMs }
        self.settings = settings
        createdDirectory = created
        dag = try JobDAG(job: JobContext(spec: spec, plan: plan, checkpoint: checkpoint, maxWeightsPerTask: settings.maxWeightsPerTask,
                                         calibration: calibration, modelFiles: modelFiles))
        var store = try ArtifactStore(root: (directory.path as NSString).appendingPathComponent("artifacts"))
        // Workers that find this token in the directory store their results there.
        try store.publishToken()
        artifacts = store
    }

    /// Validates everything (checkpoint, plan, config, tokenizer, calibration and
    /// evaluation data, the output directory) before writing anything, then creates (or
    /// continues) the job directory and ledger. A job directory holding the same spec
    /// continues where it stopped; one holding another spec's job that finished no work
    /// is replaced.
    public static func prepare(spec: JobSpec, settings: Settings) throws -> ClusterJob {
        let checkpoint = try Checkpoint(path: spec.model)
        let plan = try Plan(spec: spec, checkpoint: checkpoint)
        try LocalRunner(spec: spec).refuseNonFinite(checkpoint)
        // Calibration inputs (config.json, tokenizer, data) and evaluation data are
        // checked before anything is written.
        let calibration = spec.runsCalibration ? try CalibrationPlan(spec: spec, plan: plan, checkpoint: checkpoint) : nil
        let calibrationData = try spec.calibration.map { try SHA256Stream.hex(file: $0.data) }
        try Evaluator.checkInputs(spec: spec, modelDirectory: checkpoint.directory)
        let directory = JobDirectory(path: spec.output)
        try directory.validate(for: spec)
        let modelFiles = try JobContext.digests(checkpoint)
        let claim = try directory.claim(for: spec)
        plan.printWarnings()
        do {
            let ledgerPath = (spec.output as NSString).appendingPathComponent("ledger.sqlite")
            let ledger = try Ledger(path: ledgerPath)
            // The spec's digest is written last: a ledger without it never finished being
            // set up (a crash in between) and is set up again.
            let existing = try ledger.jobValue("spec_sha256") != nil
            var settings = settings
            if existing, let recorded = try ledger.jobValue("task_weights").flatMap(Int.init) {
                // The task split is part of the job: a continued job keeps its own.
                settings.maxWeightsPerTask = recorded
            }
            let job = try ClusterJob(spec: spec, checkpoint: checkpoint, plan: plan, calibration: calibration, directory: directory,
                                     ledger: ledger, modelFiles: modelFiles, settings: settings, created: claim.created)
            job.lock = claim.lock
            if existing {
                try job.verifyRecorded()
            } else {
                try ledger.clear()
                try ledger.insertTasks(try job.dag.tasks.map { task in
                    // A task that needs no other's output has its work known now: recorded.
                    let work = task.dependencies.isEmpty ? try job.dag.phase(of: task.id)!.work(for: task.id, outputs: job.outputs) : nil
                    var assign = Prune_V1_Assign()
                    assign.work = work
                    return (task.id.description, task.id.phase, work == nil ? [] : try assign.serializedBytes())
                })
                try ledger.setJobValue("task_weights", String(settings.maxWeightsPerTask))
                try ledger.setJobValue("spec_base", (spec.baseDirectory as NSString).standardizingPath)
                try ledger.setJobValue("model_files", try modelFilesJSON(modelFiles))
                if let calibrationData { try ledger.setJobValue("calibration_data_sha256", calibrationData) }
                if let train = job.trainingData { try ledger.setJobValue("train_data_sha256", train.dataDigest) }
                try ledger.setJobValue("state", "running")
                try ledger.setJobValue("spec_sha256", spec.digest)
            }
            try job.loadDone()
            return job
        } catch {
            // A first run that cannot start leaves nothing behind.
            if claim.created { try? FileManager.default.removeItem(atPath: spec.output) }
            throw error
        }
    }

    /// Reopens a job directory after a stop or crash. Refuses when the spec or the
    /// checkpoint no longer match what the ledger recorded.
    public static func resume(directory path: String, settings: Settings) throws -> ClusterJob {
        let directory = JobDirectory(path: path)
        let ledgerPath = (path as NSString).appendingPathComponent("ledger.sqlite")
        let ledger = try Ledger(path: ledgerPath, create: false)
        guard let recordedDigest = try ledger.jobValue("spec_sha256"), let base = try ledger.jobValue("spec_base") else {
            throw LedgerError("\(path): the job never started (its ledger records no job); start it again with prune run")
        }
        guard let data = try? SmallFile.read(directory.specPath, limit: JobSpec.Limits.specBytes), let text = String(data: data, encoding: .utf8) else {
            throw SpecError("\(directory.specPath): cannot read the job spec")
        }
        let spec = try JobSpec.parse(yaml: text, file: directory.specPath, baseDirectory: base, bytes: [UInt8](data))
        guard spec.digest == recordedDigest else {
            throw SpecError("\(directory.specPath): the spec changed since the job started (sha256 \(spec.digest.prefix(12))…, recorded \(recordedDigest.prefix(12))…); start a new job instead")
        }
        let checkpoint = try Checkpoint(path: spec.model)
        let plan = try Plan(spec: spec, checkpoint: checkpoint)
        let calibration = spec.runsCalibration ? try CalibrationPlan(spec: spec, plan: plan, checkpoint: checkpoint) : nil
        let lock = try JobLock(directory: path)
        // A crash during assembly leaves a staging directory: gone before anything else,
        // so a resume on a tight disk has room.
        directory.removeLeftovers()
        var settings = settings
        if let recorded = try ledger.jobValue("task_weights").flatMap(Int.init) { settings.maxWeightsPerTask = recorded }
        let job = try ClusterJob(spec: spec, checkpoint: checkpoint, plan: plan, calibration: calibration, directory: directory, ledger: ledger,
                                 modelFiles: try JobContext.digests(checkpoint), settings: settings, created: false)
        job.lock = lock
        try job.verifyRecorded()
        try job.loadDone()
        return job
    }

    private static func modelFilesJSON(_ files: [Prune_V1_ModelFile]) throws -> String {
        let map = Dictionary(uniqueKeysWithValues: files.map { ($0.name, $0.sha256) })
        let data = try JSONSerialization.data(withJSONObject: map, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    /// The recorded spec, checkpoint digests and task list must match this job.
    private func verifyRecorded() throws {
        guard try ledger.jobValue("spec_sha256") == spec.digest else {
            throw SpecError("\(directory.path): the ledger belongs to another spec")
        }
        if try ledger.jobValue("model_files") != ClusterJob.modelFilesJSON(modelFiles) {
            throw CheckpointError(file: spec.model, "the checkpoint changed since the job started (file digests differ from the ledger's); start a new job instead")
        }
        if let data = try calibrationDataDigest(), try ledger.jobValue("calibration_data_sha256") != data {
            throw SpecError("\(spec.calibration!.data): the calibration data changed since the job started; start a new job instead")
        }
        if let train = trainingData, try ledger.jobValue("train_data_sha256") != train.dataDigest {
            throw SpecError("\(spec.train?.data ?? "train.data"): the training data changed since the job started; start a new job instead")
        }
        let recorded = try ledger.tasks().map(\.id)
        guard recorded == taskIDs else {
            throw LedgerError("\(ledgerPath): the recorded tasks differ from this build's plan")
        }
    }

    /// Loads finished tasks, re-verifying each artifact by digest (a collected task's
    /// transient outputs are gone by design); a missing or corrupt artifact puts its task
    /// back in the queue.
    private func loadDone() throws {
        done = [:]
        producers = [:]
        collected = try ledger.collectedTasks()
        let principals = Dictionary(try ledger.workers().map { ($0.id, $0.principal) }, uniquingKeysWith: { a, _ in a })
        for row in try ledger.tasks() where row.state == "done" {
            if let worker = row.worker { producers[row.id] = principals[worker] ?? worker }
            let phase = TaskID(row.id).flatMap { dag.phase(of: $0) }
            let wasCollected = collected.contains(row.id)
            guard let digest = row.resultSHA256,
                  ResultDigests.parse(digest).allSatisfy({ (wasCollected && phase?.isTransient(OutputName($0.name)) == true) || artifacts.verify($0.digest) }) else {
                try ledger.markPending(task: row.id, cause: "artifact missing or corrupt on resume")
                collected.remove(row.id)
                continue
            }
            done[row.id] = digest
        }
        holders = [:]
        for (id, digest) in done { hold(id, digest, by: 1) }
    }

    /// Counts (or uncounts) the outputs of a done task in `holders`.
    func hold(_ task: String, _ digest: String, by delta: Int) {
        let owner = TaskID(task).flatMap { dag.phase(of: $0) }
        let wasCollected = collected.contains(task)
        for output in ResultDigests.parse(digest) where !(wasCollected && owner?.isTransient(OutputName(output.name)) == true) {
            holders[output.digest, default: 0] += delta
        }
    }

    func recordDone(_ task: String, digest: String) {
        if let old = done[task] { hold(task, old, by: -1) }
        done[task] = digest
        hold(task, digest, by: 1)
    }

    func forgetDone(_ task: String) throws {
        if let old = done[task] { hold(task, old, by: -1) }
        done[task] = nil
        producers[task] = nil
        if collected.remove(task) != nil { try ledger.setCollected(task, false) }
    }

    /// The job's training phase, whose examples a resume must find unchanged.
    var trainingData: TrainPhase? { dag.phases.compactMap { $0 as? TrainPhase }.first }

    /// sha256 of the calibration data file (nil for data-free methods).
    func calibrationDataDigest() throws -> String? {
        guard let path = spec.calibration?.data else { return nil }
        return try SHA256Stream.hex(file: path)
    }

    /// The outputs of done tasks, as the phases read them.
    var outputs: ArtifactOutputs { ArtifactOutputs(job: self) }

    /// Writes out/ from the phases' outputs (staging directory, one rename).
    public func assemble(quiet: Bool) throws -> Manifest {
        let staging = try directory.makeStaging()
        do {
            let assembleStart = Date()
            let assembler = try dag.writer(outputs: outputs)
            let manifest = try assembler
                .write(to: staging, progress: ProgressReporter(label: "assemble", total: checkpoint.shards.count, quiet: quiet))
            try directory.publish(staging: staging)
            var phases = [JobReport.Phase(name: spec.runsCalibration ? "calibrate + prune (workers)" : "prune (workers)",
                                          seconds: assembleStart.timeIntervalSince(openedAt)),
                          JobReport.Phase(name: "assemble", seconds: Date().timeIntervalSince(assembleStart))]
            try LocalRunner.report(spec: spec, modelDirectory: checkpoint.directory, manifest: manifest, job: directory,
                                   phases: &phases, warnings: plan.warnings, quiet: quiet)
            try ledger.setJobValue("state", "complete")
            return manifest
        } catch {
            try? FileManager.default.removeItem(atPath: staging)
            // Every task is done, but there is no output: status must say so.
            try? ledger.setJobValue("state", "failed")
            try? ledger.setJobValue("error", "assembly failed: \(error)")
            throw error
        }
    }
}
