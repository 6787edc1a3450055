import Engine
import Foundation
import Logging
import Protocol
import Tensors
import ZeroMQ

/// The coordinator was stopped by SIGTERM/SIGINT; `prune resume` continues the job.
public struct JobStopped: Error, CustomStringConvertible {
    /// SIGTERM or SIGINT (the exit status is 128 + it, as shells report).
    public let signal: Int32
    public init(signal: Int32) { self.signal = signal == 0 ? SIGTERM : signal }
    public var description: String { "stopped by signal; continue with prune resume" }
}

/// A job that could not complete (a task failed K times, a bad input found by a worker).
public struct JobFailed: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// `prune run --workers N` and `prune resume`: a coordinator in this process and N
/// worker processes on this machine over ipc://, restarted if they die.
public struct EmbeddedCluster {
    public let workload: ClusterWorkload
    /// Where worker logs go (`logs/`) and what names the ipc endpoint.
    public let directory: String
    public var workers: Int
    public var quiet = false
    /// The `prune` executable workers are started from.
    public var executable: String
    /// Extra environment for workers (tests: PRUNE_TEST_TASK_DELAY_MS).
    public var workerEnvironment: [String: String] = [:]
    /// Restarts of dead workers allowed over the whole run.
    public var maxRestarts = 64

    public init(workload: ClusterWorkload, directory: String, workers: Int, executable: String) {
        self.workload = workload
        self.directory = directory
        self.workers = workers
        self.executable = executable
    }

    /// A short ipc:// endpoint for a job directory (socket paths are limited to ~100
    /// bytes), in a directory only this user can enter, whatever the umask: another local
    /// user must not be able to connect as a worker.
    public static func endpoint(for directory: String) throws -> String {
        let digest = Array(directory.utf8).withUnsafeBytes { SHA256Stream.hex($0) }
        let private_ = "\(NSTemporaryDirectory())prune-\(getuid())"
        if mkdir(private_, 0o700) != 0 && errno != EEXIST {
            throw JobFailed("\(private_): cannot create the socket directory: \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard lstat(private_, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == getuid() else {
            throw JobFailed("\(private_): not a directory owned by this user; remove it or set TMPDIR")
        }
        if st.st_mode & 0o077 != 0 { chmod(private_, 0o700) }
        return "ipc://\(private_)/\(digest.prefix(16)).sock"
    }

    /// Runs a pruning job to completion and assembles its outputs.
    public static func run(job: ClusterJob, workers: Int, maxRestarts: Int = 64, quiet: Bool, logger: Logger) throws -> Manifest {
        job.configureVerification(remoteWorkers: false)
        var cluster = EmbeddedCluster(workload: job, directory: job.directory.path, workers: workers, executable: currentExecutable)
        cluster.quiet = quiet
        cluster.maxRestarts = maxRestarts
        try cluster.run(logger: logger)
        return try job.assemble(quiet: quiet)
    }

    /// Runs the workload's remaining tasks; throws `JobFailed` if the job fails.
    public func run(logger: Logger) throws {
        if workload.doneTaskIDs.count < workload.taskIDs.count {
            let context = try ZMQContext()
            let endpoint = try EmbeddedCluster.endpoint(for: directory)
            let socketPath = String(endpoint.dropFirst("ipc://".count))
            unlink(socketPath)
            // Owner-only from the moment it exists (the directory is too): umask around the
            // bind, which libzmq performs on this thread.
            let oldMask = umask(0o077)
            let shell: CoordinatorShell
            do {
                defer { umask(oldMask) }
                shell = try CoordinatorShell(workload: workload, context: context, endpoints: [endpoint], curve: nil, quiet: quiet, logger: logger)
            }
            chmod(socketPath, 0o600)
            let logs = (directory as NSString).appendingPathComponent("logs")
            try? FileManager.default.createDirectory(atPath: logs, withIntermediateDirectories: true)
            var children: [Process?] = Array(repeating: nil, count: workers)
            var childNames: [String] = Array(repeating: "", count: workers)
            var restarts = 0
            var spawnFailure: Error?
            func spawn(_ i: Int) {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: executable)
                childNames[i] = "w\(i + 1)-\(restarts)"
                p.arguments = ["worker", "--connect", endpoint, "--name", childNames[i], "--exit-with-parent"]
                var env = ProcessInfo.processInfo.environment
                for (k, v) in workerEnvironment { env[k] = v }
                p.environment = env
                let logPath = (logs as NSString).appendingPathComponent("worker-\(i + 1).log")
                if !FileManager.default.fileExists(atPath: logPath) { FileManager.default.createFile(atPath: logPath, contents: nil) }
                if let handle = FileHandle(forWritingAtPath: logPath) {
                    handle.seekToEndOfFile()
                    p.standardError = handle
                    p.standardOutput = handle
                }
                do {
                    try p.run()
                    children[i] = p
                } catch {
                    spawnFailure = error
                }
            }
            for i in 0..<workers { spawn(i) }
            if let spawnFailure { throw JobFailed("cannot start worker processes (\(executable)): \(spawnFailure)") }
            var reported = Set<Int>()
            // A worker that dies leaves its span link's socket file (libzmq removes it on a
            // clean close only): the files named by its process go with it.
            let socketDirectory = (socketPath as NSString).deletingLastPathComponent
            func removeLinkFiles(of child: Process?) {
                guard let pid = child?.processIdentifier, pid > 0 else { return }
                let prefix = PeerLinkListener.linkFilePrefix(pid: pid)
                for name in (try? FileManager.default.contentsOfDirectory(atPath: socketDirectory)) ?? [] where name.hasPrefix(prefix) {
                    unlink((socketDirectory as NSString).appendingPathComponent(name))
                }
            }
            shell.onTurn = {
                for i in 0..<children.count where children[i].map({ !$0.isRunning }) ?? true {
                    if !reported.contains(i) {
                        reported.insert(i)
                        shell.workerProcessExited(named: childNames[i])
                        removeLinkFiles(of: children[i])
                    }
                    guard restarts < maxRestarts else { continue }
                    restarts += 1
                    logger.info("worker \(childNames[i]) exited (status \(children[i]?.terminationStatus ?? -1)); starting another")
                    reported.remove(i)
                    spawn(i)
                }
                // Every worker gone and none may be started: without this the job would
                // wait forever for workers that never come.
                if restarts >= maxRestarts, children.allSatisfy({ !($0?.isRunning ?? false) }) {
                    shell.abort("all \(workers) worker processes exited and the restart budget (\(maxRestarts)) is used up; see \(logs)/worker-*.log; prune resume continues the job")
                }
            }
            let outcome: CoordinatorCore.Outcome
            do {
                outcome = try shell.run()
            } catch {
                for c in children { c?.terminate() }
                throw error
            }
            // Workers got Shutdown; give them a moment, then make sure they are gone.
            let deadline = Date().addingTimeInterval(3)
            while children.contains(where: { $0?.isRunning ?? false }) && Date() < deadline { usleep(20_000) }
            for c in children where c?.isRunning ?? false { c?.terminate() }
            unlink(String(endpoint.dropFirst("ipc://".count)))
            for c in children where !(c?.isRunning ?? true) { removeLinkFiles(of: c) }
            if case .failed(let reason) = outcome {
                if reason == CoordinatorShell.stoppedBySignal { throw JobStopped(signal: shell.stoppedBy) }
                throw JobFailed(reason)
            }
        }
    }

    /// The running executable's path (for starting workers).
    public static var currentExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

/// Endpoint rules: CURVE on tcp:// unless --insecure, and --insecure only on loopback.
public enum EndpointPolicy {
    public static func isLoopback(_ endpoint: String) -> Bool {
        guard endpoint.hasPrefix("tcp://") else { return true }
        var host = String(endpoint.dropFirst("tcp://".count))
        if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
        host = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// Throws unless the endpoint may be used with the given security.
    public static func check(_ endpoint: String, curve: Bool, insecure: Bool) throws {
        guard endpoint.hasPrefix("tcp://") else {
            guard endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") else {
                throw SpecError("endpoint '\(endpoint)': expected tcp://HOST:PORT or ipc://PATH")
            }
            return
        }
        if curve { return }
        guard insecure else {
            throw SpecError("endpoint '\(endpoint)': plaintext tcp:// is refused; use CURVE keys (prune keygen) or --insecure on loopback")
        }
        guard isLoopback(endpoint) else {
            throw SpecError("endpoint '\(endpoint)': --insecure is allowed only on loopback (127.0.0.1, localhost, ::1)")
        }
    }
}

/// Key files written by `prune keygen`: NAME.pub (public key, Z85) and NAME.key (secret
/// key, Z85, mode 0600). An allow-list holds one public key per line, optionally followed
/// by blanks and a note; lines starting with # are comments.
public enum KeyFiles {
    public static func write(name: String, directory: String) throws -> (publicPath: String, secretPath: String) {
        let pair = try Curve.keyPair()
        let pub = (directory as NSString).appendingPathComponent(name + ".pub")
        let sec = (directory as NSString).appendingPathComponent(name + ".key")
        for path in [pub, sec] where FileManager.default.fileExists(atPath: path) {
            throw SpecError("\(path): already exists; keys are never overwritten")
        }
        try AtomicFileWriter.write(Array((pair.publicKey + "\n").utf8), to: pub)
        try AtomicFileWriter.write(Array((pair.secretKey + "\n").utf8), to: sec)
        chmod(sec, 0o600)
        return (pub, sec)
    }

    /// Reads one Z85 key from a file.
    public static func readKey(_ path: String) throws -> String {
        // SmallFile: a key file that is /dev/zero or huge is refused, not read forever.
        guard let data = try? SmallFile.read(path, limit: 1 << 16), let text = String(data: data, encoding: .utf8) else { throw SpecError("\(path): cannot read the key file") }
        let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard Curve.isValidKey(key) else { throw SpecError("\(path): not a CURVE key (40 Z85 characters)") }
        return key
    }

    /// Reads an allow-list of public keys.
    public static func readAllowList(_ path: String) throws -> Set<String> {
        guard let data = try? SmallFile.read(path, limit: 16 << 20), let text = String(data: data, encoding: .utf8) else { throw SpecError("\(path): cannot read the allow-list") }
        var keys = Set<String>()
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            // '#' is a Z85 character, so a comment is a line starting with '#'; anything
            // after the key (separated by blanks) is a note, e.g. the host name.
            let line = raw.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            let key = String(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
            guard Curve.isValidKey(key) else { throw SpecError("\(path):\(i + 1): not a CURVE public key") }
            keys.insert(key)
        }
        return keys
    }
}

/// Log lines as the tool has always printed them: `PREFIX: message`, one line each on
/// stderr (warnings and worse say so), below `logLevel` nothing. Loggers are built with it
/// directly (`LineLogHandler.logger`), not through a global bootstrap.
public struct LineLogHandler: LogHandler {
    public let prefix: String
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]

    public init(prefix: String, logLevel: Logger.Level = .info) {
        self.prefix = prefix
        self.logLevel = logLevel
    }

    /// A logger writing `prefix: …` lines at `level` and above.
    public static func logger(_ prefix: String, level: Logger.Level = .info) -> Logger {
        Logger(label: "prune.\(prefix)") { _ in LineLogHandler(prefix: prefix, logLevel: level) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        let marker = level >= .warning ? "\(level): " : ""
        FileHandle.standardError.write(Data("\(prefix): \(marker)\(message)\n".utf8))
    }
}
