import Foundation
import Tensors
import TestSupport
import XCTest
@testable import Cluster
import Protocol
import ZeroMQ

/// Real `prune` processes, real ZeroMQ sockets, real kills.
final class ClusterProcessTests: JobProcessTestCase {
    override var spec: String { "model: model\nmethod: random\nseed: 5\npattern: per_row\nsparsity: 0.5\n" }
    override var taskWeights: [String] { ["--task-weights", "1024"] }

    func testOutputBytesAreTheSameForAnyNumberOfWorkers() throws {
        let expected = try reference()
        XCTAssertGreaterThan(expected.count, 4)
        for workers in [1, 2, 4] {
            let name = "w\(workers)"
            let r = try Subprocess.prune(["run", "-q", "--workers", "\(workers)"] + taskWeights + [try writeSpec(name)], cwd: dir.path)
            XCTAssertEqual(r.status, 0, "\(workers) workers: \(r.stderr)")
            XCTAssertEqual(outputs(name), expected, "\(workers) workers")
            let check = try Subprocess.prune(["check", "model", name], cwd: dir.path)
            XCTAssertEqual(check.status, 0, check.stdout)
        }
        let status = try Subprocess.prune(["status", "w4"], cwd: dir.path)
        XCTAssertTrue(status.stdout.contains("job: complete"), status.stdout)
        XCTAssertEqual(status.stdout.components(separatedBy: "tasks/s").count - 1, 4, "four workers listed: \(status.stdout)")
    }

    func testJobSurvivesWorkersKilledMidTask() throws {
        let expected = try reference()
        let job = try writeSpec("killed")
        let run = try Background(Subprocess.pruneBinary, ["run", "-q", "--workers", "2", "--max-attempts", "20"] + taskWeights + [job],
                                 cwd: dir.path, environment: ["PRUNE_TEST_TASK_DELAY_MS": "150"])
        var kills = 0
        for threshold in [3, 10, 17] {
            XCTAssertTrue(Background.waitUntil(seconds: 60) { doneTasks("killed") >= threshold }, "progress to \(threshold)")
            // Every worker is mid-task (each task sleeps 150 ms before answering).
            let workers = Background.children(of: run.pid)
            guard let victim = workers.first else { return XCTFail("no worker processes") }
            XCTAssertEqual(kill(victim, SIGKILL), 0)
            kills += 1
        }
        XCTAssertEqual(run.wait(seconds: 120), 0, run.stderr)
        XCTAssertEqual(outputs("killed"), expected)
        let ledger = try Ledger(path: dir.file("killed/ledger.sqlite"), create: false, readOnly: true)
        let lost = try ledger.events().filter { $0.kind == "worker-lost" }
        XCTAssertGreaterThanOrEqual(lost.count, kills, "\(lost)")
    }

    func testKilledCoordinatorResumesToTheSameBytesWithoutRedoingTasks() throws {
        let expected = try reference()
        let job = try writeSpec("crash")
        let run = try Background(Subprocess.pruneBinary, ["run", "-q", "--workers", "2"] + taskWeights + [job],
                                 cwd: dir.path, environment: ["PRUNE_TEST_TASK_DELAY_MS": "100"])
        XCTAssertTrue(Background.waitUntil(seconds: 60) { doneTasks("crash") >= 8 })
        let workers = Background.children(of: run.pid)
        run.kill(SIGKILL)
        XCTAssertNotNil(run.wait(seconds: 10))
        // status reads the ledger of a crashed job.
        let status = try Subprocess.prune(["status", "crash"], cwd: dir.path)
        XCTAssertEqual(status.status, 0, status.stderr)
        XCTAssertTrue(status.stdout.contains("job: running"), status.stdout)
        XCTAssertTrue(Background.waitUntil(seconds: 10) { !workers.contains(where: Background.isAlive) }, "workers exit with their coordinator")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("crash/out")))

        let before = try Ledger(path: dir.file("crash/ledger.sqlite"), create: false, readOnly: true).tasks().filter { $0.state == "done" }
        XCTAssertGreaterThanOrEqual(before.count, 8)
        let resume = try Subprocess.prune(["resume", "-q", "crash"] + taskWeights, cwd: dir.path)
        XCTAssertEqual(resume.status, 0, resume.stderr)
        XCTAssertEqual(outputs("crash"), expected)

        let ledger = try Ledger(path: dir.file("crash/ledger.sqlite"), create: false, readOnly: true)
        let after = Dictionary(uniqueKeysWithValues: try ledger.tasks().map { ($0.id, $0) })
        let events = try ledger.events()
        for task in before {
            XCTAssertEqual(after[task.id]?.finishedAt, task.finishedAt, "\(task.id) was not redone")
            XCTAssertEqual(events.filter { $0.kind == "done" && $0.task == task.id }.count, 1, task.id)
        }
        XCTAssertTrue(after.values.allSatisfy { $0.state == "done" })
    }

    func testResumeRefusesAChangedSpecOrCheckpoint() throws {
        let job = try writeSpec("changed")
        XCTAssertEqual(try Subprocess.prune(["run", "-q", "--workers", "1", job], cwd: dir.path).status, 0)
        // The recorded job.yaml edited: refused.
        let specPath = dir.file("changed/job.yaml")
        let original = try String(contentsOfFile: specPath, encoding: .utf8)
        try (original + "# edited\n").write(toFile: specPath, atomically: false, encoding: .utf8)
        var r = try Subprocess.prune(["resume", "changed"], cwd: dir.path)
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("the spec changed since the job started"), r.stderr)
        try original.write(toFile: specPath, atomically: false, encoding: .utf8)
        // The checkpoint rewritten with other weights: refused.
        try SyntheticModel.write(to: dir.file("model"), dtype: .bf16, shards: 2, seed: 77, layers: 3, hidden: 64, intermediate: 128)
        r = try Subprocess.prune(["resume", "changed"], cwd: dir.path)
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("the checkpoint changed since the job started"), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
    }

    private func coordinator(_ name: String, extra: [String]) throws -> (Background, String) {
        try coordinator(name, options: extra)
    }

    func testWorkerWithAnotherProtocolVersionIsRejectedAtBothEnds() throws {
        let (coord, endpoint) = try coordinator("version", extra: ["--insecure"])
        let old = try Subprocess.prune(["worker", "--connect", endpoint, "--insecure", "--protocol-version", "99"])
        XCTAssertEqual(old.status, 2, old.stderr)
        XCTAssertTrue(old.stderr.contains("rejected by the coordinator: protocol version 99 is not supported"), old.stderr)
        XCTAssertTrue(Background.waitUntil(seconds: 5) { coord.stderr.contains("rejected") }, coord.stderr)
        let good = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure"])
        XCTAssertEqual(coord.wait(seconds: 60), 0, coord.stderr)
        XCTAssertEqual(good.wait(seconds: 10), 0)
    }

    func testGarbageTruncatedAndOversizedFramesNeitherCrashNorStallTheCoordinator() throws {
        let (coord, endpoint) = try coordinator("garbage", extra: ["--insecure", "--max-frame-bytes", "65536"])
        let context = try ZMQContext()
        let hostile = try ZMQSocket(context, .dealer)
        try hostile.setLinger(ms: 0)
        try hostile.connect(endpoint)
        var hello = Prune_V1_Hello()
        hello.protocolVersion = Settings.protocolVersion
        hello.workerName = "hostile"
        let helloBytes = try WireMessage.frames(.with(.hello(hello)))[0]
        let payloadLie = try WireMessage.frames(.with(.heartbeat(Prune_V1_Heartbeat())), payloads: [("x", [1, 2, 3])])
        let messages: [[[UInt8]]] = [
            [(0..<200).map { _ in UInt8.random(in: 0...255) }],          // garbage
            [Array(helloBytes.prefix(helloBytes.count / 2))],            // truncated envelope
            [payloadLie[0]],                                             // payload declared, missing
            [payloadLie[0], [9, 9, 9]],                                  // payload fails its sha256
            [[]],                                                        // empty frame
            [try WireMessage.frames(.with(.result(Prune_V1_Result())))[0]], // result before Hello
        ]
        for m in messages { try hostile.send(m) }
        try hostile.send([[UInt8](repeating: 7, count: 1 << 20)])        // oversized: connection dropped
        let worker = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure"])
        // The coordinator keeps serving: the job completes and checks.
        XCTAssertEqual(coord.wait(seconds: 60), 0, coord.stderr)
        XCTAssertEqual(worker.wait(seconds: 10), 0)
        XCTAssertTrue(coord.stderr.contains("dropped a malformed message"), coord.stderr)
        XCTAssertEqual(try Subprocess.prune(["check", "model", "garbage"], cwd: dir.path).status, 0)
        hostile.close()
    }

    func testOnlyAllowListedCurveKeysGetWork() throws {
        for name in ["coordinator", "good", "bad"] {
            XCTAssertEqual(try Subprocess.prune(["keygen", name, "--dir", dir.path]).status, 0)
        }
        try ("# workers allowed in\n" + String(contentsOfFile: dir.file("good.pub"), encoding: .utf8))
            .write(toFile: dir.file("allow.txt"), atomically: false, encoding: .utf8)
        let (coord, endpoint) = try coordinator("curve", extra: ["--curve-secret", dir.file("coordinator.key"), "--allow", dir.file("allow.txt")])
        let bad = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--name", "bad",
                                                          "--curve-secret", dir.file("bad.key"), "--server-key", dir.file("coordinator.pub")])
        let plain = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--name", "plain", "--insecure"])
        // Both really tried: the coordinator refused the unknown key, and both workers found
        // the coordinator silent (a plaintext client never completes a CURVE handshake).
        XCTAssertTrue(Background.waitUntil(seconds: 20) { coord.stderr.contains("its CURVE key is not on the allow-list") }, coord.stderr)
        for w in [bad, plain] { XCTAssertTrue(Background.waitUntil(seconds: 20) { w.stderr.contains("coordinator silent") }, w.stderr) }
        XCTAssertEqual(doneTasks("curve"), 0, "no work for keys not on the allow-list")
        let good = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--name", "good",
                                                           "--curve-secret", dir.file("good.key"), "--server-key", dir.file("coordinator.pub")])
        XCTAssertEqual(coord.wait(seconds: 60), 0, coord.stderr)
        XCTAssertEqual(good.wait(seconds: 10), 0)
        let names = try Ledger(path: dir.file("curve/ledger.sqlite"), create: false, readOnly: true).workers().map(\.name)
        XCTAssertEqual(names, ["good"])
        bad.kill()
        plain.kill()
    }

    /// cluster/prune-worker@.service as shipped, with its install paths pointed at this
    /// test's files: `systemd-analyze verify` accepts it (when systemd's tools are here), and
    /// its ExecStart, run with %i = the coordinator's host:port, joins over CURVE and
    /// finishes the job. (No systemd runs as PID 1 here, so systemctl itself is not used.)
    func testSystemdUnitsExecStartJoinsACurveCoordinator() throws {
        for name in ["coordinator", "worker"] {
            XCTAssertEqual(try Subprocess.prune(["keygen", name, "--dir", dir.path]).status, 0)
        }
        try FileManager.default.copyItem(atPath: dir.file("worker.pub"), toPath: dir.file("allow.txt"))
        let (coord, endpoint) = try coordinator("systemd", extra: ["--curve-secret", dir.file("coordinator.key"), "--allow", dir.file("allow.txt")])
        let shipped = try String(contentsOfFile: Subprocess.packageRoot + "/cluster/prune-worker@.service", encoding: .utf8)
        var unit = shipped
        for (installed, here) in [("/usr/local/bin/prune", Subprocess.pruneBinary), ("/etc/prune/worker.key", dir.file("worker.key")),
                                  ("/etc/prune/coordinator.pub", dir.file("coordinator.pub")), ("/var/lib/prune/models", dir.path)] {
            XCTAssertTrue(unit.contains(installed), "the unit names \(installed)")
            unit = unit.replacingOccurrences(of: installed, with: here)
        }
        let unitPath = dir.file("prune-worker@.service")
        try unit.write(toFile: unitPath, atomically: false, encoding: .utf8)
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") {
            let verify = try Subprocess.run("/usr/bin/systemd-analyze", ["verify", unitPath])
            XCTAssertEqual(verify.status, 0, verify.stderr)
            // Problems are reported as lines naming the unit; a clean unit gets none.
            XCTAssertFalse((verify.stdout + verify.stderr).contains("prune-worker@"), verify.stdout + verify.stderr)
        }
        guard let line = unit.split(separator: "\n").first(where: { $0.hasPrefix("ExecStart=") }) else { return XCTFail("no ExecStart in the unit") }
        let instance = endpoint.replacingOccurrences(of: "tcp://", with: "")
        let argv = line.dropFirst("ExecStart=".count).replacingOccurrences(of: "%i", with: instance).split(separator: " ").map(String.init)
        XCTAssertEqual(argv.first, Subprocess.pruneBinary)
        let worker = try Background(argv[0], Array(argv.dropFirst()), environment: ["OPENBLAS_NUM_THREADS": "1"])
        XCTAssertEqual(coord.wait(seconds: 60), 0, coord.stderr)
        XCTAssertEqual(worker.wait(seconds: 10), 0, worker.stderr)
        XCTAssertEqual(try Subprocess.prune(["check", "model", "systemd"], cwd: dir.path).status, 0)
    }

    func testWorkerWithoutLocalFilesPullsChunksAndGetsTheSameBytes() throws {
        let expected = try reference()
        let (coord, endpoint) = try coordinator("pulled", extra: ["--insecure"] + taskWeights)
        let worker = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--pull-only"])
        XCTAssertEqual(coord.wait(seconds: 60), 0, coord.stderr)
        XCTAssertEqual(worker.wait(seconds: 10), 0, worker.stderr)
        XCTAssertEqual(outputs("pulled"), expected)
        // The checkpoint's pruned tensors crossed the wire as chunks.
        let ledger = try Ledger(path: dir.file("pulled/ledger.sqlite"), create: false, readOnly: true)
        let sent = Int(try ledger.jobValue("wire_bytes_out") ?? "0") ?? 0
        let targetBytes = try Checkpoint(path: dir.file("model")).tensors.filter { $0.name.hasSuffix("proj.weight") }.reduce(0) { $0 + $1.byteCount }
        XCTAssertGreaterThanOrEqual(sent, targetBytes)
    }

    /// The bytes of packed masks of the pruned tensors of the model `wide`: 1.3 M weights,
    /// 164 KB of mask bits, so masks outweigh the envelopes.
    private func wideModelMaskBytes() throws -> Int {
        if !FileManager.default.fileExists(atPath: dir.file("wide")) {
            try SyntheticModel.write(to: dir.file("wide"), dtype: .f32, shards: 1, layers: 2, hidden: 256, intermediate: 512)
        }
        return try Checkpoint(path: dir.file("wide")).tensors.filter { $0.name.hasSuffix("proj.weight") }
            .reduce(0) { $0 + $1.rows * (($1.cols + 7) / 8) }
    }

    /// A magnitude job on `wide` with one `prune worker` given `workerFlags`: the bytes the
    /// coordinator received, the output bytes, and the worker's log.
    private func wideJob(_ name: String, pattern: String, sparsity: Double = 0.5, workerFlags: [String],
                         coordinatorEnvironment: [String: String] = [:]) throws -> (received: Int, data: [String: Data], log: String) {
        let path = dir.file("\(name).yaml")
        try "model: wide\nmethod: magnitude\nsparsity: \(sparsity)\npattern: '\(pattern)'\noutput: \(name)\n".write(toFile: path, atomically: false, encoding: .utf8)
        let endpoint = "tcp://127.0.0.1:\(Background.freePort())"
        let c = try Background(Subprocess.pruneBinary, ["coordinator", "--job", path, "--bind", endpoint, "--insecure"], cwd: dir.path,
                               environment: coordinatorEnvironment)
        let w = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure"] + workerFlags)
        XCTAssertEqual(c.wait(seconds: 90), 0, c.stderr)
        XCTAssertEqual(w.wait(seconds: 10), 0, w.stderr)
        let ledger = try Ledger(path: dir.file("\(name)/ledger.sqlite"), create: false, readOnly: true)
        return (Int(try ledger.jobValue("wire_bytes_in") ?? "") ?? -1,
                jobOutputs(dir.file(name)), w.stderr)
    }

    func testLocalWorkersStoreResultsInPlaceSoTheWireCarriesOnlyDigests() throws {
        let maskBytes = try wideModelMaskBytes()
        let local = try wideJob("stored", pattern: "unstructured", workerFlags: [])
        let remote = try wideJob("sent", pattern: "unstructured", workerFlags: ["--pull-only"])
        XCTAssertTrue(local.log.contains("storing results in"), local.log)
        XCTAssertTrue(remote.log.contains("sending results over the wire"), remote.log)
        XCTAssertGreaterThan(local.data.count, 2)
        XCTAssertEqual(local.data, remote.data, "the same bytes either way")
        XCTAssertGreaterThanOrEqual(remote.received, maskBytes, "a 50% mask is at its entropy: a remote worker sends its bits")
        XCTAssertLessThan(local.received, maskBytes / 8, "a local worker sends digests, not masks")
        // Every stored result read back and verified off the coordinator's loop (as a large
        // model's are): the same bytes.
        let offLoop = try wideJob("off-loop", pattern: "unstructured", workerFlags: [], coordinatorEnvironment: ["PRUNE_TEST_OFF_LOOP_BYTES": "1"])
        XCTAssertEqual(offLoop.data, local.data)
    }

    func testRemoteWorkersSendCodedMasksAndTheSameBytes() throws {
        let maskBytes = try wideModelMaskBytes()
        let coded = try wideJob("coded", pattern: "2:4", workerFlags: ["--pull-only", "--compress-masks"])
        let raw = try wideJob("raw", pattern: "2:4", workerFlags: ["--pull-only"])
        XCTAssertGreaterThan(coded.data.count, 2)
        XCTAssertEqual(coded.data, raw.data, "coding changes the wire, not the output")
        XCTAssertGreaterThanOrEqual(raw.received, maskBytes)
        // 24 groups of 2:4 per 64 bits: 0.667 bits per weight, plus envelopes.
        XCTAssertLessThan(coded.received, maskBytes * 7 / 10, "2:4 masks coded: \(coded.received) bytes for \(maskBytes) bytes of mask bits")
        let check = try Subprocess.prune(["check", "wide", "coded"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout)

        // 90% unstructured, range coded: H(0.1) = 0.469 bits per weight.
        let sparse = try wideJob("sparse", pattern: "unstructured", sparsity: 0.9, workerFlags: ["--pull-only", "--compress-masks"])
        let sparseRaw = try wideJob("sparse-raw", pattern: "unstructured", sparsity: 0.9, workerFlags: ["--pull-only"])
        XCTAssertEqual(sparse.data, sparseRaw.data)
        XCTAssertGreaterThanOrEqual(sparseRaw.received, maskBytes, "without --compress-masks an unstructured mask travels as bits")
        XCTAssertLessThan(sparse.received, maskBytes * 55 / 100, "90% masks range coded: \(sparse.received) bytes for \(maskBytes)")
    }

    /// Also with every stored result verified off the coordinator's loop (as a large one is).
    func testResultNamingAStoredPayloadThatIsNotThereFailsTheAttempt() throws {
        for (name, environment) in [("liar", [String: String]()), ("liar-off-loop", ["PRUNE_TEST_OFF_LOOP_BYTES": "1"])] {
            try storedPayloadLie(name, environment: environment)
        }
    }

    private func storedPayloadLie(_ name: String, environment: [String: String]) throws {
        let (coord, endpoint) = try coordinator(name, options: ["--insecure", "--max-attempts", "5"], environment: environment)
        let liar = try protocolPeer(endpoint, name: "liar")
        // Answer the first Assign with a Result whose mask is "stored" under a digest that
        // names no artifact.
        var answered = false
        while !answered, let frames = try liar.receiveMultipart() {
            guard let m = try? WireMessage.decode(frames.map(\.bytes)), case .assign(let a) = m.envelope.body else { continue }
            var r = Prune_V1_Result()
            r.taskID = a.taskID
            r.attempt = a.attempt
            let bogus = String(repeating: "ab", count: 32)
            try liar.send(try WireMessage.frames(.with(.result(r)), stored: [("mask", bogus, 64)]))
            answered = true
        }
        XCTAssertTrue(answered, "the liar got a task")
        XCTAssertTrue(Background.waitUntil(seconds: 10) { coord.stderr.contains("is missing or corrupt in the artifact directory") }, coord.stderr)
        liar.close()
        let worker = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure"])
        XCTAssertEqual(coord.wait(seconds: 60), 0, coord.stderr)
        XCTAssertEqual(worker.wait(seconds: 10), 0)
        XCTAssertEqual(try Subprocess.prune(["check", "model", name], cwd: dir.path).status, 0)
    }

    /// A stand-in coordinator (a raw ROUTER) drives a real worker process: Cancel stops the
    /// running attempt at once, nothing is sent for it, and the worker takes the next task.
    func testCancelStopsTheRunningAttemptAndFreesTheWorker() throws {
        let endpoint = "ipc://\(dir.file("cancel.sock"))"
        let context = try ZMQContext()
        let router = try ZMQSocket(context, .router)
        try router.setLinger(ms: 0)
        try router.setReceiveTimeout(ms: 100)
        try router.bind(endpoint)
        let worker = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--name", "cancelled"])
        defer { worker.kill() }
        var peer: [UInt8] = []
        var results: [String] = []
        var heartbeats: [[String]] = []
        func send(_ e: Prune_V1_Envelope) throws { _ = try router.send([peer] + (try WireMessage.frames(e))) }
        /// Receives for up to `seconds`, answering heartbeats, until `done` holds.
        func pump(seconds: Double, until done: () -> Bool) throws -> Bool {
            let end = Date().addingTimeInterval(seconds)
            while Date() < end {
                if done() { return true }
                guard let frames = try router.receiveMultipart(), frames.count >= 2 else { continue }
                peer = frames[0].bytes
                guard let m = try? WireMessage.decode(frames.dropFirst().map(\.bytes)) else { continue }
                switch m.envelope.body {
                case .hello: try send(.with(.welcome(Prune_V1_Welcome())))
                case .heartbeat(let h): heartbeats.append(h.taskIds); try send(.with(.heartbeat(Prune_V1_Heartbeat())))
                case .result(let r): results.append("\(r.taskID)#\(r.attempt)")
                default: break
                }
            }
            return done()
        }
        func assign(_ task: String, sleepMs: UInt32) throws {
            var a = Prune_V1_Assign()
            a.taskID = task
            a.attempt = 1
            var noop = Prune_V1_NoopTask()
            noop.sleepMs = sleepMs
            a.work = .noop(noop)
            try send(.with(.assign(a)))
        }
        XCTAssertTrue(try pump(seconds: 20) { !peer.isEmpty }, "the worker said Hello")
        try assign("slow", sleepMs: 120_000)
        XCTAssertTrue(try pump(seconds: 10) { heartbeats.last == ["slow"] }, "a heartbeat names the running task: \(heartbeats)")
        var cancel = Prune_V1_Cancel()
        cancel.taskID = "slow"
        cancel.attempt = 1
        try send(.with(.cancel(cancel)))
        try assign("quick", sleepMs: 0)
        // Without the Cancel, "quick" would wait two minutes behind "slow".
        XCTAssertTrue(try pump(seconds: 10) { results.contains("quick#1") }, "results: \(results)\n\(worker.stderr)")
        heartbeats.removeAll()
        XCTAssertTrue(try pump(seconds: 5) { !heartbeats.isEmpty })
        XCTAssertEqual(heartbeats.last, [], "the cancelled task is no longer named")
        XCTAssertEqual(results, ["quick#1"], "nothing is sent for the cancelled attempt")
        try send(.with(.shutdown(Prune_V1_Shutdown())))
        XCTAssertEqual(worker.wait(seconds: 10), 0, worker.stderr)
        XCTAssertTrue(worker.stderr.contains("task slow attempt 1: cancelled by the coordinator"), worker.stderr)
        router.close()
    }

    func testSigtermedWorkerTellsTheCoordinatorAndStopsCleanly() throws {
        let (coord, endpoint) = try coordinator("sigterm", extra: ["--insecure"])
        let first = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--name", "first"],
                                   environment: ["PRUNE_TEST_TASK_DELAY_MS": "400"])
        XCTAssertTrue(Background.waitUntil(seconds: 20) { self.doneTasks("sigterm") >= 2 })
        first.kill(SIGTERM)
        XCTAssertEqual(first.wait(seconds: 5), 0, first.stderr)
        XCTAssertTrue(first.stderr.contains("stopping on signal; told the coordinator"), first.stderr)
        XCTAssertTrue(Background.waitUntil(seconds: 5) { coord.stderr.contains("worker first lost (left: SIGTERM)") }, coord.stderr)
        let second = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--name", "second"])
        XCTAssertEqual(coord.wait(seconds: 60), 0, coord.stderr)
        XCTAssertEqual(second.wait(seconds: 10), 0)
    }

    func testWorkersReconnectToAResumedCoordinator() throws {
        let expected = try reference()
        let port = Background.freePort()
        let endpoint = "tcp://127.0.0.1:\(port)"
        let job = try writeSpec("reconnect")
        let first = try Background(Subprocess.pruneBinary, ["coordinator", "--job", job, "--bind", endpoint, "--insecure"] + taskWeights, cwd: dir.path)
        let worker = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--name", "steady"],
                                    environment: ["PRUNE_TEST_TASK_DELAY_MS": "50"])
        XCTAssertTrue(Background.waitUntil(seconds: 30) { self.doneTasks("reconnect") >= 5 })
        first.kill(SIGKILL)
        XCTAssertNotNil(first.wait(seconds: 10))
        // The same worker process, still running, finds the resumed coordinator by itself.
        let second = try Background(Subprocess.pruneBinary, ["resume", "reconnect", "--bind", endpoint, "--insecure"] + taskWeights, cwd: dir.path)
        XCTAssertEqual(second.wait(seconds: 90), 0, second.stderr)
        XCTAssertEqual(worker.wait(seconds: 10), 0, worker.stderr)
        XCTAssertTrue(worker.stderr.contains("reconnecting"), worker.stderr)
        XCTAssertEqual(outputs("reconnect"), expected)
    }

    func testPlaintextTcpIsRefusedUnlessInsecureOnLoopback() throws {
        XCTAssertThrowsError(try EndpointPolicy.check("tcp://10.0.0.5:5555", curve: false, insecure: false))
        XCTAssertThrowsError(try EndpointPolicy.check("tcp://10.0.0.5:5555", curve: false, insecure: true))
        XCTAssertNoThrow(try EndpointPolicy.check("tcp://127.0.0.1:5555", curve: false, insecure: true))
        XCTAssertNoThrow(try EndpointPolicy.check("tcp://10.0.0.5:5555", curve: true, insecure: false))
        let r = try Subprocess.prune(["worker", "--connect", "tcp://192.168.1.9:5555"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("plaintext tcp:// is refused"), r.stderr)
    }
}
