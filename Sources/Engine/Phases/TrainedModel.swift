import Foundation
import Models
import Protocol
import Pruning
import Tensors

/// One weight tensor that trains, rows × cols, and its bias (trained too) when it has one.
struct TrainedLayer: Sendable, Equatable {
    let weight: String
    let rows: Int
    let cols: Int
    let bias: String?
}

/// The model-specific half of `TrainPhase` on the coordinator: which tensors train, the
/// examples, how a gradient task carries them, and how an epoch's weights are evaluated.
/// The rest (steps, shards, checkpoints, optimizer, schedules) does not depend on the model.
protocol TrainedModel: AnyObject {
    /// The trained tensors' layers in the flat parameter order (weight, then bias).
    var layers: [TrainedLayer] { get }
    /// Examples the data holds (labelled examples, or token windows).
    var exampleCount: Int { get }
    /// What one example adds to a task's Assign (its values and label, or token ids).
    var bytesPerExample: Int { get }
    /// Where the examples come from, for messages.
    var source: String { get }
    /// sha256 of the examples as loaded: a job records it, and a resume refuses data that changed.
    var dataDigest: String { get }
    /// What every task carries about the model: its architecture and start tensors.
    func describe(_ task: inout Prune_V1_TrainTask, job: JobContext)
    /// A task's examples (`outputs` stores what every task shares, once).
    func fill(_ task: inout Prune_V1_TrainTask, examples: [Int], outputs: OutputStore) throws
    /// What a gradient over `examples` examples is summed over (examples, or scored
    /// tokens): a step divides the summed gradient by it, and a task's loss reports it.
    func scored(examples: Int) -> Int
    /// The weights at an epoch's end (flat order) measured on the job's evaluation data:
    /// an accuracy (classifier) or a perplexity (language model), nil without evaluation data.
    func evaluate(_ flat: [Float], job: JobContext) throws -> (accuracy: Double?, perplexity: Double?)
}

extension TrainedModel {
    var parameterNames: [String] { layers.flatMap { [$0.weight] + ($0.bias.map { [$0] } ?? []) } }
    var parameterSizes: [Int] { layers.flatMap { l in [l.rows * l.cols] + (l.bias == nil ? [] : [l.rows]) } }
}

/// An MLP classifier (mlp.json) trained on labelled examples (`LabelledData`).
final class MLPTrainee: TrainedModel {
    let config: MLPConfig
    /// mlp.json's bytes, which every task carries.
    let configBytes: [UInt8]
    let model: MLPModel
    let data: LabelledData
    let layers: [TrainedLayer]

    init(job: JobContext, spec: TrainSpec) throws {
        let directory = job.checkpoint.directory
        config = try MLPConfig.load(directory)
        configBytes = [UInt8](try SmallFile.read((directory as NSString).appendingPathComponent(MLPConfig.fileName), limit: 1 << 20))
        let model = try MLPModel(directory: directory)
        self.model = model
        data = try LabelledData.load(spec.data, limit: spec.examples, split: "train")
        guard data.width == config.input else {
            throw SpecError("train.data: \(data.source): examples have \(data.width) features, the model's input is \(config.input)")
        }
        if let bad = data.labels.firstIndex(where: { $0 >= model.classes }) {
            throw SpecError("train.data: \(data.source): label \(data.labels[bad]) of example \(bad) is outside the model's \(model.classes) classes")
        }
        // Every worker fetches and keeps the whole example data (`TrainStep.exampleData`).
        let dataBytes = UInt64(data.count) * UInt64(data.width) * (data.bytes == nil ? 4 : 1)
        guard dataBytes <= TrainStep.maxExampleDataBytes else {
            throw SpecError("train.data: \(data.source): \(data.count) examples of \(data.width) values are \(dataBytes >> 20) MiB, more than the \(TrainStep.maxExampleDataBytes >> 20) MiB a worker keeps; set train.examples")
        }
        layers = zip(config.layers, model.layers).map { TrainedLayer(weight: $0.weight, rows: $1.outFeatures, cols: $1.inFeatures, bias: $0.bias) }
    }

    var exampleCount: Int { data.count }
    /// A task names its examples by index (and label): the values travel once, in `examples`.
    var bytesPerExample: Int { 8 }
    var source: String { data.source }

    lazy var dataDigest: String = {
        var h = SHA256Stream()
        if let bytes = data.bytes { h.update(bytes) } else { data.inputs.withUnsafeBytes { h.update($0) } }
        data.labels.map { UInt32(truncatingIfNeeded: $0) }.withUnsafeBytes { h.update($0) }
        return h.finalizeHex()
    }()

    func describe(_ task: inout Prune_V1_TrainTask, job: JobContext) {
        task.mlpJson = Data(configBytes)
        task.parameters = parameterNames.map { job.tensorRef(job.checkpoint.info($0)!) }
    }

    /// Every example's inputs (IDX bytes, or F32), stored once as an artifact: each
    /// worker fetches it once and keeps it, and a task carries indices into it, not the
    /// tens of megabytes a span's examples are.
    private var examples: Prune_V1_ArtifactRef?

    func fill(_ task: inout Prune_V1_TrainTask, examples rows: [Int], outputs: OutputStore) throws {
        if examples == nil { examples = try outputs.provide(data.bytes ?? FloatPayload.encode(data.inputs)) }
        task.examples = examples!
        task.exampleBytes = data.bytes == nil ? 4 : 1
        task.rows = rows.map { UInt32($0) }
        task.labels = rows.map { UInt32(data.labels[$0]) }
    }

    func scored(examples: Int) -> Int { examples }

    /// Top-1 accuracy of flat parameters on examples x (rows × input).
    func accuracy(_ parameters: MLPGradient.Parameters, x: [Float], labels: [Int32]) -> Double {
        guard !labels.isEmpty else { return 0 }
        let correct = MLPGradient.evaluate(model, parameters: parameters, x: x, labels: labels, rows: labels.count, gradients: false).correct
        return Double(correct) / Double(labels.count)
    }

    func evaluate(_ flat: [Float], job: JobContext) throws -> (accuracy: Double?, perplexity: Double?) {
        guard let e = job.spec.evaluation, let p = MLPTraining.unflatten(flat, like: model.parameters) else { return (nil, nil) }
        if testData == nil { testData = try LabelledData.load(e.data, limit: e.samples) }
        guard let test = testData, test.width == config.input, test.count > 0 else { return (nil, nil) }
        return (accuracy(p, x: test.inputs, labels: test.labels.map { Int32(clamping: $0) }), nil)
    }
    private var testData: LabelledData?
}

/// A Llama-family causal LM fine-tuned on a text's consecutive token windows: every
/// decoder Linear weight trains (under its mask when pruned); embeddings, norms and the
/// head stay as the checkpoint has them (`LlamaGradient` differentiates the Linear
/// weights only). Biases (Qwen2-style q/k/v) stay fixed too.
final class LlamaTrainee: TrainedModel {
    let config: LlamaConfig
    let configBytes: [UInt8]
    let windows: [[Int32]]
    let tokens: Int
    let layers: [TrainedLayer]
    /// The fixed tensors the forward pass reads besides the trained weights.
    let forward: [String]
    let source: String

    init(job: JobContext, spec: TrainSpec, tokens: Int) throws {
        let directory = job.checkpoint.directory
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        configBytes = [UInt8](try SmallFile.read(configPath, limit: 1 << 20))
        config = try LlamaConfig.parse(bytes: configBytes, file: configPath)
        try config.checkSequenceLength(tokens, what: "train.tokens")
        self.tokens = tokens
        source = spec.data
        let streams = try CalibrationData.load(spec.data, modelDirectory: directory)
        var windows: [[Int32]] = []
        let limit = spec.examples ?? Int.max
        for s in streams where windows.count < limit {
            windows += CalibrationData.consecutiveWindows(s, count: limit - windows.count, tokens: tokens)
        }
        guard !windows.isEmpty else { throw SpecError("train.data: \(spec.data): fewer than \(tokens) tokens, not one window of train.tokens") }
        try CalibrationData.check(windows, vocabularySize: config.vocabSize, source: "train.data: \(spec.data)")
        self.windows = windows
        var layers: [TrainedLayer] = []
        for b in 0..<config.layers {
            for name in config.linearNames(block: b) {
                guard let info = job.checkpoint.info(name), info.shape.count == 2 else {
                    throw SpecError("train: \(directory) has no 2-D tensor '\(name)', a decoder Linear weight fine-tuning trains")
                }
                layers.append(TrainedLayer(weight: name, rows: info.shape[0], cols: info.shape[1], bias: nil))
            }
        }
        self.layers = layers
        forward = try CalibrationWork.forwardTensors(config, checkpoint: job.checkpoint, excluding: Set(layers.map(\.weight)), who: "train")
        // A gradient (and the trained weights) travel as one payload each.
        let bytes = layers.reduce(0) { $0 + $1.rows * $1.cols } * 4
        guard bytes < GradientPhase.maxResultBytes else {
            throw SpecError("train: the \(layers.count) decoder Linear weights are \(bytes >> 20) MiB, more than one gradient result carries (\(GradientPhase.maxResultBytes >> 20) MiB)")
        }
    }

    var exampleCount: Int { windows.count }
    var bytesPerExample: Int { 4 * tokens }

    lazy var dataDigest: String = {
        var h = SHA256Stream()
        h.update(Array("windows \(tokens)\n".utf8))
        for w in windows { w.withUnsafeBytes { h.update($0) } }
        return h.finalizeHex()
    }()

    func describe(_ task: inout Prune_V1_TrainTask, job: JobContext) {
        task.llamaConfig = Data(configBytes)
        task.parameters = layers.map { job.tensorRef(job.checkpoint.info($0.weight)!) }
        task.forward = forward.map { job.tensorRef(job.checkpoint.info($0)!) }
        task.tokens = UInt32(tokens)
    }

    func fill(_ task: inout Prune_V1_TrainTask, examples rows: [Int], outputs: OutputStore) {
        task.tokenIds = rows.flatMap { windows[$0] }
    }

    func scored(examples: Int) -> Int { examples * (tokens - 1) }

    /// Perplexity on the job's evaluation windows with the trained weights in place.
    func evaluate(_ flat: [Float], job: JobContext) throws -> (accuracy: Double?, perplexity: Double?) {
        guard let e = job.spec.evaluation else { return (nil, nil) }
        if evaluationWindows == nil {
            evaluationWindows = try Evaluator.windows(data: e.data, modelDirectory: job.checkpoint.directory, samples: e.samples ?? 32, tokens: e.tokens)
        }
        let store = WeightStore(checkpoint: job.checkpoint)
        var at = 0
        for l in layers {
            let n = l.rows * l.cols
            guard at + n <= flat.count else { throw PruningError("trained weights: \(flat.count) values, fewer than the layers hold") }
            store.override(l.weight, with: Array(flat[at..<(at + n)]))
            at += n
        }
        let model = LlamaModel(config: config, store: store)
        return (nil, try Evaluator.perplexity(model: model, windows: evaluationWindows!, label: "epoch perplexity", quiet: true).perplexity)
    }
    private var evaluationWindows: [[Int32]]?
}
