import Foundation
import Pruning
import Tensors
import Yams

/// A bad job spec: names the file, the line where known, and the key.
public struct SpecError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Which tensors a job prunes, by exact name or by `re:` regular expression (matched at
/// the start of the name, as Python's `re.match` does in llm-compressor's specs).
// Regex is an immutable value but not marked Sendable in this toolchain.
public struct NamePattern: @unchecked Sendable, CustomStringConvertible {
    public let text: String
    private let regex: Regex<AnyRegexOutput>?

    public init(_ text: String) throws {
        self.text = text
        if text.hasPrefix("re:") {
            do {
                regex = try Regex(String(text.dropFirst(3)))
            } catch {
                throw SpecError("'\(text)' is not a valid regular expression: \(error)")
            }
        } else {
            regex = nil
        }
    }

    public var isExact: Bool { regex == nil }
    public var description: String { text }

    public func matches(_ name: String) -> Bool {
        guard let regex else { return name == text }
        return (try? regex.prefixMatch(in: name)) != nil
    }
}

/// A pruning job, as written in job.yaml (see docs/job-spec.md).
public struct JobSpec: Sendable {
    public enum Method: String, Sendable, CaseIterable {
        case magnitude, random
    }

    /// Checkpoint directory or .safetensors file.
    public var model: String
    /// Job directory: job.yaml copy, and the outputs under `out/`.
    public var output: String
    public var method: Method
    public var sparsity: Double
    public var pattern: SparsityPattern
    public var seed: UInt64
    public var targets: [NamePattern]
    public var ignore: [NamePattern]
    public var allowNonFinite: Bool
    /// sha256 of the spec file's bytes.
    public var digest: String
    /// The spec file's bytes, copied into the job directory.
    public var source: [UInt8]
    /// The directory relative paths in the spec were resolved against.
    public var baseDirectory: String

    public static let defaultTargets = ["re:.*"]
    /// Embeddings, norms and the output head: pruning them costs far more quality than it saves.
    public static let defaultIgnore = ["re:(?i).*embed", "re:(?i).*norm", "re:.*lm_head"]
    static let keys = ["model", "output", "method", "sparsity", "pattern", "seed", "targets", "ignore", "allow_nonfinite"]

    /// Reads and validates a spec file. Relative paths are relative to the spec's directory.
    public static func load(path: String) throws -> JobSpec {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SpecError("\(path): cannot read the job spec")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw SpecError("\(path): job spec is not UTF-8 text")
        }
        // Relative paths resolve against the spec's own directory, made absolute so that
        // workers and a later resume see the same files from any directory.
        var base = (path as NSString).deletingLastPathComponent
        if !base.hasPrefix("/") { base = (FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(base) }
        return try parse(yaml: text, file: path, baseDirectory: (base as NSString).standardizingPath, bytes: [UInt8](data))
    }

    /// Parses spec text; `file` names it in errors.
    public static func parse(yaml: String, file: String, baseDirectory: String, bytes: [UInt8]? = nil) throws -> JobSpec {
        let node: Node?
        do {
            node = try Yams.compose(yaml: yaml)
        } catch {
            throw SpecError("\(file): not valid YAML: \(String(describing: error).split(separator: "\n").first ?? "")")
        }
        guard let mapping = node?.mapping else {
            throw SpecError("\(file): the job spec must be a mapping of keys (model, output, method, sparsity, pattern, ...)")
        }
        var values: [String: Node] = [:]
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw SpecError("\(where_(file, keyNode)): keys must be strings") }
            guard keys.contains(key) else {
                throw SpecError("\(where_(file, keyNode)): unknown key '\(key)' (known keys: \(keys.joined(separator: ", ")))")
            }
            values[key] = value
        }
        func string(_ key: String, required: Bool = false) throws -> String? {
            guard let node = values[key] else {
                if required { throw SpecError("\(file): missing required key '\(key)'") }
                return nil
            }
            guard let s = node.scalar?.string, !s.isEmpty else {
                throw SpecError("\(where_(file, node)): '\(key)' must be a non-empty string")
            }
            return s
        }
        func list(_ key: String, default def: [String]) throws -> [NamePattern] {
            guard let node = values[key] else { return try def.map(NamePattern.init) }
            guard let seq = node.sequence else {
                throw SpecError("\(where_(file, node)): '\(key)' must be a list of tensor names or re: patterns")
            }
            return try seq.map { item in
                guard let s = item.scalar?.string, !s.isEmpty else {
                    throw SpecError("\(where_(file, item)): every entry of '\(key)' must be a string")
                }
                do { return try NamePattern(s) } catch let e as SpecError {
                    throw SpecError("\(where_(file, item)): \(key): \(e.message)")
                }
            }
        }
        func resolve(_ p: String) -> String {
            ((p.hasPrefix("/") ? p : (baseDirectory as NSString).appendingPathComponent(p)) as NSString).standardizingPath
        }

        let model = resolve(try string("model", required: true)!)
        let output = resolve(try string("output", required: true)!)
        let methodText = try string("method") ?? "magnitude"
        guard let method = Method(rawValue: methodText) else {
            throw SpecError("\(where_(file, values["method"])): method: '\(methodText)' is not one of \(Method.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let patternText = try string("pattern") ?? "unstructured"
        let pattern: SparsityPattern
        do { pattern = try SparsityPattern(parsing: patternText) } catch let e as PruningError {
            throw SpecError("\(where_(file, values["pattern"])): pattern: \(e.message)")
        }
        var sparsity: Double
        if let node = values["sparsity"] {
            guard let s = node.scalar.flatMap({ Double($0.string) }), s.isFinite else {
                throw SpecError("\(where_(file, node)): sparsity: '\(node.scalar?.string ?? "?")' is not a number")
            }
            guard s >= 0, s < 1 else {
                throw SpecError("\(where_(file, node)): sparsity: \(s) is outside [0, 1)")
            }
            if let implied = pattern.impliedSparsity, abs(implied - s) > 1e-9 {
                throw SpecError("\(where_(file, node)): sparsity: \(s) disagrees with pattern \(pattern), which means \(implied); drop one of them")
            }
            sparsity = s
        } else if let implied = pattern.impliedSparsity {
            sparsity = implied
        } else {
            throw SpecError("\(file): missing required key 'sparsity' (a fraction in [0, 1), e.g. 0.5)")
        }
        if case .nm(let n, _) = pattern, n == 0 {
            throw SpecError("\(where_(file, values["pattern"])): pattern: \(pattern) would prune every weight")
        }
        var seed: UInt64 = 0
        if let node = values["seed"] {
            guard let s = node.scalar.flatMap({ UInt64($0.string) }) else {
                throw SpecError("\(where_(file, node)): seed: must be a non-negative integer")
            }
            seed = s
        }
        var allow = false
        if let node = values["allow_nonfinite"] {
            guard let b = node.scalar.flatMap({ Bool.construct(from: $0) }) else {
                throw SpecError("\(where_(file, node)): allow_nonfinite: must be true or false")
            }
            allow = b
        }
        let source = bytes ?? Array(yaml.utf8)
        return JobSpec(model: model, output: output, method: method, sparsity: sparsity, pattern: pattern, seed: seed,
                       targets: try list("targets", default: defaultTargets),
                       ignore: try list("ignore", default: defaultIgnore),
                       allowNonFinite: allow,
                       digest: source.withUnsafeBytes { SHA256Stream.hex($0) }, source: source,
                       baseDirectory: baseDirectory)
    }

    /// The criterion the method names.
    public var criterion: any ImportanceCriterion {
        switch method {
        case .magnitude: return MagnitudeCriterion()
        case .random: return RandomCriterion(seed: seed)
        }
    }

    /// The criterion for a method named on the wire.
    public static func criterion(method: String, seed: UInt64) throws -> any ImportanceCriterion {
        guard let m = Method(rawValue: method) else { throw SpecError("unknown method '\(method)'") }
        switch m {
        case .magnitude: return MagnitudeCriterion()
        case .random: return RandomCriterion(seed: seed)
        }
    }
}

/// `file:line` for a node, or just `file`.
private func where_(_ file: String, _ node: Node?) -> String {
    guard let mark = node?.mark else { return file }
    return "\(file):\(mark.line)"
}
