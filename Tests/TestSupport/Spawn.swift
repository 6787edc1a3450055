import Foundation
import Subprocess
import Synchronization
import SystemPackage

/// Child processes through swift-subprocess. Foundation's `Process` watches a child through
/// a socket the child inherits; a daemon that closes every descriptor looks to it like an
/// exit, its monitor thread blocks in `wait4`, and no later child is ever reaped.
/// swift-subprocess closes inherited descriptors in the child and waits on a pidfd, so
/// daemons (munged, slurmctld) start like any other program.
///
/// (The `Subprocess` enum of this module shadows the library's module name here, so the
/// library is reached through these free functions.)
enum Spawn {
    /// How a child ended: exit code, or 128 + signal as a shell reports it.
    static func code(_ status: TerminationStatus) -> Int32 {
        switch status {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        }
    }

    /// The environment: this process's own with `overrides` on top.
    static func inheriting(_ overrides: [String: String]) -> Environment {
        var keys: [Environment.Key: String?] = [:]
        for (k, v) in overrides { if let key = Environment.Key(rawValue: k) { keys[key] = v } }
        return overrides.isEmpty ? .inherit : .inherit.updating(keys)
    }

    /// Runs `body` on the concurrency pool and blocks this (test) thread until it ends.
    static func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let outcome = Mutex<Result<T, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            outcome.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        return try outcome.withLock { $0! }.get()
    }

    /// Runs to completion; stdout and stderr each into a file (neither can fill up and
    /// block the child), read back once it exits.
    static func collect(_ executable: String, _ arguments: [String], cwd: String?, environment: [String: String]) throws
        -> (status: Int32, stdout: Data, stderr: Data) {
        let base = NSTemporaryDirectory() + "prune-run-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        defer {
            try? FileManager.default.removeItem(atPath: base + ".out")
            try? FileManager.default.removeItem(atPath: base + ".err")
        }
        let out = try FileDescriptor.open(FilePath(base + ".out"), .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        let err = try FileDescriptor.open(FilePath(base + ".err"), .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        let env = inheriting(environment)
        let status = try blocking {
            try await run(.path(FilePath(executable)), arguments: Arguments(arguments), environment: env,
                          workingDirectory: cwd.map { FilePath($0) }, input: .none,
                          output: .fileDescriptor(out, closeAfterSpawningProcess: true),
                          error: .fileDescriptor(err, closeAfterSpawningProcess: true)).terminationStatus
        }
        return (code(status), FileManager.default.contents(atPath: base + ".out") ?? Data(),
                FileManager.default.contents(atPath: base + ".err") ?? Data())
    }

    /// Starts a child whose output goes to two files and returns its pid once it runs;
    /// `ended` is called with its exit code when it ends.
    static func start(_ executable: String, _ arguments: [String], cwd: String?, environment: [String: String],
                      stdout: String, stderr: String, ended: @escaping @Sendable (Int32) -> Void) throws -> pid_t {
        let out = try FileDescriptor.open(FilePath(stdout), .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        let err = try FileDescriptor.open(FilePath(stderr), .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        let env = inheriting(environment)
        let started = Mutex<Result<pid_t, any Error>?>(nil)
        let ready = DispatchSemaphore(value: 0)
        Task.detached {
            do {
                // The body returns at once; `run` then waits for the child's exit (pidfd).
                let result = try await run(.path(FilePath(executable)), arguments: Arguments(arguments), environment: env,
                                           workingDirectory: cwd.map { FilePath($0) }, input: .none,
                                           output: .fileDescriptor(out, closeAfterSpawningProcess: true),
                                           error: .fileDescriptor(err, closeAfterSpawningProcess: true)) { execution in
                    started.withLock { $0 = .success(execution.processIdentifier.value) }
                    ready.signal()
                }
                ended(code(result.terminationStatus))
            } catch {
                let first = started.withLock { state -> Bool in
                    guard state == nil else { return false }
                    state = .failure(error)
                    return true
                }
                if first { ready.signal() } else { ended(-1) }
            }
        }
        ready.wait()
        return try started.withLock { $0! }.get()
    }
}
