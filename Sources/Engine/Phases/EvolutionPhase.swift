import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// The evolutionary search of `allocation: evolutionary` (EvoPress's, spread over the
/// workers and durable): a DAG of small tasks per generation G, each a pure function of
/// earlier outputs, so a killed search resumes where it stopped with the same result.
/// - `evolve:G:offspring`: the generation's candidates (G = 0: the start points, uniform
///   and OWL; later: mutations of the parent).
/// - `evolve:G:S:C:K`: candidate C's fitness at selection stage S on shard K of the
///   stage's token sample (`tokens_per_task` tokens of whole windows), the KL divergence
///   of its next-token distribution from the dense model's: the tasks the workers run in
///   parallel.
/// - `evolve:G:S:survivors`: the stage's best candidates; the last stage's single
///   survivor (the parent competing too) is the next parent, the last generation's the
///   levels the layers are pruned at.
public final class EvolutionPhase: Phase, LevelSource, SearchHistorySource, AlwaysVerified {
    public static let name = "evolve"
    public static let candidates = OutputName("candidates")
    public static let fitness = OutputName("fitness")
    public static let survivors = OutputName("survivors")

    private let job: JobContext
    private let spec: Allocation
    private let calibration: CalibrationPlan
    private let database: LevelDatabasePhase
    private let outliers: OutlierPhase?
    private var grid: LevelGrid { database.grid }
    private var layers: [(block: Int, name: String)] { database.targets }
    private let layerIndex: [String: Int]
    /// The tensors the model's forward pass reads.
    private let forwardTensors: [String]

    public init?(job: JobContext, earlier: [any Phase]) throws {
        guard job.spec.allocation.method == .evolutionary, let calibration = job.calibration,
              let database = earlier.compactMap({ $0 as? LevelDatabasePhase }).first else { return nil }
        self.job = job
        spec = job.spec.allocation
        self.calibration = calibration
        self.database = database
        outliers = earlier.compactMap { $0 as? OutlierPhase }.first
        layerIndex = Dictionary(database.targets.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
        let config = calibration.config
        forwardTensors = [CalibrationWork.embeddingName] + (0..<config.layers).flatMap { config.blockTensorNames(block: $0) }
            + ["model.norm.weight"] + (job.checkpoint.info("lm_head.weight") != nil ? ["lm_head.weight"] : [])
    }

    // MARK: The search's shape

    /// Generation 0 scores the start points in one stage; later ones select in stages.
    func stages(_ g: Int) -> Int { g == 0 ? 1 : spec.survivors.count }
    var startCount: Int { outliers == nil ? 1 : 2 }

    /// Candidates scored at stage s of generation g: the offspring, then the survivors of
    /// the stage before, with the parent added at the last stage (elitism, as EvoPress).
    func candidateCount(_ g: Int, _ s: Int) -> Int {
        if g == 0 { return startCount }
        return (s == 0 ? spec.offspring : spec.survivors[s - 1]) + (s == stages(g) - 1 ? 1 : 0)
    }

    func survivorCount(_ g: Int, _ s: Int) -> Int { g == 0 ? 1 : spec.survivors[s] }
    func tokens(_ g: Int, _ s: Int) -> Int { g == 0 ? spec.tokens.last! : spec.tokens[s] }

    /// The token sample of stage s of generation g (every candidate's), in shards of whole
    /// windows, one fitness task each.
    func shards(_ g: Int, _ s: Int) -> [[(window: Int, tokens: Int)]] {
        let sample = EvolutionarySearch.sample(available: calibration.windows.count, length: calibration.tokens, tokens: tokens(g, s),
                                               seed: spec.seed, generation: g, stage: s)
        let per = max(1, spec.tokensPerTask / calibration.tokens)
        return stride(from: 0, to: sample.count, by: per).map { Array(sample[$0..<min($0 + per, sample.count)]) }
    }

    func shardCount(_ g: Int, _ s: Int) -> Int {
        let windows = min(calibration.windows.count, (tokens(g, s) + calibration.tokens - 1) / calibration.tokens)
        let per = max(1, spec.tokensPerTask / calibration.tokens)
        return (windows + per - 1) / per
    }

    static func offspringID(_ g: Int) -> TaskID { TaskID(name, "\(g):offspring") }
    static func fitnessID(_ g: Int, _ s: Int, _ c: Int, _ k: Int) -> TaskID { TaskID(name, "\(g):\(s):\(c):\(k)") }
    static func survivorsID(_ g: Int, _ s: Int) -> TaskID { TaskID(name, "\(g):\(s):survivors") }
    func lastSurvivors(_ g: Int) -> TaskID { EvolutionPhase.survivorsID(g, stages(g) - 1) }

    private enum Kind { case offspring(Int), fitness(Int, Int, Int, Int), survivors(Int, Int) }

    private func kind(of task: TaskID) -> Kind? {
        let parts = task.key.split(separator: ":").map(String.init)
        guard task.phase == EvolutionPhase.name, let g = Int(parts[0]), g >= 0, g <= spec.generations else { return nil }
        if parts.count == 2, parts[1] == "offspring" { return .offspring(g) }
        guard parts.count >= 3, let s = Int(parts[1]), s >= 0, s < stages(g) else { return nil }
        if parts.count == 3, parts[2] == "survivors" { return .survivors(g, s) }
        guard parts.count == 4, let c = Int(parts[2]), c >= 0, c < candidateCount(g, s), let k = Int(parts[3]), k >= 0, k < shardCount(g, s) else { return nil }
        return .fitness(g, s, c, k)
    }

    public var tasks: [PhaseTask] {
        let databases = layers.map { LevelDatabasePhase.id(tensor: $0.name) }
        var out: [PhaseTask] = []
        for g in 0...spec.generations {
            let start: [TaskID] = g == 0 ? (outliers?.units.map(\.task) ?? []) : [lastSurvivors(g - 1)]
            out.append(PhaseTask(EvolutionPhase.offspringID(g), after: start))
            for s in 0..<stages(g) {
                var inputs = [s == 0 ? EvolutionPhase.offspringID(g) : EvolutionPhase.survivorsID(g, s - 1)]
                if g > 0 && s == stages(g) - 1 { inputs.append(lastSurvivors(g - 1)) }
                let scored = (0..<candidateCount(g, s)).flatMap { c in (0..<shardCount(g, s)).map { EvolutionPhase.fitnessID(g, s, c, $0) } }
                // A shard's candidates to one worker where possible: it computes the dense
                // reference of the shard's windows once (ReferenceCache), not every worker.
                out += (0..<candidateCount(g, s)).flatMap { c in
                    (0..<shardCount(g, s)).map { PhaseTask(EvolutionPhase.fitnessID(g, s, c, $0), after: inputs + databases, affinity: "\(EvolutionPhase.name):\(g):\(s):shard\($0)") }
                }
                out.append(PhaseTask(EvolutionPhase.survivorsID(g, s), after: scored + inputs))
            }
        }
        return out
    }

    /// Offspring and selections cost microseconds and one lie among them would steer the
    /// whole search (a worker's survivors are not checked against its candidates' fitness
    /// by `problem`): the coordinator recomputes every one whenever it verifies tasks.
    public func alwaysVerified(_ task: TaskID) -> Bool {
        switch kind(of: task) {
        case .offspring, .survivors: return true
        default: return false
        }
    }

    // MARK: Candidates

    /// The candidates of stage s of generation g, from the outputs they come from.
    private func candidates(_ g: Int, _ s: Int, outputs: OutputStore) throws -> [[Int]] {
        var list: [[Int]]
        if s == 0 {
            list = try CandidateCoding.decode(try outputs.bytes(EvolutionPhase.candidates, of: EvolutionPhase.offspringID(g)), layers: grid.layers)
        } else {
            list = try CandidateCoding.decode(try outputs.bytes(EvolutionPhase.survivors, of: EvolutionPhase.survivorsID(g, s - 1)), layers: grid.layers)
        }
        if g > 0 && s == stages(g) - 1 { list.append(try parent(after: g - 1, outputs: outputs)) }
        guard list.count == candidateCount(g, s) else { throw PruningError("generation \(g) stage \(s): \(list.count) candidates, expected \(candidateCount(g, s))") }
        return list
    }

    /// The parent after generation g: the last stage's survivor.
    private func parent(after g: Int, outputs: OutputStore) throws -> [Int] {
        let best = try CandidateCoding.decode(try outputs.bytes(EvolutionPhase.survivors, of: lastSurvivors(g)), layers: grid.layers)
        guard let first = best.first else { throw PruningError("generation \(g) has no survivor") }
        return first
    }

    // MARK: Work

    public func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work {
        switch kind(of: task) {
        case .offspring(let g):
            var b = Prune_V1_BreedTask()
            b.generation = UInt32(g)
            b.seed = spec.seed
            b.offspring = UInt32(g == 0 ? startCount : spec.offspring)
            b.lowest = grid.lowest.map(Int32.init)
            b.highest = grid.highest.map(Int32.init)
            b.weights = grid.weights.map(UInt64.init)
            b.target = grid.target
            b.stepWeights = grid.stepWeights
            if g > 0 { b.parent = try parent(after: g - 1, outputs: outputs).map(Int32.init) }
            if g == 0, let outliers {
                let units = outliers.units
                b.outliers = try units.map { try outputs.ref($0.score, of: $0.task) }
                let unitOf = Dictionary(units.enumerated().flatMap { i, u in u.tensors.map { ($0, i) } }, uniquingKeysWith: { a, _ in a })
                b.blockOfLayer = try layers.map { l in
                    guard let u = unitOf[l.name] else { throw PruningError("\(l.name) is in no block's outlier count") }
                    return UInt32(u)
                }
                b.lambda = spec.lambda
                b.min = spec.min
                b.max = spec.max
            }
            return .breed(b)
        case .fitness(let g, let s, let c, let k):
            let candidate = try candidates(g, s, outputs: outputs)[c]
            var f = Prune_V1_FitnessTask()
            f.configJson = Data(calibration.configJSON)
            f.weights = forwardTensors.map { job.tensorRef(job.checkpoint.info($0)!) }
            f.layers = try layers.enumerated().map { i, l in
                var layer = Prune_V1_FitnessLayer()
                layer.name = l.name
                layer.database = try outputs.ref(LevelDatabasePhase.database, of: LevelDatabasePhase.id(tensor: l.name))
                layer.position = UInt32(candidate[i] - grid.lowest[i])
                return layer
            }
            let shard = shards(g, s)[k]
            f.tokenIds = shard.flatMap { calibration.windows[$0.window].prefix($0.tokens) }
            f.lengths = shard.map { UInt32($0.tokens) }
            return .fitness(f)
        case .survivors(let g, let s):
            var w = Prune_V1_SelectTask()
            w.layers = UInt32(grid.layers)
            w.candidates = try candidates(g, s, outputs: outputs).flatMap { $0.map(Int32.init) }
            w.fitness = try (0..<candidateCount(g, s)).flatMap { c in
                try (0..<shardCount(g, s)).map { try outputs.ref(EvolutionPhase.fitness, of: EvolutionPhase.fitnessID(g, s, c, $0)) }
            }
            w.survivors = UInt32(survivorCount(g, s))
            w.shards = UInt32(shardCount(g, s))
            return .select(w)
        case nil:
            throw PruningError("no evolve task \(task)")
        }
    }

    public func outputNames(of task: TaskID) -> [OutputName] {
        switch kind(of: task) {
        case .offspring: return [EvolutionPhase.candidates]
        case .fitness: return [EvolutionPhase.fitness]
        case .survivors: return [EvolutionPhase.survivors, EvolutionPhase.fitness]
        case nil: return []
        }
    }

    public func problem(in outputs: [[UInt8]], of task: TaskID) -> String? {
        switch kind(of: task) {
        case .offspring(let g):
            let count = g == 0 ? startCount : spec.offspring
            guard outputs.count == 1, let list = try? CandidateCoding.decode(outputs[0], layers: grid.layers), list.count == count,
                  list.allSatisfy(grid.isValid) else {
                return "result of \(task) is not \(count) candidates of \(grid.layers) levels within the grid, summing to zero"
            }
        case .fitness(let g, let s, _, let k):
            let expected = shards(g, s)[k].reduce(0) { $0 + max($1.tokens - 1, 0) }
            guard outputs.count == 1, let v = try? FloatPayload.doubles(outputs[0], what: "fitness"), v.count == 2, v[1] == Double(expected),
                  v[0] >= -1e-6 * max(v[1], 1), v[0] <= CandidateFitness.largestMeanKL * max(v[1], 1) else {
                return "result of \(task) is not a finite KL divergence ≥ 0 summed over \(expected) tokens"
            }
        case .survivors(let g, let s):
            let count = survivorCount(g, s)
            guard outputs.count == 2, let list = try? CandidateCoding.decode(outputs[0], layers: grid.layers), list.count == count,
                  list.allSatisfy(grid.isValid), let fitness = try? FloatPayload.doubles(outputs[1], what: "fitness"), fitness.count == count,
                  fitness.allSatisfy({ $0 >= -1e-6 && $0 <= CandidateFitness.largestMeanKL }), zip(fitness, fitness.dropFirst()).allSatisfy({ $0 <= $1 }) else {
                return "result of \(task) is not \(count) valid candidates with their fitness, best first"
            }
        case nil:
            return "no evolve task \(task)"
        }
        return nil
    }

    // MARK: What the search decides

    public var levelsTask: TaskID { lastSurvivors(spec.generations) }

    public func level(of tensor: String, outputs: OutputStore) throws -> Double {
        guard let i = layerIndex[tensor] else { throw PruningError("\(tensor) has no searched level") }
        return grid.sparsity(layer: i, level: try parent(after: spec.generations, outputs: outputs)[i])
    }

    /// The parent's fitness after each generation, on that generation's last sample.
    public func history(outputs: OutputStore) throws -> Manifest.Search {
        var generations: [Manifest.Search.Generation] = []
        for g in 0...spec.generations {
            let fitness = try FloatPayload.doubles(try outputs.bytes(EvolutionPhase.fitness, of: lastSurvivors(g)), what: "fitness")
            let scored = (0..<stages(g)).reduce(0) { $0 + candidateCount(g, $1) }
            generations.append(.init(generation: g, fitness: fitness.first ?? .nan, tokens: tokens(g, stages(g) - 1), candidates: scored))
        }
        return Manifest.Search(method: Allocation.Method.evolutionary.rawValue, levels: spec.levels, stepWeights: grid.stepWeights,
                               generations: generations)
    }

    // MARK: Running the tasks

    public static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs? {
        switch work {
        case .breed(let b): return try breed(b, inputs: inputs)
        case .fitness(let f): return try CandidateFitness.run(f, inputs: inputs)
        case .select(let w): return try select(w, inputs: inputs)
        default: return nil
        }
    }

    private static func breed(_ b: Prune_V1_BreedTask, inputs: TaskInputs) throws -> TaskOutputs {
        guard b.offspring <= 4096 else { throw PruningError("breed task: \(b.offspring) offspring (at most 4096)") }
        let grid = try LevelGrid(weights: b.weights.map { Int(clamping: $0) }, target: b.target, stepWeights: b.stepWeights,
                                 lowest: b.lowest.map(Int.init), highest: b.highest.map(Int.init))
        var list: [[Int]]
        if b.generation == 0 {
            list = [[Int](repeating: 0, count: grid.layers)]
            if !b.outliers.isEmpty {
                var ratios: [Double] = [], blockWeights = [Double](repeating: 0, count: b.outliers.count)
                for ref in b.outliers {
                    let counts = try FloatPayload.doubles(try inputs.artifact(ref), what: "outlier count")
                    guard counts.count == 2, counts[1] > 0 else { throw PruningError("breed task: an outlier count is not two numbers") }
                    ratios.append(counts[0] / counts[1])
                }
                guard b.blockOfLayer.count == grid.layers, b.blockOfLayer.allSatisfy({ Int($0) < b.outliers.count }) else {
                    throw PruningError("breed task: \(b.blockOfLayer.count) block indices for \(grid.layers) layers")
                }
                for (i, u) in b.blockOfLayer.enumerated() { blockWeights[Int(u)] += Double(grid.weights[i]) }
                let owl = try LayerAllocation.owl(outlierRatios: ratios, weights: blockWeights, target: b.target, lambda: b.lambda,
                                                  minimum: b.min, maximum: b.max)
                list.append(grid.project(b.blockOfLayer.map { owl[Int($0)] }))
            }
        } else {
            let parent = b.parent.map(Int.init)
            guard grid.isValid(parent) else { throw PruningError("breed task: the parent is not a point of the grid") }
            list = EvolutionarySearch.offspring(of: parent, count: Int(b.offspring), grid: grid, seed: b.seed, generation: Int(b.generation))
        }
        return TaskOutputs(payloads: [(candidates.rawValue, CandidateCoding.encode(list))])
    }

    private static func select(_ w: Prune_V1_SelectTask, inputs: TaskInputs) throws -> TaskOutputs {
        let n = Int(w.layers), shards = Int(w.shards)
        guard n > 0, shards > 0, w.fitness.count % shards == 0, w.candidates.count == n * (w.fitness.count / shards), w.survivors >= 1,
              Int(w.survivors) <= w.fitness.count / shards, w.candidates.allSatisfy({ Int16(exactly: $0) != nil }) else {
            throw PruningError("select task: \(w.candidates.count) levels and \(w.fitness.count) fitness shards for candidates of \(n) layers, \(w.survivors) survivors")
        }
        // Each candidate's KL and token count summed over its shards in order.
        let means = try stride(from: 0, to: w.fitness.count, by: shards).map { first -> Double in
            var sum = 0.0, count = 0.0
            for ref in w.fitness[first..<(first + shards)] {
                let v = try FloatPayload.doubles(try inputs.artifact(ref), what: "fitness")
                guard v.count == 2, v[1] >= 0 else { throw PruningError("select task: a fitness is not a sum and a count") }
                sum += v[0]
                count += v[1]
            }
            guard count > 0 else { throw PruningError("select task: a candidate was scored on no token") }
            return sum / count
        }
        let chosen = EvolutionarySearch.select(means, survivors: Int(w.survivors))
        let list = chosen.map { c in w.candidates[(c * n)..<((c + 1) * n)].map(Int.init) }
        return TaskOutputs(payloads: [(survivors.rawValue, CandidateCoding.encode(list)),
                                      (fitness.rawValue, chosen.flatMap { FloatPayload.encode(means[$0]) })])
    }
}

/// A phase that records a search's progress for the manifest and report.
public protocol SearchHistorySource {
    func history(outputs: OutputStore) throws -> Manifest.Search
}

/// Candidates (per-layer levels) as the search's outputs carry them: i16 little-endian,
/// one per layer, candidate after candidate.
enum CandidateCoding {
    static func encode(_ list: [[Int]]) -> [UInt8] {
        list.flatMap { $0.flatMap { v in withUnsafeBytes(of: Int16(v).littleEndian) { [UInt8]($0) } } }
    }

    static func decode(_ bytes: [UInt8], layers: Int) throws -> [[Int]] {
        guard layers > 0, bytes.count % (2 * layers) == 0 else { throw PruningError("\(bytes.count) bytes are not candidates of \(layers) layers") }
        let values = stride(from: 0, to: bytes.count, by: 2).map { Int(Int16(bitPattern: UInt16(bytes[$0]) | UInt16(bytes[$0 + 1]) << 8)) }
        return stride(from: 0, to: values.count, by: layers).map { Array(values[$0..<($0 + layers)]) }
    }
}
