import Foundation
import Tensors
import TestSupport
import XCTest
@testable import Cluster

/// Three "hosts" on one machine: the coordinator on a bridge in this network namespace
/// and two workers in namespaces of their own, reached over veth pairs on a private
/// subnet (not loopback, so CURVE is mandatory). Needs root and iproute2; skipped otherwise.
final class NetworkNamespaceTests: XCTestCase {
    private let tag = "pr\(getpid() % 100000)"
    private var created: [String] = []
    private var bridge: String { "\(tag)br" }

    private func ip(_ args: [String]) throws -> Subprocess.Result {
        try Subprocess.run("/usr/bin/env", ["ip"] + args)
    }

    private func mustIP(_ args: [String]) throws {
        let r = try ip(args)
        guard r.status == 0 else { throw XCTSkip("ip \(args.joined(separator: " ")) failed: \(r.stderr)") }
    }

    override func tearDown() {
        for ns in created { _ = try? ip(["netns", "del", ns]) }
        _ = try? ip(["link", "del", bridge])
    }

    /// A namespace with address 10.79.N.x/24 on a veth whose other end joins the bridge.
    private func host(_ index: Int, subnet: Int) throws -> String {
        let ns = "\(tag)h\(index)"
        try mustIP(["netns", "add", ns])
        created.append(ns)
        try mustIP(["link", "add", "\(tag)v\(index)", "type", "veth", "peer", "name", "\(tag)p\(index)"])
        try mustIP(["link", "set", "\(tag)p\(index)", "netns", ns])
        try mustIP(["link", "set", "\(tag)v\(index)", "master", bridge])
        try mustIP(["link", "set", "\(tag)v\(index)", "up"])
        try mustIP(["-n", ns, "addr", "add", "10.79.\(subnet).\(index + 1)/24", "dev", "\(tag)p\(index)"])
        try mustIP(["-n", ns, "link", "set", "\(tag)p\(index)", "up"])
        try mustIP(["-n", ns, "link", "set", "lo", "up"])
        return ns
    }

    func testThreeHostsOverCurve() throws {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("needs root and the prune binary")
        }
        let subnet = Int(getpid() % 200) + 20
        try mustIP(["link", "add", bridge, "type", "bridge"])
        try mustIP(["addr", "add", "10.79.\(subnet).1/24", "dev", bridge])
        try mustIP(["link", "set", bridge, "up"])
        let hosts = [try host(1, subnet: subnet), try host(2, subnet: subnet)]

        let dir = TempDir("prune-netns"); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("model"), dtype: .f16, layers: 2, hidden: 64, intermediate: 128)
        try "model: model\noutput: job\nmethod: magnitude\npattern: '2:4'\n".write(toFile: dir.file("job.yaml"), atomically: true, encoding: .utf8)
        for name in ["coord", "w1", "w2"] {
            XCTAssertEqual(try Subprocess.prune(["keygen", name, "--dir", dir.path]).status, 0)
        }
        let allow = try ["w1", "w2"].map { try String(contentsOfFile: dir.file("\($0).pub"), encoding: .utf8) }.joined()
        try allow.write(toFile: dir.file("workers.txt"), atomically: true, encoding: .utf8)
        let endpoint = "tcp://10.79.\(subnet).1:\(Background.freePort())"

        // Plaintext on a non-loopback address is refused outright.
        let plain = try Subprocess.prune(["coordinator", "--job", "job.yaml", "--bind", endpoint, "--insecure"], cwd: dir.path)
        XCTAssertEqual(plain.status, 2)
        XCTAssertTrue(plain.stderr.contains("only on loopback"), plain.stderr)

        let coord = try Background(Subprocess.pruneBinary, ["coordinator", "--job", "job.yaml", "--bind", endpoint,
                                                            "--curve-secret", "coord.key", "--allow", "workers.txt"], cwd: dir.path)
        XCTAssertTrue(Background.waitUntil(seconds: 20) { coord.stderr.contains("listening on") }, coord.stderr)
        var workers: [Background] = []
        for (i, ns) in hosts.enumerated() {
            // Each worker host pulls the checkpoint over the network (no shared files).
            workers.append(try Background("/usr/bin/env", ["ip", "netns", "exec", ns, Subprocess.pruneBinary, "worker",
                                                          "--connect", endpoint, "--name", "w\(i + 1)", "--pull-only",
                                                          "--curve-secret", dir.file("w\(i + 1).key"), "--server-key", dir.file("coord.pub")]))
        }
        XCTAssertEqual(coord.wait(seconds: 90), 0, coord.stderr)
        for w in workers { XCTAssertEqual(w.wait(seconds: 10), 0, w.stderr) }
        let check = try Subprocess.prune(["check", "model", "job"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout)
        let seen = try Ledger(path: dir.file("job/ledger.sqlite"), create: false, readOnly: true).workers().map(\.name).sorted()
        XCTAssertEqual(seen, ["w1", "w2"])
    }
}
