import CZeroMQ

/// One frame of a multipart message, backed by its own `zmq_msg_t`.
///
/// Received frames own the message libzmq filled (`zmq_msg_recv`), so large payloads are not
/// copied on receive: read them in place with ``withUnsafeBytes(_:)``. The message is closed
/// when the frame is deinitialized. Not safe for concurrent mutation; reading from several
/// threads is fine.
public final class ZMQFrame: @unchecked Sendable {
    let msg: UnsafeMutablePointer<zmq_msg_t>

    /// An empty message, to be filled by `zmq_msg_recv`.
    init() {
        msg = .allocate(capacity: 1)
        zmq_msg_init(msg)
    }

    /// A frame holding a copy of `bytes` (for sending).
    public convenience init(_ bytes: UnsafeRawBufferPointer) throws {
        self.init()
        try fill(from: bytes)
    }

    /// A frame holding a copy of `bytes` (for sending).
    public convenience init(bytes: [UInt8]) throws {
        self.init()
        try bytes.withUnsafeBytes { try fill(from: $0) }
    }

    /// A frame holding a copy of `bytes` (for sending).
    public convenience init(bytes: ArraySlice<UInt8>) throws {
        self.init()
        try bytes.withUnsafeBytes { try fill(from: $0) }
    }

    /// Replaces the (empty) message with a copy of `bytes`.
    private func fill(from bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count > 0, let src = bytes.baseAddress else { return }
        do {
            try zmqRequire("zmq_msg_init_size") { zmq_msg_init_size(msg, bytes.count) }
        } catch {
            zmq_msg_init(msg)  // leave a valid empty message for deinit
            throw error
        }
        zmq_msg_data(msg).copyMemory(from: src, byteCount: bytes.count)
    }

    /// A frame holding the UTF-8 bytes of `text` (for sending).
    public convenience init(string text: String) throws {
        try self.init(bytes: Array(text.utf8))
    }

    deinit {
        zmq_msg_close(msg)
        msg.deallocate()
    }

    /// The number of bytes in the frame.
    public var count: Int { zmq_msg_size(msg) }

    /// Calls `body` with the frame's bytes in place (no copy). The buffer is valid only
    /// during the call.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let n = zmq_msg_size(msg)
        guard n > 0, let base = zmq_msg_data(msg) else {
            return try body(UnsafeRawBufferPointer(start: nil, count: 0))
        }
        return try body(UnsafeRawBufferPointer(start: UnsafeRawPointer(base), count: n))
    }

    /// A copy of the frame's bytes.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// The frame decoded as UTF-8 (invalid sequences repaired), e.g. for small text frames.
    public var string: String { withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }

    /// A metadata property of a received frame (`zmq_msg_gets`), e.g. `"User-Id"` (set by a
    /// ZAP handler), `"Peer-Address"`, `"Socket-Type"`, `"Routing-Id"`; `nil` when the
    /// connection carries no such property (inproc messages carry none).
    public func metadata(_ property: String) -> String? {
        guard let value = zmq_msg_gets(msg, property) else { return nil }
        return String(cString: value)
    }

    /// Whether more frames of the same message followed this one when it was received.
    var more: Bool { zmq_msg_more(msg) != 0 }
}
