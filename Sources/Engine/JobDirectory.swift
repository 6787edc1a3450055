import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// The job directory: `job.yaml` (the spec as given), `job.sha256` (its digest) and,
/// once the job completes, `out/`. A directory holding another job is never touched.
public struct JobDirectory {
    public let path: String
    public var outPath: String { (path as NSString).appendingPathComponent("out") }
    public var specPath: String { (path as NSString).appendingPathComponent("job.yaml") }
    public var digestPath: String { (path as NSString).appendingPathComponent("job.sha256") }

    public init(path: String) { self.path = path }

    /// What is at the job directory's path.
    public enum Disposition: Sendable, Equatable {
        /// Nothing yet, or an empty directory.
        case fresh
        /// The same spec's job (continued).
        case sameJob
        /// Another spec's job that finished no work (a run that failed or was killed
        /// early): it never blocks a new run, which replaces it.
        case abandoned
    }

    /// Files a job writes at the top of its directory (all that `reset` removes).
    static let jobEntries = ["job.yaml", "job.sha256", "ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "artifacts", "logs",
                             "report.md", "report.json", "report.svg", "metrics.prom"]

    /// Refuses a directory we may not use, without changing anything.
    @discardableResult
    public func validate(for spec: JobSpec) throws -> Disposition {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw SpecError("output: \(path) exists and is not a directory") }
            guard fm.isWritableFile(atPath: path) else { throw SpecError("output: \(path) is not writable") }
            if let recorded = try? String(contentsOfFile: digestPath, encoding: .utf8) {
                let r = recorded.trimmingCharacters(in: .whitespacesAndNewlines)
                if r == spec.digest { return .sameJob }
                guard !holdsFinishedWork else {
                    throw SpecError("output: \(path) already holds a different job (spec sha256 \(r.prefix(12))…, this spec \(spec.digest.prefix(12))…); choose another output directory or remove it")
                }
                return .abandoned
            } else if let entries = try? fm.contentsOfDirectory(atPath: path), entries.contains(where: { $0 != JobLock.fileName }) {
                throw SpecError("output: \(path) is not empty and holds no job; choose an empty or new directory")
            }
            return .fresh
        }
        // The nearest existing ancestor must be a writable directory.
        var ancestor = (path as NSString).deletingLastPathComponent
        while !ancestor.isEmpty && !fm.fileExists(atPath: ancestor, isDirectory: &isDir) {
            ancestor = (ancestor as NSString).deletingLastPathComponent
        }
        if ancestor.isEmpty { ancestor = "." ; _ = fm.fileExists(atPath: ancestor, isDirectory: &isDir) }
        guard isDir.boolValue else { throw SpecError("output: cannot create \(path): \(ancestor) is not a directory") }
        guard fm.isWritableFile(atPath: ancestor) else { throw SpecError("output: cannot create \(path): \(ancestor) is not writable") }
        return .fresh
    }

    /// Whether the directory holds results: an out/, or any stored task result.
    var holdsFinishedWork: Bool {
        let fm = FileManager.default
        if fm.fileExists(atPath: outPath) { return true }
        let artifacts = (path as NSString).appendingPathComponent("artifacts")
        for sub in (try? fm.contentsOfDirectory(atPath: artifacts)) ?? [] where !sub.hasPrefix(".") {
            let files = (try? fm.contentsOfDirectory(atPath: (artifacts as NSString).appendingPathComponent(sub))) ?? []
            if files.contains(where: { !$0.hasPrefix(".") }) { return true }
        }
        return false
    }

    /// The directory taken for a run: created if need be, locked for this process,
    /// cleared of what dead processes left, and holding this spec.
    public struct Claim {
        /// Whether this run created the directory (a failed first run removes it again).
        public let created: Bool
        /// Held while this process runs the job.
        public let lock: JobLock
    }

    /// Creates (or takes over) the directory and records the spec. An abandoned job of
    /// another spec is replaced; staging directories and temporary files of dead
    /// processes are removed. Idempotent for the same spec.
    public func claim(for spec: JobSpec) throws -> Claim {
        let fm = FileManager.default
        let created = !fm.fileExists(atPath: path)
        do {
            try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw SpecError("output: cannot create \(path): \(CheckpointError.reason(error))")
        }
        let lock = try JobLock(directory: path)
        // Checked again under the lock: another process may have started meanwhile.
        if try validate(for: spec) == .abandoned {
            for entry in JobDirectory.jobEntries { try? fm.removeItem(atPath: (path as NSString).appendingPathComponent(entry)) }
        }
        removeLeftovers()
        try AtomicFileWriter.write(spec.source, to: specPath)
        try AtomicFileWriter.write(Array((spec.digest + "\n").utf8), to: digestPath)
        return Claim(created: created, lock: lock)
    }

    /// Removes what killed processes left: staging directories and set-aside outputs of
    /// dead processes, and temporary files (`.NAME.tmp-PID-…`) of dead processes in the
    /// directory and its artifact store. A temporary file written in the last minute is
    /// spared: a worker on another host sharing the directory may be writing it.
    public func removeLeftovers() {
        let fm = FileManager.default
        var places = [path]
        let artifacts = (path as NSString).appendingPathComponent("artifacts")
        for sub in (try? fm.contentsOfDirectory(atPath: artifacts)) ?? [] where !sub.hasPrefix(".") {
            places.append((artifacts as NSString).appendingPathComponent(sub))
        }
        let minuteAgo = Date().addingTimeInterval(-60)
        for place in places {
            for entry in (try? fm.contentsOfDirectory(atPath: place)) ?? [] where entry.hasPrefix(".") {
                let full = (place as NSString).appendingPathComponent(entry)
                if place == path, let prefix = [".staging-", ".old-out-"].first(where: entry.hasPrefix) {
                    if let pid = JobDirectory.pid(in: entry.dropFirst(prefix.count).split(separator: "-").first), !JobDirectory.isAlive(pid) {
                        try? fm.removeItem(atPath: full)
                    }
                } else if let range = entry.range(of: ".tmp-") {
                    let pid = JobDirectory.pid(in: entry[range.upperBound...].split(separator: "-").first)
                    let modified = (try? fm.attributesOfItem(atPath: full))?[.modificationDate] as? Date ?? .distantPast
                    if let pid, !JobDirectory.isAlive(pid), modified < minuteAgo { try? fm.removeItem(atPath: full) }
                }
            }
        }
    }

    private static func pid(in text: Substring?) -> pid_t? {
        text.flatMap { pid_t($0) }.flatMap { $0 > 0 ? $0 : nil }
    }

    /// Whether a process with this id runs on this host (a pid of ours counts as alive).
    static func isAlive(_ pid: pid_t) -> Bool {
        pid == getpid() || kill(pid, 0) == 0 || errno == EPERM
    }

    /// A fresh staging directory inside the job directory, on the same file system as
    /// `out/`, so the final rename is atomic.
    public func makeStaging() throws -> String {
        let staging = (path as NSString).appendingPathComponent(".staging-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: false)
        return staging
    }

    /// Replaces `out/` with the staging directory in one rename.
    public func publish(staging: String) throws {
        let fm = FileManager.default
        var old: String?
        if fm.fileExists(atPath: outPath) {
            let aside = (path as NSString).appendingPathComponent(".old-out-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            guard rename(outPath, aside) == 0 else {
                throw SpecError("output: cannot move the previous \(outPath) aside: \(String(cString: strerror(errno)))")
            }
            old = aside
        }
        guard rename(staging, outPath) == 0 else {
            let reason = String(cString: strerror(errno))
            if let old { _ = rename(old, outPath) }  // put the previous output back
            throw SpecError("output: cannot rename \(staging) to \(outPath): \(reason)")
        }
        AtomicFileWriter.syncDirectory(path)
        if let old { try? fm.removeItem(atPath: old) }
    }
}

/// One process per job directory: an exclusive flock on JOB/coordinator.lock, held for
/// the life of the run (released by the kernel even after SIGKILL).
public final class JobLock {
    private let fd: Int32
    static let fileName = "coordinator.lock"

    public init(directory: String) throws {
        let path = (directory as NSString).appendingPathComponent(JobLock.fileName)
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SpecError("\(path): cannot open: \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw SpecError("\(directory): another prune process is running this job (\(path) is locked)")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    deinit { close(fd) }
}
