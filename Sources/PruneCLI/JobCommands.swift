import ArgumentParser
import Models
import Cluster
import Engine
import Foundation
import Logging
import Pruning
import Tensors
import Protocol
import ZeroMQ

// The commands about one job: run it, resume it, watch it, check its output.

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a pruning job described by a YAML spec (see docs/job-spec.md).",
        discussion: "With --workers N (default 2) a coordinator runs here with N worker processes over ipc://; the job directory keeps a ledger, so `prune resume` continues a stopped job. --workers 0 runs everything in this process.")

    @Argument(help: "The job spec, e.g. job.yaml.")
    var spec: String

    @Option(name: .shortAndLong, help: "Worker processes to start (0: run in this process).")
    var workers = 2

    @OptionGroup var common: JobOptions
    var quiet: Bool { common.quiet }

    func run() throws {
        let job = try JobSpec.load(path: spec)
        let start = Date()
        if workers == 0 {
            var local = LocalRunner(spec: job, quiet: quiet)
            local.maxWeightsPerTask = common.settings.maxWeightsPerTask
            let summary = try local.run()
            report(summary.manifest, out: summary.outDirectory, seconds: summary.seconds)
            return
        }
        guard workers > 0 else { throw ValidationError("--workers must be 0 or more") }
        let settings = common.settings
        let clusterJob = try ClusterJob.prepare(spec: job, settings: settings)
        let manifest = try EmbeddedCluster.run(job: clusterJob, workers: workers, maxRestarts: common.tuning.maxRestarts, quiet: quiet,
                                               logger: coordinatorLogger(quiet: quiet))
        report(manifest, out: clusterJob.directory.outPath, seconds: Date().timeIntervalSince(start))
    }
}

/// The part of report.json the summary line reads (the rest, with its own key spellings,
/// need not decode for it: a training or structured job's report once hid its evaluation).
private struct EvaluationOnly: Decodable {
    let evaluation: JobReport.Evaluation?
    let speed: JobReport.Speed?
}

/// One summary line after a job, ending with the evaluation when the job evaluated.
func report(_ manifest: Manifest, out: String, seconds: Double) {
    let t = manifest.totals
    var line = "wrote \(out): \(manifest.tensors.values.filter(\.pruned).count) tensors pruned, "
        + String(format: "%.2f%% of their weights zero; sparse/ is %.3f× the size of dense/ (pruned tensors alone %.3f×); %.2fs",
                 100 * Double(t.zeros) / Double(max(t.prunedParameters, 1)), t.sparseToDenseRatio, t.prunedSparseToDenseRatio, seconds)
    if let s = manifest.structure {
        line = "wrote \(out): \(manifest.tensors.values.filter(\.pruned).count) tensors made smaller, \(s.keptText(sparsity: manifest.sparsity)) kept a block; "
            + String(format: "%d → %d parameters (%.1f%% fewer), dense/ %d bytes; %.2fs", s.parametersBefore, s.parametersAfter,
                     100 * Double(s.parametersBefore - s.parametersAfter) / Double(max(s.parametersBefore, 1)), t.denseBytes, seconds)
    }
    let reportPath = ((out as NSString).deletingLastPathComponent as NSString).appendingPathComponent("report.json")
    let read = FileManager.default.contents(atPath: reportPath).flatMap { try? JobReport.decoder().decode(EvaluationOnly.self, from: $0) }
    if let evaluation = read?.evaluation {
        if evaluation.metric == "perplexity" {
            line += String(format: "; perplexity %.3f → %.3f (%.2f× dense)", evaluation.dense, evaluation.pruned, evaluation.pruned / evaluation.dense)
        } else {
            line += String(format: "; accuracy %.4f → %.4f (%+.2f points)", evaluation.dense, evaluation.pruned, 100 * (evaluation.pruned - evaluation.dense))
        }
    }
    if let speed = read?.speed {
        line += String(format: "; decode %.2f → %.2f tokens/s (%.2f× as fast)", speed.dense.decodeTokensPerSecond, speed.pruned.decodeTokensPerSecond,
                       speed.pruned.decodeTokensPerSecond / speed.dense.decodeTokensPerSecond)
    }
    print(line)
}

/// The coordinator's log: `coordinator: …` lines on stderr; with -q only warnings and
/// worse (a refused result, a quarantined worker).
func coordinatorLogger(quiet: Bool) -> Logger {
    LineLogHandler.logger("coordinator", level: quiet ? .warning : .info)
}


struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue a stopped or crashed job from its job directory, without redoing finished tasks.",
        discussion: "Refuses when the spec or the checkpoint changed since the job started. Finished tasks whose artifacts fail their digest are redone.")

    @Argument(help: "The job directory.")
    var job: String

    @Option(name: .shortAndLong, help: "Worker processes to start here.")
    var workers = 2

    @Option(help: "Bind this endpoint for external workers instead of starting local ones (tcp://HOST:PORT).")
    var bind: String?

    @OptionGroup var security: CoordinatorSecurity

    @OptionGroup var common: JobOptions
    var quiet: Bool { common.quiet }

    func run() throws {
        let settings = common.settings
        let start = Date()
        let clusterJob = try ClusterJob.resume(directory: job, settings: settings)
        if !quiet { FileHandle.standardError.write(Data("resuming: \(clusterJob.done.count)/\(clusterJob.taskIDs.count) tasks already done\n".utf8)) }
        let manifest: Manifest
        if let bind {
            manifest = try runCoordinator(clusterJob, bind: bind, security: security, quiet: quiet)
        } else {
            manifest = try EmbeddedCluster.run(job: clusterJob, workers: max(workers, 1), maxRestarts: common.tuning.maxRestarts, quiet: quiet,
                                               logger: coordinatorLogger(quiet: quiet))
        }
        report(manifest, out: clusterJob.directory.outPath, seconds: Date().timeIntervalSince(start))
    }
}


struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a job's progress from its ledger: tasks per phase and state, workers, ETA.")

    @Argument(help: "The job directory.")
    var job: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let status = try JobStatus.read(directory: job)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(status), as: UTF8.self))
        } else {
            print(status.render())
        }
    }
}


struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify a pruned output against its input: names, shapes, dtypes, zeros, patterns, digests, sparse/ rebuilds dense/.",
        discussion: "Exit 0 when every check passes, 1 when one fails (one line per problem), 2 when an input cannot be read.")

    @Argument(help: "The original checkpoint (directory or .safetensors file).")
    var original: String

    @Argument(help: "The job directory, or its out/ directory.")
    var output: String

    @Option(help: "Held-out data to compare the original and pruned models on: text or token ids (perplexity, Llama-family models), or labelled examples (top-1 accuracy, MLP models with mlp.json: an IDX images file, a directory with t10k-images-idx3-ubyte[.gz], or .safetensors with inputs and labels).")
    var eval: String?

    @Option(help: "Evaluation windows (perplexity; default 32) or examples (accuracy: the first N; default all).")
    var evalSamples: Int?

    @Option(help: "Tokens per evaluation window (perplexity only).")
    var evalTokens = 256

    @Option(help: "Recompute the masks of N pruned tensors of a data-free method (magnitude, random) here and compare: catches a worker that pruned the wrong weights with the right counts.")
    var recompute: Int?

    @Flag(name: .shortAndLong, help: "No progress output.")
    var quiet = false

    func run() throws {
        if let n = recompute, n < 1 { throw ValidationError("--recompute must be 1 or more") }
        var report = try Checker.check(original: original, output: output)
        if let n = recompute {
            // The job's seed (for `random`) is in its job.yaml, beside out/.
            let outDir = Checker.outputDirectory(output)
            let specPath = ((outDir as NSString).deletingLastPathComponent as NSString).appendingPathComponent("job.yaml")
            let seed = JobSpec.seed(ofSpecAt: specPath)
            let (checked, failures) = try Checker.recompute(original: original, output: output, count: n, seed: seed)
            report.failures += failures
            print("recomputed \(checked.count) tensor mask(s) here" + (checked.isEmpty ? " (no tensor was pruned by a data-free method)" : ""))
        }
        for f in report.failures { print("FAIL \(f)") }
        if let eval {
            if let n = evalSamples, n < 1 { throw ValidationError("--eval-samples must be 1 or more") }
            let source = try Checkpoint(path: original).directory
            let outDir = Checker.outputDirectory(output)
            // Perplexity for a Llama-family model (config.json), accuracy for an MLP (mlp.json).
            let comparison = try Evaluator.compare(original: source, pruned: (outDir as NSString).appendingPathComponent("dense"),
                                                   data: eval, samples: evalSamples, tokens: evalTokens, quiet: quiet)
            print(comparison.summary)
        }
        if report.passed, report.structured {
            print("check passed: \(report.tensorsChecked) tensors, \(report.prunedTensors) made smaller; every tensor rebuilt from the input and the kept units bit-exactly; the config loads with the smaller shapes")
        } else if report.passed {
            print("check passed: \(report.tensorsChecked) tensors, \(report.prunedTensors) pruned, \(report.zeros) zeros verified; sparse/ rebuilds dense/ bit-exactly")
        } else {
            print("check failed: \(report.failures.count) problem(s)")
            throw CheckFailed(code: ExitStatus.checkFailed)
        }
    }
}


struct Densify: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Rebuild a dense checkpoint from a sparse/ directory, bit-exact with dense/.")

    @Argument(help: "The sparse/ directory of a job's output.")
    var sparse: String

    @Argument(help: "Where to write the dense checkpoint (new or empty directory).")
    var output: String

    func run() throws {
        try Densifier.densify(sparseDirectory: sparse, to: output)
        print("wrote \(output)")
    }
}

