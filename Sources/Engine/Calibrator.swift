import Foundation
import Models
import Pruning
import Tensors

/// What calibration-aware pruning produced for the pruned Linear layers.
public struct CalibrationResult: Sendable {
    public var masks: [String: Mask] = [:]
    /// Weights SparseGPT updated (F32, row-major), by tensor name.
    public var updated: [String: [Float]] = [:]
    /// ||WX − ŴX||² over the calibration tokens, where known.
    public var errors: [String: Double] = [:]
}

/// Runs a calibration plan in this process, task by task in queue order: the same
/// `CalibrationWork` the cluster's workers run, with the artifacts held in memory.
/// Memory: one block's weights, every shard's hidden states and one block's statistics.
public struct Calibrator {
    public let spec: JobSpec
    public let plan: Plan
    public let checkpoint: Checkpoint
    public var quiet = false
    /// The plan, when the caller built (and so validated) it already.
    public var calibration: CalibrationPlan?

    public init(spec: JobSpec, plan: Plan, checkpoint: Checkpoint, quiet: Bool = false, calibration: CalibrationPlan? = nil) {
        self.spec = spec
        self.plan = plan
        self.checkpoint = checkpoint
        self.quiet = quiet
        self.calibration = calibration
    }

    public func run() throws -> CalibrationResult {
        let calibration = try self.calibration ?? CalibrationPlan(spec: spec, plan: plan, checkpoint: checkpoint)
        let store = WeightStore(checkpoint: checkpoint)
        var hidden: [[Float]] = Array(repeating: [], count: calibration.shardCount)
        var statistics: [[String: [UInt8]]] = Array(repeating: [:], count: calibration.shardCount)
        var output = CalibrationResult()
        let progress = ProgressReporter(label: "calibrate", total: calibration.tasks.count, quiet: quiet)
        // Block b−1 as pruned (sequential mode), set as overrides before each calibrate
        // task of block b, which drops them after use.
        var pruned: [String: [Float]] = [:]
        var prunedBlock = -1
        for task in calibration.tasks {
            switch task {
            case .calibrate(let b, let s):
                for (name, values) in pruned { store.override(name, with: values) }
                let input: CalibrationWork.Input = b == 0 ? .tokens(Array(calibration.windows(shard: s))) : .hidden(hidden[s])
                let out = try CalibrationWork.calibrate(calibration.step(block: b, shard: s), input: input, store: store)
                hidden[s] = out.hidden ?? []
                statistics[s] = Dictionary(uniqueKeysWithValues: out.statistics.map { ($0.key, $0.bytes) })
            case .prune(let b, let name):
                if prunedBlock != b {
                    // Block b−1's pruned weights served every calibrate task of block b.
                    pruned = [:]
                    prunedBlock = b
                }
                store.clearOverrides()
                let info = checkpoint.info(name)!
                let dense = try store.load(name, shape: info.shape)
                let key = calibration.statisticsKey(for: name, block: b)
                let result = try CalibrationWork.prune(calibration.pruneStep(tensor: name, rows: info.rows, cols: info.cols), weights: dense,
                                                       statistics: statistics.map { $0[key]! })
                output.masks[name] = result.mask
                if let updated = result.updated { output.updated[name] = updated }
                if let error = result.error { output.errors[name] = error }
                if calibration.mode == .sequential { pruned[name] = result.values(dense: dense) }
            }
            progress.step(task.id)
        }
        return output
    }
}
