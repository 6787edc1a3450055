/// What the writer needs to know of a tensor before its bytes arrive.
public struct TensorSpec: Sendable, Hashable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    public var byteCount: Int { shape.reduce(1, *) * dtype.size }
}

/// Streams a safetensors file to disk: the header is written first from the specs, then
/// each tensor's bytes in the same order, so no more than one tensor need be in memory.
/// The file appears at its path only after `finish()` (temporary file, fsync, rename).
public final class SafeTensorsWriter {
    public let path: String
    private let specs: [TensorSpec]
    private let file: AtomicFileWriter
    private var current = 0
    private var writtenInCurrent = 0

    /// Writes the header. Tensors must then be written in the order of `tensors`.
    public init(path: String, tensors: [TensorSpec], metadata: [String: String]?) throws {
        self.path = path
        specs = tensors
        var seen = Set<String>()
        for t in tensors where !seen.insert(t.name).inserted {
            throw CheckpointError(file: path, tensor: t.name, "written twice")
        }
        file = try AtomicFileWriter(path: path)
        let header = SafeTensorsWriter.headerBytes(tensors: tensors, metadata: metadata)
        var prefix = UInt64(header.count).littleEndian
        try withUnsafeBytes(of: &prefix) { try file.write($0) }
        try file.write(header)
        skipEmpty()
    }

    /// Header JSON, padded with spaces to a multiple of 8 bytes so the data is aligned.
    public static func headerBytes(tensors: [TensorSpec], metadata: [String: String]?) -> [UInt8] {
        var json = "{"
        var first = true
        if let metadata, !metadata.isEmpty {
            json += "\"__metadata__\":{"
            json += metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }.joined(separator: ",")
            json += "}"
            first = false
        }
        var offset = 0
        for t in tensors {
            if !first { json += "," }
            first = false
            let end = offset + t.byteCount
            json += "\(jsonString(t.name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(end)]}"
            offset = end
        }
        json += "}"
        var bytes = Array(json.utf8)
        while bytes.count % 8 != 0 { bytes.append(0x20) }
        return bytes
    }

    /// JSON string literal with the escapes JSON requires.
    public static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    /// Appends bytes to the current tensor; a tensor may arrive in several pieces.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var rest = bytes
        while !rest.isEmpty {
            guard current < specs.count else {
                throw CheckpointError(file: path, "more bytes written than the header declares")
            }
            let need = specs[current].byteCount - writtenInCurrent
            let n = min(need, rest.count)
            try file.write(UnsafeRawBufferPointer(rebasing: rest[0..<n]))
            writtenInCurrent += n
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
            if writtenInCurrent == specs[current].byteCount {
                current += 1
                writtenInCurrent = 0
                skipEmpty()
            }
        }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// The tensor whose bytes are expected next, or nil when all are written.
    public var expectedTensor: TensorSpec? { current < specs.count ? specs[current] : nil }

    /// Checks that every tensor was written in full, then commits the file.
    public func finish() throws {
        if let pending = expectedTensor {
            throw CheckpointError(file: path, tensor: pending.name, "not written in full before finish")
        }
        try file.commit()
    }

    private func skipEmpty() {
        while current < specs.count && specs[current].byteCount == 0 { current += 1 }
    }
}
