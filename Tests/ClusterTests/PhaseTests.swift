import Engine
import Foundation
import Tensors
import TestSupport
import XCTest
@testable import Cluster

/// A phase added the way every new kind of work is added: `WeightNormPhase` (its own
/// file, one registry line, one proto message) measures ‖Ŵ‖/‖W‖ of every pruned tensor
/// after its mask tasks. Run in process, by one and by two workers, and through a
/// coordinator crash, it gives the same bytes and the same measures.
final class PhaseTests: JobProcessTestCase {
    override var spec: String { "model: model\nmethod: magnitude\npattern: per_row\nsparsity: 0.5\nweight_norms: true\n" }

    /// tensor → kept_norm_fraction from a job's manifest.
    private func measures(_ job: String) throws -> [String: Double] {
        let data = try Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/out/manifest.json")))
        let manifest = try JSONDecoder().decode(Manifest.self, from: data)
        return manifest.tensors.reduce(into: [:]) { all, entry in
            if let value = entry.value.measures?["kept_norm_fraction"] { all[entry.key] = value }
        }
    }

    func testAToyPhaseGivesTheSameBytesInProcessOnOneAndTwoWorkersAndThroughACrash() throws {
        let expected = try reference()
        let expectedMeasures = try measures("reference")
        // Every pruned tensor is measured, and the figure is the one the output implies.
        let model = try Checkpoint(path: dir.file("model"))
        let out = try Checkpoint(path: dir.file("reference/out/dense"))
        let pruned = model.tensors.filter { $0.name.hasSuffix("_proj.weight") }
        XCTAssertEqual(Set(expectedMeasures.keys), Set(pruned.map(\.name)))
        for info in pruned {
            let dense = try model.shard(of: info.name)!.floats(info)
            let kept = try out.shard(of: info.name)!.floats(out.info(info.name)!)
            let fraction = (kept.reduce(0) { $0 + Double($1) * Double($1) } / dense.reduce(0) { $0 + Double($1) * Double($1) }).squareRoot()
            XCTAssertEqual(expectedMeasures[info.name]!, fraction, accuracy: 1e-9, info.name)
            XCTAssertGreaterThan(fraction, 0.5, "per-row magnitude at 50% keeps more than half the norm (\(info.name))")
            XCTAssertLessThan(fraction, 1, info.name)
        }
        for workers in [1, 2] {
            let r = try Subprocess.prune(["run", "-q", "--workers", "\(workers)"] + taskWeights + [try writeSpec("w\(workers)")], cwd: dir.path)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(outputs("w\(workers)"), expected, "\(workers) workers")
            XCTAssertEqual(try measures("w\(workers)"), expectedMeasures, "\(workers) workers")
        }
        let tasks = try ledger("w2").tasks()
        XCTAssertEqual(tasks.filter { $0.phase == "norms" }.count, pruned.count)
        XCTAssertGreaterThan(tasks.filter { $0.phase == "mask" }.count, pruned.count, "row-block mask tasks")

        // The coordinator is killed mid-job (after some norms tasks), then resumed.
        let job = try writeSpec("crash")
        let run = try Background(Subprocess.pruneBinary, ["run", "-q", "--workers", "2"] + taskWeights + [job],
                                 cwd: dir.path, environment: ["PRUNE_TEST_TASK_DELAY_MS": "100"])
        XCTAssertTrue(Background.waitUntil(seconds: 120) {
            ((try? self.ledger("crash").tasks()) ?? []).contains { $0.phase == "norms" && $0.state == "done" }
        })
        run.kill(SIGKILL)
        XCTAssertNotNil(run.wait(seconds: 10))
        let before = try ledger("crash").tasks().filter { $0.state == "done" }
        XCTAssertLessThan(before.count, tasks.count, "the crash came before the end")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("crash/out")))
        let resume = try Subprocess.prune(["resume", "-q", "crash"], cwd: dir.path)
        XCTAssertEqual(resume.status, 0, resume.stderr)
        XCTAssertEqual(outputs("crash"), expected)
        XCTAssertEqual(try measures("crash"), expectedMeasures)
        let events = try ledger("crash").events()
        for task in before {
            XCTAssertEqual(events.filter { $0.kind == "done" && $0.task == task.id }.count, 1, "\(task.id) was not redone")
        }
    }
}
