import Foundation
import XCTest
import ZeroMQ

/// A socket that drops pending messages on close, so contexts terminate at once.
func makeSocket(_ context: ZMQContext, _ type: SocketType) throws -> ZMQSocket {
    let socket = try ZMQSocket(context, type)
    try socket.setLinger(ms: 0)
    return socket
}

/// Waits (polling, bounded) for one message on `socket`; `nil` after `timeoutMs`.
func receive(_ socket: ZMQSocket, timeoutMs: Int = 5000) throws -> [ZMQFrame]? {
    var poller = ZMQPoller()
    poller.add(socket)
    guard try poller.poll(timeoutMs: timeoutMs)[0] else { return nil }
    return try socket.receiveMultipart(dontWait: true)
}

/// A fresh ipc endpoint under the temporary directory.
func ipcEndpoint() -> String {
    let name = "zmq-\(UUID().uuidString.prefix(8)).sock"
    return "ipc://" + (NSTemporaryDirectory() as NSString).appendingPathComponent(name)
}

/// Deterministic pseudo-random bytes (SplitMix64).
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        var i = 0
        while i < count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            for b in 0..<8 where i < count {
                raw[i] = UInt8(truncatingIfNeeded: z >> (8 * UInt64(b)))
                i += 1
            }
        }
    }
    return out
}

/// Byte-exact comparison of a frame with expected bytes (memcmp, fast for big payloads).
func frame(_ frame: ZMQFrame, equals expected: [UInt8]) -> Bool {
    guard frame.count == expected.count else { return false }
    return frame.withUnsafeBytes { got in
        expected.withUnsafeBytes { want in
            got.count == 0 || memcmp(got.baseAddress!, want.baseAddress!, got.count) == 0
        }
    }
}

/// Runs `condition` until it is true or `timeout` seconds pass; returns its last value.
func eventually(timeout: TimeInterval = 5, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if try condition() { return true }
        if Date() > deadline { return false }
        Thread.sleep(forTimeInterval: 0.01)
    }
}

/// Runs `body` on a new thread; `wait` reports whether it finished within the time given.
final class Background: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> Void) {
        let done = self.done
        Thread {
            body()
            done.signal()
        }.start()
    }

    func wait(seconds: Double) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

extension Array where Element == UInt8 {
    init(text: String) { self = Array(text.utf8) }
}
