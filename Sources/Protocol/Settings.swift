/// The protocol's constants in one place (ZeroMQ guide ch.4: contract first).
public struct Settings: Sendable, Equatable {
    /// Bumped on any incompatible change to prune.proto or the frame layout.
    public static let protocolVersion: UInt32 = 11

    /// Heartbeats both ways every this many milliseconds.
    public var heartbeatMs: Int = 1000
    /// A peer missing this many heartbeats in a row is dead.
    public var liveness: Int = 3
    /// Worker reconnect backoff: starts here and doubles up to `reconnectMaxMs`.
    public var reconnectMs: Int = 1000
    public var reconnectMaxMs: Int = 32000
    /// A lease lasts this long unless a heartbeat naming its task renews it.
    public var leaseMs: Int = 10_000
    /// A task failing this many times fails the job (failures of quarantined workers
    /// are not counted).
    public var maxAttempts: Int = 3
    /// A worker identity whose results are refused this many times is quarantined.
    public var maxRefusedResults: Int = 3
    /// A worker identity whose attempts fail or vanish this many times is quarantined.
    public var maxWorkerFailures: Int = 5
    /// Checkpoint bytes pulled from the coordinator: chunk size and outstanding requests.
    public var chunkBytes: Int = 1 << 20
    public var chunkCredit: Int = 8
    /// Largest frame a peer may send (ZMQ_MAXMSGSIZE); larger ones drop the connection.
    public var maxFrameBytes: Int64 = 1 << 30
    /// Largest envelope (protobuf header frame) accepted.
    public var maxEnvelopeBytes: Int = 1 << 20
    /// Largest envelope a worker accepts from its coordinator: an Assign carries its
    /// task's inputs (a training span's example indices or token ids, up to 64 MiB). What the coordinator
    /// accepts from workers stays `maxEnvelopeBytes`.
    public var maxCoordinatorEnvelopeBytes: Int = 80 << 20

    /// These settings as a worker decodes its coordinator's messages with.
    public var fromCoordinator: Settings {
        var s = self
        s.maxEnvelopeBytes = max(maxEnvelopeBytes, maxCoordinatorEnvelopeBytes)
        return s
    }
    /// Rows per mask task for patterns that decide row by row (per_row, N:M): tasks of
    /// at most this many weights.
    public var maxWeightsPerTask: Int = 16 << 20

    public init() {}

    /// Time after which a silent peer is dead.
    public var deadAfterMs: Int { heartbeatMs * liveness }
}
