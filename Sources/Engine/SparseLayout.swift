import Foundation
import Pruning
import Tensors

/// Names and tensors of the sparse output: compressed-tensors' sparse-bitmask format, as
/// its `BitmaskCompressor` (0.14.0.1) writes it. A module's weight `X.weight` is stored as
/// `X.bitmask`, `X.compressed`, `X.row_offsets` and `X.shape` (the parts are named after
/// the module, not the weight); only tensors named `….weight` are compressed, as
/// compressed-tensors compresses only those.
public enum SparseLayout {
    public static let suffixes = [".bitmask", ".compressed", ".row_offsets", ".shape"]

    /// The module name a pruned tensor's parts are named after, or nil when the tensor
    /// is not a `.weight` (it is then stored as it is, zeros included).
    public static func partPrefix(forTensor name: String) -> String? {
        name.hasSuffix(".weight") && name.count > ".weight".count ? String(name.dropLast(".weight".count)) : nil
    }

    /// The dense tensor a group of parts stands for: `X` → `X.weight`. Outputs written
    /// before this naming called the parts `X.weight.bitmask` and so on; their group
    /// already ends in `.weight` and names the tensor itself.
    public static func denseName(ofGroup group: String) -> String {
        group.hasSuffix(".weight") ? group : group + ".weight"
    }

    /// The four tensor specs standing for one pruned tensor, named after `prefix`.
    public static func specs(prefix: String, dtype: DType, shape: [Int], stored: Int) -> [TensorSpec] {
        let rows = MatrixView.rows(shape)
        let cols = MatrixView.cols(shape)
        return [
            TensorSpec(name: prefix + ".bitmask", dtype: .u8, shape: [rows, (cols + 7) / 8]),
            TensorSpec(name: prefix + ".compressed", dtype: dtype, shape: [stored]),
            TensorSpec(name: prefix + ".row_offsets", dtype: .i64, shape: [rows]),
            TensorSpec(name: prefix + ".shape", dtype: .i64, shape: [shape.count]),
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
