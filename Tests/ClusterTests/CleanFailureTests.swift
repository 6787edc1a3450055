import Foundation
import Tensors
import TestSupport
import XCTest
@testable import Cluster
@testable import Engine

/// A crash leaves nothing that blocks a retry, and a run that fails fails before it
/// writes anything, with one line: real `prune` processes.
final class CleanFailureTests: JobProcessTestCase {
    override func setUpWithError() throws {
        try super.setUpWithError()
        try JobProcessTestCase.llamaConfig.write(toFile: dir.file("model/config.json"), atomically: false, encoding: .utf8)
    }

    /// A process id that is not running (a child that has exited).
    private func deadPID() throws -> Int32 {
        let p = try Background("/bin/true", [])
        XCTAssertEqual(p.wait(seconds: 10), 0)
        return p.pid
    }

    private func assertOneLineError(_ r: Subprocess.Result, contains text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 2, r.stderr, file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("prune: error: ") && r.stderr.contains(text), "'\(r.stderr)' should contain '\(text)'", file: file, line: line)
    }

    func testResumeAndRunRemoveWhatDeadProcessesLeftAndSpareTheLiving() throws {
        let job = try writeSpec("leftovers")
        // A job killed before it ends, then the debris of a coordinator killed in assembly
        // and of a worker killed while writing an artifact.
        let run = try Background(Subprocess.pruneBinary, ["run", "-q", "--workers", "1"] + taskWeights + [job], cwd: dir.path,
                                 environment: ["PRUNE_TEST_TASK_DELAY_MS": "100"])
        XCTAssertTrue(Background.waitUntil(seconds: 30) {
            ((try? Ledger(path: self.dir.file("leftovers/ledger.sqlite"), create: false, readOnly: true).tasks()) ?? []).contains { $0.state == "done" }
        })
        run.kill(SIGKILL)
        _ = run.wait(seconds: 10)
        let dead = try deadPID()
        let fm = FileManager.default
        let staging = dir.file("leftovers/.staging-\(dead)-77")
        try fm.createDirectory(atPath: staging + "/dense", withIntermediateDirectories: true)
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: staging + "/dense/model.safetensors"))
        let aside = dir.file("leftovers/.old-out-\(dead)-5")
        try fm.createDirectory(atPath: aside, withIntermediateDirectories: true)
        let live = dir.file("leftovers/.staging-\(getpid())-78")
        try fm.createDirectory(atPath: live, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: dir.file("leftovers/artifacts/ab"), withIntermediateDirectories: true)
        let oldTemp = dir.file("leftovers/artifacts/ab/.abcd.tmp-\(dead)-9")
        let freshTemp = dir.file("leftovers/artifacts/ab/.abce.tmp-\(dead)-10")
        for t in [oldTemp, freshTemp] { try Data([1, 2, 3]).write(to: URL(fileURLWithPath: t)) }
        try fm.setAttributes([.modificationDate: Date().addingTimeInterval(-600)], ofItemAtPath: oldTemp)

        let resume = try Subprocess.prune(["resume", "-q", "leftovers"] + taskWeights, cwd: dir.path)
        XCTAssertEqual(resume.status, 0, resume.stderr)
        XCTAssertFalse(fm.fileExists(atPath: staging), "a dead coordinator's staging is removed")
        XCTAssertFalse(fm.fileExists(atPath: aside))
        XCTAssertFalse(fm.fileExists(atPath: oldTemp), "a dead writer's old temporary is removed")
        XCTAssertTrue(fm.fileExists(atPath: freshTemp), "a recent temporary may be a writer on another host")
        XCTAssertTrue(fm.fileExists(atPath: live), "a live process's staging is left alone")
        XCTAssertEqual(try Subprocess.prune(["check", "model", "leftovers"], cwd: dir.path).status, 0)
        // `run` of the same spec cleans up as well.
        let again = dir.file("leftovers/.staging-\(dead)-79")
        try fm.createDirectory(atPath: again, withIntermediateDirectories: true)
        XCTAssertEqual(try Subprocess.prune(["run", "-q", "--workers", "1"] + taskWeights + [job], cwd: dir.path).status, 0)
        XCTAssertFalse(fm.fileExists(atPath: again))
    }

    /// On a disk with no room to spare, a staging directory a killed assembly left would
    /// make every resume fail with "No space left on device"; and an assembly that fails
    /// for lack of room leaves status saying so. Needs root to mount a small tmpfs.
    func testATightDiskNeitherBlocksAResumeNorHidesAFailedAssembly() throws {
        let mountPoint = dir.file("tight")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mount = try Subprocess.run("/bin/mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", mountPoint])
        guard mount.status == 0 else { throw XCTSkip("cannot mount a tmpfs here (\(mount.stderr.trimmingCharacters(in: .whitespacesAndNewlines)))") }
        defer { _ = try? Subprocess.run("/bin/umount", ["-l", mountPoint]) }
        let job = try writeSpec("tight-job", output: "tight/job")
        XCTAssertEqual(try Subprocess.prune(["run", "-q", "--workers", "1"] + taskWeights + [job], cwd: dir.path).status, 0)
        // Every task done, out/ gone: the next resume only assembles. Take all the room
        // but 64 KB, less than out/ needs.
        try FileManager.default.removeItem(atPath: mountPoint + "/job/out")
        func fill(_ path: String) throws {
            let free = try XCTUnwrap(try FileManager.default.attributesOfFileSystem(forPath: mountPoint)[.systemFreeSize] as? Int)
            try Data(count: free - (64 << 10)).write(to: URL(fileURLWithPath: path))
        }
        try fill(mountPoint + "/filler")
        let full = try Subprocess.prune(["resume", "-q", "tight/job"] + taskWeights, cwd: dir.path)
        assertOneLineError(full, contains: "No space left on device")
        let status = try Subprocess.prune(["status", "tight/job"], cwd: dir.path)
        XCTAssertTrue(status.stdout.contains("job: failed"), status.stdout)
        XCTAssertTrue(status.stdout.contains("error: assembly failed"), status.stdout)
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: mountPoint + "/job").contains { $0.hasPrefix(".staging-") },
                       "a failed assembly removes its own staging")
        // The same room taken by a staging directory a killed coordinator left: resume
        // removes it first, and succeeds.
        try FileManager.default.removeItem(atPath: mountPoint + "/filler")
        let staging = mountPoint + "/job/.staging-\(try deadPID())-1"
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        try fill(staging + "/model.safetensors")
        let resume = try Subprocess.prune(["resume", "-q", "tight/job"] + taskWeights, cwd: dir.path)
        XCTAssertEqual(resume.status, 0, resume.stderr)
        XCTAssertTrue(try Subprocess.prune(["status", "tight/job"], cwd: dir.path).stdout.contains("job: complete"))
        XCTAssertEqual(try Subprocess.prune(["check", "model", "tight/job"], cwd: dir.path).status, 0)
    }

    /// Config, tokenizer and calibration data are checked before the job directory is
    /// created: a refused spec leaves nothing, so the fixed spec runs in its place.
    func testARefusedClusterRunCreatesNothingAndTheFixedSpecRuns() throws {
        try "In the beginning God created the heaven and the earth.\n".write(toFile: dir.file("text.txt"), atomically: false, encoding: .utf8)
        let cases: [(extra: String, error: String)] = [
            ("calibration: {data: text.txt, samples: 2, tokens: 8}\n", "tokenizer"),                      // text, but no tokenizer.json
            ("calibration: {data: missing.npy, samples: 2, tokens: 8}\n", "cannot read"),
            ("evaluation: {data: text.txt}\n", "tokenizer"),
        ]
        for (i, c) in cases.enumerated() {
            let method = c.extra.hasPrefix("calibration") ? "method: wanda\n" : ""
            let path = dir.file("bad\(i).yaml")
            try ("model: model\nsparsity: 0.5\n" + method + c.extra + "output: refused\n").write(toFile: path, atomically: false, encoding: .utf8)
            for workers in ["0", "1"] {
                let r = try Subprocess.prune(["run", "-q", "--workers", workers, path], cwd: dir.path)
                assertOneLineError(r, contains: c.error)
                XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("refused")), "case \(i), \(workers) workers: nothing created")
            }
        }
        let fixed = try Subprocess.prune(["run", "-q", "--workers", "1", try writeSpec("fixed", output: "refused")], cwd: dir.path)
        XCTAssertEqual(fixed.status, 0, fixed.stderr)
    }

    func testEvaluationDataIsCheckedBeforeAnythingIsWritten() throws {
        try Data(Npy.int32((0..<64).map { Int32($0 * 1000) }, shape: [2, 32])).write(to: URL(fileURLWithPath: dir.file("eval.npy")))
        for workers in ["0", "2"] {
            let r = try Subprocess.prune(["run", "-q", "--workers", workers,
                                          try writeSpec("eval", extra: "evaluation: {data: eval.npy, samples: 2, tokens: 16}\n")], cwd: dir.path)
            assertOneLineError(r, contains: "outside the model's vocabulary")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("eval")), "\(workers) workers: nothing written")
        }
    }

    /// Workers that die on every task use up the restart budget: the run fails with one
    /// line instead of waiting forever, status says so, and the job resumes.
    func testWorkersThatAllDieFailTheJobWithALineAndItResumes() throws {
        let job = try writeSpec("dying")
        let r = try Subprocess.run(Subprocess.pruneBinary, ["run", "-q", "--workers", "2", "--max-restarts", "3", "--max-attempts", "1000"]
                                   + taskWeights + [job], cwd: dir.path, environment: ["PRUNE_TEST_EXIT_ON_TASK": "1"])
        assertOneLineError(r, contains: "restart budget (3) is used up")
        let status = try Subprocess.prune(["status", "dying"], cwd: dir.path)
        XCTAssertTrue(status.stdout.contains("job: failed"), status.stdout)
        XCTAssertTrue(status.stdout.contains("error: all 2 worker processes exited"), status.stdout)
        let resume = try Subprocess.prune(["resume", "-q", "dying"] + taskWeights, cwd: dir.path)
        XCTAssertEqual(resume.status, 0, resume.stderr)
        let reference = try Subprocess.prune(["run", "-q", "--workers", "0"] + taskWeights + [try writeSpec("reference")], cwd: dir.path)
        XCTAssertEqual(reference.status, 0)
        XCTAssertEqual(outputs("dying"), outputs("reference"))
    }

    /// A run of another spec that finished nothing (failed, or killed early) does not
    /// block the next run in its directory; one that finished work still does.
    func testAnAbandonedJobOfAnotherSpecIsReplacedButFinishedWorkIsNot() throws {
        let first = try writeSpec("first", output: "shared")
        let r = try Subprocess.run(Subprocess.pruneBinary, ["run", "-q", "--workers", "1", "--max-restarts", "0"] + taskWeights + [first],
                                   cwd: dir.path, environment: ["PRUNE_TEST_EXIT_ON_TASK": "1"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.file("shared/ledger.sqlite")))
        let second = dir.file("second.yaml")
        try (spec.replacingOccurrences(of: "0.5", with: "0.25") + "output: shared\n").write(toFile: second, atomically: false, encoding: .utf8)
        let run = try Subprocess.prune(["run", "-q", "--workers", "1"] + taskWeights + [second], cwd: dir.path)
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertEqual(try String(contentsOfFile: dir.file("shared/job.yaml"), encoding: .utf8),
                       try String(contentsOfFile: second, encoding: .utf8))
        // Now it holds finished work: the first spec is refused, and nothing changes.
        let refused = try Subprocess.prune(["run", "-q", "--workers", "1"] + taskWeights + [first], cwd: dir.path)
        assertOneLineError(refused, contains: "already holds a different job")
    }
}
