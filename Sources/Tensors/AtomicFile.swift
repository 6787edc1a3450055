#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a file so that readers see either nothing or the whole file: the bytes go to a
/// temporary file beside the target, are fsync'd, and the temporary is renamed over the
/// target. If the writer is dropped before `commit()`, the temporary is removed.
public final class AtomicFileWriter {
    public let path: String
    private let tempPath: String
    private var fd: Int32
    private var buffer: [UInt8] = []
    private let bufferLimit = 4 << 20
    private var committed = false
    /// Bytes written so far.
    public private(set) var bytesWritten = 0

    public init(path: String) throws {
        self.path = path
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        tempPath = "\(dir.isEmpty ? "/" : dir)/.\(base).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw CheckpointError(file: path, "cannot create: \(String(cString: strerror(errno)))")
        }
        buffer.reserveCapacity(bufferLimit)
    }

    deinit {
        if !committed {
            if fd >= 0 { close(fd) }
            unlink(tempPath)
        }
    }

    /// Appends bytes.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        bytesWritten += bytes.count
        if buffer.count + bytes.count <= bufferLimit {
            buffer.append(contentsOf: bytes)
            return
        }
        try flush()
        if bytes.count >= bufferLimit {
            try writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
        }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    public func write(_ string: String) throws {
        try write(Array(string.utf8))
    }

    /// Makes the file visible at `path`, complete; and `durable` (fsync'd, the rename too)
    /// unless told otherwise: a file that a crash of the machine may lose or garble (one
    /// its reader verifies and can recompute) skips the two fsyncs.
    public func commit(durable: Bool = true) throws {
        try flush()
        guard !durable || fsync(fd) == 0 else { throw CheckpointError(file: path, "fsync failed: \(String(cString: strerror(errno)))") }
        close(fd)
        fd = -1
        guard rename(tempPath, path) == 0 else {
            throw CheckpointError(file: path, "rename failed: \(String(cString: strerror(errno)))")
        }
        committed = true
        if durable { AtomicFileWriter.syncDirectory(containing: path) }
    }

    private func flush() throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw CheckpointError(file: path, "write failed: \(String(cString: strerror(errno)))")
            }
            offset += n
        }
    }

    /// fsyncs a directory so a rename inside it survives a crash.
    public static func syncDirectory(containing path: String) {
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        syncDirectory(dir.isEmpty ? "/" : dir)
    }

    public static func syncDirectory(_ dir: String) {
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }

    /// Writes a whole small file atomically.
    public static func write(_ bytes: [UInt8], to path: String, durable: Bool = true) throws {
        let w = try AtomicFileWriter(path: path)
        try w.write(bytes)
        try w.commit(durable: durable)
    }
}
