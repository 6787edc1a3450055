import Foundation
import XCTest
import ZeroMQ

/// ZMQ_MAXMSGSIZE: an oversized frame disconnects its sender and is never delivered.
final class MaxMessageSizeTests: XCTestCase {
    func testTCP() throws { try oversizedFrameIsDropped(bind: "tcp://127.0.0.1:*") }
    func testIPC() throws { try oversizedFrameIsDropped(bind: ipcEndpoint()) }

    private func oversizedFrameIsDropped(bind endpoint: String) throws {
        let context = try ZMQContext()
        let router = try makeSocket(context, .router)
        try router.setMaxMessageSize(1024)
        try router.setRouterMandatory(true)
        try router.bind(endpoint)
        let address = router.lastEndpoint

        // A peer that would not come back soon after being disconnected.
        let bad = try makeSocket(context, .dealer)
        let badId = [UInt8](text: "bad")
        try bad.setRoutingId(badId)
        try bad.setReconnectInterval(ms: 60_000)
        try bad.connect(address)

        // A small message gets through and proves the connection is up.
        XCTAssertTrue(try bad.send([[UInt8](text: "small"), [UInt8](repeating: 1, count: 1024)]))
        let first = try XCTUnwrap(try receive(router), "small message not received")
        XCTAssertEqual(first.map(\.bytes), [badId, [UInt8](text: "small"), [UInt8](repeating: 1, count: 1024)])
        XCTAssertTrue(try router.send([badId, [1]]), "peer should be routable while connected")

        // One byte over the limit: the router disconnects the peer.
        XCTAssertTrue(try bad.send([[UInt8](repeating: 2, count: 1025)]))
        let disconnected = eventually {
            do {
                _ = try router.send([badId, [1]], dontWait: true)
                return false
            } catch let error as ZMQError where error.code == EHOSTUNREACH {
                return true
            } catch {
                return false
            }
        }
        XCTAssertTrue(disconnected, "the sender of an oversized frame was not disconnected")

        // A new connection still works, and the oversized frame never shows up.
        let good = try makeSocket(context, .dealer)
        try good.setRoutingId([UInt8](text: "good"))
        try good.connect(address)
        XCTAssertTrue(try good.send([[UInt8](text: "after")]))
        let next = try XCTUnwrap(try receive(router), "message on a new connection not received")
        XCTAssertEqual(next.map(\.bytes), [[UInt8](text: "good"), [UInt8](text: "after")])
        XCTAssertNil(try receive(router, timeoutMs: 200))
    }
}
