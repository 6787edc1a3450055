import Foundation
import Protocol
import Pruning
import Tensors

/// How much of each pruned tensor's weight survives (`weight_norms: true` in the spec):
/// task `norms:NAME`, once the tensor's mask is decided, reads its dense weights and mask
/// (and SparseGPT's updated values) and returns ‖W‖² and ‖Ŵ‖². The manifest's
/// `measures.kept_norm_fraction` is ‖Ŵ‖/‖W‖. A small phase that shows the shape of every
/// phase: its own file, one registry line, one proto message (`WeightNormTask`).
public final class WeightNormPhase: Phase, RoundedPhase, ManifestContributor {
    public static let name = "norms"
    private let job: JobContext
    private let source: any PrunedTensorSource
    private let tensors: [String]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.weightNorms, let source = earlier.compactMap({ $0 as? PrunedTensorSource }).last else { return nil }
        self.job = job
        self.source = source
        tensors = job.plan.targets.map(\.name)
    }

    public static func id(tensor: String) -> TaskID { TaskID(name, tensor) }
    public static let norms = OutputName("norms")

    /// After the tasks that decide the tensor; in the last round, so it never delays them.
    public var tasks: [PhaseTask] {
        tensors.map { PhaseTask(WeightNormPhase.id(tensor: $0), after: source.producers(of: $0)) }
    }

    public func round(of task: TaskID) -> Int { Int.max }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let info = job.checkpoint.info(task.key) else { throw PruningError("no norms task \(task)") }
        let parts = try source.maskParts(of: task.key, outputs: outputs)
        var w = Prune_V1_WeightNormTask()
        w.tensor = job.tensorRef(info)
        w.masks = parts.masks
        if let updated = parts.updated { w.updated = updated }
        return .weightNorm(w)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { [WeightNormPhase.norms] }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard outputs.count == 1, let values = try? FloatPayload.doubles(outputs[0], what: "norms"), values.count == 2 else {
            return "result of \(task) is not two F64"
        }
        guard values.allSatisfy({ $0.isFinite && $0 >= 0 }), values[1] <= values[0] * (1 + 1e-6) || source.updatesValues(of: task.key) else {
            return "norms of \(task) are not a dense norm and a smaller kept one: \(values)"
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .weightNorm(let w) = work else { return nil }
        let t = w.tensor
        let reader = TaskTensorReader([t], inputs: inputs)
        guard let shape = reader.shape(of: t.name), shape.count >= 2 else { throw PruningError("tensor '\(t.name)': not a matrix") }
        let rows = MatrixView.rows(shape), cols = MatrixView.cols(shape)
        let values = try reader.floats(t.name)
        // The masks' row blocks, joined.
        var bits: [UInt8] = []
        for ref in w.masks { bits += try inputs.artifact(ref) }
        let mask = try Mask(rows: rows, cols: cols, bits: bits)
        let updated = w.hasUpdated ? try FloatPayload.floats(try inputs.artifact(w.updated), what: "updated weights of \(t.name)") : nil
        guard updated == nil || updated!.count == values.count else { throw PruningError("updated weights of \(t.name): \(updated!.count) values, not \(values.count)") }
        // Summed in row-major order in F64: the same bytes on every worker.
        var dense = 0.0, kept = 0.0
        for r in 0..<rows {
            for c in 0..<cols {
                let v = Double(values[r * cols + c])
                dense += v * v
                if mask[r, c] {
                    let k = updated.map { Double($0[r * cols + c]) } ?? v
                    kept += k * k
                }
            }
        }
        return TaskOutputs(payloads: [(norms.rawValue, FloatPayload.encode(dense) + FloatPayload.encode(kept))])
    }

    public func measures(outputs: OutputStore) throws -> [String: [String: Double]] {
        var out: [String: [String: Double]] = [:]
        for tensor in tensors {
            let norms = try FloatPayload.doubles(try outputs.bytes(WeightNormPhase.norms, of: WeightNormPhase.id(tensor: tensor)), what: "norms of \(tensor)")
            guard norms.count == 2 else { throw PruningError("norms of \(tensor): \(norms.count) values, not 2") }
            let dense = norms[0], kept = norms[1]
            out[tensor] = ["kept_norm_fraction": dense > 0 ? (kept / dense).squareRoot() : 1]
        }
        return out
    }
}
