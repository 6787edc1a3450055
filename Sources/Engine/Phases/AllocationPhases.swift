import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// A phase that decides each pruned tensor's sparsity level before the layers are
/// pruned (`allocation:` other than uniform): the prune tasks wait for its task.
public protocol LevelSource {
    /// The task whose output holds the levels.
    var levelsTask: TaskID { get }
    /// The level of a pruned tensor, read from that task's output.
    func level(of tensor: String, outputs: OutputStore) throws -> Double
}

/// Dense statistics of every block, to score layers before anything is pruned: the
/// calibrate pass run densely, as `profile:B:S` tasks, with the statistic the allocation
/// reads (OWL: Wanda's, as OWL's reference does in a first pass over the dense model;
/// error_budget: SparseGPT's Hessians). Not planned when the job's own calibration pass
/// already computes those (dense mode, the same statistic). Its outputs are transient.
public final class ProfilePhase: CalibratePhase {
    public override class var name: String { "profile" }

    /// The statistic an allocation scores layers with, nil when it needs none.
    static func statistic(for allocation: Allocation.Method) -> JobSpec.Method? {
        switch allocation {
        case .uniform: return nil
        case .owl, .global: return .wanda
        case .errorBudget: return .sparsegpt
        case .evolutionary: return .wanda
        }
    }

    public required init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.plan.units == nil, let needed = ProfilePhase.statistic(for: job.spec.allocation.method), let calibration = job.calibration,
              calibration.mode == .sequential || calibration.method != needed else { return nil }
        super.init(job: job, calibration: calibration.profiling(needed))
    }

    /// The pass whose statistics are the dense model's: this one, or the job's own.
    static func denseStatistics(in earlier: [any Phase], allocation: Allocation.Method) throws -> CalibratePhase {
        guard let statistics = (earlier.first { $0 is ProfilePhase } ?? earlier.first { type(of: $0) == CalibratePhase.self }) as? CalibratePhase else {
            throw PruningError("allocation \(allocation.rawValue): the job computes no calibration statistics")
        }
        return statistics
    }
}

/// OWL's outlier ratio of each decoder block (`outliers:B`): over the Wanda scores
/// |W_ij|·‖X_j‖ of the block's targeted layers, the count above M × their mean. Reads
/// the dense statistics: the profile pass's, or the calibration pass's own in dense Wanda
/// jobs (whose statistics already are the dense model's).
public final class OutlierPhase: Phase, RoundedPhase, AllocationScores {
    public static let name = "outliers"
    /// Two F64: scores above the threshold, scores in all.
    public static let outliers = OutputName("outliers")
    private let job: JobContext
    private let statistics: CalibratePhase
    let blocks: [Int]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        // evolutionary starts from OWL's levels too.
        guard [.owl, .evolutionary].contains(job.spec.allocation.method) else { return nil }
        self.job = job
        let statistics = try ProfilePhase.denseStatistics(in: earlier, allocation: .owl)
        self.statistics = statistics
        blocks = (0..<statistics.calibration.blocks).filter { !statistics.calibration.targets(block: $0).isEmpty }
    }

    public static func id(block: Int) -> TaskID { TaskID(name, "\(block)") }

    public var tasks: [PhaseTask] { blocks.map { PhaseTask(OutlierPhase.id(block: $0), after: statistics.tasks(block: $0)) } }

    public func round(of task: TaskID) -> Int { Int(task.key) ?? 0 }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let b = Int(task.key), blocks.contains(b) else { throw PruningError("no outliers task \(task)") }
        let calibration = statistics.calibration
        var o = Prune_V1_OutlierTask()
        o.block = UInt32(b)
        o.m = job.spec.allocation.m
        o.layers = try calibration.targets(block: b).map { name in
            var layer = Prune_V1_OutlierLayer()
            layer.tensor = job.tensorRef(job.checkpoint.info(name)!)
            layer.statistics = try statistics.statistics(of: calibration.statisticsKey(for: name, block: b), block: b, outputs: outputs)
            return layer
        }
        return .outliers(o)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { [OutlierPhase.outliers] }

    /// One unit per decoder block: its outlier count scores it.
    public var units: [AllocationUnitPlan] {
        blocks.map { AllocationUnitPlan(task: OutlierPhase.id(block: $0), score: OutlierPhase.outliers, weights: weights(block: $0),
                                        tensors: statistics.calibration.targets(block: $0)) }
    }

    /// The weights the block's outlier count is over.
    func weights(block b: Int) -> Int {
        statistics.calibration.targets(block: b).reduce(0) { $0 + (job.checkpoint.info($1)?.elementCount ?? 0) }
    }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let b = Int(task.key), outputs.count == 1, let counts = try? FloatPayload.doubles(outputs[0], what: "outliers"), counts.count == 2,
              counts[0] >= 0, counts[0] <= counts[1], counts[1] == Double(weights(block: b)) else {
            return "result of \(task) is not an outlier count of the block's \(Int(task.key).map(weights(block:)) ?? 0) scores"
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .outliers(let o) = work else { return nil }
        guard o.m.isFinite, o.m > 0, !o.layers.isEmpty else { throw PruningError("outliers task: bad threshold \(o.m) or no layers") }
        let reader = TaskTensorReader(o.layers.map(\.tensor), inputs: inputs)
        // Each layer's scores, in F32 as Wanda prunes with them; recomputed in the second
        // pass rather than held, so memory is one layer.
        func scores(_ layer: Prune_V1_OutlierLayer) throws -> [Float] {
            try reader.wandaScores(layer.tensor.name, statistics: layer.statistics, task: "outliers").scores
        }
        var sum = 0.0, total = 0
        for layer in o.layers {
            try Cancellation.checkpoint()
            let s = try scores(layer)
            sum = s.reduce(sum) { $0 + Double($1) }
            total += s.count
        }
        let threshold = sum / Double(total) * o.m
        var above = 0
        for layer in o.layers {
            try Cancellation.checkpoint()
            above += try scores(layer).reduce(0) { Double($1) > threshold ? $0 + 1 : $0 }
        }
        return TaskOutputs(payloads: [(outliers.rawValue, FloatPayload.encode(Double(above)) + FloatPayload.encode(Double(total)))])
    }
}

/// What an allocation sets one level for (a decoder block, a tensor): the task and output
/// that score it, its targeted weights and the tensors it sets.
public struct AllocationUnitPlan {
    public let task: TaskID
    public let score: OutputName
    public let weights: Int
    public let tensors: [String]
}

/// A phase whose outputs score the units of an allocation (`OutlierPhase`, `CurvePhase`).
public protocol AllocationScores {
    var units: [AllocationUnitPlan] { get }
}

/// The levels of an allocation (`allocate:METHOD`), one per unit, from every unit's score
/// (OWL: per block, from outlier counts; error_budget: per tensor, from error curves):
/// one small task once the scores are in; the prune tasks wait for it. Its output
/// (`levels`, one F64 per unit) is durable: the manifest and report show the levels.
public final class AllocationPhase: Phase, LevelSource {
    public static let name = "allocate"
    public static let levels = OutputName("levels")
    private let job: JobContext
    private let units: [AllocationUnitPlan]
    private let unitOf: [String: Int]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard [.owl, .global, .errorBudget].contains(job.spec.allocation.method), job.plan.units == nil,
              let scores = earlier.compactMap({ $0 as? AllocationScores }).first else {
            return nil
        }
        self.job = job
        units = scores.units
        var unitOf: [String: Int] = [:]
        for (i, unit) in units.enumerated() { for name in unit.tensors { unitOf[name] = i } }
        self.unitOf = unitOf
    }

    public var levelsTask: TaskID { TaskID(AllocationPhase.name, job.spec.allocation.method.rawValue) }

    public var tasks: [PhaseTask] { [PhaseTask(levelsTask, after: units.map(\.task))] }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard task == levelsTask else { throw PruningError("no allocate task \(task)") }
        let a = job.spec.allocation
        var w = Prune_V1_AllocateTask()
        w.method = a.method.rawValue
        w.target = job.plan.sparsity
        w.lambda = a.lambda
        w.min = a.min
        w.max = a.max
        if a.method == .errorBudget {
            w.levels = a.curveLevels
            w.error = a.error.rawValue
        }
        w.units = try units.map { plan in
            var unit = Prune_V1_AllocationUnit()
            unit.weights = UInt64(plan.weights)
            unit.score = try outputs.ref(plan.score, of: plan.task)
            return unit
        }
        return .allocate(w)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { [AllocationPhase.levels] }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        let a = job.spec.allocation
        guard outputs.count == 1, let levels = try? FloatPayload.doubles(outputs[0], what: "levels"), levels.count == units.count,
              levels.allSatisfy({ $0.isFinite && $0 >= a.min - 1e-12 && $0 <= a.max + 1e-12 }) else {
            return "result of \(task) is not \(units.count) levels in [\(a.min), \(a.max)]"
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .allocate(let a) = work else { return nil }
        let weights = a.units.map { Double($0.weights) }
        let levels: [Double]
        switch Allocation.Method(rawValue: a.method) {
        case .owl:
            var ratios: [Double] = []
            for unit in a.units {
                let counts = try FloatPayload.doubles(try inputs.artifact(unit.score), what: "outlier count")
                guard counts.count == 2, counts[1] > 0 else { throw PruningError("allocate task: an outlier count is not two numbers") }
                ratios.append(counts[0] / counts[1])
            }
            levels = try LayerAllocation.owl(outlierRatios: ratios, weights: weights, target: a.target,
                                             lambda: a.lambda, minimum: a.min, maximum: a.max)
        case .global:
            let parts = try a.units.map { try ScoreHistogram.Fine(serialized: try inputs.artifact($0.score)) }
            let sizes = a.units.map(\.weights)
            let exact = try ScoreHistogram.levels(parts, sizes: sizes, prune: ScoreHistogram.pruneCount(target: a.target, total: sizes.reduce(0, +)))
            // Bounds clamp the threshold's levels and shift them back to the target.
            levels = try LayerAllocation.rebalanced(exact, weights: weights, target: a.target, minimum: a.min, maximum: a.max)
        case .errorBudget:
            guard let scale = Allocation.ErrorScale(rawValue: a.error) else { throw PruningError("allocate task: unknown error scale '\(a.error)'") }
            let curves = try a.units.map { unit in
                let curve = try FloatPayload.doubles(try inputs.artifact(unit.score), what: "error curve")
                guard curve.count == a.levels.count + 1 else { throw PruningError("allocate task: a curve of \(curve.count - 1) errors for \(a.levels.count) levels") }
                let errors = Array(curve.dropFirst())
                let divisor: Double
                switch scale {
                case .absolute: divisor = 1
                case .output: divisor = curve[0]
                case .uniform: divisor = LayerAllocation.interpolate(errors, levels: a.levels, at: a.target)
                }
                // A layer that loses nothing at the target (zero output or weights) is free.
                return divisor > 0 ? errors.map { $0 / divisor } : errors.map { _ in 0 }
            }
            levels = try LayerAllocation.errorBudget(curves: curves, levels: a.levels, weights: weights, target: a.target)
        default:
            throw PruningError("allocate task: unknown method '\(a.method)'")
        }
        return TaskOutputs(payloads: [(AllocationPhase.levels.rawValue, levels.flatMap(FloatPayload.encode))])
    }

    public func level(of tensor: String, outputs: OutputStore) throws -> Double {
        guard let i = unitOf[tensor] else { throw PruningError("\(tensor) has no allocated level") }
        let levels = try FloatPayload.doubles(try outputs.bytes(AllocationPhase.levels, of: levelsTask), what: "levels")
        guard i < levels.count else { throw PruningError("the allocation has \(levels.count) levels, not a level for \(tensor)") }
        return levels[i]
    }
}
