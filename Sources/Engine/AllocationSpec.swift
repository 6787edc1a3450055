import Foundation
import Pruning
import Yams

/// How sparse each layer is (`allocation:` in the spec): `uniform` (every layer at the
/// target, the default), `global` (one score threshold over all targeted weights), `owl`
/// (per decoder block, from outlier counts), `error_budget` (per layer, the least total
/// reconstruction error) or `evolutionary` (per layer, searched for the least KL divergence
/// from the dense model), as a name or a mapping with the method's keys. The target `sparsity` stays the mean over all targeted weights,
/// weighted by size.
public struct Allocation: Sendable, Equatable {
    public enum Method: String, Sendable, CaseIterable {
        case uniform, global, owl
        case errorBudget = "error_budget"
        case evolutionary

        /// The mapping keys the method reads.
        var keys: [String] {
            switch self {
            case .uniform: return []
            case .global: return ["min", "max", "standardize"]
            case .owl: return ["m", "lambda", "min", "max"]
            case .errorBudget: return ["step", "error", "min", "max"]
            case .evolutionary: return ["generations", "offspring", "survivors", "tokens", "tokens_per_task", "levels", "seed", "m", "lambda", "min", "max"]
            }
        }
    }

    /// How error_budget compares layers' errors (the curves are divided by a per-layer
    /// scale before the least total is sought).
    /// On SmolLM2 at 70% `output` did best of the three (README), none better than uniform.
    public enum ErrorScale: String, Sendable, CaseIterable {
        /// ÷ ‖WX‖²: every layer's error as a fraction of its output.
        case output
        /// ÷ the layer's own error at the target sparsity: the uniform allocation scores 1
        /// per layer, and a layer goes sparser only where that costs it less, relative to
        /// its own uniform error, than it saves elsewhere.
        case uniform
        /// ‖(W − Ŵ)X‖² as measured.
        case absolute
    }

    public var method: Method = .uniform
    /// OWL: a score is an outlier above M × the mean score of its block.
    public var m: Double = 5
    /// OWL: the levels span target ± λ before clamping.
    public var lambda: Double = 0.08
    /// error_budget: the spacing of the levels each layer's error is measured at.
    public var step: Double = 0.05
    /// error_budget: how layers' errors are compared.
    public var error: ErrorScale = .output
    /// Bounds on any layer's level.
    public var min: Double = 0
    public var max: Double = 0.99
    /// global with a structured pattern: how each block's unit scores are made comparable
    /// before the one ranking (FLAP's z-score by default).
    public var standardize: Standardization = .zscore
    /// evolutionary: the budget. Generations after the start (generation 0 scores the
    /// start points), offspring per generation, and per selection stage the survivors and
    /// the calibration tokens each candidate is scored on (the last stage keeps one, the
    /// parent competing too). The defaults search SmolLM2-135M in about 15 minutes on 2
    /// workers (README).
    public var generations = 40
    public var offspring = 8
    public var survivors = [2, 1]
    public var tokens = [512, 2048]
    /// evolutionary: calibration tokens per fitness task (whole windows, at least one): a
    /// candidate's sample is scored in shards of this size, so a stage's few large
    /// samples spread over the workers as evenly as its many small ones.
    public var tokensPerTask = 1024
    /// evolutionary: steps of the level grid each way from the target (EvoPress's
    /// `num_levels`); a step is 0.5·min(s, 1 − s)/levels × hidden² weights.
    public var levels = 8
    /// evolutionary: the seed of mutations and token samples.
    public var seed: UInt64 = 0

    /// evolutionary: the most tokens one candidate is scored on (a fitness task holds the
    /// dense model's log-probabilities of all of them; the job checks that against the
    /// vocabulary too).
    public static let mostTokensPerCandidate = 1 << 18

    /// evolutionary: the weights one level step moves (EvoPress: 0.5·min(s, 1 − s)/levels
    /// × hidden², `hidden` the model's hidden size).
    public func stepWeights(target: Double, hidden: Int) -> Double {
        0.5 * Swift.min(target, 1 - target) / Double(levels) * Double(hidden) * Double(hidden)
    }

    /// The levels error_budget measures each layer at: `min`, the multiples of `step`
    /// between `min` and `max`, and `max`.
    public var curveLevels: [Double] {
        var levels = [min]
        var k = (min / step).rounded(.down) + 1
        while k * step < max - 1e-9 {
            if k * step > min + 1e-9 { levels.append(k * step) }
            k += 1
        }
        return levels + [max]
    }

    /// Parses the `allocation` node and checks it against the job's method, pattern and target.
    static func parse(_ node: Node, method: JobSpec.Method, pattern: SparsityPattern, sparsity: Double, calibration: JobSpec.Calibration?,
                      file: String) throws -> Allocation {
        var a = Allocation()
        let fields: [String: Node]
        if node.scalar != nil {
            fields = ["method": node]
        } else {
            fields = try JobSpec.mapping(node, key: "allocation", known: ["method", "m", "lambda", "step", "error", "min", "max", "standardize", "generations", "offspring", "survivors", "tokens", "tokens_per_task", "levels", "seed"], file: file)
        }
        guard let methodNode = fields["method"], let name = methodNode.scalar?.string else {
            throw SpecError("\(where_(file, node)): allocation: needs a method (\(Method.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard let chosen = Method(rawValue: name) else {
            let hint = Suggestion.nearest(name, in: Method.allCases.map(\.rawValue)).map { "; did you mean '\($0)'?" } ?? ""
            throw SpecError("\(where_(file, methodNode)): allocation: unknown method '\(name)'\(hint) (known: \(Method.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        a.method = chosen
        func number(_ key: String, _ valid: (Double) -> Bool, _ rule: String) throws -> Double? {
            guard let n = fields[key] else { return nil }
            guard let v = n.scalar.flatMap({ Double($0.string) }), v.isFinite, valid(v) else {
                throw SpecError("\(where_(file, n)): allocation.\(key): '\(n.scalar?.string ?? "?")' must be \(rule)")
            }
            return v
        }
        if let v = try number("m", { $0 > 0 && $0 <= 1e6 }, "a number in (0, 1e6]") { a.m = v }
        if let v = try number("lambda", { $0 >= 0 && $0 <= 0.5 }, "a number in [0, 0.5]") { a.lambda = v }
        if let v = try number("step", { $0 >= 0.005 && $0 <= 0.25 }, "a fraction in [0.005, 0.25]") { a.step = v }
        if let n = fields["error"] {
            guard let scale = n.scalar.flatMap({ ErrorScale(rawValue: $0.string) }) else {
                throw SpecError("\(where_(file, n)): allocation.error: '\(n.scalar?.string ?? "?")' must be one of \(ErrorScale.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            a.error = scale
        }
        if let n = fields["standardize"] {
            guard let v = n.scalar.flatMap({ Standardization(rawValue: $0.string) }) else {
                throw SpecError("\(where_(file, n)): allocation.standardize: '\(n.scalar?.string ?? "?")' must be one of \(Standardization.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard case .units = pattern else {
                throw SpecError("\(where_(file, n)): allocation.standardize: ranks units of a structured pattern (channels, heads, heads+channels); one threshold on weight scores needs none")
            }
            a.standardize = v
        }
        if let v = try number("min", { $0 >= 0 && $0 < 1 }, "a fraction in [0, 1)") { a.min = v }
        if let v = try number("max", { $0 >= 0 && $0 < 1 }, "a fraction in [0, 1)") { a.max = v }
        func integer(_ key: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let n = fields[key] else { return nil }
            guard let v = n.scalar.flatMap({ Int($0.string) }), range.contains(v) else {
                throw SpecError("\(where_(file, n)): allocation.\(key): '\(n.scalar?.string ?? "?")' must be an integer in [\(range.lowerBound), \(range.upperBound)]")
            }
            return v
        }
        func integers(_ key: String, _ range: ClosedRange<Int>) throws -> [Int]? {
            guard let n = fields[key] else { return nil }
            let items = n.sequence.map { Array($0) } ?? (n.scalar != nil ? [n] : [])
            let values = items.compactMap { $0.scalar.flatMap { Int($0.string) } }
            guard !items.isEmpty, items.count <= 8, values.count == items.count, values.allSatisfy(range.contains) else {
                throw SpecError("\(where_(file, n)): allocation.\(key): must be a list of 1 to 8 integers in [\(range.lowerBound), \(range.upperBound)]")
            }
            return values
        }
        if let v = try integer("generations", 0...100_000) { a.generations = v }
        if let v = try integer("offspring", 1...4096) { a.offspring = v }
        if let v = try integers("survivors", 1...4096) { a.survivors = v }
        if let v = try integers("tokens", 2...100_000_000) { a.tokens = v }
        if let v = try integer("tokens_per_task", 1...Allocation.mostTokensPerCandidate) { a.tokensPerTask = v }
        // At most 201 levels per layer: a level database byte holds a position (255: never).
        if let v = try integer("levels", 1...100) { a.levels = v }
        if let n = fields["seed"] {
            guard let v = n.scalar.flatMap({ UInt64($0.string) }) else {
                throw SpecError("\(where_(file, n)): allocation.seed: '\(n.scalar?.string ?? "?")' must be an integer ≥ 0")
            }
            a.seed = v
        }
        for key in ["m", "lambda", "step", "error", "min", "max", "standardize", "generations", "offspring", "survivors", "tokens", "tokens_per_task", "levels", "seed"] where fields[key] != nil && !chosen.keys.contains(key) {
            throw SpecError("\(where_(file, fields[key])): allocation.\(key): not used by allocation \(chosen.rawValue)")
        }
        if chosen == .uniform { return a }
        if a.min > sparsity {
            throw SpecError("\(where_(file, fields["min"])): allocation.min: \(a.min) is above the target sparsity \(sparsity)")
        }
        if a.max < sparsity {
            throw SpecError("\(where_(file, fields["max"] ?? node)): allocation.max: \(a.max) is below the target sparsity \(sparsity)")
        }
        if case .nm = pattern {
            throw SpecError("\(where_(file, node)): allocation: \(chosen.rawValue) sets a sparsity per layer, which pattern \(pattern) fixes; use unstructured or per_row")
        }
        if case .rows = pattern {
            throw SpecError("\(where_(file, node)): allocation: \(chosen.rawValue) is not built for pattern \(pattern); use unstructured or per_row")
        }
        if method.usesGradients && chosen != .global {
            throw SpecError("\(where_(file, node)): allocation: \(chosen.rawValue) is not built for method \(method.rawValue) (gradient scores); use allocation uniform or global")
        }
        if chosen == .owl && !method.needsCalibration {
            throw SpecError("\(where_(file, node)): allocation: owl scores blocks with Wanda's calibration statistics; use method wanda or sparsegpt with a calibration section")
        }
        if chosen == .global && method == .random {
            throw SpecError("\(where_(file, node)): allocation: global compares scores across layers, and random scores rank nothing; use method magnitude, wanda or sparsegpt")
        }
        if chosen == .evolutionary {
            guard method.needsCalibration, let calibration else {
                throw SpecError("\(where_(file, node)): allocation: evolutionary scores candidates by the KL divergence of their next-token distribution on calibration tokens; use method wanda or sparsegpt with a calibration section")
            }
            guard sparsity > 0 else {
                throw SpecError("\(where_(file, node)): allocation: evolutionary moves weights between layers around the target sparsity, which is 0")
            }
            try a.checkSearchBudget(calibration: calibration, node: fields["survivors"] ?? fields["tokens"] ?? node, file: file)
        }
        if chosen == .errorBudget && !method.needsCalibration {
            throw SpecError("\(where_(file, node)): allocation: error_budget measures each layer's error on calibration inputs; use method wanda or sparsegpt with a calibration section")
        }
        return a
    }

    /// The stages of an evolutionary search: as many survivor counts as token counts,
    /// survivors shrinking to one, tokens growing and within the calibration set.
    private func checkSearchBudget(calibration: JobSpec.Calibration, node: Node, file: String) throws {
        let available = calibration.samples * calibration.tokens
        guard calibration.tokens <= CandidateFitness.maxWindow else {
            throw SpecError("\(where_(file, node)): allocation: evolutionary scores windows of at most \(CandidateFitness.maxWindow) tokens; calibration.tokens is \(calibration.tokens)")
        }
        guard survivors.count == tokens.count else {
            throw SpecError("\(where_(file, node)): allocation.survivors: \(survivors.count) stages, but allocation.tokens gives \(tokens.count)")
        }
        guard survivors.last == 1, zip(survivors, survivors.dropFirst()).allSatisfy({ $0 >= $1 }), survivors[0] <= offspring else {
            throw SpecError("\(where_(file, node)): allocation.survivors: \(survivors) must shrink to 1, starting at most offspring (\(offspring))")
        }
        guard zip(tokens, tokens.dropFirst()).allSatisfy({ $0 <= $1 }), let most = tokens.last, most <= Swift.min(available, Allocation.mostTokensPerCandidate) else {
            throw SpecError("\(where_(file, node)): allocation.tokens: \(tokens) must grow and stay within the calibration set's \(available) tokens (\(calibration.samples) × \(calibration.tokens))")
        }
    }
}
