import Foundation
import XCTest
import ZeroMQ

/// The errno gateway: EAGAIN as "no message", timeouts, real errors with codes, ETERM.
final class ErrorTests: XCTestCase {
    func testNonBlockingReceiveOnEmptySocketIsNil() throws {
        let context = try ZMQContext()
        let pull = try makeSocket(context, .pull)
        try pull.bind("inproc://empty")
        XCTAssertNil(try pull.receiveMultipart(dontWait: true))
        let dealer = try makeSocket(context, .dealer)
        XCTAssertNil(try dealer.receiveMultipart(dontWait: true))
    }

    func testNonBlockingSendWithoutPeerIsFalse() throws {
        let context = try ZMQContext()
        let dealer = try makeSocket(context, .dealer)
        XCTAssertFalse(try dealer.send([[1, 2, 3]], dontWait: true))
        XCTAssertFalse(try dealer.send([try ZMQFrame(bytes: [1])], dontWait: true))
    }

    func testSendTimeoutIsFalse() throws {
        let context = try ZMQContext()
        let dealer = try makeSocket(context, .dealer)
        try dealer.setSendTimeout(ms: 50)
        let start = Date()
        XCTAssertFalse(try dealer.send([[1]]))
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.04)
    }

    func testReceiveTimeoutIsNil() throws {
        let context = try ZMQContext()
        let pull = try makeSocket(context, .pull)
        try pull.bind("tcp://127.0.0.1:*")
        try pull.setReceiveTimeout(ms: 100)
        let start = Date()
        XCTAssertNil(try pull.receiveMultipart())
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(elapsed, 0.09)
        XCTAssertLessThan(elapsed, 5)
    }

    func testRouterMandatoryUnknownPeerIsHostUnreachable() throws {
        let context = try ZMQContext()
        let router = try makeSocket(context, .router)
        try router.setRouterMandatory(true)
        try router.bind("inproc://mandatory")
        XCTAssertThrowsError(try router.send([[UInt8](text: "nobody"), [1]])) { error in
            guard let error = error as? ZMQError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.code, EHOSTUNREACH)
            XCTAssertEqual(error.call, "zmq_send")
            XCTAssertFalse(error.message.isEmpty)
            XCTAssertFalse(error.isTerminated)
            XCTAssertFalse(ZMQError.isTerminated(error))
        }
        // Without the option the message is silently dropped.
        let lax = try makeSocket(context, .router)
        XCTAssertTrue(try lax.send([[UInt8](text: "nobody"), [1]]))
    }

    func testBadEndpointCarriesCodeCallAndText() throws {
        let context = try ZMQContext()
        let socket = try makeSocket(context, .pull)
        XCTAssertThrowsError(try socket.bind("nonsense://x")) { error in
            let error = error as! ZMQError
            XCTAssertEqual(error.code, EPROTONOSUPPORT)
            XCTAssertEqual(error.call, "zmq_bind")
            XCTAssertTrue(error.description.contains("zmq_bind"), error.description)
        }
        XCTAssertThrowsError(try socket.connect("tcp://")) { error in
            XCTAssertEqual((error as! ZMQError).call, "zmq_connect")
        }
    }

    func testClosedSocketThrowsAndCloseIsIdempotent() throws {
        let context = try ZMQContext()
        let socket = try makeSocket(context, .dealer)
        socket.close()
        socket.close()
        XCTAssertTrue(socket.isClosed)
        XCTAssertEqual(socket.lastEndpoint, "")
        XCTAssertThrowsError(try socket.send([[1]])) { error in
            XCTAssertEqual((error as! ZMQError).code, ENOTSOCK)
        }
        XCTAssertThrowsError(try socket.receiveMultipart(dontWait: true))
        XCTAssertThrowsError(try socket.setLinger(ms: 0))
    }

    func testEmptyMessageIsInvalid() throws {
        let context = try ZMQContext()
        let socket = try makeSocket(context, .dealer)
        XCTAssertThrowsError(try socket.send([[UInt8]]())) { error in
            XCTAssertEqual((error as! ZMQError).code, EINVAL)
        }
    }

    func testShutdownUnblocksReceiveWithTerminated() throws {
        let context = try ZMQContext()
        let pull = try ZMQSocket(context, .pull)  // default linger: shutdown must not hang anyway
        try pull.bind("inproc://blocked")
        let started = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        let worker = Background {
            started.signal()
            do {
                let frames = try pull.receiveMultipart()
                outcome.set("returned \(String(describing: frames?.count))")
            } catch {
                outcome.set(ZMQError.isTerminated(error) ? "terminated" : "other: \(error)")
            }
            pull.close()
        }
        XCTAssertEqual(started.wait(timeout: .now() + 5), .success)
        context.shutdown()
        XCTAssertTrue(worker.wait(seconds: 5), "receive did not unblock")
        XCTAssertEqual(outcome.value, "terminated")

        // Everything afterwards reports ETERM too.
        XCTAssertThrowsError(try ZMQSocket(context, .dealer)) { error in
            XCTAssertTrue(ZMQError.isTerminated(error), "\(error)")
        }
        context.shutdown()  // idempotent
    }

    func testShutdownUnblocksPoll() throws {
        let context = try ZMQContext()
        let pull = try makeSocket(context, .pull)
        try pull.bind("inproc://poll-blocked")
        let outcome = Outcome()
        let worker = Background {
            var poller = ZMQPoller()
            poller.add(pull)
            do {
                _ = try poller.poll(timeoutMs: -1)
                outcome.set("returned")
            } catch {
                outcome.set(ZMQError.isTerminated(error) ? "terminated" : "other: \(error)")
            }
            pull.close()
        }
        context.shutdown()
        XCTAssertTrue(worker.wait(seconds: 5), "poll did not unblock")
        XCTAssertEqual(outcome.value, "terminated")
    }
}

/// A thread-safe string slot.
final class Outcome: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: String?
    func set(_ value: String) { lock.withLock { stored = value } }
    var value: String? { lock.withLock { stored } }
}
