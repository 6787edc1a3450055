import Foundation
import Models
import Pruning
import Tensors

/// The facts of a Wanda or SparseGPT job's calibration on a Llama-family model: the
/// config, the calibration windows and their shards, the groups of targets sharing an
/// input, and the order of each block's prunes. Two phases plan their tasks from it
/// (`CalibratePhase`: `calibrate:B:S`, `LayerPrunePhase`: `prune:NAME`), which
/// `prune run --workers 0` executes in this process and the cluster spreads over workers;
/// both run the same `CalibrationWork` functions and merge statistics in shard order.
public struct CalibrationPlan: Sendable {
    public let config: LlamaConfig
    /// config.json as read (workers get these bytes in their tasks).
    public let configJSON: [UInt8]
    public internal(set) var method: JobSpec.Method
    public internal(set) var mode: JobSpec.Calibration.Mode
    /// Tokens per calibration sample.
    public let tokens: Int
    /// The calibration windows, drawn with the spec's seed.
    public let windows: [[Int32]]
    public let samplesPerTask: Int
    public let pattern: SparsityPattern
    public let sparsity: Double
    public let sparseGPT: JobSpec.SparseGPTOptions
    /// Per block, the pruned Linear layers grouped by the input they share.
    public let groups: [[[String]]]
    /// Per block, its targets in the order their prune tasks are queued: longest first.
    public let pruneOrder: [[String]]
    /// Every block's calibration tasks emit the block's input, the last one's too: in
    /// sequential mode, the block-wise re-fit reads them.
    public let emitsEveryInput: Bool

    public var shardCount: Int { (windows.count + samplesPerTask - 1) / samplesPerTask }
    public var blocks: Int { config.layers }

    /// Builds the plan: reads config.json and the calibration data, draws the windows,
    /// and refuses targets that are not Linear layers of the decoder blocks.
    public init(spec: JobSpec, plan: Plan, modelDirectory: String) throws {
        try self.init(spec: spec, plan: plan, checkpoint: try Checkpoint(path: modelDirectory))
    }

    /// Builds the plan for an opened checkpoint. Everything the calibration will read is
    /// checked here, before any task runs: config.json against its meaning and against
    /// the checkpoint's tensors, the calibration windows against the vocabulary.
    public init(spec: JobSpec, plan: Plan, checkpoint: Checkpoint) throws {
        guard let calibration = spec.calibration else { throw SpecError("method \(spec.method.rawValue) needs calibration") }
        let modelDirectory = checkpoint.directory
        let configPath = (modelDirectory as NSString).appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: configPath) else {
            // An MLP classifier (mlp.json) has labelled examples, not token windows to calibrate on.
            let what = MLPConfigFile.exists(in: modelDirectory) ? "\(modelDirectory) is an MLP classifier (mlp.json), not a Llama-family model with a config.json"
                : "\(configPath) does not exist"
            throw ModelError("\(what): method \(spec.method.rawValue) runs a Llama-family model's forward pass on the calibration tokens")
        }
        configJSON = try LlamaConfig.readConfig(configPath)
        config = try LlamaConfig.parse(bytes: configJSON, file: configPath)
        try config.validate(against: checkpoint, file: configPath)
        try config.checkSequenceLength(calibration.tokens, what: "calibration.tokens")
        let streams = try CalibrationData.load(calibration.data, modelDirectory: modelDirectory)
        windows = try CalibrationData.windows(streams, samples: calibration.samples, tokens: calibration.tokens,
                                              seed: calibration.seed, source: calibration.data)
        try CalibrationData.check(windows, vocabularySize: config.vocabSize, source: calibration.data)
        // A structured re-fit after a score without statistics (magnitude, taylor, fisher)
        // gathers the Hessians in a pass of Wanda's (cheap) statistics.
        method = spec.method.statistic == nil && spec.reconstruct != nil ? .wanda : spec.method
        mode = calibration.mode
        tokens = calibration.tokens
        samplesPerTask = calibration.samplesPerTask
        emitsEveryInput = calibration.mode == .sequential && spec.reconstruct?.scope == .block
        pattern = plan.pattern
        sparsity = plan.sparsity
        sparseGPT = spec.sparseGPT
        let targets = Set(plan.targets.map(\.name))
        let config = config
        let unplanned = targets.subtracting((0..<config.layers).flatMap { config.linearNames(block: $0) })
        guard unplanned.isEmpty else {
            throw SpecError("targets: \(unplanned.sorted().prefix(3).joined(separator: ", ")) are not Linear layers of the decoder blocks, which \(spec.method.rawValue) prunes; add them to ignore")
        }
        groups = (0..<config.layers).map { b in
            config.linearGroups(block: b).map { $0.filter(targets.contains) }.filter { !$0.isEmpty }
        }
        let shapes = Dictionary(plan.targets.map { ($0.name, (rows: $0.rows, cols: $0.cols)) }, uniquingKeysWith: { a, _ in a })
        let method = spec.method
        // Longest first (LPT scheduling): block b+1's calibrations wait for every prune of
        // block b, so the longest prune must not start last while the other workers idle.
        pruneOrder = groups.map { blockGroups in
            let forward = Array(blockGroups.joined())
            let cost = forward.map { shapes[$0].map { Self.pruneCost(method: method, refits: spec.reconstruct != nil, rows: $0.rows, cols: $0.cols) } ?? 0 }
            return forward.indices.sorted { (cost[$0], -$0) > (cost[$1], -$1) }.map { forward[$0] }
        }
    }

    /// Relative work of a `prune` task, for ordering only. SparseGPT: the Cholesky factor
    /// of the columns × columns Hessian and the sweep's updates, ~cols²·(rows + cols);
    /// Wanda and the rest: one pass over the weights.
    /// A layer-wise re-fit: a Cholesky of up to (cols/2)² per row, ~rows·cols³ (it dominates).
    static func pruneCost(method: JobSpec.Method, refits: Bool = false, rows: Int, cols: Int) -> Double {
        if refits { return Double(rows) * Double(cols) * Double(cols) * Double(cols) }
        return method == .sparsegpt ? Double(cols) * Double(cols) * Double(rows + cols) : Double(rows) * Double(cols)
    }

    /// The same windows and groups run through the dense model for `method`'s statistics
    /// (Wanda's column norms, SparseGPT's Hessians): the pass that scores layers before
    /// the job prunes (`ProfilePhase`).
    public func profiling(_ method: JobSpec.Method) -> CalibrationPlan {
        var plan = self
        plan.mode = .dense
        plan.method = method
        return plan
    }

    /// Every pruned Linear layer with its block, in forward order.
    public var targetsWithBlocks: [(block: Int, name: String)] {
        (0..<blocks).flatMap { b in targets(block: b).map { (b, $0) } }
    }

    /// The pruned Linear layers of block `b`, in forward order.
    public func targets(block b: Int) -> [String] {
        Array(groups[b].joined())
    }

    /// The windows of shard `s`.
    public func windows(shard s: Int) -> ArraySlice<[Int32]> {
        windows[(s * samplesPerTask)..<min(windows.count, (s + 1) * samplesPerTask)]
    }

    /// The group (shared-input targets) a tensor's statistics come from: its first member names it.
    public func statisticsKey(for tensor: String, block b: Int) -> String {
        groups[b].first { $0.contains(tensor) }!.first!
    }

    /// What a `calibrate` task of block `b` needs to run, wherever it runs.
    public func step(block b: Int, shard s: Int) -> CalibrationWork.Step {
        CalibrationWork.Step(config: config, method: method, mode: mode, block: b, tokens: tokens,
                             samples: windows(shard: s).count, groups: groups[b], emitHidden: b + 1 < blocks || emitsEveryInput)
    }

    /// The tensors a `calibrate` task of block `b` reads from the checkpoint: the
    /// embedding (block 0), block b−1 (sequential mode) and block b.
    public func tensorsRead(block b: Int) -> [String] {
        var names: [String] = []
        if b == 0 { names.append(CalibrationWork.embeddingName) }
        if mode == .sequential && b > 0 { names += config.blockTensorNames(block: b - 1) }
        if !groups[b].isEmpty || mode == .dense { names += config.blockTensorNames(block: b) }
        return names
    }
}
