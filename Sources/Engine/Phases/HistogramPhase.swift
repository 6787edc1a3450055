import Foundation
import Protocol
import Pruning
import Tensors

/// The exact global score threshold of `allocation: global`, in two rounds of per-tensor
/// histograms (`ScoreHistogram`), without any score leaving its worker:
/// - `histogram:1:NAME`: the coarse histogram of the tensor's scores;
/// - `histogram:cut`: the coarse bucket holding the k-th smallest score of all tensors;
/// - `histogram:2:NAME`: the tensor's count below that bucket and its fine histogram in it.
/// The allocation task reads the round-2 results and gives each tensor the level the exact
/// threshold implies. Scores: magnitude |W|, Wanda's with dense statistics (the profile
/// pass's, or the job's own in dense Wanda jobs), or Taylor's or Fisher's from the
/// gradient shards (`GradientScores`). The histograms are transient.
public final class HistogramPhase: Phase, RoundedPhase, AllocationScores {
    public static let name = "histogram"
    public static let histogram = OutputName("histogram")
    /// The coarse bucket (u64).
    public static let cut = OutputName("cut")
    private let job: JobContext
    /// Where Wanda's statistics come from; nil for magnitude and gradient scores.
    private let statistics: CalibratePhase?
    /// Where Taylor's and Fisher's gradients come from.
    private let gradients: GradientPhase?
    /// The targets in order, with their decoder blocks (0 without calibration).
    private let targets: [(block: Int, name: String)]
    private let blockOf: [String: Int]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        // A structured job's global allocation ranks whole units (`UnitPrunePhase`).
        guard job.spec.allocation.method == .global, job.plan.units == nil else { return nil }
        self.job = job
        gradients = earlier.compactMap { $0 as? GradientPhase }.first
        if gradients != nil, let calibration = job.calibration {
            statistics = nil
            targets = calibration.targetsWithBlocks
        } else if job.spec.method.needsCalibration {
            let statistics = try ProfilePhase.denseStatistics(in: earlier, allocation: .global)
            self.statistics = statistics
            targets = statistics.calibration.targetsWithBlocks
        } else {
            statistics = nil
            targets = job.plan.targets.map { (0, $0.name) }
        }
        blockOf = Dictionary(targets.map { ($0.name, $0.block) }, uniquingKeysWith: { a, _ in a })
    }

    static func coarseID(_ tensor: String) -> TaskID { TaskID(name, "1:\(tensor)") }
    static func fineID(_ tensor: String) -> TaskID { TaskID(name, "2:\(tensor)") }
    static let cutID = TaskID(name, "cut")

    /// The round (1 or 2) and tensor of a per-tensor task.
    private func parse(_ task: TaskID) -> (round: Int, tensor: String)? {
        guard task.key.count > 2, let round = Int(task.key.prefix(1)), round == 1 || round == 2, task.key.dropFirst().first == ":" else { return nil }
        let tensor = String(task.key.dropFirst(2))
        return blockOf[tensor] == nil ? nil : (round, tensor)
    }

    private func statisticsTasks(_ tensor: String) -> [TaskID] {
        statistics.map { $0.tasks(block: blockOf[tensor] ?? 0) } ?? gradients?.gradientTasks ?? []
    }

    private var total: UInt64 { targets.reduce(0) { $0 + UInt64(job.checkpoint.info($1.name)?.elementCount ?? 0) } }

    public var tasks: [PhaseTask] {
        targets.map { PhaseTask(HistogramPhase.coarseID($0.name), after: statisticsTasks($0.name)) }
            + [PhaseTask(HistogramPhase.cutID, after: targets.map { HistogramPhase.coarseID($0.name) })]
            + targets.map { PhaseTask(HistogramPhase.fineID($0.name), after: [HistogramPhase.cutID] + statisticsTasks($0.name)) }
    }

    public func round(of task: TaskID) -> Int { parse(task).map { blockOf[$0.tensor] ?? 0 } ?? (targets.last?.block ?? 0) }

    public var units: [AllocationUnitPlan] {
        targets.map { AllocationUnitPlan(task: HistogramPhase.fineID($0.name), score: HistogramPhase.histogram,
                                         weights: job.checkpoint.info($0.name)?.elementCount ?? 0, tensors: [$0.name]) }
    }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        if task == HistogramPhase.cutID {
            var c = Prune_V1_HistogramCutTask()
            c.histograms = try targets.map { try outputs.ref(HistogramPhase.histogram, of: HistogramPhase.coarseID($0.name)) }
            c.prune = ScoreHistogram.pruneCount(target: job.plan.sparsity, total: total)
            return .histogramCut(c)
        }
        guard let (round, tensor) = parse(task), let info = job.checkpoint.info(tensor) else { throw PruningError("no histogram task \(task)") }
        var h = Prune_V1_HistogramTask()
        h.tensor = job.tensorRef(info)
        h.criterion = statistics == nil ? job.spec.method.rawValue : JobSpec.Method.wanda.rawValue
        if let statistics {
            let b = blockOf[tensor] ?? 0
            h.statistics = try statistics.statistics(of: statistics.calibration.statisticsKey(for: tensor, block: b), block: b, outputs: outputs)
        }
        if let gradients { h.statistics = try gradients.gradientRefs(of: tensor, outputs: outputs) }
        if round == 2 { h.cut = try outputs.ref(HistogramPhase.cut, of: HistogramPhase.cutID) }
        return .histogram(h)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { task == HistogramPhase.cutID ? [HistogramPhase.cut] : [HistogramPhase.histogram] }

    public func isTransient(_ name: OutputName) -> Bool { name == HistogramPhase.histogram }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard outputs.count == 1 else { return "result of \(task) has \(outputs.count) payloads, expected 1" }
        if task == HistogramPhase.cutID {
            return (try? ScoreHistogram.cut(serialized: outputs[0])) == nil ? "result of \(task) is not a bucket" : nil
        }
        guard let (round, tensor) = parse(task), let size = job.checkpoint.info(tensor).map({ UInt64($0.elementCount) }) else { return "no histogram task \(task)" }
        if round == 1 {
            guard let counts = try? ScoreHistogram.Counts(serialized: outputs[0]), counts.total == size else {
                return "result of \(task) is not a histogram of the tensor's \(size) scores"
            }
        } else {
            guard let part = try? ScoreHistogram.Fine(serialized: outputs[0]), part.below + part.within.total <= size else {
                return "result of \(task) is not a count and histogram within the tensor's \(size) scores"
            }
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        switch work {
        case .histogramCut(let c):
            guard !c.histograms.isEmpty else { throw PruningError("histogram cut task: no histograms") }
            var merged = ScoreHistogram.Counts()
            for ref in c.histograms {
                try Cancellation.checkpoint()
                merged.add(try ScoreHistogram.Counts(serialized: try inputs.artifact(ref)))
            }
            let located = try ScoreHistogram.locate(merged, prune: c.prune)
            return TaskOutputs(payloads: [(cut.rawValue, ScoreHistogram.serializedCut(located.key))])
        case .histogram(let h):
            let scores = try scores(h, inputs: inputs)
            let bytes: [UInt8] = try scores.withUnsafeBufferPointer { s in
                guard h.hasCut else { return try ScoreHistogram.coarse(s).serialized() }
                return try ScoreHistogram.fine(s, high: try ScoreHistogram.cut(serialized: try inputs.artifact(h.cut))).serialized()
            }
            return TaskOutputs(payloads: [(histogram.rawValue, bytes)])
        default:
            return nil
        }
    }

    /// The tensor's scores in F32, as its method ranks them.
    private static func scores(_ h: Prune_V1_HistogramTask, inputs: TaskInputs) throws -> [Float] {
        let name = h.tensor.name
        let reader = TaskTensorReader([h.tensor], inputs: inputs)
        guard let shape = reader.shape(of: name), shape.count >= 2 else { throw PruningError("histogram task: \(name) is not a matrix") }
        let cols = shape.last!, rows = shape.dropLast().reduce(1, *)
        let weights = try reader.floats(name)
        let criterion: any ImportanceCriterion
        switch JobSpec.Method(rawValue: h.criterion) {
        case let method? where method.usesGradients:
            return try GradientScores.scores(weights: weights, shards: h.statistics, square: method == .fisher, name: name, inputs: inputs)
        case .magnitude: criterion = MagnitudeCriterion()
        case .wanda:
            let norms = try WandaStatistics.merged(count: h.statistics.count, layer: name) { try inputs.artifact(h.statistics[$0]) }
            guard norms.columns == cols else { throw PruningError("histogram task: \(name) has \(cols) columns, its statistic \(norms.columns)") }
            criterion = WandaCriterion(statistics: norms)
        default: throw PruningError("histogram task: no global scores for '\(h.criterion)'")
        }
        var out = [Float](repeating: 0, count: weights.count)
        weights.withUnsafeBufferPointer { w in
            out.withUnsafeMutableBufferPointer { criterion.scores(WeightBlock(name: name, values: w, rows: rows, cols: cols), into: $0) }
        }
        return out
    }
}
