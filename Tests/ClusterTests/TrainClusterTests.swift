import Foundation
import Engine
import Tensors
import TestSupport
import XCTest
@testable import Cluster

/// Data-parallel masked training of an MLP classifier (`train:`) on real worker processes
/// and real data (Fashion-MNIST from Debian's dataset-fashion-mnist): the same bytes for
/// any worker count, a learning curve, masks held, SIGKILL + resume, torch's SGD.
final class TrainClusterTests: XCTestCase {
    static let fashionMNIST = "/usr/share/datasets/fashion-mnist"
    private var dir: TempDir!

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("build the prune binary first (swift build)")
        }
        guard FileManager.default.fileExists(atPath: Self.fashionMNIST + "/train-images-idx3-ubyte.gz") else {
            if Subprocess.pythonRequired { XCTFail("Fashion-MNIST (Debian package dataset-fashion-mnist) is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
        }
        dir = TempDir("prune-train-cluster")
        let made = try Subprocess.prune(["init-mlp", "model", "--hidden", "32", "--seed", "3"], cwd: dir.path)
        XCTAssertEqual(made.status, 0, made.stderr)
    }

    override func tearDown() { dir?.cleanup() }

    private func writeSpec(_ name: String, model: String = "model", sparsity: Double = 0, train: String) throws -> String {
        let yaml = """
        model: \(model)
        output: \(name)
        method: magnitude
        sparsity: \(sparsity)
        train: {data: \(Self.fashionMNIST), \(train)}
        evaluation: {data: \(Self.fashionMNIST), samples: 2000}
        """
        let path = dir.file("\(name).yaml")
        try yaml.write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }

    private func outputs(_ job: String) -> [String: Data] {
        jobOutputs(dir.file(job))
    }

    private func run(_ name: String, sparsity: Double = 0, train: String, workers: Int, environment: [String: String] = [:]) throws -> [String: Data] {
        let r = try Subprocess.run(Subprocess.pruneBinary, ["run", "-q", "--workers", "\(workers)", try writeSpec(name, sparsity: sparsity, train: train)],
                                   cwd: dir.path, environment: environment)
        XCTAssertEqual(r.status, 0, "\(name): \(r.stderr)")
        return outputs(name)
    }

    /// How the span groups' members of a job's workers sent their shares, from the
    /// workers' logs ("N shares sent direct, M through the coordinator" per group).
    static func sharesSent(logs: String) -> (direct: Int, relayed: Int, received: Int) {
        var direct = 0, relayed = 0, received = 0
        for line in logs.split(separator: "\n") {
            guard let r = line.range(of: " shares sent direct, "), let t = line.range(of: " through the coordinator, ") else { continue }
            direct += Int(line[..<r.lowerBound].split(separator: " ").last ?? "") ?? 0
            relayed += Int(line[r.upperBound...].split(separator: " ").first ?? "") ?? 0
            received += Int(line[t.upperBound...].split(separator: " ").first ?? "") ?? 0
        }
        return (direct, relayed, received)
    }

    private func sharesSent(_ job: String) -> (direct: Int, relayed: Int, received: Int) {
        let logs = dir.file("\(job)/logs")
        let text = ((try? FileManager.default.contentsOfDirectory(atPath: logs)) ?? []).sorted()
            .compactMap { try? String(contentsOfFile: logs + "/" + $0, encoding: .utf8) }.joined(separator: "\n")
        return Self.sharesSent(logs: text)
    }

    private func report(_ job: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/report.json")))) as? [String: Any])
    }

    private func doneTasks(_ job: String) -> [Ledger.TaskRow] { Ledger.doneRows(at: dir.file("\(job)/ledger.sqlite")) }

    private let small = "examples: 1200, epochs: 3, batch: 100, shards: 2, learning_rate: 0.1, checkpoint_every: 5"

    /// Dense training from a fresh init: 0 and 2 workers give the same bytes; the epochs'
    /// training loss falls, the test accuracy rises far above chance, `prune check` passes.
    func testTrainingGivesTheSameBytesForAnyWorkerCountAndLearns() throws {
        let expected = try run("dense-w0", train: small, workers: 0)
        XCTAssertEqual(try run("dense-w2", train: small, workers: 2), expected)
        let tasks = doneTasks("dense-w2").filter { $0.phase == "train" }
        // 12 steps an epoch × 3 epochs × 2 shards, and checkpoints every 5 steps of an epoch and at its end.
        XCTAssertEqual(tasks.filter { $0.id.hasPrefix("train:grad:") }.count, 72)
        XCTAssertEqual(Set(tasks.filter { $0.id.hasPrefix("train:ckpt:") }.map(\.id)), Set([5, 10, 12, 17, 22, 24, 29, 34, 36].map { "train:ckpt:\($0)" }))
        let report = try self.report("dense-w2")
        let evaluation = try XCTUnwrap(report["evaluation"] as? [String: Any])
        let before = try XCTUnwrap(evaluation["dense"] as? Double), after = try XCTUnwrap(evaluation["pruned"] as? Double)
        XCTAssertLessThan(before, 0.2, "an untrained model is near chance")
        XCTAssertGreaterThan(after, 0.6, "three epochs on 1200 examples learn")
        let epochs = try XCTUnwrap((report["training"] as? [String: Any])?["epochs"] as? [[String: Any]])
        XCTAssertEqual(epochs.count, 3)
        let losses = epochs.compactMap { $0["train_loss"] as? Double }
        XCTAssertEqual(losses.count, 3)
        XCTAssertLessThan(losses[2], losses[0])
        XCTAssertEqual(try XCTUnwrap(epochs.last?["test_accuracy"] as? Double), after, accuracy: 1e-12)
        let check = try Subprocess.prune(["check", "model", "dense-w2"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
    }

    /// The report's learning curve of a job equals another's: each epoch's training loss and
    /// accuracy (its sums) and the test accuracy of its end weights.
    private func assertSameCurve(_ job: String, as other: String, epochs: Int) throws {
        let curve = { (job: String) throws -> [[String: Any]] in
            try XCTUnwrap((try self.report(job)["training"] as? [String: Any])?["epochs"] as? [[String: Any]])
        }
        let a = try curve(other), b = try curve(job)
        XCTAssertEqual(a.count, epochs)
        XCTAssertEqual(b.count, epochs)
        for (x, y) in zip(a, b) {
            for key in ["train_loss", "train_accuracy", "test_accuracy"] {
                XCTAssertNotNil(x[key] as? Double, key)
                XCTAssertEqual(x[key] as? Double, y[key] as? Double, "\(job) \(key) of epoch \(x["epoch"] ?? "?")")
            }
        }
    }

    /// `exchange: none`: each span between checkpoints is one task that takes its steps'
    /// shards itself, in order, running across epochs (every 5 steps of the job, not of
    /// an epoch): the ledger holds checkpoint tasks only, and out/ and the report's
    /// learning curve (the epochs that end inside a span too) are the star exchange's
    /// bytes, on 0, 1 and 2 workers; with a cosine step size and with a gradual
    /// schedule's prune rounds too.
    func testWithoutAnExchangeEachSpanIsOneTaskAndGivesTheStarExchangesBytes() throws {
        let star = try run("star-w0", train: small, workers: 0)
        for w in [0, 1, 2] { XCTAssertEqual(try run("none-w\(w)", train: small + ", exchange: none", workers: w), star, "\(w) workers") }
        let tasks = doneTasks("none-w2").filter { $0.phase == "train" }.map(\.id)
        XCTAssertEqual(Set(tasks), Set([5, 10, 15, 20, 25, 30, 35, 36].map { "train:ckpt:\($0)" }))
        try assertSameCurve("none-w2", as: "star-w0", epochs: 3)
        try assertSameCurve("none-w0", as: "star-w0", epochs: 3)
        let cosine = small + ", lr_schedule: cosine"
        XCTAssertEqual(try run("none-cosine", train: cosine + ", exchange: none", workers: 2), try run("star-cosine", train: cosine, workers: 0))
        // Spans of 50 steps name 5000 examples of the job's example data, which each
        // worker fetches once.
        let long = "examples: 6000, epochs: 1, batch: 100, learning_rate: 0.1, checkpoint_every: 50"
        XCTAssertEqual(try run("none-long", train: long + ", exchange: none", workers: 2), try run("star-long", train: long, workers: 0))
        // A slice of 2048 examples (1.6 MB of pixels, more than an Assign's 1 MiB once
        // carried) is 16 KiB of indices and labels now: the star and a span train it alike.
        let wide = "examples: 4096, epochs: 1, batch: 2048, shards: 1, learning_rate: 0.1"
        let wideStar = try run("star-wide-w1", train: wide, workers: 1)
        XCTAssertEqual(try run("none-wide-w1", train: wide + ", exchange: none", workers: 1), wideStar)
        XCTAssertEqual(try run("none-wide-w0", train: wide + ", exchange: none", workers: 0), wideStar)

        let schedule = "schedule: {method: gradual, initial: 0.3, rounds: 3, epochs_per_round: 1}\n"
        let train = "examples: 1200, epochs: 1, batch: 100, learning_rate: 0.1, checkpoint_every: 5"
        var outs: [[String: Data]] = []
        for (name, t) in [("gradual-star", train), ("gradual-none", train + ", exchange: none")] {
            let path = try writeSpec(name, sparsity: 0.8, train: t)
            try (try String(contentsOfFile: path, encoding: .utf8) + "\n" + schedule).write(toFile: path, atomically: false, encoding: .utf8)
            let r = try Subprocess.prune(["run", "-q", "--workers", "2", path], cwd: dir.path)
            XCTAssertEqual(r.status, 0, r.stderr)
            outs.append(outputs(name))
        }
        XCTAssertEqual(outs[0], outs[1])
        XCTAssertFalse(doneTasks("gradual-none").contains { $0.id.hasPrefix("train:grad:") })
    }

    /// A classifier's examples are one artifact of the job, which a worker fetches once and
    /// keeps; tasks name rows of it. A pull-only worker (everything over the wire) gives an
    /// in-process run's bytes, and the coordinator sends it far less than the spans' examples.
    func testAWorkerFetchesTheExamplesOnceAndTasksNameRowsOfThem() throws {
        let train = "examples: 1200, epochs: 6, batch: 100, shards: 2, learning_rate: 0.1, checkpoint_every: 5, exchange: none"
        let expected = try run("rows-w0", train: train, workers: 0)
        let endpoint = "tcp://127.0.0.1:\(Background.freePort())"
        let job = try writeSpec("rows-pulled", train: train)
        let coord = try Background(Subprocess.pruneBinary, ["coordinator", "--job", job, "--bind", endpoint, "--insecure"], cwd: dir.path)
        let worker = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--pull-only"])
        XCTAssertEqual(coord.wait(seconds: 120), 0, coord.stderr)
        XCTAssertEqual(worker.wait(seconds: 10), 0, worker.stderr)
        XCTAssertEqual(outputs("rows-pulled"), expected)
        // The examples' pixels are kept in the job's artifacts under their digest.
        let pixels = try XCTUnwrap(try LabelledData.load(Self.fashionMNIST, limit: 1200, split: "train").bytes)
        let digest = pixels.withUnsafeBytes { SHA256Stream.hex($0) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.file("rows-pulled/artifacts/\(digest.prefix(2))/\(digest)")))
        // In its spans' Assigns the examples would be 6 epochs × 1200 × 784 bytes; what
        // crosses is the data once, the model's start weights (about 0.1 MB) and small
        // tasks: less than the data twice.
        let ledger = try Ledger(path: dir.file("rows-pulled/ledger.sqlite"), create: false, readOnly: true)
        let sent = Int(try ledger.jobValue("wire_bytes_out") ?? "0") ?? 0
        XCTAssertGreaterThanOrEqual(sent, pixels.count)
        XCTAssertLessThan(sent, 2 * pixels.count)
    }

    /// `exchange: allgather`: a span is helped by the workers idle when it starts, who
    /// share each step's shard gradients through the coordinator: out/ is the star
    /// exchange's bytes on 0, 1, 2 and (4 shards, groups of 3) 3 workers, and the ledger
    /// shows the help roles.
    func testAnAllGatherSpanIsHelpedByIdleWorkersAndGivesTheStarExchangesBytes() throws {
        let star = try run("star-w0", train: small, workers: 0)
        for w in [0, 1, 2] { XCTAssertEqual(try run("gather-w\(w)", train: small + ", exchange: allgather", workers: w), star, "\(w) workers") }
        let ledger = { (job: String) throws in try Ledger(path: self.dir.file("\(job)/ledger.sqlite"), create: false, readOnly: true) }
        XCTAssertEqual(Set(doneTasks("gather-w2").filter { $0.phase == "train" }.map(\.id)), Set([5, 10, 15, 20, 25, 30, 35, 36].map { "train:ckpt:\($0)" }))
        try assertSameCurve("gather-w2", as: "star-w0", epochs: 3)
        let helps = try ledger("gather-w2").events().filter { $0.kind == "help" }
        XCTAssertFalse(helps.isEmpty, "a second worker helped")
        XCTAssertTrue(helps.allSatisfy { $0.detail.hasSuffix("slot 1 of 2") }, helps.map(\.detail).joined(separator: "; "))
        XCTAssertTrue(try ledger("gather-w1").events().filter { $0.kind == "help" }.isEmpty, "one worker has no one to help it")
        XCTAssertTrue(try ledger("gather-w2").events().filter { $0.kind == "distrust" }.isEmpty)
        // The members' shares went straight to each other over their links (the first
        // of a group may go through the coordinator while a link connects).
        let sent = sharesSent("gather-w2")
        XCTAssertGreaterThan(sent.direct, 2 * sent.relayed, "\(sent)")
        XCTAssertEqual(sent.received, sent.direct, "every share sent direct was taken: \(sent)")

        let four = "examples: 1200, epochs: 1, batch: 100, shards: 4, learning_rate: 0.1, checkpoint_every: 4, lr_schedule: cosine"
        XCTAssertEqual(try run("gather4-w3", train: four + ", exchange: allgather", workers: 3), try run("star4-w0", train: four, workers: 0))
        XCTAssertTrue(try ledger("gather4-w3").events().contains { $0.kind == "help" && $0.detail.hasSuffix("slot 2 of 3") })
        // 5 shards on 2 workers: the helper's shards 2..<5 are two runs of the tree, 2..<4 and 4..<5.
        let five = "examples: 1000, epochs: 1, batch: 100, shards: 5, learning_rate: 0.1, checkpoint_every: 5"
        XCTAssertEqual(try run("gather5-w2", train: five + ", exchange: allgather", workers: 2), try run("star5-w0", train: five, workers: 0))
        XCTAssertTrue(try ledger("gather5-w2").events().contains { $0.kind == "help" })
    }

    /// Workers whose links no one can reach (`PRUNE_TEST_LINK=dead`: each announces a
    /// socket nothing listens on): every share goes through the coordinator instead, and
    /// out/ is the same bytes.
    func testSharesGoThroughTheCoordinatorWhenTheLinksCannotBeReached() throws {
        let star = try run("star-w0", train: small, workers: 0)
        XCTAssertEqual(try run("dead-w2", train: small + ", exchange: allgather", workers: 2, environment: ["PRUNE_TEST_LINK": "dead"]), star)
        XCTAssertTrue(try Ledger(path: dir.file("dead-w2/ledger.sqlite"), create: false, readOnly: true).events().contains { $0.kind == "help" })
        let sent = sharesSent("dead-w2")
        XCTAssertEqual(sent.direct + sent.received, 0, "\(sent)")
        XCTAssertGreaterThan(sent.relayed, 0, "\(sent)")
    }

    /// A group of three over CURVE on loopback, two of its workers sharing one key pair (as
    /// workers on one host may): each link admits the group's other members' keys, takes a
    /// share only from the member it names when the link authenticated that member's key,
    /// and the shares go straight from member to member; out/ is the in-process bytes.
    func testAGroupOverCurveSendsItsSharesStraightEvenWithASharedKeyPair() throws {
        let train = "examples: 1200, epochs: 1, batch: 100, shards: 4, learning_rate: 0.1, checkpoint_every: 4"
        let expected = try run("reference", train: train, workers: 0)
        for name in ["coord", "solo", "pair"] {
            XCTAssertEqual(try Subprocess.prune(["keygen", name, "--dir", dir.path]).status, 0)
        }
        let allow = try ["solo", "pair"].map { try String(contentsOfFile: dir.file("\($0).pub"), encoding: .utf8) }.joined()
        try allow.write(toFile: dir.file("workers.txt"), atomically: false, encoding: .utf8)
        let endpoint = "tcp://127.0.0.1:\(Background.freePort())"
        let coord = try Background(Subprocess.pruneBinary, ["coordinator", "--job", try writeSpec("curve", train: train + ", exchange: allgather"),
                                                            "--bind", endpoint, "--curve-secret", "coord.key", "--allow", "workers.txt"], cwd: dir.path)
        XCTAssertTrue(Background.waitUntil(seconds: 20) { coord.stderr.contains("listening on") }, coord.stderr)
        let workers = try [("w1", "solo"), ("w2", "pair"), ("w3", "pair")].map { name, key in
            try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--name", name,
                                                    "--curve-secret", dir.file("\(key).key"), "--server-key", dir.file("coord.pub")])
        }
        XCTAssertEqual(coord.wait(seconds: 300), 0, coord.stderr)
        for w in workers { XCTAssertEqual(w.wait(seconds: 10), 0, w.stderr) }
        XCTAssertEqual(outputs("curve"), expected)
        let events = try Ledger(path: dir.file("curve/ledger.sqlite"), create: false, readOnly: true).events()
        XCTAssertTrue(events.contains { $0.kind == "help" && $0.detail.hasSuffix("slot 2 of 3") }, "a group of three")
        XCTAssertFalse(events.contains { $0.kind == "distrust" })
        // Each share sent direct reaches both other members (one that went through the
        // coordinator while a link connected may reach one of them both ways).
        let sent = Self.sharesSent(logs: workers.map(\.stderr).joined(separator: "\n"))
        XCTAssertGreaterThan(sent.direct, 2 * sent.relayed, "\(sent)")
        XCTAssertGreaterThanOrEqual(sent.received, 2 * sent.direct, "\(sent)")
    }

    /// Helpers whose shares are off by one bit (`PRUNE_TEST_LIE=skew-shares`) or hold a
    /// NaN (`nan-shares`, which, summed in, would make the step diverge and the leader fail
    /// the task): the leader's recomputation (or its check of the values) catches a liar in
    /// the first span it helps that leader, the leader takes that span again alone, the liar
    /// helps that leader no more, and out/ is the honest bytes. 6 shards in groups of 3:
    /// a span's last step splits them 1, 3, 2 instead of 2, 2, 2 (`SpanSlots`), and the
    /// leader's checks run there.
    func testALyingHelperIsCaughtAndTheSpanTakenAgainAlone() throws {
        let train = "examples: 1200, epochs: 3, batch: 100, shards: 6, learning_rate: 0.1, checkpoint_every: 2"
        let expected = try run("reference", train: train, workers: 0)
        for lie in ["skew-shares", "nan-shares"] {
            let endpoint = "tcp://127.0.0.1:\(Background.freePort())"
            let coord = try Background(Subprocess.pruneBinary, ["coordinator", "--job", try writeSpec("lied-\(lie)", train: train + ", exchange: allgather"),
                                                                "--bind", endpoint, "--insecure"], cwd: dir.path)
            XCTAssertTrue(Background.waitUntil(seconds: 20) { coord.stderr.contains("listening on") }, coord.stderr)
            // Two liars and an honest worker, each span's group all three: whichever leads
            // (the scheduler's choice, by routing id), a liar helps it.
            let workers = try ["liar1", "liar2", "honest"].map { name in
                try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--name", name],
                               environment: name.hasPrefix("liar") ? ["PRUNE_TEST_LIE": lie] : [:])
            }
            XCTAssertEqual(coord.wait(seconds: 300), 0, coord.stderr)
            workers.forEach { _ = $0.wait(seconds: 10) }
            XCTAssertEqual(outputs("lied-\(lie)"), expected, lie)
            let ledger = try Ledger(path: dir.file("lied-\(lie)/ledger.sqlite"), create: false, readOnly: true)
            let names = Dictionary(uniqueKeysWithValues: try ledger.workers().map { ($0.id, $0.name) })
            let events = try ledger.events()
            let distrusted = events.filter { $0.kind == "distrust" }.map(\.detail)
            XCTAssertFalse(distrusted.isEmpty, "\(lie): no liar was caught")
            XCTAssertFalse(distrusted.contains("name:honest"), lie)
            // Each liar that helped was caught; once a leader caught one, it never helped
            // that leader again (a group stops at its first liar caught, so a second liar
            // in it may go uncaught until its next span).
            var leader: [String: String] = [:], barred: Set<[String]> = []
            for e in events {
                guard let task = e.task else { continue }
                if e.kind == "assign", let w = e.worker { leader[task] = names[w] }
                if e.kind == "help", let w = e.worker, let helper = names[w], let l = leader[task] {
                    XCTAssertFalse(barred.contains([l, helper]), "\(lie): \(helper) helped \(l) in \(task) after \(l) caught it")
                }
                if e.kind == "distrust", let l = leader[task] { barred.insert([l, String(e.detail.dropFirst("name:".count))]) }
            }
            for liar in ["liar1", "liar2"] where events.contains(where: { $0.kind == "help" && names[$0.worker ?? ""] == liar }) {
                XCTAssertTrue(distrusted.contains("name:\(liar)"), "\(lie): \(liar) helped and was never caught")
            }
        }
    }

    /// `lr_schedule: cosine`: every step's size comes from the coordinator, so 0 and 2
    /// workers give the same bytes; and the steps are not the constant schedule's.
    func testACosineLearningRateGivesTheSameBytesForAnyWorkerCount() throws {
        let cosine = small + ", lr_schedule: cosine"
        let expected = try run("cosine-w0", train: cosine, workers: 0)
        XCTAssertEqual(try run("cosine-w2", train: cosine, workers: 2), expected)
        XCTAssertNotEqual(try run("constant-w0", train: small, workers: 0)["dense/model.safetensors"], expected["dense/model.safetensors"])
    }

    /// Magnitude 80% then masked fine-tuning: every weight the mask pruned stays exactly 0,
    /// the kept ones and the biases move, and the accuracy beats the pruned start.
    func testMaskedFineTuningKeepsThePrunedWeightsZero() throws {
        _ = try run("dense", train: small, workers: 0)
        let spec = """
        model: dense/out/dense
        output: ft
        method: magnitude
        sparsity: 0.8
        train: {data: \(Self.fashionMNIST), \(small)}
        evaluation: {data: \(Self.fashionMNIST), samples: 2000}
        """
        try spec.write(toFile: dir.file("ft.yaml"), atomically: false, encoding: .utf8)
        let r = try Subprocess.prune(["run", "-q", "--workers", "2", "ft.yaml"], cwd: dir.path)
        XCTAssertEqual(r.status, 0, r.stderr)
        let start = try Checkpoint(path: dir.file("dense/out/dense")), out = try Checkpoint(path: dir.file("ft/out/dense"))
        let manifest = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: dir.file("ft/out/manifest.json"))))
        for name in ["fc1.weight", "fc2.weight"] {
            let a = try start.shard(of: name)!.floats(start.info(name)!), b = try out.shard(of: name)!.floats(out.info(name)!)
            // The magnitude mask at 80% of each row: the 80% smallest |w| of the start.
            let m = try XCTUnwrap(manifest.tensors[name])
            XCTAssertTrue(m.pruned && m.valuesUpdated, name)
            XCTAssertGreaterThanOrEqual(m.zeros, m.masked)
            XCTAssertEqual(Double(m.masked) / Double(a.count), 0.8, accuracy: 0.01, name)
            let threshold = a.map(abs).sorted()[Int(0.8 * Double(a.count)) - 1]
            var moved = 0
            for i in a.indices {
                if abs(a[i]) < threshold * 0.999 { XCTAssertEqual(b[i], 0, "\(name)[\(i)] pruned but \(b[i])") }
                if b[i] != 0 && b[i] != a[i] { moved += 1 }
            }
            XCTAssertGreaterThan(moved, a.count / 10, "\(name): the kept weights were trained")
        }
        let bias = try out.shard(of: "fc1.bias")!.floats(out.info("fc1.bias")!), startBias = try start.shard(of: "fc1.bias")!.floats(start.info("fc1.bias")!)
        XCTAssertNotEqual(bias, startBias, "biases are trained too")
        let check = try Subprocess.prune(["check", "dense/out/dense", "ft"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
    }

    /// `schedule: gradual`: each round prunes by magnitude to its level on the cubic curve
    /// and trains; the bytes are the same for 0 and 2 workers, the final mask prunes the
    /// final sparsity and contains every earlier round's (pruned weights stay pruned).
    func testGradualScheduleRaisesSparsityRoundByRoundAndGivesTheSameBytes() throws {
        let schedule = "schedule: {method: gradual, initial: 0.3, rounds: 3, epochs_per_round: 1}\n"
        let train = "examples: 1200, epochs: 1, batch: 100, learning_rate: 0.1, checkpoint_every: 5"
        var outs: [[String: Data]] = []
        for w in [0, 2] {
            let path = try writeSpec("gradual-w\(w)", sparsity: 0.8, train: train)
            try (try String(contentsOfFile: path, encoding: .utf8) + "\n" + schedule).write(toFile: path, atomically: false, encoding: .utf8)
            let r = try Subprocess.prune(["run", "-q", "--workers", "\(w)", path], cwd: dir.path)
            XCTAssertEqual(r.status, 0, r.stderr)
            outs.append(outputs("gradual-w\(w)"))
        }
        XCTAssertEqual(outs[0], outs[1])
        XCTAssertTrue(doneTasks("gradual-w2").contains { $0.id == "train:prune:2" })
        let epochs = try XCTUnwrap((try report("gradual-w2")["training"] as? [String: Any])?["epochs"] as? [[String: Any]])
        let levels = epochs.compactMap { $0["sparsity"] as? Double }
        XCTAssertEqual(levels.count, 4)
        for (got, want) in zip(levels, [0.3, 0.8 - 0.5 * 0.125, 0.8, 0.8]) { XCTAssertEqual(got, want, accuracy: 1e-12) }
        let manifest = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: dir.file("gradual-w2/out/manifest.json"))))
        for name in ["fc1.weight", "fc2.weight"] {
            let m = try XCTUnwrap(manifest.tensors[name])
            XCTAssertEqual(Double(m.masked) / Double(m.elements), 0.8, accuracy: 0.01, name)
        }
        let check = try Subprocess.prune(["check", "model", "gradual-w2"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
    }

    /// `schedule: adaptive` from a trained dense model: every round's level follows from the
    /// validation accuracies before it (the report's decisions equal `AdaptiveLevels` on
    /// the report's accuracies), some level meets the budget and some does not (0.99 cannot),
    /// the written masks are the chosen round's level, the bytes are the same for 0 and 2
    /// workers, and `prune check` passes.
    func testAdaptiveScheduleKeepsTheHighestLevelWithinTheBudget() throws {
        _ = try run("dense", train: "examples: 1500, epochs: 4, batch: 100, learning_rate: 0.1, checkpoint_every: 50", workers: 0)
        var outs: [[String: Data]] = []
        for w in [0, 2] {
            let path = try adaptiveSpec("adaptive-w\(w)")
            let r = try Subprocess.prune(["run", "-q", "--workers", "\(w)", path], cwd: dir.path)
            XCTAssertEqual(r.status, 0, r.stderr)
            outs.append(outputs("adaptive-w\(w)"))
        }
        XCTAssertEqual(outs[0], outs[1])
        let manifest = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: dir.file("adaptive-w2/out/manifest.json"))))
        let a = try XCTUnwrap(manifest.training?.adaptive)
        XCTAssertEqual(a.validationExamples, 300)
        XCTAssertEqual(manifest.training?.examples, 1200)
        XCTAssertEqual(a.rounds.count, 5)
        let accuracies = try a.rounds.map { try XCTUnwrap($0.validationAccuracy) }
        let again = AdaptiveLevels(initial: 0.5, step: 0.3, maximum: 0.99, budget: 0.02, count: 5, reference: a.referenceAccuracy, accuracies: accuracies)
        XCTAssertEqual(a.rounds.map(\.sparsity), again.rounds.map(\.sparsity))
        XCTAssertEqual(a.rounds.map(\.baseRound), again.rounds.map(\.base))
        XCTAssertEqual(a.rounds.map(\.met), again.rounds.map(\.met))
        XCTAssertEqual(a.chosenRound, again.chosen)
        XCTAssertTrue(a.rounds.contains { $0.met == false }, "\(a.rounds)")
        let chosen = try XCTUnwrap(a.chosenRound, "a 50% level of a trained MLP stays within 2 points: \(a.rounds)")
        XCTAssertGreaterThanOrEqual(a.rounds[chosen].sparsity, 0.5)
        XCTAssertEqual(a.sparsity, a.rounds[chosen].sparsity)
        XCTAssertEqual(a.rounds.last?.sparsity, a.sparsity, "the last round fine-tunes the level found")
        for name in ["fc1.weight", "fc2.weight"] {
            let m = try XCTUnwrap(manifest.tensors[name])
            XCTAssertEqual(m.targetSparsity, a.sparsity)
            XCTAssertEqual(Double(m.masked) / Double(m.elements), a.sparsity, accuracy: 0.02, name)
        }
        let epochs = try XCTUnwrap(manifest.training?.epochs)
        XCTAssertEqual(epochs.count, 6)
        XCTAssertEqual(epochs.compactMap(\.sparsity), a.rounds.map(\.sparsity) + [a.rounds.last!.sparsity])
        let markdown = try String(contentsOfFile: dir.file("adaptive-w2/report.md"), encoding: .utf8)
        XCTAssertTrue(markdown.contains("Highest sparsity within the budget: \(String(format: "%.3f", a.sparsity))"), markdown)
        let check = try Subprocess.prune(["check", "dense/out/dense", "adaptive-w2"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
    }

    /// An adaptive schedule (5 rounds from 0.5 by 0.3 towards 0.99, a 2-point budget on 300
    /// held-out examples) from the trained dense model in dense/.
    private func adaptiveSpec(_ name: String, rounds: Int = 5) throws -> String {
        let train = "examples: 1500, epochs: 1, batch: 100, learning_rate: 0.05, checkpoint_every: 50"
        let path = try writeSpec(name, model: "dense/out/dense", sparsity: 0.99, train: train)
        let schedule = "schedule: {method: adaptive, initial: 0.5, step: 0.3, rounds: \(rounds), budget: 0.02, validation: 300}\n"
        try (try String(contentsOfFile: path, encoding: .utf8) + "\n" + schedule).write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }

    /// An adaptive search SIGKILLed after its third round's level was decided: `prune
    /// resume` decides the same levels from the same artifacts, redoes nothing done, and
    /// writes the bytes of an unbroken run.
    func testAKilledAdaptiveSearchResumesToTheSameBytes() throws {
        _ = try run("dense", train: "examples: 1500, epochs: 4, batch: 100, learning_rate: 0.1, checkpoint_every: 50", workers: 0)
        let reference = try Subprocess.prune(["run", "-q", "--workers", "0", try adaptiveSpec("unbroken", rounds: 4)], cwd: dir.path)
        XCTAssertEqual(reference.status, 0, reference.stderr)
        try crashAndResume(in: dir, job: "crash", spec: try adaptiveSpec("crash", rounds: 4), after: "train:prune:2") { before in
            XCTAssertFalse(before.contains { $0.id == "train:prune:3" }, "the crash came before the last round")
        }
        XCTAssertEqual(outputs("crash"), outputs("unbroken"))
        let decided = { (job: String) throws -> [Double] in
            try XCTUnwrap(try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: self.dir.file("\(job)/out/manifest.json")))).training?.adaptive)
                .rounds.map(\.sparsity)
        }
        XCTAssertEqual(try decided("crash"), try decided("unbroken"))
    }

    /// A coordinator SIGKILL in the middle of training: `prune resume` goes on from the
    /// last checkpoint and the gradients since, redoes nothing done, and gives the bytes
    /// of an unbroken run.
    func testAKilledTrainingResumesToTheSameBytes() throws {
        let expected = try run("reference", train: small, workers: 0)
        try crashAndResume(in: dir, job: "crash", spec: try writeSpec("crash", train: small), after: "train:grad:17:0") { before in
            XCTAssertFalse(before.contains { $0.id == "train:ckpt:36" }, "the crash came before the end")
        }
        XCTAssertEqual(outputs("crash"), expected)
    }

    /// The same without an exchange: killed after a span, resumed from its checkpoint.
    func testAKilledTrainingWithoutAnExchangeResumesToTheSameBytes() throws {
        let expected = try run("reference", train: small, workers: 0)
        let none = small + ", exchange: none"
        try crashAndResume(in: dir, job: "crash", spec: try writeSpec("crash", train: none), after: "train:ckpt:15",
                           environment: ["PRUNE_TEST_TASK_DELAY_MS": "400"]) { before in
            XCTAssertFalse(before.contains { $0.id == "train:ckpt:36" }, "the crash came before the end")
        }
        XCTAssertEqual(outputs("crash"), expected)
    }

    /// Training data edited while a job is stopped: `prune resume` refuses in one line.
    func testAResumeRefusesChangedTrainingData() throws {
        try idx(dir.file("mine/train-images-idx3-ubyte"), shape: [200, 28, 28], fill: 40)
        try idx(dir.file("mine/train-labels-idx1-ubyte"), shape: [200], values: (0..<200).map { UInt8($0 % 10) })
        let spec = "model: model\noutput: edited\nmethod: magnitude\nsparsity: 0\ntrain: {data: mine, epochs: 3, batch: 20, checkpoint_every: 2}\n"
        try spec.write(toFile: dir.file("edited.yaml"), atomically: false, encoding: .utf8)
        let run = try Background(Subprocess.pruneBinary, ["run", "-q", "--workers", "1", "edited.yaml"], cwd: dir.path,
                                 environment: ["PRUNE_TEST_TASK_DELAY_MS": "40"])
        XCTAssertTrue(Background.waitUntil(seconds: 120) { self.doneTasks("edited").contains { $0.id == "train:grad:3:0" } })
        run.kill(SIGKILL)
        XCTAssertNotNil(run.wait(seconds: 10))
        try idx(dir.file("mine/train-images-idx3-ubyte"), shape: [200, 28, 28], fill: 41)
        let resume = try Subprocess.prune(["resume", "-q", "edited"], cwd: dir.path)
        XCTAssertEqual(resume.status, 2, resume.stderr)
        XCTAssertTrue(resume.stderr.contains("the training data changed since the job started"), resume.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("edited/out")))
    }

    /// Bad training input: one line naming the cause, exit 2, no job directory.
    func testBadTrainingInputIsRefusedBeforeAnythingIsWritten() throws {
        // A labels file with a label out of range and an images file of 10 × 10 images.
        try idx(dir.file("bad/train-images-idx3-ubyte"), shape: [4, 28, 28], fill: 7)
        try idx(dir.file("bad/train-labels-idx1-ubyte"), shape: [4], values: [0, 1, 12, 3])
        try idx(dir.file("small/train-images-idx3-ubyte"), shape: [4, 10, 10], fill: 7)
        try idx(dir.file("small/train-labels-idx1-ubyte"), shape: [4], values: [0, 1, 2, 3])
        try idx(dir.file("cut/train-images-idx3-ubyte"), shape: [4, 28, 28], fill: 7, drop: 100)
        try idx(dir.file("cut/train-labels-idx1-ubyte"), shape: [4], values: [0, 1, 2, 3])
        try FileManager.default.createDirectory(atPath: dir.file("empty"), withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: dir.file("empty/train-images-idx3-ubyte")))
        try idx(dir.file("empty/train-labels-idx1-ubyte"), shape: [4], values: [0, 1, 2, 3])
        let cases: [(train: String, expect: String)] = [
            ("data: bad, batch: 2", "label 12 of example 2"),
            ("data: small, batch: 2", "100 features"),
            ("data: cut, batch: 2", "holds"),
            ("data: empty, batch: 2", "empty"),
            ("data: \(Self.fashionMNIST), learning_rate: 0", "train.learning_rate"),
            ("data: \(Self.fashionMNIST), learning_rate: .nan", "train.learning_rate"),
            ("data: \(Self.fashionMNIST), examples: 50, batch: 64", "more than the 50 training examples"),
            ("data: \(Self.fashionMNIST), epochs: 0", "train.epochs"),
            ("data: \(Self.fashionMNIST), optimizer: lbfgs", "train.optimizer"),
            ("data: \(Self.fashionMNIST), lr_schedule: linear", "train.lr_schedule"),
            ("data: \(Self.fashionMNIST), exchange: ring", "train.exchange"),
            ("data: nowhere", "no such file"),
        ]
        let schedules: [(spec: String, expect: String)] = [
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: gradual, initial: 0.7}", "above the final sparsity"),
            ("sparsity: 0.5\nschedule: {method: gradual}", "needs train:"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: sudden}", "schedule.method"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: gradual, rounds: 1}", "schedule.rounds"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: penalty, l1: -1}", "schedule.l1"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: penalty, rounds: 3}", "not a key of schedule penalty"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: adaptive, budget: 2}", "schedule.budget"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: adaptive, step: 0}", "schedule.step"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: adaptive, initial: 0}", "first level of at least"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST)}\nschedule: {method: adaptive, l1: 0.1}", "not a key of schedule adaptive"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST), examples: 100}\nschedule: {method: adaptive, validation: 100}", "leave none"),
            ("sparsity: 0.5\ntrain: {data: \(Self.fashionMNIST), examples: 100, batch: 95}\nschedule: {method: adaptive}", "held out for validation"),
        ]
        for (i, c) in schedules.enumerated() { try expectRefused("badschedule\(i)", "\(c.spec)\n", c.expect) }
        for (i, c) in cases.enumerated() { try expectRefused("bad\(i)", "sparsity: 0\ntrain: {\(c.train)}\n", c.expect) }
    }

    /// A job (model, output and method given) refused: one `prune: error:` line naming `expect`, exit 2, no directory.
    private func expectRefused(_ name: String, _ rest: String, _ expect: String) throws {
        try "model: model\noutput: \(name)\nmethod: magnitude\n\(rest)".write(toFile: dir.file("\(name).yaml"), atomically: false, encoding: .utf8)
        let r = try Subprocess.prune(["run", "-q", "--workers", "0", "\(name).yaml"], cwd: dir.path)
        XCTAssertEqual(r.status, 2, "\(rest): \(r.stderr)")
        XCTAssertTrue(r.stderr.hasPrefix("prune: error:") && r.stderr.contains(expect), "\(rest): \(r.stderr)")
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file(name)), "\(rest): nothing written")
    }

    /// A step size that blows the weights up (inputs of 1e18, learning rate 10): the
    /// task fails naming the step and the cause, the job exits 2, out/ is not written and
    /// the checkpoints before the step stay in the job directory.
    func testADivergingTrainingStopsWithTheStepAndTheCause() throws {
        let n = 400, width = 784
        var state: UInt64 = 11
        let x: [Float] = (0..<(n * width)).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(state >> 40) / Float(1 << 24) * 1e18
        }
        let writer = try SafeTensorsWriter(path: dir.file("loud.safetensors"), tensors: [TensorSpec(name: "inputs", dtype: .f32, shape: [n, width]),
                                                                                         TensorSpec(name: "labels", dtype: .i64, shape: [n])], metadata: nil)
        try x.withUnsafeBytes { try writer.write($0) }
        try (0..<n).map { Int64($0 % 10) }.withUnsafeBytes { try writer.write($0) }
        try writer.finish()
        // The same with each step a span task of its own (`exchange: none`).
        for (job, exchange) in [("wild", "star"), ("wild-span", "none")] {
            let spec = "model: model\noutput: \(job)\nmethod: magnitude\nsparsity: 0\ntrain: {data: loud.safetensors, epochs: 3, batch: 50, learning_rate: 10, checkpoint_every: 1, exchange: \(exchange)}\n"
            try spec.write(toFile: dir.file("\(job).yaml"), atomically: false, encoding: .utf8)
            let r = try Subprocess.prune(["run", "-q", "--workers", "2", "\(job).yaml"], cwd: dir.path)
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.contains("train step") && r.stderr.contains("non-finite") && r.stderr.contains("train.learning_rate"), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("\(job)/out")))
            XCTAssertTrue(doneTasks(job).contains { $0.id == "train:ckpt:1" }, "the checkpoints before the failure are kept")
        }
    }

    /// An unsigned-byte IDX file of `shape`: `values`, or `fill` everywhere; `drop` bytes cut off the end.
    private func idx(_ path: String, shape: [Int], fill: UInt8 = 0, values: [UInt8]? = nil, drop: Int = 0) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        var bytes: [UInt8] = [0, 0, 8, UInt8(shape.count)]
        for d in shape { bytes += [UInt8(d >> 24 & 0xff), UInt8(d >> 16 & 0xff), UInt8(d >> 8 & 0xff), UInt8(d & 0xff)] }
        bytes += values ?? [UInt8](repeating: fill, count: shape.reduce(1, *))
        try Data(bytes.dropLast(drop)).write(to: URL(fileURLWithPath: path))
    }
}
