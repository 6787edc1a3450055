import Foundation
import Protocol
import Pruning
import Tensors

/// Each pruned layer's error curve (`curve:NAME`, `allocation: error_budget`): its
/// reconstruction error ‖(W − Ŵ)X‖² under Wanda's mask at every level the allocation may
/// choose, on the dense calibration inputs (the profile pass's Hessians, or the job's own
/// in dense SparseGPT jobs). One task per layer once its block's statistics are in; the
/// curves are durable (the allocation reads them, the report draws them).
public final class CurvePhase: Phase, RoundedPhase, AllocationScores, ManifestContributor {
    public static let name = "curve"
    /// F64: the dense output energy ‖WX‖², then the error at each level.
    public static let curve = OutputName("curve")
    private let job: JobContext
    private let statistics: CalibratePhase
    /// The targets in forward order, with their blocks.
    private let targets: [(block: Int, name: String)]
    private let blockOf: [String: Int]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.allocation.method == .errorBudget else { return nil }
        self.job = job
        statistics = try ProfilePhase.denseStatistics(in: earlier, allocation: .errorBudget)
        let calibration = statistics.calibration
        targets = calibration.targetsWithBlocks
        blockOf = Dictionary(targets.map { ($0.name, $0.block) }, uniquingKeysWith: { a, _ in a })
    }

    public static func id(tensor: String) -> TaskID { TaskID(name, tensor) }

    public var tasks: [PhaseTask] { targets.map { PhaseTask(CurvePhase.id(tensor: $0.name), after: statistics.tasks(block: $0.block)) } }

    public func round(of task: TaskID) -> Int { blockOf[task.key] ?? 0 }

    public var units: [AllocationUnitPlan] {
        targets.map { AllocationUnitPlan(task: CurvePhase.id(tensor: $0.name), score: CurvePhase.curve,
                                         weights: job.checkpoint.info($0.name)?.elementCount ?? 0, tensors: [$0.name]) }
    }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let b = blockOf[task.key], let info = job.checkpoint.info(task.key) else { throw PruningError("no curve task \(task)") }
        let calibration = statistics.calibration
        var c = Prune_V1_CurveTask()
        c.tensor = job.tensorRef(info)
        c.statistics = try statistics.statistics(of: calibration.statisticsKey(for: task.key, block: b), block: b, outputs: outputs)
        c.levels = job.spec.allocation.curveLevels
        c.pattern = WandaStatistics.comparisonPattern(for: calibration.pattern).description
        return .curve(c)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { [CurvePhase.curve] }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        let count = job.spec.allocation.curveLevels.count + 1
        guard outputs.count == 1, let curve = try? FloatPayload.doubles(outputs[0], what: "curve"), curve.count == count,
              curve.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
            return "result of \(task) is not \(count) finite values ≥ 0 (energy, one error per level)"
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .curve(let c) = work else { return nil }
        let name = c.tensor.name
        let reader = TaskTensorReader([c.tensor], inputs: inputs)
        guard let shape = reader.shape(of: name), shape.count == 2 else { throw PruningError("curve task: \(name) is not a matrix") }
        guard !c.levels.isEmpty, c.levels.allSatisfy({ $0.isFinite && $0 >= 0 && $0 < 1 }) else {
            throw PruningError("curve task: levels must be fractions in [0, 1)")
        }
        let hessian = try SparseGPT.merged(count: c.statistics.count, layer: name) { try inputs.artifact(c.statistics[$0]) }
        guard hessian.columns == shape[1] else { throw PruningError("curve task: \(name) has \(shape[1]) columns, its Hessian \(hessian.columns)") }
        let measured = try ErrorCurve.measure(weights: try reader.floats(name), rows: shape[0], hessian: hessian, levels: c.levels,
                                              pattern: try SparsityPattern(parsing: c.pattern), layer: name)
        return TaskOutputs(payloads: [(curve.rawValue, ([measured.energy] + measured.errors).flatMap(FloatPayload.encode))])
    }

    /// Each layer's curve in its manifest `measures` (the report draws them):
    /// `output_energy` (‖WX‖²) and `error_at_S` (‖(W − Ŵ)X‖² at sparsity S).
    public func measures(outputs: OutputStore) throws -> [String: [String: Double]] {
        let levels = job.spec.allocation.curveLevels
        var out: [String: [String: Double]] = [:]
        for t in targets {
            let curve = try FloatPayload.doubles(try outputs.bytes(CurvePhase.curve, of: CurvePhase.id(tensor: t.name)), what: "curve")
            guard curve.count == levels.count + 1 else { throw PruningError("the curve of \(t.name) has \(curve.count) values") }
            var measures = [ErrorCurveMeasures.energy: curve[0]]
            for (level, error) in zip(levels, curve.dropFirst()) { measures[ErrorCurveMeasures.key(level)] = error }
            out[t.name] = measures
        }
        return out
    }
}

/// How a layer's error curve is named in the manifest's `measures`.
public enum ErrorCurveMeasures {
    public static let energy = "output_energy"
    static let prefix = "error_at_"

    public static func key(_ level: Double) -> String { prefix + String(format: "%.4f", level) }

    /// The (sparsity, error ÷ output energy) points of a layer's measures, by sparsity; nil
    /// when the layer has no curve.
    public static func relativeCurve(_ measures: [String: Double]?) -> [JobReport.CurvePoint]? {
        guard let measures, let energy = measures[energy], energy > 0 else { return nil }
        let points = measures.compactMap { key, value -> JobReport.CurvePoint? in
            guard key.hasPrefix(prefix), let level = Double(key.dropFirst(prefix.count)) else { return nil }
            return JobReport.CurvePoint(sparsity: level, error: value / energy)
        }
        return points.isEmpty ? nil : points.sorted { $0.sparsity < $1.sparsity }
    }
}
