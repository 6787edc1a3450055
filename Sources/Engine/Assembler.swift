import Foundation
import Pruning
import Tensors

/// Writes `dense/`, `sparse/` and `manifest.json` from the checkpoint and the masks,
/// streaming one tensor at a time: the model is never held in memory at once.
public struct Assembler {
    public let checkpoint: Checkpoint
    public let plan: Plan
    /// Tensors that are pruned; their masks come from `loadMask` one tensor at a time,
    /// so a coordinator never holds every mask of a large model at once.
    public let pruned: Set<String>
    private let loadMask: (String) throws -> Mask
    public let spec: JobSpec
    /// New values of pruned tensors whose kept weights a method updated (SparseGPT),
    /// written back in the tensor's own dtype (BF16 rounded to nearest even).
    public var updated: [String: [Float]] = [:]
    /// Reconstruction error per tensor, for the manifest.
    public var errors: [String: Double] = [:]

    public init(checkpoint: Checkpoint, plan: Plan, masks: [String: Mask], spec: JobSpec) {
        self.init(checkpoint: checkpoint, plan: plan, pruned: Set(masks.keys), spec: spec) { name in
            guard let m = masks[name] else { throw PruningError("no mask for '\(name)'") }
            return m
        }
    }

    public init(checkpoint: Checkpoint, plan: Plan, pruned: Set<String>, spec: JobSpec, mask: @escaping (String) throws -> Mask) {
        self.checkpoint = checkpoint
        self.plan = plan
        self.pruned = pruned
        self.spec = spec
        loadMask = mask
    }

    /// Per-tensor facts gathered while writing dense/, needed for sparse/ headers.
    private struct Written {
        var sha256Dense: String
        var zeros: Int
        /// Weights the mask removed.
        var masked = 0
        /// Stored (nonzero) elements per row, for pruned tensors.
        var storedPerRow: [Int] = []
    }

    /// Largest block of rows held in memory at once.
    public var blockBytes = 8 << 20

    /// Writes everything under `directory` (which must exist and be empty).
    ///
    /// Every pass reads a tensor in row blocks and releases each block's pages, so memory
    /// stays bounded by `blockBytes` (plus one bit per weight of masks) whatever the model.
    public func write(to directory: String, progress: ProgressReporter? = nil) throws -> Manifest {
        let fm = FileManager.default
        let denseDir = (directory as NSString).appendingPathComponent("dense")
        let sparseDir = (directory as NSString).appendingPathComponent("sparse")
        try fm.createDirectory(atPath: denseDir, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: sparseDir, withIntermediateDirectories: true)

        var written: [String: Written] = [:]
        var sparseDigests: [String: String] = [:]
        var denseWeightMap: [String: String] = [:]
        var sparseWeightMap: [String: String] = [:]
        var denseBytes = 0, sparseBytes = 0
        var modelFiles: [String: String] = [:]
        var prunedDenseBytes = 0, prunedSparseBytes = 0

        for (shardName, shard) in zip(checkpoint.shardNames, checkpoint.shards) {
            modelFiles[shardName] = try SHA256Stream.hex(file: shard.path)
            // dense/: same names, dtypes, order and metadata; zeros where pruned.
            let denseWriter = try SafeTensorsWriter(
                path: (denseDir as NSString).appendingPathComponent(shardName),
                tensors: shard.tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                metadata: shard.metadata)
            for t in shard.tensors {
                denseWeightMap[t.name] = shardName
                var digest = SHA256Stream()
                var w = Written(sha256Dense: "", zeros: 0)
                if pruned.contains(t.name) { w.masked = try loadMask(t.name).prunedCount }
                try forEachOutputBlock(t, shard: shard) { _, bytes in
                    try denseWriter.write(bytes)
                    digest.update(bytes)
                    w.zeros += TensorPruner.zeroCount(bytes, elementSize: t.dtype.size)
                }
                w.sha256Dense = digest.finalizeHex()
                written[t.name] = w
            }
            try denseWriter.finish()

            // sparse/: pruned tensors as bitmask + compressed + row_offsets + shape.
            var specs: [TensorSpec] = []
            for t in shard.tensors {
                if pruned.contains(t.name) {
                    let stored = t.elementCount - written[t.name]!.zeros
                    let parts = SparseLayout.specs(name: t.name, dtype: t.dtype, shape: t.shape, stored: stored)
                    specs += parts
                    for p in parts { sparseWeightMap[p.name] = shardName }
                } else {
                    specs.append(TensorSpec(name: t.name, dtype: t.dtype, shape: t.shape))
                    sparseWeightMap[t.name] = shardName
                }
            }
            let sparsePath = (sparseDir as NSString).appendingPathComponent(shardName)
            let sparseWriter = try SafeTensorsWriter(path: sparsePath, tensors: specs, metadata: shard.metadata)
            for t in shard.tensors {
                guard pruned.contains(t.name) else {
                    try forEachOutputBlock(t, shard: shard) { _, bytes in try sparseWriter.write(bytes) }
                    sparseDigests[t.name] = written[t.name]!.sha256Dense
                    continue
                }
                // The four parts in file order, each streamed block by block; the sparse
                // digest covers them in the same order.
                var digest = SHA256Stream()
                var size = 0
                func emit(_ part: [UInt8]) throws {
                    try sparseWriter.write(part)
                    digest.update(part)
                    size += part.count
                }
                let cols = t.cols, elementSize = t.dtype.size
                try forEachOutputBlock(t, shard: shard) { rows, bytes in
                    var bits: [UInt8] = []
                    SparseEncoder.appendBitmask(bytes, rows: rows.count, cols: cols, elementSize: elementSize, into: &bits)
                    try emit(bits)
                }
                var perRow: [Int] = []
                perRow.reserveCapacity(t.rows)
                try forEachOutputBlock(t, shard: shard) { rows, bytes in
                    var values: [UInt8] = []
                    values.reserveCapacity(bytes.count)
                    perRow += SparseEncoder.appendStored(bytes, rows: rows.count, cols: cols, elementSize: elementSize, into: &values)
                    try emit(values)
                }
                var offsets = [Int64](repeating: 0, count: t.rows)
                var running: Int64 = 0
                for r in 0..<t.rows { offsets[r] = running; running += Int64(perRow[r]) }
                try emit(SparseLayout.int64Bytes(offsets))
                try emit(SparseLayout.int64Bytes(t.shape.map(Int64.init)))
                sparseDigests[t.name] = digest.finalizeHex()
                prunedDenseBytes += t.byteCount
                prunedSparseBytes += size
            }
            try sparseWriter.finish()
            denseBytes += try fileSize((denseDir as NSString).appendingPathComponent(shardName))
            sparseBytes += try fileSize(sparsePath)
            progress?.step(shardName)
        }

        if checkpoint.indexFileName != nil {
            try AtomicFileWriter.write(SparseLayout.indexJSON(weightMap: denseWeightMap, totalSize: checkpoint.byteCount),
                                       to: (denseDir as NSString).appendingPathComponent(Checkpoint.indexFileName))
            let sparseTotal = prunedSparseBytes + checkpoint.tensors.filter { !pruned.contains($0.name) }.reduce(0) { $0 + $1.byteCount }
            try AtomicFileWriter.write(SparseLayout.indexJSON(weightMap: sparseWeightMap, totalSize: sparseTotal),
                                       to: (sparseDir as NSString).appendingPathComponent(Checkpoint.indexFileName))
        }
        for side in checkpoint.sideFiles() {
            let source = (checkpoint.directory as NSString).appendingPathComponent(side)
            for dir in [denseDir, sparseDir] {
                try fm.copyItem(atPath: source, toPath: (dir as NSString).appendingPathComponent(side))
            }
        }

        var tensors: [String: Manifest.Tensor] = [:]
        var zerosTotal = 0, prunedParameters = 0
        for t in checkpoint.tensors {
            let w = written[t.name]!
            let isPruned = pruned.contains(t.name)
            if isPruned { zerosTotal += w.zeros; prunedParameters += t.elementCount }
            tensors[t.name] = Manifest.Tensor(
                shape: t.shape, dtype: t.dtype.rawValue, pruned: isPruned,
                pattern: isPruned ? plan.pattern.description : nil,
                method: isPruned ? spec.method.rawValue : nil,
                targetSparsity: isPruned ? plan.sparsity : nil,
                achievedSparsity: t.elementCount == 0 ? 0 : Double(w.zeros) / Double(t.elementCount),
                masked: w.masked, zeros: w.zeros, elements: t.elementCount,
                sha256Dense: w.sha256Dense, sha256Sparse: sparseDigests[t.name]!, reconstructionError: errors[t.name],
                valuesUpdated: updated[t.name] != nil)
        }
        let manifest = Manifest(
            specSHA256: spec.digest, method: spec.method.rawValue, pattern: plan.pattern.description, sparsity: plan.sparsity,
            modelFiles: modelFiles, tensors: tensors,
            totals: .init(denseBytes: denseBytes, sparseBytes: sparseBytes,
                          sparseToDenseRatio: Double(sparseBytes) / Double(max(denseBytes, 1)),
                          prunedDenseBytes: prunedDenseBytes, prunedSparseBytes: prunedSparseBytes,
                          prunedSparseToDenseRatio: Double(prunedSparseBytes) / Double(max(prunedDenseBytes, 1)),
                          parameters: checkpoint.parameterCount, prunedParameters: prunedParameters, zeros: zerosTotal))
        try AtomicFileWriter.write(try manifest.jsonBytes(), to: (directory as NSString).appendingPathComponent("manifest.json"))
        return manifest
    }

    /// Calls `body` with the output bytes of a tensor, block of rows by block of rows:
    /// the source bytes, masked if the tensor is pruned.
    private func forEachOutputBlock(_ t: TensorInfo, shard: SafeTensorsFile,
                                    _ body: (Range<Int>, UnsafeRawBufferPointer) throws -> Void) throws {
        guard pruned.contains(t.name) else {
            return try shard.forEachRowBlock(t, maxBytes: blockBytes, body)
        }
        let mask = try loadMask(t.name)
        var out: [UInt8] = []
        var encoded: [UInt8] = []
        let values = updated[t.name]
        try shard.forEachRowBlock(t, maxBytes: blockBytes) { rows, source in
            if out.count != source.count { out = [UInt8](repeating: 0, count: source.count) }
            var input = source
            if let values {
                // Updated weights replace the source values, encoded in the tensor's dtype.
                if encoded.count != source.count { encoded = [UInt8](repeating: 0, count: source.count) }
                let cols = t.cols
                values.withUnsafeBufferPointer { v in
                    encoded.withUnsafeMutableBytes {
                        FloatConversion.fromFloat(UnsafeBufferPointer(rebasing: v[(rows.lowerBound * cols)..<(rows.upperBound * cols)]), dtype: t.dtype, into: $0)
                    }
                }
                input = encoded.withUnsafeBytes { $0 }
            }
            out.withUnsafeMutableBytes { MaskApplication.apply(mask, rows: rows, source: input, elementSize: t.dtype.size, into: $0) }
            try out.withUnsafeBytes { try body(rows, $0) }
        }
    }

    private func fileSize(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    }
}
