#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. Pages are faulted in only when touched, so
/// mapping a multi-GB checkpoint costs nothing until a tensor is read.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    private let base: UnsafeMutableRawPointer?

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CheckpointError(file: path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CheckpointError(file: path, "cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw CheckpointError(file: path, "not a regular file") }
        size = Int(st.st_size)
        if size == 0 {
            base = nil
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw CheckpointError(file: path, "cannot map: \(String(cString: strerror(errno)))") }
        base = p
    }

    deinit {
        if let base { munmap(base, size) }
    }

    /// The bytes in `range` (must lie inside the file).
    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        precondition(range.lowerBound >= 0 && range.upperBound <= size, "range outside mapped file")
        guard let base, !range.isEmpty else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)
    }

    /// Tells the kernel we are done with a range, so a long streaming pass does not keep
    /// the whole checkpoint resident.
    public func release(_ range: Range<Int>) {
        guard let base, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (range.lowerBound / page) * page
        _ = madvise(base + start, range.upperBound - start, MADV_DONTNEED)
    }
}
