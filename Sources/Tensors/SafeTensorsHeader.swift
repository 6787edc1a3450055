import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One tensor as a safetensors header describes it.
public struct TensorInfo: Sendable, Hashable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range relative to the start of the data region, as written in the header.
    public let dataOffsets: Range<Int>

    public init(name: String, dtype: DType, shape: [Int], dataOffsets: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataOffsets.count }
    /// The 2-D view used for pruning: output rows × everything else.
    public var rows: Int { MatrixView.rows(shape) }
    public var cols: Int { MatrixView.cols(shape) }
}

/// How a tensor of any rank is seen as a matrix: shape[0] rows × the product of the rest;
/// a 1-D tensor is one row, a scalar 1 × 1.
public enum MatrixView {
    public static func rows(_ shape: [Int]) -> Int { shape.count <= 1 ? 1 : shape[0] }
    public static func cols(_ shape: [Int]) -> Int { shape.count <= 1 ? (shape.first ?? 1) : shape.dropFirst().reduce(1, *) }

    /// Elements of a shape, or nil when a dimension is negative or the count overflows
    /// or exceeds `limit`.
    public static func elementCount(_ shape: [Int], limit: Int = 1 << 40) -> Int? {
        var n = 1
        for d in shape {
            guard d >= 0, d <= limit else { return nil }
            let (p, overflow) = n.multipliedReportingOverflow(by: d)
            guard !overflow, p <= limit else { return nil }
            n = p
        }
        return n
    }
}

/// The parsed, validated header of a safetensors file.
///
/// Validation follows the format's own rules and refuses anything a hostile file could use
/// to make us read outside the file: the length prefix is bounded and inside the file, the
/// header is UTF-8 JSON, every dtype is known, each byte span equals shape × dtype size,
/// and the spans lie in the data region, do not overlap and cover it exactly.
public struct SafeTensorsHeader: Sendable {
    /// Upper bound on the JSON header, as the reference implementation sets it.
    public static let maxHeaderBytes = 100_000_000

    /// Tensors in the order of their data.
    public let tensors: [TensorInfo]
    /// The `__metadata__` string map, when present.
    public let metadata: [String: String]?
    /// Length of the JSON header in bytes (the 8-byte prefix not included).
    public let headerLength: Int

    /// Offset of the data region in the file.
    public var dataStart: Int { 8 + headerLength }

    /// Reads and validates the header of the file at `path` without mapping its data.
    public static func read(path: String) throws -> SafeTensorsHeader {
        // Open without blocking and require a regular file: a FIFO or device named
        // model.safetensors must not hang us.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw CheckpointError(file: path, "cannot open: \(String(cString: strerror(errno)))") }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw CheckpointError(file: path, "not a regular file")
        }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        let size = Int(st.st_size)
        guard size >= 8, let prefix = try? handle.read(upToCount: 8), prefix.count == 8 else {
            throw CheckpointError(file: path, "truncated: \(size) bytes, shorter than the 8-byte header length")
        }
        let length = prefix.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        try checkLength(length, fileSize: size, file: path)
        let json = (try? handle.read(upToCount: Int(length))) ?? Data()
        guard json.count == Int(length) else {
            throw CheckpointError(file: path, "truncated inside the header")
        }
        return try parse(json: json, fileSize: size, file: path)
    }

    static func checkLength(_ length: UInt64, fileSize: Int, file: String) throws {
        if length > UInt64(maxHeaderBytes) {
            throw CheckpointError(file: file, "header length \(length) exceeds the limit of \(maxHeaderBytes) bytes")
        }
        if 8 + Int(length) > fileSize {
            throw CheckpointError(file: file, "header length \(length) runs past the end of the file (\(fileSize) bytes)")
        }
    }

    /// Parses and validates header JSON for a file of `fileSize` bytes.
    public static func parse(json: Data, fileSize: Int, file: String) throws -> SafeTensorsHeader {
        let headerLength = json.count
        guard String(data: json, encoding: .utf8) != nil else {
            throw CheckpointError(file: file, "header is not valid UTF-8")
        }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: json, options: [])
        } catch {
            throw CheckpointError(file: file, "header is not valid JSON")
        }
        guard let entries = object as? [String: Any] else {
            throw CheckpointError(file: file, "header is not a JSON object")
        }
        var metadata: [String: String]?
        var tensors: [TensorInfo] = []
        tensors.reserveCapacity(entries.count)
        let dataSize = fileSize - 8 - headerLength
        for (name, value) in entries {
            if name == "__metadata__" {
                guard let map = value as? [String: Any] else {
                    throw CheckpointError(file: file, "__metadata__ is not an object of strings")
                }
                var strings: [String: String] = [:]
                for (k, v) in map {
                    guard let s = v as? String else {
                        throw CheckpointError(file: file, "__metadata__ key '\(k)' is not a string")
                    }
                    strings[k] = s
                }
                metadata = strings
                continue
            }
            tensors.append(try parseTensor(name: name, value: value, dataSize: dataSize, file: file))
        }
        tensors.sort { ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name) }
        var end = 0
        var previous: String?
        for t in tensors {
            if t.dataOffsets.lowerBound < end, let previous {
                throw CheckpointError(file: file, tensor: t.name, "data_offsets [\(t.dataOffsets.lowerBound), \(t.dataOffsets.upperBound)] overlap tensor '\(previous)'")
            }
            if t.dataOffsets.lowerBound > end {
                throw CheckpointError(file: file, tensor: t.name, "gap of \(t.dataOffsets.lowerBound - end) bytes before its data (offsets must be contiguous)")
            }
            end = t.dataOffsets.upperBound
            previous = t.name
        }
        if end != dataSize {
            throw CheckpointError(file: file, "data region is \(dataSize) bytes but the tensors cover \(end): \(dataSize - end) trailing bytes")
        }
        return SafeTensorsHeader(tensors: tensors, metadata: metadata, headerLength: headerLength)
    }

    private static func integer(_ any: Any) -> Int? {
        guard let n = any as? NSNumber else { return nil }
        // Reject booleans, fractions and values that do not fit.
        if isBoolean(n) { return nil }
        let d = n.doubleValue
        guard d.rounded() == d, d >= 0, d < 9.0e18 else { return nil }
        return n.intValue
    }

    private static func isBoolean(_ n: NSNumber) -> Bool {
        // JSONSerialization yields NSNumber for both numbers and booleans; a boolean has objCType "c".
        String(cString: n.objCType) == "c"
    }

    private static func parseTensor(name: String, value: Any, dataSize: Int, file: String) throws -> TensorInfo {
        guard let fields = value as? [String: Any] else {
            throw CheckpointError(file: file, tensor: name, "entry is not an object")
        }
        guard let dtypeName = fields["dtype"] as? String else {
            throw CheckpointError(file: file, tensor: name, "missing string field 'dtype'")
        }
        guard let dtype = DType(rawValue: dtypeName) else {
            if DType.knownUnsupported.contains(dtypeName) {
                throw CheckpointError(file: file, tensor: name, "dtype \(dtypeName) is not supported (supported: F32, F16, BF16; integer and BOOL passed through)")
            }
            throw CheckpointError(file: file, tensor: name, "unknown dtype '\(dtypeName)'")
        }
        guard let shapeArray = fields["shape"] as? [Any] else {
            throw CheckpointError(file: file, tensor: name, "missing array field 'shape'")
        }
        var shape: [Int] = []
        for dim in shapeArray {
            guard let d = integer(dim) else {
                throw CheckpointError(file: file, tensor: name, "shape \(shapeArray) has an entry that is not a non-negative integer")
            }
            shape.append(d)
        }
        // Each dimension and the non-zero part of the product are bounded, so no view of
        // the tensor (rows × cols) can overflow even when another dimension is 0.
        guard let elements = MatrixView.elementCount(shape),
              MatrixView.elementCount(shape.filter { $0 != 0 }) != nil else {
            throw CheckpointError(file: file, tensor: name, "shape \(shapeArray) is too large")
        }
        guard let offsets = fields["data_offsets"] as? [Any], offsets.count == 2,
              let begin = integer(offsets[0]), let end = integer(offsets[1]) else {
            throw CheckpointError(file: file, tensor: name, "data_offsets must be two non-negative integers")
        }
        guard begin <= end else {
            throw CheckpointError(file: file, tensor: name, "data_offsets [\(begin), \(end)] are reversed")
        }
        guard end <= dataSize else {
            throw CheckpointError(file: file, tensor: name, "data_offsets [\(begin), \(end)] lie outside the data region (\(dataSize) bytes)")
        }
        let expected = elements * dtype.size
        guard end - begin == expected else {
            throw CheckpointError(file: file, tensor: name, "shape \(shape) × \(dtype.rawValue) needs \(expected) bytes but data_offsets span \(end - begin)")
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end)
    }
}
