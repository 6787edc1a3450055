import Foundation
import Protocol
import Pruning
import Tensors

/// What a job's phases plan from: the spec, the plan, the checkpoint (headers and file
/// digests), the task split, and what several phases share (the calibration plan).
public final class JobContext {
    public let spec: JobSpec
    public let plan: Plan
    public let checkpoint: Checkpoint
    /// Rows per mask task for patterns that decide row by row: at most this many weights.
    public let maxWeightsPerTask: Int
    /// Checkpoint files with their digests (workers find them by digest).
    public let modelFiles: [Prune_V1_ModelFile]
    /// The calibration DAG of a Wanda or SparseGPT job, nil for data-free methods.
    public let calibration: CalibrationPlan?

    public init(spec: JobSpec, plan: Plan, checkpoint: Checkpoint, maxWeightsPerTask: Int, calibration: CalibrationPlan?,
                modelFiles: [Prune_V1_ModelFile]) {
        self.spec = spec
        self.plan = plan
        self.checkpoint = checkpoint
        self.maxWeightsPerTask = maxWeightsPerTask
        self.calibration = calibration
        self.modelFiles = modelFiles
    }

    /// The checkpoint's files with their sha256 (hashed once per host and file version:
    /// the digest cache then serves workers on this host and the assembler).
    public static func digests(_ checkpoint: Checkpoint) throws -> [Prune_V1_ModelFile] {
        try zip(checkpoint.shardNames, checkpoint.shards).map { name, shard in
            var f = Prune_V1_ModelFile()
            f.name = name
            f.path = shard.path
            f.sha256 = try DigestCache.shared.sha256(file: shard.path)
            f.size = UInt64(shard.header.dataStart + (shard.tensors.last?.dataOffsets.upperBound ?? 0))
            return f
        }
    }

    /// Where a tensor's bytes are: file digest and absolute byte range.
    public func tensorRef(_ info: TensorInfo) -> Prune_V1_TensorRef {
        var ref = Prune_V1_TensorRef()
        ref.name = info.name
        ref.dtype = info.dtype.rawValue
        ref.shape = info.shape.map(UInt64.init)
        let shard = checkpoint.shard(of: info.name)!
        ref.fileSha256 = modelFiles.first { $0.path == shard.path }!.sha256
        ref.offset = UInt64(shard.header.dataStart + info.dataOffsets.lowerBound)
        ref.byteCount = UInt64(info.byteCount)
        return ref
    }
}
