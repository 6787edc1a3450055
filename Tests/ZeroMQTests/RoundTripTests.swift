import Foundation
import XCTest
import ZeroMQ

/// ROUTER/DEALER multipart round trips with a 4 MB binary payload over each transport.
final class RoundTripTests: XCTestCase {
    func testInproc() throws { try roundTrip(bind: "inproc://round-trip-\(UUID().uuidString)") }
    func testIPC() throws { try roundTrip(bind: ipcEndpoint()) }
    func testTCP() throws { try roundTrip(bind: "tcp://127.0.0.1:*") }

    private func roundTrip(bind endpoint: String) throws {
        let context = try ZMQContext()
        let router = try makeSocket(context, .router)
        let dealer = try makeSocket(context, .dealer)
        try router.bind(endpoint)
        let resolved = router.lastEndpoint
        XCTAssertFalse(resolved.isEmpty)
        XCTAssertFalse(resolved.hasSuffix("*"), resolved)
        let routingId = [UInt8](text: "worker-1")
        try dealer.setRoutingId(routingId)
        try dealer.connect(resolved)

        let header = [UInt8](text: "header")
        let payload = pseudoRandomBytes(4 << 20, seed: 42)
        let binary: [UInt8] = [0, 255, 0, 1]
        XCTAssertTrue(try dealer.send([header, payload, [], binary]))

        let request = try XCTUnwrap(try receive(router, timeoutMs: 10_000), "no request")
        XCTAssertEqual(request.count, 5)
        XCTAssertEqual(request[0].bytes, routingId)
        XCTAssertEqual(request[1].bytes, header)
        XCTAssertTrue(frame(request[2], equals: payload), "payload differs")
        XCTAssertEqual(request[3].count, 0)
        XCTAssertEqual(request[4].bytes, binary)

        // Reply by forwarding the received frames (shared, not copied).
        XCTAssertTrue(try router.send([request[0], try ZMQFrame(string: "ack"), request[2]]))
        let reply = try XCTUnwrap(try receive(dealer, timeoutMs: 10_000), "no reply")
        XCTAssertEqual(reply.count, 2)
        XCTAssertEqual(reply[0].string, "ack")
        XCTAssertTrue(frame(reply[1], equals: payload), "reply payload differs")
        // Forwarded frames stay readable on the sending side.
        XCTAssertTrue(frame(request[2], equals: payload))

        // Raw buffer overload.
        let sent = try payload.withUnsafeBytes { p in
            try header.withUnsafeBytes { h in try dealer.send(buffers: [h, p]) }
        }
        XCTAssertTrue(sent)
        let again = try XCTUnwrap(try receive(router, timeoutMs: 10_000))
        XCTAssertEqual(again.map(\.count), [routingId.count, header.count, payload.count])
        XCTAssertTrue(frame(again[2], equals: payload))
    }

    func testVersion() {
        let version = zmqVersion()
        XCTAssertGreaterThanOrEqual(version.major, 4)
        XCTAssertTrue(version.major > 4 || version.minor >= 3, "\(version)")
    }
}
