import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// Task results stored by content: `artifacts/ab/abcdef…` named by their sha256, each
/// written to a temporary file, fsync'd and renamed, so a present artifact is complete.
public struct ArtifactStore: Sendable {
    public let root: String
    /// This coordinator process's token, in `root/.coordinator-token` ("" until published).
    public private(set) var token = ""

    static let tokenFileName = ".coordinator-token"

    public init(root: String) throws {
        self.root = root
        do {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError(file: root, "cannot create: \(CheckpointError.reason(error))")
        }
    }

    public func path(for digest: String) -> String {
        Self.path(for: digest, root: root)
    }

    /// Where an artifact lives under a store's `root` (a worker's view of the coordinator's).
    static func path(for digest: String, root: String) -> String {
        (root as NSString).appendingPathComponent("\(digest.prefix(2))/\(digest)")
    }

    /// Writes a fresh random token to `root/.coordinator-token` (a coordinator does, once
    /// per process). A worker finding the token it was welcomed with there knows that it
    /// sees this very directory, not a same-named one on another host.
    public mutating func publishToken() throws {
        let fresh = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        try AtomicFileWriter.write(Array(fresh.utf8), to: (root as NSString).appendingPathComponent(ArtifactStore.tokenFileName))
        token = fresh
    }

    /// Whether a worker may store results under `root` itself: the token file there holds
    /// `token`, and the directory is writable.
    public static func sharedWithCoordinator(root: String, token: String) -> Bool {
        guard !root.isEmpty, !token.isEmpty, access(root, W_OK) == 0,
              let data = FileManager.default.contents(atPath: (root as NSString).appendingPathComponent(tokenFileName)) else { return false }
        return String(decoding: data, as: UTF8.self) == token
    }

    /// Stores bytes durably (unless `durable` is false: a task output that a crash of the
    /// machine may lose, since resuming verifies every artifact and reruns the tasks whose
    /// outputs are gone) and returns their sha256. `sha256`, when given, is the bytes'
    /// digest already verified by the caller (a received payload), so it is not recomputed.
    @discardableResult
    public func put(_ bytes: [UInt8], sha256: String? = nil, durable: Bool = true) throws -> String {
        let digest = sha256 ?? bytes.withUnsafeBytes { SHA256Stream.hex($0) }
        let target = path(for: digest)
        if FileManager.default.fileExists(atPath: target) { return digest }
        let dir = (target as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try AtomicFileWriter.write(bytes, to: target, durable: durable)
        return digest
    }

    /// The bytes stored under `digest`, verified; nil when missing or corrupt.
    /// Mapped and hashed in place, then copied once: a large model's gradients and
    /// training state are hundreds of MB (the coordinator reads those off its loop).
    public func get(_ digest: String, size: UInt64? = nil) -> [UInt8]? {
        Self.get(digest, size: size, root: root)
    }

    /// `get` under another store's `root` (a worker that sees the coordinator's directory).
    static func get(_ digest: String, size: UInt64?, root: String) -> [UInt8]? {
        guard let file = try? MappedFile(path: path(for: digest, root: root)) else { return nil }
        if let size, UInt64(file.size) != size { return nil }
        return withExtendedLifetime(file) {
            let bytes = file.bytes(0..<file.size)
            return SHA256Stream.hex(bytes) == digest ? [UInt8](bytes) : nil
        }
    }

    /// Whether the artifact is present and intact.
    public func verify(_ digest: String) -> Bool {
        guard let digestOfFile = try? SHA256Stream.hex(file: path(for: digest)) else { return false }
        return digestOfFile == digest
    }
}
