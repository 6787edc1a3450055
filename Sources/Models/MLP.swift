import COpenBLAS
import Foundation
import Tensors

/// A multilayer perceptron classifier's description, read from `mlp.json` beside the
/// checkpoint (see docs/mlp.md):
///
///     {"architecture": "mlp", "input": 784,
///      "layers": [{"weight": "fc1.weight", "bias": "fc1.bias", "activation": "relu"},
///                 {"weight": "fc2.weight", "bias": "fc2.bias"}],
///      "labels": ["T-shirt/top", ...]}
///
/// Layer i computes y = x·Wᵢᵀ + bᵢ followed by its activation; the last layer's outputs are
/// the class logits. Weight shapes come from the checkpoint and are checked to chain.
public struct MLPConfig: Sendable, Equatable {
    /// What follows a Linear layer.
    public enum Activation: String, Sendable, CaseIterable {
        case none
        case relu
        /// The exact (erf) form, PyTorch's default: 0.5·x·(1 + erf(x/√2)).
        case gelu
    }

    /// One Linear layer: tensor names in the checkpoint and the activation after it.
    public struct Layer: Sendable, Equatable {
        public var weight: String
        public var bias: String?
        public var activation: Activation
        public init(weight: String, bias: String? = nil, activation: Activation = .none) {
            self.weight = weight
            self.bias = bias
            self.activation = activation
        }
    }

    public static let fileName = "mlp.json"
    static let keys = ["architecture", "input", "layers", "classes", "labels"]
    static let layerKeys = ["weight", "bias", "activation"]

    /// Features per example (the first weight's in_features).
    public var input: Int
    public var layers: [Layer]
    /// Class names, when given; their count must equal the last layer's out_features.
    public var labels: [String]?
    /// Number of classes, when given (checked against the last layer and `labels`).
    public var classes: Int?

    public init(input: Int, layers: [Layer], labels: [String]? = nil, classes: Int? = nil) {
        self.input = input
        self.layers = layers
        self.labels = labels
        self.classes = classes
    }

    /// True when a model directory describes an MLP (holds `mlp.json`).
    public static func exists(in directory: String) -> Bool {
        FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent(fileName))
    }

    /// Reads `mlp.json` from a model directory (or the file itself).
    public static func load(_ path: String) throws -> MLPConfig {
        var file = path
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            file = (path as NSString).appendingPathComponent(fileName)
        }
        let data: Data
        do {
            data = try SmallFile.read(file, limit: 1 << 20)
        } catch .unreadable {
            throw ModelError("\(file): cannot read the MLP config")
        } catch {
            throw ModelError("\(file): \(error.describe("the MLP config"))")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data), let json = object as? [String: Any] else {
            throw ModelError("\(file): not a JSON object")
        }
        return try parse(json, file: file)
    }

    /// Validates a parsed `mlp.json`; `file` names it in errors.
    public static func parse(_ json: [String: Any], file: String) throws -> MLPConfig {
        for key in json.keys.sorted() where !keys.contains(key) {
            throw ModelError("\(file): unknown key '\(key)' (known keys: \(keys.joined(separator: ", ")))")
        }
        guard let architecture = json["architecture"] as? String else {
            throw ModelError("\(file): missing string 'architecture' (must be \"mlp\")")
        }
        guard architecture == "mlp" else {
            throw ModelError("\(file): architecture: '\(architecture)' is not supported here (must be \"mlp\")")
        }
        let input = try positiveInt(json["input"], key: "input", file: file, required: true)!
        let classes = try positiveInt(json["classes"], key: "classes", file: file, required: false)
        guard let items = json["layers"] as? [Any] else {
            throw ModelError("\(file): missing list 'layers' (each {\"weight\": NAME, \"bias\": NAME, \"activation\": \"relu\"})")
        }
        guard !items.isEmpty else { throw ModelError("\(file): layers: the list is empty") }
        let layers = try items.enumerated().map { try parseLayer($1, key: "layers[\($0)]", file: file) }
        var labels: [String]?
        if let raw = json["labels"] {
            guard let names = raw as? [String] else { throw ModelError("\(file): labels: must be a list of strings") }
            labels = names
        }
        if let classes, let labels, labels.count != classes {
            throw ModelError("\(file): labels: \(labels.count) names but classes is \(classes)")
        }
        return MLPConfig(input: input, layers: layers, labels: labels, classes: classes)
    }

    private static func parseLayer(_ item: Any, key: String, file: String) throws -> Layer {
        guard let m = item as? [String: Any] else {
            throw ModelError("\(file): \(key): must be an object {\"weight\": NAME, \"bias\": NAME, \"activation\": ...}")
        }
        for k in m.keys.sorted() where !layerKeys.contains(k) {
            throw ModelError("\(file): \(key): unknown key '\(k)' (known keys: \(layerKeys.joined(separator: ", ")))")
        }
        guard let weight = m["weight"] as? String, !weight.isEmpty else {
            throw ModelError("\(file): \(key).weight: missing tensor name")
        }
        var bias: String?
        if let raw = m["bias"], !(raw is NSNull) {
            guard let b = raw as? String, !b.isEmpty else { throw ModelError("\(file): \(key).bias: must be a tensor name or null") }
            bias = b
        }
        var activation = Activation.none
        if let raw = m["activation"], !(raw is NSNull) {
            guard let name = raw as? String, let a = Activation(rawValue: name.lowercased()) else {
                throw ModelError("\(file): \(key).activation: '\(raw)' is not one of \(Activation.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            activation = a
        }
        return Layer(weight: weight, bias: bias, activation: activation)
    }

    private static func positiveInt(_ raw: Any?, key: String, file: String, required: Bool) throws -> Int? {
        guard let raw else {
            if required { throw ModelError("\(file): missing integer '\(key)'") }
            return nil
        }
        // JSONSerialization gives NSNumber; true/false are NSNumbers of C type char ("c").
        guard let n = raw as? NSNumber, String(cString: n.objCType) != "c",
              n.doubleValue == n.doubleValue.rounded(), n.doubleValue >= 1, n.doubleValue < 1e12 else {
            throw ModelError("\(file): \(key): must be a positive integer, is \(raw)")
        }
        return n.intValue
    }
}

/// An MLP classifier in F32: Linear layers (+ bias) with ReLU or GELU between them,
/// run over a batch of rows with OpenBLAS sgemm.
public final class MLPModel: @unchecked Sendable {
    /// One loaded layer: weight out × in (row-major, as stored), optional bias [out].
    public struct Layer: Sendable {
        public let name: String
        public let inFeatures: Int
        public let outFeatures: Int
        public let activation: MLPConfig.Activation
        let weight: [Float]
        let bias: [Float]?
    }

    public let config: MLPConfig
    public let layers: [Layer]

    /// Number of classes: the last layer's out_features.
    public var classes: Int { layers.last!.outFeatures }

    /// Loads every layer from `store`, checking that each weight is a floating 2-D tensor,
    /// that in_features chain from `config.input`, and that each bias is [out_features].
    /// `file` (the mlp.json path) names the config in errors.
    public init(config: MLPConfig, store: WeightStore, file: String = MLPConfig.fileName) throws {
        self.config = config
        var width = config.input
        var loaded: [Layer] = []
        for (i, l) in config.layers.enumerated() {
            let key = "\(file): layers[\(i)]"
            let (weightShape, source) = try MLPModel.shape(of: l.weight, key: key + ".weight", store: store)
            guard weightShape.count == 2 else {
                throw ModelError("\(key).weight: tensor '\(l.weight)' in \(source) has shape \(weightShape), a Linear weight must be 2-D [out, in]")
            }
            guard weightShape[1] == width else {
                let from = i == 0 ? "'input' is \(width)" : "layers[\(i - 1)] has \(width) outputs"
                throw ModelError("\(key).weight: tensor '\(l.weight)' in \(source) has shape \(weightShape), but \(from) (expected [*, \(width)])")
            }
            let out = weightShape[0]
            let weight = try store.load(l.weight, shape: weightShape)
            var bias: [Float]?
            if let b = l.bias {
                let (biasShape, biasSource) = try MLPModel.shape(of: b, key: key + ".bias", store: store)
                guard biasShape == [out] else {
                    throw ModelError("\(key).bias: tensor '\(b)' in \(biasSource) has shape \(biasShape), expected [\(out)]")
                }
                bias = try store.load(b, shape: [out])
            }
            loaded.append(Layer(name: l.weight, inFeatures: width, outFeatures: out, activation: l.activation, weight: weight, bias: bias))
            width = out
        }
        if let classes = config.classes, classes != width {
            throw ModelError("\(file): classes: \(classes), but the last layer has \(width) outputs")
        }
        if let labels = config.labels, labels.count != width {
            throw ModelError("\(file): labels: \(labels.count) names, but the last layer has \(width) outputs")
        }
        layers = loaded
    }

    /// Opens a model directory: `mlp.json` and the checkpoint beside it.
    public convenience init(directory: String) throws {
        let file = (directory as NSString).appendingPathComponent(MLPConfig.fileName)
        try self.init(config: try MLPConfig.load(file), store: WeightStore(checkpoint: try Checkpoint(path: directory)), file: file)
    }

    private static func shape(of name: String, key: String, store: WeightStore) throws -> ([Int], String) {
        guard let checkpoint = store.checkpoint else {
            // A task's tensors (a worker): the reader knows the shapes; it refuses non-float dtypes.
            guard let shape = store.reader.shape(of: name) else { throw ModelError("\(key): no tensor named '\(name)' in \(store.reader.location)") }
            return (shape, store.reader.location)
        }
        guard let info = checkpoint.info(name), let shard = checkpoint.shard(of: name) else {
            throw ModelError("\(key): no tensor named '\(name)' in \(checkpoint.directory)")
        }
        guard info.dtype.isFloat else {
            throw ModelError("\(key): tensor '\(name)' in \(shard.path) is \(info.dtype.rawValue), expected F32, F16 or BF16")
        }
        return (info.shape, shard.path)
    }

    /// Logits for a batch: `x` is rows × input (row-major), the result rows × classes.
    /// `hook` sees each Linear's input (rows × in_features) before the layer runs.
    public func forward(_ x: [Float], rows: Int, hook: LinearInputHook? = nil) throws -> [Float] {
        guard rows >= 0, x.count == rows * config.input else {
            throw ModelError("MLP input has \(x.count) values, expected \(rows) rows × \(config.input)")
        }
        var current = x
        for layer in layers {
            var next = [Float](repeating: 0, count: rows * layer.outFeatures)
            guard rows > 0 else { current = next; continue }
            current.withUnsafeBufferPointer { input in
                hook?(layer.name, input, rows)
                layer.weight.withUnsafeBufferPointer { w in
                    next.withUnsafeMutableBufferPointer { y in
                        if let bias = layer.bias {
                            bias.withUnsafeBufferPointer { b in
                                linear(input.baseAddress!, tokens: rows, weight: w.baseAddress!, bias: b.baseAddress!,
                                       inFeatures: layer.inFeatures, outFeatures: layer.outFeatures, into: y.baseAddress!)
                            }
                        } else {
                            linear(input.baseAddress!, tokens: rows, weight: w.baseAddress!, bias: nil,
                                   inFeatures: layer.inFeatures, outFeatures: layer.outFeatures, into: y.baseAddress!)
                        }
                    }
                }
            }
            MLPModel.apply(layer.activation, to: &next)
            current = next
        }
        return current
    }

    /// The index of the largest logit of each row (the first on ties).
    public static func argmax(_ logits: [Float], rows: Int, classes: Int) -> [Int] {
        (0..<rows).map { r in
            var best = 0
            var bestValue = logits[r * classes]
            for c in 1..<max(classes, 1) where logits[r * classes + c] > bestValue {
                best = c
                bestValue = logits[r * classes + c]
            }
            return best
        }
    }

    static func apply(_ activation: MLPConfig.Activation, to values: inout [Float]) {
        switch activation {
        case .none:
            return
        case .relu:
            values.withUnsafeMutableBufferPointer { v in for i in v.indices where v[i] < 0 { v[i] = 0 } }
        case .gelu:
            let invSqrt2 = Float(1 / 2.0.squareRoot())
            values.withUnsafeMutableBufferPointer { v in for i in v.indices { v[i] = 0.5 * v[i] * (1 + erff(v[i] * invSqrt2)) } }
        }
    }
}
