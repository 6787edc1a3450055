import Foundation
import Synchronization
import Tensors

/// A fresh temporary directory, removed by `cleanup()`.
public final class TempDir {
    public let path: String
    public init(_ label: String = "prune-test") {
        path = NSTemporaryDirectory() + "\(label)-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
    public func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Deterministic normal-ish values (sum of uniforms) from a seed, for synthetic weights.
public struct SeededValues {
    private var state: UInt64
    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    public mutating func next() -> Float {
        var acc: Float = 0
        for _ in 0..<4 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            acc += Float(state >> 40) / Float(1 << 24)
        }
        return (acc - 2) * 0.1
    }
    public mutating func values(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
}

/// Writes a small Llama-shaped checkpoint: embeddings, norms, attention and MLP
/// projections, lm_head; single file or `shards` files with an index.
public enum SyntheticModel {
    public static func tensors(layers: Int = 2, hidden: Int = 32, intermediate: Int = 64, vocab: Int = 48) -> [(String, [Int])] {
        var t: [(String, [Int])] = [("model.embed_tokens.weight", [vocab, hidden])]
        for l in 0..<layers {
            let p = "model.layers.\(l)."
            t += [(p + "input_layernorm.weight", [hidden]),
                  (p + "self_attn.q_proj.weight", [hidden, hidden]),
                  (p + "self_attn.k_proj.weight", [hidden / 2, hidden]),
                  (p + "self_attn.v_proj.weight", [hidden / 2, hidden]),
                  (p + "self_attn.o_proj.weight", [hidden, hidden]),
                  (p + "post_attention_layernorm.weight", [hidden]),
                  (p + "mlp.gate_proj.weight", [intermediate, hidden]),
                  (p + "mlp.up_proj.weight", [intermediate, hidden]),
                  (p + "mlp.down_proj.weight", [hidden, intermediate])]
        }
        t += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
        return t
    }

    /// Writes the model into `directory` and returns the tensor names in file order.
    @discardableResult
    public static func write(to directory: String, dtype: DType = .f32, shards: Int = 1, seed: UInt64 = 1,
                             layers: Int = 2, hidden: Int = 32, intermediate: Int = 64,
                             extra: [(String, DType, [Int], [UInt8])] = []) throws -> [String] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var rng = SeededValues(seed: seed)
        var all: [(TensorSpec, [UInt8])] = []
        for (name, shape) in tensors(layers: layers, hidden: hidden, intermediate: intermediate) {
            let n = shape.reduce(1, *)
            var values = rng.values(n)
            if name.hasSuffix("norm.weight") { values = values.map { 1 + $0 } }
            var bytes = [UInt8](repeating: 0, count: n * dtype.size)
            values.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { FloatConversion.fromFloat(v, dtype: dtype, into: $0) } }
            all.append((TensorSpec(name: name, dtype: dtype, shape: shape), bytes))
        }
        for (name, dt, shape, bytes) in extra { all.append((TensorSpec(name: name, dtype: dt, shape: shape), bytes)) }
        let config = "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": \(hidden), \"num_hidden_layers\": \(layers)}\n"
        try AtomicFileWriter.write(Array(config.utf8), to: (directory as NSString).appendingPathComponent("config.json"))
        let perShard = (all.count + shards - 1) / shards
        var weightMap: [String: String] = [:]
        for s in 0..<shards {
            let part = Array(all[min(s * perShard, all.count)..<min((s + 1) * perShard, all.count)])
            let file = shards == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", s + 1, shards)
            let w = try SafeTensorsWriter(path: (directory as NSString).appendingPathComponent(file),
                                          tensors: part.map(\.0), metadata: ["format": "pt"])
            for (spec, bytes) in part { try w.write(bytes); weightMap[spec.name] = file }
            try w.finish()
        }
        if shards > 1 {
            let entries = weightMap.keys.sorted().map { "\"\($0)\": \"\(weightMap[$0]!)\"" }.joined(separator: ", ")
            let index = "{\"metadata\": {\"total_size\": \(all.reduce(0) { $0 + $1.1.count })}, \"weight_map\": {\(entries)}}"
            try AtomicFileWriter.write(Array(index.utf8), to: (directory as NSString).appendingPathComponent(Checkpoint.indexFileName))
        }
        return all.map(\.0.name)
    }
}

/// numpy's .npy format (version 1.0), for token-id fixtures.
public enum Npy {
    /// An int32 array of `shape`, little-endian, C order.
    public static func int32(_ values: [Int32], shape: [Int]) -> [UInt8] {
        let dims = shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? "," : "")
        var header = "{'descr': '<i4', 'fortran_order': False, 'shape': (\(dims)), }"
        while (10 + header.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count), 0] + Array(header.utf8)
        for v in values { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        return bytes
    }
}

/// Running child processes: Python helpers and the `prune` binary.
public enum Subprocess {
    public struct Result {
        public let status: Int32
        public let stdout: String
        public let stderr: String
    }

    /// The package root (two levels above this file's folder).
    public static var packageRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// The built `prune` binary beside the test bundle.
    public static var pruneBinary: String {
        let candidates = [Bundle.main.bundleURL.appendingPathComponent("prune").path,
                          URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("prune").path]
        for c in candidates where FileManager.default.isExecutableFile(atPath: c) { return c }
        // swift test builds every product into the same folder as the test runner.
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug/prune").path
        return dir
    }

    /// Runs to completion; `environment` is added to this process's own.
    public static func run(_ executable: String, _ arguments: [String], cwd: String? = nil,
                           environment: [String: String] = [:]) throws -> Result {
        let r = try Spawn.collect(executable, arguments, cwd: cwd, environment: environment)
        return Result(status: r.status, stdout: String(decoding: r.stdout, as: UTF8.self), stderr: String(decoding: r.stderr, as: UTF8.self))
    }

    public static func prune(_ arguments: [String], cwd: String? = nil) throws -> Result {
        try run(pruneBinary, arguments, cwd: cwd)
    }

    /// python3 with a script from Tests/python; nil when python3 or its packages are missing.
    public static func python(_ script: String, _ arguments: [String]) throws -> Result? {
        guard pythonHasSafetensors else { return nil }
        return try run("/usr/bin/env", ["python3", packageRoot + "/Tests/python/" + script] + arguments)
    }

    /// CI sets PRUNE_REQUIRE_PYTHON=1 so a missing interop dependency fails instead of skipping.
    public static var pythonRequired: Bool { ProcessInfo.processInfo.environment["PRUNE_REQUIRE_PYTHON"] == "1" }

    /// Whether python3 imports these modules (e.g. "torch, transformers").
    public static func pythonHas(_ modules: String) -> Bool {
        (try? run("/usr/bin/env", ["python3", "-c", "import \(modules)"]))?.status == 0
    }

    public static let pythonHasSafetensors: Bool = {
        guard let r = try? run("/usr/bin/env", ["python3", "-c", "import numpy, safetensors, ml_dtypes"]) else { return false }
        return r.status == 0
    }()
}

/// A child process running in the background, output captured to files.
public final class Background: Sendable {
    public let pid: Int32
    public let stdoutPath: String
    public let stderrPath: String
    /// The exit code (128 + signal when killed) once the child ended.
    private let ended = Ended()
    private final class Ended: Sendable { let code = Mutex<Int32?>(nil) }

    public init(_ executable: String, _ arguments: [String], cwd: String? = nil, environment: [String: String] = [:]) throws {
        let base = NSTemporaryDirectory() + "prune-bg-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        stdoutPath = base + ".out"
        stderrPath = base + ".err"
        let ended = self.ended
        pid = try Spawn.start(executable, arguments, cwd: cwd, environment: environment, stdout: stdoutPath, stderr: stderrPath) { code in
            ended.code.withLock { $0 = code }
        }
    }

    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
    public var isRunning: Bool { ended.code.withLock { $0 == nil } }

    /// Waits for exit; nil on timeout.
    @discardableResult
    public func wait(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while isRunning && Date() < deadline { usleep(20_000) }
        return ended.code.withLock { $0 }
    }

    /// Waits until `condition` holds; false on timeout.
    public static func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    public func kill(_ signal: Int32 = SIGKILL) { _ = Glibc.kill(pid, signal) }

    deinit {
        if isRunning { kill() }
        try? FileManager.default.removeItem(atPath: stdoutPath)
        try? FileManager.default.removeItem(atPath: stderrPath)
    }

    /// Processes whose parent is `pid` (from /proc).
    public static func children(of pid: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { child in
            guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == pid
        }
    }

    public static func isAlive(_ pid: Int32) -> Bool {
        guard Glibc.kill(pid, 0) == 0 else { return false }
        // A zombie is dead for our purposes.
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        return !stat.contains(") Z ")
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    public static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// A job's output bytes: every file of its out/ but the manifest (which records times).
/// What runs with different worker counts, or a resumed run, must reproduce.
public func jobOutputs(_ jobDirectory: String) -> [String: Data] {
    filesUnder(jobDirectory + "/out").filter { !$0.key.hasSuffix("manifest.json") }
}

/// All regular files under a directory, by relative path.
public func filesUnder(_ dir: String) -> [String: Data] {
    var out: [String: Data] = [:]
    guard let e = FileManager.default.enumerator(atPath: dir) else { return out }
    while let f = e.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: dir + "/" + f, isDirectory: &isDir), !isDir.boolValue {
            out[f] = FileManager.default.contents(atPath: dir + "/" + f)
        }
    }
    return out
}
