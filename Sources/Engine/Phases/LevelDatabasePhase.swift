import Foundation
import Protocol
import Pruning
import Tensors

/// The level database of an evolutionary search (`leveldb:NAME`, `allocation:
/// evolutionary`): per pruned layer, one byte per weight, the first level of the search's
/// grid whose Wanda mask (dense statistics) prunes it. One task per layer once its block's
/// dense statistics are in; the fitness tasks read every layer's database.
public final class LevelDatabasePhase: Phase, RoundedPhase {
    public static let name = "leveldb"
    public static let database = OutputName("database")
    private let job: JobContext
    private let statistics: CalibratePhase
    /// The targets in forward order, with their blocks: the search's layers, in its order.
    let targets: [(block: Int, name: String)]
    private let index: [String: Int]
    /// The levels each layer may take.
    let grid: LevelGrid

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.allocation.method == .evolutionary else { return nil }
        self.job = job
        statistics = try ProfilePhase.denseStatistics(in: earlier, allocation: .evolutionary)
        let calibration = statistics.calibration
        targets = calibration.targetsWithBlocks
        index = Dictionary(targets.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
        let a = job.spec.allocation
        // A fitness task holds the dense log-probabilities of its sample: tokens × vocabulary F32.
        let held = Double(a.tokens.last ?? 0) * Double(calibration.config.vocabSize) * 4
        guard held <= Double(4 << 30) else {
            throw SpecError("allocation.tokens: \(a.tokens.last ?? 0) tokens × a vocabulary of \(calibration.config.vocabSize) is \(Int(held / Double(1 << 30))) GiB of log-probabilities per candidate (at most 4 GiB); score on fewer tokens")
        }
        grid = LevelGrid(weights: targets.map { job.checkpoint.info($0.name)?.elementCount ?? 1 }, target: job.plan.sparsity,
                         stepWeights: a.stepWeights(target: job.plan.sparsity, hidden: calibration.config.hiddenSize),
                         levels: a.levels, minimum: a.min, maximum: a.max)
    }

    public static func id(tensor: String) -> TaskID { TaskID(name, tensor) }

    public var tasks: [PhaseTask] { targets.map { PhaseTask(LevelDatabasePhase.id(tensor: $0.name), after: statistics.tasks(block: $0.block)) } }

    public func round(of task: TaskID) -> Int { index[task.key].map { targets[$0].block } ?? 0 }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let i = index[task.key], let info = job.checkpoint.info(task.key) else { throw PruningError("no leveldb task \(task)") }
        let calibration = statistics.calibration
        var d = Prune_V1_LevelDatabaseTask()
        d.tensor = job.tensorRef(info)
        d.statistics = try statistics.statistics(of: calibration.statisticsKey(for: task.key, block: targets[i].block), block: targets[i].block, outputs: outputs)
        d.pattern = WandaStatistics.comparisonPattern(for: calibration.pattern).description
        d.sparsities = grid.sparsities(layer: i)
        return .levelDatabase(d)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { [LevelDatabasePhase.database] }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let i = index[task.key] else { return "no leveldb task \(task)" }
        let positions = grid.highest[i] - grid.lowest[i] + 1
        guard outputs.count == 1, outputs[0].count == grid.weights[i],
              outputs[0].allSatisfy({ Int($0) < positions || $0 == LevelDatabase.never }) else {
            return "result of \(task) is not one level position (< \(positions), or 255) per weight of the layer's \(grid.weights[i])"
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .levelDatabase(let d) = work else { return nil }
        let wanda = try TaskTensorReader([d.tensor], inputs: inputs).wandaScores(d.tensor.name, statistics: d.statistics, task: "leveldb")
        let bytes = try wanda.scores.withUnsafeBufferPointer {
            try LevelDatabase.build(scores: $0, rows: wanda.rows, cols: wanda.cols, pattern: try SparsityPattern(parsing: d.pattern), sparsities: d.sparsities)
        }
        return TaskOutputs(payloads: [(database.rawValue, bytes)])
    }
}
