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

// The commands of several hosts: the coordinator, a worker, their keys, the overhead benchmark.

/// Runs a coordinator that waits for external workers on `bind`, then assembles.
func runCoordinator(_ job: ClusterJob, bind: String, security: CoordinatorSecurity, quiet: Bool) throws -> Manifest {
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
    let shell = try CoordinatorShell(workload: job, context: context, endpoints: [bind], curve: curve, quiet: quiet, logger: coordinatorLogger(quiet: quiet))
    if !quiet { FileHandle.standardError.write(Data("coordinator: listening on \(shell.boundEndpoint)\n".utf8)) }
    if case .failed(let reason) = try shell.run() {
        if reason == CoordinatorShell.stoppedBySignal { throw JobStopped(signal: shell.stoppedBy) }
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

    @OptionGroup var security: CoordinatorSecurity

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

    @OptionGroup var security: WorkerSecurity

    @Flag(help: "Exit when the parent process exits (used by prune run).")
    var exitWithParent = false

    @Option(help: .hidden)
    var protocolVersion: UInt32 = Settings.protocolVersion

    @Flag(help: "Never read checkpoint files locally; pull all bytes from the coordinator.")
    var pullOnly = false

    @Flag(help: "Listen for no span group's shares directly: the other members send them through the coordinator (for hosts the other workers cannot reach).")
    var noPeerLink = false

    @Flag(help: "Code the masks this worker sends (when it does not share the job directory): N:M by rank (2:4: 0.67 bits per weight), others range coded near their entropy (90% sparse: 0.47). Pays on links slower than ~100 Mbit/s; see docs/cluster.md.")
    var compressMasks = false

    func run() throws {
        var options = WorkerOptions(endpoint: connect, name: name ?? "\(ProcessInfo.processInfo.hostName):\(getpid())")
        options.dataRoots = dataRoot
        options.exitWithParent = exitWithParent
        options.protocolVersion = protocolVersion
        options.pullOnly = pullOnly
        options.compressMasks = compressMasks
        options.peerLink = !noPeerLink
        options.testDeadLink = ProcessInfo.processInfo.environment["PRUNE_TEST_LINK"] == "dead"
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
        let worker = try Worker(options: options, logger: LineLogHandler.logger("worker \(options.name)"))
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
        try cluster.run(logger: LineLogHandler.logger("coordinator", level: .critical))
        let seconds = Date().timeIntervalSince(start)
        print(String(format: "{\"tasks\": %d, \"workers\": %d, \"seconds\": %.3f, \"tasks_per_second\": %.1f}", tasks, workers, seconds, Double(tasks) / seconds))
    }
}

