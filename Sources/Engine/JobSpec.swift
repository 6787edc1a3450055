import Foundation
import Models
import Pruning
import Tensors
import Yams

/// A bad job spec: names the file, the line where known, and the key.
public struct SpecError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A pruning job, as written in job.yaml (see docs/job-spec.md).
public struct JobSpec: Sendable {
    public enum Method: String, Sendable, CaseIterable {
        case magnitude, random, wanda, sparsegpt
        /// Gradient-based importance (`GradientPhase`): first-order Taylor |w · Σ ∂L/∂w| and
        /// the diagonal Fisher saliency w² · Σ (∂L/∂w)², the next-token cross-entropy's
        /// gradients over the calibration windows on the dense model.
        case taylor, fisher
        /// FLAP (An et al. 2024) for `pattern: channels` / `heads` / `heads+channels`: units scored by the
        /// fluctuation of the input the down/o projection reads from them, and replaced by
        /// their mean output as a bias (written with `mlp_bias` / `attention_bias`).
        case flap

        /// Methods that need calibration data (activations, or gradients).
        public var needsCalibration: Bool { statistic != nil || usesGradients }

        /// Methods scored from whole-model gradients rather than per-layer statistics.
        public var usesGradients: Bool { self == .taylor || self == .fisher }

        /// What the method gathers from calibration activations (nil: data-free, or gradients).
        public var statistic: (any CalibrationStatistic.Type)? {
            switch self {
            case .wanda: return WandaStatistics.self
            case .sparsegpt: return SparseGPT.self
            case .flap: return FluctuationStatistics.self
            case .magnitude, .random, .taylor, .fisher: return nil
            }
        }

        /// The rule this method's zeros follow for a spec's pattern (what `prune check` checks).
        public func comparisonPattern(for pattern: SparsityPattern) -> SparsityPattern {
            statistic?.comparisonPattern(for: pattern) ?? pattern
        }
    }

    /// Calibration: which activations Wanda and SparseGPT see.
    public struct Calibration: Sendable, Equatable {
        public enum Mode: String, Sendable, CaseIterable {
            /// Block b sees the outputs of blocks < b already pruned (as both papers do).
            case sequential
            /// Every block sees the dense model's activations (all blocks independent).
            case dense
        }
        /// Text file (tokenized with the model's tokenizer.json), or token ids as
        /// .safetensors (`input_ids`, int32 [N, T]) or .npy (int32/int64 [N, T]).
        public var data: String
        public var samples: Int = 64
        public var tokens: Int = 256
        public var seed: UInt64 = 0
        public var mode: Mode = .sequential
        /// Calibration samples one task runs: the unit of work spread over workers, and
        /// the unit in which statistics are merged (in shard order). Part of the spec, not
        /// of the worker count, so output bytes never depend on how many workers ran.
        public var samplesPerTask: Int = 8
    }

    /// Held-out data the job evaluates dense and pruned models on: perplexity for a
    /// Llama-family model, top-1 accuracy for an MLP classifier (`mlp.json`).
    public struct Evaluation: Sendable, Equatable {
        /// Text or token ids (perplexity); labelled examples (accuracy: IDX or .safetensors).
        public var data: String
        /// Windows (perplexity; nil means 32) or the first examples (accuracy; nil means all).
        public var samples: Int?
        /// Tokens per window (perplexity only).
        public var tokens: Int = 256
    }

    /// SparseGPT's knobs (IST-DASLab defaults).
    public struct SparseGPTOptions: Sendable, Equatable {
        public var blockSize: Int = 128
        public var damp: Double = 0.01
    }

    /// Checkpoint directory or .safetensors file.
    public var model: String
    /// Job directory: job.yaml copy, and the outputs under `out/`.
    public var output: String
    public var method: Method
    public var sparsity: Double
    public var pattern: SparsityPattern
    /// `pattern: heads+channels`: the fraction of each block's heads removed
    /// (`head_sparsity`); nil: `sparsity`, as for the channels.
    public var headSparsity: Double?
    /// `method: magnitude` with a structured pattern: the norm a unit's weights are
    /// scored by (`unit_norm: l1` or `l2`, the default).
    public var unitNorm: UnitScore = .l2
    public var seed: UInt64
    public var targets: [NamePattern]
    /// Everything ignored: the safe defaults (unless `ignore_defaults: false`), then the
    /// spec's own entries.
    public var ignore: [NamePattern]
    /// The spec's own `ignore` entries (an exact target overrides the defaults, not these).
    public var explicitIgnore: [NamePattern] = []
    public var allowNonFinite: Bool
    public var calibration: Calibration?
    public var evaluation: Evaluation?
    public var sparseGPT = SparseGPTOptions()
    /// The fraction of tasks run a second time, on another worker, and compared before
    /// they are accepted (nil: the transport's default, `defaultVerify`).
    public var verify: Double?
    /// Measure how much of each pruned tensor's weight norm survives (`WeightNormPhase`).
    public var weightNorms = false
    /// Whether the job runs calibration forward passes: for its method's statistics, or for
    /// the Hessians a structured re-fit needs when the unit score has none (magnitude,
    /// taylor, fisher with `reconstruct: layer`).
    public var runsCalibration: Bool { method.needsCalibration || (reconstruct != nil && calibration != nil) }

    /// `speed:`: the report measures generation speed and memory of the dense and the
    /// pruned model (`GenerationSpeed`, as `prune bench`); nil when off.
    public var speed: GenerationSpeed.Options?
    /// How sparse each layer is (`allocation:`); uniform by default.
    public var allocation = Allocation()
    /// Mask refinement (`refine:`); nil when off.
    public var refine: Refine?
    /// Recovery with the masks fixed (`reconstruct:`); nil when off.
    public var reconstruct: Reconstruct?
    /// Data-parallel masked training of an MLP classifier (`train:`); nil when off.
    public var train: TrainSpec?
    /// How sparsity arrives during training (`schedule:`, with `train:`); nil: the masks are fixed from the start.
    public var schedule: ScheduleSpec?
    /// Whether the prune tasks change the kept weights (SparseGPT's update, a re-fit), so
    /// the outputs and the next block's calibration take their weights, not the checkpoint's.
    public var updatesKeptWeights: Bool { method == .sparsegpt || reconstruct != nil }
    /// sha256 of the spec file's bytes.
    public var digest: String
    /// The spec file's bytes, copied into the job directory.
    public var source: [UInt8]
    /// The directory relative paths in the spec were resolved against.
    public var baseDirectory: String

    /// Bounds on what a spec may ask for, checked while parsing, before anything is read
    /// or allocated (see docs/job-spec.md, "Limits").
    public enum Limits {
        /// The spec file itself.
        public static let specBytes = 16 << 20
        /// Entries in `targets`, and in `ignore` (exact names are looked up in a set).
        public static let patternEntries = 100_000
        /// `re:` entries in `targets`, and in `ignore`.
        public static let regexEntries = 1_000
        /// UTF-8 bytes of one entry (tensor names are far shorter).
        public static let entryBytes = 1_024
        /// NFA states over all `re:` entries of one list: matching a name costs at most
        /// its length times this many steps.
        public static let regexStates = 10_000
        /// `calibration.samples` and `evaluation.samples`.
        public static let samples = 65_536
        /// `calibration.tokens`: tokens per calibration window.
        public static let calibrationTokens = 131_072
        /// `evaluation.tokens`: one window's logits are tokens × vocabulary floats.
        public static let evaluationTokens = 32_768
        /// samples × tokens of calibration: token ids the coordinator holds.
        public static let calibrationTotalTokens = 1 << 22
        /// samples_per_task × tokens: one task's token ids travel in one protocol message
        /// (at most 1 MiB), 4 bytes or fewer each.
        public static let tokensPerTask = 1 << 17
        /// samples × tokens of evaluation: hidden states of every window are held at once.
        public static let evaluationTotalTokens = 1 << 20
    }

    public static let defaultTargets = ["re:.*"]
    /// Embeddings, norms and the output head: pruning them costs far more quality than it saves.
    public static let defaultIgnore = ["re:(?i).*embed", "re:(?i).*norm", "re:.*lm_head"]
    static let keys = ["model", "output", "method", "sparsity", "pattern", "mask_structure", "seed", "targets", "ignore", "ignore_defaults",
                       "allow_nonfinite", "calibration", "evaluation", "sparsegpt", "verify", "recipe", "weight_norms", "allocation", "refine", "reconstruct", "train", "schedule", "speed", "head_sparsity", "unit_norm"]
    /// In `targets`, llm-compressor's name for every Linear layer's weight (see `Plan`).
    public static let linearTargets = "Linear"

    /// `file:line` for a node, or just `file` (for errors).
    static func location(_ file: String, _ node: Node?) -> String { where_(file, node) }

    /// llm-compressor's `mask_structure`: "N:M", or "0:0" / "unstructured" for unstructured.
    static func maskStructure(_ node: Node, at: String) throws -> SparsityPattern {
        guard let text = node.scalar?.string, !text.isEmpty else { throw SpecError("\(at): mask_structure must be a string such as \"2:4\"") }
        if text == "0:0" { return .unstructured }
        do { return try SparsityPattern(parsing: text) } catch let e as PruningError {
            throw SpecError("\(at): mask_structure: \(e.message)")
        }
    }

    /// Verification when the spec says nothing: workers on other hosts (tcp://) are
    /// checked on a 5% sample; the local workers of `prune run` are this user's own
    /// processes, so they are not.
    public static func defaultVerify(remoteWorkers: Bool) -> Double { remoteWorkers ? 0.05 : 0 }

    /// The `seed` of a spec file (0 when it names none), without validating the rest: a job
    /// directory's copy of the spec names paths relative to where it was first written.
    public static func seed(ofSpecAt path: String) -> UInt64? {
        guard let data = try? SmallFile.read(path, limit: Limits.specBytes), let text = String(data: data, encoding: .utf8),
              let mapping = (try? Yams.compose(yaml: text))??.mapping else { return nil }
        guard let node = mapping["seed"] else { return 0 }
        return node.scalar.flatMap { UInt64($0.string) }
    }

    /// Reads and validates a spec file. Relative paths are relative to the spec's directory.
    public static func load(path: String) throws -> JobSpec {
        let data: Data
        do {
            data = try SmallFile.read(path, limit: Limits.specBytes)
        } catch {
            throw SpecError("\(path): \(error.describe("the job spec"))")
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
                throw SpecError("\(where_(file, keyNode)): unknown key '\(key)'\(Suggestion.phrase(key, in: keys)) (known keys: \(keys.joined(separator: ", ")))")
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
            return try patterns(seq.map { ($0.scalar?.string ?? "", $0) }, key: key, node: node)
        }
        /// Entries of `targets` or `ignore` (from the spec, or a recipe: then `node` is
        /// the recipe's), bounded in count, length and regex size.
        func patterns(_ items: [(text: String, node: Node)], key: String, node: Node) throws -> [NamePattern] {
            guard items.count <= Limits.patternEntries else {
                throw SpecError("\(where_(file, node)): '\(key)' has \(items.count) entries, more than the limit of \(Limits.patternEntries)")
            }
            var regexes = 0, states = 0
            return try items.map { s, item in
                guard !s.isEmpty else {
                    throw SpecError("\(where_(file, item)): every entry of '\(key)' must be a string")
                }
                guard s.utf8.count <= Limits.entryBytes else {
                    throw SpecError("\(where_(file, item)): \(key): an entry of \(s.utf8.count) bytes is longer than the limit of \(Limits.entryBytes)")
                }
                let pattern: NamePattern
                do { pattern = try NamePattern(s) } catch let e as SpecError {
                    throw SpecError("\(where_(file, item)): \(key): \(e.message)")
                }
                if !pattern.isExact {
                    regexes += 1
                    states += pattern.regexStates
                    guard regexes <= Limits.regexEntries else {
                        throw SpecError("\(where_(file, item)): \(key): more than \(Limits.regexEntries) re: entries; combine them with | or list exact names")
                    }
                    guard states <= Limits.regexStates else {
                        throw SpecError("\(where_(file, item)): \(key): the re: entries together compile to more than \(Limits.regexStates) states; simplify them or list exact names")
                    }
                }
                return pattern
            }
        }
        func resolve(_ p: String) -> String {
            ((p.hasPrefix("/") ? p : (baseDirectory as NSString).appendingPathComponent(p)) as NSString).standardizingPath
        }

        let modelText = try string("model", required: true)!
        var model = resolve(modelText)
        if !FileManager.default.fileExists(atPath: model), HubCache.isHubID(modelText) {
            // ORG/NAME that is no path here: a model in the local Hugging Face cache.
            guard let snapshot = HubCache.snapshot(of: modelText) else {
                throw SpecError("\(where_(file, values["model"])): model: '\(modelText)' is neither a path nor a model in the Hugging Face cache (\(HubCache.directory())); prune never downloads: fetch it first (huggingface-cli download \(modelText)) or give its directory")
            }
            model = snapshot
        }
        let output = resolve(try string("output", required: true)!)
        if let overlap = PathOverlap.between(model: model, output: output) {
            throw SpecError("\(where_(file, values["output"])): output: \(overlap)")
        }
        // An llm-compressor recipe supplies the pruning settings; the spec may not give
        // them a second time.
        let recipe = try values["recipe"].map { try Recipe.load($0, file: file, resolve: resolve) }
        if let recipe, let node = values["recipe"] {
            let given: [(key: String, inRecipe: Bool)] = [
                ("method", true), ("sparsity", recipe.sparsity != nil), ("pattern", recipe.pattern != nil), ("mask_structure", recipe.pattern != nil),
                ("targets", recipe.targets != nil), ("ignore", recipe.ignore != nil),
                ("sparsegpt", recipe.damp != nil || recipe.blockSize != nil)]
            for (key, inRecipe) in given where inRecipe && values[key] != nil {
                throw SpecError("\(where_(file, values[key])): '\(key)' is given both here and in the recipe (\(where_(file, node))); keep one")
            }
        }
        if let a = values["pattern"], values["mask_structure"] != nil {
            throw SpecError("\(where_(file, a)): give pattern or mask_structure (llm-compressor's name for it), not both")
        }
        let methodText = try string("method") ?? recipe?.method.rawValue ?? "magnitude"
        guard let method = Method(rawValue: methodText) else {
            throw SpecError("\(where_(file, values["method"])): method: '\(methodText)' is not one of \(Method.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let pattern: SparsityPattern
        if let node = values["mask_structure"] {
            pattern = try maskStructure(node, at: where_(file, node))
        } else if let fromRecipe = recipe?.pattern {
            pattern = fromRecipe
        } else {
            let patternText = try string("pattern") ?? "unstructured"
            do { pattern = try SparsityPattern(parsing: patternText) } catch let e as PruningError {
                throw SpecError("\(where_(file, values["pattern"])): pattern: \(e.message)")
            }
        }
        var sparsity: Double
        if let s = recipe?.sparsity {
            if let implied = pattern.impliedSparsity, abs(implied - s) > 1e-9 {
                throw SpecError("\(where_(file, values["recipe"])): recipe: sparsity \(s) disagrees with mask_structure \(pattern), which means \(implied)")
            }
            sparsity = s
        } else if let node = values["sparsity"] {
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
        var calibration = try values["calibration"].map { try parseCalibration($0, file: file, resolve: resolve) }
        if method == .flap {
            guard case .units = pattern else {
                throw SpecError("\(where_(file, values["method"])): method: flap removes whole units (pattern channels, heads or heads+channels), not \(pattern)")
            }
            // FLAP's statistics and biases are the dense model's (each block's compensation
            // is its removed units' mean output on dense inputs): dense calibration.
            if let node = values["calibration"], let mode = node["mode"], mode.scalar?.string == "sequential" {
                throw SpecError("\(where_(file, mode)): calibration.mode: method flap measures every block on the dense model's activations, as FLAP does (mode dense, its default)")
            }
            calibration?.mode = .dense
        }
        if method == .sparsegpt {
            switch pattern {
            case .unstructured, .nm: break
            default:
                // Its OBS sweep picks the weights of a column block across all rows: a
                // per-row or whole-row rule would be silently broken.
                throw SpecError("\(where_(file, values["pattern"] ?? values["method"])): pattern: \(pattern) is not available with method sparsegpt (unstructured or N:M)")
            }
        }
        if method.needsCalibration && calibration == nil {
            throw SpecError("\(where_(file, values["method"])): method \(method.rawValue) needs a 'calibration' section (data, samples, tokens)")
        }
        // A unit score from weights (magnitude) re-fits its layers on calibration inputs.
        let unitsRefit: Bool = { if case .units = pattern { return values["reconstruct"] != nil } else { return false } }()
        if !method.needsCalibration && !unitsRefit, let node = values["calibration"] {
            throw SpecError("\(where_(file, node)): calibration: method \(method.rawValue) does not use calibration data")
        }
        var sparseGPT = SparseGPTOptions()
        if let node = values["sparsegpt"] {
            guard method == .sparsegpt else { throw SpecError("\(where_(file, node)): sparsegpt: options given but method is \(method.rawValue)") }
            sparseGPT = try parseSparseGPT(node, file: file)
        }
        if let d = recipe?.damp { sparseGPT.damp = d }
        if let b = recipe?.blockSize { sparseGPT.blockSize = b }
        var ignoreDefaults = true
        if let node = values["ignore_defaults"] {
            guard let b = node.scalar.flatMap({ Bool.construct(from: $0) }) else {
                throw SpecError("\(where_(file, node)): ignore_defaults: must be true or false")
            }
            ignoreDefaults = b
        }
        // `ignore` adds to the safe defaults (embeddings, norms, the output head) unless
        // the spec opts out: replacing them pruned tied embeddings without a word.
        let recipeNode = values["recipe"] ?? Node("")
        let targets = try recipe?.targets.map { try patterns($0.map { ($0, recipeNode) }, key: "recipe targets", node: recipeNode) }
            ?? list("targets", default: defaultTargets)
        let userIgnore = try recipe?.ignore.map { try patterns($0.map { ($0, recipeNode) }, key: "recipe ignore", node: recipeNode) }
            ?? list("ignore", default: [])
        let ignore = (ignoreDefaults ? try defaultIgnore.map(NamePattern.init) : []) + userIgnore
        let source = bytes ?? Array(yaml.utf8)
        var spec = JobSpec(model: model, output: output, method: method, sparsity: sparsity, pattern: pattern, seed: seed,
                           targets: targets,
                           ignore: ignore,
                           allowNonFinite: allow,
                           digest: source.withUnsafeBytes { SHA256Stream.hex($0) }, source: source,
                           baseDirectory: baseDirectory)
        spec.calibration = calibration
        spec.sparseGPT = sparseGPT
        spec.explicitIgnore = userIgnore
        if let node = values["allocation"] {
            spec.allocation = try Allocation.parse(node, method: method, pattern: pattern, sparsity: sparsity, calibration: calibration, file: file)
        }
        if let node = values["refine"] {
            spec.refine = try Refine.parse(node, method: method, pattern: pattern, file: file)
        }
        if let node = values["reconstruct"] {
            spec.reconstruct = try Reconstruct.parse(node, method: method, pattern: pattern, calibration: calibration, file: file)
        }
        if let node = values["train"] {
            let train = try TrainSpec.parse(node, seed: seed, model: model, resolve: resolve, file: file)
            if train.tokens == nil {
                guard method == .magnitude || method == .random else {
                    throw SpecError("\(where_(file, node)): train: an MLP classifier's masks are chosen without calibration; use method magnitude or random (sparsity 0 trains the dense model)")
                }
            }
            spec.train = train
        }
        if let node = values["schedule"] {
            spec.schedule = try ScheduleSpec.parse(node, sparsity: sparsity, hasTrain: spec.train != nil, file: file)
            if spec.train?.tokens != nil { throw SpecError("\(where_(file, node)): schedule: prune-and-train rounds are built for the MLP classifier; a Llama model fine-tunes the job's masks (drop schedule:)") }
            if case .nm = pattern { throw SpecError("\(where_(file, node)): schedule: rounds prune by magnitude within rows; pattern \(pattern) is not supported with a schedule") }
        }
        if case .units = pattern {
            let kind = pattern.description
            // Units are scored by L2 norm or Wanda and removed from the shapes; the
            // per-weight steps have no meaning on a model whose weights are gone.
            guard [.magnitude, .wanda, .taylor, .fisher, .flap].contains(method) else {
                throw SpecError("\(where_(file, values["method"])): method: pattern \(kind) scores whole units with magnitude (L2 norm), wanda (|W|·‖X‖), taylor, fisher or flap (input fluctuation, with bias compensation), not \(method.rawValue)")
            }
            for key in ["refine", "train", "schedule", "weight_norms"] {
                if let node = values[key] { throw SpecError("\(where_(file, node)): \(key): not available with pattern \(kind) (the smaller model is written as its units leave it)") }
            }
            if let node = values["allocation"], spec.allocation.method != .uniform {
                // One ranking of every block's units (FLAP's adaptive structure): per-layer widths.
                guard spec.allocation.method == .global else {
                    throw SpecError("\(where_(file, node)): allocation: pattern \(kind) ranks units across blocks with allocation global (per-layer widths), not \(spec.allocation.method.rawValue)")
                }
                guard !MLPConfig.exists(in: model) else {
                    throw SpecError("\(where_(file, node)): allocation: global with pattern \(kind) writes per-layer widths into a Llama-family config.json; an MLP classifier's neurons are removed uniformly")
                }
                if let c = calibration, c.mode == .sequential {
                    throw SpecError("\(where_(file, node)): allocation: global ranks every block's units before any is cut, so each block is scored on the dense model's activations: set calibration.mode: dense")
                }
                if let h = values["head_sparsity"] {
                    throw SpecError("\(where_(file, h)): head_sparsity: allocation global decides how many heads and channels each block keeps; sparsity is the fraction of their parameters removed")
                }
            }
            if let node = values["reconstruct"], spec.reconstruct?.scope != .layer {
                throw SpecError("\(where_(file, node)): reconstruct: pattern \(kind) re-fits the layer that reads the removed units (scope layer), not whole blocks")
            }
        }
        if let node = values["head_sparsity"] {
            guard case .units(let kinds) = pattern, kinds.count > 1 else {
                throw SpecError("\(where_(file, node)): head_sparsity: for pattern heads+channels (with one kind of unit, sparsity is its fraction)")
            }
            guard let h = node.scalar.flatMap({ Double($0.string) }), h.isFinite, h > 0, h < 1 else {
                throw SpecError("\(where_(file, node)): head_sparsity: must be a number in (0, 1) (the fraction of each block's query heads removed)")
            }
            spec.headSparsity = h
        }
        if let node = values["unit_norm"] {
            guard case .units = pattern, method == .magnitude else {
                throw SpecError("\(where_(file, node)): unit_norm: the norm whole units are scored by, with method magnitude and pattern channels, heads or heads+channels")
            }
            guard let text = node.scalar?.string, let norm = UnitScore(rawValue: text), norm == .l1 || norm == .l2 else {
                throw SpecError("\(where_(file, node)): unit_norm: '\(node.scalar?.string ?? "…")' must be l1 (Σ|w|) or l2 (the default) over each unit's weights")
            }
            spec.unitNorm = norm
        }
        if let node = values["weight_norms"] {
            guard let b = node.scalar.flatMap({ Bool.construct(from: $0) }) else {
                throw SpecError("\(where_(file, node)): weight_norms: must be true or false")
            }
            spec.weightNorms = b
        }
        if let node = values["verify"] {
            guard let f = node.scalar.flatMap({ Double($0.string) }), f.isFinite, f >= 0, f <= 1 else {
                throw SpecError("\(where_(file, node)): verify: must be a fraction in [0, 1] (the share of tasks run twice and compared)")
            }
            spec.verify = f
        }
        if let node = values["evaluation"] {
            let m = try JobSpec.mapping(node, key: "evaluation", known: ["data", "samples", "tokens"], file: file)
            guard let dataNode = m["data"], let data = dataNode.scalar?.string, !data.isEmpty else {
                throw SpecError("\(where_(file, node)): evaluation: missing 'data' (held-out text or token ids; labelled examples for an MLP)")
            }
            let path = resolve(data)
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw SpecError("\(where_(file, dataNode)): evaluation.data: cannot read \(path)")
            }
            var e = Evaluation(data: path)
            if let v = try JobSpec.positiveInt(m["samples"], "evaluation.samples", file: file, minimum: 1, maximum: Limits.samples) { e.samples = v }
            if let v = try JobSpec.positiveInt(m["tokens"], "evaluation.tokens", file: file, minimum: 2, maximum: Limits.evaluationTokens) { e.tokens = v }
            // Perplexity holds every window's hidden states at once; an MLP classifier's
            // samples are examples and it has no tokens.
            let windows = e.samples ?? 32
            guard MLPConfig.exists(in: model) || windows * e.tokens <= Limits.evaluationTotalTokens else {
                throw SpecError("\(where_(file, node)): evaluation: samples × tokens = \(windows) × \(e.tokens) is more than the limit of \(Limits.evaluationTotalTokens) tokens")
            }
            spec.evaluation = e
        }
        if let node = values["speed"] {
            spec.speed = try parseSpeed(node, model: model, file: file)
        }
        return spec
    }

    /// `speed: true`, `false`, or a mapping of `prompt`, `decode` and `repeats`.
    private static func parseSpeed(_ node: Node, model: String, file: String) throws -> GenerationSpeed.Options? {
        var options = GenerationSpeed.Options()
        if let scalar = node.scalar {
            guard let on = Bool.construct(from: scalar) else {
                throw SpecError("\(where_(file, node)): speed: must be true, false or a mapping (prompt, decode, repeats)")
            }
            if !on { return nil }
        } else {
            let m = try mapping(node, key: "speed", known: ["prompt", "decode", "repeats"], file: file)
            let tokens = GenerationSpeed.Options.tokens, repeats = GenerationSpeed.Options.repeatRange
            if let v = try positiveInt(m["prompt"], "speed.prompt", file: file, minimum: tokens.lowerBound, maximum: tokens.upperBound) { options.prompt = v }
            if let v = try positiveInt(m["decode"], "speed.decode", file: file, minimum: tokens.lowerBound, maximum: tokens.upperBound) { options.decode = v }
            if let v = try positiveInt(m["repeats"], "speed.repeats", file: file, minimum: repeats.lowerBound, maximum: repeats.upperBound) { options.repeats = v }
        }
        guard !MLPConfig.exists(in: model) else {
            throw SpecError("\(where_(file, node)): speed: measures a Llama-family model's generation (prefill and decode tokens/s); an MLP classifier has none")
        }
        // Checked now, not after out/ is written: the cache holds prompt + decode positions.
        if let config = try? LlamaConfig.load(model) {
            do { try config.checkSequenceLength(options.prompt + options.decode, what: "speed: prompt + decode") } catch let e as ModelError {
                throw SpecError("\(where_(file, node)): \(e.description)")
            }
        }
        return options
    }

    static func mapping(_ node: Node, key: String, known: [String], file: String) throws -> [String: Node] {
        guard let map = node.mapping else { throw SpecError("\(where_(file, node)): '\(key)' must be a mapping") }
        var out: [String: Node] = [:]
        for (k, v) in map {
            guard let name = k.string, known.contains(name) else {
                let hint = Suggestion.nearest(k.string ?? "", in: known).map { "; did you mean '\(key).\($0)'?" } ?? ""
                throw SpecError("\(where_(file, k)): unknown key '\(key).\(k.string ?? "?")'\(hint) (known: \(known.joined(separator: ", ")))")
            }
            out[name] = v
        }
        return out
    }

    /// `lr_schedule: constant | cosine` (training's and the block re-fit's): whether it is
    /// cosine; nil when absent.
    static func cosineSchedule(_ node: Node?, _ name: String, file: String) throws -> Bool? {
        guard let node else { return nil }
        guard let v = node.scalar?.string, v == "cosine" || v == "constant" else {
            throw SpecError("\(where_(file, node)): \(name): must be constant or cosine")
        }
        return v == "cosine"
    }

    static func positiveInt(_ node: Node?, _ name: String, file: String, minimum: Int, maximum: Int = Int.max) throws -> Int? {
        guard let node else { return nil }
        guard let v = node.scalar.flatMap({ Int($0.string) }), v >= minimum else {
            throw SpecError("\(where_(file, node)): \(name): must be an integer ≥ \(minimum)")
        }
        guard v <= maximum else {
            throw SpecError("\(where_(file, node)): \(name): \(v) is more than the limit of \(maximum)")
        }
        return v
    }

    private static func parseCalibration(_ node: Node, file: String, resolve: (String) -> String) throws -> Calibration {
        let m = try mapping(node, key: "calibration", known: ["data", "samples", "tokens", "seed", "mode", "samples_per_task"], file: file)
        guard let dataNode = m["data"], let data = dataNode.scalar?.string, !data.isEmpty else {
            throw SpecError("\(where_(file, node)): calibration: missing 'data' (a text file, or token ids as .safetensors or .npy)")
        }
        let path = resolve(data)
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw SpecError("\(where_(file, dataNode)): calibration.data: cannot read \(path)")
        }
        var c = Calibration(data: path)
        if let v = try positiveInt(m["samples"], "calibration.samples", file: file, minimum: 1, maximum: Limits.samples) { c.samples = v }
        if let v = try positiveInt(m["tokens"], "calibration.tokens", file: file, minimum: 2, maximum: Limits.calibrationTokens) { c.tokens = v }
        if let v = try positiveInt(m["seed"], "calibration.seed", file: file, minimum: 0) { c.seed = UInt64(v) }
        if let v = try positiveInt(m["samples_per_task"], "calibration.samples_per_task", file: file, minimum: 1, maximum: Limits.samples) { c.samplesPerTask = v }
        // Products are bounded too: each factor alone may be sane and the product not.
        guard c.samples * c.tokens <= Limits.calibrationTotalTokens else {
            throw SpecError("\(where_(file, node)): calibration: samples × tokens = \(c.samples) × \(c.tokens) is more than the limit of \(Limits.calibrationTotalTokens) tokens")
        }
        guard min(c.samplesPerTask, c.samples) * c.tokens <= Limits.tokensPerTask else {
            throw SpecError("\(where_(file, node)): calibration: samples_per_task × tokens = \(min(c.samplesPerTask, c.samples)) × \(c.tokens) is more than the limit of \(Limits.tokensPerTask) tokens per task; lower samples_per_task")
        }
        if let node = m["mode"] {
            guard let mode = node.scalar.flatMap({ Calibration.Mode(rawValue: $0.string) }) else {
                throw SpecError("\(where_(file, node)): calibration.mode: must be sequential or dense")
            }
            c.mode = mode
        }
        return c
    }

    private static func parseSparseGPT(_ node: Node, file: String) throws -> SparseGPTOptions {
        let m = try mapping(node, key: "sparsegpt", known: ["block_size", "damp"], file: file)
        var o = SparseGPTOptions()
        if let v = try positiveInt(m["block_size"], "sparsegpt.block_size", file: file, minimum: 1) { o.blockSize = v }
        if let node = m["damp"] {
            guard let d = node.scalar.flatMap({ Double($0.string) }), d > 0, d < 1 else {
                throw SpecError("\(where_(file, node)): sparsegpt.damp: must be a fraction in (0, 1), e.g. 0.01")
            }
            o.damp = d
        }
        return o
    }

    /// The criterion of a method that needs no data (nil for Wanda and SparseGPT,
    /// which the calibrator runs).
    public var dataFreeCriterion: (any ImportanceCriterion)? {
        try? JobSpec.criterion(method: method.rawValue, seed: seed)
    }

    /// The criterion for a data-free method named on the wire.
    public static func criterion(method: String, seed: UInt64) throws -> any ImportanceCriterion {
        guard let m = Method(rawValue: method) else { throw SpecError("unknown method '\(method)'") }
        switch m {
        case .magnitude: return MagnitudeCriterion()
        case .random: return RandomCriterion(seed: seed)
        case .wanda, .sparsegpt, .taylor, .fisher, .flap: throw SpecError("method \(method) needs calibration data; it runs in the calibrator")
        }
    }
}

/// Refuses an output directory that overlaps the checkpoint: inside the model directory
/// the job would write into the checkpoint it reads (and a later run would read its own
/// outputs); a model inside the output directory would be replaced by the outputs.
enum PathOverlap {
    /// A phrase naming the overlap, or nil when the paths are apart.
    static func between(model: String, output: String) -> String? {
        let m = canonical(model), o = canonical(output)
        var isDir: ObjCBool = false
        let modelIsDirectory = !FileManager.default.fileExists(atPath: m, isDirectory: &isDir) || isDir.boolValue
        if o == m { return "\(output) is the model \(modelIsDirectory ? "directory" : "file") itself" }
        if modelIsDirectory && isInside(o, m) {
            return "\(output) is inside the model directory \(model); the job would write into the checkpoint it reads"
        }
        if isInside(m, o) { return "the model \(model) is inside the output directory \(output), whose outputs would replace it" }
        return nil
    }

    static func isInside(_ path: String, _ directory: String) -> Bool {
        path.hasPrefix(directory == "/" ? "/" : directory + "/")
    }

    /// The absolute path with symbolic links resolved as far as the path exists (the
    /// output usually does not exist yet).
    static func canonical(_ path: String) -> String {
        var existing = path
        var rest: [String] = []
        while existing != "/" && !existing.isEmpty {
            if let resolved = realpath(existing, nil) {
                defer { free(resolved) }
                existing = String(cString: resolved)
                break
            }
            rest.insert((existing as NSString).lastPathComponent, at: 0)
            existing = (existing as NSString).deletingLastPathComponent
        }
        return rest.reduce(existing.isEmpty ? "/" : existing) { ($0 as NSString).appendingPathComponent($1) }
    }
}

/// `file:line` for a node, or just `file`.
func where_(_ file: String, _ node: Node?) -> String {
    guard let mark = node?.mark else { return file }
    return "\(file):\(mark.line)"
}
