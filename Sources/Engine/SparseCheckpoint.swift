import Foundation
import Pruning
import Tensors

/// Reads a `sparse/` directory back: pruned tensors from their four parts, others as
/// stored. Reads both namings of the parts (`X.bitmask` for `X.weight`, as
/// compressed-tensors names them, and the first one, `X.weight.bitmask`).
public struct SparseCheckpoint {
    public let checkpoint: Checkpoint
    /// Dense tensor name → the prefix its parts are named after.
    private let groups: [String: String]

    public init(path: String) throws {
        let checkpoint = try Checkpoint(path: path)
        self.checkpoint = checkpoint
        var groups: [String: String] = [:]
        for t in checkpoint.tensors {
            guard let group = SparseCheckpoint.baseName(t.name),
                  SparseLayout.suffixes.allSatisfy({ checkpoint.info(group + $0) != nil }) else { continue }
            groups[SparseLayout.denseName(ofGroup: group)] = group
        }
        self.groups = groups
    }

    /// Dense tensor names in file order, each with the shard it lives in.
    public func denseNames() -> [(name: String, shard: String, sparse: Bool)] {
        var out: [(String, String, Bool)] = []
        var seen = Set<String>()
        for t in checkpoint.tensors {
            if let group = SparseCheckpoint.baseName(t.name), groups[SparseLayout.denseName(ofGroup: group)] == group {
                let name = SparseLayout.denseName(ofGroup: group)
                if seen.insert(name).inserted { out.append((name, checkpoint.shardName(of: t.name)!, true)) }
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

    /// The prefix of a compressed tensor's parts.
    private func group(_ name: String) throws -> String {
        guard let g = groups[name] else { throw CheckpointError(file: checkpoint.directory, tensor: name, "is not stored compressed") }
        return g
    }

    /// The dense dtype and shape of a pruned tensor, from its `.compressed` and `.shape`
    /// parts, validated so no size computed from them can overflow.
    public func denseSpec(_ name: String) throws -> TensorSpec {
        let base = try group(name)
        let shapeInfo = checkpoint.info(base + ".shape")!
        let compressedInfo = checkpoint.info(base + ".compressed")!
        let file = checkpoint.shard(of: base + ".shape")!.path
        guard shapeInfo.dtype == .i64, shapeInfo.shape.count == 1 else {
            throw CheckpointError(file: file, tensor: base + ".shape", "must be a 1-D I64 tensor")
        }
        let shape = SparseLayout.int64s(checkpoint.bytes(shapeInfo)).map { Int(clamping: $0) }
        guard shape.count >= 2, let elements = MatrixView.elementCount(shape),
              elements.multipliedReportingOverflow(by: compressedInfo.dtype.size).overflow == false else {
            throw CheckpointError(file: file, tensor: base + ".shape", "\(shape) is not a valid shape of a pruned tensor (2 or more non-negative dimensions)")
        }
        guard compressedInfo.dtype.isFloat, compressedInfo.shape.count == 1 else {
            throw CheckpointError(file: file, tensor: base + ".compressed", "must be a 1-D F32, F16 or BF16 tensor")
        }
        return TensorSpec(name: name, dtype: compressedInfo.dtype, shape: shape)
    }

    /// Rebuilds a pruned tensor, validating that its four parts agree.
    public func sparseTensor(_ name: String) throws -> SparseBitmaskTensor {
        let spec = try denseSpec(name)
        let base = try group(name)
        let file = checkpoint.shard(of: base + ".shape")!.path
        let bitmask = checkpoint.info(base + ".bitmask")!
        let offsets = checkpoint.info(base + ".row_offsets")!
        let rows = MatrixView.rows(spec.shape), cols = MatrixView.cols(spec.shape)
        guard bitmask.dtype == .u8, bitmask.byteCount == rows * ((cols + 7) / 8) else {
            throw CheckpointError(file: file, tensor: base + ".bitmask", "must be U8 with \(rows) × \(((cols + 7) / 8)) bytes for shape \(spec.shape)")
        }
        guard offsets.dtype == .i64, offsets.elementCount == rows else {
            throw CheckpointError(file: file, tensor: base + ".row_offsets", "must be I64 with \(rows) entries for shape \(spec.shape)")
        }
        let compressed = checkpoint.info(base + ".compressed")!
        return SparseBitmaskTensor(dtype: spec.dtype, shape: spec.shape, bitmask: [UInt8](checkpoint.bytes(bitmask)),
                                   compressed: [UInt8](checkpoint.bytes(compressed)),
                                   rowOffsets: SparseLayout.int64s(checkpoint.bytes(offsets)))
    }

    /// A pruned tensor rebuilt to dense bytes; errors name the file and tensor.
    public func denseBytes(_ name: String) throws -> [UInt8] {
        do {
            return try sparseTensor(name).densify()
        } catch let e as PruningError {
            throw CheckpointError(file: checkpoint.shard(of: try group(name) + ".shape")!.path, tensor: name, e.message)
        }
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
        let parentPath = (output as NSString).deletingLastPathComponent
        let parent = parentPath.isEmpty ? "." : parentPath
        let staging = (parent as NSString).appendingPathComponent(".densify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        do {
            try fm.createDirectory(atPath: staging, withIntermediateDirectories: false)
        } catch {
            throw CheckpointError(file: output, "cannot create the output beside it in \(parent): \(CheckpointError.reason(error))")
        }
        do {
            let names = sparse.denseNames()
            var weightMap: [String: String] = [:]
            var total = 0
            for (shardName, shard) in zip(sparse.checkpoint.shardNames, sparse.checkpoint.shards) {
                // Specs come from the small .shape/.compressed headers; each tensor is then
                // rebuilt and written one at a time, so a shard is never held in memory.
                var specs: [(spec: TensorSpec, sparse: Bool)] = []
                for entry in names where entry.shard == shardName {
                    if entry.sparse {
                        specs.append((try sparse.denseSpec(entry.name), true))
                    } else {
                        let info = sparse.checkpoint.info(entry.name)!
                        specs.append((TensorSpec(name: entry.name, dtype: info.dtype, shape: info.shape), false))
                    }
                    weightMap[entry.name] = shardName
                    total += specs.last!.spec.byteCount
                }
                let writer = try SafeTensorsWriter(path: (staging as NSString).appendingPathComponent(shardName),
                                                   tensors: specs.map(\.spec), metadata: shard.metadata)
                for (spec, isSparse) in specs {
                    if isSparse {
                        try writer.write(try sparse.denseBytes(spec.name))
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
                let source = (sparse.checkpoint.directory as NSString).appendingPathComponent(side)
                guard let data = fm.contents(atPath: source) else { throw CheckpointError(file: source, "cannot read") }
                // A dense checkpoint: the config no longer says its weights are compressed.
                let bytes = side == "config.json" ? try CompressionConfig.removed(from: [UInt8](data), file: source).bytes : [UInt8](data)
                try AtomicFileWriter.write(bytes, to: (staging as NSString).appendingPathComponent(side))
            }
            if fm.fileExists(atPath: output) { try fm.removeItem(atPath: output) }
            guard rename(staging, output) == 0 else {
                throw CheckpointError(file: output, "cannot create: \(String(cString: strerror(errno)))")
            }
        } catch {
            try? fm.removeItem(atPath: staging)
            throw error
        }
    }
}
