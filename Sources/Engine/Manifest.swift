import Foundation

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

        enum CodingKeys: String, CodingKey {
            case shape, dtype, pruned, pattern, method, elements, zeros, masked
            case targetSparsity = "target_sparsity"
            case achievedSparsity = "achieved_sparsity"
            case sha256Dense = "sha256_dense"
            case sha256Sparse = "sha256_sparse"
            case reconstructionError = "reconstruction_error"
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

    enum CodingKeys: String, CodingKey {
        case format, version, method, pattern, sparsity, tensors, totals
        case specSHA256 = "spec_sha256"
        case modelFiles = "model_files"
    }

    public func jsonBytes() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return [UInt8](try encoder.encode(self)) + [0x0A]
    }

    public static func load(path: String) throws -> Manifest {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SpecError("\(path): cannot read the manifest")
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
