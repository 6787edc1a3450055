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

/// Dense Wanda statistics of every block, to score the blocks before anything is pruned
/// (`allocation: owl` in `mode: sequential` or with SparseGPT, as OWL's reference does
/// in a first pass over the dense model): the calibrate pass run densely, as
/// `profile:B:S` tasks. Its outputs are transient, like calibration's.
public final class ProfilePhase: CalibratePhase {
    public override class var name: String { "profile" }

    public required init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.allocation.method == .owl, let calibration = job.calibration,
              calibration.mode == .sequential || calibration.method != .wanda else { return nil }
        super.init(job: job, calibration: calibration.profiling())
    }
}

/// OWL's outlier ratio of each decoder block (`outliers:B`): over the Wanda scores
/// |W_ij|·‖X_j‖ of the block's targeted layers, the count above M × their mean. Reads
/// the dense statistics: the profile pass's, or the calibration pass's own in dense Wanda
/// jobs (whose statistics already are the dense model's).
public final class OutlierPhase: Phase, RoundedPhase {
    public static let name = "outliers"
    /// Two F64: scores above the threshold, scores in all.
    public static let outliers = OutputName("outliers")
    private let job: JobContext
    private let statistics: CalibratePhase
    let blocks: [Int]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.allocation.method == .owl else { return nil }
        guard let statistics = (earlier.first { $0 is ProfilePhase } ?? earlier.first { type(of: $0) == CalibratePhase.self }) as? CalibratePhase else {
            throw PruningError("allocation owl: the job computes no calibration statistics")
        }
        self.job = job
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
            let name = layer.tensor.name
            guard let shape = reader.shape(of: name), shape.count == 2 else { throw PruningError("outliers task: \(name) is not a matrix") }
            let norms = try WandaStatistics.merged(count: layer.statistics.count, layer: name) { try inputs.artifact(layer.statistics[$0]) }
            guard norms.columns == shape[1] else { throw PruningError("outliers task: \(name) has \(shape[1]) columns, its statistic \(norms.columns)") }
            let weights = try reader.floats(name)
            var out = [Float](repeating: 0, count: weights.count)
            weights.withUnsafeBufferPointer { w in
                out.withUnsafeMutableBufferPointer {
                    WandaCriterion(statistics: norms).scores(WeightBlock(name: name, values: w, rows: shape[0], cols: shape[1]), into: $0)
                }
            }
            return out
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

/// The per-block levels of an OWL allocation (`allocate:owl`), from every block's outlier
/// count: one small task once the counts are in; the prune tasks wait for it. Its output
/// (`levels`, one F64 per block) is durable: the manifest and report show the levels.
public final class AllocationPhase: Phase, LevelSource {
    public static let name = "allocate"
    public static let levels = OutputName("levels")
    private let job: JobContext
    private let outliers: OutlierPhase
    private let blockOf: [String: Int]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.allocation.method == .owl, let outliers = earlier.compactMap({ $0 as? OutlierPhase }).first, let calibration = job.calibration else {
            return nil
        }
        self.job = job
        self.outliers = outliers
        var blockOf: [String: Int] = [:]
        for (i, b) in outliers.blocks.enumerated() { for name in calibration.targets(block: b) { blockOf[name] = i } }
        self.blockOf = blockOf
    }

    public var levelsTask: TaskID { TaskID(AllocationPhase.name, job.spec.allocation.method.rawValue) }

    public var tasks: [PhaseTask] { [PhaseTask(levelsTask, after: outliers.blocks.map(OutlierPhase.id(block:)))] }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard task == levelsTask else { throw PruningError("no allocate task \(task)") }
        let a = job.spec.allocation
        var w = Prune_V1_AllocateTask()
        w.method = a.method.rawValue
        w.target = job.plan.sparsity
        w.lambda = a.lambda
        w.min = a.min
        w.max = a.max
        w.units = try outliers.blocks.map { b in
            var unit = Prune_V1_AllocationUnit()
            unit.weights = UInt64(outliers.weights(block: b))
            unit.score = try outputs.ref(OutlierPhase.outliers, of: OutlierPhase.id(block: b))
            return unit
        }
        return .allocate(w)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { [AllocationPhase.levels] }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        let a = job.spec.allocation
        guard outputs.count == 1, let levels = try? FloatPayload.doubles(outputs[0], what: "levels"), levels.count == outliers.blocks.count,
              levels.allSatisfy({ $0.isFinite && $0 >= a.min - 1e-12 && $0 <= a.max + 1e-12 }) else {
            return "result of \(task) is not \(outliers.blocks.count) levels in [\(a.min), \(a.max)]"
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .allocate(let a) = work else { return nil }
        guard a.method == Allocation.Method.owl.rawValue else { throw PruningError("allocate task: unknown method '\(a.method)'") }
        var ratios: [Double] = []
        for unit in a.units {
            let counts = try FloatPayload.doubles(try inputs.artifact(unit.score), what: "outlier count")
            guard counts.count == 2, counts[1] > 0 else { throw PruningError("allocate task: an outlier count is not two numbers") }
            ratios.append(counts[0] / counts[1])
        }
        let levels = try LayerAllocation.owl(outlierRatios: ratios, weights: a.units.map { Double($0.weights) }, target: a.target,
                                             lambda: a.lambda, minimum: a.min, maximum: a.max)
        return TaskOutputs(payloads: [(AllocationPhase.levels.rawValue, levels.flatMap(FloatPayload.encode))])
    }

    public func level(of tensor: String, outputs: OutputStore) throws -> Double {
        guard let i = blockOf[tensor] else { throw PruningError("\(tensor) has no allocated level") }
        let levels = try FloatPayload.doubles(try outputs.bytes(AllocationPhase.levels, of: levelsTask), what: "levels")
        guard i < levels.count else { throw PruningError("the allocation has \(levels.count) levels, not a level for \(tensor)") }
        return levels[i]
    }
}
