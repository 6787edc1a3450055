import Foundation
import Protocol
import Tensors

/// Where a worker gets checkpoint bytes: a local file with the coordinator's digest
/// (memory-mapped), else chunks pulled from the coordinator.
final class TensorSource {
    /// Files the coordinator announced, by sha256.
    private var files: [String: Prune_V1_ModelFile] = [:]
    /// Local paths verified to hold a file, by sha256 (nil: looked, none found).
    private var local: [String: MappedFile?] = [:]
    private let dataRoots: [String]
    private let pullOnly: Bool

    init(dataRoots: [String], pullOnly: Bool = false) {
        self.dataRoots = dataRoots
        self.pullOnly = pullOnly
    }

    func announce(_ modelFiles: [Prune_V1_ModelFile]) {
        for f in modelFiles { files[f.sha256] = f }
    }

    /// A mapped local copy of the file with this digest, if this machine has one. The
    /// digest comes from the host's digest cache when the file is unchanged since it was
    /// last hashed (by the coordinator, or another worker, on this host).
    func localFile(_ sha256: String) -> MappedFile? {
        if pullOnly { return nil }
        if let cached = local[sha256] { return cached }
        var found: MappedFile?
        if let f = files[sha256] {
            let candidates = [f.path] + dataRoots.map { ($0 as NSString).appendingPathComponent(f.name) }
            for path in candidates where !path.isEmpty {
                guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                      (attributes[.size] as? Int).map(UInt64.init) == f.size,
                      (try? DigestCache.shared.sha256(file: path)) == sha256,
                      let mapped = try? MappedFile(path: path) else { continue }
                found = mapped
                break
            }
        }
        local[sha256] = found
        return found
    }

    /// Size of an announced file.
    func size(_ sha256: String) -> UInt64? { files[sha256]?.size }
}
