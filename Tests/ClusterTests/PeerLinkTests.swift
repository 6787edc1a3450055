import Foundation
import Protocol
import XCTest
import ZeroMQ
@testable import Cluster

/// Where a worker's direct link for its span groups listens, and how the coordinator
/// tells the other members to reach it.
final class PeerLinkTests: XCTestCase {
    func testALinkListensBesideTheCoordinatorsSocketOnLoopbackOrEverywhereUnderCurve() throws {
        let ipc = try XCTUnwrap(PeerLinkListener.bindEndpoint(coordinator: "ipc:///tmp/prune-0/abc.sock", curve: false))
        XCTAssertTrue(ipc.hasPrefix("ipc:///tmp/prune-0/link-") && ipc.hasSuffix(".sock"), ipc)
        XCTAssertNotEqual(ipc, PeerLinkListener.bindEndpoint(coordinator: "ipc:///tmp/prune-0/abc.sock", curve: false), "each worker its own")
        XCTAssertTrue(ipc.hasPrefix("ipc:///tmp/prune-0/link-\(getpid())-"), "named by the process: \(ipc)")
        for loopback in ["tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555"] {
            XCTAssertEqual(PeerLinkListener.bindEndpoint(coordinator: loopback, curve: true), "tcp://127.0.0.1:*", loopback)
            // Plaintext (--insecure) loopback: any local process could reach a link.
            XCTAssertNil(PeerLinkListener.bindEndpoint(coordinator: loopback, curve: false), loopback)
        }
        XCTAssertEqual(PeerLinkListener.bindEndpoint(coordinator: "tcp://10.0.0.1:5555", curve: true), "tcp://*:*")
        // A remote coordinator without CURVE (refused anyway) or another transport: no link.
        XCTAssertNil(PeerLinkListener.bindEndpoint(coordinator: "tcp://10.0.0.1:5555", curve: false))
        XCTAssertNil(PeerLinkListener.bindEndpoint(coordinator: "inproc://x", curve: false))
    }

    func testTheCoordinatorGivesTheAddressTheWorkersConnectionCameFrom() {
        let key = String(repeating: "k", count: 40)
        let wild = CoordinatorShell.peerLink("tcp://0.0.0.0:41234", peerAddress: "10.79.3.2", key: key)
        XCTAssertEqual(wild?.endpoint, "tcp://10.79.3.2:41234")
        XCTAssertEqual(wild?.curveKey, key)
        XCTAssertEqual(CoordinatorShell.peerLink("tcp://0.0.0.0:41234", peerAddress: "fd00::2", key: nil)?.endpoint, "tcp://[fd00::2]:41234")
        XCTAssertEqual(CoordinatorShell.peerLink("tcp://127.0.0.1:41234", peerAddress: "127.0.0.1", key: nil)?.endpoint, "tcp://127.0.0.1:41234")
        // Only the port is the worker's to say: it cannot point the others at another host.
        XCTAssertEqual(CoordinatorShell.peerLink("tcp://10.9.9.9:41234", peerAddress: "10.79.3.2", key: key)?.endpoint, "tcp://10.79.3.2:41234")
        XCTAssertEqual(CoordinatorShell.peerLink("ipc:///tmp/prune-0/link-1.sock", peerAddress: nil, key: nil)?.endpoint, "ipc:///tmp/prune-0/link-1.sock")
        XCTAssertEqual(CoordinatorShell.peerLink("tcp://127.0.0.1:1", peerAddress: "127.0.0.1", key: nil)?.curveKey, "")
        // None announced, or nothing a member could connect to: no link.
        for bad in ["", "http://x:1", "tcp://0.0.0.0:0", "tcp://0.0.0.0:x", "tcp://0.0.0.0", "inproc://a", "tcp://h:" + String(repeating: "9", count: 300)] {
            XCTAssertNil(CoordinatorShell.peerLink(bad, peerAddress: "10.0.0.2", key: nil), bad)
        }
        XCTAssertNil(CoordinatorShell.peerLink("tcp://0.0.0.0:41234", peerAddress: nil, key: nil), "no address to give")
        XCTAssertNil(CoordinatorShell.peerLink("tcp://0.0.0.0:41234", peerAddress: "a b", key: nil))
    }

    /// A group uses a member's link only when it can tell who sent what comes over it:
    /// under CURVE by key, without CURVE in a group of two.
    func testAGroupUsesLinksOnlyWhenItCanTellTheSendersApart() throws {
        func link(_ endpoint: String) -> Prune_V1_PeerLink {
            var l = Prune_V1_PeerLink()
            l.endpoint = endpoint
            return l
        }
        let two = [link("ipc:///tmp/a.sock"), link("ipc:///tmp/b.sock")]
        // No listener of its own: no links (its own shares go through the coordinator).
        XCTAssertNil(GroupLinks(two, slot: 0, slots: 2, listener: nil).link(1))

        let directory = NSTemporaryDirectory() + "prune-link-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let context = try ZMQContext()
        let listener = try XCTUnwrap(PeerLinkListener(context: context, options: WorkerOptions(endpoint: "ipc://\(directory)/c.sock", name: "w"),
                                                      logger: LineLogHandler.logger("test")))
        XCTAssertTrue(listener.endpoint.hasPrefix("ipc://\(directory)/link-"), listener.endpoint)
        XCTAssertNil(listener.curve)
        let pair = GroupLinks(two, slot: 0, slots: 2, listener: listener)
        XCTAssertEqual(pair.link(1)?.endpoint, "ipc:///tmp/b.sock")
        XCTAssertNil(pair.link(0), "not its own")
        // Over ipc:// a share can come only from the other member of the two.
        let frames = try [ZMQFrame(bytes: [1]), ZMQFrame(bytes: [2]), ZMQFrame(bytes: [3])]
        XCTAssertTrue(pair.mayHaveSent(frames, claimed: 1))
        XCTAssertFalse(pair.mayHaveSent(frames, claimed: 0), "not from itself")
        XCTAssertFalse(pair.mayHaveSent(frames, claimed: 2), "no such member")
        XCTAssertFalse(pair.mayHaveSent(Array(frames.prefix(1)), claimed: 1), "no envelope")
        XCTAssertEqual(GroupLinks(two, slot: 1, slots: 2, listener: listener).link(0)?.endpoint, "ipc:///tmp/a.sock")
        // Without CURVE a group of three could not tell its senders apart: no links.
        let three = GroupLinks(two + [link("ipc:///tmp/c.sock")], slot: 0, slots: 3, listener: listener)
        XCTAssertTrue((0..<3).allSatisfy { three.link($0) == nil })
        // Links that do not match the group, or are malformed, are not used.
        XCTAssertNil(GroupLinks([two[0]], slot: 0, slots: 2, listener: listener).link(1))
        XCTAssertNil(GroupLinks([two[0], link("http://x")], slot: 0, slots: 2, listener: listener).link(1))
        var keyed = two[1]
        keyed.curveKey = "not a key"
        XCTAssertNil(GroupLinks([two[0], keyed], slot: 0, slots: 2, listener: listener).link(1))
    }
}
