import Foundation
import Protocol
import Pruning
import Tensors

/// Structured pruning (`pattern: channels`, `heads` or `heads+channels`): task `units:B`
/// (`units:B:KIND` when the job removes both kinds) scores decoder block B's units of one
/// kind (MLP channels or query heads, `BlockUnits`: one group of `StructuredPlan`) from the block's weights,
/// with Wanda's input statistics of every calibration shard merged in shard order for
/// `method: wanda`, and keeps the best of every group. Its outputs are the kept units, the
/// scores and one mask per tensor that zeroes the removed units: the masks let sequential
/// calibration run block B+1 on block B as pruned (a zeroed unit computes what a removed
/// one does), and assembly (`StructuredWriter`) drops the removed rows and columns.
public final class UnitPrunePhase: Phase, RoundedPhase, PrunedTensorSource, AlwaysVerified {
    public static let name = "units"
    private let job: JobContext
    private let units: StructuredPlan
    /// The groups whose units each tensor loses rows or columns to (two for an MLP's middle weight).
    private let groupsOf: [String: [Int]]
    /// Taylor and Fisher scores: the gradient phase that accumulates them.
    private let gradients: GradientPhase?
    /// A global allocation's kept count per group, once every score task is done (the
    /// coordinator decides it from their outputs; kept here to check the cut tasks' results).
    private var allocated: [Int]?
    private let allocatedLock = NSLock()

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard let units = job.plan.units else { return nil }
        self.job = job
        self.units = units
        gradients = earlier.compactMap { $0 as? GradientPhase }.first
        var groupsOf: [String: [Int]] = [:]
        for (g, group) in units.groups.enumerated() { for s in group.slices { groupsOf[s.tensor, default: []].append(g) } }
        self.groupsOf = groupsOf
    }

    /// The task of group g: `units:B`, or `units:B:KIND` when the job removes two kinds.
    public static func id(group g: Int, of units: StructuredPlan) -> TaskID {
        units.kinds.count == 1 ? TaskID(name, "\(units.blockOf[g])") : TaskID(name, "\(units.blockOf[g]):\(units.groups[g].kind.rawValue)")
    }

    /// A global allocation's scoring task of group g: `units:score:B` (`units:score:B:KIND`).
    public static func scoreID(group g: Int, of units: StructuredPlan) -> TaskID {
        TaskID(name, "score:" + id(group: g, of: units).key)
    }

    /// The tasks of decoder block b's groups.
    public static func ids(block b: Int, of units: StructuredPlan) -> [TaskID] { units.groups(ofBlock: b).map { id(group: $0, of: units) } }

    /// The task whose group cuts `tensor` (a Llama tensor belongs to one group).
    public static func id(cutting tensor: String, of units: StructuredPlan) throws -> TaskID {
        guard let cuts = units.slicedTensors[tensor], cuts.count == 1 else { throw PruningError("\(tensor) is not cut by one group of units") }
        return id(group: cuts[0].group, of: units)
    }
    /// The kept unit indices (uint32, ascending).
    public static let kept = OutputName("units")
    /// One F64 score per unit.
    public static let scores = OutputName("scores")
    /// The mask of one of the block's tensors.
    public static func mask(_ tensor: String) -> OutputName { OutputName("mask:\(tensor)") }
    /// `reconstruct: layer`: a column slice's re-fit weights (F32, the whole tensor).
    public static func weights(_ tensor: String) -> OutputName { OutputName("weights:\(tensor)") }
    /// `reconstruct: layer`: its error before and after the re-fit and the relative residual.
    public static func reconstructed(_ tensor: String) -> OutputName { OutputName("reconstructed:\(tensor)") }
    /// `method: flap`: a column slice's compensation bias (F32, one per row).
    public static func compensation(_ tensor: String) -> OutputName { OutputName("bias:\(tensor)") }

    /// Whether the job re-fits the layers that read the removed units.
    private var refits: Bool { job.spec.reconstruct != nil }

    /// The slices a re-fit changes: those whose columns read the units (down, o).
    private func refitSlices(_ block: BlockUnits) -> [UnitSlice] {
        refits ? block.slices.filter { $0.axis == .cols } : []
    }

    /// The slices FLAP compensates with a bias: the same column slices.
    private func compensatedSlices(_ block: BlockUnits) -> [UnitSlice] {
        units.score == .flap ? block.slices.filter { $0.axis == .cols } : []
    }

    /// The group of a task and whether it is a global allocation's scoring task.
    private func task(_ task: TaskID) -> (group: Int, scoring: Bool)? {
        guard task.key.hasPrefix("score:") else { return group(of: task).map { ($0, false) } }
        guard units.global != nil else { return nil }
        return group(of: TaskID(task.phase, String(task.key.dropFirst("score:".count)))).map { ($0, true) }
    }

    private func group(of task: TaskID) -> Int? {
        guard task.phase == UnitPrunePhase.name else { return nil }
        let parts = task.key.split(separator: ":", omittingEmptySubsequences: false)
        guard let b = Int(parts[0]), parts.count == (units.kinds.count == 1 ? 1 : 2) else { return nil }
        return units.groups(ofBlock: b).first { parts.count == 1 || units.groups[$0].kind.rawValue == parts[1] }
    }

    /// After the gradient tasks when the score reads gradients, and after the block's
    /// calibration (every shard) when the score or the re-fit reads its inputs.
    /// With a global allocation, every group is first scored (`units:score:…`, after the
    /// same inputs) and each cut waits for all the scores (calibration is then dense).
    public var tasks: [PhaseTask] {
        let inputs = units.groups.indices.map { g -> [TaskID] in
            let b = units.blockOf[g]
            let calibrate = job.calibration.map { c in (0..<c.shardCount).map { CalibratePhase.id(block: b, shard: $0) } } ?? []
            guard let gradients else { return calibrate }
            return gradients.gradientTasks + (refits ? calibrate : [])
        }
        guard units.global != nil else { return units.groups.indices.map { PhaseTask(id($0), after: inputs[$0]) } }
        let scoring = units.groups.indices.map { UnitPrunePhase.scoreID(group: $0, of: units) }
        return zip(scoring, inputs).map { PhaseTask($0, after: $1) }
            + units.groups.indices.map { g in PhaseTask(id(g), after: scoring + inputs[g]) }
    }

    public func round(of task: TaskID) -> Int { self.task(task).map { units.blockOf[$0.group] } ?? 0 }

    /// A global allocation's scores decide every block's width: with `verify:`, each
    /// scoring task is recomputed.
    public func alwaysVerified(_ task: TaskID) -> Bool { self.task(task)?.scoring == true }

    /// A global allocation's kept count per group, from every scoring task's standardized
    /// scores (`UnitAllocation`); nil for a uniform plan.
    public func allocation(outputs: OutputStore) throws -> [Int]? {
        guard let global = units.global else { return nil }
        allocatedLock.lock()
        defer { allocatedLock.unlock() }
        if let allocated { return allocated }
        let groups = try units.groups.indices.map { g -> UnitAllocation.Group in
            let block = units.groups[g], task = UnitPrunePhase.scoreID(group: g, of: units)
            let scores = try FloatPayload.doubles(try outputs.bytes(UnitPrunePhase.scores, of: task), what: "scores of \(task)")
            return UnitAllocation.Group(count: block.count, groups: block.groups, unitParameters: units.unitParameters(block.kind), scores: scores)
        }
        let removed = try UnitAllocation.removed(groups, target: units.sparsity, min: global.lowerBound, max: global.upperBound)
        let kept = zip(units.groups, removed).map { $0.count - $1 }
        allocated = kept
        return kept
    }

    /// The allocation if it is known yet (a cut task's result is checked against it).
    private var knownAllocation: [Int]? {
        allocatedLock.lock()
        defer { allocatedLock.unlock() }
        return allocated
    }

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        guard let (g, scoring) = self.task(task) else { throw PruningError("no units task \(task)") }
        let block = units.groups[g], b = units.blockOf[g]
        var u = Prune_V1_UnitTask()
        u.kind = block.kind.rawValue
        u.score = units.score.rawValue
        u.count = UInt32(block.count)
        u.width = UInt32(block.width)
        u.groups = UInt32(block.groups)
        u.sparsity = units.sparsity(ofGroup: g)
        u.slices = try block.slices.map { slice in
            guard let info = job.checkpoint.info(slice.tensor) else { throw PruningError("units task \(task): no tensor \(slice.tensor)") }
            var s = Prune_V1_UnitSliceRef()
            s.tensor = job.tensorRef(info)
            s.axis = slice.axis.rawValue
            if let gradients {
                s.gradients = try gradients.gradientRefs(of: slice.tensor, outputs: outputs)
            }
            if let calibration = job.calibration {
                let group = calibration.statisticsKey(for: slice.tensor, block: b)
                // Wanda reads every slice's input norms; FLAP the inputs of the slices reading the units.
                if units.score == .wanda || (units.score == .flap && slice.axis == .cols) {
                    s.statistics = try (0..<calibration.shardCount).map {
                        try outputs.ref(CalibratePhase.statistics(group), of: CalibratePhase.id(block: b, shard: $0))
                    }
                }
                // Any score's re-fit reads the Hessian of the input of the slice reading the units.
                if refits, slice.axis == .cols {
                    s.grams = try (0..<calibration.shardCount).map {
                        try outputs.ref(CalibratePhase.gram(group), of: CalibratePhase.id(block: b, shard: $0))
                    }
                }
            }
            return s
        }
        if scoring {
            u.scoresOnly = true
            u.standardize = units.standardization.rawValue
        } else {
            if let reconstruct = job.spec.reconstruct { u.reconstructDamp = reconstruct.damp }
            if let allocated = try allocation(outputs: outputs) { u.keep = UInt32(allocated[g]) }
        }
        return .units(u)
    }

    public func outputNames(of task: TaskID) -> [OutputName] {
        guard let (g, scoring) = self.task(task) else { return [] }
        if scoring { return [UnitPrunePhase.scores] }
        let block = units.groups[g]
        return [UnitPrunePhase.kept, UnitPrunePhase.scores] + block.slices.map { UnitPrunePhase.mask($0.tensor) }
            + refitSlices(block).flatMap { [UnitPrunePhase.weights($0.tensor), UnitPrunePhase.reconstructed($0.tensor)] }
            + compensatedSlices(block).map { UnitPrunePhase.compensation($0.tensor) }
    }

    /// The kept units must be the right number per group, ascending and in range, the
    /// scores finite, and every mask the one those units imply: a worker cannot hand in
    /// masks that disagree with the units the smaller model is written from.
    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        guard let (g, scoring) = self.task(task) else { return "no units task \(task)" }
        let block = units.groups[g]
        let names = outputNames(of: task)
        guard outputs.count == names.count else { return "result of \(task) has \(outputs.count) payloads, expected \(names.count)" }
        if scoring {
            guard let scores = try? FloatPayload.doubles(outputs[0], what: "scores"), scores.count == block.count, scores.allSatisfy(\.isFinite) else {
                return "scores of \(task) are not \(block.count) finite F64"
            }
            return nil
        }
        guard let kept = try? UnitPrunePhase.indices(outputs[0]) else { return "units of \(task) are not uint32 values" }
        // A global allocation's count is known once the scores are in (it was in the task);
        // `keptUnits` checks it again from the outputs before anything is written.
        let count = units.global == nil ? units.keptCount(ofGroup: g) : knownAllocation?[g]
        if let problem = UnitPrunePhase.problem(kept: kept, block: block, count: count) { return "units of \(task): \(problem)" }
        guard let scores = try? FloatPayload.doubles(outputs[1], what: "scores"), scores.count == block.count, scores.allSatisfy(\.isFinite) else {
            return "scores of \(task) are not \(block.count) finite F64"
        }
        guard (try? block.kept(scores: scores, count: kept.count)) == kept else { return "units of \(task) are not the best of its scores" }
        for (slice, bytes) in zip(block.slices, outputs[2...]) {
            guard let info = job.checkpoint.info(slice.tensor) else { return "no tensor \(slice.tensor)" }
            guard bytes == block.mask(slice, rows: info.rows, cols: info.cols, kept: kept).bits else {
                return "mask of \(slice.tensor) in \(task) is not the one its kept units imply"
            }
        }
        let payload = { (name: OutputName) in outputs[names.firstIndex(of: name)!] }
        for slice in refitSlices(block) {
            guard let info = job.checkpoint.info(slice.tensor) else { return "no tensor \(slice.tensor)" }
            let keep = Set(block.keptLines(kept))
            guard let values = try? FloatPayload.floats(payload(UnitPrunePhase.weights(slice.tensor)), what: "weights"), values.count == info.elementCount else {
                return "re-fit weights of \(slice.tensor) in \(task) have the wrong size"
            }
            for (i, v) in values.enumerated() where !v.isFinite || (v != 0 && !keep.contains(i % info.cols)) {
                return v.isFinite ? "re-fit weights of \(slice.tensor) in \(task) are not zero in the removed columns" : "re-fit weights of \(slice.tensor) in \(task) are not finite"
            }
            guard let errors = try? FloatPayload.doubles(payload(UnitPrunePhase.reconstructed(slice.tensor)), what: "errors"), errors.count == 3,
                  errors.allSatisfy({ $0.isFinite && $0 >= 0 }), errors[1] <= errors[0] * (1 + 1e-9) else {
                return "re-fit errors of \(slice.tensor) in \(task) are not three finite F64 ≥ 0 with the error not rising"
            }
        }
        for slice in compensatedSlices(block) {
            guard let info = job.checkpoint.info(slice.tensor) else { return "no tensor \(slice.tensor)" }
            guard let bias = try? FloatPayload.floats(payload(UnitPrunePhase.compensation(slice.tensor)), what: "bias"), bias.count == info.rows,
                  bias.allSatisfy(\.isFinite) else {
                return "compensation bias of \(slice.tensor) in \(task) is not \(info.rows) finite F32"
            }
        }
        return nil
    }

    /// Why `kept` cannot be a block's kept units, `count` of them (nil: any number that
    /// keeps the same in each key/value group, at least one); nil when it can.
    static func problem(kept: [Int], block: BlockUnits, count: Int?) -> String? {
        if let count, kept.count != count { return "\(kept.count) kept, expected \(count)" }
        guard !kept.isEmpty, kept.count % block.groups == 0 else { return "\(kept.count) kept is not a positive multiple of \(block.groups) groups" }
        guard zip(kept, kept.dropFirst()).allSatisfy({ $0 < $1 }), kept.allSatisfy({ (0..<block.count).contains($0) }) else {
            return "not ascending indices below \(block.count)"
        }
        let perGroup = block.count / block.groups, keep = kept.count / block.groups
        for g in 0..<block.groups where kept.filter({ $0 / perGroup == g }).count != keep {
            return "group \(g) does not keep \(keep) units"
        }
        return nil
    }

    static func indices(_ bytes: [UInt8]) throws -> [Int] {
        guard bytes.count % 4 == 0 else { throw PruningError("\(bytes.count) bytes is not a whole number of uint32") }
        return bytes.withUnsafeBytes { raw in (0..<(bytes.count / 4)).map { Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) } }
    }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .units(let u) = work else { return nil }
        guard let kind = UnitKind(rawValue: u.kind), let score = UnitScore(rawValue: u.score) else {
            throw PruningError("units task: unknown kind '\(u.kind)' or score '\(u.score)'")
        }
        let count = Int(u.count), width = Int(u.width), groups = Int(u.groups)
        guard count > 0, width > 0, groups > 0, count % groups == 0, u.slices.count <= 8, u.sparsity >= 0, u.sparsity < 1 else {
            throw PruningError("units task: \(count) units of width \(width) in \(groups) groups at sparsity \(u.sparsity) is not a block's units")
        }
        let slices = try u.slices.map { s -> UnitSlice in
            guard let axis = UnitSlice.Axis(rawValue: s.axis) else { throw PruningError("units task: unknown axis '\(s.axis)'") }
            return UnitSlice(tensor: s.tensor.name, axis: axis)
        }
        let block = BlockUnits(kind: kind, count: count, width: width, groups: groups, slices: slices)
        guard u.keep <= count else { throw PruningError("units task: keep \(u.keep) of \(count) units") }
        let reader = TaskTensorReader(u.slices.map(\.tensor), inputs: inputs)
        var weights: [String: (values: [Float], rows: Int, cols: Int)] = [:]
        var inputNorms: [String: [Double]] = [:]
        var gradientSums: [String: [Float]] = [:]
        var fluctuation: [String: FluctuationStatistics] = [:]
        for s in u.slices {
            let name = s.tensor.name
            guard let shape = reader.shape(of: name), shape.count == 2 else { throw PruningError("units task: \(name) is not a matrix") }
            weights[name] = (try reader.floats(name), shape[0], shape[1])
            if score == .wanda {
                inputNorms[name] = try WandaStatistics.merged(count: s.statistics.count, layer: name) { try inputs.artifact(s.statistics[$0]) }.norms
            }
            if score == .flap && !s.statistics.isEmpty {
                let merged = try FluctuationStatistics.merged(count: s.statistics.count, layer: name) { try inputs.artifact(s.statistics[$0]) }
                guard merged.columns == shape[1] else { throw PruningError("units task: \(name): statistics of \(merged.columns) columns, weights \(shape[1])") }
                fluctuation[name] = merged
            }
            if score.usesGradients {
                guard !s.gradients.isEmpty else { throw PruningError("units task: \(name) has no gradient shards") }
                var sum = [Float](repeating: 0, count: shape[0] * shape[1])
                // Summed in shard order: the same bytes for any worker count.
                for ref in s.gradients {
                    let part = try FloatPayload.floats(try inputs.artifact(ref), what: "gradient of \(name)")
                    guard part.count == sum.count else { throw PruningError("units task: a gradient of \(name) has \(part.count) values, expected \(sum.count)") }
                    for k in 0..<sum.count { sum[k] += part[k] }
                }
                gradientSums[name] = sum
            }
        }
        if u.scoresOnly {
            guard let standardization = u.standardize.isEmpty ? .zscore : Standardization(rawValue: u.standardize) else {
                throw PruningError("units task: unknown standardization '\(u.standardize)'")
            }
            let standardized = try block.standardizedScores(score, weights: weights, inputNorms: inputNorms, gradients: gradientSums,
                                                            fluctuation: fluctuation.mapValues(\.fluctuation), standardization: standardization)
            return TaskOutputs(payloads: [(UnitPrunePhase.scores.rawValue, standardized.flatMap(FloatPayload.encode))], kept: 0)
        }
        let scores = try block.scores(score, weights: weights, inputNorms: inputNorms, gradients: gradientSums,
                                      fluctuation: fluctuation.mapValues(\.fluctuation))
        let kept = u.keep > 0 ? try block.kept(scores: scores, count: Int(u.keep)) : try block.kept(scores: scores, sparsity: u.sparsity)
        let masks = slices.map { slice in
            let w = weights[slice.tensor]!
            return (mask(slice.tensor).rawValue, block.mask(slice, rows: w.rows, cols: w.cols, kept: kept).bits)
        }
        // FLAP: the removed units' mean output, per row of each slice reading them.
        var compensations: [String: [Float]] = [:]
        for slice in slices where score == .flap && slice.axis == .cols {
            guard let statistics = fluctuation[slice.tensor] else { throw PruningError("units task: \(slice.tensor): no fluctuation statistics") }
            let w = weights[slice.tensor]!
            compensations[slice.tensor] = try block.compensation(slice, weights: w.values, rows: w.rows, cols: w.cols, mean: statistics.mean, kept: kept)
        }
        // In `outputNames` order: each re-fit slice's weights, then its errors.
        var refits: [(name: String, bytes: [UInt8])] = []
        for (s, slice) in zip(u.slices, slices) where u.reconstructDamp > 0 && slice.axis == .cols {
            guard !s.grams.isEmpty else { throw PruningError("units task: \(slice.tensor): no Hessians to re-fit with") }
            let w = weights[slice.tensor]!
            let hessian = try SparseGPT.merged(count: s.grams.count, layer: slice.tensor) { try inputs.artifact(s.grams[$0]) }
            let mask = block.mask(slice, rows: w.rows, cols: w.cols, kept: kept)
            let fit: LayerReconstruction.Result
            if let bias = compensations[slice.tensor], let statistics = fluctuation[slice.tensor] {
                // FLAP's layer gains a bias: weights and bias re-fit together, from FLAP's result.
                let masked = (0..<w.values.count).map { mask[$0 / w.cols, $0 % w.cols] ? w.values[$0] : 0 }
                let affine = try LayerReconstruction.refitAffine(dense: w.values, start: (masked, bias), mask: mask, hessian: hessian,
                                                                 mean: statistics.mean, tokens: statistics.tokens, damp: u.reconstructDamp, layer: slice.tensor)
                fit = affine.result
                compensations[slice.tensor] = affine.bias
            } else {
                fit = try LayerReconstruction.refit(dense: w.values, mask: mask, hessian: hessian, damp: u.reconstructDamp, layer: slice.tensor)
            }
            refits.append((UnitPrunePhase.weights(slice.tensor).rawValue, FloatPayload.encode(fit.weights)))
            refits.append((UnitPrunePhase.reconstructed(slice.tensor).rawValue, [fit.errorBefore, fit.errorAfter, fit.residual].flatMap(FloatPayload.encode)))
        }
        var biases: [(name: String, bytes: [UInt8])] = []
        for slice in slices {
            guard let bias = compensations[slice.tensor] else { continue }
            guard bias.allSatisfy(\.isFinite) else { throw PruningError("units task: \(slice.tensor): the compensation bias is not finite") }
            biases.append((UnitPrunePhase.compensation(slice.tensor).rawValue, FloatPayload.encode(bias)))
        }
        let keptBytes = kept.flatMap { i in withUnsafeBytes(of: UInt32(i).littleEndian) { [UInt8]($0) } }
        return TaskOutputs(payloads: [(UnitPrunePhase.kept.rawValue, keptBytes), (UnitPrunePhase.scores.rawValue, scores.flatMap(FloatPayload.encode))] + masks + refits + biases,
                           kept: UInt64(kept.count))
    }

    /// The units group g keeps, from its task's output.
    public func keptUnits(group g: Int, outputs: OutputStore) throws -> [Int] {
        let kept = try UnitPrunePhase.indices(try outputs.bytes(UnitPrunePhase.kept, of: id(g)))
        let count = try allocation(outputs: outputs)?[g] ?? units.keptCount(ofGroup: g)
        let block = units.groups[g]
        // The cut's own scores standardize to the ones its group was ranked by (the same
        // computation on the same inputs; FLAP's heads standardize columns, not heads).
        if units.global != nil, !(units.score == .flap && block.kind == .heads) {
            let scores = try FloatPayload.doubles(try outputs.bytes(UnitPrunePhase.scores, of: id(g)), what: "scores of \(id(g))")
            let ranked = try FloatPayload.doubles(try outputs.bytes(UnitPrunePhase.scores, of: UnitPrunePhase.scoreID(group: g, of: units)), what: "standardized scores")
            guard BlockUnits.standardized(scores, units.standardization) == ranked else {
                throw PruningError("scores of \(id(g)) do not standardize to those of \(UnitPrunePhase.scoreID(group: g, of: units).key) (a worker's result is wrong)")
            }
        }
        if let problem = UnitPrunePhase.problem(kept: kept, block: block, count: count) {
            throw PruningError("units of \(id(g)): \(problem)")
        }
        return kept
    }

    private func id(_ g: Int) -> TaskID { UnitPrunePhase.id(group: g, of: units) }

    // MARK: PrunedTensorSource

    public var prunedTensors: Set<String> { Set(groupsOf.keys) }

    public func producers(of tensor: String) -> [TaskID] { (groupsOf[tensor] ?? []).map(id) }

    /// The one group a tensor's units belong to (every Llama tensor; not an MLP's middle weight).
    private func onlyGroup(of tensor: String) -> Int? {
        guard let groups = groupsOf[tensor], groups.count == 1 else { return nil }
        return groups[0]
    }

    public func maskParts(of tensor: String, outputs: OutputStore) throws -> (masks: [Prune_V1_ArtifactRef], updated: Prune_V1_ArtifactRef?) {
        guard let g = onlyGroup(of: tensor) else { throw PruningError("\(tensor) has no single mask in this job") }
        return ([try outputs.ref(UnitPrunePhase.mask(tensor), of: id(g))], nil)
    }

    public func updatesValues(of tensor: String) -> Bool {
        refits && onlyGroup(of: tensor).map { g in refitSlices(units.groups[g]).contains { $0.tensor == tensor } } == true
    }

    public func updatedValues(of tensor: String, outputs: OutputStore) throws -> [Float]? {
        guard updatesValues(of: tensor), let g = onlyGroup(of: tensor) else { return nil }
        return try FloatPayload.floats(try outputs.bytes(UnitPrunePhase.weights(tensor), of: id(g)), what: "re-fit weights of \(tensor)")
    }

    /// FLAP's compensation bias of a column slice (nil for other slices and methods).
    public func compensation(of tensor: String, outputs: OutputStore) throws -> [Float]? {
        guard units.score == .flap, let g = onlyGroup(of: tensor), compensatedSlices(units.groups[g]).contains(where: { $0.tensor == tensor }) else { return nil }
        return try FloatPayload.floats(try outputs.bytes(UnitPrunePhase.compensation(tensor), of: id(g)), what: "compensation bias of \(tensor)")
    }

    /// The re-fit's error before and after (and residual) of a column slice.
    public func refitErrors(of tensor: String, outputs: OutputStore) throws -> [Double]? {
        guard updatesValues(of: tensor), let g = onlyGroup(of: tensor) else { return nil }
        let errors = try FloatPayload.doubles(try outputs.bytes(UnitPrunePhase.reconstructed(tensor), of: id(g)), what: "re-fit errors of \(tensor)")
        guard errors.count == 3 else { throw PruningError("re-fit errors of \(tensor) are not 3 values") }
        return errors
    }

    /// A re-fit tensor's weights as an artifact reference (sequential calibration runs the
    /// next block on them).
    public static func refitWeights(of tensor: String, units: StructuredPlan, outputs: OutputStore) throws -> Prune_V1_ArtifactRef {
        try outputs.ref(UnitPrunePhase.weights(tensor), of: try id(cutting: tensor, of: units))
    }

    /// The tensor's mask: every group's cut of it, joined (an MLP's middle weight loses
    /// rows to one hidden layer and columns to the one before).
    public func mask(of tensor: String, outputs: OutputStore) throws -> Mask {
        guard let groups = groupsOf[tensor], let info = job.checkpoint.info(tensor) else { throw PruningError("\(tensor) is not pruned by this job") }
        var joined: Mask?
        for g in groups {
            let m = try Mask(rows: info.rows, cols: info.cols, bits: try outputs.bytes(UnitPrunePhase.mask(tensor), of: id(g)))
            joined = joined.map { j in Mask(rows: info.rows, cols: info.cols) { r, row in
                for i in row.indices { row[i] = j.bits[r * j.bytesPerRow + i] & m.bits[r * m.bytesPerRow + i] }
            } } ?? m
        }
        return joined!
    }
}
