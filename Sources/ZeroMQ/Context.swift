import CZeroMQ

/// A libzmq context: the I/O threads and the inproc namespace shared by its sockets.
///
/// Thread-safe (libzmq contexts are). Every ``ZMQSocket`` keeps its context alive, so the
/// context is terminated (`zmq_ctx_term`, in `deinit`) only after all its sockets are closed.
/// Termination waits for each closed socket's linger period: set ``ZMQSocket/setLinger(ms:)``
/// on sockets that may hold undeliverable messages.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    /// Creates a context with `ioThreads` background I/O threads.
    public init(ioThreads: Int32 = 1) throws {
        var raw: UnsafeMutableRawPointer?
        try zmqRequire("zmq_ctx_new") {
            raw = zmq_ctx_new()
            return raw == nil ? -1 : 0
        }
        handle = raw!
        do {
            try zmqRequire("zmq_ctx_set") { zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads) }
        } catch {
            _ = zmq_ctx_term(handle)
            throw error
        }
    }

    /// Shuts the context down (`zmq_ctx_shutdown`): every blocking call on its sockets, now and
    /// later, fails with `ETERM` (``ZMQError/isTerminated(_:)``), so the threads using them can
    /// close them and exit. Safe to call from any thread, more than once.
    public func shutdown() {
        _ = zmq_ctx_shutdown(handle)
    }

    deinit {
        while zmq_ctx_term(handle) != 0 && zmq_errno() == errnoEINTR {}
    }
}
