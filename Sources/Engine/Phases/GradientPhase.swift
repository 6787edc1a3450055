import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// Gradient-based importance (`method: taylor` or `fisher`) of a Llama-family model,
/// first half: `gradient:grad:S` runs shard S of the calibration windows through the
/// dense model one window at a time and accumulates each window's gradient of its summed
/// next-token cross-entropy with respect to every target weight (`LlamaGradient`): Σ g
/// for Taylor, Σ g² for Fisher (the empirical diagonal Fisher needs each window's square,
/// so windows are never batched). `GradientScorePhase` turns them into masks, and
/// `allocation: global` into one threshold over the model (`HistogramPhase`). The bytes
/// depend on the windows and the shard size, never on the worker count.
public final class GradientPhase: Phase {
    public static let name = "gradient"
    private let job: JobContext
    private let calibration: CalibrationPlan
    let targets: [PlannedTensor]
    private let forwardTensors: [String]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.method.usesGradients, let calibration = job.calibration else { return nil }
        self.job = job
        self.calibration = calibration
        targets = job.plan.targets
        forwardTensors = try CalibrationWork.forwardTensors(calibration.config, checkpoint: job.checkpoint, who: "method \(job.spec.method.rawValue)")
        // A shard's gradients travel in one Result: bounded before anything runs.
        let bytes = targets.reduce(0) { $0 + $1.rows * $1.cols } * 4
        guard bytes < GradientPhase.maxResultBytes else {
            throw SpecError("method \(job.spec.method.rawValue): the gradients of the \(targets.count) targets are \(bytes >> 20) MiB, more than one result carries (\(GradientPhase.maxResultBytes >> 20) MiB); target fewer layers")
        }
    }

    /// What one gradient task may return (the wire's frame limit, less room for the rest).
    static let maxResultBytes = (1 << 30) - (16 << 20)

    static func gradientID(shard s: Int) -> TaskID { TaskID(name, "grad:\(s)") }
    static func gradient(_ tensor: String) -> OutputName { OutputName("grad:\(tensor)") }
    static let loss = OutputName("loss")

    private var shards: Range<Int> { 0..<calibration.shardCount }

    /// Every gradient task: what a score of any tensor waits for.
    var gradientTasks: [TaskID] { shards.map { GradientPhase.gradientID(shard: $0) } }

    public var tasks: [PhaseTask] { gradientTasks.map { PhaseTask($0) } }

    /// A tensor's accumulated gradient in every shard, in shard order.
    func gradientRefs(of tensor: String, outputs: OutputStore) throws -> [Prune_V1_ArtifactRef] {
        try gradientTasks.map { try outputs.ref(GradientPhase.gradient(tensor), of: $0) }
    }

    public func isTransient(_ name: OutputName) -> Bool { name.rawValue.hasPrefix("grad:") }
    /// The shard gradients (`run` marks the same ones volatile).
    public func isVolatile(_ name: OutputName) -> Bool { name.rawValue.hasPrefix("grad:") }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let s = shard(of: task) else { throw PruningError("no gradient task \(task)") }
        var g = Prune_V1_GradientTask()
        g.configJson = Data(calibration.configJSON)
        g.weights = forwardTensors.map { job.tensorRef(job.checkpoint.info($0)!) }
        g.tokenIds = calibration.windows(shard: s).flatMap { $0 }
        g.tokens = UInt32(calibration.tokens)
        g.targets = targets.map(\.name)
        g.square = job.spec.method == .fisher
        return .gradient(g)
    }

    private func shard(of task: TaskID) -> Int? {
        guard task.phase == Self.name, task.key.hasPrefix("grad:"), let s = Int(task.key.dropFirst(5)), shards.contains(s) else { return nil }
        return s
    }

    public func outputNames(of task: TaskID) -> [OutputName] { targets.map { GradientPhase.gradient($0.name) } + [GradientPhase.loss] }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let s = shard(of: task) else { return "no gradient task \(task)" }
        guard outputs.count == targets.count + 1 else { return "result of \(task): \(outputs.count) payloads" }
        let square = job.spec.method == .fisher
        for (t, bytes) in zip(targets, outputs) {
            guard bytes.count == t.rows * t.cols * 4 else { return "result of \(task): the gradient of \(t.name) has \(bytes.count) bytes" }
            // Scores are selected on their bits: a NaN, an infinity or a negative sum of
            // squares would keep weights for nothing.
            let bad = bytes.withUnsafeBytes { raw in
                raw.bindMemory(to: Float.self).contains { !$0.isFinite || (square && $0 < 0) }
            }
            if bad { return "result of \(task): the gradient of \(t.name) has values that are not finite\(square ? " or are negative" : "")" }
        }
        let windows = calibration.windows(shard: s).count
        guard let loss = try? FloatPayload.doubles(outputs.last!, what: "loss"), loss.count == 2, loss[0].isFinite, loss[0] >= 0,
              loss[1] == Double(windows * (calibration.tokens - 1)) else { return "result of \(task): bad loss" }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .gradient(let g) = work else { return nil }
        return try gradients(g, inputs: inputs)
    }

    /// One shard: each window's gradient, accumulated in window order.
    private static func gradients(_ g: Prune_V1_GradientTask, inputs: TaskInputs) throws -> TaskOutputs {
        let config = try LlamaConfig.parse(bytes: [UInt8](g.configJson), file: "gradient task config")
        let t = Int(g.tokens)
        try config.checkSequenceLength(t, what: "gradient task windows")
        guard t >= 2, !g.tokenIds.isEmpty, g.tokenIds.count % t == 0, g.tokenIds.count / t <= JobSpec.Limits.samples else {
            throw PruningError("gradient task: \(g.tokenIds.count) token ids in windows of \(t)")
        }
        guard g.tokenIds.allSatisfy({ $0 >= 0 && Int($0) < config.vocabSize }) else { throw PruningError("gradient task: a token id is outside the vocabulary") }
        let store = WeightStore(reader: TaskTensorReader(g.weights, inputs: inputs))
        let model = LlamaModel(config: config, store: store)
        let blocks = try (0..<config.layers).map { try model.block($0) }
        var index: [String: Int] = [:]
        let linears = Set((0..<config.layers).flatMap(config.linearNames))
        for (i, name) in g.targets.enumerated() {
            guard index[name] == nil, linears.contains(name) else {
                throw PruningError("gradient task: target \(name) is not a decoder Linear weight (or is named twice)")
            }
            index[name] = i
        }
        var sums: [[Float]?] = Array(repeating: nil, count: g.targets.count)
        var loss = 0.0, count = 0
        for w in 0..<(g.tokenIds.count / t) {
            let window = Array(g.tokenIds[(w * t)..<((w + 1) * t)])
            let r = try LlamaGradient.evaluate(model, blocks: blocks, tokens: window) { name, gradient in
                guard let i = index[name] else { return }
                guard gradient.allSatisfy(\.isFinite) else { throw PruningError("gradient task: the gradient of \(name) is not finite on window \(w)") }
                if sums[i] == nil { sums[i] = [Float](repeating: 0, count: gradient.count) }
                sums[i]!.withUnsafeMutableBufferPointer { s in
                    gradient.withUnsafeBufferPointer { d in
                        if g.square { for k in 0..<d.count { s[k] += d[k] * d[k] } } else { for k in 0..<d.count { s[k] += d[k] } }
                    }
                }
            }
            loss += r.loss
            count += r.count
        }
        var outputs = TaskOutputs(payloads: try g.targets.enumerated().map { i, name in
            guard let s = sums[i] else { throw PruningError("gradient task: no gradient of \(name)") }
            return (GradientPhase.gradient(name).rawValue, FloatPayload.encode(s))
        } + [(GradientPhase.loss.rawValue, FloatPayload.encode(loss) + FloatPayload.encode(Double(count)))])
        // Read once by the score tasks, recomputed to the same bytes if a crash loses them.
        outputs.volatile = Set(g.targets.map { GradientPhase.gradient($0).rawValue })
        return outputs
    }
}

/// Gradient-based importance, second half: `gradient-score:NAME` sums a tensor's shards
/// in shard order, scores its weights (`GradientScores`) and selects its mask under the
/// job's pattern at its level (the job's sparsity, or an allocation's).
public final class GradientScorePhase: Phase, PrunedTensorSource {
    public static let name = "gradient-score"
    private let job: JobContext
    private let gradients: GradientPhase
    private let levels: (any LevelSource)?

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard let gradients = earlier.compactMap({ $0 as? GradientPhase }).first, job.plan.units == nil else { return nil }
        self.job = job
        self.gradients = gradients
        levels = earlier.compactMap { $0 as? LevelSource }.first
    }

    static func scoreID(_ tensor: String) -> TaskID { TaskID(name, tensor) }

    private var targets: [PlannedTensor] { gradients.targets }

    public var tasks: [PhaseTask] {
        targets.map { PhaseTask(GradientScorePhase.scoreID($0.name), after: gradients.gradientTasks + (levels.map { [$0.levelsTask] } ?? [])) }
    }

    private func target(of task: TaskID) -> PlannedTensor? {
        guard task.phase == Self.name else { return nil }
        return targets.first { $0.name == task.key }
    }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let target = target(of: task) else { throw PruningError("no gradient score task \(task)") }
        var g = Prune_V1_GradientScoreTask()
        g.tensor = job.tensorRef(job.checkpoint.info(target.name)!)
        g.shards = try gradients.gradientRefs(of: target.name, outputs: outputs)
        g.square = job.spec.method == .fisher
        g.pattern = job.plan.pattern.description
        g.sparsity = try levels?.level(of: target.name, outputs: outputs) ?? job.plan.sparsity
        return .gradientScore(g)
    }

    public func outputNames(of task: TaskID) -> [OutputName] { [.mask] }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let t = target(of: task) else { return "no gradient score task \(task)" }
        guard outputs.count == 1, (try? Mask(rows: t.rows, cols: t.cols, bits: outputs[0])) != nil else {
            return "result of \(task) is not a \(t.rows)×\(t.cols) mask"
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .gradientScore(let g) = work else { return nil }
        return try score(g, inputs: inputs)
    }

    /// One tensor's scores from its shards and its mask.
    private static func score(_ g: Prune_V1_GradientScoreTask, inputs: TaskInputs) throws -> TaskOutputs {
        let name = g.tensor.name
        let reader = TaskTensorReader([g.tensor], inputs: inputs)
        guard let shape = reader.shape(of: name), shape.count == 2 else { throw PruningError("gradient score task: \(name) is not a matrix") }
        let rows = shape[0], cols = shape[1]
        let weights = try reader.floats(name)
        let scores = try GradientScores.scores(weights: weights, shards: g.shards, square: g.square, name: name, inputs: inputs)
        let mask = try scores.withUnsafeBufferPointer {
            try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: try SparsityPattern(parsing: g.pattern), sparsity: g.sparsity)
        }
        return TaskOutputs.withMask(mask, pattern: g.pattern)
    }

    // MARK: PrunedTensorSource

    public var prunedTensors: Set<String> { Set(targets.map(\.name)) }

    public func producers(of tensor: String) -> [TaskID] { [GradientScorePhase.scoreID(tensor)] }

    public func maskParts(of tensor: String, outputs: OutputStore) throws -> (masks: [Prune_V1_ArtifactRef], updated: Prune_V1_ArtifactRef?) {
        ([try outputs.ref(.mask, of: GradientScorePhase.scoreID(tensor))], nil)
    }

    public func mask(of tensor: String, outputs: OutputStore) throws -> Mask {
        guard let t = targets.first(where: { $0.name == tensor }) else { throw PruningError("\(tensor) is not pruned by this job") }
        return try Mask(rows: t.rows, cols: t.cols, bits: try outputs.bytes(.mask, of: GradientScorePhase.scoreID(tensor)))
    }
}

/// The scores of gradient-based importance, from a tensor's weights and its gradient
/// shards summed in shard order: |w · Σ g| (first-order Taylor, LLM-Pruner's element-wise
/// form) or w² · Σ g² (the Fisher saliency ½ F_ii w_i², the loss a weight's removal costs
/// to second order with the empirical Fisher for the Hessian, without the constant: it
/// compares across layers, which `allocation: global` uses).
enum GradientScores {
    static func scores(weights: [Float], shards: [Prune_V1_ArtifactRef], square: Bool, name: String, inputs: TaskInputs) throws -> [Float] {
        guard !shards.isEmpty else { throw PruningError("gradient scores: \(name) has no gradient shards") }
        var sum = [Float](repeating: 0, count: weights.count)
        for ref in shards {
            try Cancellation.checkpoint()
            let part = try FloatPayload.floats(try inputs.artifact(ref), what: "gradient of \(name)")
            guard part.count == sum.count else { throw PruningError("gradient scores: a gradient of \(name) has \(part.count) values, expected \(sum.count)") }
            for k in 0..<sum.count { sum[k] += part[k] }
        }
        var scores = [Float](repeating: 0, count: weights.count)
        for k in 0..<scores.count { scores[k] = square ? weights[k] * weights[k] * sum[k] : abs(weights[k] * sum[k]) }
        if let bad = scores.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
            throw PruningError("gradient scores: \(name)[\(bad)] scores \(scores[bad]) (weight \(weights[bad]), gradient sum \(sum[bad]))")
        }
        return scores
    }
}
