import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SHA-256 helpers; digests are lower-case hex everywhere (manifest, ledger, wire).
public struct SHA256Stream {
    private var hasher = SHA256()
    public init() {}
    public mutating func update(_ bytes: UnsafeRawBufferPointer) { hasher.update(bufferPointer: bytes) }
    public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { hasher.update(bufferPointer: $0) } }
    public func finalizeHex() -> String {
        // By table, not String(format:) per byte (which showed in a coordinator's profile).
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for b in hasher.finalize() {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether `text` has the form of a digest `hex` returns (64 lower-case hex digits):
    /// what a name built from a peer's digest (an artifact path) must satisfy first.
    public static func isHexDigest(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    public static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        var s = SHA256Stream()
        s.update(bytes)
        return s.finalizeHex()
    }

    /// Bytes per read when hashing a file: small enough that the buffer stays in the L2
    /// cache between the copy out of the page cache and the hash, large enough that the
    /// system calls do not show.
    static let fileChunk = 1 << 20

    /// Digest of a whole file, read in chunks into one reused buffer.
    public static func hex(file path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CheckpointError(file: path, "cannot open for reading: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        return try hex(fileDescriptor: fd, path: path)
    }

    /// Digest of everything from the current offset of `fd` to its end (`path` names it in errors).
    public static func hex(fileDescriptor fd: Int32, path: String) throws -> String {
        #if canImport(Glibc)
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        #endif
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: fileChunk, alignment: 4096)
        defer { buffer.deallocate() }
        var s = SHA256Stream()
        while true {
            let n = read(fd, buffer, fileChunk)
            if n < 0 {
                if errno == EINTR { continue }
                throw CheckpointError(file: path, "read failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            s.update(UnsafeRawBufferPointer(start: buffer, count: n))
        }
        return s.finalizeHex()
    }
}
