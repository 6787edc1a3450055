import Engine
import ZeroMQ
import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// The tensors a task names, read from this host's copy of the checkpoint when it has
/// one, else pulled from the coordinator: what the model code sees as its weights.
final class TaskTensorReader: TensorReader {
    private let refs: [String: Prune_V1_TensorRef]
    /// Bytes `range` (relative to the tensor's start) of a tensor.
    private let bytes: (Prune_V1_TensorRef, Range<Int>) throws -> [UInt8]

    init(_ refs: [Prune_V1_TensorRef], bytes: @escaping (Prune_V1_TensorRef, Range<Int>) throws -> [UInt8]) {
        self.refs = Dictionary(refs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.bytes = bytes
    }

    var location: String { "the task's tensors" }

    func shape(of name: String) -> [Int]? { refs[name].map { $0.shape.map { Int(clamping: $0) } } }

    private func ref(_ name: String) throws -> (Prune_V1_TensorRef, DType, [Int]) {
        guard let ref = refs[name] else { throw PruningError("tensor '\(name)' is not in the task") }
        guard let dtype = DType(rawValue: ref.dtype), dtype.isFloat else { throw PruningError("tensor '\(name)': dtype \(ref.dtype) is not a float type") }
        let shape = ref.shape.map { Int(clamping: $0) }
        guard let count = MatrixView.elementCount(shape), count * dtype.size == Int(clamping: ref.byteCount) else {
            throw PruningError("tensor '\(name)': shape \(shape) does not match \(ref.byteCount) bytes")
        }
        return (ref, dtype, shape)
    }

    func floats(_ name: String) throws -> [Float] {
        let (ref, dtype, shape) = try ref(name)
        let count = shape.reduce(1, *)
        let raw = try bytes(ref, 0..<(count * dtype.size))
        return raw.withUnsafeBytes { FloatConversion.toFloat($0, dtype: dtype, count: count) }
    }

    func row(_ name: String, _ index: Int) throws -> [Float] {
        let (ref, dtype, shape) = try ref(name)
        guard shape.count == 2, index >= 0, index < shape[0] else { throw PruningError("tensor '\(name)' has no row \(index)") }
        let rowBytes = shape[1] * dtype.size
        let raw = try bytes(ref, (index * rowBytes)..<((index + 1) * rowBytes))
        return raw.withUnsafeBytes { FloatConversion.toFloat($0, dtype: dtype, count: shape[1]) }
    }
}

/// F32 arrays as little-endian bytes (the wire and artifact encoding) and back.
enum F32Bytes {
    static func encode(_ values: [Float]) -> [UInt8] {
        values.withUnsafeBytes { [UInt8]($0) }
    }

    static func decode(_ bytes: [UInt8], what: String) throws -> [Float] {
        guard bytes.count % 4 == 0 else { throw PruningError("\(what): \(bytes.count) bytes is not a whole number of F32 values") }
        var out = [Float](repeating: 0, count: bytes.count / 4)
        out.withUnsafeMutableBytes { dst in bytes.withUnsafeBytes { dst.copyMemory(from: $0) } }
        return out
    }
}

/// The worker side of the calibration DAG: inputs gathered (checkpoint tensors,
/// earlier tasks' artifacts), `CalibrationWork` run, outputs returned as payloads.
extension ComputeThread {
    /// A byte range of a tensor: mapped from the local copy, or pulled in chunks.
    func tensorBytes(_ ref: Prune_V1_TensorRef, _ range: Range<Int>, pair: ZMQSocket) throws -> [UInt8] {
        guard range.lowerBound >= 0, range.upperBound <= Int(clamping: ref.byteCount) else {
            throw PruningError("tensor '\(ref.name)': byte range \(range) outside its \(ref.byteCount) bytes")
        }
        try Cancellation.checkpoint()
        let offset = Int(clamping: ref.offset) + range.lowerBound
        if let file = source.localFile(ref.fileSha256) {
            guard offset + range.count <= file.size else { throw PruningError("tensor '\(ref.name)': byte range outside \(file.path)") }
            // Copied out, so the mapped pages can go: a worker's RSS stays what it computes
            // with, not every checkpoint page it ever read.
            defer { file.release(offset..<(offset + range.count)) }
            return [UInt8](file.bytes(offset..<(offset + range.count)))
        }
        return try fetch(file: ref.fileSha256, offset: offset, count: range.count, pair: pair)
    }

    /// An artifact's bytes, verified by digest: read from the coordinator's artifact
    /// directory when this host sees it, else pulled in chunks.
    func artifact(_ ref: Prune_V1_ArtifactRef, pair: ZMQSocket) throws -> [UInt8] {
        if !artifactRoot.isEmpty {
            let path = (artifactRoot as NSString).appendingPathComponent("\(ref.sha256.prefix(2))/\(ref.sha256)")
            if let data = FileManager.default.contents(atPath: path), data.count == Int(clamping: ref.size) {
                let bytes = [UInt8](data)
                if bytes.withUnsafeBytes({ SHA256Stream.hex($0) }) == ref.sha256 { return bytes }
            }
        }
        let bytes = try fetch(file: ref.sha256, offset: 0, count: Int(clamping: ref.size), pair: pair)
        guard bytes.withUnsafeBytes({ SHA256Stream.hex($0) }) == ref.sha256 else {
            throw PruningError("artifact \(ref.sha256.prefix(12))…: pulled bytes do not match their digest")
        }
        return bytes
    }

    func runCalibrate(_ c: Prune_V1_CalibrateTask, pair: ZMQSocket) throws -> [(name: String, bytes: [UInt8])] {
        let config = try LlamaConfig.parse(bytes: [UInt8](c.configJson), file: "calibrate task config")
        guard let method = JobSpec.Method(rawValue: c.method), let mode = JobSpec.Calibration.Mode(rawValue: c.mode) else {
            throw PruningError("calibrate task: unknown method \(c.method) or mode \(c.mode)")
        }
        let store = WeightStore(reader: TaskTensorReader(c.weights) { try self.tensorBytes($0, $1, pair: pair) })
        // Block b−1 as pruned (sequential mode): its masks, or SparseGPT's new weights.
        for p in c.pruned {
            guard let shape = store.reader.shape(of: p.name), shape.count == 2 else { throw PruningError("pruned layer \(p.name) is not in the task") }
            let mask = try Mask(rows: shape[0], cols: shape[1], bits: try artifact(p.mask, pair: pair))
            let updated = p.hasWeights ? try F32Bytes.decode(try artifact(p.weights, pair: pair), what: "weights of \(p.name)") : nil
            let dense = updated == nil ? try store.load(p.name, shape: shape) : []
            store.override(p.name, with: CalibrationWork.Pruned(mask: mask, updated: updated, error: nil).values(dense: dense))
        }
        let tokens = Int(c.tokens), samples = Int(c.samples)
        let input: CalibrationWork.Input
        if c.block == 0 {
            guard tokens > 0, c.tokenIds.count == tokens * samples else { throw PruningError("calibrate task: \(c.tokenIds.count) token ids for \(samples) × \(tokens)") }
            input = .tokens((0..<samples).map { Array(c.tokenIds[($0 * tokens)..<(($0 + 1) * tokens)]) })
        } else {
            input = .hidden(try F32Bytes.decode(try artifact(c.hidden, pair: pair), what: "hidden states"))
        }
        let step = CalibrationWork.Step(config: config, method: method, mode: mode, block: Int(c.block), tokens: tokens, samples: samples,
                                        groups: c.groups.map(\.names), emitHidden: c.emitHidden)
        let out = try CalibrationWork.calibrate(step, input: input, store: store)
        var payloads: [(name: String, bytes: [UInt8])] = []
        if c.emitHidden {
            guard let hidden = out.hidden else { throw PruningError("calibrate block \(c.block): no hidden states to emit") }
            payloads.append(("hidden", F32Bytes.encode(hidden)))
        }
        payloads += out.statistics.map { ("stats:\($0.key)", $0.bytes) }
        return payloads
    }

    func runLayerPrune(_ p: Prune_V1_LayerPruneTask, pair: ZMQSocket) throws -> [(name: String, bytes: [UInt8])] {
        guard let method = JobSpec.Method(rawValue: p.method) else { throw PruningError("prune task: unknown method \(p.method)") }
        let name = p.tensor.name
        let store = WeightStore(reader: TaskTensorReader([p.tensor]) { try self.tensorBytes($0, $1, pair: pair) })
        guard let shape = store.reader.shape(of: name), shape.count == 2 else { throw PruningError("prune task: \(name) is not a matrix") }
        let weights = try store.load(name, shape: shape)
        let step = CalibrationWork.PruneStep(method: method, tensor: name, rows: shape[0], cols: shape[1],
                                             pattern: try SparsityPattern(parsing: p.pattern), sparsity: p.sparsity,
                                             blockSize: Int(p.blockSize), damp: p.damp)
        let pruned = try CalibrationWork.prune(step, weights: weights, statisticsCount: p.statistics.count) {
            try self.artifact(p.statistics[$0], pair: pair)
        }
        var payloads: [(name: String, bytes: [UInt8])] = [("mask", pruned.mask.bits)]
        if method == .sparsegpt {
            guard let updated = pruned.updated, let error = pruned.error else { throw PruningError("\(name): SparseGPT returned no weights") }
            payloads.append(("weights", F32Bytes.encode(updated)))
            payloads.append(("error", withUnsafeBytes(of: error.bitPattern.littleEndian) { [UInt8]($0) }))
        }
        return payloads
    }
}
