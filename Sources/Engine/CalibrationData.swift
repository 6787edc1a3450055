import Foundation
import Models
import Tensors

/// Calibration and evaluation token windows: `samples` windows of `tokens` ids, drawn
/// with a seed from a text file (tokenized with the model's tokenizer.json) or taken
/// from token ids (.safetensors `input_ids` int32 [N, T], or .npy int32/int64 [N, T]).
public enum CalibrationData {
    /// Largest data file read (text or token ids): far more than any window count needs.
    public static let maxFileBytes = 1 << 30
    /// Rows of an id file read: no spec asks for more samples (`JobSpec.Limits.samples`).
    public static let maxRows = JobSpec.Limits.samples

    /// The token ids of a data file, as one stream (text) or as rows (id files, at most
    /// `maxRows` of them). Ids are checked to fit int32, not truncated; `check` then
    /// checks the windows against the model's vocabulary.
    public static func load(_ path: String, modelDirectory: String) throws -> [[Int32]] {
        if path.hasSuffix(".safetensors") { return try idsFromSafetensors(path) }
        if path.hasSuffix(".npy") { return try idsFromNpy(path) }
        let data: Data
        do {
            data = try SmallFile.read(path, limit: maxFileBytes)
        } catch {
            throw SpecError("\(path): \(error.describe("the data file"))")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw SpecError("\(path): cannot read UTF-8 text")
        }
        let tokenizerPath = (modelDirectory as NSString).appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: tokenizerPath) else {
            throw SpecError("\(tokenizerPath): text calibration data needs the model's tokenizer.json (or give token ids)")
        }
        let tokenizer = try ByteLevelBPETokenizer(tokenizerJSON: tokenizerPath)
        let ids = tokenizer.encode(text)
        // A tokenizer that maps a whole text to one id (every token 0, say) would
        // calibrate on a constant input without a word said.
        if ids.count > 1, let first = ids.first, ids.allSatisfy({ $0 == first }) {
            throw SpecError("\(tokenizerPath): tokenizes all of \(path) (\(ids.count) tokens) to the one id \(first); a degenerate tokenizer or text")
        }
        return [ids]
    }

    /// Refuses windows with an id outside the model's vocabulary (the embedding has no
    /// row for it) or made of one repeated id (degenerate data: nothing to calibrate on).
    public static func check(_ windows: [[Int32]], vocabularySize: Int, source: String) throws {
        var first: Int32?, varied = false
        for (w, window) in windows.enumerated() {
            for (t, id) in window.enumerated() {
                guard id >= 0, Int(id) < vocabularySize else {
                    throw SpecError("\(source): token id \(id) (window \(w), position \(t)) is outside the model's vocabulary (0..<\(vocabularySize))")
                }
                if let f = first { varied = varied || f != id } else { first = id }
            }
        }
        if !varied, windows.count * (windows.first?.count ?? 0) > 1, let first {
            throw SpecError("\(source): every token of the windows is the id \(first); degenerate data")
        }
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
        return try rows(file.bytes(info), dtype: info.dtype, shape: info.shape, source: path)
    }

    private static func idsFromNpy(_ path: String) throws -> [[Int32]] {
        let bytes: [UInt8]
        do {
            bytes = [UInt8](try SmallFile.read(path, limit: maxFileBytes))
        } catch {
            throw CheckpointError(file: path, error.describe("the file"))
        }
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
        return try bytes.withUnsafeBytes { raw in
            try rows(UnsafeRawBufferPointer(rebasing: raw[(10 + headerLength)...]), dtype: dtype, shape: shape, source: path)
        }
    }

    /// The first `maxRows` rows of an int32/int64 [N, T] array. An int64 id that does not
    /// fit int32 is an error: truncating it would silently read 2³²+5 as token 5.
    private static func rows(_ raw: UnsafeRawBufferPointer, dtype: DType, shape: [Int], source: String) throws -> [[Int32]] {
        try (0..<min(shape[0], maxRows)).map { r in
            try (0..<shape[1]).map { c in
                let i = r * shape[1] + c
                if dtype == .i32 { return Int32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)) }
                let wide = Int64(littleEndian: raw.loadUnaligned(fromByteOffset: i * 8, as: Int64.self))
                guard let id = Int32(exactly: wide), id >= 0 else {
                    throw CheckpointError(file: source, "token id \(wide) at [\(r), \(c)] is not a token id (0 to 2³¹−1)")
                }
                return id
            }
        }
    }
}
