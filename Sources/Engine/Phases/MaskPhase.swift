import Foundation
import Protocol
import Pruning
import Tensors

/// Masks of a data-free method (magnitude, random): one task per tensor, or per block of
/// its rows for patterns that decide row by row (`MaskTaskPlan`). A task reads its rows
/// and returns their mask; the tensor's mask is its blocks' masks in row order.
public final class MaskPhase: Phase, PrunedTensorSource {
    public static let name = "mask"
    private let job: JobContext
    private let blocks: [MaskTaskPlan]
    private let byID: [TaskID: MaskTaskPlan]
    private let byTensor: [String: [MaskTaskPlan]]
    /// Where each tensor's sparsity comes from when it is not the job's target.
    private let levels: (any LevelSource)?

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.dataFreeCriterion != nil, job.plan.units == nil else { return nil }
        self.job = job
        blocks = MaskTaskPlan.tasks(for: job.plan, maxWeightsPerTask: job.maxWeightsPerTask)
        byID = Dictionary(uniqueKeysWithValues: blocks.map { (MaskPhase.id(of: $0), $0) })
        byTensor = Dictionary(grouping: blocks, by: \.tensor.name)
        levels = earlier.compactMap { $0 as? LevelSource }.first
    }

    static func id(of block: MaskTaskPlan) -> TaskID {
        TaskID(name, "\(block.tensor.name):\(block.firstRow)+\(block.rowCount)")
    }

    public var tasks: [PhaseTask] { blocks.map { PhaseTask(MaskPhase.id(of: $0), after: levels.map { [$0.levelsTask] } ?? []) } }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let block = byID[task] else { throw PruningError("no mask task \(task)") }
        var m = Prune_V1_MaskTask()
        m.tensor = job.tensorRef(block.tensor.info)
        m.firstRow = UInt64(block.firstRow)
        m.rowCount = UInt64(block.rowCount)
        m.method = job.spec.method.rawValue
        m.seed = job.spec.seed
        m.pattern = job.plan.pattern.description
        m.sparsity = try levels?.level(of: block.tensor.name, outputs: outputs) ?? job.plan.sparsity
        return .mask(m)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { [.mask] }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let block = byID[task] else { return "no mask task \(task)" }
        // The mask must have exactly the block's shape.
        guard outputs.count == 1, (try? Mask(rows: block.rowCount, cols: block.tensor.cols, bits: outputs[0])) != nil else {
            return "result of \(task) is not a \(block.rowCount)×\(block.tensor.cols) mask"
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .mask(let m) = work else { return nil }
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
        let mask = try inputs.withTensorBytes(t, (firstRow * rowBytes)..<((firstRow + rowCount) * rowBytes)) { bytes in
            try TensorPruner.mask(name: t.name, dtype: dtype, rows: rowCount, cols: cols, firstRow: firstRow, bytes: bytes,
                                  criterion: criterion, pattern: pattern, sparsity: m.sparsity)
        }
        return TaskOutputs.withMask(mask, pattern: m.pattern)
    }

    // MARK: PrunedTensorSource

    public var prunedTensors: Set<String> { Set(byTensor.keys) }

    public func producers(of tensor: String) -> [TaskID] {
        (byTensor[tensor] ?? []).map(MaskPhase.id(of:))
    }

    public func maskParts(of tensor: String, outputs: OutputStore) throws -> (masks: [Prune_V1_ArtifactRef], updated: Prune_V1_ArtifactRef?) {
        (try producers(of: tensor).map { try outputs.ref(.mask, of: $0) }, nil)
    }

    public func mask(of tensor: String, outputs: OutputStore) throws -> Mask {
        guard let t = job.plan.targets.first(where: { $0.name == tensor }) else { throw PruningError("\(tensor) is not pruned by this job") }
        let parts = try (byTensor[tensor] ?? []).map { block in
            try Mask(rows: block.rowCount, cols: block.tensor.cols, bits: try outputs.bytes(.mask, of: MaskPhase.id(of: block)))
        }
        return try MaskTaskPlan.join(parts, rows: t.rows, cols: t.cols)
    }
}
