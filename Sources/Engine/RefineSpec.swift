import Foundation
import Pruning
import Yams

/// Mask refinement (`refine:` in the spec): each layer's mask improved at its level by
/// one-for-one swaps that lower ‖(W − Ŵ)X‖² (`SwapRefinement`), inside the layer's prune
/// task, before the next block's calibration sees it. `refine: swap` or a mapping
/// `{method: swap, swaps: N}` (N per output row).
public struct Refine: Sendable, Equatable {
    public enum Method: String, Sendable, CaseIterable { case swap }

    public var method: Method = .swap
    /// Swaps per output row, at most.
    public var swaps = 64
    public static let maxSwaps = 1 << 20

    static func parse(_ node: Node, method: JobSpec.Method, pattern: SparsityPattern, file: String) throws -> Refine? {
        var r = Refine()
        if let scalar = node.scalar {
            if let b = Bool.construct(from: scalar) {
                guard b else { return nil }
            } else {
                guard let m = Method(rawValue: scalar.string) else {
                    throw SpecError("\(where_(file, node)): refine: unknown method '\(scalar.string)' (known: \(Method.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                r.method = m
            }
        } else {
            let fields = try JobSpec.mapping(node, key: "refine", known: ["method", "swaps"], file: file)
            if let n = fields["method"] {
                guard let m = n.scalar.flatMap({ Method(rawValue: $0.string) }) else {
                    throw SpecError("\(where_(file, n)): refine.method: '\(n.scalar?.string ?? "?")' is not one of \(Method.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                r.method = m
            }
            if let v = try JobSpec.positiveInt(fields["swaps"], "refine.swaps", file: file, minimum: 1, maximum: maxSwaps) { r.swaps = v }
        }
        guard method == .wanda else {
            throw SpecError("\(where_(file, node)): refine: swaps keep the layer's weights and need its calibration inputs; use method wanda (\(method.rawValue) \(method == .sparsegpt ? "updates the kept weights" : "has no calibration"))")
        }
        if case .rows = pattern {
            throw SpecError("\(where_(file, node)): refine: swaps keep each row's count; pattern \(pattern) removes whole rows")
        }
        return r
    }
}
