import Foundation
import Pruning
import Tensors
import Yams

/// An llm-compressor recipe (`recipe:` in the job spec, a file or an inline mapping)
/// translated into the job's pruning settings. One pruning modifier, anywhere in the
/// recipe's stages and groups:
///
/// ```yaml
/// sparsity_stage:
///   run_type: oneshot
///   sparsity_modifiers:
///     SparseGPTModifier: {sparsity: 0.5, mask_structure: "2:4", targets: ["Linear"],
///                         ignore: ["re:.*lm_head"], dampening_frac: 0.01, block_size: 128}
/// ```
///
/// SparseGPTModifier → `method: sparsegpt`, WandaPruningModifier → `wanda`,
/// MagnitudePruningModifier → `magnitude`. A modifier or field this tool does not carry out
/// is an error naming it: a recipe must never be half applied.
public struct Recipe: Sendable {
    public var method: JobSpec.Method
    public var sparsity: Double?
    public var pattern: SparsityPattern?
    public var targets: [String]?
    public var ignore: [String]?
    public var damp: Double?
    public var blockSize: Int?

    static let modifiers: [String: (method: JobSpec.Method, fields: [String])] = [
        "SparseGPTModifier": (.sparsegpt, ["sparsity", "mask_structure", "targets", "ignore", "dampening_frac", "block_size", "sparsity_profile"]),
        "WandaPruningModifier": (.wanda, ["sparsity", "mask_structure", "targets", "ignore", "sparsity_profile"]),
        "MagnitudePruningModifier": (.magnitude, ["sparsity", "final_sparsity", "mask_structure", "targets", "ignore"]),
    ]
    /// MagnitudePruningModifier's schedule fields: a gradual schedule is not one-shot pruning.
    static let scheduleFields = ["init_sparsity", "start", "end", "update_frequency", "leave_enabled"]

    /// Reads the recipe from a `recipe:` node: a path (relative to the spec) or a mapping.
    static func load(_ node: Node, file: String, resolve: (String) -> String) throws -> Recipe {
        if let path = node.scalar?.string {
            let full = resolve(path)
            let data: Data
            do {
                data = try SmallFile.read(full, limit: JobSpec.Limits.specBytes)
            } catch {
                throw SpecError("\(JobSpec.location(file, node)): recipe: \(full): \(error.describe("the recipe"))")
            }
            guard let text = String(data: data, encoding: .utf8) else { throw SpecError("\(full): the recipe is not UTF-8 text") }
            let root: Node?
            do { root = try Yams.compose(yaml: text) } catch {
                throw SpecError("\(full): not valid YAML: \(String(describing: error).split(separator: "\n").first ?? "")")
            }
            guard let root else { throw SpecError("\(full): the recipe is empty") }
            return try parse(root, file: full)
        }
        return try parse(node, file: file)
    }

    /// Finds the one modifier (its key ends in "Modifier") through the stages and groups.
    static func parse(_ root: Node, file: String) throws -> Recipe {
        var found: [(name: String, args: Node, node: Node)] = []
        func walk(_ node: Node, depth: Int) throws {
            guard let map = node.mapping else {
                throw SpecError("\(JobSpec.location(file, node)): recipe: expected stages and modifier groups (mappings)")
            }
            for (k, v) in map {
                guard let key = k.string else { throw SpecError("\(JobSpec.location(file, k)): recipe: keys must be strings") }
                if key.hasSuffix("Modifier") {
                    found.append((key, v, k))
                } else if key == "run_type" {
                    guard v.string == "oneshot" else {
                        throw SpecError("\(JobSpec.location(file, v)): recipe: run_type '\(v.string ?? "?")' is not supported (prune runs oneshot)")
                    }
                } else if depth < 3, v.mapping != nil {
                    try walk(v, depth: depth + 1)
                } else {
                    throw SpecError("\(JobSpec.location(file, k)): recipe: unknown key '\(key)' (expected stages, groups ending in _modifiers, and a pruning modifier)")
                }
            }
        }
        try walk(root, depth: 0)
        guard let modifier = found.first else {
            throw SpecError("\(file): recipe: no modifier found (one of \(modifiers.keys.sorted().joined(separator: ", ")))")
        }
        guard found.count == 1 else {
            throw SpecError("\(JobSpec.location(file, found[1].node)): recipe: more than one modifier (\(found.map(\.name).joined(separator: ", "))); a job applies one")
        }
        guard let known = modifiers[modifier.name] else {
            throw SpecError("\(JobSpec.location(file, modifier.node)): recipe: modifier '\(modifier.name)' is not supported (supported: \(modifiers.keys.sorted().joined(separator: ", ")))")
        }
        var recipe = Recipe(method: known.method)
        guard let args = modifier.args.mapping else {
            if modifier.args.null != nil { return recipe }
            throw SpecError("\(JobSpec.location(file, modifier.args)): recipe: \(modifier.name)'s arguments must be a mapping")
        }
        for (k, v) in args {
            guard let field = k.string else { throw SpecError("\(JobSpec.location(file, k)): recipe: keys must be strings") }
            let at = JobSpec.location(file, k)
            if scheduleFields.contains(field) {
                throw SpecError("\(at): recipe: \(modifier.name).\(field): gradual schedules are not supported; prune prunes in one shot (give final_sparsity only)")
            }
            guard known.fields.contains(field) else {
                throw SpecError("\(at): recipe: unknown field '\(modifier.name).\(field)' (known: \(known.fields.joined(separator: ", ")))")
            }
            switch field {
            case "sparsity", "final_sparsity":
                guard let s = v.scalar.flatMap({ Double($0.string) }), s.isFinite, s >= 0, s < 1 else {
                    throw SpecError("\(at): recipe: \(modifier.name).\(field) must be one number in [0, 1) (per-layer sparsity maps are not supported)")
                }
                recipe.sparsity = s
            case "mask_structure":
                recipe.pattern = try JobSpec.maskStructure(v, at: at)
            case "targets", "ignore":
                let names: [String]
                if let one = v.scalar?.string { names = [one] } else if let seq = v.sequence {
                    names = try seq.map { item in
                        guard let s = item.scalar?.string, !s.isEmpty else { throw SpecError("\(at): recipe: \(field) entries must be strings") }
                        return s
                    }
                } else {
                    throw SpecError("\(at): recipe: \(modifier.name).\(field) must be a string or a list of strings")
                }
                if field == "targets" { recipe.targets = names } else { recipe.ignore = names }
            case "dampening_frac":
                guard let d = v.scalar.flatMap({ Double($0.string) }), d > 0, d < 1 else {
                    throw SpecError("\(at): recipe: dampening_frac must be a fraction in (0, 1)")
                }
                recipe.damp = d
            case "block_size":
                guard let b = v.scalar.flatMap({ Int($0.string) }), b >= 1, b <= 1 << 16 else {
                    throw SpecError("\(at): recipe: block_size must be an integer in 1...65536")
                }
                recipe.blockSize = b
            case "sparsity_profile":
                guard v.null != nil || v.string == "null" else {
                    throw SpecError("\(at): recipe: sparsity_profile '\(v.string ?? "?")' is not supported yet (every layer gets the same sparsity)")
                }
            default:
                break
            }
        }
        return recipe
    }

    init(method: JobSpec.Method) {
        self.method = method
    }
}
