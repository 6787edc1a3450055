import Engine
import Foundation
import Protocol
import Pruning
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// The coordinator's own inputs: checkpoint files mapped from its disk, artifacts from
/// its store (each verified by digest).
final class CoordinatorInputs: TaskInputs {
    private let paths: [String: String]
    private let artifacts: ArtifactStore
    private var mapped: [String: MappedFile] = [:]

    init(modelFiles: [Prune_V1_ModelFile], artifacts: ArtifactStore) {
        paths = Dictionary(modelFiles.map { ($0.sha256, $0.path) }, uniquingKeysWith: { a, _ in a })
        self.artifacts = artifacts
    }

    func withTensorBytes<R>(_ ref: Prune_V1_TensorRef, _ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard range.lowerBound >= 0, range.upperBound <= Int(clamping: ref.byteCount) else {
            throw PruningError("tensor '\(ref.name)': byte range \(range) outside its \(ref.byteCount) bytes")
        }
        guard let path = paths[ref.fileSha256] else { throw PruningError("tensor '\(ref.name)': its file is not part of the job") }
        if mapped[path] == nil { mapped[path] = try MappedFile(path: path) }
        let file = mapped[path]!
        let offset = Int(clamping: ref.offset) + range.lowerBound
        guard offset <= file.size - range.count else { throw PruningError("tensor '\(ref.name)': byte range outside \(path)") }
        defer { file.release(offset..<(offset + range.count)) }
        return try body(file.bytes(offset..<(offset + range.count)))
    }

    func artifact(_ ref: Prune_V1_ArtifactRef) throws -> [UInt8] {
        guard SHA256Stream.isHexDigest(ref.sha256), let bytes = artifacts.get(ref.sha256) else {
            throw PruningError("artifact \(ref.sha256.prefix(12))… is missing or corrupt")
        }
        return bytes
    }
}
