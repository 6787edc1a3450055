import Foundation
import XCTest
import ZeroMQ

/// Z85 and key helpers.
final class CurveKeyTests: XCTestCase {
    func testAvailable() {
        XCTAssertTrue(Curve.isAvailable)
    }

    func testZ85KnownVectorAndRoundTrip() throws {
        let vector: [UInt8] = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]
        XCTAssertEqual(Curve.z85Encode(vector), "HelloWorld")
        XCTAssertEqual(Curve.z85Decode("HelloWorld"), vector)
        for n in [0, 4, 32, 400] {
            let bytes = pseudoRandomBytes(n, seed: UInt64(n))
            let text = try XCTUnwrap(Curve.z85Encode(bytes))
            XCTAssertEqual(text.utf8.count, n / 4 * 5)
            XCTAssertEqual(Curve.z85Decode(text), bytes)
        }
        XCTAssertNil(Curve.z85Encode([1, 2, 3]))
        XCTAssertNil(Curve.z85Decode("abcd"))
        XCTAssertNil(Curve.z85Decode("Hell~"))
        XCTAssertNil(Curve.z85Decode("Hell\u{0}"))
        XCTAssertNil(Curve.z85Decode("#####"))  // exceeds 32 bits
    }

    func testKeyPairAndPublicKeyFromSecret() throws {
        let (publicKey, secretKey) = try Curve.keyPair()
        XCTAssertEqual(publicKey.count, 40)
        XCTAssertEqual(secretKey.count, 40)
        XCTAssertTrue(Curve.isValidKey(publicKey))
        XCTAssertTrue(Curve.isValidKey(secretKey))
        XCTAssertNotEqual(publicKey, secretKey)
        XCTAssertEqual(try Curve.publicKey(fromSecret: secretKey), publicKey)
        XCTAssertNotEqual(try Curve.keyPair().publicKey, publicKey)

        XCTAssertFalse(Curve.isValidKey("short"))
        XCTAssertFalse(Curve.isValidKey(String(repeating: "~", count: 40)))
        XCTAssertThrowsError(try Curve.publicKey(fromSecret: "bad")) { error in
            XCTAssertEqual((error as! ZMQError).code, EINVAL)
        }
    }
}

/// CURVE with a ZAP handler over tcp on loopback.
final class CurveAuthTests: XCTestCase {
    /// Records the requests the handler saw.
    final class Log: @unchecked Sendable {
        struct Entry { let mechanism, domain, address: String; let key: String?; let allowed: Bool }
        private let lock = NSLock()
        private var stored: [Entry] = []
        func append(_ entry: Entry) { lock.withLock { stored.append(entry) } }
        var entries: [Entry] { lock.withLock { stored } }
    }

    private struct Server {
        let context: ZMQContext
        let handler: ZAPHandler
        let router: ZMQSocket
        let address: String
        let publicKey: String
        let log: Log
    }

    /// A CURVE ROUTER whose ZAP handler admits `allowed` keys as user "user-<first 8 chars>".
    private func makeServer(allowed: Set<String>) throws -> Server {
        let context = try ZMQContext()
        let log = Log()
        let handler = ZAPHandler(context: context) { mechanism, domain, address, credentials in
            let key = ZAP.curvePublicKey(mechanism: mechanism, credentials: credentials)
            let allow = key.map { allowed.contains($0) } ?? false
            log.append(.init(mechanism: mechanism, domain: domain, address: address, key: key, allowed: allow))
            return allow ? "user-\(key!.prefix(8))" : nil
        }
        try handler.start()
        XCTAssertTrue(handler.isRunning)
        let keys = try Curve.keyPair()
        let router = try makeSocket(context, .router)
        try router.setCurveServer(secretKey: keys.secretKey)
        try router.setZapDomain("prune")
        try router.bind("tcp://127.0.0.1:*")
        return Server(context: context, handler: handler, router: router,
                      address: router.lastEndpoint, publicKey: keys.publicKey, log: log)
    }

    private func makeClient(_ server: Server, keys: (publicKey: String, secretKey: String),
                            serverKey: String? = nil, immediate: Bool = false) throws -> ZMQSocket {
        let dealer = try makeSocket(server.context, .dealer)
        try dealer.setCurveClient(publicKey: keys.publicKey, secretKey: keys.secretKey,
                                  serverKey: serverKey ?? server.publicKey)
        try dealer.setHandshakeInterval(ms: 2000)
        try dealer.setImmediate(immediate)  // immediate: queue only on completed handshakes
        try dealer.connect(server.address)
        return dealer
    }

    func testAllowedClientExchangesMessagesWithUserId() throws {
        let clientKeys = try Curve.keyPair()
        let server = try makeServer(allowed: [clientKeys.publicKey])
        defer { server.router.close(); server.handler.stop() }
        let client = try makeClient(server, keys: clientKeys)

        XCTAssertTrue(try client.send([[UInt8](text: "hello"), [0, 1, 2]]))
        let request = try XCTUnwrap(try receive(server.router), "allowed client not delivered")
        XCTAssertEqual(request.count, 3)
        XCTAssertEqual(request[1].string, "hello")
        XCTAssertEqual(request[2].bytes, [0, 1, 2])
        XCTAssertEqual(request[1].metadata("User-Id"), "user-\(clientKeys.publicKey.prefix(8))")
        XCTAssertEqual(request[1].metadata("Socket-Type"), "DEALER")
        XCTAssertEqual(request[1].metadata("Peer-Address"), "127.0.0.1")
        XCTAssertNil(request[1].metadata("No-Such-Property"))

        let entry = try XCTUnwrap(server.log.entries.first)
        XCTAssertEqual(entry.mechanism, "CURVE")
        XCTAssertEqual(entry.domain, "prune")
        XCTAssertEqual(entry.address, "127.0.0.1")
        XCTAssertEqual(entry.key, clientKeys.publicKey)

        XCTAssertTrue(try server.router.send([request[0].bytes, [UInt8](text: "welcome")]))
        let reply = try XCTUnwrap(try receive(client), "reply not delivered")
        XCTAssertEqual(reply.map(\.string), ["welcome"])
    }

    func testDeniedClientNeverDelivers() throws {
        let allowedKeys = try Curve.keyPair()
        let deniedKeys = try Curve.keyPair()
        let server = try makeServer(allowed: [allowedKeys.publicKey])
        defer { server.router.close(); server.handler.stop() }
        let client = try makeClient(server, keys: deniedKeys)
        XCTAssertTrue(try client.send([[UInt8](text: "let me in")]))

        XCTAssertTrue(eventually { server.log.entries.contains { $0.key == deniedKeys.publicKey } },
                      "the handler was never asked")
        XCTAssertFalse(server.log.entries.contains { $0.allowed })
        XCTAssertNil(try receive(server.router, timeoutMs: 500), "a denied client delivered a message")
    }

    func testWrongServerKeyCannotConnect() throws {
        let clientKeys = try Curve.keyPair()
        let server = try makeServer(allowed: [clientKeys.publicKey])
        defer { server.router.close(); server.handler.stop() }
        let wrongServerKey = try Curve.keyPair().publicKey
        let client = try makeClient(server, keys: clientKeys, serverKey: wrongServerKey, immediate: true)

        XCTAssertFalse(try client.send([[UInt8](text: "hello")], dontWait: true))
        try client.setSendTimeout(ms: 1000)
        XCTAssertFalse(try client.send([[UInt8](text: "hello")]), "handshake completed with a wrong key")
        XCTAssertNil(try receive(server.router, timeoutMs: 300))
        XCTAssertTrue(server.log.entries.isEmpty, "a client with a wrong server key reached ZAP")
    }

    func testHandlerSurvivesMalformedRequestsAndStopsOnShutdown() throws {
        let context = try ZMQContext()
        let handler = ZAPHandler(context: context) { mechanism, _, _, _ in
            mechanism == "NULL" ? "anonymous" : nil
        }
        try handler.start()
        try handler.start()  // no-op while running
        XCTAssertThrowsError(try ZAPHandler(context: context) { _, _, _, _ in nil }.start()) { error in
            XCTAssertEqual((error as! ZMQError).code, EADDRINUSE)
        }

        let req = try makeSocket(context, .req)
        try req.connect(ZAP.endpoint)
        for garbage: [[UInt8]] in [[[1, 2, 3]], [[UInt8](text: "2.0"), [1], [], [], [], [UInt8](text: "NULL")], [[]]] {
            XCTAssertTrue(try req.send(garbage))
            let reply = try XCTUnwrap(try receive(req), "no reply to a malformed request")
            XCTAssertEqual(reply.count, 6)
            XCTAssertEqual(reply[2].string, "500")
        }
        let valid: [[UInt8]] = ["1.0", "7", "d", "127.0.0.1", "", "NULL"].map { [UInt8](text: $0) }
        XCTAssertTrue(try req.send(valid))
        let ok = try XCTUnwrap(try receive(req))
        XCTAssertEqual(ok.map(\.string), ["1.0", "7", "200", "OK", "anonymous", ""])
        var plain = valid
        plain[5] = [UInt8](text: "PLAIN")
        XCTAssertTrue(try req.send(plain + [[UInt8](text: "user"), [UInt8](text: "pw")]))
        XCTAssertEqual(try XCTUnwrap(try receive(req))[2].string, "400")
        req.close()
        XCTAssertTrue(handler.isRunning)
        XCTAssertNil(handler.lastError)

        context.shutdown()
        let stopped = Background { handler.stop() }
        XCTAssertTrue(stopped.wait(seconds: 5), "handler did not stop after shutdown")
        XCTAssertFalse(handler.isRunning)
    }

    func testStopAndRestart() throws {
        let context = try ZMQContext()
        let handler = ZAPHandler(context: context) { _, _, _, _ in "x" }
        try handler.start()
        let stopped = Background { handler.stop() }
        XCTAssertTrue(stopped.wait(seconds: 5))
        XCTAssertFalse(handler.isRunning)
        handler.stop()
        try handler.start()  // the endpoint is free again
        XCTAssertTrue(handler.isRunning)
        handler.stop()
    }
}
