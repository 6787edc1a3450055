import Foundation
import Tensors

/// `out/manifest.json`: what was done to every tensor, with digests to check it by.
public struct Manifest: Codable, Sendable, Equatable {
    public struct Tensor: Codable, Sendable, Equatable {
        public var shape: [Int]
        public var dtype: String
        public var pruned: Bool
        public var pattern: String?
        public var method: String?
        public var targetSparsity: Double?
        public var achievedSparsity: Double
        /// Weights the mask removed (a removed weight may already have been zero).
        public var masked: Int
        /// Elements whose bytes are all zero in the output.
        public var zeros: Int
        public var elements: Int
        public var sha256Dense: String
        public var sha256Sparse: String
        /// ||WX − ŴX||² when a method reconstructs from calibration data; null otherwise.
        public var reconstructionError: Double?
        /// The method changed kept weights too (SparseGPT's update), not just zeroed some.
        public var valuesUpdated: Bool = false
        /// Figures a phase measured on the pruned tensor (e.g. `kept_norm_fraction`).
        public var measures: [String: Double]?
        /// The input's shape, for a tensor a structured pattern made smaller (`shape`,
        /// `elements`, `zeros` and `sha256_dense` describe the output's tensor).
        public var sourceShape: [Int]?
        /// A tensor the job added, not in the input (FLAP's compensation bias, or a zero
        /// bias its config flag requires).
        public var added: Bool = false

        enum CodingKeys: String, CodingKey {
            case shape, dtype, pruned, pattern, method, elements, zeros, masked
            case targetSparsity = "target_sparsity"
            case achievedSparsity = "achieved_sparsity"
            case sha256Dense = "sha256_dense"
            case sha256Sparse = "sha256_sparse"
            case reconstructionError = "reconstruction_error"
            case valuesUpdated = "values_updated"
            case measures
            case sourceShape = "source_shape"
            case added
        }

        public init(shape: [Int], dtype: String, pruned: Bool, pattern: String?, method: String?, targetSparsity: Double?,
                    achievedSparsity: Double, masked: Int, zeros: Int, elements: Int, sha256Dense: String, sha256Sparse: String,
                    reconstructionError: Double?, valuesUpdated: Bool = false) {
            self.shape = shape
            self.dtype = dtype
            self.pruned = pruned
            self.pattern = pattern
            self.method = method
            self.targetSparsity = targetSparsity
            self.achievedSparsity = achievedSparsity
            self.masked = masked
            self.zeros = zeros
            self.elements = elements
            self.sha256Dense = sha256Dense
            self.sha256Sparse = sha256Sparse
            self.reconstructionError = reconstructionError
            self.valuesUpdated = valuesUpdated
        }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            shape = try c.decode([Int].self, forKey: .shape)
            dtype = try c.decode(String.self, forKey: .dtype)
            pruned = try c.decode(Bool.self, forKey: .pruned)
            pattern = try c.decodeIfPresent(String.self, forKey: .pattern)
            method = try c.decodeIfPresent(String.self, forKey: .method)
            targetSparsity = try c.decodeIfPresent(Double.self, forKey: .targetSparsity)
            achievedSparsity = try c.decode(Double.self, forKey: .achievedSparsity)
            masked = try c.decode(Int.self, forKey: .masked)
            zeros = try c.decode(Int.self, forKey: .zeros)
            elements = try c.decode(Int.self, forKey: .elements)
            sha256Dense = try c.decode(String.self, forKey: .sha256Dense)
            sha256Sparse = try c.decode(String.self, forKey: .sha256Sparse)
            reconstructionError = try c.decodeIfPresent(Double.self, forKey: .reconstructionError)
            valuesUpdated = try c.decodeIfPresent(Bool.self, forKey: .valuesUpdated) ?? false
            measures = try c.decodeIfPresent([String: Double].self, forKey: .measures)
            sourceShape = try c.decodeIfPresent([Int].self, forKey: .sourceShape)
            added = try c.decodeIfPresent(Bool.self, forKey: .added) ?? false
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(shape, forKey: .shape)
            try c.encode(dtype, forKey: .dtype)
            try c.encode(pruned, forKey: .pruned)
            try c.encodeIfPresent(pattern, forKey: .pattern)
            try c.encodeIfPresent(method, forKey: .method)
            try c.encodeIfPresent(targetSparsity, forKey: .targetSparsity)
            try c.encode(achievedSparsity, forKey: .achievedSparsity)
            try c.encode(masked, forKey: .masked)
            try c.encode(zeros, forKey: .zeros)
            try c.encode(elements, forKey: .elements)
            try c.encode(sha256Dense, forKey: .sha256Dense)
            try c.encode(sha256Sparse, forKey: .sha256Sparse)
            // Always present, null when not computed, so readers need not guess.
            if let reconstructionError { try c.encode(reconstructionError, forKey: .reconstructionError) } else { try c.encodeNil(forKey: .reconstructionError) }
            try c.encodeIfPresent(measures, forKey: .measures)
            if valuesUpdated { try c.encode(true, forKey: .valuesUpdated) }
            try c.encodeIfPresent(sourceShape, forKey: .sourceShape)
            if added { try c.encode(true, forKey: .added) }
        }
    }

    public struct Totals: Codable, Sendable, Equatable {
        /// Bytes of the safetensors files in dense/ and sparse/.
        public var denseBytes: Int
        public var sparseBytes: Int
        public var sparseToDenseRatio: Double
        /// The same, counting only the pruned tensors.
        public var prunedDenseBytes: Int
        public var prunedSparseBytes: Int
        public var prunedSparseToDenseRatio: Double
        public var parameters: Int
        public var prunedParameters: Int
        public var zeros: Int

        enum CodingKeys: String, CodingKey {
            case denseBytes = "dense_bytes", sparseBytes = "sparse_bytes", sparseToDenseRatio = "sparse_to_dense_ratio"
            case prunedDenseBytes = "pruned_dense_bytes", prunedSparseBytes = "pruned_sparse_bytes"
            case prunedSparseToDenseRatio = "pruned_sparse_to_dense_ratio"
            case parameters, prunedParameters = "pruned_parameters", zeros
        }
    }

    public var format = "prune-cluster/manifest"
    public var version = 1
    public var specSHA256: String
    public var method: String
    public var pattern: String
    public var sparsity: Double
    /// Shard file name → sha256 of the input file.
    public var modelFiles: [String: String]
    public var tensors: [String: Tensor]
    public var totals: Totals
    /// A searched allocation's progress (`allocation: evolutionary`); absent otherwise.
    public var search: Search?

    /// Masked training (`train:`); absent otherwise.
    public var training: Training?

    /// What training did, epoch by epoch.
    public struct Training: Codable, Sendable, Equatable {
        public struct Epoch: Codable, Sendable, Equatable {
            public var epoch: Int
            /// Mean cross-entropy (per example, or per scored token for a language model)
            /// and accuracy (a classifier's) over the epoch's batches, as the weights moved.
            public var trainLoss: Double
            public var trainAccuracy: Double?
            /// Top-1 accuracy of the weights at the epoch's end on the evaluation data (classifier).
            public var testAccuracy: Double?
            /// Perplexity of the weights at the epoch's end on the evaluation windows (language model).
            public var testPerplexity: Double?
            /// A schedule's level in this epoch (its round's).
            public var sparsity: Double?
            enum CodingKeys: String, CodingKey {
                case epoch, sparsity
                case trainLoss = "train_loss", trainAccuracy = "train_accuracy", testAccuracy = "test_accuracy", testPerplexity = "test_perplexity"
            }
        }
        public var optimizer: String
        public var learningRate: Double
        public var batch: Int
        public var shards: Int
        public var examples: Int
        public var stepsPerEpoch: Int
        public var epochs: [Epoch]
        /// An adaptive schedule's rounds and the level it settled on.
        public var adaptive: Adaptive?
        /// A language model's perplexity on the evaluation windows where fine-tuning
        /// started: the checkpoint's weights under the masks.
        public var startPerplexity: Double?
        enum CodingKeys: String, CodingKey {
            case optimizer, batch, shards, examples, epochs, adaptive
            case learningRate = "learning_rate", stepsPerEpoch = "steps_per_epoch", startPerplexity = "start_perplexity"
        }

        /// `schedule: {method: adaptive}`: each round's level and validation accuracy, and
        /// the highest level whose accuracy stayed within the budget of the start's.
        public struct Adaptive: Codable, Sendable, Equatable {
            public struct Round: Codable, Sendable, Equatable {
                public var round: Int
                public var sparsity: Double
                /// The round whose end state it pruned (−1: the start).
                public var baseRound: Int
                public var validationAccuracy: Double?
                public var met: Bool?
                enum CodingKeys: String, CodingKey {
                    case round, sparsity, met
                    case baseRound = "base_round", validationAccuracy = "validation_accuracy"
                }
            }
            /// The accuracy a round may lose against the reference (0.01: one point).
            public var budget: Double
            public var validationExamples: Int
            /// The start's accuracy on the validation examples.
            public var referenceAccuracy: Double
            public var rounds: [Round]
            /// The round whose weights and masks the job wrote (nil: none met the budget,
            /// the last round's were written).
            public var chosenRound: Int?
            /// The level of the weights written.
            public var sparsity: Double
            enum CodingKeys: String, CodingKey {
                case budget, rounds, sparsity
                case validationExamples = "validation_examples", referenceAccuracy = "reference_accuracy", chosenRound = "chosen_round"
            }
        }
    }

    /// The parent's fitness after each generation of an evolutionary search: the mean KL
    /// divergence of its next-token distribution from the dense model's, on that
    /// generation's last (largest) token sample.
    public struct Search: Codable, Sendable, Equatable {
        public struct Generation: Codable, Sendable, Equatable {
            public var generation: Int
            public var fitness: Double
            /// Tokens the fitness was measured on.
            public var tokens: Int
            /// Candidate evaluations the generation ran.
            public var candidates: Int
        }
        public var method: String
        /// Steps of the level grid each way, and the weights one step moves.
        public var levels: Int
        public var stepWeights: Double
        public var generations: [Generation]

        enum CodingKeys: String, CodingKey {
            case method, levels, generations
            case stepWeights = "step_weights"
        }
    }

    /// What a structured pattern removed: the units every block kept.
    public var structure: Structure?

    /// A structured job's units (`pattern: channels`, `heads` or `heads+channels`).
    public struct Structure: Codable, Sendable, Equatable {
        /// channels | heads | heads+channels
        public var kind: String
        /// How units were scored: l2 | wanda | taylor | fisher | flap.
        public var score: String
        /// One kind of unit: the units of each block, how many it keeps, and rows (or
        /// columns) per unit in each tensor (1 for a channel, head_dim for a head); the same
        /// as `parts`' one entry. Absent when the job removed two kinds.
        public var unitsPerBlock: Int?
        public var keptPerBlock: Int?
        public var width: Int?
        /// Per kind, in the order of its groups within a block (heads, then channels).
        /// Absent in manifests written before two kinds were possible (then: `kind`, the
        /// fields above and the manifest's sparsity).
        public var parts: [Part]?
        /// The kept unit indices of each group, ascending: per block in block order, one
        /// group per kind in `parts` order.
        public var kept: [[Int]]
        public var parametersBefore: Int
        public var parametersAfter: Int
        /// `global` when every block's units were ranked together (per-layer widths);
        /// absent when every block keeps the same number.
        public var allocation: String?
        /// A global allocation's standardization of the scores: zscore | robust.
        public var standardization: String?

        /// One kind of unit of a structured job.
        public struct Part: Codable, Sendable, Equatable {
            public var kind: String
            /// The fraction of each block's units of this kind removed (with a global
            /// allocation: of all the blocks' units of this kind together).
            public var sparsity: Double
            public var unitsPerBlock: Int
            /// Units every block keeps; nil with a global allocation (then `keptPerLayer`).
            public var keptPerBlock: Int?
            public var width: Int
            /// A global allocation's kept units per block, in block order.
            public var keptPerLayer: [Int]?

            public init(kind: String, sparsity: Double, unitsPerBlock: Int, keptPerBlock: Int?, width: Int, keptPerLayer: [Int]? = nil) {
                self.kind = kind
                self.sparsity = sparsity
                self.unitsPerBlock = unitsPerBlock
                self.keptPerBlock = keptPerBlock
                self.width = width
                self.keptPerLayer = keptPerLayer
            }

            enum CodingKeys: String, CodingKey {
                case kind, sparsity, width
                case unitsPerBlock = "units_per_block", keptPerBlock = "kept_per_block", keptPerLayer = "kept_per_layer"
            }
        }

        /// Each kind's part: `parts`, or for an older manifest the one kind it describes.
        public func allParts(sparsity: Double) -> [Part] {
            if let parts { return parts }
            return [Part(kind: kind, sparsity: sparsity, unitsPerBlock: unitsPerBlock ?? 0, keptPerBlock: keptPerBlock ?? 0, width: width ?? 0)]
        }

        /// "16 of 24 heads and 1075 of 1536 channels".
        public func keptText(sparsity: Double) -> String {
            allParts(sparsity: sparsity).map { part in
                let kept = part.keptPerBlock.map(String.init) ?? part.keptPerLayer.map { "\($0.min() ?? 0)–\($0.max() ?? 0)" } ?? "?"
                return "\(kept) of \(part.unitsPerBlock) \(part.kind)"
            }.joined(separator: " and ")
        }

        enum CodingKeys: String, CodingKey {
            case kind, score, width, kept, parts, allocation, standardization
            case unitsPerBlock = "units_per_block", keptPerBlock = "kept_per_block"
            case parametersBefore = "parameters_before", parametersAfter = "parameters_after"
        }
    }

    enum CodingKeys: String, CodingKey {
        case format, version, method, pattern, sparsity, tensors, totals, search, training, structure
        case specSHA256 = "spec_sha256"
        case modelFiles = "model_files"
    }

    public func jsonBytes() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return [UInt8](try encoder.encode(self)) + [0x0A]
    }

    public static func load(path: String) throws -> Manifest {
        let data: Data
        do {
            // ~500 bytes per tensor: room for checkpoints of several hundred thousand tensors.
            data = try SmallFile.read(path, limit: 256 << 20)
        } catch .unreadable {
            throw SpecError("\(path): cannot read the manifest")
        } catch {
            throw SpecError("\(path): \(error.describe("the manifest"))")
        }
        let manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: data)
        } catch {
            throw SpecError("\(path): not a prune-cluster manifest (\(String(describing: error).prefix(200)))")
        }
        guard manifest.format == "prune-cluster/manifest", manifest.version == 1 else {
            throw SpecError("\(path): format '\(manifest.format)' version \(manifest.version) is not prune-cluster/manifest version 1")
        }
        return manifest
    }
}
