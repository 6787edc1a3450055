import Foundation
import Pruning
import Yams

/// How sparse each layer is (`allocation:` in the spec): `uniform` (every layer at the
/// target, the default), `global` (one score threshold over all targeted weights), `owl`
/// (per decoder block, from outlier counts) or `error_budget` (per layer, the least total
/// reconstruction error), as a name or a mapping with the
/// method's keys. The target `sparsity` stays the mean over all targeted weights,
/// weighted by size.
public struct Allocation: Sendable, Equatable {
    public enum Method: String, Sendable, CaseIterable {
        case uniform, global, owl
        case errorBudget = "error_budget"

        /// The mapping keys the method reads.
        var keys: [String] {
            switch self {
            case .uniform: return []
            case .global: return ["min", "max"]
            case .owl: return ["m", "lambda", "min", "max"]
            case .errorBudget: return ["step", "error", "min", "max"]
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

    /// Allocations of the mask-search design not built yet (named so the error says so).
    static let notBuilt = ["evolutionary"]

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
    static func parse(_ node: Node, method: JobSpec.Method, pattern: SparsityPattern, sparsity: Double, file: String) throws -> Allocation {
        var a = Allocation()
        let fields: [String: Node]
        if node.scalar != nil {
            fields = ["method": node]
        } else {
            fields = try JobSpec.mapping(node, key: "allocation", known: ["method", "m", "lambda", "step", "error", "min", "max"], file: file)
        }
        guard let methodNode = fields["method"], let name = methodNode.scalar?.string else {
            throw SpecError("\(where_(file, node)): allocation: needs a method (\(Method.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard let chosen = Method(rawValue: name) else {
            if notBuilt.contains(name) {
                throw SpecError("\(where_(file, methodNode)): allocation: '\(name)' is not available yet (available: \(Method.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            let hint = Suggestion.nearest(name, in: Method.allCases.map(\.rawValue) + notBuilt).map { "; did you mean '\($0)'?" } ?? ""
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
        if let v = try number("min", { $0 >= 0 && $0 < 1 }, "a fraction in [0, 1)") { a.min = v }
        if let v = try number("max", { $0 >= 0 && $0 < 1 }, "a fraction in [0, 1)") { a.max = v }
        for key in ["m", "lambda", "step", "error", "min", "max"] where fields[key] != nil && !chosen.keys.contains(key) {
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
        if chosen == .owl && !method.needsCalibration {
            throw SpecError("\(where_(file, node)): allocation: owl scores blocks with Wanda's calibration statistics; use method wanda or sparsegpt with a calibration section")
        }
        if chosen == .global && method == .random {
            throw SpecError("\(where_(file, node)): allocation: global compares scores across layers, and random scores rank nothing; use method magnitude, wanda or sparsegpt")
        }
        if chosen == .errorBudget && !method.needsCalibration {
            throw SpecError("\(where_(file, node)): allocation: error_budget measures each layer's error on calibration inputs; use method wanda or sparsegpt with a calibration section")
        }
        return a
    }
}
