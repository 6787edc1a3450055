import ArgumentParser
import Models
import Cluster
import Engine
import Foundation
import Pruning
import Tensors
import Protocol
import ZeroMQ

/// Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.
enum ExitStatus {
    static let checkFailed: Int32 = 1
    static let badInput: Int32 = 2
    /// 128 + SIGTERM, as shells report a process stopped by SIGTERM.
    static let stoppedBySignal: Int32 = 143
}

@main
struct Prune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Prune neural-network checkpoints: magnitude or random, unstructured, per-row, N:M or whole rows.",
        discussion: "Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.",
        subcommands: [Inspect.self, Run.self, Check.self, Densify.self, Resume.self, Status.self,
                      CoordinatorCommand.self, WorkerCommand.self, Keygen.self, ImportGGUF.self, BenchCoordinator.self])

    /// `prune` alone is a usage error: one line naming the commands, exit 2.
    func run() throws {
        throw ValidationError("no command given (one of \(Prune.commandNames.joined(separator: ", ")))")
    }

    /// The subcommands' names, as typed.
    static var commandNames: [String] {
        configuration.subcommands.filter { $0.configuration.shouldDisplay }.map { $0._commandName }
    }

    /// Runs the command. Every failure ends as one stderr line `prune: error: …` (see
    /// `ErrorLine`) and exit 2, except a failed check (1: its lines are on stdout) and a
    /// stop by SIGTERM (143). `--help` prints the help and exits 0.
    static func main() {
        BLASThreads.useDefault()
        var command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            // --help and --version are "errors" that exit 0 after printing.
            if exitCode(for: error) == .success { exit(withError: error) }
            usageFailure(message(for: error), command: commandNameInArguments)
        }
        do {
            try command.run()
        } catch let e as JobStopped {
            FileHandle.standardError.write(Data((ErrorLine.escaped("prune: \(e.description)") + "\n").utf8))
            Foundation.exit(ExitStatus.stoppedBySignal)
        } catch let e as CheckFailed {
            Foundation.exit(e.code)
        } catch let e as ValidationError {
            usageFailure(e.message, command: type(of: command) == Prune.self ? nil : type(of: command)._commandName)
        } catch {
            // `prune help run` and `--help` come back from run() as the parser's errors.
            if exitCode(for: error) == .success { exit(withError: error) }
            fail(describe(error))
        }
    }

    /// The message of any error: the types of this project describe themselves in one
    /// line already; Foundation's file errors name the file and the reason.
    static func describe(_ error: Error) -> String {
        switch error {
        case let e as JobFailed: return "job failed: \(e.description)"
        case let e as CocoaError: return "\(e.filePath ?? "file"): \(CheckpointError.reason(e))"
        case let e as CustomStringConvertible: return e.description
        default:
            let ns = error as NSError
            return ns.localizedFailureReason ?? ns.localizedDescription
        }
    }

    /// The subcommand named on the command line, if any (to point at its --help).
    static var commandNameInArguments: String? {
        CommandLine.arguments.dropFirst().first { commandNames.contains($0) || $0 == BenchCoordinator._commandName }
    }

    /// A usage error: the parser's first line and where to look, e.g.
    /// `prune: error: Missing expected argument '<spec>'; see 'prune run --help'`.
    static func usageFailure(_ message: String, command: String?) -> Never {
        let first = message.split(whereSeparator: \.isNewline).first.map(String.init) ?? "usage error"
        fail(first + "; see 'prune\(command.map { " " + $0 } ?? "") --help'")
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data((ErrorLine.format(message) + "\n").utf8))
        Foundation.exit(ExitStatus.badInput)
    }
}

/// Thrown to exit with a status after output was already printed.
struct CheckFailed: Error {
    let code: Int32
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a checkpoint's tensors: dtype, shape, parameters, bytes, current sparsity.")

    @Argument(help: "Checkpoint directory or .safetensors file.")
    var model: String

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() throws {
        let checkpoint = try Checkpoint(path: model)
        var rows: [[String: Any]] = []
        var totalZeros = 0
        for t in checkpoint.tensors {
            let bytes = checkpoint.bytes(t)
            let zeros = t.dtype.isFloat ? TensorPruner.zeroCount(bytes, elementSize: t.dtype.size) : 0
            totalZeros += zeros
            rows.append(["name": t.name, "dtype": t.dtype.rawValue, "shape": t.shape, "parameters": t.elementCount,
                         "bytes": t.byteCount, "sparsity": t.elementCount == 0 ? 0.0 : Double(zeros) / Double(t.elementCount),
                         "file": checkpoint.shardName(of: t.name)!])
        }
        if json {
            let doc: [String: Any] = ["tensors": rows, "parameters": checkpoint.parameterCount, "bytes": checkpoint.byteCount,
                                      "files": checkpoint.shardNames]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let nameWidth = min(max(checkpoint.tensors.map(\.name.count).max() ?? 4, 4), 70)
        print("\("tensor".padding(toLength: nameWidth, withPad: " ", startingAt: 0))  dtype  shape                 parameters        bytes  sparsity")
        for r in rows {
            let name = (r["name"] as! String).padding(toLength: nameWidth, withPad: " ", startingAt: 0)
            let shape = "[" + (r["shape"] as! [Int]).map(String.init).joined(separator: ", ") + "]"
            let dtype = (r["dtype"] as! String).padding(toLength: 5, withPad: " ", startingAt: 0)
            let shapeColumn = shape.padding(toLength: max(20, shape.count), withPad: " ", startingAt: 0)
            print(String(format: "%@  %@  %@ %11ld %12ld  %7.2f%%", name, dtype, shapeColumn,
                         r["parameters"] as! Int, r["bytes"] as! Int, 100 * (r["sparsity"] as! Double)))
        }
        print(String(format: "%ld tensors in %ld file(s), %ld parameters, %ld bytes, %.2f%% zeros",
                     checkpoint.tensors.count, checkpoint.shards.count, checkpoint.parameterCount, checkpoint.byteCount,
                     100 * Double(totalZeros) / Double(max(checkpoint.parameterCount, 1))))
    }
}

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
                                               log: coordinatorLog(quiet: quiet))
        report(manifest, out: clusterJob.directory.outPath, seconds: Date().timeIntervalSince(start))
    }
}

/// One summary line after a job.
func report(_ manifest: Manifest, out: String, seconds: Double) {
    let t = manifest.totals
    print("wrote \(out): \(manifest.tensors.values.filter(\.pruned).count) tensors pruned, "
          + String(format: "%.2f%% of their weights zero; sparse/ is %.3f× the size of dense/ (pruned tensors alone %.3f×); %.2fs",
                   100 * Double(t.zeros) / Double(max(t.prunedParameters, 1)), t.sparseToDenseRatio, t.prunedSparseToDenseRatio, seconds))
}

/// Coordinator log lines go to stderr, prefixed, unless quiet.
func coordinatorLog(quiet: Bool) -> (String) -> Void {
    { line in if !quiet { FileHandle.standardError.write(Data("coordinator: \(line)\n".utf8)) } }
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
        if report.passed {
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

    @OptionGroup var security: SecurityOptions

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
                                               log: coordinatorLog(quiet: quiet))
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

/// CURVE options shared by coordinator, resume and worker.
struct SecurityOptions: ParsableArguments {
    @Option(help: "This process's CURVE secret key file (from prune keygen).")
    var curveSecret: String?

    @Option(help: "Coordinator: file of worker public keys allowed in, one per line.")
    var allow: String?

    @Option(help: "Worker: the coordinator's public key file.")
    var serverKey: String?

    @Flag(help: "Allow plaintext tcp:// (loopback addresses only).")
    var insecure = false
}

/// Runs a coordinator that waits for external workers on `bind`, then assembles.
func runCoordinator(_ job: ClusterJob, bind: String, security: SecurityOptions, quiet: Bool) throws -> Manifest {
    var curve: CurveServerConfig?
    if let secretPath = security.curveSecret {
        guard let allowPath = security.allow else { throw ValidationError("--curve-secret needs --allow FILE (worker public keys)") }
        let secret = try KeyFiles.readKey(secretPath)
        curve = CurveServerConfig(publicKey: try Curve.publicKey(fromSecret: secret), secretKey: secret,
                                  allowedClients: try KeyFiles.readAllowList(allowPath))
    }
    try EndpointPolicy.check(bind, curve: curve != nil, insecure: security.insecure)
    job.configureVerification(remoteWorkers: bind.hasPrefix("tcp://"))
    let context = try ZMQContext()
    let shell = try CoordinatorShell(workload: job, context: context, endpoints: [bind], curve: curve, quiet: quiet, log: coordinatorLog(quiet: quiet))
    if !quiet { FileHandle.standardError.write(Data("coordinator: listening on \(shell.boundEndpoint)\n".utf8)) }
    if case .failed(let reason) = try shell.run() {
        if reason == CoordinatorShell.stoppedBySignal { throw JobStopped() }
        throw JobFailed(reason)
    }
    return try job.assemble(quiet: quiet)
}

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Coordinate a job for workers on other hosts (see docs/cluster.md).",
        discussion: "tcp:// endpoints use CURVE: --curve-secret (this coordinator's key) and --allow (worker public keys). Plaintext needs --insecure and a loopback address.")

    @Option(help: "The job spec.")
    var job: String

    @Option(help: "Endpoint to bind, e.g. tcp://0.0.0.0:5555.")
    var bind: String

    @OptionGroup var security: SecurityOptions

    @OptionGroup var common: JobOptions
    var quiet: Bool { common.quiet }

    func run() throws {
        let settings = common.settings
        let start = Date()
        // Check the endpoint and read the keys before creating anything.
        try EndpointPolicy.check(bind, curve: security.curveSecret != nil, insecure: security.insecure)
        if let secret = security.curveSecret {
            _ = try KeyFiles.readKey(secret)
            guard let allow = security.allow else { throw ValidationError("--curve-secret needs --allow FILE (worker public keys)") }
            _ = try KeyFiles.readAllowList(allow)
        }
        let clusterJob = try ClusterJob.prepare(spec: try JobSpec.load(path: job), settings: settings)
        let manifest = try runCoordinator(clusterJob, bind: bind, security: security, quiet: quiet)
        report(manifest, out: clusterJob.directory.outPath, seconds: Date().timeIntervalSince(start))
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "worker", abstract: "Run a worker that connects to a coordinator.")

    @Option(help: "The coordinator's endpoint, e.g. tcp://coord.example:5555.")
    var connect: String

    @Option(help: "A name for logs (default: host:pid).")
    var name: String?

    @Option(help: "Directory to search for local copies of the checkpoint files (repeatable).")
    var dataRoot: [String] = []

    @OptionGroup var security: SecurityOptions

    @Flag(help: "Exit when the parent process exits (used by prune run).")
    var exitWithParent = false

    @Option(help: .hidden)
    var protocolVersion: UInt32 = Settings.protocolVersion

    @Flag(help: "Never read checkpoint files locally; pull all bytes from the coordinator.")
    var pullOnly = false

    @Flag(help: "Code the masks this worker sends (when it does not share the job directory): N:M by rank (2:4: 0.67 bits per weight), others range coded near their entropy (90% sparse: 0.47). Pays on links slower than ~100 Mbit/s; see docs/cluster.md.")
    var compressMasks = false

    func run() throws {
        var options = WorkerOptions(endpoint: connect, name: name ?? "\(ProcessInfo.processInfo.hostName):\(getpid())")
        options.dataRoots = dataRoot
        options.exitWithParent = exitWithParent
        options.protocolVersion = protocolVersion
        options.pullOnly = pullOnly
        options.compressMasks = compressMasks
        options.taskDelayMs = Int(ProcessInfo.processInfo.environment["PRUNE_TEST_TASK_DELAY_MS"] ?? "") ?? 0
        options.testExitOnTask = ProcessInfo.processInfo.environment["PRUNE_TEST_EXIT_ON_TASK"] == "1"
        if let lie = ProcessInfo.processInfo.environment["PRUNE_TEST_LIE"], !lie.isEmpty {
            guard let l = WorkerOptions.TestLie(rawValue: lie) else { throw ValidationError("PRUNE_TEST_LIE: unknown value '\(lie)'") }
            options.testLie = l
        }
        if let secretPath = security.curveSecret {
            guard let serverPath = security.serverKey else { throw ValidationError("--curve-secret needs --server-key FILE (the coordinator's public key)") }
            let secret = try KeyFiles.readKey(secretPath)
            options.curveSecretKey = secret
            options.curvePublicKey = try Curve.publicKey(fromSecret: secret)
            options.curveServerKey = try KeyFiles.readKey(serverPath)
        }
        try EndpointPolicy.check(connect, curve: options.curveSecretKey != nil, insecure: security.insecure)
        let worker = try Worker(options: options) { line in
            FileHandle.standardError.write(Data("worker \(options.name): \(line)\n".utf8))
        }
        let code = try worker.run()
        if code != 0 { throw CheckFailed(code: code) }
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a CURVE key pair: NAME.pub (share it) and NAME.key (secret, mode 0600).")

    @Argument(help: "Base name of the key files, e.g. coordinator or worker-3.")
    var name: String

    @Option(help: "Directory to write into.")
    var dir = "."

    func run() throws {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            throw SpecError("\(dir): cannot create: \(CheckpointError.reason(error))")
        }
        let (pub, sec) = try KeyFiles.write(name: name, directory: dir)
        print("wrote \(pub) and \(sec)")
    }
}

/// Options of every command that coordinates a job.
struct JobOptions: ParsableArguments {
    @Option(help: "A task failing this many times fails the job.")
    var maxAttempts = 3

    @Option(help: "A worker whose results are refused this many times is quarantined (no more work in this job).")
    var maxRefusedResults = 3

    @Option(help: "A worker whose attempts fail or vanish this many times is quarantined.")
    var maxWorkerFailures = 5

    @OptionGroup var tuning: TuningOptions

    @Flag(name: .shortAndLong, help: "No progress output.")
    var quiet = false

    func validate() throws {
        guard maxAttempts >= 1, maxRefusedResults >= 1, maxWorkerFailures >= 1 else {
            throw ValidationError("--max-attempts, --max-refused-results and --max-worker-failures must be 1 or more")
        }
    }

    var settings: Settings {
        var s = tuning.settings
        s.maxAttempts = maxAttempts
        s.maxRefusedResults = maxRefusedResults
        s.maxWorkerFailures = maxWorkerFailures
        return s
    }
}

/// Knobs for tests and benchmarks; hidden from --help.
struct TuningOptions: ParsableArguments {
    @Option(help: .hidden)
    var taskWeights: Int?

    @Option(help: .hidden)
    var maxFrameBytes: Int64?

    @Option(help: .hidden)
    var heartbeatMs: Int?

    /// Worker processes `prune run` may restart over the whole run.
    @Option(help: .hidden)
    var maxRestarts = 64

    var settings: Settings {
        var s = Settings()
        if let taskWeights { s.maxWeightsPerTask = taskWeights }
        if let maxFrameBytes { s.maxFrameBytes = maxFrameBytes }
        if let heartbeatMs { s.heartbeatMs = heartbeatMs }
        return s
    }
}

/// `ops/bench/cluster.sh` runs this: empty tasks through the whole coordinator loop.
struct BenchCoordinator: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench-coordinator", abstract: "Coordinator overhead benchmark.", shouldDisplay: false)

    @Option var tasks = 2000
    @Option var workers = 2

    func run() throws {
        let dir = NSTemporaryDirectory() + "prune-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let workload = try NoopWorkload(tasks: tasks, ledgerPath: dir + "/ledger.sqlite")
        var cluster = EmbeddedCluster(workload: workload, directory: dir, workers: workers, executable: EmbeddedCluster.currentExecutable)
        cluster.quiet = true
        let start = Date()
        try cluster.run(log: { _ in })
        let seconds = Date().timeIntervalSince(start)
        print(String(format: "{\"tasks\": %d, \"workers\": %d, \"seconds\": %.3f, \"tasks_per_second\": %.1f}", tasks, workers, seconds, Double(tasks) / seconds))
    }
}

struct ImportGGUF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-gguf",
        abstract: "Convert a llama.cpp GGUF (llama architecture; F32, F16, BF16, Q8_0, Q4_0, Q4_1) to safetensors + config.json + tokenizer files.")

    @Argument(help: "The .gguf file.")
    var gguf: String

    @Argument(help: "Output directory (new or empty).")
    var output: String

    @Option(help: "dtype of the written weights: F32, F16 or BF16.")
    var dtype = "F32"

    func run() throws {
        guard let d = DType(rawValue: dtype.uppercased()), d.isFloat else { throw ValidationError("--dtype must be F32, F16 or BF16") }
        let start = Date()
        let summary = try GGUFImporter.importModel(gguf: gguf, to: output, dtype: d)
        let types = summary.sourceTypes.keys.sorted().map { "\($0) \(summary.sourceTypes[$0]!)" }.joined(separator: ", ")
        print(String(format: "wrote %@: %d layers, %d tensors, %d parameters (%@), from %@; %.1fs", summary.outputDirectory, summary.layers,
                     summary.tensorCount, summary.parameterCount, summary.tiedEmbeddings ? "tied embeddings" : "separate lm_head", types,
                     Date().timeIntervalSince(start)))
    }
}
