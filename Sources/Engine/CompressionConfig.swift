import Foundation
import Pruning
import Tensors

/// The `quantization_config` block that tells compressed-tensors (and transformers, through
/// it) that `sparse/` holds sparse-bitmask weights: the fields and names
/// `ModelCompressor.update_config` of compressed-tensors 0.14.0.1 writes, keys sorted as
/// its `json.dump(..., sort_keys=True)` sorts them.
///
/// The block is added to the input's config.json as text, after its opening brace, so
/// every other byte of the user's config stays as it was (a JSON round trip could rewrite
/// numbers such as `1e-05`); `prune densify` takes it out again the same way.
public struct CompressionConfig: Sendable, Equatable {
    /// compressed-tensors' version string the block names (the last release with the
    /// sparse-bitmask compressor).
    public static let version = "0.14.0.1"

    /// Fraction of all the model's parameters that are zero.
    public var globalSparsity: Double
    /// "2:4", "N:M" or "unstructured".
    public var sparsityStructure: String
    /// The modules whose weights are stored compressed (their names, as module paths).
    public var targets: [String]

    public init(globalSparsity: Double, sparsityStructure: String, targets: [String]) {
        self.globalSparsity = globalSparsity
        self.sparsityStructure = sparsityStructure
        self.targets = targets
    }

    /// compressed-tensors' name for a pattern's structure (`SparsityStructure`): N:M
    /// patterns by their N:M, everything else "unstructured".
    public static func structure(of pattern: SparsityPattern) -> String {
        if case .nm(let n, let m) = pattern { return "\(n):\(m)" }
        return "unstructured"
    }

    /// The block as compressed-tensors writes it (indent 2, nested one level).
    var json: String {
        let targetList = targets.isEmpty ? "[]" : "[\n" + targets.map { "        \(SafeTensorsWriter.jsonString($0))" }.joined(separator: ",\n") + "\n      ]"
        return """
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "sparsity_config": {
              "format": "sparse-bitmask",
              "global_sparsity": \(Self.number(globalSparsity)),
              "ignore": [],
              "sparsity_structure": \(SafeTensorsWriter.jsonString(sparsityStructure)),
              "targets": \(targetList)
            },
            "transform_config": {},
            "version": "\(Self.version)"
          }
        """
    }

    /// A double as JSON: shortest round-trip form.
    private static func number(_ x: Double) -> String {
        x.isFinite ? "\(x)" : "0.0"
    }

    /// `config` (a config.json's text) with this block added as its first key. Throws when
    /// the text is not a JSON object; a `quantization_config` already there is replaced.
    public func added(to config: [UInt8], file: String) throws -> [UInt8] {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(config))) as? [String: Any] else {
            throw SpecError("\(file): not a JSON object; cannot add the sparsity config")
        }
        var text = String(decoding: config, as: UTF8.self)
        if object["quantization_config"] != nil { text = try CompressionConfig.removed(from: config, file: file).text }
        guard let brace = text.firstIndex(of: "{") else { throw SpecError("\(file): not a JSON object") }
        let rest = text[text.index(after: brace)...]
        let empty = rest.trimmingCharacters(in: .whitespacesAndNewlines) == "}"
        return Array((text[...brace] + "\n  " + json + (empty ? "\n" : ",") + rest).utf8)
    }

    /// `config` without its `quantization_config` (for a dense checkpoint rebuilt from
    /// sparse/): the block this type writes is cut out as text; any other is removed by a
    /// JSON round trip.
    public static func removed(from config: [UInt8], file: String) throws -> (bytes: [UInt8], text: String) {
        let text = String(decoding: config, as: UTF8.self)
        guard var object = (try? JSONSerialization.jsonObject(with: Data(config))) as? [String: Any] else {
            throw SpecError("\(file): not a JSON object")
        }
        guard object["quantization_config"] != nil else { return (config, text) }
        if let start = text.range(of: "\n  \"quantization_config\": {\n    \"quant_method\": \"compressed-tensors\""),
           let end = text.range(of: "\n    \"version\": \"\(version)\"\n  }", range: start.upperBound..<text.endIndex) {
            var after = end.upperBound
            if after < text.endIndex, text[after] == "," { after = text.index(after: after) }
            let cut = String(text[..<start.lowerBound] + text[after...])
            if (try? JSONSerialization.jsonObject(with: Data(cut.utf8))) != nil { return (Array(cut.utf8), cut) }
        }
        object["quantization_config"] = nil
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        return ([UInt8](data), String(decoding: data, as: UTF8.self))
    }
}
