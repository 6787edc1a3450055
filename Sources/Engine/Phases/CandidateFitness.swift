import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// A fitness task of the evolutionary search (`evolve:G:S:C`): the candidate's masks
/// applied from the level databases, the model run on the stage's token sample, and the
/// KL divergence of its next-token distributions from the dense model's, summed in token
/// order. The dense model's log-probabilities of a sequence are computed once per process
/// and kept (`ReferenceCache`): every candidate of a search is scored against the same
/// dense model on windows drawn from the same calibration set.
enum CandidateFitness {
    /// Tokens one task may score: bounded before anything is allocated.
    static let maxTokens = Allocation.mostTokensPerCandidate
    /// Windows longer than this are refused (the spec refuses them first).
    static let maxWindow = 1 << 16
    /// A mean KL divergence (nats per token) above this is no measurement: a worker's
    /// result beyond it is refused. ln(vocabulary) bounds the divergence of any
    /// candidate that is not certain of a wrong token; 1e4 leaves room for those.
    static let largestMeanKL = 1e4

    static func run(_ f: Prune_V1_FitnessTask, inputs: TaskInputs) throws -> TaskOutputs {
        let config = try LlamaConfig.parse(bytes: [UInt8](f.configJson), file: "fitness task config")
        let total = f.lengths.reduce(0) { $0 + Int($1) }
        guard !f.lengths.isEmpty, f.lengths.allSatisfy({ $0 >= 1 && $0 <= maxWindow }), total == f.tokenIds.count, total <= maxTokens else {
            throw PruningError("fitness task: \(f.tokenIds.count) token ids for sequences of \(f.lengths.prefix(8)) tokens (at most \(maxTokens))")
        }
        try config.checkSequenceLength(Int(f.lengths.max()!), what: "fitness task sequence")
        guard f.tokenIds.allSatisfy({ $0 >= 0 && Int($0) < config.vocabSize }) else { throw PruningError("fitness task: a token id is outside the vocabulary") }
        var sequences: [[Int32]] = []
        var at = 0
        for n in f.lengths {
            sequences.append(Array(f.tokenIds[at..<(at + Int(n))]))
            at += Int(n)
        }
        let store = WeightStore(reader: TaskTensorReader(f.weights, inputs: inputs))
        let model = LlamaModel(config: config, store: store)
        let vocab = config.vocabSize

        // The dense model's log-probabilities, from the cache or computed now.
        let modelKey = f.weights.map { "\($0.name)@\($0.fileSha256):\($0.offset)+\($0.byteCount)/\($0.dtype)" }.joined(separator: ";")
            + [UInt8](f.configJson).withUnsafeBytes { SHA256Stream.hex($0) }
        let keys = sequences.map { ReferenceCache.key(model: modelKey, tokens: $0) }
        var references = keys.map { ReferenceCache.shared.get($0) }
        let missing = references.indices.filter { references[$0] == nil }
        // One sequence at a time: a GEMM's rounding may depend on the rows beside it, and
        // which windows miss the cache depends on the worker's history, not the task.
        for i in missing {
            try forward(model, [sequences[i]]) { _, logits in
                let reference = NextTokenKL.logProbabilities(logits, positions: sequences[i].count - 1, vocab: vocab)
                references[i] = reference
                ReferenceCache.shared.put(keys[i], reference)
            }
        }

        // The candidate: each layer's weights with its level's mask applied.
        for layer in f.layers {
            try Cancellation.checkpoint()
            guard let shape = store.reader.shape(of: layer.name), shape.count == 2 else { throw PruningError("fitness task: \(layer.name) is not a matrix of the task") }
            let database = try DatabaseCache.bytes(layer.database, inputs: inputs)
            guard database.count == shape[0] * shape[1], layer.position < UInt32(LevelDatabase.never) else {
                throw PruningError("fitness task: the level database of \(layer.name) has \(database.count) bytes for \(shape), position \(layer.position)")
            }
            var weights = try store.load(layer.name, shape: shape)
            LevelDatabase.apply(database, position: Int(layer.position), to: &weights)
            store.override(layer.name, with: weights)
        }
        var sum = 0.0, count = 0
        var kl = [Double](repeating: 0, count: sequences.count)
        try forward(model, sequences) { i, logits in
            let positions = sequences[i].count - 1
            kl[i] = NextTokenKL.sum(reference: references[i]!, candidate: logits, positions: positions, vocab: vocab)
        }
        // In sequence order, whatever order the forward passes ran in.
        for i in sequences.indices {
            sum += kl[i]
            count += sequences[i].count - 1
        }
        store.clearOverrides()
        return TaskOutputs(payloads: [(EvolutionPhase.fitness.rawValue, FloatPayload.encode(sum) + FloatPayload.encode(Double(count)))])
    }

    /// Runs the model on `sequences`, those of one length together (one GEMM per layer
    /// over all of them), and hands each sequence's logits (tokens × vocab) to `body`.
    static func forward(_ model: LlamaModel, _ sequences: [[Int32]], _ body: (Int, [Float]) throws -> Void) throws {
        let config = model.config, h = config.hiddenSize
        let byLength = Dictionary(grouping: sequences.indices) { sequences[$0].count }
        for length in byLength.keys.sorted() {
            let members = byLength[length]!
            let rope = RotaryTable(headDim: config.headDim, theta: config.ropeTheta, maxTokens: length)
            var x = try model.embed(members.flatMap { sequences[$0] })
            for b in 0..<config.layers {
                try Cancellation.checkpoint()
                try model.block(b).forward(&x, samples: members.count, tokens: length, rope: rope)
            }
            for (j, i) in members.enumerated() {
                try Cancellation.checkpoint()
                try body(i, try model.logits(Array(x[(j * length * h)..<((j + 1) * length * h)]), tokens: length))
            }
        }
    }
}

/// What fitness tasks keep in their process across tasks (a worker scores many candidates
/// against the same dense model, windows and level databases): bounded, past `capacity`
/// bytes the oldest entries go (and are recomputed or re-read if needed, to the same values).
final class BoundedCache<Value>: @unchecked Sendable {
    private let capacity: Int
    private let size: (Value) -> Int
    private let lock = NSLock()
    private var entries: [String: Value] = [:]
    private var order: [String] = []
    private var bytes = 0

    init(capacity: Int, size: @escaping (Value) -> Int) {
        self.capacity = capacity
        self.size = size
    }

    func get(_ key: String) -> Value? {
        lock.lock()
        defer { lock.unlock() }
        return entries[key]
    }

    func put(_ key: String, _ value: Value) {
        lock.lock()
        defer { lock.unlock() }
        guard entries[key] == nil, size(value) <= capacity else { return }
        entries[key] = value
        order.append(key)
        bytes += size(value)
        while bytes > capacity, !order.isEmpty {
            let old = order.removeFirst()
            bytes -= entries.removeValue(forKey: old).map(size) ?? 0
        }
    }
}

/// The dense model's next-token log-probabilities per calibration window (F32, 50 MB for
/// 256 tokens of SmolLM2's 49152-word vocabulary), by model and tokens.
enum ReferenceCache {
    static let shared = BoundedCache<[Float]>(capacity: 3 << 30) { $0.count * 4 }

    static func key(model: String, tokens: [Int32]) -> String {
        var s = SHA256Stream()
        s.update(Array(model.utf8))
        tokens.withUnsafeBytes { s.update($0) }
        return s.finalizeHex()
    }
}

/// Level databases by digest: read, and their digests checked, once rather than once per
/// candidate.
enum DatabaseCache {
    static let shared = BoundedCache<[UInt8]>(capacity: 2 << 30) { $0.count }

    static func bytes(_ ref: Prune_V1_ArtifactRef, inputs: TaskInputs) throws -> [UInt8] {
        if let hit = shared.get(ref.sha256) { return hit }
        let value = try inputs.artifact(ref)
        shared.put(ref.sha256, value)
        return value
    }
}
