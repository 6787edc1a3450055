import Foundation
import Models
import Tensors

/// Calibration and evaluation token windows: `samples` windows of `tokens` ids, drawn
/// with a seed from a text file (tokenized with the model's tokenizer.json) or taken
/// from token ids (.safetensors `input_ids` int32 [N, T], or .npy int32/int64 [N, T]).
public enum CalibrationData {
    /// All token ids of a data file, as one stream (text) or as rows (id files).
    public static func load(_ path: String, modelDirectory: String) throws -> [[Int32]] {
        if path.hasSuffix(".safetensors") { return try idsFromSafetensors(path) }
        if path.hasSuffix(".npy") { return try idsFromNpy(path) }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw SpecError("\(path): cannot read UTF-8 text")
        }
        let tokenizerPath = (modelDirectory as NSString).appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: tokenizerPath) else {
            throw SpecError("\(tokenizerPath): text calibration data needs the model's tokenizer.json (or give token ids)")
        }
        let tokenizer = try ByteLevelBPETokenizer(tokenizerJSON: tokenizerPath)
        return [tokenizer.encode(text)]
    }

    /// `samples` windows of `tokens` ids. From one stream: random starts drawn with the
    /// seed (as Wanda and SparseGPT draw theirs); from rows: the first `samples` rows,
    /// each cut to `tokens`.
    public static func windows(_ streams: [[Int32]], samples: Int, tokens: Int, seed: UInt64, source: String) throws -> [[Int32]] {
        if streams.count == 1 {
            let s = streams[0]
            guard s.count > tokens else { throw SpecError("\(source): \(s.count) tokens, fewer than one window of \(tokens)") }
            var state = seed &+ 0x9E37_79B9_7F4A_7C15
            return (0..<samples).map { _ in
                state = splitmix(&state)
                let start = Int(state % UInt64(s.count - tokens))
                return Array(s[start..<(start + tokens)])
            }
        }
        guard streams.count >= samples else { throw SpecError("\(source): \(streams.count) rows of token ids, \(samples) samples asked") }
        return try streams.prefix(samples).map { row in
            guard row.count >= tokens else { throw SpecError("\(source): a row has \(row.count) ids, \(tokens) asked") }
            return Array(row.prefix(tokens))
        }
    }

    /// Consecutive, non-overlapping windows from the start of a stream (evaluation).
    public static func consecutiveWindows(_ stream: [Int32], count: Int, tokens: Int) -> [[Int32]] {
        let n = min(count, stream.count / tokens)
        return (0..<n).map { Array(stream[($0 * tokens)..<(($0 + 1) * tokens)]) }
    }

    private static func splitmix(_ state: inout UInt64) -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    private static func idsFromSafetensors(_ path: String) throws -> [[Int32]] {
        let file = try SafeTensorsFile(path: path)
        guard let info = file.info("input_ids") else { throw CheckpointError(file: path, "no tensor named 'input_ids'") }
        guard info.shape.count == 2, info.dtype == .i32 || info.dtype == .i64 else {
            throw CheckpointError(file: path, tensor: "input_ids", "must be int32 or int64 [N, T], is \(info.dtype.rawValue) \(info.shape)")
        }
        return rows(file.bytes(info), dtype: info.dtype, shape: info.shape)
    }

    private static func idsFromNpy(_ path: String) throws -> [[Int32]] {
        guard let data = FileManager.default.contents(atPath: path) else { throw CheckpointError(file: path, "cannot read") }
        let bytes = [UInt8](data)
        guard bytes.count > 10, bytes[0] == 0x93, Array(bytes[1...5]) == Array("NUMPY".utf8) else {
            throw CheckpointError(file: path, "not a .npy file")
        }
        let headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
        guard 10 + headerLength <= bytes.count, let header = String(bytes: bytes[10..<(10 + headerLength)], encoding: .ascii) else {
            throw CheckpointError(file: path, "truncated .npy header")
        }
        let dtype: DType
        if header.contains("'<i4'") { dtype = .i32 } else if header.contains("'<i8'") { dtype = .i64 } else {
            throw CheckpointError(file: path, "token ids must be little-endian int32 or int64 (<i4, <i8)")
        }
        guard header.contains("'fortran_order': False"),
              let open = header.firstIndex(of: "("), let close = header.firstIndex(of: ")") else {
            throw CheckpointError(file: path, "expected a C-order 2-D array")
        }
        let shape = header[header.index(after: open)..<close].split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard shape.count == 2, let n = MatrixView.elementCount(shape), 10 + headerLength + n * dtype.size == bytes.count else {
            throw CheckpointError(file: path, "shape \(shape) does not match the file size")
        }
        return bytes.withUnsafeBytes { raw in rows(UnsafeRawBufferPointer(rebasing: raw[(10 + headerLength)...]), dtype: dtype, shape: shape) }
    }

    private static func rows(_ raw: UnsafeRawBufferPointer, dtype: DType, shape: [Int]) -> [[Int32]] {
        (0..<shape[0]).map { r in
            (0..<shape[1]).map { c in
                let i = r * shape[1] + c
                return dtype == .i32 ? Int32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: Int32.self))
                    : Int32(truncatingIfNeeded: Int64(littleEndian: raw.loadUnaligned(fromByteOffset: i * 8, as: Int64.self)))
            }
        }
    }
}
