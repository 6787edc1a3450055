import Foundation
import Pruning
import Tensors

/// Names and tensors of the sparse output (compressed-tensors' sparse-bitmask layout).
public enum SparseLayout {
    public static let suffixes = [".bitmask", ".compressed", ".row_offsets", ".shape"]

    /// The four tensor specs standing for one pruned tensor.
    public static func specs(name: String, dtype: DType, shape: [Int], stored: Int) -> [TensorSpec] {
        let rows = MatrixView.rows(shape)
        let cols = MatrixView.cols(shape)
        return [
            TensorSpec(name: name + ".bitmask", dtype: .u8, shape: [rows, (cols + 7) / 8]),
            TensorSpec(name: name + ".compressed", dtype: dtype, shape: [stored]),
            TensorSpec(name: name + ".row_offsets", dtype: .i64, shape: [rows]),
            TensorSpec(name: name + ".shape", dtype: .i64, shape: [shape.count]),
        ]
    }

    /// The bytes of the four parts, in spec order.
    public static func parts(_ s: SparseBitmaskTensor) -> [[UInt8]] {
        [s.bitmask, s.compressed, int64Bytes(s.rowOffsets), int64Bytes(s.shape.map(Int64.init))]
    }

    public static func int64Bytes(_ values: [Int64]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: values.count * 8)
        out.withUnsafeMutableBytes { raw in
            for (i, v) in values.enumerated() { raw.storeBytes(of: v.littleEndian, toByteOffset: i * 8, as: Int64.self) }
        }
        return out
    }

    public static func int64s(_ raw: UnsafeRawBufferPointer) -> [Int64] {
        (0..<(raw.count / 8)).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
    }

    /// `model.safetensors.index.json` for a sharded output: total size and weight map,
    /// keys sorted, so the same tensors always give the same bytes.
    public static func indexJSON(weightMap: [String: String], totalSize: Int) -> [UInt8] {
        var s = "{\n  \"metadata\": {\n    \"total_size\": \(totalSize)\n  },\n  \"weight_map\": {\n"
        s += weightMap.keys.sorted().map { "    \(SafeTensorsWriter.jsonString($0)): \(SafeTensorsWriter.jsonString(weightMap[$0]!))" }.joined(separator: ",\n")
        s += "\n  }\n}\n"
        return Array(s.utf8)
    }
}
