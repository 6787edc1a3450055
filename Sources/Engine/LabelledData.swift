import Foundation
import Tensors

/// Labelled examples for accuracy evaluation: `count` rows of `width` F32 features and one
/// class label per row (see docs/mlp.md). Read from
/// - IDX files (MNIST / Fashion-MNIST, gzip'd or not): the images file
///   `*-images-idx3-ubyte[.gz]` with its labels beside it as `*-labels-idx1-ubyte[.gz]`,
///   or a directory holding the test split `t10k-images-idx3-ubyte[.gz]`. Pixels become
///   value / 255 in [0, 1], each image flattened row by row.
/// - a `.safetensors` file with `inputs` (floating, [N, D]) and `labels` (int32 or int64, [N]).
public struct LabelledData: Sendable {
    /// count × width, row-major.
    public let inputs: [Float]
    public let labels: [Int]
    public let width: Int
    /// The file the examples came from (the images file for IDX).
    public let source: String
    /// IDX images: the bytes `inputs` are value / 255 of (a quarter of their size on the wire).
    public private(set) var bytes: [UInt8]?

    public var count: Int { labels.count }

    /// An IDX byte as an input value: value / 255, in [0, 1].
    public static func pixel(_ byte: UInt8) -> Float { Float(byte) / 255 }

    public init(inputs: [Float], labels: [Int], width: Int, source: String) {
        precondition(inputs.count == labels.count * width, "inputs must hold labels.count × width values")
        self.inputs = inputs
        self.labels = labels
        self.width = width
        self.source = source
    }

    /// Reads the examples at `path`; with `limit`, only the first `limit` of them. A
    /// directory gives its `split` (`t10k`, the test split, or `train`).
    public static func load(_ path: String, limit: Int? = nil, split: String = "t10k") throws -> LabelledData {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw SpecError("\(path): no such file or directory")
        }
        if isDir.boolValue {
            guard let images = existing((path as NSString).appendingPathComponent("\(split)-images-idx3-ubyte")) else {
                throw SpecError("\(path): no \(split)-images-idx3-ubyte[.gz] (the MNIST-style \(split == "train" ? "training" : "test") split) in this directory")
            }
            return try idx(images: images, limit: limit)
        }
        if path.hasSuffix(".safetensors") { return try safetensors(path, limit: limit) }
        let name = (path as NSString).lastPathComponent
        if name.contains("labels-idx1-ubyte") {
            throw SpecError("\(path): give the images file (*-images-idx3-ubyte[.gz]); its labels file is found beside it")
        }
        guard name.contains("images-idx3-ubyte") else {
            throw SpecError("\(path): not labelled data (expected a .safetensors file with 'inputs' and 'labels', an IDX images file named *-images-idx3-ubyte[.gz], or a directory holding t10k-images-idx3-ubyte[.gz])")
        }
        return try idx(images: path, limit: limit)
    }

    /// The path, or the path with `.gz` added or removed, whichever exists.
    private static func existing(_ path: String) -> String? {
        let alternative = path.hasSuffix(".gz") ? String(path.dropLast(3)) : path + ".gz"
        return [path, alternative].first { FileManager.default.fileExists(atPath: $0) }
    }

    // MARK: IDX

    private static func idx(images: String, limit: Int?) throws -> LabelledData {
        let directory = (images as NSString).deletingLastPathComponent
        let labelName = (images as NSString).lastPathComponent.replacingOccurrences(of: "images-idx3-ubyte", with: "labels-idx1-ubyte")
        guard let labelsPath = existing((directory as NSString).appendingPathComponent(labelName)) else {
            throw SpecError("\(images): its labels file \(labelName) (or with/without .gz) is missing beside it")
        }
        let image = try IDXArray(path: images)
        let label = try IDXArray(path: labelsPath)
        guard image.shape.count >= 2 else {
            throw SpecError("\(images): IDX images must have 2 or more dimensions (N, rows, cols), header says \(image.shape)")
        }
        guard label.shape.count == 1 else {
            throw SpecError("\(labelsPath): IDX labels must have 1 dimension (N), header says \(label.shape)")
        }
        guard image.shape[0] == label.shape[0] else {
            throw SpecError("\(images): \(image.shape[0]) images but \(labelsPath) has \(label.shape[0]) labels")
        }
        let n = min(image.shape[0], limit ?? Int.max)
        let width = image.shape.dropFirst().reduce(1, *)
        var inputs = [Float](repeating: 0, count: n * width)
        image.bytes.withUnsafeBufferPointer { src in
            inputs.withUnsafeMutableBufferPointer { dst in
                for i in 0..<(n * width) { dst[i] = LabelledData.pixel(src[image.dataStart + i]) }
            }
        }
        let labels = (0..<n).map { Int(label.bytes[label.dataStart + $0]) }
        var data = LabelledData(inputs: inputs, labels: labels, width: width, source: images)
        data.bytes = Array(image.bytes[image.dataStart..<(image.dataStart + n * width)])
        return data
    }

    // MARK: safetensors

    private static func safetensors(_ path: String, limit: Int?) throws -> LabelledData {
        let file = try SafeTensorsFile(path: path)
        guard let x = file.info("inputs") else { throw SpecError("\(path): no tensor named 'inputs' (floating, [N, D])") }
        guard let y = file.info("labels") else { throw SpecError("\(path): no tensor named 'labels' (int32 or int64, [N])") }
        guard x.dtype.isFloat, x.shape.count == 2 else {
            throw SpecError("\(path): tensor 'inputs' must be floating [N, D], is \(x.dtype.rawValue) \(x.shape)")
        }
        guard y.dtype == .i32 || y.dtype == .i64, y.shape.count == 1 else {
            throw SpecError("\(path): tensor 'labels' must be int32 or int64 [N], is \(y.dtype.rawValue) \(y.shape)")
        }
        guard x.shape[0] == y.shape[0] else {
            throw SpecError("\(path): 'inputs' has \(x.shape[0]) rows but 'labels' has \(y.shape[0])")
        }
        let n = min(x.shape[0], limit ?? Int.max), width = x.shape[1]
        let raw = UnsafeRawBufferPointer(rebasing: file.bytes(x)[0..<(n * width * x.dtype.size)])
        let inputs = FloatConversion.toFloat(raw, dtype: x.dtype, count: n * width)
        if let bad = inputs.firstIndex(where: { !$0.isFinite }) {
            throw SpecError("\(path): tensor 'inputs' has a non-finite value at example \(bad / max(width, 1))")
        }
        let labelBytes = file.bytes(y)
        let labels: [Int] = (0..<n).map { i in
            y.dtype == .i32 ? Int(Int32(littleEndian: labelBytes.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)))
                : Int(Int64(littleEndian: labelBytes.loadUnaligned(fromByteOffset: i * 8, as: Int64.self)))
        }
        if let bad = labels.firstIndex(where: { $0 < 0 }) {
            throw SpecError("\(path): tensor 'labels' has a negative label \(labels[bad]) at example \(bad)")
        }
        return LabelledData(inputs: inputs, labels: labels, width: width, source: path)
    }
}

/// An unsigned-byte IDX array (the MNIST file format): magic 0x00 0x00 0x08 DIMS, then
/// DIMS big-endian UInt32 sizes, then the bytes, row-major. gzip'd files are inflated.
struct IDXArray {
    let bytes: [UInt8]
    let shape: [Int]
    let dataStart: Int

    init(path: String) throws {
        let data: Data
        do {
            data = try SmallFile.read(path, limit: CalibrationData.maxFileBytes)
        } catch {
            throw SpecError("\(path): \(error.describe("the file"))")
        }
        var bytes = [UInt8](data)
        if Gzip.isGzip(bytes) {
            do { bytes = try Gzip.decompress(bytes) } catch let e as Gzip.Failure { throw SpecError("\(path): \(e.description)") }
        }
        guard bytes.count >= 4, bytes[0] == 0, bytes[1] == 0 else {
            throw SpecError("\(path): not an IDX file (bad magic number)")
        }
        guard bytes[2] == 0x08 else {
            throw SpecError("\(path): IDX element type \(String(format: "0x%02X", bytes[2])) is not supported (unsigned bytes, 0x08, only)")
        }
        let dims = Int(bytes[3])
        guard dims >= 1, bytes.count >= 4 + 4 * dims else {
            throw SpecError("\(path): IDX header is truncated or declares \(dims) dimensions")
        }
        let shape = (0..<dims).map { d in (0..<4).reduce(0) { $0 << 8 | Int(bytes[4 + 4 * d + $1]) } }
        let start = 4 + 4 * dims
        guard let n = MatrixView.elementCount(shape), n == bytes.count - start else {
            throw SpecError("\(path): IDX header says \(shape) (\(MatrixView.elementCount(shape) ?? -1) bytes) but the file holds \(bytes.count - start) bytes of data")
        }
        self.bytes = bytes
        self.shape = shape
        dataStart = start
    }
}
