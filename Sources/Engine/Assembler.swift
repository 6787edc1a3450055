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
    /// Updated values kept elsewhere (a cluster job's artifacts), loaded one tensor at a
    /// time: the tensors that have them, and how to load them.
    public var updatedElsewhere: (names: Set<String>, load: (String) throws -> [Float])?
    /// Reconstruction error per tensor, for the manifest.
    public var errors: [String: Double] = [:]
    /// Figures phases measured per tensor (tensor → name → value), read once the masks are
    /// written, for the manifest.
    public var measures: () throws -> [String: [String: Double]] = { [:] }
    /// Per-tensor sparsity levels of a searched allocation (the plan's target otherwise).
    public var levels: [String: Double] = [:]
    /// A searched allocation's progress, for the manifest.
    public var search: () throws -> Manifest.Search? = { nil }
    /// Masked training's curve, for the manifest.
    public var training: () throws -> Manifest.Training? = { nil }

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
    /// Per shard: one pass counts what sparse/ will store of each pruned tensor (its header
    /// needs the counts first), then dense/ is written on this thread while sparse/ is
    /// written on a second one; each thread hashes its own bytes. A dense/ file is made
    /// durable (fsync, rename) on a third thread while the next shard is written.
    /// Every pass reads a tensor in row blocks and releases each block's pages, so memory
    /// stays bounded by two `blockBytes` blocks plus, for the pruned tensor each thread is
    /// at, its mask and sparse bitmask (one bit per weight each) and, for SparseGPT, its
    /// updated values, whatever the model. A pruned tensor's mask is loaded three times
    /// (count, dense, sparse). Per-element work runs eight elements at a time
    /// (`AssemblyKernels`). The bytes written do not depend on any of this.
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
        // dense/ files being made durable (fsync, rename) while the next shard is written.
        var commits: [BackgroundWork<Void>] = []
        defer { for c in commits { _ = try? c.wait() } }
        let sparseQueue = DispatchQueue(label: "assembler.sparse"), commitQueue = DispatchQueue(label: "assembler.commit")

        for (shardName, shard) in zip(checkpoint.shardNames, checkpoint.shards) {
            // Usually a cache hit: the coordinator (or an earlier run) hashed this file version.
            modelFiles[shardName] = try DigestCache.shared.sha256(file: shard.path)

            // The sparse header needs each pruned tensor's stored count before any of its
            // bytes; one cheap counting pass gives them, so that dense/ (this thread) and
            // sparse/ (a second thread) are then written at the same time.
            var storedCounts: [String: Int] = [:]
            for t in shard.tensors where compressed(t.name) { storedCounts[t.name] = try storedCount(t, shard: shard) }
            var specs: [TensorSpec] = []
            for t in shard.tensors {
                if let stored = storedCounts[t.name], let prefix = SparseLayout.partPrefix(forTensor: t.name) {
                    let parts = SparseLayout.specs(prefix: prefix, dtype: t.dtype, shape: t.shape, stored: stored)
                    specs += parts
                    for p in parts { sparseWeightMap[p.name] = shardName }
                } else {
                    specs.append(TensorSpec(name: t.name, dtype: t.dtype, shape: t.shape))
                    sparseWeightMap[t.name] = shardName
                }
            }
            let sparsePath = (sparseDir as NSString).appendingPathComponent(shardName)
            let sparseSide = BackgroundWork(on: sparseQueue) { [self] stop in
                try writeSparse(shard: shard, path: sparsePath, specs: specs, storedCounts: storedCounts, stop: stop)
            }

            // dense/: same names, dtypes, order and metadata; zeros where pruned.
            do {
                let denseWriter = try SafeTensorsWriter(
                    path: (denseDir as NSString).appendingPathComponent(shardName),
                    tensors: shard.tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                    metadata: shard.metadata)
                for t in shard.tensors {
                    denseWeightMap[t.name] = shardName
                    var digest = SHA256Stream()
                    var w = Written(sha256Dense: "", zeros: 0)
                    if pruned.contains(t.name) {
                        let mask = try checkedMask(t)
                        w.masked = mask.prunedCount
                        w.zeros = try forEachMaskedBlock(t, shard: shard, mask: mask) { bytes in
                            try denseWriter.write(bytes)
                            digest.update(bytes)
                        }
                        guard storedCounts[t.name].map({ w.zeros == t.elementCount - $0 }) ?? true else {
                            throw PruningError("'\(t.name)': the zeros written to dense/ disagree with the elements stored in sparse/")
                        }
                    } else {
                        // Not pruned: as it is, or with the values a phase gave it (training).
                        try forEachInputBlock(t, shard: shard, values: try updatedValues(of: t)) { _, bytes in
                            try denseWriter.write(bytes)
                            digest.update(bytes)
                            w.zeros += AssemblyKernels.zeroCount(bytes, elementSize: t.dtype.size)
                        }
                        shard.release(t)
                    }
                    w.sha256Dense = digest.finalizeHex()
                    written[t.name] = w
                }
                commits.append(BackgroundWork(on: commitQueue) { _ in try denseWriter.finish() })
            } catch {
                sparseSide.stop()
                _ = try? sparseSide.wait()
                throw error
            }

            let sparse = try sparseSide.wait()
            for t in shard.tensors {
                // An unpruned tensor has the same bytes in both files.
                sparseDigests[t.name] = sparse.digests[t.name] ?? written[t.name]!.sha256Dense
            }
            prunedDenseBytes += sparse.prunedDenseBytes
            prunedSparseBytes += sparse.prunedSparseBytes
            sparseBytes += try fileSize(sparsePath)
            progress?.step(shardName)
        }
        for c in commits { try c.wait() }
        for shardName in checkpoint.shardNames {
            denseBytes += try fileSize((denseDir as NSString).appendingPathComponent(shardName))
        }

        if checkpoint.indexFileName != nil {
            try AtomicFileWriter.write(SparseLayout.indexJSON(weightMap: denseWeightMap, totalSize: checkpoint.byteCount),
                                       to: (denseDir as NSString).appendingPathComponent(Checkpoint.indexFileName))
            let sparseTotal = prunedSparseBytes + checkpoint.tensors.filter { !pruned.contains($0.name) }.reduce(0) { $0 + $1.byteCount }
            try AtomicFileWriter.write(SparseLayout.indexJSON(weightMap: sparseWeightMap, totalSize: sparseTotal),
                                       to: (sparseDir as NSString).appendingPathComponent(Checkpoint.indexFileName))
        }
        // Side files (config, tokenizer) by content, never as links: a Hugging Face cache
        // snapshot holds relative symlinks into ../../blobs, which would dangle here.
        let zerosAll = checkpoint.tensors.reduce(0) { $0 + written[$1.name]!.zeros }
        let compression = CompressionConfig(
            globalSparsity: Double(zerosAll) / Double(max(checkpoint.parameterCount, 1)),
            sparsityStructure: CompressionConfig.structure(of: plan.pattern),
            targets: checkpoint.tensors.filter { compressed($0.name) }.compactMap { SparseLayout.partPrefix(forTensor: $0.name) }.sorted())
        for side in checkpoint.sideFiles() {
            let source = (checkpoint.directory as NSString).appendingPathComponent(side)
            guard let data = fm.contents(atPath: source) else { throw CheckpointError(file: source, "cannot read") }
            let bytes = [UInt8](data)
            try AtomicFileWriter.write(bytes, to: (denseDir as NSString).appendingPathComponent(side))
            // sparse/'s config tells compressed-tensors and transformers how to read it.
            let sparseBytes = side == "config.json" ? try compression.added(to: bytes, file: source) : bytes
            try AtomicFileWriter.write(sparseBytes, to: (sparseDir as NSString).appendingPathComponent(side))
        }

        let measured = try measures()
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
                targetSparsity: isPruned ? (levels[t.name] ?? plan.sparsity) : nil,
                achievedSparsity: t.elementCount == 0 ? 0 : Double(w.zeros) / Double(t.elementCount),
                masked: w.masked, zeros: w.zeros, elements: t.elementCount,
                sha256Dense: w.sha256Dense, sha256Sparse: sparseDigests[t.name]!, reconstructionError: errors[t.name],
                valuesUpdated: updated[t.name] != nil || updatedElsewhere?.names.contains(t.name) == true)
            tensors[t.name]!.measures = measured[t.name]
        }
        var manifest = Manifest(
            specSHA256: spec.digest, method: spec.method.rawValue, pattern: plan.pattern.description, sparsity: plan.sparsity,
            modelFiles: modelFiles, tensors: tensors,
            totals: .init(denseBytes: denseBytes, sparseBytes: sparseBytes,
                          sparseToDenseRatio: Double(sparseBytes) / Double(max(denseBytes, 1)),
                          prunedDenseBytes: prunedDenseBytes, prunedSparseBytes: prunedSparseBytes,
                          prunedSparseToDenseRatio: Double(prunedSparseBytes) / Double(max(prunedDenseBytes, 1)),
                          parameters: checkpoint.parameterCount, prunedParameters: prunedParameters, zeros: zerosTotal))
        manifest.search = try search()
        manifest.training = try training()
        try AtomicFileWriter.write(try manifest.jsonBytes(), to: (directory as NSString).appendingPathComponent("manifest.json"))
        return manifest
    }

    /// What writing one sparse/ shard found out.
    private struct SparseShard {
        /// sha256 of each pruned tensor's four parts, in file order.
        var digests: [String: String] = [:]
        var prunedDenseBytes = 0
        var prunedSparseBytes = 0
    }

    /// Writes one shard of sparse/: pruned tensors as bitmask + compressed + row_offsets +
    /// shape, the others as they are. Runs beside the dense/ pass, on its own thread.
    private func writeSparse(shard: SafeTensorsFile, path: String, specs: [TensorSpec], storedCounts: [String: Int],
                             stop: StopFlag) throws -> SparseShard {
        let sparseWriter = try SafeTensorsWriter(path: path, tensors: specs, metadata: shard.metadata)
        var result = SparseShard()
        for t in shard.tensors {
            if stop.isSet { throw PruningError("sparse/ abandoned: dense/ failed") }
            guard pruned.contains(t.name) else {
                try forEachInputBlock(t, shard: shard, values: try updatedValues(of: t)) { _, bytes in try sparseWriter.write(bytes) }
                continue
            }
            guard compressed(t.name) else {
                // Pruned but not a `.weight` (compressed-tensors would not decompress it):
                // stored as dense/ has it, zeros included.
                _ = try forEachMaskedBlock(t, shard: shard, mask: try checkedMask(t)) { bytes in try sparseWriter.write(bytes) }
                result.prunedDenseBytes += t.byteCount
                result.prunedSparseBytes += t.byteCount
                continue
            }
            // The four parts in file order, each streamed block by block; the sparse
            // digest covers them in the same order.
            var digest = SHA256Stream()
            var size = 0
            func emit(_ part: UnsafeRawBufferPointer) throws {
                try sparseWriter.write(part)
                digest.update(part)
                size += part.count
            }
            func emit(_ part: [UInt8]) throws { try part.withUnsafeBytes { try emit($0) } }
            // An element is stored when the mask keeps it and its bits are not all zero,
            // which is exactly "nonzero in dense/". The bitmask of the whole tensor is
            // held (as small as its mask) and drives the gather of the stored values.
            let mask = try checkedMask(t)
            let values = try updatedValues(of: t)
            let cols = t.cols, elementSize = t.dtype.size, bytesPerRow = (cols + 7) / 8
            var bits = [UInt8](repeating: 0, count: t.rows * bytesPerRow)
            var perRow: [Int] = []
            perRow.reserveCapacity(t.rows)
            try forEachInputBlock(t, shard: shard, values: values) { rows, input in
                guard cols > 0, !rows.isEmpty else { perRow += repeatElement(0, count: rows.count); return }
                mask.bits.withUnsafeBufferPointer { m in
                    bits.withUnsafeMutableBufferPointer { out in
                        AssemblyKernels.storedBits(elementSize: elementSize, mask: m.baseAddress! + rows.lowerBound * bytesPerRow,
                                                   bytesPerRow: bytesPerRow, rows: rows.count, cols: cols, source: input.baseAddress!,
                                                   into: out.baseAddress! + rows.lowerBound * bytesPerRow, perRow: &perRow)
                    }
                }
            }
            guard perRow.reduce(0, +) == storedCounts[t.name] else {
                throw PruningError("'\(t.name)': the sparse bitmask disagrees with the stored count in the header")
            }
            try emit(bits)
            var gathered: [UInt8] = []
            try forEachInputBlock(t, shard: shard, values: values) { rows, input in
                guard cols > 0, !rows.isEmpty else { return }
                let room = input.count + 8 * elementSize
                if gathered.count < room { gathered = [UInt8](repeating: 0, count: room) }
                let n = bits.withUnsafeBufferPointer { b in
                    gathered.withUnsafeMutableBytes { out in
                        AssemblyKernels.gather(elementSize: elementSize, bits: b.baseAddress! + rows.lowerBound * bytesPerRow,
                                               bytesPerRow: bytesPerRow, rows: rows.count, cols: cols,
                                               source: input.baseAddress!, into: out.baseAddress!)
                    }
                }
                try gathered.withUnsafeBytes { try emit(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
            var offsets = [Int64](repeating: 0, count: t.rows)
            var running: Int64 = 0
            for r in 0..<t.rows { offsets[r] = running; running += Int64(perRow[r]) }
            try emit(SparseLayout.int64Bytes(offsets))
            try emit(SparseLayout.int64Bytes(t.shape.map(Int64.init)))
            result.digests[t.name] = digest.finalizeHex()
            result.prunedDenseBytes += t.byteCount
            result.prunedSparseBytes += size
        }
        try sparseWriter.finish()
        return result
    }

    /// Whether sparse/ stores a tensor as compressed-tensors' four parts.
    private func compressed(_ name: String) -> Bool {
        pruned.contains(name) && SparseLayout.partPrefix(forTensor: name) != nil
    }

    /// Elements of a pruned tensor that sparse/ stores: kept by the mask, bits not all zero.
    private func storedCount(_ t: TensorInfo, shard: SafeTensorsFile) throws -> Int {
        let mask = try checkedMask(t)
        let cols = t.cols, elementSize = t.dtype.size, bytesPerRow = mask.bytesPerRow
        var scratch: [UInt8] = []
        var perRow: [Int] = []
        try forEachInputBlock(t, shard: shard, values: try updatedValues(of: t)) { rows, input in
            guard cols > 0, !rows.isEmpty else { return }
            if scratch.count < rows.count * bytesPerRow { scratch = [UInt8](repeating: 0, count: rows.count * bytesPerRow) }
            mask.bits.withUnsafeBufferPointer { m in
                scratch.withUnsafeMutableBufferPointer { out in
                    AssemblyKernels.storedBits(elementSize: elementSize, mask: m.baseAddress! + rows.lowerBound * bytesPerRow,
                                               bytesPerRow: bytesPerRow, rows: rows.count, cols: cols, source: input.baseAddress!,
                                               into: out.baseAddress!, perRow: &perRow)
                }
            }
        }
        return perRow.reduce(0, +)
    }

    /// A pruned tensor's mask, refused unless its shape is the tensor's.
    private func checkedMask(_ t: TensorInfo) throws -> Mask {
        let mask = try loadMask(t.name)
        guard mask.rows == t.rows, mask.cols == t.cols else {
            throw PruningError("mask of '\(t.name)' is \(mask.rows)×\(mask.cols), the tensor \(t.rows)×\(t.cols)")
        }
        return mask
    }

    /// The updated values of a tensor (SparseGPT's, a re-fit's, training's), from memory or loaded, or nil.
    private func updatedValues(of t: TensorInfo) throws -> [Float]? {
        var values = updated[t.name]
        if values == nil, let elsewhere = updatedElsewhere, elsewhere.names.contains(t.name) {
            values = try elsewhere.load(t.name)
            guard values!.count == t.elementCount else { throw PruningError("updated values of '\(t.name)' have \(values!.count) elements, expected \(t.elementCount)") }
        }
        return values
    }

    /// Calls `body` with the bytes a pruned tensor has before its mask is applied, block of
    /// rows by block of rows: the source bytes, or the updated values in the tensor's dtype.
    ///
    /// Each block's pages are released after it, and the whole tensor's at the end: pages
    /// the kernel mapped around a fault (fault-around, large folios) past a block's edge,
    /// or that one thread faulted back in after the other released them, would otherwise
    /// stay resident. (Every pass over a tensor ends with this release.)
    private func forEachInputBlock(_ t: TensorInfo, shard: SafeTensorsFile, values: [Float]?,
                                   _ body: (Range<Int>, UnsafeRawBufferPointer) throws -> Void) throws {
        defer { shard.release(t) }
        guard let values else { return try shard.forEachRowBlock(t, maxBytes: blockBytes, body) }
        var encoded: [UInt8] = []
        try shard.forEachRowBlock(t, maxBytes: blockBytes) { rows, source in
            // Updated weights replace the source values, encoded in the tensor's dtype.
            if encoded.count != source.count { encoded = [UInt8](repeating: 0, count: source.count) }
            let cols = t.cols
            values.withUnsafeBufferPointer { v in
                encoded.withUnsafeMutableBytes {
                    FloatConversion.fromFloat(UnsafeBufferPointer(rebasing: v[(rows.lowerBound * cols)..<(rows.upperBound * cols)]), dtype: t.dtype, into: $0)
                }
            }
            try encoded.withUnsafeBytes { try body(rows, $0) }
        }
    }

    /// Calls `body` with the output bytes of a pruned tensor, block of rows by block of
    /// rows (its input with zeros where the mask prunes); returns the elements whose output
    /// bits are all zero.
    private func forEachMaskedBlock(_ t: TensorInfo, shard: SafeTensorsFile, mask: Mask,
                                    _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        var out: [UInt8] = []
        var zeros = 0
        let bytesPerRow = mask.bytesPerRow
        try forEachInputBlock(t, shard: shard, values: try updatedValues(of: t)) { rows, input in
            guard !input.isEmpty else { return }
            if out.count != input.count { out = [UInt8](repeating: 0, count: input.count) }
            zeros += mask.bits.withUnsafeBufferPointer { m in
                out.withUnsafeMutableBytes { o in
                    AssemblyKernels.applyMask(elementSize: t.dtype.size, mask: m.baseAddress! + rows.lowerBound * bytesPerRow,
                                              bytesPerRow: bytesPerRow, rows: rows.count, cols: t.cols,
                                              source: input.baseAddress!, into: o.baseAddress!)
                }
            }
            try out.withUnsafeBytes { try body($0) }
        }
        return zeros
    }

    private func fileSize(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    }
}

/// Asks a `BackgroundWork` to give up early.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var set = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return set }
    func raise() { lock.lock(); set = true; lock.unlock() }
}

/// A closure run on a serial queue (so on a pooled thread, which keeps its malloc arena
/// from one shard to the next instead of a new thread's arena per shard holding on to
/// its blocks); `wait()` returns its result or rethrows its error. The closure must only
/// read state the submitting thread does not change meanwhile.
final class BackgroundWork<Value>: @unchecked Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let flag = StopFlag()
    private var outcome: Result<Value, Error>?
    /// Dropped once run, so what it holds (a writer and its buffer) goes with it.
    private var work: ((StopFlag) throws -> Value)?

    init(on queue: DispatchQueue, _ work: @escaping (StopFlag) throws -> Value) {
        self.work = work
        queue.async { [self] in
            let run = self.work!
            self.work = nil
            outcome = Result { try run(flag) }
            finished.signal()
        }
    }

    func stop() { flag.raise() }

    func wait() throws -> Value {
        finished.wait()
        finished.signal()  // a second wait returns at once
        return try outcome!.get()
    }
}

/// Per-element work of assembly, eight elements (one mask byte) at a time, as unsigned
/// integers of the element's width. Only lane-wise arithmetic is used (no SIMD compares,
/// which Swift lowers lane by lane), so the loops compile to vector code.
enum AssemblyKernels {
    // Entry points by element size (every dtype is 1, 2, 4 or 8 bytes wide).

    static func applyMask(elementSize: Int, mask: UnsafePointer<UInt8>, bytesPerRow: Int, rows: Int, cols: Int,
                          source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer) -> Int {
        switch elementSize {
        case 1: return applyMask(UInt8.self, mask: mask, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: destination)
        case 2: return applyMask(UInt16.self, mask: mask, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: destination)
        case 4: return applyMask(UInt32.self, mask: mask, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: destination)
        default:
            precondition(elementSize == 8, "element size \(elementSize)")
            return applyMask(UInt64.self, mask: mask, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: destination)
        }
    }

    static func zeroCount(_ bytes: UnsafeRawBufferPointer, elementSize: Int) -> Int {
        guard let base = bytes.baseAddress else { return 0 }
        let n = bytes.count / elementSize
        switch elementSize {
        case 1: return zeroCount(UInt8.self, base, count: n)
        case 2: return zeroCount(UInt16.self, base, count: n)
        case 4: return zeroCount(UInt32.self, base, count: n)
        default:
            precondition(elementSize == 8, "element size \(elementSize)")
            return zeroCount(UInt64.self, base, count: n)
        }
    }

    static func storedBits(elementSize: Int, mask: UnsafePointer<UInt8>, bytesPerRow: Int, rows: Int, cols: Int,
                           source: UnsafeRawPointer, into out: UnsafeMutablePointer<UInt8>, perRow: inout [Int]) {
        switch elementSize {
        case 1: storedBits(UInt8.self, mask: mask, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: out, perRow: &perRow)
        case 2: storedBits(UInt16.self, mask: mask, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: out, perRow: &perRow)
        case 4: storedBits(UInt32.self, mask: mask, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: out, perRow: &perRow)
        default:
            precondition(elementSize == 8, "element size \(elementSize)")
            storedBits(UInt64.self, mask: mask, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: out, perRow: &perRow)
        }
    }

    static func gather(elementSize: Int, bits: UnsafePointer<UInt8>, bytesPerRow: Int, rows: Int, cols: Int,
                       source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer) -> Int {
        switch elementSize {
        case 1: return gather(UInt8.self, bits: bits, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: destination)
        case 2: return gather(UInt16.self, bits: bits, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: destination)
        case 4: return gather(UInt32.self, bits: bits, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: destination)
        default:
            precondition(elementSize == 8, "element size \(elementSize)")
            return gather(UInt64.self, bits: bits, bytesPerRow: bytesPerRow, rows: rows, cols: cols, source: source, into: destination)
        }
    }

    // The kernels, generic over the element's width.

    typealias Element = FixedWidthInteger & UnsignedInteger & SIMDScalar

    /// 1 in each lane whose value is not zero, else 0.
    @inline(__always) static func nonzero<T: Element>(_ v: SIMD8<T>) -> SIMD8<T> {
        (v | (SIMD8<T>(repeating: 0) &- v)) &>> SIMD8<T>(repeating: T(T.bitWidth - 1))
    }

    /// All ones in each lane whose bit of `byte` is set, else 0.
    @inline(__always) static func expand<T: Element>(_ byte: UInt8, _: T.Type) -> SIMD8<T> {
        SIMD8<T>(repeating: 0) &- ((SIMD8<T>(repeating: T(truncatingIfNeeded: byte)) &>> SIMD8<T>(0, 1, 2, 3, 4, 5, 6, 7)) & SIMD8<T>(repeating: 1))
    }

    /// Lane counts are folded into an Int before a T-wide lane could overflow.
    @inline(__always) static func foldLimit<T: Element>(_: T.Type) -> Int { T.bitWidth >= 32 ? 1 << 30 : Int(T.max) }

    @inline(__always) static func lanesSum<T: Element>(_ v: SIMD8<T>) -> Int {
        var s = 0
        for i in 0..<8 { s += Int(v[i]) }
        return s
    }

    /// dst = src with zeros where the mask (bit 0) prunes, for `rows` rows; returns how
    /// many output elements are all-zero bits.
    static func applyMask<T: Element>(_: T.Type, mask: UnsafePointer<UInt8>, bytesPerRow bpr: Int, rows: Int, cols: Int,
                                      source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer) -> Int {
        let size = MemoryLayout<T>.stride, group = 8 * size
        let full = cols / 8, limit = foldLimit(T.self)
        var nonzeros = 0, lanes = SIMD8<T>(repeating: 0), pending = 0
        var tailZeros = 0
        for r in 0..<rows {
            let bits = mask + r * bpr
            let src = source + r * cols * size, dst = destination + r * cols * size
            for g in 0..<full {
                let o = src.loadUnaligned(fromByteOffset: g * group, as: SIMD8<T>.self) & expand(bits[g], T.self)
                dst.storeBytes(of: o, toByteOffset: g * group, as: SIMD8<T>.self)
                lanes &+= nonzero(o)
                pending += 1
                if pending == limit { nonzeros += lanesSum(lanes); lanes = .init(repeating: 0); pending = 0 }
            }
            for c in (full * 8)..<cols {
                let kept = bits[c >> 3] & (1 << UInt8(c & 7)) != 0
                let v: T = kept ? src.loadUnaligned(fromByteOffset: c * size, as: T.self) : 0
                dst.storeBytes(of: v, toByteOffset: c * size, as: T.self)
                if v == 0 { tailZeros += 1 }
            }
        }
        return rows * full * 8 - nonzeros - lanesSum(lanes) + tailZeros
    }

    /// Elements whose bits are all zero.
    static func zeroCount<T: Element>(_: T.Type, _ source: UnsafeRawPointer, count: Int) -> Int {
        let size = MemoryLayout<T>.stride, limit = foldLimit(T.self)
        var nonzeros = 0, lanes = SIMD8<T>(repeating: 0), pending = 0
        let groups = count / 8
        for g in 0..<groups {
            lanes &+= nonzero(source.loadUnaligned(fromByteOffset: g * 8 * size, as: SIMD8<T>.self))
            pending += 1
            if pending == limit { nonzeros += lanesSum(lanes); lanes = .init(repeating: 0); pending = 0 }
        }
        var zeros = groups * 8 - nonzeros - lanesSum(lanes)
        for j in (groups * 8)..<count where source.loadUnaligned(fromByteOffset: j * size, as: T.self) == 0 { zeros += 1 }
        return zeros
    }

    /// The sparse bitmask rows: bit set where the mask keeps and the element's bits are not
    /// all zero; padding bits zero. Appends the set bits of each row to `perRow`.
    static func storedBits<T: Element>(_: T.Type, mask: UnsafePointer<UInt8>, bytesPerRow bpr: Int, rows: Int, cols: Int,
                                       source: UnsafeRawPointer, into out: UnsafeMutablePointer<UInt8>, perRow: inout [Int]) {
        let size = MemoryLayout<T>.stride, group = 8 * size
        let full = cols / 8
        let shifts = SIMD8<T>(0, 1, 2, 3, 4, 5, 6, 7)
        for r in 0..<rows {
            let bits = mask + r * bpr, dst = out + r * bpr
            let src = source + r * cols * size
            for g in 0..<full {
                let v = src.loadUnaligned(fromByteOffset: g * group, as: SIMD8<T>.self)
                dst[g] = UInt8(truncatingIfNeeded: (nonzero(v) &<< shifts).wrappedSum()) & bits[g]
            }
            if full < bpr {
                var b: UInt8 = 0
                for c in (full * 8)..<cols where src.loadUnaligned(fromByteOffset: c * size, as: T.self) != 0 {
                    b |= 1 << UInt8(c & 7)
                }
                dst[full] = b & bits[full]
            }
            var count = 0
            for i in 0..<bpr { count += dst[i].nonzeroBitCount }
            perRow.append(count)
        }
    }

    /// Appends the elements whose bit is set in `bits`, row-major; `destination` must have
    /// room for 8 elements past the last one stored. Returns the bytes stored.
    static func gather<T: Element>(_: T.Type, bits: UnsafePointer<UInt8>, bytesPerRow bpr: Int, rows: Int, cols: Int,
                                   source: UnsafeRawPointer, into destination: UnsafeMutableRawPointer) -> Int {
        let size = MemoryLayout<T>.stride
        let dst = destination.assumingMemoryBound(to: T.self)
        var k = 0
        for r in 0..<rows {
            let rowBits = bits + r * bpr
            let src = source + r * cols * size
            let full = cols / 8
            for g in 0..<full {
                let b = rowBits[g]
                if b == 0 { continue }
                let base = g * 8
                if b == 0xFF {
                    (destination + k * size).copyMemory(from: src + base * size, byteCount: 8 * size)
                    k += 8
                    continue
                }
                for j in 0..<8 {
                    dst[k] = src.loadUnaligned(fromByteOffset: (base + j) * size, as: T.self)
                    k &+= Int((b >> UInt8(j)) & 1)
                }
            }
            for c in (full * 8)..<cols where rowBits[c >> 3] & (1 << UInt8(c & 7)) != 0 {
                dst[k] = src.loadUnaligned(fromByteOffset: c * size, as: T.self)
                k += 1
            }
        }
        return k * size
    }
}
