import Foundation
import Models
import Pruning
import Tensors

/// A fresh MLP classifier for `train:` to start from (`prune init-mlp`): Linear layers
/// input → hidden… → classes, with PyTorch's default `nn.Linear` initialisation (weight and
/// bias uniform in ±1/√in_features), drawn from a seeded stream so the same arguments
/// write the same bytes. Written as model.safetensors (F32) and mlp.json.
public enum MLPInit {
    public static let maxWidth = 1 << 16
    public static let maxLayers = 64

    public struct Options: Sendable {
        public var input: Int
        public var hidden: [Int]
        public var classes: Int
        public var activation: MLPConfig.Activation = .relu
        public var seed: UInt64 = 0
        public var labels: [String]?
        public init(input: Int, hidden: [Int], classes: Int) {
            self.input = input
            self.hidden = hidden
            self.classes = classes
        }
    }

    /// Writes the model into `directory` (created; it must not hold a model already).
    public static func write(_ o: Options, to directory: String) throws {
        let widths = [o.input] + o.hidden + [o.classes]
        guard widths.allSatisfy({ $0 >= 1 && $0 <= maxWidth }), o.hidden.count < maxLayers else {
            throw SpecError("init-mlp: every width must be in 1...\(maxWidth), at most \(maxLayers - 1) hidden layers")
        }
        if let labels = o.labels, labels.count != o.classes {
            throw SpecError("init-mlp: \(labels.count) labels for \(o.classes) classes")
        }
        let fm = FileManager.default
        let model = (directory as NSString).appendingPathComponent("model.safetensors")
        let config = (directory as NSString).appendingPathComponent(MLPConfig.fileName)
        guard !fm.fileExists(atPath: model), !fm.fileExists(atPath: config) else {
            throw SpecError("\(directory): already holds a model (model.safetensors or mlp.json); choose a new directory")
        }
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var specs: [TensorSpec] = [], values: [[Float]] = [], layers: [[String: Any]] = []
        for l in 0..<(widths.count - 1) {
            let inF = widths[l], out = widths[l + 1], bound = 1 / Float(inF).squareRoot()
            var random = SeededRandom(seed: o.seed, stream: "init-mlp", UInt64(l))
            func uniform(_ n: Int) -> [Float] {
                (0..<n).map { _ in (Float(random.next() >> 40) / Float(1 << 24) * 2 - 1) * bound }
            }
            specs.append(TensorSpec(name: "fc\(l + 1).weight", dtype: .f32, shape: [out, inF]))
            values.append(uniform(out * inF))
            specs.append(TensorSpec(name: "fc\(l + 1).bias", dtype: .f32, shape: [out]))
            values.append(uniform(out))
            var layer: [String: Any] = ["weight": "fc\(l + 1).weight", "bias": "fc\(l + 1).bias"]
            if l < widths.count - 2 { layer["activation"] = o.activation.rawValue }
            layers.append(layer)
        }
        let writer = try SafeTensorsWriter(path: model, tensors: specs, metadata: ["format": "pt"])
        for v in values { try v.withUnsafeBytes { try writer.write($0) } }
        try writer.finish()
        var json: [String: Any] = ["architecture": "mlp", "input": o.input, "layers": layers, "classes": o.classes]
        if let labels = o.labels { json["labels"] = labels }
        try AtomicFileWriter.write([UInt8](try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])), to: config)
    }
}
