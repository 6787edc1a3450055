import Foundation
import Pruning
import Tensors

/// Reads a `sparse/` directory back: pruned tensors from their four parts, others as stored.
public struct SparseCheckpoint {
    public let checkpoint: Checkpoint

    public init(path: String) throws {
        checkpoint = try Checkpoint(path: path)
    }

    /// Dense tensor names in file order, each with the shard it lives in.
    public func denseNames() -> [(name: String, shard: String, sparse: Bool)] {
        var out: [(String, String, Bool)] = []
        var seen = Set<String>()
        for t in checkpoint.tensors {
            if let base = SparseCheckpoint.baseName(t.name), isSparseGroup(base) {
                if seen.insert(base).inserted { out.append((base, checkpoint.shardName(of: t.name)!, true)) }
            } else {
                out.append((t.name, checkpoint.shardName(of: t.name)!, false))
            }
        }
        return out
    }

    static func baseName(_ name: String) -> String? {
        for s in SparseLayout.suffixes where name.hasSuffix(s) { return String(name.dropLast(s.count)) }
        return nil
    }

    func isSparseGroup(_ base: String) -> Bool {
        SparseLayout.suffixes.allSatisfy { checkpoint.info(base + $0) != nil }
    }

    /// Rebuilds a pruned tensor, validating its parts.
    public func sparseTensor(_ base: String) throws -> SparseBitmaskTensor {
        func part(_ suffix: String) -> (TensorInfo, UnsafeRawBufferPointer) {
            let info = checkpoint.info(base + suffix)!
            return (info, checkpoint.bytes(info))
        }
        let (shapeInfo, shapeBytes) = part(".shape")
        let (_, bitmask) = part(".bitmask")
        let (compressedInfo, compressed) = part(".compressed")
        let (offsetsInfo, offsets) = part(".row_offsets")
        let file = checkpoint.shard(of: base + ".shape")!.path
        guard shapeInfo.dtype == .i64, offsetsInfo.dtype == .i64 else {
            throw CheckpointError(file: file, tensor: base, "sparse .shape and .row_offsets must be I64")
        }
        let shape = SparseLayout.int64s(shapeBytes).map { Int($0) }
        guard shape.allSatisfy({ $0 >= 0 }), !shape.isEmpty else {
            throw CheckpointError(file: file, tensor: base, "sparse .shape \(shape) is not a valid shape")
        }
        return SparseBitmaskTensor(dtype: compressedInfo.dtype, shape: shape, bitmask: [UInt8](bitmask),
                                   compressed: [UInt8](compressed), rowOffsets: SparseLayout.int64s(offsets))
    }
}

/// `prune densify`: turns `sparse/` back into a dense checkpoint, bit-exact with `dense/`.
public enum Densifier {
    public static func densify(sparseDirectory: String, to output: String) throws {
        let sparse = try SparseCheckpoint(path: sparseDirectory)
        let fm = FileManager.default
        if fm.fileExists(atPath: output) {
            let entries = (try? fm.contentsOfDirectory(atPath: output)) ?? ["?"]
            guard entries.isEmpty else { throw SpecError("\(output): already exists and is not empty") }
        }
        let parent = (output as NSString).deletingLastPathComponent
        let staging = ((parent.isEmpty ? "." : parent) as NSString).appendingPathComponent(".densify-\(getpid())")
        try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        do {
            let names = sparse.denseNames()
            var weightMap: [String: String] = [:]
            var total = 0
            for shardName in sparse.checkpoint.shardNames {
                let shard = sparse.checkpoint.shards[sparse.checkpoint.shardNames.firstIndex(of: shardName)!]
                var specs: [TensorSpec] = []
                var rebuilt: [String: SparseBitmaskTensor] = [:]
                for entry in names where entry.shard == shardName {
                    if entry.sparse {
                        let s = try sparse.sparseTensor(entry.name)
                        rebuilt[entry.name] = s
                        specs.append(TensorSpec(name: entry.name, dtype: s.dtype, shape: s.shape))
                    } else {
                        let info = sparse.checkpoint.info(entry.name)!
                        specs.append(TensorSpec(name: entry.name, dtype: info.dtype, shape: info.shape))
                    }
                    weightMap[entry.name] = shardName
                    total += specs.last!.byteCount
                }
                let writer = try SafeTensorsWriter(path: (staging as NSString).appendingPathComponent(shardName),
                                                   tensors: specs, metadata: shard.metadata)
                for spec in specs {
                    if let s = rebuilt[spec.name] {
                        do {
                            try writer.write(try s.densify())
                        } catch let e as PruningError {
                            throw CheckpointError(file: shard.path, tensor: spec.name, e.message)
                        }
                        rebuilt[spec.name] = nil
                    } else {
                        try writer.write(sparse.checkpoint.bytes(sparse.checkpoint.info(spec.name)!))
                    }
                }
                try writer.finish()
            }
            if sparse.checkpoint.indexFileName != nil {
                try AtomicFileWriter.write(SparseLayout.indexJSON(weightMap: weightMap, totalSize: total),
                                           to: (staging as NSString).appendingPathComponent(Checkpoint.indexFileName))
            }
            for side in sparse.checkpoint.sideFiles() {
                try fm.copyItem(atPath: (sparse.checkpoint.directory as NSString).appendingPathComponent(side),
                                toPath: (staging as NSString).appendingPathComponent(side))
            }
            if fm.fileExists(atPath: output) { try fm.removeItem(atPath: output) }
            try fm.moveItem(atPath: staging, toPath: output)
        } catch {
            try? fm.removeItem(atPath: staging)
            throw error
        }
    }
}
