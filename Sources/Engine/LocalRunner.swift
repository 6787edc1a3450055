import Foundation
import Protocol
import Pruning
import Tensors

/// Runs a job in this process: validate everything, compute masks, assemble outputs
/// into a staging directory, publish it as `out/` in one rename.
public struct LocalRunner {
    public let spec: JobSpec
    public var quiet = false
    /// Row blocks per task, as the cluster splits them (does not change the output).
    public var maxWeightsPerTask = 16 << 20
    /// Bytes per block when assembling (does not change the output).
    public var assemblyBlockBytes = 8 << 20

    public init(spec: JobSpec, quiet: Bool = false) {
        self.spec = spec
        self.quiet = quiet
    }

    public struct Summary: Sendable {
        public let manifest: Manifest
        public let outDirectory: String
        public let seconds: Double
        /// Tasks run (mask tasks, or calibrate and prune tasks).
        public var tasks = 0
    }

    public func run() throws -> Summary {
        let start = Date()
        let checkpoint = try Checkpoint(path: spec.model)
        let plan = try Plan(spec: spec, checkpoint: checkpoint)
        try refuseNonFinite(checkpoint)
        // Calibration inputs (config.json, tokenizer, data) and evaluation data are
        // checked before the job directory is created.
        let calibration = spec.runsCalibration ? try CalibrationPlan(spec: spec, plan: plan, checkpoint: checkpoint) : nil
        try Evaluator.checkInputs(spec: spec, modelDirectory: checkpoint.directory)
        let job = JobDirectory(path: spec.output)
        try job.validate(for: spec)
        let claim = try job.claim(for: spec)
        plan.printWarnings()
        do {
            return try withExtendedLifetime(claim.lock) { try prune(checkpoint: checkpoint, plan: plan, job: job, start: start, calibration: calibration) }
        } catch {
            // A first run that fails leaves no directory behind.
            if claim.created { try? FileManager.default.removeItem(atPath: job.path) }
            throw error
        }
    }

    /// Runs the job's phases in this process (`InProcessExecution`), then assembles out/.
    private func prune(checkpoint: Checkpoint, plan: Plan, job: JobDirectory, start: Date, calibration: CalibrationPlan?) throws -> Summary {
        let context = JobContext(spec: spec, plan: plan, checkpoint: checkpoint, maxWeightsPerTask: maxWeightsPerTask,
                                 calibration: calibration, modelFiles: try JobContext.digests(checkpoint))
        let dag = try JobDAG(job: context)
        let execution = InProcessExecution(dag: dag)
        try execution.run(progress: ProgressReporter(label: "prune", total: dag.tasks.count, quiet: quiet))
        let pruneSeconds = Date().timeIntervalSince(start)
        let staging = try job.makeStaging()
        do {
            var assembler = try dag.writer(outputs: execution.outputs)
            assembler.blockBytes = assemblyBlockBytes
            let manifest = try assembler.write(to: staging, progress: ProgressReporter(label: "assemble", total: checkpoint.shards.count, quiet: quiet))
            try job.publish(staging: staging)
            var phases = [JobReport.Phase(name: spec.runsCalibration ? "calibrate + prune" : "prune", seconds: pruneSeconds),
                          JobReport.Phase(name: "assemble", seconds: Date().timeIntervalSince(start) - pruneSeconds)]
            try LocalRunner.report(spec: spec, modelDirectory: checkpoint.directory, manifest: manifest, job: job, phases: &phases,
                                   warnings: plan.warnings, quiet: quiet)
            var summary = Summary(manifest: manifest, outDirectory: job.outPath, seconds: Date().timeIntervalSince(start))
            summary.tasks = dag.tasks.count
            return summary
        } catch {
            try? FileManager.default.removeItem(atPath: staging)
            throw error
        }
    }

    /// Evaluates dense and pruned models and measures their generation speed when the spec
    /// asks, and writes report.md,
    /// report.json and report.svg into the job directory.
    public static func report(spec: JobSpec, modelDirectory: String, manifest: Manifest, job: JobDirectory,
                              phases: inout [JobReport.Phase], warnings: [String] = [], quiet: Bool) throws {
        var dense: Evaluator.Measurement?, pruned: Evaluator.Measurement?
        if let e = spec.evaluation {
            // Perplexity for a Llama-family model, accuracy for an MLP (mlp.json).
            let started = Date()
            let comparison = try Evaluator.compare(original: modelDirectory, pruned: (job.outPath as NSString).appendingPathComponent("dense"),
                                                   data: e.data, samples: e.samples, tokens: e.tokens, quiet: quiet)
            dense = comparison.dense
            pruned = comparison.pruned
            phases.append(.init(name: "evaluate", seconds: Date().timeIntervalSince(started)))
        }
        var speed: JobReport.Speed?
        if let options = spec.speed {
            // Each model in a process of its own (`GenerationSpeed.childExecutable`), one after the other.
            let started = Date()
            speed = JobReport.Speed(prompt: options.prompt, decode: options.decode, repeats: options.repeats,
                                    dense: try GenerationSpeed.measure(modelDirectory, options: options),
                                    pruned: try GenerationSpeed.measure((job.outPath as NSString).appendingPathComponent("dense"), options: options))
            phases.append(.init(name: "speed", seconds: Date().timeIntervalSince(started)))
        }
        var report = JobReport(manifest: manifest, spec: spec, modelDirectory: modelDirectory, phases: phases, dense: dense, pruned: pruned)
        report.speed = speed
        report.warnings = warnings
        try report.write(to: job.path)
    }

    /// NaN or Inf in any floating tensor ends the job before anything is written, naming
    /// the tensors, unless the spec allows it.
    public func refuseNonFinite(_ checkpoint: Checkpoint) throws {
        guard !spec.allowNonFinite else { return }
        var bad: [String] = []
        for (shard, file) in zip(checkpoint.shardNames, checkpoint.shards) {
            for t in file.tensors where t.dtype.isFloat {
                var nan = 0, inf = 0
                file.forEachRowBlock(t) { _, bytes in
                    let c = TensorPruner.nonFiniteCounts(dtype: t.dtype, bytes: bytes)
                    nan += c.nan
                    inf += c.inf
                }
                if nan + inf > 0 { bad.append("\(shard): tensor '\(t.name)' has \(nan) NaN and \(inf) Inf values") }
            }
        }
        guard bad.isEmpty else {
            let more = bad.count > 3 ? " (and \(bad.count - 3) more tensors)" : ""
            throw SpecError(bad.prefix(3).joined(separator: "; ") + more + "; set allow_nonfinite: true to prune anyway")
        }
    }
}
