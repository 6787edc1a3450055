import Pruning
import Tensors

/// The unit of work of a pruning job: the mask of a block of rows of one tensor.
///
/// Patterns that decide row by row (per_row, N:M) split large tensors into row blocks;
/// patterns that compare across rows (unstructured, whole rows) take the whole tensor.
/// The split never changes the result: the masks of the blocks, concatenated in row
/// order, are the mask of the tensor (rows start on byte boundaries, and the random
/// criterion scores by global position). The local runner and the cluster run the same
/// tasks, so their outputs are identical by construction.
public struct MaskTaskPlan: Sendable, Equatable {
    public let tensor: PlannedTensor
    public let firstRow: Int
    public let rowCount: Int

    /// Stable, readable, unique within a job.
    public var id: String { "mask:\(tensor.name):\(firstRow)+\(rowCount)" }

    /// Byte range of the block within the tensor's data.
    public var byteRange: Range<Int> {
        let rowBytes = tensor.cols * tensor.info.dtype.size
        return (firstRow * rowBytes)..<((firstRow + rowCount) * rowBytes)
    }

    /// The tasks of a plan, in checkpoint order then row order.
    public static func tasks(for plan: Plan, maxWeightsPerTask: Int) -> [MaskTaskPlan] {
        var out: [MaskTaskPlan] = []
        for t in plan.targets {
            let splittable: Bool
            switch plan.pattern {
            case .perRow, .nm: splittable = true
            case .unstructured, .rows, .units: splittable = false
            }
            let rowsPerTask = splittable ? max(1, maxWeightsPerTask / max(t.cols, 1)) : t.rows
            var first = 0
            while first < t.rows {
                let count = min(rowsPerTask, t.rows - first)
                out.append(MaskTaskPlan(tensor: t, firstRow: first, rowCount: count))
                first += count
            }
        }
        return out
    }

    /// Runs the task on the bytes of its rows.
    public func run(bytes: UnsafeRawBufferPointer, criterion: any ImportanceCriterion, pattern: SparsityPattern, sparsity: Double) throws -> Mask {
        try TensorPruner.mask(name: tensor.name, dtype: tensor.info.dtype, rows: rowCount, cols: tensor.cols, firstRow: firstRow,
                              bytes: bytes, criterion: criterion, pattern: pattern, sparsity: sparsity)
    }

    /// Joins row-block masks (given in row order) into the tensor's mask.
    public static func join(_ blocks: [Mask], rows: Int, cols: Int) throws -> Mask {
        guard blocks.reduce(0, { $0 + $1.rows }) == rows, blocks.allSatisfy({ $0.cols == cols }) else {
            throw PruningError("row-block masks do not cover \(rows) × \(cols)")
        }
        if blocks.count == 1 { return blocks[0] }
        return try Mask(rows: rows, cols: cols, bits: blocks.flatMap(\.bits))
    }
}
