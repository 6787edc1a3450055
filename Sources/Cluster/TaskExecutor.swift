import Engine
import Foundation
import Protocol
import Pruning
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// Where a task's inputs come from: a worker maps its local copy of the checkpoint or
/// pulls chunks from the coordinator; the coordinator reads its own disk.
protocol TaskInputs {
    /// Calls `body` with bytes `range` (relative to the tensor's first byte) of a tensor.
    func withTensorBytes<R>(_ ref: Prune_V1_TensorRef, _ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R
    /// An artifact's bytes, verified against its digest.
    func artifact(_ ref: Prune_V1_ArtifactRef) throws -> [UInt8]
}

/// A task's named outputs, and what the wire needs to code its mask.
struct TaskOutputs {
    var payloads: [(name: String, bytes: [UInt8])] = []
    /// Weights kept by the task's mask (reported in the Result).
    var kept: UInt64 = 0
    /// The "mask" payload's shape and N:M pattern.
    var maskShape: (rows: Int, cols: Int, nm: (n: Int, m: Int)?)?
}

/// Runs one task's work as a function of its inputs, cancellable at its checkpoints. The
/// same code runs on a worker and on the coordinator when it checks a result itself, so
/// an honest worker and the coordinator produce the same bytes.
struct TaskExecutor {
    let inputs: any TaskInputs

    func run(_ work: Prune_V1_Assign.OneOf_Work?, task: String) throws -> TaskOutputs {
        try Cancellation.checkpoint()
        var out = TaskOutputs()
        switch work {
        case .mask(let m):
            let mask = try runMask(m)
            out.kept = UInt64(mask.keptCount)
            out.payloads = [("mask", mask.bits)]
            out.maskShape = (mask.rows, mask.cols, Self.nm(m.pattern))
        case .calibrate(let c):
            out.payloads = try runCalibrate(c)
        case .layerPrune(let p):
            out.payloads = try runLayerPrune(p)
            let mask = try Mask(rows: Int(p.tensor.shape[0]), cols: Int(p.tensor.shape.dropFirst().reduce(1, *)), bits: out.payloads[0].bytes)
            out.kept = UInt64(mask.keptCount)
            out.maskShape = (mask.rows, mask.cols, Self.nm(p.pattern))
        case .noop(let n):
            try Self.sleep(ms: Int(n.sleepMs))
        case .none:
            throw PruningError("task \(task) names no work")
        }
        return out
    }

    /// N and M of an N:M pattern, nil for any other.
    static func nm(_ pattern: String) -> (n: Int, m: Int)? {
        if case .nm(let n, let m)? = try? SparsityPattern(parsing: pattern) { return (n, m) }
        return nil
    }

    /// Sleeps in slices short enough that a Cancel takes effect within 10 ms.
    static func sleep(ms: Int) throws {
        var left = ms
        while left > 0 {
            try Cancellation.checkpoint()
            let slice = min(left, 10)
            usleep(UInt32(slice) * 1000)
            left -= slice
        }
    }

    private func runMask(_ m: Prune_V1_MaskTask) throws -> Mask {
        let t = m.tensor
        guard let dtype = DType(rawValue: t.dtype), dtype.isFloat else { throw PruningError("tensor '\(t.name)': dtype \(t.dtype) cannot be pruned") }
        let shape = t.shape.map { Int(clamping: $0) }
        guard shape.count >= 2, let elements = MatrixView.elementCount(shape), elements * dtype.size == Int(clamping: t.byteCount) else {
            throw PruningError("tensor '\(t.name)': shape \(shape) does not match \(t.byteCount) bytes")
        }
        let cols = MatrixView.cols(shape), rows = MatrixView.rows(shape)
        let firstRow = Int(clamping: m.firstRow), rowCount = Int(clamping: m.rowCount)
        guard firstRow >= 0, rowCount > 0, firstRow <= rows - rowCount else {
            throw PruningError("tensor '\(t.name)': rows \(firstRow)+\(rowCount) outside \(rows)")
        }
        let rowBytes = cols * dtype.size
        let pattern = try SparsityPattern(parsing: m.pattern)
        let criterion = try JobSpec.criterion(method: m.method, seed: m.seed)
        return try inputs.withTensorBytes(t, (firstRow * rowBytes)..<((firstRow + rowCount) * rowBytes)) { bytes in
            try TensorPruner.mask(name: t.name, dtype: dtype, rows: rowCount, cols: cols, firstRow: firstRow, bytes: bytes,
                                  criterion: criterion, pattern: pattern, sparsity: m.sparsity)
        }
    }
}

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
