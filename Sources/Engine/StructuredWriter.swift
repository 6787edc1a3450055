import Foundation
import Pruning
import Tensors

/// What writes a job's `out/` (dense/, sparse/ or the smaller model, manifest.json).
public protocol OutputWriter {
    /// Largest block of rows held in memory at once.
    var blockBytes: Int { get set }
    func write(to directory: String, progress: ProgressReporter?) throws -> Manifest
}

extension Assembler: OutputWriter {}

/// Writes the smaller model of a structured job (`pattern: channels`, `heads`,
/// `heads+channels`): `dense/`
/// holds every tensor of the checkpoint with the removed units' rows and columns dropped
/// (same names, dtypes, shard files and metadata) and a config.json whose widths say so,
/// so stock `AutoModelForCausalLM` loads it. There is no `sparse/`: nothing in the smaller
/// model is sparse. manifest.json records each block's kept units, from which
/// `prune check` rebuilds every output tensor from the input.
public struct StructuredWriter: OutputWriter {
    public let checkpoint: Checkpoint
    public let plan: Plan
    public let units: StructuredPlan
    public let spec: JobSpec
    /// The kept units of each group of the plan, in group order.
    public let kept: [[Int]]
    public var blockBytes = 8 << 20
    /// New values of a tensor a re-fit changed (`reconstruct: layer`: down, o), full size.
    public var updated: (String) throws -> [Float]? = { _ in nil }
    /// A re-fit tensor's error before and after and its relative residual.
    public var refitErrors: (String) throws -> [Double]? = { _ in nil }
    /// FLAP's compensation bias of a weight that reads the units (down, o), by weight name.
    public var compensation: (String) throws -> [Float]? = { _ in nil }

    public init(checkpoint: Checkpoint, plan: Plan, units: StructuredPlan, spec: JobSpec, kept: [[Int]]) {
        self.checkpoint = checkpoint
        self.plan = plan
        self.units = units
        self.spec = spec
        self.kept = kept
    }

    /// The fraction of group g's units removed (a global allocation decides it per group).
    func removedFraction(group g: Int) -> Double {
        units.global == nil ? units.sparsity(ofGroup: g) : 1 - Double(kept[g].count) / Double(units.groups[g].count)
    }

    /// The shape a tensor has in the smaller model.
    static func outputShape(_ t: TensorInfo, rows: [Int]?, cols: [Int]?) -> [Int] {
        var shape = t.shape
        if let rows { shape[0] = rows.count }
        if let cols { shape[shape.count - 1] = cols.count }
        return shape
    }

    /// The bytes of a tensor in the smaller model: its kept rows' kept columns, in order
    /// (nil: every row, or every column). A 1-D tensor has rows of one element.
    static func shrunk(_ source: UnsafeRawBufferPointer, info t: TensorInfo, rows keptRows: [Int]?, cols keptCols: [Int]?) -> [UInt8] {
        let size = t.dtype.size
        let rows = t.shape.count == 1 ? t.shape[0] : t.rows, cols = t.shape.count == 1 ? 1 : t.cols
        let rowList = keptRows ?? Array(0..<rows)
        var out = [UInt8]()
        out.reserveCapacity(rowList.count * (keptCols?.count ?? cols) * size)
        for r in rowList {
            let row = r * cols * size
            if let keptCols {
                for c in keptCols { out.append(contentsOf: source[(row + c * size)..<(row + (c + 1) * size)]) }
            } else {
                out.append(contentsOf: source[row..<(row + cols * size)])
            }
        }
        return out
    }

    public func write(to directory: String, progress: ProgressReporter? = nil) throws -> Manifest {
        let fm = FileManager.default
        let denseDir = (directory as NSString).appendingPathComponent("dense")
        try fm.createDirectory(atPath: denseDir, withIntermediateDirectories: true)
        let sliced = units.slicedTensors
        let addedBiases = units.addedBiases(kept: kept)
        var tensors: [String: Manifest.Tensor] = [:]
        var weightMap: [String: String] = [:]
        var modelFiles: [String: String] = [:]
        var denseBytes = 0, parametersAfter = 0, zerosTotal = 0, prunedParameters = 0, prunedBytesBefore = 0, prunedBytesAfter = 0
        for (shardName, shard) in zip(checkpoint.shardNames, checkpoint.shards) {
            modelFiles[shardName] = try DigestCache.shared.sha256(file: shard.path)
            let lines = shard.tensors.map { t in sliced[t.name].map { units.keptLines($0, kept: kept) } }
            let shapes = zip(shard.tensors, lines).map { t, l in StructuredWriter.outputShape(t, rows: l?.rows, cols: l?.cols) }
            let path = (denseDir as NSString).appendingPathComponent(shardName)
            // Added biases go in their weight's shard, after the shard's own tensors.
            let inShard = Set(shard.tensors.map(\.name))
            let added = addedBiases.filter { inShard.contains($0.weight) }
            let addedSpecs = added.map { TensorSpec(name: $0.name, dtype: checkpoint.info($0.weight)!.dtype, shape: [$0.length]) }
            let writer = try SafeTensorsWriter(path: path, tensors: zip(shard.tensors, shapes).map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $1) } + addedSpecs,
                                               metadata: shard.metadata)
            for (i, t) in shard.tensors.enumerated() {
                weightMap[t.name] = shardName
                let source = shard.bytes(t)
                var digest = SHA256Stream()
                let elements = shapes[i].reduce(1, *)
                var zeros = 0
                let values = try updated(t.name)
                if let keep = lines[i] {
                    var full: [UInt8] = []
                    if let values {
                        guard values.count == t.elementCount else { throw PruningError("re-fit weights of \(t.name): \(values.count) values, not \(t.elementCount)") }
                        full = [UInt8](repeating: 0, count: t.byteCount)
                        values.withUnsafeBufferPointer { v in full.withUnsafeMutableBytes { FloatConversion.fromFloat(v, dtype: t.dtype, into: $0) } }
                    }
                    let bytes = values == nil ? StructuredWriter.shrunk(source, info: t, rows: keep.rows, cols: keep.cols)
                        : full.withUnsafeBytes { StructuredWriter.shrunk($0, info: t, rows: keep.rows, cols: keep.cols) }
                    try writer.write(bytes)
                    digest.update(bytes)
                    zeros = bytes.withUnsafeBytes { TensorPruner.zeroCount($0, elementSize: t.dtype.size) }
                } else {
                    try writer.write(source)
                    digest.update(source)
                    zeros = TensorPruner.zeroCount(source, elementSize: t.dtype.size)
                }
                shard.release(t)
                let hex = digest.finalizeHex()
                let isPruned = sliced[t.name] != nil
                let removed = t.elementCount - elements
                if isPruned {
                    zerosTotal += zeros
                    prunedParameters += t.elementCount
                    prunedBytesBefore += t.byteCount
                    prunedBytesAfter += elements * t.dtype.size
                }
                parametersAfter += elements
                var entry = Manifest.Tensor(
                    shape: shapes[i], dtype: t.dtype.rawValue, pruned: isPruned,
                    pattern: isPruned ? plan.pattern.description : nil, method: isPruned ? spec.method.rawValue : nil,
                    targetSparsity: sliced[t.name].map { removedFraction(group: $0[0].group) },
                    achievedSparsity: t.elementCount == 0 ? 0 : Double(removed) / Double(t.elementCount),
                    masked: removed, zeros: zeros, elements: elements, sha256Dense: hex, sha256Sparse: hex, reconstructionError: nil)
                if isPruned { entry.sourceShape = t.shape }
                if values != nil, let errors = try refitErrors(t.name) {
                    entry.valuesUpdated = true
                    entry.reconstructionError = errors[1]
                    entry.measures = ["reconstruction_error_before": errors[0], "reconstruction_residual": errors[2]]
                }
                tensors[t.name] = entry
            }
            for (bias, tensorSpec) in zip(added, addedSpecs) {
                var values = [Float](repeating: 0, count: bias.length)
                if bias.compensates {
                    guard let c = try compensation(bias.weight), c.count == bias.length, c.allSatisfy(\.isFinite) else {
                        throw PruningError("\(bias.name): no compensation of \(bias.length) finite values")
                    }
                    values = c
                }
                var bytes = [UInt8](repeating: 0, count: bias.length * tensorSpec.dtype.size)
                values.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { FloatConversion.fromFloat(v, dtype: tensorSpec.dtype, into: $0) } }
                try writer.write(bytes)
                weightMap[bias.name] = shardName
                parametersAfter += bias.length
                let hex = bytes.withUnsafeBytes { SHA256Stream.hex($0) }
                var entry = Manifest.Tensor(shape: tensorSpec.shape, dtype: tensorSpec.dtype.rawValue, pruned: false, pattern: nil, method: bias.compensates ? spec.method.rawValue : nil,
                                            targetSparsity: nil, achievedSparsity: 0, masked: 0,
                                            zeros: bytes.withUnsafeBytes { TensorPruner.zeroCount($0, elementSize: tensorSpec.dtype.size) },
                                            elements: bias.length, sha256Dense: hex, sha256Sparse: hex, reconstructionError: nil, valuesUpdated: bias.compensates)
                entry.added = true
                tensors[bias.name] = entry
            }
            try writer.finish()
            denseBytes += try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
            progress?.step(shardName)
        }
        if checkpoint.indexFileName != nil {
            try AtomicFileWriter.write(SparseLayout.indexJSON(weightMap: weightMap, totalSize: denseBytes),
                                       to: (denseDir as NSString).appendingPathComponent(Checkpoint.indexFileName))
        }
        for side in checkpoint.sideFiles() {
            let source = (checkpoint.directory as NSString).appendingPathComponent(side)
            guard let data = fm.contents(atPath: source) else { throw CheckpointError(file: source, "cannot read") }
            let bytes = side == "config.json" ? try units.rewrittenConfig([UInt8](data), file: source, kept: kept) : [UInt8](data)
            try AtomicFileWriter.write(bytes, to: (denseDir as NSString).appendingPathComponent(side))
        }
        var manifest = Manifest(
            specSHA256: spec.digest, method: spec.method.rawValue, pattern: plan.pattern.description, sparsity: plan.sparsity,
            modelFiles: modelFiles, tensors: tensors,
            totals: .init(denseBytes: denseBytes, sparseBytes: 0, sparseToDenseRatio: 0,
                          prunedDenseBytes: prunedBytesAfter, prunedSparseBytes: 0,
                          prunedSparseToDenseRatio: Double(prunedBytesAfter) / Double(max(prunedBytesBefore, 1)),
                          parameters: checkpoint.parameterCount, prunedParameters: prunedParameters, zeros: zerosTotal))
        let parts = units.kinds.map { kind in
            let first = units.groups.first { $0.kind == kind }!
            let perLayer = units.keptPerLayer(kind, kept: kept)
            let sparsity = units.global == nil ? units.sparsity(of: kind) : 1 - Double(perLayer.reduce(0, +)) / Double(first.count * perLayer.count)
            return Manifest.Structure.Part(kind: kind.rawValue, sparsity: sparsity, unitsPerBlock: first.count,
                                           keptPerBlock: units.keptPerBlock(kind), width: first.width, keptPerLayer: units.global == nil ? nil : perLayer)
        }
        let one = parts.count == 1 ? parts[0] : nil
        manifest.structure = Manifest.Structure(
            kind: units.kindName, score: units.score.rawValue, unitsPerBlock: one?.unitsPerBlock, keptPerBlock: one?.keptPerBlock,
            width: one?.width, parts: parts, kept: kept, parametersBefore: checkpoint.parameterCount, parametersAfter: parametersAfter,
            allocation: units.global == nil ? nil : "global", standardization: units.global == nil ? nil : units.standardization.rawValue)
        try AtomicFileWriter.write(try manifest.jsonBytes(), to: (directory as NSString).appendingPathComponent("manifest.json"))
        return manifest
    }
}
