import Foundation
import Tensors
import TestSupport
import XCTest

/// `cluster/slurm.sbatch` submitted to a real one-node Slurm cluster: munged, slurmctld and
/// slurmd started by the test in a directory of their own, on ports of their own, so the
/// shipped script runs exactly as a user's `sbatch` would run it. Needs root and Debian's
/// slurmctld, slurmd, slurm-client and munge (`.ci/run` installs them); skipped otherwise.
final class SlurmTests: XCTestCase {
    /// The packages are there but the cluster did not come up: a failure, not a skip, so a
    /// broken setup cannot pass quietly in CI.
    private struct ClusterDidNotStart: Error, CustomStringConvertible {
        let description: String
    }

    private var dir: TempDir!
    /// Pid files of the daemons started, in start order.
    private var pidFiles: [String] = []

    /// SLURM_CONF of the cluster this test started, once it is up.
    private var slurmEnvironment: [String: String]?

    override func tearDown() {
        // A job still running (a failed test) is cancelled, so its job steps (slurmstepd
        // and the prune processes under it) do not outlive the daemons.
        if let env = slurmEnvironment, let scancel = which("scancel") {
            _ = try? Subprocess.run(scancel, ["--user=root"], environment: env)
            _ = Background.waitUntil(seconds: 10) {
                (try? Subprocess.run(which("squeue") ?? "/usr/bin/squeue", ["-h"], environment: env).stdout.isEmpty) ?? true
            }
        }
        for file in pidFiles.reversed() {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8),
                  let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else { continue }
            kill(pid, SIGTERM)
            if !Background.waitUntil(seconds: 10, { kill(pid, 0) != 0 }) { kill(pid, SIGKILL) }
        }
        pidFiles = []
        dir?.cleanup()
    }

    /// Starts a daemon in its own daemon mode, its output appended to `log`, and waits for
    /// its pid file. Spawned with swift-subprocess (`Subprocess.run`), which waits for the
    /// forking parent on a pidfd and leaves the daemon none of this process's descriptors.
    private func startDaemon(_ executable: String, _ arguments: [String], pidFile: String, log: String,
                             environment: [String: String] = [:]) throws {
        let r = try Subprocess.run(executable, arguments, environment: environment)
        // What the daemon printed before it detached, appended to its log (which the
        // daemon itself may be writing by now).
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data((r.stdout + r.stderr).utf8))
        guard r.status == 0 else { throw ClusterDidNotStart(description: "\(executable) did not start: \(r.stderr)\n\(logs())") }
        pidFiles.append(pidFile)
        guard Background.waitUntil(seconds: 10, { FileManager.default.fileExists(atPath: pidFile) }) else {
            throw ClusterDidNotStart(description: "\(executable) wrote no pid file:\n\(logs())")
        }
    }

    private func which(_ name: String) -> String? {
        ["/usr/sbin/", "/usr/bin/", "/sbin/", "/bin/"].map { $0 + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// The daemons' log files, for a failure message.
    private func logs() -> String {
        ["slurmctld.log", "slurmd.log", "munged.log"].map { name in
            "--- \(name)\n" + ((try? String(contentsOfFile: dir.file(name), encoding: .utf8)) ?? "(none)").suffix(3000)
        }.joined(separator: "\n")
    }

    /// Starts munge and Slurm in `dir`; returns the environment every Slurm command needs.
    private func startCluster() throws -> [String: String] {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("needs root and the prune binary")
        }
        var tools: [String: String] = [:]
        for name in ["munged", "slurmctld", "slurmd", "sbatch", "sinfo"] {
            guard let path = which(name) else { throw XCTSkip("\(name) is not installed (apt-get install slurmctld slurmd slurm-client munge)") }
            tools[name] = path
        }
        let key = Data((0..<1024).map { _ in UInt8.random(in: 0...255) })
        try key.write(to: URL(fileURLWithPath: dir.file("munge.key")))
        chmod(dir.file("munge.key"), 0o600)
        // munged refuses to run as root without --force.
        try startDaemon(tools["munged"]!, ["--force", "--key-file", dir.file("munge.key"), "--socket", dir.file("munge.sock"),
                                           "--pid-file", dir.file("munged.pid"), "--log-file", dir.file("munged.log"),
                                           "--seed-file", dir.file("munge.seed")], pidFile: dir.file("munged.pid"), log: dir.file("munged.log"))
        // The node line as slurmd sees this machine, so the node registers as configured.
        let probe = try Subprocess.run(tools["slurmd"]!, ["-C"])
        guard let node = probe.stdout.split(separator: "\n").first(where: { $0.hasPrefix("NodeName=") }) else {
            throw ClusterDidNotStart(description: "slurmd -C printed no node line: \(probe.stderr)")
        }
        let nodeLine = node.split(separator: " ").filter { !$0.hasPrefix("UpTime=") }.joined(separator: " ")
        let nodeName = String(nodeLine.split(separator: " ")[0].dropFirst("NodeName=".count))
        for sub in ["state", "spool"] { try FileManager.default.createDirectory(atPath: dir.file(sub), withIntermediateDirectories: true) }
        // A job id of its own range: the script derives its port from the id.
        let firstJob = Int.random(in: 1000...15000)
        let conf = """
            ClusterName=prunetest
            SlurmctldHost=\(nodeName)(127.0.0.1)
            SlurmUser=root
            SlurmdUser=root
            SlurmctldPort=\(Background.freePort())
            SlurmdPort=\(Background.freePort())
            AuthType=auth/munge
            AuthInfo=socket=\(dir.file("munge.sock"))
            CredType=cred/munge
            StateSaveLocation=\(dir.file("state"))
            SlurmdSpoolDir=\(dir.file("spool"))
            SlurmctldPidFile=\(dir.file("slurmctld.pid"))
            SlurmdPidFile=\(dir.file("slurmd.pid"))
            SlurmctldLogFile=\(dir.file("slurmctld.log"))
            SlurmdLogFile=\(dir.file("slurmd.log"))
            FirstJobId=\(firstJob)
            ProctrackType=proctrack/linuxproc
            TaskPlugin=task/none
            MpiDefault=none
            SchedulerType=sched/builtin
            SelectType=select/cons_tres
            SelectTypeParameters=CR_Core
            ReturnToService=2
            JobAcctGatherType=jobacct_gather/none
            AccountingStorageType=accounting_storage/none
            \(nodeLine) NodeAddr=127.0.0.1 State=UNKNOWN
            PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP

            """
        try conf.write(toFile: dir.file("slurm.conf"), atomically: false, encoding: .utf8)
        let env = ["SLURM_CONF": dir.file("slurm.conf")]
        slurmEnvironment = env
        try startDaemon(tools["slurmctld"]!, ["-i", "-f", dir.file("slurm.conf")], pidFile: dir.file("slurmctld.pid"),
                        log: dir.file("slurmctld.log"), environment: env)
        try startDaemon(tools["slurmd"]!, ["-f", dir.file("slurm.conf")], pidFile: dir.file("slurmd.pid"),
                        log: dir.file("slurmd.log"), environment: env)
        let idle = Background.waitUntil(seconds: 30) {
            let state = try? Subprocess.run(tools["sinfo"]!, ["-h", "-o", "%T"], environment: env)
            return state?.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "idle"
        }
        guard idle else { throw ClusterDidNotStart(description: "the node did not come up idle:\n\(logs())") }
        return env
    }

    func testSbatchScriptRunsCoordinatorAndWorkersOverCurve() throws {
        dir = TempDir("prune-slurm")
        let env = try startCluster()
        try SyntheticModel.write(to: dir.file("model"), dtype: .bf16, layers: 2, hidden: 64, intermediate: 128)
        let spec = "model: model\nmethod: random\nseed: 5\npattern: per_row\nsparsity: 0.5\n"
        try (spec + "output: slurm\n").write(toFile: dir.file("slurm.yaml"), atomically: false, encoding: .utf8)
        try (spec + "output: local\n").write(toFile: dir.file("local.yaml"), atomically: false, encoding: .utf8)

        // The keys where the script looks for them: $HOME/.config/prune.
        let keys = dir.file("home/.config/prune")
        try FileManager.default.createDirectory(atPath: keys, withIntermediateDirectories: true)
        for name in ["coordinator", "worker"] {
            XCTAssertEqual(try Subprocess.prune(["keygen", name, "--dir", keys]).status, 0)
        }
        try FileManager.default.copyItem(atPath: keys + "/worker.pub", toPath: keys + "/allow.txt")
        // `prune` on the PATH, as an installed binary would be.
        try FileManager.default.createDirectory(atPath: dir.file("bin"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir.file("bin/prune"), withDestinationPath: Subprocess.pruneBinary)

        let path = dir.file("bin") + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let submit = try Background(which("sbatch")!, ["--wait", "--ntasks=2", "--chdir", dir.path, "--output", dir.file("job.out"),
                                                      Subprocess.packageRoot + "/cluster/slurm.sbatch", "slurm.yaml"],
                                    cwd: dir.path, environment: env.merging(["HOME": dir.file("home"), "PATH": path]) { $1 })
        let status = submit.wait(seconds: 180)
        let output = (try? String(contentsOfFile: dir.file("job.out"), encoding: .utf8)) ?? ""
        XCTAssertEqual(status, 0, "sbatch: \(submit.stderr)\njob output:\n\(output)\n\(logs())")
        XCTAssertTrue(output.contains("listening on tcp://0.0.0.0:"), output)
        // Both of the allocation's task slots ran a worker, and both were admitted over CURVE.
        XCTAssertEqual(output.components(separatedBy: "welcomed into job").count - 1, 2, output)
        XCTAssertTrue(output.contains("wrote "), output)

        let check = try Subprocess.prune(["check", "model", "slurm"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        let local = try Subprocess.prune(["run", "-q", "--workers", "1", "local.yaml"], cwd: dir.path)
        XCTAssertEqual(local.status, 0, local.stderr)
        let outputs = { (job: String) in jobOutputs(self.dir.file(job)) }
        XCTAssertGreaterThan(outputs("slurm").count, 2)
        XCTAssertEqual(outputs("slurm"), outputs("local"), "the same bytes as a local run of the same spec")
    }
}
