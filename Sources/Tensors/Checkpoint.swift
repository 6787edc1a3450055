import Foundation

/// A model checkpoint: one safetensors file, or a directory with `model.safetensors` or
/// shards listed in `model.safetensors.index.json`, plus side files (config, tokenizer).
public final class Checkpoint: @unchecked Sendable {
    /// The directory holding the checkpoint (the file's directory for a single file).
    public let directory: String
    /// The safetensors files, in the order their names sort; names relative to `directory`.
    public let shardNames: [String]
    public let shards: [SafeTensorsFile]
    /// The shard index file as read, when the checkpoint is sharded.
    public let indexFileName: String?
    /// Every tensor, by shard order then data order.
    public let tensors: [TensorInfo]
    private let location: [String: Int]

    public static let indexFileName = "model.safetensors.index.json"

    /// Opens a checkpoint at a file or directory path and validates every header.
    public init(path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CheckpointError(file: path, "no such file or directory")
        }
        var names: [String]
        var indexName: String?
        var weightMap: [String: String]?
        if isDir.boolValue {
            directory = path
            let indexPath = (path as NSString).appendingPathComponent(Checkpoint.indexFileName)
            if FileManager.default.fileExists(atPath: indexPath) {
                indexName = Checkpoint.indexFileName
                let map = try Checkpoint.readWeightMap(indexPath)
                weightMap = map
                names = Array(Set(map.values)).sorted()
            } else {
                let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
                let st = entries.filter { $0.hasSuffix(".safetensors") && !$0.hasPrefix(".") }.sorted()
                if st.contains("model.safetensors") {
                    names = ["model.safetensors"]
                } else if st.count == 1 {
                    names = st
                } else if st.isEmpty {
                    throw CheckpointError(file: path, "no .safetensors file in this directory")
                } else {
                    throw CheckpointError(file: path, "several .safetensors files but no \(Checkpoint.indexFileName)")
                }
            }
        } else {
            let ns = path as NSString
            directory = ns.deletingLastPathComponent.isEmpty ? "." : ns.deletingLastPathComponent
            names = [ns.lastPathComponent]
        }
        indexFileName = indexName
        shardNames = names
        let dir = directory
        shards = try names.map { try SafeTensorsFile(path: (dir as NSString).appendingPathComponent($0)) }
        var all: [TensorInfo] = []
        var location: [String: Int] = [:]
        for (i, shard) in shards.enumerated() {
            for t in shard.tensors {
                if let other = location[t.name] {
                    throw CheckpointError(file: shard.path, tensor: t.name, "also present in \(shards[other].path)")
                }
                location[t.name] = i
                all.append(t)
            }
        }
        if let weightMap {
            for (name, file) in weightMap.sorted(by: { $0.key < $1.key }) {
                guard let i = location[name], names[i] == file else {
                    throw CheckpointError(file: (dir as NSString).appendingPathComponent(Checkpoint.indexFileName), tensor: name, "listed in weight_map under \(file) but not found there")
                }
            }
            for t in all where weightMap[t.name] == nil {
                throw CheckpointError(file: shards[location[t.name]!].path, tensor: t.name, "present in the shard but missing from the weight_map")
            }
        }
        guard !all.isEmpty else {
            throw CheckpointError(file: path, "checkpoint holds no tensors")
        }
        tensors = all
        self.location = location
    }

    /// Largest index file read (a checkpoint of ~100,000 tensors has one of ~10 MB).
    static let maxIndexBytes = 64 << 20

    private static func readWeightMap(_ path: String) throws -> [String: String] {
        let data: Data
        do {
            data = try SmallFile.read(path, limit: maxIndexBytes)
        } catch {
            throw CheckpointError(file: path, error.describe("the index"))
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw CheckpointError(file: path, "not a JSON object")
        }
        guard let map = object["weight_map"] as? [String: String], !map.isEmpty else {
            throw CheckpointError(file: path, "missing or empty 'weight_map' (tensor name → shard file)")
        }
        for file in Set(map.values) where file.contains("/") || file.hasPrefix(".") {
            throw CheckpointError(file: path, "weight_map names a shard outside the directory: \(file)")
        }
        return map
    }

    public func info(_ name: String) -> TensorInfo? {
        location[name].flatMap { shards[$0].info(name) }
    }

    /// The shard holding a tensor.
    public func shard(of name: String) -> SafeTensorsFile? {
        location[name].map { shards[$0] }
    }

    /// The shard file name (relative) of a tensor.
    public func shardName(of name: String) -> String? {
        location[name].map { shardNames[$0] }
    }

    public func bytes(_ tensor: TensorInfo) -> UnsafeRawBufferPointer {
        shards[location[tensor.name]!].bytes(tensor)
    }

    /// Extensions of weight files in other formats: never copied beside our outputs
    /// (a dense/ must not ship the unpruned weights as pytorch_model.bin).
    public static let weightExtensions: Set<String> = ["bin", "pt", "pth", "ckpt", "gguf", "ggml", "h5", "msgpack", "onnx", "npz", "safetensors", "pkl", "tflite"]

    /// Files in the directory that are not checkpoint data (config.json, tokenizer files, ...),
    /// which outputs copy as they are. Only regular files directly in the directory.
    public func sideFiles() -> [String] {
        guard shards.count >= 1 else { return [] }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let skip = Set(shardNames).union([Checkpoint.indexFileName])
        return entries.filter { name in
            if skip.contains(name) || name.hasPrefix(".") { return false }
            if Checkpoint.weightExtensions.contains((name as NSString).pathExtension.lowercased()) { return false }
            var isDir: ObjCBool = false
            let p = (directory as NSString).appendingPathComponent(name)
            return FileManager.default.fileExists(atPath: p, isDirectory: &isDir) && !isDir.boolValue
        }.sorted()
    }

    /// Total parameter count and bytes.
    public var parameterCount: Int { tensors.reduce(0) { $0 + $1.elementCount } }
    public var byteCount: Int { tensors.reduce(0) { $0 + $1.byteCount } }
}
