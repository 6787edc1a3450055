import Foundation
import XCTest
import ZeroMQ

final class PollerTests: XCTestCase {
    func testReadabilityAndTimeout() throws {
        let context = try ZMQContext()
        let pullA = try makeSocket(context, .pull)
        let pullB = try makeSocket(context, .pull)
        try pullA.bind("inproc://poll-a")
        try pullB.bind("inproc://poll-b")
        let push = try makeSocket(context, .push)
        try push.connect("inproc://poll-b")

        var poller = ZMQPoller()
        XCTAssertEqual(poller.add(pullA), 0)
        XCTAssertEqual(poller.add(pullB), 1)
        XCTAssertEqual(poller.count, 2)

        let start = Date()
        XCTAssertEqual(try poller.poll(timeoutMs: 100), [false, false])
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(elapsed, 0.09)
        XCTAssertLessThan(elapsed, 5)

        XCTAssertTrue(try push.send([[7]]))
        XCTAssertEqual(try poller.poll(timeoutMs: 5000), [false, true])
        XCTAssertEqual(try pullB.receiveMultipart(dontWait: true)?.first?.bytes, [7])
        XCTAssertEqual(try poller.poll(timeoutMs: 0), [false, false])
    }

    func testClosedSocketIsAnError() throws {
        let context = try ZMQContext()
        let pull = try makeSocket(context, .pull)
        var poller = ZMQPoller()
        poller.add(pull)
        pull.close()
        XCTAssertThrowsError(try poller.poll(timeoutMs: 0)) { error in
            XCTAssertEqual((error as! ZMQError).code, ENOTSOCK)
        }
    }
}
