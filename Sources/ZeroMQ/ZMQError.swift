import CZeroMQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error reported by libzmq: the `errno` code, the C function that failed and
/// libzmq's text for the code (`zmq_strerror`).
///
/// `EAGAIN` never becomes a `ZMQError` on the send and receive paths: it is reported
/// as "no message" (`nil` or `false`). `ETERM` (the context was shut down) is a
/// `ZMQError` whose ``isTerminated`` is `true`; callers treat it as orderly shutdown.
public struct ZMQError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The `errno` value (`zmq_errno()`), e.g. `EHOSTUNREACH` or ``ZMQError/terminatedCode``.
    public let code: Int32
    /// The libzmq C function that failed, e.g. `"zmq_bind"`.
    public let call: String
    /// `zmq_strerror(code)`.
    public let message: String

    /// Creates an error for `code` raised by `call`; the message is `zmq_strerror(code)`.
    public init(code: Int32, call: String) {
        self.code = code
        self.call = call
        self.message = String(cString: zmq_strerror(code))
    }

    /// `ETERM`: the socket's context was shut down or terminated.
    public static let terminatedCode: Int32 = Int32(ZMQ_HAUSNUMERO) + 53

    /// `true` when this error means the context is shutting down (`ETERM`).
    public var isTerminated: Bool { code == Self.terminatedCode }

    /// `true` when `error` is a ``ZMQError`` with code `ETERM`: the context was shut down,
    /// and the caller should close its sockets and stop.
    public static func isTerminated(_ error: Error) -> Bool {
        (error as? ZMQError)?.isTerminated ?? false
    }

    public var description: String { "\(call): \(message) (errno \(code))" }
}

/// Platform errno values, imported once here for the other files of the module.
let errnoEINTR: Int32 = EINTR
let errnoEAGAIN: Int32 = EAGAIN
let errnoEINVAL: Int32 = EINVAL
let errnoENOTSOCK: Int32 = ENOTSOCK

/// The errno gateway: every libzmq call in this module goes through here.
///
/// `body` performs one C call and returns its `Int32` result (pointer-returning calls map
/// `NULL` to `-1`). A negative result is classified by `zmq_errno()`:
/// - `EINTR`: the call is retried (so `body` must be safe to repeat; `zmq_poll` recomputes
///   its remaining timeout inside `body`);
/// - `EAGAIN`: returns `nil` ("no message" / "would block" / receive or send timeout);
/// - anything else, including `ETERM`: throws ``ZMQError`` carrying the code, `call` and
///   the `zmq_strerror` text.
@inline(__always)
@discardableResult
func zmqCall(_ call: String, _ body: () -> Int32) throws(ZMQError) -> Int32? {
    while true {
        let rc = body()
        if rc >= 0 { return rc }
        let code = zmq_errno()
        switch code {
        case EINTR: continue
        case EAGAIN: return nil
        default: throw ZMQError(code: code, call: call)
        }
    }
}

/// The gateway for calls where `EAGAIN` has no "no message" meaning (bind, options, ...):
/// it is reported as an ordinary error.
@inline(__always)
@discardableResult
func zmqRequire(_ call: String, _ body: () -> Int32) throws(ZMQError) -> Int32 {
    guard let rc = try zmqCall(call, body) else { throw ZMQError(code: EAGAIN, call: call) }
    return rc
}

/// The version of the linked libzmq, e.g. `(4, 3, 4)`.
public func zmqVersion() -> (major: Int, minor: Int, patch: Int) {
    var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
    zmq_version(&major, &minor, &patch)
    return (Int(major), Int(minor), Int(patch))
}
