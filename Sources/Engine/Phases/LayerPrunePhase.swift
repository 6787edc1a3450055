import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// The pruning step of a Wanda or SparseGPT job: task `prune:NAME` merges the tensor's
/// group statistics of every shard of its block in shard order and prunes the layer with
/// the method's statistic. Its outputs (the mask; SparseGPT's updated weights and
/// reconstruction error) stay until assembly, and in sequential mode the next block's
/// calibration reads them.
public final class LayerPrunePhase: Phase, RoundedPhase, PrunedTensorSource, ManifestContributor {
    public static let name = "prune"
    let job: JobContext
    let calibration: CalibrationPlan
    private let blockOf: [String: Int]
    /// Where each layer's sparsity comes from when it is not the job's target.
    private let levels: (any LevelSource)?

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard let calibration = job.calibration, calibration.method.statistic != nil, job.plan.units == nil else { return nil }
        self.job = job
        self.calibration = calibration
        levels = earlier.compactMap { $0 as? LevelSource }.first
        var blockOf: [String: Int] = [:]
        for b in 0..<calibration.blocks { for name in calibration.targets(block: b) { blockOf[name] = b } }
        self.blockOf = blockOf
    }

    public static func id(tensor: String) -> TaskID { TaskID(name, tensor) }

    /// SparseGPT's updated weights of the layer (F32).
    public static let weights = OutputName("weights")
    /// SparseGPT's ‖WX − ŴX‖² on the calibration inputs (one F64).
    public static let error = OutputName("error")
    /// `refine:`: ‖WX − ŴX‖² before and after the swaps (two F64).
    public static let refined = OutputName("refined")
    /// `reconstruct:`: ‖WX − ŴX‖² before and after the re-fit, and the re-fit's relative
    /// residual (three F64; `LayerReconstruction.Result`).
    public static let reconstructed = OutputName("reconstructed")

    /// Per block, its layers longest first (`CalibrationPlan`'s order): block b+1's
    /// calibration waits for every prune of block b, so the longest must not start last.
    public var tasks: [PhaseTask] {
        calibration.pruneOrder.enumerated().flatMap { b, names in
            names.map { name in
                PhaseTask(LayerPrunePhase.id(tensor: name),
                          after: (0..<calibration.shardCount).map { CalibratePhase.id(block: b, shard: $0) } + (levels.map { [$0.levelsTask] } ?? []))
            }
        }
    }

    public func round(of task: TaskID) -> Int { blockOf[task.key] ?? 0 }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let b = blockOf[task.key], let info = job.checkpoint.info(task.key) else { throw PruningError("no prune task \(task)") }
        let group = calibration.statisticsKey(for: task.key, block: b)
        var p = Prune_V1_LayerPruneTask()
        p.tensor = job.tensorRef(info)
        p.method = job.spec.method.rawValue
        p.pattern = calibration.pattern.description
        p.sparsity = try levels?.level(of: task.key, outputs: outputs) ?? calibration.sparsity
        p.blockSize = UInt32(calibration.sparseGPT.blockSize)
        p.damp = calibration.sparseGPT.damp
        p.statistics = try (0..<calibration.shardCount).map {
            try outputs.ref(CalibratePhase.statistics(group), of: CalibratePhase.id(block: b, shard: $0))
        }
        if job.spec.refine != nil || job.spec.reconstruct != nil {
            // SparseGPT's statistic is the Hessian; Wanda's calibration gathered it besides.
            p.grams = job.spec.method == .sparsegpt ? p.statistics
                : try (0..<calibration.shardCount).map { try outputs.ref(CalibratePhase.gram(group), of: CalibratePhase.id(block: b, shard: $0)) }
        }
        if let refine = job.spec.refine { p.refineSwaps = UInt32(refine.swaps) }
        if let reconstruct = job.spec.reconstruct { p.reconstructDamp = reconstruct.damp }
        return .layerPrune(p)
    }

    private var updatesWeights: Bool { job.spec.updatesKeptWeights }

    /// The mask; the updated weights when the task changes them; SparseGPT's own error
    /// unless a re-fit follows; the errors of the swaps and of the re-fit when asked.
    public func outputNames(of task: TaskID) -> [OutputName] {
        [.mask] + (updatesWeights ? [LayerPrunePhase.weights] : [])
            + (job.spec.method == .sparsegpt && job.spec.reconstruct == nil ? [LayerPrunePhase.error] : [])
            + (job.spec.refine != nil ? [LayerPrunePhase.refined] : [])
            + (job.spec.reconstruct != nil ? [LayerPrunePhase.reconstructed] : [])
    }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let info = job.checkpoint.info(task.key) else { return "no prune task \(task)" }
        let names = outputNames(of: task)
        guard outputs.count == names.count else { return "result of \(task) has \(outputs.count) payloads, expected \(names.count)" }
        guard let mask = try? Mask(rows: info.rows, cols: info.cols, bits: outputs[0]) else { return "mask of \(task) has the wrong size" }
        let payload = { (name: OutputName) in names.firstIndex(of: name).map { outputs[$0] } }
        if let weights = payload(LayerPrunePhase.weights) {
            guard let values = try? FloatPayload.floats(weights, what: "weights"), values.count == info.elementCount else { return "weights of \(task) have the wrong size" }
            // Pruned weights are exactly zero, and nothing written is NaN or infinite.
            for (i, v) in values.enumerated() where !v.isFinite || (v != 0 && !mask[i / info.cols, i % info.cols]) {
                return v.isFinite ? "weights of \(task) are not zero where the mask prunes" : "weights of \(task) are not finite"
            }
        }
        if let error = payload(LayerPrunePhase.error) {
            guard error.count == 8 else { return "error of \(task) is not one F64" }
        }
        for (name, count) in [(LayerPrunePhase.refined, 2), (LayerPrunePhase.reconstructed, 3)] {
            guard let bytes = payload(name) else { continue }
            guard let values = try? FloatPayload.doubles(bytes, what: name.rawValue), values.count == count,
                  values.allSatisfy({ $0.isFinite && $0 >= 0 }) else { return "\(name.rawValue) errors of \(task) are not \(count) finite F64 ≥ 0" }
            guard values[1] <= values[0] * (1 + 1e-9) else { return "\(name.rawValue) error of \(task) rose from \(values[0]) to \(values[1])" }
        }
        return nil
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .layerPrune(let p) = work else { return nil }
        guard let method = JobSpec.Method(rawValue: p.method) else { throw PruningError("prune task: unknown method \(p.method)") }
        let name = p.tensor.name
        let store = WeightStore(reader: TaskTensorReader([p.tensor], inputs: inputs))
        guard let shape = store.reader.shape(of: name), shape.count == 2 else { throw PruningError("prune task: \(name) is not a matrix") }
        let weights = try store.load(name, shape: shape)
        let step = CalibrationWork.PruneStep(method: method, tensor: name, rows: shape[0], cols: shape[1],
                                             pattern: try SparsityPattern(parsing: p.pattern), sparsity: p.sparsity,
                                             blockSize: Int(p.blockSize), damp: p.damp)
        let pruned = try CalibrationWork.prune(step, weights: weights, statisticsCount: p.statistics.count) {
            try inputs.artifact(p.statistics[$0])
        }
        var mask = pruned.mask
        var refinedErrors: [UInt8]? = nil
        let refits = p.reconstructDamp > 0
        guard p.refineSwaps == 0 && !refits || !p.grams.isEmpty else { throw PruningError("prune task: \(name): no Hessians to refine or re-fit with") }
        let hessian = p.grams.isEmpty ? nil : try SparseGPT.merged(count: p.grams.count, layer: name) { try inputs.artifact(p.grams[$0]) }
        if p.refineSwaps > 0, let hessian {
            guard pruned.updated == nil else { throw PruningError("prune task: \(name): refinement keeps the weights; \(method.rawValue) updates them") }
            let swapped = try SwapRefinement.refine(weights: weights, mask: mask, hessian: hessian, maxSwaps: Int(p.refineSwaps),
                                                    pattern: step.pattern, layer: name)
            mask = swapped.mask
            refinedErrors = FloatPayload.encode(swapped.errorBefore) + FloatPayload.encode(swapped.errorAfter)
        }
        // In `outputNames` order: weights, SparseGPT's error, refined, reconstructed.
        var more: [(name: String, bytes: [UInt8])] = []
        if refits, let hessian {
            let fit = try LayerReconstruction.refit(dense: weights, start: pruned.updated, mask: mask, hessian: hessian, damp: p.reconstructDamp, layer: name)
            more.append((LayerPrunePhase.weights.rawValue, FloatPayload.encode(fit.weights)))
            if let refinedErrors { more.append((refined.rawValue, refinedErrors)) }
            more.append((reconstructed.rawValue, [fit.errorBefore, fit.errorAfter, fit.residual].flatMap(FloatPayload.encode)))
        } else {
            if let updated = pruned.updated, let error = pruned.error {
                more = [(LayerPrunePhase.weights.rawValue, FloatPayload.encode(updated)), (LayerPrunePhase.error.rawValue, FloatPayload.encode(error))]
            }
            if let refinedErrors { more.append((refined.rawValue, refinedErrors)) }
        }
        return TaskOutputs.withMask(mask, pattern: p.pattern, more: more)
    }

    // MARK: PrunedTensorSource

    public var prunedTensors: Set<String> { Set(blockOf.keys) }

    public func producers(of tensor: String) -> [TaskID] { [LayerPrunePhase.id(tensor: tensor)] }

    public func maskParts(of tensor: String, outputs: OutputStore) throws -> (masks: [Prune_V1_ArtifactRef], updated: Prune_V1_ArtifactRef?) {
        let id = LayerPrunePhase.id(tensor: tensor)
        return ([try outputs.ref(.mask, of: id)], updatesWeights ? try outputs.ref(LayerPrunePhase.weights, of: id) : nil)
    }

    public func mask(of tensor: String, outputs: OutputStore) throws -> Mask {
        guard let info = job.checkpoint.info(tensor) else { throw PruningError("\(tensor) is not pruned by this job") }
        return try Mask(rows: info.rows, cols: info.cols, bits: try outputs.bytes(.mask, of: LayerPrunePhase.id(tensor: tensor)))
    }

    public func updatesValues(of tensor: String) -> Bool { updatesWeights }

    public func updatedValues(of tensor: String, outputs: OutputStore) throws -> [Float]? {
        guard updatesWeights else { return nil }
        return try FloatPayload.floats(try outputs.bytes(LayerPrunePhase.weights, of: LayerPrunePhase.id(tensor: tensor)), what: "weights of \(tensor)")
    }

    public func reconstructionError(of tensor: String, outputs: OutputStore) throws -> Double? {
        if job.spec.reconstruct != nil { return try errors(LayerPrunePhase.reconstructed, count: 3, of: tensor, outputs: outputs)[1] }
        if job.spec.refine != nil { return try errors(LayerPrunePhase.refined, count: 2, of: tensor, outputs: outputs)[1] }
        guard updatesWeights else { return nil }
        return try FloatPayload.double(try outputs.bytes(LayerPrunePhase.error, of: LayerPrunePhase.id(tensor: tensor)), what: "error of \(tensor)")
    }

    private func errors(_ output: OutputName, count: Int, of tensor: String, outputs: OutputStore) throws -> [Double] {
        let errors = try FloatPayload.doubles(try outputs.bytes(output, of: LayerPrunePhase.id(tensor: tensor)), what: "\(output.rawValue) errors of \(tensor)")
        guard errors.count == count else { throw PruningError("\(output.rawValue) errors of \(tensor) are not \(count) values") }
        return errors
    }

    /// Each layer's ‖WX − ŴX‖² before the swaps and the re-fit (`reconstruction_error` is
    /// after both); with both, the error after the swaps (`reconstruction_error_refined`);
    /// with a re-fit, its relative residual (`reconstruction_residual`).
    public func measures(outputs: OutputStore) throws -> [String: [String: Double]] {
        guard job.spec.refine != nil || job.spec.reconstruct != nil else { return [:] }
        var out: [String: [String: Double]] = [:]
        for name in blockOf.keys.sorted() {
            var m: [String: Double] = [:]
            let refit = job.spec.reconstruct != nil ? try errors(LayerPrunePhase.reconstructed, count: 3, of: name, outputs: outputs) : nil
            if job.spec.refine != nil {
                let swaps = try errors(LayerPrunePhase.refined, count: 2, of: name, outputs: outputs)
                m["reconstruction_error_before"] = swaps[0]
                if refit != nil { m["reconstruction_error_refined"] = swaps[1] }
            } else if let refit {
                m["reconstruction_error_before"] = refit[0]
            }
            if let refit { m["reconstruction_residual"] = refit[2] }
            out[name] = m
        }
        return out
    }
}
