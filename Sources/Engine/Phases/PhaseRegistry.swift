import Foundation
import Protocol
import Pruning
import Tensors

/// Every kind of distributed work, in one list (as swift-argument-parser lists a
/// command's subcommands). Adding a phase: its file(s), one line here, its proto message
/// in `Prune_V1_Assign.work`. Executors and workers find phases only through this list.
public enum PhaseRegistry {
    public static let all: [any Phase.Type] = [
        GradientPhase.self,
        CalibratePhase.self,
        ProfilePhase.self,
        OutlierPhase.self,
        CurvePhase.self,
        HistogramPhase.self,
        AllocationPhase.self,
        LevelDatabasePhase.self,
        EvolutionPhase.self,
        GradientScorePhase.self,
        MaskPhase.self,
        LayerPrunePhase.self,
        UnitPrunePhase.self,
        BlockRefitPhase.self,
        TrainPhase.self,
        WeightNormPhase.self,
        NoopPhase.self,
    ]

    /// The phases a job uses, in this list's order.
    public static func phases(for job: JobContext) throws -> [any Phase] {
        var phases: [any Phase] = []
        for kind in all {
            if let phase = try kind.init(job: job, earlier: phases) { phases.append(phase) }
        }
        return phases
    }

    /// Runs a task's work with the phase whose kind it is (a worker, or the coordinator
    /// checking a result itself, or the in-process executor).
    public static func run(_ work: Prune_V1_Assign.OneOf_Work?, task: String, inputs: TaskInputs) throws -> TaskOutputs {
        try Cancellation.checkpoint()
        guard let work else { throw PruningError("task \(task) names no work") }
        for phase in all {
            if let outputs = try phase.run(work, inputs: inputs) { return outputs }
        }
        throw PruningError("task \(task): no phase runs this kind of work")
    }
}

/// A job's DAG: its phases' tasks in one queue, each with its dependencies, and the phase
/// that owns each. Queue order: by `round` (a decoder block, for the calibration phases),
/// then by phase in registry order, then in each phase's own order, as far as the
/// dependencies allow (`order`): a task's dependencies always come before it.
public final class JobDAG {
    public let job: JobContext
    public let phases: [any Phase]
    public let tasks: [PhaseTask]
    private let owner: [String: Int]
    private let dependents: [TaskID: [TaskID]]
    private let index: [TaskID: Int]

    public init(job: JobContext) throws {
        self.job = job
        phases = try PhaseRegistry.phases(for: job)
        var owner: [String: Int] = [:]
        var keyed: [(round: Int, phase: Int, position: Int, task: PhaseTask)] = []
        for (p, phase) in phases.enumerated() {
            owner[type(of: phase).name] = p
            for (i, task) in phase.tasks.enumerated() { keyed.append((phase.round(of: task.id), p, i, task)) }
        }
        tasks = try JobDAG.order(keyed.sorted { ($0.round, $0.phase, $0.position) < ($1.round, $1.phase, $1.position) }.map(\.task))
        self.owner = owner
        index = Dictionary(uniqueKeysWithValues: tasks.enumerated().map { ($1.id, $0) })
        var dependents: [TaskID: [TaskID]] = [:]
        // `order` placed every dependency before its dependents (and refused the rest).
        for t in tasks {
            for d in t.dependencies { dependents[d, default: []].append(t.id) }
        }
        self.dependents = dependents
    }

    /// The tasks in `preferred` order as far as their dependencies allow: each time, the
    /// first task (in that order) whose dependencies are all placed. A task whose
    /// dependencies a later round decides (an allocation over every block) waits for them
    /// without the phases having to know each other's rounds.
    static func order(_ preferred: [PhaseTask]) throws -> [PhaseTask] {
        let rank = Dictionary(uniqueKeysWithValues: preferred.enumerated().map { ($1.id, $0) })
        var waiting = [Int](repeating: 0, count: preferred.count)
        var dependents = [[Int]](repeating: [], count: preferred.count)
        for (i, t) in preferred.enumerated() {
            for d in t.dependencies {
                guard let at = rank[d] else { throw PruningError("task \(t.id) depends on \(d), which is not in the job") }
                waiting[i] += 1
                dependents[at].append(i)
            }
        }
        var ready = MinHeap(preferred.indices.filter { waiting[$0] == 0 })
        var out: [PhaseTask] = []
        out.reserveCapacity(preferred.count)
        while let i = ready.pop() {
            out.append(preferred[i])
            for j in dependents[i] {
                waiting[j] -= 1
                if waiting[j] == 0 { ready.push(j) }
            }
        }
        guard out.count == preferred.count else { throw PruningError("the job's tasks depend on each other in a cycle") }
        return out
    }

    /// The phase a task belongs to.
    public func phase(of task: TaskID) -> (any Phase)? {
        owner[task.phase].map { phases[$0] }
    }

    public func task(_ id: TaskID) -> PhaseTask? {
        index[id].map { tasks[$0] }
    }

    /// The tasks that need `task`'s outputs.
    public func dependents(of task: TaskID) -> [TaskID] {
        dependents[task] ?? []
    }

    /// The phases that decide pruned tensors, for assembly.
    public var prunedTensorSources: [any PrunedTensorSource] {
        phases.compactMap { $0 as? PrunedTensorSource }
    }

    /// The source that decides `tensor`.
    public func source(of tensor: String) throws -> any PrunedTensorSource {
        // The last phase that decides it: a later phase refines an earlier one's decision
        // (block-wise reconstruction re-fits the prune tasks' weights).
        guard let source = prunedTensorSources.last(where: { $0.prunedTensors.contains(tensor) }) else {
            throw PruningError("no phase of this job decides '\(tensor)'")
        }
        return source
    }

    /// What writes out/: the smaller model of a structured job, the assembler otherwise.
    public func writer(outputs: OutputStore) throws -> any OutputWriter {
        if let units = job.plan.units, let phase = phases.compactMap({ $0 as? UnitPrunePhase }).first {
            let kept = try units.groups.indices.map { try phase.keptUnits(group: $0, outputs: outputs) }
            var writer = StructuredWriter(checkpoint: job.checkpoint, plan: job.plan, units: units, spec: job.spec, kept: kept)
            writer.updated = { try phase.updatedValues(of: $0, outputs: outputs) }
            writer.refitErrors = { try phase.refitErrors(of: $0, outputs: outputs) }
            writer.compensation = { try phase.compensation(of: $0, outputs: outputs) }
            return writer
        }
        return try assembler(outputs: outputs)
    }

    /// What assembly needs, read from `outputs` one tensor at a time.
    public func assembler(outputs: OutputStore) throws -> Assembler {
        let pruned = Set(job.plan.targets.map(\.name))
        var assembler = Assembler(checkpoint: job.checkpoint, plan: job.plan, pruned: pruned, spec: job.spec) { name in
            try self.source(of: name).mask(of: name, outputs: outputs)
        }
        var updated = Set<String>()
        for name in pruned.sorted() {
            let source = try self.source(of: name)
            if let error = try source.reconstructionError(of: name, outputs: outputs) { assembler.errors[name] = error }
            if source.updatesValues(of: name) { updated.insert(name) }
        }
        // Tensors a phase changes without pruning them (training's biases).
        var unprunedUpdates: [String: any UpdatedTensorSource] = [:]
        for source in phases.compactMap({ $0 as? UpdatedTensorSource }) {
            for name in source.updatedTensors.subtracting(pruned) { unprunedUpdates[name] = source }
        }
        updated.formUnion(unprunedUpdates.keys)
        if !updated.isEmpty {
            assembler.updatedElsewhere = (updated, { name in
                if let source = unprunedUpdates[name] { return try source.updatedValues(ofUnpruned: name, outputs: outputs) }
                guard let values = try self.source(of: name).updatedValues(of: name, outputs: outputs) else {
                    throw PruningError("no updated weights of '\(name)'")
                }
                return values
            })
        }
        for source in phases.compactMap({ $0 as? LevelSource }) {
            for name in pruned.sorted() { assembler.levels[name] = try source.level(of: name, outputs: outputs) }
        }
        // An adaptive schedule's level, decided as the job ran.
        if let train = phases.compactMap({ $0 as? TrainPhase }).first, let level = try train.chosenLevel(outputs: outputs) {
            for name in train.prunedTensors { assembler.levels[name] = level }
        }
        assembler.search = { try self.phases.compactMap { $0 as? SearchHistorySource }.first?.history(outputs: outputs) }
        assembler.training = { try self.phases.compactMap { $0 as? TrainPhase }.first?.history(outputs: outputs) }
        assembler.measures = { try self.phases.compactMap { $0 as? ManifestContributor }.reduce(into: [:]) { all, contributor in
            for (tensor, values) in try contributor.measures(outputs: outputs) { all[tensor, default: [:]].merge(values) { a, _ in a } }
        } }
        return assembler
    }
}

/// A binary min-heap of integers (the ready tasks' ranks).
struct MinHeap {
    private var items: [Int] = []

    init(_ values: [Int]) { for v in values { push(v) } }

    mutating func push(_ v: Int) {
        items.append(v)
        var i = items.count - 1
        while i > 0, items[(i - 1) / 2] > items[i] {
            items.swapAt(i, (i - 1) / 2)
            i = (i - 1) / 2
        }
    }

    mutating func pop() -> Int? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count, items[l] < items[m] { m = l }
                if r < items.count, items[r] < items[m] { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}

extension Phase {
    /// A task's round: the queue serves lower rounds first (phases interleave by it).
    public func round(of task: TaskID) -> Int { (self as? RoundedPhase)?.round(of: task) ?? 0 }
}

/// A phase whose tasks belong to rounds (decoder blocks) interleaved with other phases'.
public protocol RoundedPhase {
    func round(of task: TaskID) -> Int
}

/// A phase with tasks whose results the coordinator recomputes whenever it verifies any:
/// cheap tasks whose one lie would decide the output (an evolutionary search's selection).
public protocol AlwaysVerified {
    func alwaysVerified(_ task: TaskID) -> Bool
}

/// A phase that measures pruned tensors: its figures go into the manifest's `measures`.
public protocol ManifestContributor {
    /// Tensor name → measure name → value.
    func measures(outputs: OutputStore) throws -> [String: [String: Double]]
}

/// Empty tasks (the coordinator benchmark, tests): never planned for a job, run when sent.
public final class NoopPhase: Phase {
    public static let name = "noop"
    public init?(job: JobContext, earlier: [any Phase]) throws { return nil }
    public var tasks: [PhaseTask] { [] }
    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work { .noop(Prune_V1_NoopTask()) }
    public func outputNames(of task: TaskID) -> [OutputName] { [] }
    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? { nil }

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        guard case .noop(let n) = work else { return nil }
        try sleep(ms: Int(n.sleepMs))
        return TaskOutputs()
    }

    /// Sleeps in slices short enough that a Cancel takes effect within 10 ms.
    public static func sleep(ms: Int) throws {
        var left = ms
        while left > 0 {
            try Cancellation.checkpoint()
            let slice = min(left, 10)
            usleep(UInt32(slice) * 1000)
            left -= slice
        }
    }
}
