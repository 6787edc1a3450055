import Foundation
import Tensors
import TestSupport
import XCTest
@testable import Cluster
import Protocol
import ZeroMQ

/// Workers that lie, with real processes and sockets: a worker sending results it was
/// never assigned, a worker pruning the wrong weights with the right counts (caught by
/// redundant runs, and by `prune check --recompute`), and the job still ending with the
/// right bytes. Also: the ipc socket of `prune run` is the user's alone.
final class TrustProcessTests: JobProcessTestCase {
    private func keys(_ names: [String]) throws {
        for name in names { XCTAssertEqual(try Subprocess.prune(["keygen", name, "--dir", dir.path]).status, 0) }
    }

    /// A peer that speaks the protocol itself: admitted, then sends Results for tasks that
    /// were never leased to it, with well-formed masks.
    func testResultsForUnassignedTasksAreRefusedAndTheSenderIsQuarantined() throws {
        let expected = try reference()
        let (coord, endpoint) = try coordinator("forged", options: taskWeights + ["--insecure", "--max-refused-results", "3"])
        let taskIDs = try ledger("forged").tasks().map(\.id)
        let forger = try protocolPeer(endpoint, name: "forger")
        // Welcome, then an Assign for the first task: the forger holds that lease only.
        var leased: (task: String, attempt: UInt32)?
        while leased == nil, let frames = try forger.receiveMultipart() {
            if case .assign(let a)? = try WireMessage.decode(frames.map(\.bytes)).envelope.body { leased = (a.taskID, a.attempt) }
        }
        let mine = try XCTUnwrap(leased)
        // Right-sized all-kept masks for three other tasks (rows of 64 or 128 columns).
        for task in taskIDs.filter({ $0 != mine.task }).prefix(3) {
            var r = Prune_V1_Result()
            r.taskID = task
            r.attempt = 1
            let cols = task.contains("down_proj") ? 128 : 64
            let rows = Int(task.split(separator: "+").last!)!
            try forger.send(try WireMessage.frames(.with(.result(r)), payloads: [("mask", [UInt8](repeating: 0xFF, count: rows * cols / 8))]))
        }
        // Turned away once quarantined.
        var rejected: String?
        while rejected == nil, let frames = try forger.receiveMultipart() {
            if case .reject(let r)? = try WireMessage.decode(frames.map(\.bytes)).envelope.body { rejected = r.reason }
        }
        XCTAssertTrue(rejected?.hasPrefix("quarantined: 3 results refused") ?? false, rejected ?? "no Reject")
        forger.close()
        // An honest worker finishes the job, the forger's lease included.
        let honest = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--name", "honest"])
        XCTAssertEqual(coord.wait(seconds: 60), 0, coord.stderr)
        XCTAssertEqual(honest.wait(seconds: 10), 0)
        XCTAssertEqual(outputs("forged"), expected)
        XCTAssertEqual(try events("forged", "refused").count, 3)
        XCTAssertTrue(coord.stderr.contains("refused the result of"), coord.stderr)
        let status = try Subprocess.prune(["status", "forged"], cwd: dir.path)
        XCTAssertTrue(status.stdout.contains("quarantined:\n  name:forger: 3 results refused"), status.stdout)
        XCTAssertTrue(status.stdout.contains("forger (") && status.stdout.contains("quarantined)"), status.stdout)
        // The ledger never recorded a result it did not lease.
        let rows = try Ledger(path: dir.file("forged/ledger.sqlite"), create: false, readOnly: true).tasks()
        let forgerIDs = Set(try Ledger(path: dir.file("forged/ledger.sqlite"), create: false, readOnly: true).workers()
            .filter { $0.name == "forger" }.map(\.id))
        XCTAssertFalse(rows.contains { forgerIDs.contains($0.worker ?? "") }, "no task done by the forger")
    }

    /// A worker that prunes the wrong weights with the right counts, beside an honest one,
    /// every task run twice: the liar is caught and quarantined by its CURVE key, its
    /// results are redone, and the output is the right bytes.
    func testALyingWorkerBesideAnHonestOneIsCaughtAndTheOutputIsRight() throws {
        let expected = try reference()
        try keys(["coordinator", "liar", "honest"])
        let allow = try String(contentsOfFile: dir.file("liar.pub"), encoding: .utf8) + String(contentsOfFile: dir.file("honest.pub"), encoding: .utf8)
        try allow.write(toFile: dir.file("allow.txt"), atomically: false, encoding: .utf8)
        let (coord, endpoint) = try coordinator("lies", specExtra: "verify: 1\n",
                                                options: taskWeights + ["--curve-secret", dir.file("coordinator.key"), "--allow", dir.file("allow.txt")])
        func worker(_ name: String, lie: Bool) throws -> Background {
            try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--name", name, "--curve-secret", dir.file("\(name).key"),
                                                    "--server-key", dir.file("coordinator.pub")],
                           environment: lie ? ["PRUNE_TEST_LIE": "swap-mask-bits"] : [:])
        }
        let liar = try worker("liar", lie: true)
        let honest = try worker("honest", lie: false)
        XCTAssertEqual(coord.wait(seconds: 120), 0, coord.stderr)
        XCTAssertEqual(outputs("lies"), expected, "the liar's masks never reach the output")
        XCTAssertEqual(liar.wait(seconds: 10), 2, "rejected as quarantined: \(liar.stderr)")
        XCTAssertTrue(liar.stderr.contains("quarantined"), liar.stderr)
        XCTAssertEqual(honest.wait(seconds: 10), 0)
        let liarKey = try KeyFiles.readKey(dir.file("liar.pub"))
        let quarantined = try Ledger(path: dir.file("lies/ledger.sqlite"), create: false, readOnly: true).quarantined()
        XCTAssertEqual(quarantined.map(\.principal), [liarKey], "by its key, not its name")
        XCTAssertFalse(try events("lies", "verify").isEmpty)
        XCTAssertEqual(try Subprocess.prune(["check", "model", "lies"], cwd: dir.path).status, 0)
    }

    /// With a sampled fraction verified, a liar's unverified results are accepted at
    /// first; once a verified task catches it, every result it produced is redone. The
    /// liar runs alone first, so the coordinator itself checks its first verified task.
    func testWrongMasksUnderSampledRedundancyAreRedoneOnceTheLiarIsCaught() throws {
        let expected = try reference()
        let (coord, endpoint) = try coordinator("sampled", specExtra: "verify: 0.3\n", options: taskWeights + ["--insecure"])
        let liar = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--name", "liar"],
                                  environment: ["PRUNE_TEST_LIE": "swap-mask-bits"])
        XCTAssertEqual(liar.wait(seconds: 60), 2, "quarantined: \(liar.stderr)")
        let honest = try Background(Subprocess.pruneBinary, ["worker", "--connect", endpoint, "--insecure", "--name", "honest"])
        XCTAssertEqual(coord.wait(seconds: 120), 0, coord.stderr)
        XCTAssertEqual(honest.wait(seconds: 10), 0)
        XCTAssertEqual(outputs("sampled"), expected)
        XCTAssertFalse(try events("sampled", "recompute").isEmpty, "the coordinator settled it: \(coord.stderr)")
        XCTAssertTrue(coord.stderr.contains("differs from the coordinator's own computation"), coord.stderr)
        let reopened = try events("sampled", "reopen")
        XCTAssertFalse(reopened.isEmpty, "the liar's accepted results were redone: \(coord.stderr)")
        XCTAssertTrue(reopened.allSatisfy { $0.detail.contains("name:liar") }, "\(reopened)")
    }

    /// `prune check` verifies counts, patterns and digests, which a liar with the right
    /// counts passes; `--recompute` recomputes masks and catches it.
    func testCheckRecomputeCatchesWrongWeightsThatCheckCannot() throws {
        let run = try Subprocess.run(Subprocess.pruneBinary, ["run", "-q", "--workers", "1"] + taskWeights + [try writeSpec("fooled")],
                                     cwd: dir.path, environment: ["PRUNE_TEST_LIE": "swap-mask-bits"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let plain = try Subprocess.prune(["check", "model", "fooled"], cwd: dir.path)
        XCTAssertEqual(plain.status, 0, "counts and patterns are right: \(plain.stdout)")
        let recompute = try Subprocess.prune(["check", "model", "fooled", "--recompute", "4"], cwd: dir.path)
        XCTAssertEqual(recompute.status, 1, recompute.stdout)
        XCTAssertTrue(recompute.stdout.contains("recomputed 4 tensor mask(s)"), recompute.stdout)
        XCTAssertTrue(recompute.stdout.contains("weights differ from a magnitude per_row mask recomputed here"), recompute.stdout)
        // An honest output passes the same check.
        _ = try reference()
        let honest = try Subprocess.prune(["check", "model", "reference", "--recompute", "100"], cwd: dir.path)
        XCTAssertEqual(honest.status, 0, honest.stdout)
        XCTAssertTrue(honest.stdout.contains("recomputed 21 tensor mask(s)"), honest.stdout)
    }

    /// The socket `prune run` listens on lives in a directory only this user may enter,
    /// and is itself owner-only, even under umask 000.
    func testTheRunSocketIsOwnerOnlyWhateverTheUmask() throws {
        let job = try writeSpec("umask")
        let run = try Background("/bin/sh", ["-c", "umask 000; exec \"$0\" run -q --workers 1 \"$1\"", Subprocess.pruneBinary, job],
                                 cwd: dir.path, environment: ["PRUNE_TEST_TASK_DELAY_MS": "200"])
        let endpoint = try EmbeddedCluster.endpoint(for: dir.file("umask"))
        let socket = String(endpoint.dropFirst("ipc://".count))
        XCTAssertTrue(Background.waitUntil(seconds: 30) { FileManager.default.fileExists(atPath: socket) }, "socket \(socket)")
        var st = stat()
        XCTAssertEqual(stat(socket, &st), 0)
        XCTAssertEqual(st.st_mode & 0o077, 0, String(st.st_mode, radix: 8))
        XCTAssertEqual(stat((socket as NSString).deletingLastPathComponent, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700, String(st.st_mode, radix: 8))
        XCTAssertEqual(st.st_uid, getuid())
        XCTAssertEqual(run.wait(seconds: 60), 0, run.stderr)
    }
}
