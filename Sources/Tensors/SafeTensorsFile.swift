/// A safetensors file opened for reading: header parsed and validated, data memory-mapped
/// lazily (a tensor's pages are read only when its bytes are touched).
public final class SafeTensorsFile: @unchecked Sendable {
    public let path: String
    public let header: SafeTensorsHeader
    private let mapped: MappedFile
    private let index: [String: Int]

    public init(path: String) throws {
        self.path = path
        header = try SafeTensorsHeader.read(path: path)
        mapped = try MappedFile(path: path)
        guard mapped.size == header.dataStart + (header.tensors.last?.dataOffsets.upperBound ?? 0) else {
            throw CheckpointError(file: path, "file changed while it was being opened")
        }
        var index: [String: Int] = [:]
        for (i, t) in header.tensors.enumerated() { index[t.name] = i }
        self.index = index
    }

    public var tensors: [TensorInfo] { header.tensors }
    public var metadata: [String: String]? { header.metadata }

    public func info(_ name: String) -> TensorInfo? {
        index[name].map { header.tensors[$0] }
    }

    /// The raw little-endian bytes of a tensor, straight from the map.
    public func bytes(_ tensor: TensorInfo) -> UnsafeRawBufferPointer {
        mapped.bytes(absoluteRange(tensor))
    }

    /// Lets the kernel drop a tensor's pages after a streaming pass.
    public func release(_ tensor: TensorInfo) {
        mapped.release(absoluteRange(tensor))
    }

    /// A floating tensor decoded to F32.
    public func floats(_ tensor: TensorInfo) throws -> [Float] {
        guard tensor.dtype.isFloat else {
            throw CheckpointError(file: path, tensor: tensor.name, "dtype \(tensor.dtype.rawValue) is not a floating type")
        }
        return FloatConversion.toFloat(bytes(tensor), dtype: tensor.dtype, count: tensor.elementCount)
    }

    /// Lets the kernel drop the pages of part of a tensor (range relative to its data).
    public func release(_ tensor: TensorInfo, bytes range: Range<Int>) {
        let start = header.dataStart + tensor.dataOffsets.lowerBound
        mapped.release((start + range.lowerBound)..<(start + range.upperBound))
    }

    /// Calls `body` with consecutive row blocks of a tensor of at most `maxBytes` each
    /// (at least one row), releasing each block's pages afterwards, so a pass over a
    /// large tensor keeps little of it resident.
    public func forEachRowBlock(_ tensor: TensorInfo, maxBytes: Int = 8 << 20,
                                _ body: (_ rows: Range<Int>, _ bytes: UnsafeRawBufferPointer) throws -> Void) rethrows {
        let rows = tensor.rows
        let rowBytes = rows == 0 ? 0 : tensor.byteCount / rows
        guard rowBytes > 0 else { return try body(0..<rows, bytes(tensor)) }
        let step = max(1, maxBytes / rowBytes)
        let all = bytes(tensor)
        var first = 0
        while first < rows {
            let count = min(step, rows - first)
            let range = (first * rowBytes)..<((first + count) * rowBytes)
            try body(first..<(first + count), UnsafeRawBufferPointer(rebasing: all[range]))
            release(tensor, bytes: range)
            first += count
        }
    }

    private func absoluteRange(_ t: TensorInfo) -> Range<Int> {
        (header.dataStart + t.dataOffsets.lowerBound)..<(header.dataStart + t.dataOffsets.upperBound)
    }
}
