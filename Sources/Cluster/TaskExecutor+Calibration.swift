import Engine
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

/// The calibration DAG's tasks as functions of their inputs (checkpoint tensors, earlier
/// tasks' artifacts): `CalibrationWork` run, outputs returned as named payloads.
extension TaskExecutor {
    /// A copy of bytes `range` of a tensor.
    private func tensorBytes(_ ref: Prune_V1_TensorRef, _ range: Range<Int>) throws -> [UInt8] {
        try Cancellation.checkpoint()
        return try inputs.withTensorBytes(ref, range) { [UInt8]($0) }
    }

    func runCalibrate(_ c: Prune_V1_CalibrateTask) throws -> [(name: String, bytes: [UInt8])] {
        let config = try LlamaConfig.parse(bytes: [UInt8](c.configJson), file: "calibrate task config")
        guard let method = JobSpec.Method(rawValue: c.method), let mode = JobSpec.Calibration.Mode(rawValue: c.mode) else {
            throw PruningError("calibrate task: unknown method \(c.method) or mode \(c.mode)")
        }
        let store = WeightStore(reader: TaskTensorReader(c.weights) { try self.tensorBytes($0, $1) })
        // Block b−1 as pruned (sequential mode): its masks, or SparseGPT's new weights.
        for p in c.pruned {
            guard let shape = store.reader.shape(of: p.name), shape.count == 2 else { throw PruningError("pruned layer \(p.name) is not in the task") }
            let mask = try Mask(rows: shape[0], cols: shape[1], bits: try inputs.artifact(p.mask))
            let updated = p.hasWeights ? try F32Bytes.decode(try inputs.artifact(p.weights), what: "weights of \(p.name)") : nil
            let dense = updated == nil ? try store.load(p.name, shape: shape) : []
            store.override(p.name, with: CalibrationWork.Pruned(mask: mask, updated: updated, error: nil).values(dense: dense))
        }
        let tokens = Int(c.tokens), samples = Int(c.samples)
        let input: CalibrationWork.Input
        if c.block == 0 {
            guard tokens > 0, c.tokenIds.count == tokens * samples else { throw PruningError("calibrate task: \(c.tokenIds.count) token ids for \(samples) × \(tokens)") }
            input = .tokens((0..<samples).map { Array(c.tokenIds[($0 * tokens)..<(($0 + 1) * tokens)]) })
        } else {
            input = .hidden(try F32Bytes.decode(try inputs.artifact(c.hidden), what: "hidden states"))
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

    func runLayerPrune(_ p: Prune_V1_LayerPruneTask) throws -> [(name: String, bytes: [UInt8])] {
        guard let method = JobSpec.Method(rawValue: p.method) else { throw PruningError("prune task: unknown method \(p.method)") }
        let name = p.tensor.name
        let store = WeightStore(reader: TaskTensorReader([p.tensor]) { try self.tensorBytes($0, $1) })
        guard let shape = store.reader.shape(of: name), shape.count == 2 else { throw PruningError("prune task: \(name) is not a matrix") }
        let weights = try store.load(name, shape: shape)
        let step = CalibrationWork.PruneStep(method: method, tensor: name, rows: shape[0], cols: shape[1],
                                             pattern: try SparsityPattern(parsing: p.pattern), sparsity: p.sparsity,
                                             blockSize: Int(p.blockSize), damp: p.damp)
        let pruned = try CalibrationWork.prune(step, weights: weights, statisticsCount: p.statistics.count) {
            try self.inputs.artifact(p.statistics[$0])
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
