#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Reads a small file (a job spec, config.json, tokenizer.json, a key) whole, refusing one
/// larger than a limit *before* reading it, and refusing anything that is not a regular
/// file: `/dev/zero` or a FIFO given as a config would otherwise be read forever.
public enum SmallFile {
    /// Why a file was not read. `describe(_:)` makes the phrase to put after the path.
    public enum Failure: Error, CustomStringConvertible, Equatable, Sendable {
        /// open/read failed: the system's reason ("No such file or directory").
        case unreadable(String)
        case notRegularFile
        case tooLarge(size: Int, limit: Int)

        public var description: String { describe("the file") }

        /// The failure as a phrase about `what` ("the job spec", "config.json"), e.g.
        /// `config.json is 10485760 bytes, more than the limit of 1 MiB`.
        public func describe(_ what: String) -> String {
            switch self {
            case .unreadable(let reason): return "cannot read \(what): \(reason)"
            case .notRegularFile: return "\(what) is not a regular file"
            case .tooLarge(let size, let limit): return "\(what) is \(size) bytes, more than the limit of \(SmallFile.describe(bytes: limit))"
            }
        }
    }

    /// The bytes of the regular file at `path`, at most `limit` of them.
    public static func read(_ path: String, limit: Int) throws(Failure) -> Data {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .unreadable(String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notRegularFile }
        guard Int(st.st_size) <= limit else { throw .tooLarge(size: Int(st.st_size), limit: limit) }
        // Read at most limit + 1 bytes: a file growing after fstat is still caught.
        var data = Data(count: Int(st.st_size) + 1)
        var total = 0
        while true {
            if total == data.count {
                guard data.count <= limit else { throw .tooLarge(size: total, limit: limit) }
                data.count = min(limit + 1, data.count * 2)
            }
            let n = data.withUnsafeMutableBytes { buf in Glibc.read(fd, buf.baseAddress! + total, buf.count - total) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .unreadable(String(cString: strerror(errno)))
            }
            if n == 0 { break }
            total += n
        }
        guard total <= limit else { throw .tooLarge(size: total, limit: limit) }
        data.count = total
        return data
    }

    /// The bytes of the file at `path`, or nil when it does not exist; other failures throw.
    public static func readIfPresent(_ path: String, limit: Int) throws(Failure) -> Data? {
        var st = stat()
        if stat(path, &st) != 0 && errno == ENOENT { return nil }
        return try read(path, limit: limit)
    }

    /// "1 MiB", "512 KiB", "100 bytes".
    public static func describe(bytes: Int) -> String {
        if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
        if bytes >= 1 << 10 && bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB" }
        return "\(bytes) bytes"
    }
}
