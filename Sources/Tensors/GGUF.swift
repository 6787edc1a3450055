/// GGUF, the file format of llama.cpp / ggml: a little-endian header, typed metadata
/// key/values, tensor infos, then an aligned data section.
///
/// ```
/// "GGUF" u32 version(2|3) u64 tensor_count u64 kv_count
/// kv_count × { string key, u32 value_type, value }
/// tensor_count × { string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml_type, u64 offset }
/// padding to general.alignment (default 32), then the data; offsets are relative to it
/// ```
/// Strings are a u64 byte length followed by UTF-8 bytes (no terminator).

/// The element types of ggml tensors. Every known type has a block size and a block byte
/// count (so a tensor's size can be checked); only some can be dequantized
/// (`canDequantize`).
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39, nvfp4 = 40, q1_0 = 41

    /// The name ggml and llama.cpp print ("Q4_K", "BF16").
    public var name: String {
        switch self {
        case .q2_K: return "Q2_K"
        case .q3_K: return "Q3_K"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        case .q8_K: return "Q8_K"
        default: return String(describing: self).uppercased()
        }
    }

    /// (elements per block, bytes per block), as ggml's type traits define them.
    public var block: (size: Int, bytes: Int) {
        let k = 256  // QK_K
        switch self {
        case .f32, .i32: return (1, 4)
        case .f16, .bf16, .i16: return (1, 2)
        case .i8: return (1, 1)
        case .i64, .f64: return (1, 8)
        case .q4_0, .iq4_nl: return (32, 2 + 16)
        case .q4_1: return (32, 2 + 2 + 16)
        case .q5_0: return (32, 2 + 4 + 16)
        case .q5_1: return (32, 2 + 2 + 4 + 16)
        case .q8_0: return (32, 2 + 32)
        case .q8_1: return (32, 4 + 4 + 32)
        case .q2_K: return (k, 2 + 2 + k / 16 + k / 4)
        case .q3_K: return (k, 2 + k / 4 + k / 8 + 12)
        case .q4_K: return (k, 2 + 2 + k / 2 + 12)
        case .q5_K: return (k, 2 + 2 + k / 2 + k / 8 + 12)
        case .q6_K: return (k, 2 + k / 2 + k / 4 + k / 16)
        case .q8_K: return (k, 4 + k + k / 8)
        case .iq2_xxs: return (k, 2 + k / 4)
        case .iq2_xs: return (k, 2 + k / 4 + k / 32)
        case .iq3_xxs: return (k, 2 + k / 4 + k / 8)
        case .iq1_s: return (k, 2 + k / 8 + k / 16)
        case .iq3_s: return (k, 2 + k / 4 + k / 8 + k / 32 + 4)
        case .iq2_s: return (k, 2 + k / 4 + k / 16)
        case .iq4_xs: return (k, 2 + 2 + k / 2 + k / 64)
        case .iq1_m: return (k, k / 8 + k / 16 + k / 32)
        case .tq1_0: return (k, 2 + 4 * 13)
        case .tq2_0: return (k, 2 + 64)
        case .mxfp4: return (32, 1 + 16)
        case .nvfp4: return (64, 4 + 32)
        case .q1_0: return (128, 2 + 16)
        }
    }

    /// True for the types `GGUFDequantizer` decodes to F32.
    public var canDequantize: Bool {
        switch self {
        case .f32, .f16, .bf16, .q4_0, .q4_1, .q8_0: return true
        default: return false
        }
    }

    /// The names of the types that can be dequantized, for error messages.
    public static var dequantizableNames: String {
        allCases.filter(\.canDequantize).map(\.name).joined(separator: ", ")
    }
}

/// The value types of GGUF metadata.
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes of one value of a fixed-size type; nil for string and array.
    var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }

    /// The fewest bytes a value of this type can take (to bound counts read from a file).
    var minimumSize: Int { fixedSize ?? (self == .string ? 8 : 12) }
}

/// One metadata value.
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    /// An array: the element type, then the elements (all of that type).
    case array(GGUFValueType, [GGUFValue])

    /// The value as an Int when it is an integer that fits.
    public var intValue: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    /// The value as a Double when it is a number (a float32 is given by its shortest
    /// decimal, so 1e-5 stored as float32 reads back as 1e-5, not 9.99999974e-06).
    public var doubleValue: Double? {
        switch self {
        case .float32(let v): return Double("\(v)") ?? Double(v)
        case .float64(let v): return v
        default: return intValue.map(Double.init)
        }
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var arrayValue: [GGUFValue]? { if case .array(_, let a) = self { return a } else { return nil } }

    /// The GGUF type name, for error messages.
    public var typeName: String {
        switch self {
        case .uint8: return "uint8"
        case .int8: return "int8"
        case .uint16: return "uint16"
        case .int16: return "int16"
        case .uint32: return "uint32"
        case .int32: return "int32"
        case .uint64: return "uint64"
        case .int64: return "int64"
        case .float32: return "float32"
        case .float64: return "float64"
        case .bool: return "bool"
        case .string: return "string"
        case .array(let t, _): return "array of \(t)"
        }
    }
}

/// One metadata entry, in file order.
public struct GGUFKeyValue: Sendable, Equatable {
    public let key: String
    public let value: GGUFValue
}

/// One tensor as the GGUF header describes it.
public struct GGUFTensorInfo: Sendable, Hashable {
    public let name: String
    /// Dimensions in GGUF order: innermost (contiguous) first, so a matrix of `rows × cols`
    /// is `[cols, rows]`.
    public let dims: [Int]
    public let type: GGMLType
    /// Byte offset relative to the start of the data section.
    public let offset: Int
    /// Bytes of data (elements / block size × block bytes).
    public let byteCount: Int

    /// The shape in row-major (PyTorch / safetensors) order: `dims` reversed.
    public var shape: [Int] { dims.reversed() }
    public var elementCount: Int { dims.reduce(1, *) }
    /// Elements in one row (the innermost dimension).
    public var rowLength: Int { dims[0] }
    /// Rows: the product of all dimensions but the innermost.
    public var rowCount: Int { dims.dropFirst().reduce(1, *) }
    /// Bytes in one row (rows are whole blocks).
    public var rowBytes: Int { rowLength / type.block.size * type.block.bytes }
}

/// A GGUF file opened for reading: header parsed and validated, data memory-mapped
/// lazily (a tensor's pages are read only when it is dequantized).
///
/// Validation refuses anything a hostile file could use to make us read outside it or
/// allocate without bound: every count and string length is checked against the bytes
/// left before anything is allocated, sizes are computed with overflow checks, tensor
/// offsets must be aligned, inside the data section and not overlapping, and names and
/// keys must be unique UTF-8. Errors are `CheckpointError`s naming the file (and tensor).
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    /// 2 or 3 (version 1 used 32-bit counts and is refused).
    public let version: UInt32
    /// Every metadata entry, in file order.
    public let metadata: [GGUFKeyValue]
    /// Every tensor, in header order.
    public let tensors: [GGUFTensorInfo]
    /// Alignment of the data section and of each tensor (general.alignment, default 32).
    public let alignment: Int
    /// Absolute file offset where the data section starts.
    public let dataStart: Int
    /// Size of the whole file.
    public var fileSize: Int { mapped.size }
    /// Metadata keys whose string value, or an element of whose array of strings, is not
    /// valid UTF-8, with the index of the first such element (0 for a plain string).
    /// Those strings were read with U+FFFD in place of the bad bytes: a reader that
    /// writes them out (the importer's tokenizer files) must refuse them instead.
    public let invalidUTF8: [String: Int]

    private let mapped: MappedFile
    private let keyIndex: [String: Int]
    private let tensorIndex: [String: Int]

    /// Most tensor dimensions ggml supports.
    public static let maxDims = 4
    /// Nesting limit of arrays inside arrays.
    static let maxArrayDepth = 4

    /// Opens and validates a GGUF file.
    public init(path: String) throws {
        self.path = path
        mapped = try MappedFile(path: path)
        var r = GGUFCursor(raw: mapped.bytes(0..<mapped.size), file: path)
        let magic = try r.bytes(4, "the magic")
        guard Array(magic) == Array("GGUF".utf8) else {
            throw CheckpointError(file: path, "not a GGUF file (the first 4 bytes are not \"GGUF\")")
        }
        version = try r.u32("the version")
        guard version == 2 || version == 3 else {
            if version == 1 { throw CheckpointError(file: path, "GGUF version 1 is not supported (versions 2 and 3 are)") }
            if version.byteSwapped == 2 || version.byteSwapped == 3 {
                throw CheckpointError(file: path, "big-endian GGUF files are not supported")
            }
            throw CheckpointError(file: path, "unknown GGUF version \(version) (versions 2 and 3 are supported)")
        }
        let tensorCount = try r.count(minimumItemSize: 8 + 4 + 8 + 4 + 8, "the tensor count")
        let kvCount = try r.count(minimumItemSize: 8 + 4 + 1, "the metadata count")

        var metadata: [GGUFKeyValue] = []
        var keyIndex: [String: Int] = [:]
        metadata.reserveCapacity(kvCount)
        for i in 0..<kvCount {
            let key = try r.string("the key of metadata entry #\(i)", strict: true)
            let rawType = try r.u32("the type of key '\(key)'")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw CheckpointError(file: path, "metadata key '\(CheckpointError.printable(key))': unknown value type \(rawType)")
            }
            let value = try r.value(type, key: key, depth: 0)
            guard keyIndex[key] == nil else {
                throw CheckpointError(file: path, "metadata key '\(CheckpointError.printable(key))' appears twice")
            }
            keyIndex[key] = metadata.count
            metadata.append(GGUFKeyValue(key: key, value: value))
        }
        self.metadata = metadata
        self.keyIndex = keyIndex
        invalidUTF8 = r.invalidUTF8

        var alignment = 32
        if let i = keyIndex["general.alignment"] {
            guard case .uint32(let a) = metadata[i].value, a > 0, a & (a - 1) == 0, a <= 1 << 20 else {
                throw CheckpointError(file: path, "metadata key 'general.alignment' must be a uint32 power of two up to 1 MiB, found \(metadata[i].value)")
            }
            alignment = Int(a)
        }
        self.alignment = alignment

        var infos: [GGUFTensorInfo] = []
        var tensorIndex: [String: Int] = [:]
        infos.reserveCapacity(tensorCount)
        for i in 0..<tensorCount {
            let name = try r.string("the name of tensor #\(i)", strict: true)
            let nDims = try r.u32("the dimension count of tensor '\(name)'")
            guard nDims >= 1, nDims <= UInt32(GGUFFile.maxDims) else {
                throw CheckpointError(file: path, tensor: name, "\(nDims) dimensions (1 to \(GGUFFile.maxDims) allowed)")
            }
            var dims: [Int] = []
            for _ in 0..<nDims {
                let d = try r.u64("the dimensions of tensor '\(name)'")
                guard d >= 1, d <= 1 << 40 else {
                    throw CheckpointError(file: path, tensor: name, "dimension \(d) out of range (1 to 2^40)")
                }
                dims.append(Int(d))
            }
            let rawType = try r.u32("the type of tensor '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw CheckpointError(file: path, tensor: name, "unknown ggml type \(rawType)")
            }
            let offset = try r.u64("the offset of tensor '\(name)'")
            guard let elements = MatrixView.elementCount(dims, limit: 1 << 40) else {
                throw CheckpointError(file: path, tensor: name, "element count of dims \(dims) overflows")
            }
            let (bs, bb) = type.block
            guard dims[0] % bs == 0 else {
                throw CheckpointError(file: path, tensor: name, "row length \(dims[0]) is not a multiple of the \(type.name) block size \(bs)")
            }
            let (bytes, overflow) = (elements / bs).multipliedReportingOverflow(by: bb)
            guard !overflow else { throw CheckpointError(file: path, tensor: name, "byte size overflows") }
            guard offset <= UInt64(Int.max), Int(offset) % alignment == 0 else {
                throw CheckpointError(file: path, tensor: name, "offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            guard tensorIndex[name] == nil else {
                throw CheckpointError(file: path, tensor: name, "appears twice in the tensor list")
            }
            tensorIndex[name] = infos.count
            infos.append(GGUFTensorInfo(name: name, dims: dims, type: type, offset: Int(offset), byteCount: bytes))
        }
        self.tensors = infos
        self.tensorIndex = tensorIndex

        // The data section starts at the next multiple of the alignment.
        let headerEnd = r.offset
        let dataStart = (headerEnd + alignment - 1) / alignment * alignment
        self.dataStart = dataStart
        if infos.isEmpty { return }
        guard dataStart <= mapped.size else {
            throw CheckpointError(file: path, "truncated: the data section would start at \(dataStart) but the file has \(mapped.size) bytes")
        }
        let dataSize = mapped.size - dataStart
        for t in infos where t.offset > dataSize || t.byteCount > dataSize - t.offset {
            throw CheckpointError(file: path, tensor: t.name, "data \(t.offset)..<\(t.offset + t.byteCount) lies outside the data section (\(dataSize) bytes)")
        }
        let byOffset = infos.sorted { $0.offset < $1.offset }
        for (a, b) in zip(byOffset, byOffset.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw CheckpointError(file: path, tensor: b.name, "data overlaps tensor '\(CheckpointError.printable(a.name))'")
        }
    }

    /// A metadata value by key.
    public subscript(key: String) -> GGUFValue? {
        keyIndex[key].map { metadata[$0].value }
    }

    /// A tensor by name.
    public func info(_ name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The raw bytes of a tensor, straight from the map.
    public func bytes(_ t: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        mapped.bytes((dataStart + t.offset)..<(dataStart + t.offset + t.byteCount))
    }

    /// Lets the kernel drop a tensor's pages after a streaming pass.
    public func release(_ t: GGUFTensorInfo) {
        mapped.release((dataStart + t.offset)..<(dataStart + t.offset + t.byteCount))
    }

    /// Dequantizes the rows `rows` of a tensor (rows as in `GGUFTensorInfo.rowCount`) into
    /// `out`, which must hold `rows.count × rowLength` values.
    public func dequantizeRows(_ t: GGUFTensorInfo, rows: Range<Int>, into out: UnsafeMutableBufferPointer<Float>) throws {
        guard t.type.canDequantize else {
            throw CheckpointError(file: path, tensor: t.name, "tensor type \(t.type.name) is not supported (supported: \(GGMLType.dequantizableNames))")
        }
        precondition(rows.lowerBound >= 0 && rows.upperBound <= t.rowCount, "rows outside the tensor")
        precondition(out.count == rows.count * t.rowLength, "output size does not match the rows")
        let raw = bytes(t)
        let span = UnsafeRawBufferPointer(rebasing: raw[(rows.lowerBound * t.rowBytes)..<(rows.upperBound * t.rowBytes)])
        GGUFDequantizer.dequantize(span, type: t.type, into: out)
    }

    /// A whole tensor dequantized to F32, in row-major order (shape `t.shape`).
    public func floats(_ t: GGUFTensorInfo) throws -> [Float] {
        var out = [Float](repeating: 0, count: t.elementCount)
        try out.withUnsafeMutableBufferPointer { try dequantizeRows(t, rows: 0..<t.rowCount, into: $0) }
        return out
    }

    // MARK: typed metadata

    /// A string value; nil when absent, an error when of another type.
    public func string(_ key: String) throws -> String? {
        try typed(key, "a string") { $0.stringValue }
    }

    /// An integer value of any integer type; nil when absent, an error otherwise.
    public func int(_ key: String) throws -> Int? {
        try typed(key, "an integer") { $0.intValue }
    }

    /// A numeric value (float or integer) as Double; nil when absent.
    public func double(_ key: String) throws -> Double? {
        try typed(key, "a number") { $0.doubleValue }
    }

    /// A bool value; nil when absent.
    public func bool(_ key: String) throws -> Bool? {
        try typed(key, "a bool") { $0.boolValue }
    }

    /// An array of strings; nil when absent.
    public func strings(_ key: String) throws -> [String]? {
        try typed(key, "an array of strings") { v in
            guard case .array(.string, let a) = v else { return nil }
            return a.compactMap(\.stringValue)
        }
    }

    /// An array of integers; nil when absent.
    public func ints(_ key: String) throws -> [Int]? {
        try typed(key, "an array of integers") { v in
            guard case .array(_, let a) = v else { return nil }
            let ints = a.compactMap(\.intValue)
            return ints.count == a.count ? ints : nil
        }
    }

    private func typed<T>(_ key: String, _ what: String, _ get: (GGUFValue) -> T?) throws -> T? {
        guard let v = self[key] else { return nil }
        guard let t = get(v) else {
            throw CheckpointError(file: path, "metadata key '\(key)' should be \(what), found \(v.typeName)")
        }
        return t
    }
}

/// Reads little-endian values from the mapped header, checking every read against the
/// end of the file.
struct GGUFCursor {
    let raw: UnsafeRawBufferPointer
    let file: String
    var offset = 0
    /// Keys of string values that were not valid UTF-8 → index of the first bad element.
    var invalidUTF8: [String: Int] = [:]

    init(raw: UnsafeRawBufferPointer, file: String) {
        self.raw = raw
        self.file = file
    }

    var remaining: Int { raw.count - offset }

    private func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        guard n <= remaining else {
            throw CheckpointError(file: file, "truncated: the file ends inside \(what()) (offset \(offset), \(n) bytes needed, \(remaining) left)")
        }
    }

    mutating func bytes(_ n: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        try need(n, what())
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + n)])
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        defer { offset += MemoryLayout<T>.size }
        return T(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    mutating func u32(_ what: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, what()) }
    mutating func u64(_ what: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, what()) }

    /// A u64 count of items, each at least `minimumItemSize` bytes: more than the bytes
    /// left could hold is an error (so no count from the file can make us allocate much).
    mutating func count(minimumItemSize: Int, _ what: @autoclosure () -> String) throws -> Int {
        let n = try u64(what())
        guard n <= UInt64(remaining / minimumItemSize) else {
            throw CheckpointError(file: file, "\(what()) \(n) is more than the \(remaining) bytes left could hold")
        }
        return Int(n)
    }

    /// A GGUF string. `strict`: invalid UTF-8 is an error (keys, tensor names); otherwise
    /// it is repaired with U+FFFD (token texts) and `valid` says whether it had to be.
    mutating func string(_ what: @autoclosure () -> String, strict: Bool = false) throws -> String {
        try checkedString(what(), strict: strict).text
    }

    mutating func checkedString(_ what: @autoclosure () -> String, strict: Bool = false) throws -> (text: String, valid: Bool) {
        let n = try u64("the length of \(what())")
        guard n <= UInt64(remaining) else {
            throw CheckpointError(file: file, "\(what()): string length \(n) runs past the end of the file (\(remaining) bytes left at offset \(offset))")
        }
        let b = try bytes(Int(n), what())
        let s = String(decoding: b, as: UTF8.self)
        // Decoding replaces invalid sequences, so a valid string round-trips byte for byte.
        let valid = s.utf8.elementsEqual(b)
        if strict && !valid {
            throw CheckpointError(file: file, "\(what()) is not valid UTF-8")
        }
        return (s, valid)
    }

    /// One metadata value of `type`; `index` is its position in the top-level array of
    /// `key` (0 for a plain value), for `invalidUTF8`.
    mutating func value(_ type: GGUFValueType, key: String, depth: Int, index: Int = 0) throws -> GGUFValue {
        let what = "the value of key '\(CheckpointError.printable(key))'"
        switch type {
        case .uint8: return .uint8(try load(UInt8.self, what))
        case .int8: return .int8(try load(Int8.self, what))
        case .uint16: return .uint16(try load(UInt16.self, what))
        case .int16: return .int16(try load(Int16.self, what))
        case .uint32: return .uint32(try load(UInt32.self, what))
        case .int32: return .int32(try load(Int32.self, what))
        case .uint64: return .uint64(try load(UInt64.self, what))
        case .int64: return .int64(try load(Int64.self, what))
        case .float32: return .float32(Float(bitPattern: try load(UInt32.self, what)))
        case .float64: return .float64(Double(bitPattern: try load(UInt64.self, what)))
        case .bool:
            let b = try load(UInt8.self, what)
            guard b <= 1 else { throw CheckpointError(file: file, "\(what): bool byte \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case .string:
            let (text, valid) = try checkedString(what)
            if !valid && invalidUTF8[key] == nil { invalidUTF8[key] = index }
            return .string(text)
        case .array:
            guard depth < GGUFFile.maxArrayDepth else {
                throw CheckpointError(file: file, "\(what): arrays nested deeper than \(GGUFFile.maxArrayDepth)")
            }
            let rawType = try u32("the element type of \(what)")
            guard let elementType = GGUFValueType(rawValue: rawType) else {
                throw CheckpointError(file: file, "\(what): unknown array element type \(rawType)")
            }
            let n = try count(minimumItemSize: elementType.minimumSize, "the element count of \(what)")
            var items: [GGUFValue] = []
            items.reserveCapacity(n)
            for k in 0..<n { items.append(try value(elementType, key: key, depth: depth + 1, index: depth == 0 ? k : index)) }
            return .array(elementType, items)
        }
    }
}
