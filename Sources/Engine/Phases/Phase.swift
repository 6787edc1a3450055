import Foundation
import Protocol
import Pruning
import Tensors

/// A task of a job's DAG: its phase and a key within the phase (`mask:NAME:0+64`,
/// `calibrate:3:1`, `prune:NAME`). The text form is the ledger's and the wire's id.
public struct TaskID: Hashable, Sendable, CustomStringConvertible {
    public let phase: String
    public let key: String

    public init(_ phase: String, _ key: String) {
        self.phase = phase
        self.key = key
    }

    /// Parses `PHASE:KEY`; nil without a colon.
    public init?(_ text: String) {
        guard let colon = text.firstIndex(of: ":") else { return nil }
        phase = String(text[..<colon])
        key = String(text[text.index(after: colon)...])
    }

    public var description: String { "\(phase):\(key)" }
}

/// The name of one output of a task (a payload of its Result, an artifact).
public struct OutputName: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }
}

/// A task as its phase plans it: the tasks that must be done before it may start.
public struct PhaseTask: Sendable, Equatable {
    public let id: TaskID
    public let dependencies: [TaskID]
    /// Tasks with the same key share costly state a worker keeps between tasks (the dense
    /// model's outputs on one token sample): the scheduler prefers to give them to the
    /// worker that ran one before. Scheduling only: results never depend on it.
    public let affinity: String?
    /// How many workers idle when it starts may help it (a training span's all-gather):
    /// scheduling only, its result never depends on them.
    public let helpers: Int
    public init(_ id: TaskID, after dependencies: [TaskID] = [], affinity: String? = nil, helpers: Int = 0) {
        self.id = id
        self.dependencies = dependencies
        self.affinity = affinity
        self.helpers = helpers
    }
}

/// Where the outputs of done tasks are, for building the work of the tasks that need them.
public protocol OutputStore {
    /// A reference a task's work carries to an output (its digest and size). Throws
    /// `MissingOutput` when the producing task is not done or the output is gone.
    func ref(_ name: OutputName, of task: TaskID) throws -> Prune_V1_ArtifactRef
    /// The bytes of an output (the coordinator's reads: assembly, a phase's decisions).
    func bytes(_ name: OutputName, of task: TaskID) throws -> [UInt8]
    /// Stores bytes the coordinator itself provides for tasks to read (a classifier's
    /// training examples, which every training task takes rows of) and returns their
    /// reference: kept for the job, never collected. The same bytes give the same reference.
    func provide(_ bytes: [UInt8]) throws -> Prune_V1_ArtifactRef
}

/// An output that a task needs from a done task is gone (deleted, or collected): the
/// producing task must run again.
public struct MissingOutput: Error, CustomStringConvertible {
    /// The task whose output is missing.
    public let task: String
    public let description: String
    public init(task: String, _ description: String) {
        self.task = task
        self.description = description
    }
}

/// Where a task's inputs come from: a worker maps its local copy of the checkpoint or
/// pulls chunks from the coordinator; the coordinator reads its own disk; the in-process
/// executor its memory.
public protocol TaskInputs {
    /// Calls `body` with bytes `range` (relative to the tensor's first byte) of a tensor.
    func withTensorBytes<R>(_ ref: Prune_V1_TensorRef, _ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R
    /// An artifact's bytes, verified against its digest.
    func artifact(_ ref: Prune_V1_ArtifactRef) throws -> [UInt8]
    /// Calls `body` with an artifact's bytes, verified against its digest, without a copy
    /// where the store allows (a worker maps a local artifact file): what a task that
    /// only reads a large artifact once (a training step's gradients) uses.
    func withArtifact<R>(_ ref: Prune_V1_ArtifactRef, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R
    /// The span group a training span task runs in (`train.exchange: allgather`), if any.
    var spanGroup: SpanGroup? { get }
}

extension TaskInputs {
    /// Held in memory, or read whole: the copy `artifact` makes.
    public func withArtifact<R>(_ ref: Prune_V1_ArtifactRef, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try artifact(ref).withUnsafeBytes(body)
    }

    /// A copy of bytes `range` of a tensor.
    func tensorBytes(_ ref: Prune_V1_TensorRef, _ range: Range<Int>) throws -> [UInt8] {
        try Cancellation.checkpoint()
        return try withTensorBytes(ref, range) { [UInt8]($0) }
    }
}

/// A task's named outputs, and what the wire needs to code its mask.
public struct TaskOutputs: Sendable {
    public var payloads: [(name: String, bytes: [UInt8])] = []
    /// Weights kept by the task's mask (reported in the Result).
    public var kept: UInt64 = 0
    /// The "mask" payload's shape and N:M pattern.
    public var maskShape: MaskShape?
    /// Payloads that need not survive a crash of the machine (stored without fsync):
    /// transient outputs whose task reruns to the same bytes if a resume finds them gone.
    public var volatile: Set<String> = []

    public init(payloads: [(name: String, bytes: [UInt8])] = [], kept: UInt64 = 0, maskShape: MaskShape? = nil) {
        self.payloads = payloads
        self.kept = kept
        self.maskShape = maskShape
    }

    /// What a mask coder needs to know of a mask payload.
    public struct MaskShape: Sendable {
        public let rows: Int
        public let cols: Int
        public let nm: (n: Int, m: Int)?
    }

    /// The outputs of a task whose first payload is a mask of `pattern`.
    static func withMask(_ mask: Mask, pattern: String, more: [(name: String, bytes: [UInt8])] = []) -> TaskOutputs {
        var nm: (n: Int, m: Int)?
        if case .nm(let n, let m)? = try? SparsityPattern(parsing: pattern) { nm = (n, m) }
        return TaskOutputs(payloads: [(OutputName.mask.rawValue, mask.bits)] + more, kept: UInt64(mask.keptCount),
                           maskShape: MaskShape(rows: mask.rows, cols: mask.cols, nm: nm))
    }
}

extension OutputName {
    /// A pruned tensor's mask (packed bits, rows × ⌈cols/8⌉).
    public static let mask = OutputName("mask")
}

/// One kind of distributed work. A phase lists its tasks and their dependencies from the
/// job; builds a task's work from the outputs it depends on; checks a result; and runs a
/// task, on a worker or in process, as a pure, cancellable function from its inputs to
/// its named outputs. Neither executor (in process, cluster) knows a phase by name:
/// phases are found through `PhaseRegistry`.
public protocol Phase: AnyObject {
    /// The first part of the phase's task ids.
    static var name: String { get }
    /// The phase for this job, or nil when the job does not use it. `earlier` are the
    /// job's phases before it in the registry (whose tasks it may depend on).
    init?(job: JobContext, earlier: [any Phase]) throws
    /// The phase's tasks in queue order (a task's dependencies come before it in the job).
    var tasks: [PhaseTask] { get }
    /// The work an Assign carries for a task of this phase.
    func work(for task: TaskID, outputs: OutputStore) throws -> Prune_V1_Assign.OneOf_Work
    /// The names of a task's outputs, in the order its Result carries them.
    func outputNames(of task: TaskID) -> [OutputName]
    /// Why a task's outputs (in `outputNames` order) are unusable; nil when they are fine.
    func problem(in outputs: [[UInt8]], of task: TaskID) -> String?
    /// Outputs read only by the tasks that depend on this one (activations, statistics):
    /// deleted once all of those are done. The others stay until assembly.
    func isTransient(_ name: OutputName) -> Bool
    /// Outputs that need not survive a crash of the machine: the worker stores them without
    /// fsync (`TaskOutputs.volatile`, the same names), the coordinator likewise, and a task
    /// whose outputs are all volatile is committed to the ledger without waiting for the
    /// disk (a resume after a power loss verifies them and reruns the task if they are gone).
    func isVolatile(_ name: OutputName) -> Bool
    /// Runs a task's work: nil when the work is not this phase's kind.
    static func run(_ work: Prune_V1_Assign.OneOf_Work, inputs: TaskInputs) throws -> TaskOutputs?
}

extension Phase {
    public func isTransient(_ name: OutputName) -> Bool { false }
    public func isVolatile(_ name: OutputName) -> Bool { false }
}

/// A phase whose tasks decide pruned tensors: what assembly, and later phases, read from it.
public protocol PrunedTensorSource {
    /// The tensors it decides.
    var prunedTensors: Set<String> { get }
    /// The tasks that decide a tensor, in row order.
    func producers(of tensor: String) -> [TaskID]
    /// The mask parts of a tensor (row blocks, in row order) as references, and the
    /// updated values' reference where the method updates them.
    func maskParts(of tensor: String, outputs: OutputStore) throws -> (masks: [Prune_V1_ArtifactRef], updated: Prune_V1_ArtifactRef?)
    func mask(of tensor: String, outputs: OutputStore) throws -> Mask
    /// Whether the tensor's kept weights get new values (SparseGPT), not only its mask.
    func updatesValues(of tensor: String) -> Bool
    /// New values of the kept weights (SparseGPT), nil when the method keeps them.
    func updatedValues(of tensor: String, outputs: OutputStore) throws -> [Float]?
    /// ‖WX − ŴX‖² on the calibration inputs, where the method measures it.
    func reconstructionError(of tensor: String, outputs: OutputStore) throws -> Double?
}

extension PrunedTensorSource {
    public func updatesValues(of tensor: String) -> Bool { false }
    public func updatedValues(of tensor: String, outputs: OutputStore) throws -> [Float]? { nil }
    public func reconstructionError(of tensor: String, outputs: OutputStore) throws -> Double? { nil }
}

/// F32 and F64 arrays as little-endian bytes: the one codec of the wire's and the
/// artifacts' float payloads.
public enum FloatPayload {
    public static func encode(_ values: [Float]) -> [UInt8] {
        values.withUnsafeBytes { [UInt8]($0) }
    }

    public static func encode(_ value: Double) -> [UInt8] {
        withUnsafeBytes(of: value.bitPattern.littleEndian) { [UInt8]($0) }
    }

    public static func floats(_ bytes: [UInt8], what: String) throws -> [Float] {
        guard bytes.count % 4 == 0 else { throw PruningError("\(what): \(bytes.count) bytes is not a whole number of F32 values") }
        var out = [Float](repeating: 0, count: bytes.count / 4)
        out.withUnsafeMutableBytes { dst in bytes.withUnsafeBytes { dst.copyMemory(from: $0) } }
        return out
    }

    public static func doubles(_ bytes: [UInt8], what: String) throws -> [Double] {
        guard bytes.count % 8 == 0 else { throw PruningError("\(what): \(bytes.count) bytes is not a whole number of F64 values") }
        return bytes.withUnsafeBytes { raw in
            (0..<(bytes.count / 8)).map { Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self))) }
        }
    }

    public static func double(_ bytes: [UInt8], what: String) throws -> Double {
        guard bytes.count == 8 else { throw PruningError("\(what): \(bytes.count) bytes is not one F64") }
        return bytes.withUnsafeBytes { Double(bitPattern: UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
    }
}
