import Foundation
import Models
import Pruning
import Tensors

/// The two kinds of calibration task as functions of their inputs (`CalibrationPlan`
/// describes the DAG). The in-process runner and the cluster's workers both call these,
/// which is what makes their outputs identical.
public enum CalibrationWork {
    public static let embeddingName = "model.embed_tokens.weight"

    /// Every tensor a whole-model forward pass reads (embeddings, each block's, the final
    /// norm, an untied head), less `excluding`; refused, naming `who`, when the checkpoint
    /// lacks one.
    static func forwardTensors(_ config: LlamaConfig, checkpoint: Checkpoint, excluding: Set<String> = [], who: String) throws -> [String] {
        let names = [embeddingName] + (0..<config.layers).flatMap { config.blockTensorNames(block: $0) }.filter { !excluding.contains($0) }
            + ["model.norm.weight"] + (checkpoint.info("lm_head.weight") != nil ? ["lm_head.weight"] : [])
        if let missing = names.first(where: { checkpoint.info($0) == nil }) {
            throw SpecError("\(who): \(checkpoint.directory) has no tensor '\(missing)', which the forward pass reads")
        }
        return names
    }

    /// A `calibrate` task: which block, on how many samples, gathering which statistics.
    public struct Step: Sendable {
        public var config: LlamaConfig
        public var method: JobSpec.Method
        public var mode: JobSpec.Calibration.Mode
        public var block: Int
        public var tokens: Int
        public var samples: Int
        /// Pruned Linear layers of this block grouped by shared input (one statistic each).
        public var groups: [[String]]
        /// Whether a later task reads this task's hidden states.
        public var emitHidden: Bool
        /// Whether each group's input Gram matrix (a SparseGPT Hessian) is gathered too,
        /// besides the method's statistic (`refine:` with Wanda).
        public var gram = false

        public init(config: LlamaConfig, method: JobSpec.Method, mode: JobSpec.Calibration.Mode, block: Int, tokens: Int,
                    samples: Int, groups: [[String]], emitHidden: Bool) {
            self.config = config
            self.method = method
            self.mode = mode
            self.block = block
            self.tokens = tokens
            self.samples = samples
            self.groups = groups
            self.emitHidden = emitHidden
        }

        /// Bytes of the hidden states a shard carries (samples × tokens × hidden, F32).
        public var hiddenBytes: Int { samples * tokens * config.hiddenSize * 4 }
    }

    /// A block's input for one shard.
    public enum Input: Sendable {
        /// Block 0: token ids, one window per sample.
        case tokens([[Int32]])
        /// Later blocks: the hidden states an earlier task emitted.
        case hidden([Float])
    }

    public struct Output: Sendable {
        /// Hidden states for the next task of this shard (nil when none needs them):
        /// sequential mode, this block's input; dense mode, this block's output.
        public var hidden: [Float]?
        /// Serialized statistics by group (named by the group's first Linear).
        public var statistics: [(key: String, bytes: [UInt8])] = []
        /// Serialized Hessians by group, when the step asks (`Step.gram`).
        public var grams: [(key: String, bytes: [UInt8])] = []
    }

    /// Runs a `calibrate` task. `store` reads the checkpoint; in sequential mode it must
    /// already hold block b−1's pruned weights as overrides, which it drops once block
    /// b−1 has run (so memory holds one block's weights at a time).
    public static func calibrate(_ step: Step, input: Input, store: WeightStore) throws -> Output {
        let c = step.config, t = step.tokens, width = t * c.hiddenSize
        let model = LlamaModel(config: c, store: store)
        var x: [Float]
        switch input {
        case .tokens(let windows):
            guard windows.count == step.samples, windows.allSatisfy({ $0.count == t }) else {
                throw PruningError("calibrate block \(step.block): \(windows.count) token windows, expected \(step.samples) of \(t)")
            }
            x = []
            x.reserveCapacity(step.samples * width)
            for w in windows { x += try model.embed(w) }
        case .hidden(let h):
            guard h.count == step.samples * width else {
                throw PruningError("calibrate block \(step.block): \(h.count) hidden values, expected \(step.samples * width)")
            }
            x = h
        }
        let rope = RotaryTable(headDim: c.headDim, theta: c.ropeTheta, maxTokens: t)
        var output = Output()
        if step.mode == .sequential {
            if step.block > 0, case .hidden = input {
                let previous = try model.block(step.block - 1)
                try forEachBatch(&x, samples: step.samples, tokens: t, width: width) { batch, n in previous.forward(&batch, samples: n, tokens: t, rope: rope) }
                store.clearOverrides()
            }
            if step.emitHidden { output.hidden = x }
            guard !step.groups.isEmpty else { return output }
        }
        // Statistics of every group's input over the shard's samples, one sample at a
        // time (each `add` is one sample, as both references' hooks see them).
        guard let statistic = step.method.statistic else {
            throw PruningError("method \(step.method.rawValue) gathers no calibration statistics")
        }
        (output.statistics, output.grams) = try gather(statistic, step: step, x: &x, width: width, rope: rope, model: model, store: store)
        if step.mode == .dense && step.emitHidden { output.hidden = x }
        return output
    }

    /// Runs block b over the shard with hooks feeding one statistic per group (and its
    /// Hessian, when the step asks), and returns them serialized in group order. In dense
    /// mode `x` ends as the block's output.
    private static func gather<S: CalibrationStatistic>(_: S.Type, step: Step, x: inout [Float], width: Int, rope: RotaryTable, model: LlamaModel,
                                                        store: WeightStore) throws -> ([(key: String, bytes: [UInt8])], [(key: String, bytes: [UInt8])]) {
        var statistics: [String: S] = [:]
        var grams: [String: SparseGPT] = [:]
        for group in step.groups {
            // A group's input width is its layers' in_features, as the checkpoint says.
            guard let shape = store.reader.shape(of: group[0]), shape.count == 2 else {
                throw PruningError("calibrate block \(step.block): \(group[0]) is not a matrix of the model")
            }
            statistics[group[0]] = S(columns: shape[1])
            if step.gram { grams[group[0]] = SparseGPT(columns: shape[1]) }
        }
        let block = try model.block(step.block)
        // Sequential mode needs only the statistics of this block (its output comes from the
        // pruned block, in the next task), so the pass stops before down_proj's GEMM.
        let statisticsOnly = step.mode == .sequential
        let t = step.tokens
        try forEachBatch(&x, samples: step.samples, tokens: t, width: width) { batch, n in
            block.forward(&batch, samples: n, tokens: t, rope: rope, statisticsOnly: statisticsOnly) { name, input, tokens in
                if statistics[name] != nil { statistics[name]!.add(input, tokens: tokens) }
                if grams[name] != nil { grams[name]!.add(input, tokens: tokens) }
            }
        }
        return (step.groups.map { ($0[0], statistics[$0[0]]!.serialized()) }, step.groups.compactMap { g in grams[g[0]].map { (g[0], $0.serialized()) } })
    }

    /// Rows a batched block pass holds at once: large enough that each weight is packed
    /// for many rows, small enough that the MLP's intermediates (rows × intermediate) stay
    /// tens of MB even for a 7B shape.
    static let batchRows = 2048

    /// Runs `body` on consecutive batches of whole samples of `x` (samples × tokens ×
    /// hidden, `width` values per sample), at most `batchRows` rows each, in sample order,
    /// and writes each batch back (after a statistics-only pass x holds nothing useful).
    /// A cancelled task stops before the next batch (`Cancellation.checkpoint()`).
    private static func forEachBatch(_ x: inout [Float], samples: Int, tokens: Int, width: Int,
                                     _ body: (inout [Float], Int) -> Void) throws {
        let perBatch = max(1, batchRows / max(tokens, 1))
        if perBatch >= samples {
            try Cancellation.checkpoint()
            return body(&x, samples)
        }
        var first = 0
        while first < samples {
            try Cancellation.checkpoint()
            let n = min(perBatch, samples - first)
            let range = (first * width)..<((first + n) * width)
            var batch = Array(x[range])
            body(&batch, n)
            x.replaceSubrange(range, with: batch)
            first += n
        }
    }

    /// A `prune` task: one Linear layer's method, shape, pattern and knobs.
    public struct PruneStep: Sendable {
        public var method: JobSpec.Method
        public var tensor: String
        public var rows: Int
        public var cols: Int
        public var pattern: SparsityPattern
        public var sparsity: Double
        public var blockSize: Int
        public var damp: Double

        public init(method: JobSpec.Method, tensor: String, rows: Int, cols: Int, pattern: SparsityPattern, sparsity: Double,
                    blockSize: Int, damp: Double) {
            self.method = method
            self.tensor = tensor
            self.rows = rows
            self.cols = cols
            self.pattern = pattern
            self.sparsity = sparsity
            self.blockSize = blockSize
            self.damp = damp
        }
    }

    /// Runs a `prune` task on statistics held in memory.
    public static func prune(_ step: PruneStep, weights: [Float], statistics: [[UInt8]]) throws -> PrunedLayer {
        try prune(step, weights: weights, statisticsCount: statistics.count) { statistics[$0] }
    }

    /// Runs a `prune` task: merges the shards' statistics in shard order, loading one at
    /// a time (a large layer's Hessians are hundreds of MB each), then prunes with the
    /// method's statistic (Wanda: per-row groups for unstructured, as the paper; SparseGPT).
    public static func prune(_ step: PruneStep, weights: [Float], statisticsCount: Int,
                             statistics: (Int) throws -> [UInt8]) throws -> PrunedLayer {
        guard weights.count == step.rows * step.cols else { throw PruningError("\(step.tensor): \(weights.count) weights, expected \(step.rows)×\(step.cols)") }
        guard let statistic = step.method.statistic else { throw PruningError("method \(step.method.rawValue) is not calibration-aware") }
        return try prune(statistic, step: step, weights: weights, count: statisticsCount, statistics: statistics)
    }

    private static func prune<S: CalibrationStatistic>(_: S.Type, step: PruneStep, weights: [Float], count: Int,
                                                       statistics: (Int) throws -> [UInt8]) throws -> PrunedLayer {
        let merged = try S.merged(count: count, layer: step.tensor, statistics)
        guard merged.columns == step.cols else { throw PruningError("\(step.tensor): statistics have \(merged.columns) columns, weights \(step.cols)") }
        let options = LayerPruneOptions(pattern: step.pattern, sparsity: step.sparsity, blockSize: step.blockSize, damp: step.damp)
        return try merged.prune(weights: weights, rows: step.rows, options: options, layer: step.tensor)
    }
}
