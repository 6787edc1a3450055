import CZeroMQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Waits until any of a set of sockets is readable (`zmq_poll`).
///
/// Use it from the thread that owns the sockets. It keeps them alive while it holds them.
public struct ZMQPoller {
    private var sockets: [ZMQSocket] = []

    /// An empty poller.
    public init() {}

    /// Adds `socket` to the set, watching for readability; returns its index in the flags
    /// that ``poll(timeoutMs:)`` returns.
    @discardableResult
    public mutating func add(_ socket: ZMQSocket) -> Int {
        sockets.append(socket)
        return sockets.count - 1
    }

    /// The number of sockets in the set.
    public var count: Int { sockets.count }

    /// Waits up to `timeoutMs` milliseconds (-1: forever, 0: just check) until at least one
    /// socket has a message to receive. An interrupted wait (`EINTR`) resumes with the time
    /// that remains.
    /// - Returns: one readable flag per added socket, in the order they were added; all `false`
    ///   when the timeout expired.
    /// - Throws: ``ZMQError``; `ETERM` when the context was shut down, `ENOTSOCK` when a
    ///   socket was closed.
    public func poll(timeoutMs: Int) throws -> [Bool] {
        var items = try sockets.map { socket -> zmq_pollitem_t in
            guard let h = socket.pollHandle else {
                throw ZMQError(code: errnoENOTSOCK, call: "zmq_poll")
            }
            return zmq_pollitem_t(socket: h, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        }
        let deadline = timeoutMs >= 0 ? monotonicMs() + Int64(timeoutMs) : nil
        let n = items.count
        let rc = try items.withUnsafeMutableBufferPointer { buf in
            try zmqCall("zmq_poll") {
                var remaining = -1
                if let deadline { remaining = Int(max(0, deadline - monotonicMs())) }
                return zmq_poll(buf.baseAddress, Int32(n), remaining)
            }
        }
        if rc == nil { return Array(repeating: false, count: n) }
        return items.map { $0.revents & Int16(ZMQ_POLLIN) != 0 }
    }
}

/// Milliseconds on the monotonic clock.
func monotonicMs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}
