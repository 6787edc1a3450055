import Foundation
import Tensors

/// The job directory: `job.yaml` (the spec as given), `job.sha256` (its digest) and,
/// once the job completes, `out/`. A directory holding another job is never touched.
public struct JobDirectory {
    public let path: String
    public var outPath: String { (path as NSString).appendingPathComponent("out") }
    public var specPath: String { (path as NSString).appendingPathComponent("job.yaml") }
    public var digestPath: String { (path as NSString).appendingPathComponent("job.sha256") }

    public init(path: String) { self.path = path }

    /// Refuses a directory we may not use, without changing anything.
    public func validate(for spec: JobSpec) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw SpecError("output: \(path) exists and is not a directory") }
            if let recorded = try? String(contentsOfFile: digestPath, encoding: .utf8) {
                let r = recorded.trimmingCharacters(in: .whitespacesAndNewlines)
                guard r == spec.digest else {
                    throw SpecError("output: \(path) already holds a different job (spec sha256 \(r.prefix(12))…, this spec \(spec.digest.prefix(12))…); choose another output directory or remove it")
                }
            } else if let entries = try? fm.contentsOfDirectory(atPath: path), !entries.isEmpty {
                throw SpecError("output: \(path) is not empty and holds no job; choose an empty or new directory")
            }
            guard fm.isWritableFile(atPath: path) else { throw SpecError("output: \(path) is not writable") }
        } else {
            // The nearest existing ancestor must be a writable directory.
            var ancestor = (path as NSString).deletingLastPathComponent
            while !ancestor.isEmpty && !fm.fileExists(atPath: ancestor, isDirectory: &isDir) {
                ancestor = (ancestor as NSString).deletingLastPathComponent
            }
            if ancestor.isEmpty { ancestor = "." ; _ = fm.fileExists(atPath: ancestor, isDirectory: &isDir) }
            guard isDir.boolValue else { throw SpecError("output: cannot create \(path): \(ancestor) is not a directory") }
            guard fm.isWritableFile(atPath: ancestor) else { throw SpecError("output: cannot create \(path): \(ancestor) is not writable") }
        }
    }

    /// Creates the directory and records the spec (idempotent for the same spec), and
    /// clears staging directories a killed run left behind. Returns whether the
    /// directory was created now, so a failed first run can remove it again.
    @discardableResult
    public func claim(for spec: JobSpec) throws -> Bool {
        let fm = FileManager.default
        let created = !fm.fileExists(atPath: path)
        do {
            try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw SpecError("output: cannot create \(path): \(CheckpointError.reason(error))")
        }
        for entry in (try? fm.contentsOfDirectory(atPath: path)) ?? [] where entry.hasPrefix(".staging-") || entry.hasPrefix(".old-out-") {
            try? fm.removeItem(atPath: (path as NSString).appendingPathComponent(entry))
        }
        try AtomicFileWriter.write(spec.source, to: specPath)
        try AtomicFileWriter.write(Array((spec.digest + "\n").utf8), to: digestPath)
        return created
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
