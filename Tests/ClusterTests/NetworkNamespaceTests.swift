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

    /// The bridge (the coordinator's address, 10.79.SUBNET.1) and two worker hosts.
    private func network() throws -> (subnet: Int, hosts: [String]) {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("needs root and the prune binary")
        }
        let subnet = Int(getpid() % 200) + 20
        try mustIP(["link", "add", bridge, "type", "bridge"])
        try mustIP(["addr", "add", "10.79.\(subnet).1/24", "dev", bridge])
        try mustIP(["link", "set", bridge, "up"])
        return (subnet, [try host(1, subnet: subnet), try host(2, subnet: subnet)])
    }

    func testThreeHostsOverCurve() throws {
        let (subnet, hosts) = try network()

        let dir = TempDir("prune-netns"); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("model"), dtype: .f16, layers: 2, hidden: 64, intermediate: 128)
        try "model: model\noutput: job\nmethod: magnitude\npattern: '2:4'\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        for name in ["coord", "w1", "w2"] {
            XCTAssertEqual(try Subprocess.prune(["keygen", name, "--dir", dir.path]).status, 0)
        }
        let allow = try ["w1", "w2"].map { try String(contentsOfFile: dir.file("\($0).pub"), encoding: .utf8) }.joined()
        try allow.write(toFile: dir.file("workers.txt"), atomically: false, encoding: .utf8)
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

    /// A training span's group across two worker hosts under CURVE: each member listens
    /// on every interface with its own key pair, the coordinator tells the others the
    /// address its connection came from (the worker announced a wildcard), and the shares
    /// go straight from host to host, each link admitting the group's other member only.
    /// out/ is the in-process run's bytes.
    func testASpansSharesGoStraightBetweenHostsOverCurve() throws {
        let data = TrainClusterTests.fashionMNIST
        guard FileManager.default.fileExists(atPath: data + "/train-images-idx3-ubyte.gz") else { throw XCTSkip("Fashion-MNIST not installed") }
        let (subnet, hosts) = try network()
        let dir = TempDir("prune-netns-train"); defer { dir.cleanup() }
        XCTAssertEqual(try Subprocess.prune(["init-mlp", "model", "--hidden", "32", "--seed", "3"], cwd: dir.path).status, 0)
        let train = "train: {data: \(data), examples: 1200, epochs: 2, batch: 100, shards: 2, learning_rate: 0.1, checkpoint_every: 6"
        for (name, exchange) in [("job", ", exchange: allgather}"), ("reference", "}")] {
            try "model: model\noutput: \(name)\nmethod: magnitude\nsparsity: 0\n\(train)\(exchange)\n".write(toFile: dir.file("\(name).yaml"), atomically: false, encoding: .utf8)
        }
        XCTAssertEqual(try Subprocess.prune(["run", "-q", "--workers", "0", "reference.yaml"], cwd: dir.path).status, 0)
        for name in ["coord", "w1", "w2"] {
            XCTAssertEqual(try Subprocess.prune(["keygen", name, "--dir", dir.path]).status, 0)
        }
        let allow = try ["w1", "w2"].map { try String(contentsOfFile: dir.file("\($0).pub"), encoding: .utf8) }.joined()
        try allow.write(toFile: dir.file("workers.txt"), atomically: false, encoding: .utf8)
        let endpoint = "tcp://10.79.\(subnet).1:\(Background.freePort())"
        let coord = try Background(Subprocess.pruneBinary, ["coordinator", "--job", "job.yaml", "--bind", endpoint,
                                                            "--curve-secret", "coord.key", "--allow", "workers.txt"], cwd: dir.path)
        XCTAssertTrue(Background.waitUntil(seconds: 20) { coord.stderr.contains("listening on") }, coord.stderr)
        let workers = try hosts.enumerated().map { i, ns in
            try Background("/usr/bin/env", ["ip", "netns", "exec", ns, Subprocess.pruneBinary, "worker", "--connect", endpoint, "--name", "w\(i + 1)",
                                            "--curve-secret", dir.file("w\(i + 1).key"), "--server-key", dir.file("coord.pub")])
        }
        XCTAssertEqual(coord.wait(seconds: 120), 0, coord.stderr)
        for w in workers { XCTAssertEqual(w.wait(seconds: 10), 0, w.stderr) }
        XCTAssertEqual(jobOutputs(dir.file("job")), jobOutputs(dir.file("reference")))
        let events = try Ledger(path: dir.file("job/ledger.sqlite"), create: false, readOnly: true).events()
        XCTAssertTrue(events.contains { $0.kind == "help" }, "a second worker helped")
        let sent = TrainClusterTests.sharesSent(logs: workers.map(\.stderr).joined(separator: "\n"))
        XCTAssertGreaterThan(sent.direct, 2 * sent.relayed, "\(sent)")
        XCTAssertEqual(sent.received, sent.direct, "every share sent direct was taken: \(sent)")
    }

    /// cluster/launch-ssh as a user runs it, with `ssh` and `scp` stand-ins on PATH that
    /// log into a "host": a network namespace with a hostname (UTS namespace) and a home
    /// directory of its own. The script must make each host's directory, copy the server
    /// key, and start a worker that finds its own key by hostname and joins over CURVE.
    func testLaunchSshStartsOneWorkerPerHost() throws {
        let (subnet, hosts) = try network()
        let dir = TempDir("prune-launch"); defer { dir.cleanup() }
        let homes = dir.file("homes"), bin = dir.file("bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        let ssh = """
            #!/usr/bin/env bash
            # ssh [-n] HOST COMMAND...: COMMAND in HOST's namespaces, HOME and hostname.
            [ "$1" = -n ] && { shift; exec </dev/null; }
            host="$1"; shift
            mkdir -p "\(homes)/$host"
            exec ip netns exec "$host" unshare --uts env HOME="\(homes)/$host" bash -c "hostname $host; cd ~; $*"
            """
        let scp = """
            #!/usr/bin/env bash
            # scp -q SOURCE HOST:PATH (PATH relative to HOST's home)
            [ "$1" = -q ] && shift
            target="$2"
            cp "$1" "\(homes)/${target%%:*}/${target#*:}"
            """
        for (name, text) in [("ssh", ssh), ("scp", scp)] {
            try text.write(toFile: (bin as NSString).appendingPathComponent(name), atomically: false, encoding: .utf8)
            chmod((bin as NSString).appendingPathComponent(name), 0o755)
        }

        try SyntheticModel.write(to: dir.file("model"), dtype: .f32, layers: 2, hidden: 64, intermediate: 128)
        try "model: model\noutput: job\nmethod: magnitude\nsparsity: 0.5\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        XCTAssertEqual(try Subprocess.prune(["keygen", "coordinator", "--dir", dir.path]).status, 0)
        var allow = ""
        for host in hosts {
            // Each host's own key pair, where launch-ssh expects it: ~/.config/prune/$(hostname).key
            let keys = "\(homes)/\(host)/.config/prune"
            XCTAssertEqual(try Subprocess.prune(["keygen", host, "--dir", keys]).status, 0)
            allow += try String(contentsOfFile: "\(keys)/\(host).pub", encoding: .utf8)
        }
        try allow.write(toFile: dir.file("allow.txt"), atomically: false, encoding: .utf8)
        // The first host keeps a copy of the checkpoint (a data root); the second has none.
        try "# test hosts\n\(hosts[0]) \(dir.file("model"))\n\(hosts[1])\n".write(toFile: dir.file("hosts"), atomically: false, encoding: .utf8)

        let endpoint = "tcp://10.79.\(subnet).1:\(Background.freePort())"
        let coord = try Background(Subprocess.pruneBinary, ["coordinator", "--job", "job.yaml", "--bind", endpoint,
                                                            "--curve-secret", "coordinator.key", "--allow", "allow.txt"], cwd: dir.path)
        defer { _ = try? Subprocess.run("/usr/bin/env", ["pkill", "-f", "worker --connect \(endpoint)"]) }
        XCTAssertTrue(Background.waitUntil(seconds: 20) { coord.stderr.contains("listening on") }, coord.stderr)
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let launch = try Background("/usr/bin/env", ["PATH=\(bin):\(ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")",
                                                     "\(root)/cluster/launch-ssh", dir.file("hosts"), endpoint, dir.file("coordinator.pub"),
                                                     Subprocess.pruneBinary])
        XCTAssertEqual(launch.wait(seconds: 30), 0, launch.stderr)
        XCTAssertEqual(launch.stdout.components(separatedBy: "started a worker on").count - 1, 2, launch.stdout)
        XCTAssertEqual(coord.wait(seconds: 90), 0, coord.stderr)
        XCTAssertEqual(try Subprocess.prune(["check", "model", "job"], cwd: dir.path).status, 0)
        let seen = try Ledger(path: dir.file("job/ledger.sqlite"), create: false, readOnly: true).workers().map(\.name).sorted()
        XCTAssertEqual(seen, hosts.sorted(), "each worker named by its host")
        for host in hosts {
            XCTAssertTrue(Background.waitUntil(seconds: 10) {
                ((try? String(contentsOfFile: "\(homes)/\(host)/prune-worker.log", encoding: .utf8)) ?? "").contains("coordinator says shut down")
            }, "\(host): \((try? String(contentsOfFile: "\(homes)/\(host)/prune-worker.log", encoding: .utf8)) ?? "no log")")
        }
    }
}
