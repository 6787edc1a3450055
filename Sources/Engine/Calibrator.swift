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

/// Runs Wanda or SparseGPT on a Llama-family model in this process, block by block:
/// embed the calibration windows; for each block run it on every window with hooks that
/// gather each Linear's statistics, prune the block's targets, and (sequential mode)
/// run the pruned block again so the next block sees pruned activations, as both papers
/// do. Memory: one block's weights plus the windows' hidden states.
public struct Calibrator {
    public let spec: JobSpec
    public let plan: Plan
    public let checkpoint: Checkpoint
    public var quiet = false

    public init(spec: JobSpec, plan: Plan, checkpoint: Checkpoint, quiet: Bool = false) {
        self.spec = spec
        self.plan = plan
        self.checkpoint = checkpoint
        self.quiet = quiet
    }

    public func run() throws -> CalibrationResult {
        guard let calibration = spec.calibration else { throw SpecError("method \(spec.method.rawValue) needs calibration") }
        let config = try LlamaConfig.load(checkpoint.directory)
        let store = WeightStore(checkpoint: checkpoint)
        let model = LlamaModel(config: config, store: store)
        let streams = try CalibrationData.load(calibration.data, modelDirectory: checkpoint.directory)
        let windows = try CalibrationData.windows(streams, samples: calibration.samples, tokens: calibration.tokens,
                                                  seed: calibration.seed, source: calibration.data)
        let t = calibration.tokens
        let rope = RotaryTable(headDim: config.headDim, theta: config.ropeTheta, maxTokens: t)
        var hidden = try windows.map { try model.embed($0) }
        let targets = Set(plan.targets.map(\.name))
        let unplanned = targets.subtracting((0..<config.layers).flatMap { config.linearNames(block: $0) })
        guard unplanned.isEmpty else {
            throw SpecError("targets: \(unplanned.sorted().prefix(3).joined(separator: ", ")) are not Linear layers of the decoder blocks, which \(spec.method.rawValue) prunes; add them to ignore")
        }
        var result = CalibrationResult()
        let progress = ProgressReporter(label: "calibrate", total: config.layers, quiet: quiet)
        for b in 0..<config.layers {
            let names = config.linearNames(block: b).filter { targets.contains($0) }
            let block = try model.block(b)
            // Statistics of every target Linear's input over all windows.
            var wanda: [String: WandaStatistics] = [:]
            var hessians: [String: SparseGPT] = [:]
            let shapes = Dictionary(uniqueKeysWithValues: names.map { ($0, checkpoint.info($0)!.shape) })
            for name in names {
                switch spec.method {
                case .wanda: wanda[name] = WandaStatistics(columns: shapes[name]![1])
                default: hessians[name] = SparseGPT(rows: shapes[name]![0], columns: shapes[name]![1])
                }
            }
            for s in hidden.indices where !names.isEmpty || calibration.mode == .dense {
                var x = hidden[s]
                block.forward(&x, tokens: t, rope: rope) { name, input, tokens in
                    if wanda[name] != nil { wanda[name]!.add(batch: input, tokens: tokens, columns: input.count / tokens) }
                    if hessians[name] != nil { hessians[name]!.addBatch(input, tokens: tokens) }
                }
                if calibration.mode == .dense { hidden[s] = x }
            }
            // Prune the block's targets.
            for name in names {
                let shape = shapes[name]!
                var weights = try store.load(name, shape: shape)
                let rows = shape[0], cols = shape[1]
                switch spec.method {
                case .wanda:
                    // Wanda compares weights within each output row; unstructured means per row.
                    let pattern: SparsityPattern = plan.pattern == .unstructured ? .perRow : plan.pattern
                    let criterion = WandaCriterion(statistics: wanda[name]!)
                    var scores = [Float](repeating: 0, count: rows * cols)
                    weights.withUnsafeBufferPointer { w in
                        scores.withUnsafeMutableBufferPointer { criterion.scores(WeightBlock(name: name, values: w, rows: rows, cols: cols), into: $0) }
                    }
                    let mask = try scores.withUnsafeBufferPointer {
                        try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: pattern, sparsity: plan.sparsity)
                    }
                    for r in 0..<rows { for c in 0..<cols where !mask[r, c] { weights[r * cols + c] = 0 } }
                    result.masks[name] = mask
                default:
                    var n = 0, m = 0
                    if case .nm(let kept, let group) = plan.pattern { n = kept; m = group }
                    let (mask, error) = try hessians[name]!.prune(weights: &weights, sparsity: plan.sparsity, n: n, m: m,
                                                                  blockSize: spec.sparseGPT.blockSize, percDamp: spec.sparseGPT.damp, layer: name)
                    result.masks[name] = mask
                    result.updated[name] = weights
                    result.errors[name] = error
                }
                store.override(name, with: weights)
            }
            if calibration.mode == .sequential {
                let pruned = try model.block(b)
                for s in hidden.indices { pruned.forward(&hidden[s], tokens: t, rope: rope) }
            }
            // Later blocks never read this block's weights again: keep one block in memory
            // (SparseGPT's updated weights stay in the result until assembly).
            store.clearOverrides()
            progress.step("block \(b)")
        }
        return result
    }
}
