import Crypto
import Foundation

/// SHA-256 helpers; digests are lower-case hex everywhere (manifest, ledger, wire).
public struct SHA256Stream {
    private var hasher = SHA256()
    public init() {}
    public mutating func update(_ bytes: UnsafeRawBufferPointer) { hasher.update(bufferPointer: bytes) }
    public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { hasher.update(bufferPointer: $0) } }
    public func finalizeHex() -> String { hasher.finalize().map { String(format: "%02x", $0) }.joined() }

    public static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        var s = SHA256Stream()
        s.update(bytes)
        return s.finalizeHex()
    }

    /// Digest of a whole file, read in chunks.
    public static func hex(file path: String) throws -> String {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CheckpointError(file: path, "cannot open for reading") }
        defer { try? h.close() }
        var s = SHA256Stream()
        while let chunk = try h.read(upToCount: 8 << 20), !chunk.isEmpty {
            chunk.withUnsafeBytes { s.update($0) }
        }
        return s.finalizeHex()
    }
}
