import Foundation
import Tensors

/// Task results stored by content: `artifacts/ab/abcdef…` named by their sha256, each
/// written to a temporary file, fsync'd and renamed, so a present artifact is complete.
public struct ArtifactStore: Sendable {
    public let root: String

    public init(root: String) throws {
        self.root = root
        do {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError(file: root, "cannot create: \(CheckpointError.reason(error))")
        }
    }

    public func path(for digest: String) -> String {
        (root as NSString).appendingPathComponent("\(digest.prefix(2))/\(digest)")
    }

    /// Stores bytes durably and returns their sha256.
    @discardableResult
    public func put(_ bytes: [UInt8]) throws -> String {
        let digest = bytes.withUnsafeBytes { SHA256Stream.hex($0) }
        let target = path(for: digest)
        if FileManager.default.fileExists(atPath: target) { return digest }
        let dir = (target as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try AtomicFileWriter.write(bytes, to: target)
        return digest
    }

    /// The bytes stored under `digest`, verified; nil when missing or corrupt.
    public func get(_ digest: String) -> [UInt8]? {
        guard let data = FileManager.default.contents(atPath: path(for: digest)) else { return nil }
        let bytes = [UInt8](data)
        return bytes.withUnsafeBytes { SHA256Stream.hex($0) } == digest ? bytes : nil
    }

    /// Whether the artifact is present and intact.
    public func verify(_ digest: String) -> Bool {
        guard let digestOfFile = try? SHA256Stream.hex(file: path(for: digest)) else { return false }
        return digestOfFile == digest
    }
}
