import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// Calibration statistics of a Wanda or SparseGPT job (`CalibrationPlan` has the DAG's
/// facts): per decoder block b and shard s of calibration samples, task `calibrate:b:s`
/// runs the block's input through the block with hooks and returns one statistic per
/// group of Linear layers sharing an input, and the hidden states the next block's task
/// of that shard starts from. Both are transient: deleted once every consumer is done.
public class CalibratePhase: Phase, RoundedPhase {
    public class var name: String { "calibrate" }
    let job: JobContext
    let calibration: CalibrationPlan

    public required init?(job: JobContext, earlier: [any Phase]) throws {
        guard let calibration = job.calibration, calibration.method.statistic != nil else { return nil }
        self.job = job
        self.calibration = calibration
    }

    /// A pass over the blocks with `calibration`'s mode and method (`ProfilePhase`).
    init(job: JobContext, calibration: CalibrationPlan) {
        self.job = job
        self.calibration = calibration
    }

    /// The id of the calibration pass's task of block b, shard s.
    public static func id(block: Int, shard: Int) -> TaskID { TaskID(CalibratePhase.name, "\(block):\(shard)") }

    /// The id of this pass's task of block b, shard s.
    public func id(block: Int, shard: Int) -> TaskID { TaskID(type(of: self).name, "\(block):\(shard)") }

    /// Block and shard of a task id of this pass.
    func blockAndShard(_ task: TaskID) -> (block: Int, shard: Int)? {
        let parts = task.key.split(separator: ":")
        guard task.phase == type(of: self).name, parts.count == 2, let b = Int(parts[0]), let s = Int(parts[1]) else { return nil }
        return (b, s)
    }

    /// The statistic of `group` of block b merged over the shards, as references in shard order.
    func statistics(of group: String, block b: Int, outputs: OutputStore) throws -> [Prune_V1_ArtifactRef] {
        try (0..<calibration.shardCount).map { try outputs.ref(CalibratePhase.statistics(group), of: id(block: b, shard: $0)) }
    }

    /// The tasks of block b (every shard).
    func tasks(block b: Int) -> [TaskID] { (0..<calibration.shardCount).map { id(block: b, shard: $0) } }

    /// A block's input for the next block's task of the same shard.
    public static let hidden = OutputName("hidden")
    /// The statistic of the group whose first Linear layer is `group`.
    public static func statistics(_ group: String) -> OutputName { OutputName("stats:\(group)") }
    /// The Hessian of the group's input, for `refine:` and `reconstruct:` with Wanda (the
    /// job's own pass only; SparseGPT's statistic is that Hessian already).
    public static func gram(_ group: String) -> OutputName { OutputName("gram:\(group)") }

    /// Whether this pass also gathers each group's Hessian: the job's own pass of a job
    /// that refines its masks or re-fits Wanda's weights (the profile pass never does).
    var gathersGrams: Bool {
        (job.spec.refine != nil || (job.spec.reconstruct != nil && job.spec.method != .sparsegpt)) && type(of: self) == CalibratePhase.self
    }

    public var tasks: [PhaseTask] {
        (0..<calibration.blocks).flatMap { b in
            (0..<calibration.shardCount).map { s in PhaseTask(id(block: b, shard: s), after: dependencies(block: b, shard: s)) }
        }
    }

    /// Block b−1 of the same shard; in sequential mode also every prune of block b−1, and
    /// with block-wise reconstruction block b−1's re-fit halves.
    private func dependencies(block b: Int, shard s: Int) -> [TaskID] {
        guard b > 0 else { return [] }
        let previous = id(block: b - 1, shard: s)
        guard calibration.mode == .sequential else { return [previous] }
        let refit = runsOnRefitBlocks ? SubBlock.allCases.filter { part in
            calibration.targets(block: b - 1).contains { BlockRefitPhase.part(of: $0) == part }
        }.map { BlockRefitPhase.id(block: b - 1, part: $0) } : []
        if let units = job.plan.units { return [previous] + UnitPrunePhase.ids(block: b - 1, of: units) }
        return [previous] + calibration.targets(block: b - 1).map(LayerPrunePhase.id(tensor:)) + refit
    }

    /// Sequential mode with block-wise reconstruction: block b runs on block b−1 as re-fit
    /// (the job's own pass only).
    var runsOnRefitBlocks: Bool {
        calibration.mode == .sequential && job.spec.reconstruct?.scope == .block && type(of: self) == CalibratePhase.self
    }

    public func round(of task: TaskID) -> Int { blockAndShard(task)?.block ?? 0 }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let (b, s) = blockAndShard(task) else { throw PruningError("no \(type(of: self).name) task \(task)") }
        let step = calibration.step(block: b, shard: s)
        var c = Prune_V1_CalibrateTask()
        c.block = UInt32(b)
        c.shard = UInt32(s)
        c.method = calibration.method.rawValue
        c.mode = calibration.mode.rawValue
        c.configJson = Data(calibration.configJSON)
        c.tokens = UInt32(calibration.tokens)
        c.samples = UInt32(step.samples)
        c.emitHidden = step.emitHidden
        c.gram = gathersGrams
        c.groups = step.groups.map { g in Prune_V1_LinearGroup.with { $0.names = g } }
        c.weights = calibration.tensorsRead(block: b).map { job.tensorRef(job.checkpoint.info($0)!) }
        if b == 0 {
            c.tokenIds = calibration.windows(shard: s).flatMap { $0 }
        } else {
            c.hidden = try outputs.ref(CalibratePhase.hidden, of: id(block: b - 1, shard: s))
            if calibration.mode == .sequential {
                c.pruned = try calibration.targets(block: b - 1).map { name in
                    var p = Prune_V1_PrunedLinear()
                    p.name = name
                    p.mask = try job.plan.units.map { try outputs.ref(UnitPrunePhase.mask(name), of: try UnitPrunePhase.id(cutting: name, of: $0)) }
                        ?? outputs.ref(.mask, of: LayerPrunePhase.id(tensor: name))
                    if let units = job.plan.units {
                        // A re-fit reads the removed units' columns (down, o): those change.
                        if job.spec.reconstruct != nil, units.slicedTensors[name]?.contains(where: { $0.slice.axis == .cols }) == true {
                            p.weights = try UnitPrunePhase.refitWeights(of: name, units: units, outputs: outputs)
                        }
                    } else if runsOnRefitBlocks {
                        p.weights = try BlockRefitPhase.refitWeights(of: name, block: b - 1, outputs: outputs)
                    } else if job.spec.updatesKeptWeights {
                        p.weights = try outputs.ref(LayerPrunePhase.weights, of: LayerPrunePhase.id(tensor: name))
                    }
                    return p
                }
            }
        }
        return .calibrate(c)
    }

    public func outputNames(of task: TaskID) -> [OutputName] {
        guard let (b, s) = blockAndShard(task) else { return [] }
        let step = calibration.step(block: b, shard: s)
        return (step.emitHidden ? [CalibratePhase.hidden] : []) + step.groups.map { CalibratePhase.statistics($0[0]) }
            + (gathersGrams ? step.groups.map { CalibratePhase.gram($0[0]) } : [])
    }

    public func isTransient(_ name: OutputName) -> Bool { true }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let (b, s) = blockAndShard(task) else { return "no \(type(of: self).name) task \(task)" }
        let names = outputNames(of: task)
        guard outputs.count == names.count else { return "result of \(task) has \(outputs.count) payloads, expected \(names.count)" }
        let statistic = calibration.method.statistic
        for (name, bytes) in zip(names, outputs) {
            if name == CalibratePhase.hidden {
                let expected = calibration.step(block: b, shard: s).hiddenBytes
                guard bytes.count == expected else { return "hidden states of \(task) are \(bytes.count) bytes, expected \(expected)" }
            } else {
                // The statistic (or Hessian) of a group's input has as many columns as its layers.
                let isGram = name.rawValue.hasPrefix("gram:")
                let group = String(name.rawValue.drop { $0 != ":" }.dropFirst())
                let columns = job.checkpoint.info(group)?.cols ?? -1
                guard let statistic = isGram ? SparseGPT.self : statistic, statistic.columns(ofSerialized: bytes) == columns else {
                    return "\(name) of \(task) is not a valid statistic of \(columns) columns"
                }
                let step = calibration.step(block: b, shard: s)
                if let problem = statistic.problem(inSerialized: bytes, samples: step.samples, tokens: step.tokens) {
                    return "\(name) of \(task): \(problem)"
                }
            }
        }
        return nil
    }

    public class func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .calibrate(let c) = work else { return nil }
        let config = try LlamaConfig.parse(bytes: [UInt8](c.configJson), file: "calibrate task config")
        guard let method = JobSpec.Method(rawValue: c.method), let mode = JobSpec.Calibration.Mode(rawValue: c.mode) else {
            throw PruningError("calibrate task: unknown method \(c.method) or mode \(c.mode)")
        }
        let store = WeightStore(reader: TaskTensorReader(c.weights, inputs: inputs))
        // Block b−1 as pruned (sequential mode): its masks, or SparseGPT's new weights.
        try store.override(pruned: c.pruned, inputs: inputs)
        let tokens = Int(c.tokens), samples = Int(c.samples)
        let input: CalibrationWork.Input
        if c.block == 0 {
            guard tokens > 0, c.tokenIds.count == tokens * samples else { throw PruningError("calibrate task: \(c.tokenIds.count) token ids for \(samples) × \(tokens)") }
            input = .tokens((0..<samples).map { Array(c.tokenIds[($0 * tokens)..<(($0 + 1) * tokens)]) })
        } else {
            input = .hidden(try FloatPayload.floats(try inputs.artifact(c.hidden), what: "hidden states"))
        }
        var step = CalibrationWork.Step(config: config, method: method, mode: mode, block: Int(c.block), tokens: tokens, samples: samples,
                                        groups: c.groups.map(\.names), emitHidden: c.emitHidden)
        step.gram = c.gram
        let out = try CalibrationWork.calibrate(step, input: input, store: store)
        var outputs = TaskOutputs()
        if c.emitHidden {
            guard let states = out.hidden else { throw PruningError("calibrate block \(c.block): no hidden states to emit") }
            outputs.payloads.append((hidden.rawValue, FloatPayload.encode(states)))
        }
        outputs.payloads += out.statistics.map { (statistics($0.key).rawValue, $0.bytes) }
        outputs.payloads += out.grams.map { (gram($0.key).rawValue, $0.bytes) }
        return outputs
    }
}

extension WeightStore {
    /// Replaces the layers of `pruned` by their pruned weights: the dense weights masked,
    /// or the updated weights a task gave (zero where pruned).
    func override(pruned: [Prune_V1_PrunedLinear], inputs: TaskInputs) throws {
        for p in pruned {
            guard let shape = reader.shape(of: p.name), shape.count == 2 else { throw PruningError("pruned layer \(p.name) is not in the task") }
            let mask = try Mask(rows: shape[0], cols: shape[1], bits: try inputs.artifact(p.mask))
            let updated = p.hasWeights ? try FloatPayload.floats(try inputs.artifact(p.weights), what: "weights of \(p.name)") : nil
            let dense = updated == nil ? try load(p.name, shape: shape) : []
            override(p.name, with: PrunedLayer(mask: mask, updated: updated, error: nil).values(dense: dense))
        }
    }
}

/// The tensors a task names, read through the task's inputs (a worker's local copy of the
/// checkpoint, chunks pulled from the coordinator, or the coordinator's disk): what the
/// model code sees as its weights.
final class TaskTensorReader: TensorReader {
    private let refs: [String: Prune_V1_TensorRef]
    private let inputs: TaskInputs

    init(_ refs: [Prune_V1_TensorRef], inputs: TaskInputs) {
        self.refs = Dictionary(refs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.inputs = inputs
    }

    var location: String { "the task's tensors" }

    func shape(of name: String) -> [Int]? { refs[name].map { $0.shape.map { Int(clamping: $0) } } }

    private func ref(_ name: String) throws -> (Prune_V1_TensorRef, DType, [Int]) {
        guard let ref = refs[name] else { throw PruningError("tensor '\(name)' is not in the task") }
        guard let dtype = DType(rawValue: ref.dtype), dtype.isFloat else { throw PruningError("tensor '\(name)': dtype \(ref.dtype) is not a float type") }
        let shape = ref.shape.map { Int(clamping: $0) }
        guard let count = MatrixView.elementCount(shape), count * dtype.size == Int(clamping: ref.byteCount) else {
            throw PruningError("tensor '\(name)': shape \(shape) does not match \(ref.byteCount) bytes")
        }
        return (ref, dtype, shape)
    }

    func floats(_ name: String) throws -> [Float] {
        let (ref, dtype, shape) = try ref(name)
        let count = shape.reduce(1, *)
        let raw = try inputs.tensorBytes(ref, 0..<(count * dtype.size))
        return raw.withUnsafeBytes { FloatConversion.toFloat($0, dtype: dtype, count: count) }
    }

    /// A matrix's Wanda scores |W_ij|·‖X_j‖ in F32, as Wanda prunes with them, from its
    /// input's statistic per calibration shard (merged in the order given).
    func wandaScores(_ name: String, statistics: [Prune_V1_ArtifactRef], task: String) throws -> (scores: [Float], rows: Int, cols: Int) {
        guard let shape = shape(of: name), shape.count == 2 else { throw PruningError("\(task) task: \(name) is not a matrix") }
        let norms = try WandaStatistics.merged(count: statistics.count, layer: name) { try inputs.artifact(statistics[$0]) }
        guard norms.columns == shape[1] else { throw PruningError("\(task) task: \(name) has \(shape[1]) columns, its statistic \(norms.columns)") }
        let weights = try floats(name)
        var out = [Float](repeating: 0, count: weights.count)
        weights.withUnsafeBufferPointer { w in
            out.withUnsafeMutableBufferPointer {
                WandaCriterion(statistics: norms).scores(WeightBlock(name: name, values: w, rows: shape[0], cols: shape[1]), into: $0)
            }
        }
        return (out, shape[0], shape[1])
    }

    func row(_ name: String, _ index: Int) throws -> [Float] {
        let (ref, dtype, shape) = try ref(name)
        guard shape.count == 2, index >= 0, index < shape[0] else { throw PruningError("tensor '\(name)' has no row \(index)") }
        let rowBytes = shape[1] * dtype.size
        let raw = try inputs.tensorBytes(ref, (index * rowBytes)..<((index + 1) * rowBytes))
        return raw.withUnsafeBytes { FloatConversion.toFloat($0, dtype: dtype, count: shape[1]) }
    }
}
