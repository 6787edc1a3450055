import Foundation
import Tensors

/// `prune inspect`: a checkpoint's tensors (dtype, shape, parameters, bytes, the share of
/// zero elements, the file), rendered as a table or encoded as JSON, as `JobStatus` is.
public struct Inventory: Codable, Sendable {
    public struct Tensor: Codable, Sendable {
        public let name: String
        public let dtype: String
        public let shape: [Int]
        public let parameters: Int
        public let bytes: Int
        /// Zero elements / elements (0 for non-float tensors and empty ones).
        public let sparsity: Double
        public let file: String
    }

    public let tensors: [Tensor]
    public let parameters: Int
    public let bytes: Int
    public let files: [String]
    /// Zero elements over all float tensors / all parameters.
    public let zeros: Int

    /// Reads every tensor once (to count zeros), releasing its pages after.
    public init(_ checkpoint: Checkpoint) {
        var tensors: [Tensor] = []
        var totalZeros = 0
        for t in checkpoint.tensors {
            let zeros = t.dtype.isFloat ? TensorPruner.zeroCount(checkpoint.bytes(t), elementSize: t.dtype.size) : 0
            checkpoint.shard(of: t.name)?.release(t)
            totalZeros += zeros
            tensors.append(Tensor(name: t.name, dtype: t.dtype.rawValue, shape: t.shape, parameters: t.elementCount, bytes: t.byteCount,
                                  sparsity: t.elementCount == 0 ? 0 : Double(zeros) / Double(t.elementCount),
                                  file: checkpoint.shardName(of: t.name)!))
        }
        self.tensors = tensors
        parameters = checkpoint.parameterCount
        bytes = checkpoint.byteCount
        files = checkpoint.shardNames
        zeros = totalZeros
    }

    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// A table, one line per tensor, and a total line.
    public func render() -> String {
        let nameWidth = min(max(tensors.map(\.name.count).max() ?? 4, 4), 70)
        var lines = ["\("tensor".padding(toLength: nameWidth, withPad: " ", startingAt: 0))  dtype  shape                 parameters        bytes  sparsity"]
        for t in tensors {
            let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
            lines.append(String(format: "%@  %@  %@ %11ld %12ld  %7.2f%%", t.name.padding(toLength: nameWidth, withPad: " ", startingAt: 0),
                                t.dtype.padding(toLength: 5, withPad: " ", startingAt: 0), shape.padding(toLength: max(20, shape.count), withPad: " ", startingAt: 0),
                                t.parameters, t.bytes, 100 * t.sparsity))
        }
        lines.append(String(format: "%ld tensors in %ld file(s), %ld parameters, %ld bytes, %.2f%% zeros",
                            tensors.count, files.count, parameters, bytes, 100 * Double(zeros) / Double(max(parameters, 1))))
        return lines.joined(separator: "\n")
    }
}
