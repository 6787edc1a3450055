import Foundation
import Engine
import Tensors
import TestSupport
import XCTest
@testable import Cluster

/// Gradient-based importance (`method: taylor`, `method: fisher`) on real worker
/// processes: gradient tasks per calibration shard, score tasks per tensor summing the
/// shards in order; the same bytes for any worker count, `prune check` passing.
final class GradientClusterTests: XCTestCase {
    private var dir: TempDir!

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("build the prune binary first (swift build)")
        }
        dir = TempDir("prune-gradient-cluster")
        // A BF16 Llama in two shards (3 blocks, GQA, untied head) and token ids [20, 16].
        try JobProcessTestCase.writeCalibratedLlama(in: dir, seed: 11)
    }

    override func tearDown() { dir?.cleanup() }

    private func spec(_ name: String, method: String, pattern: String, extra: String = "") throws -> String {
        let yaml = """
        model: model
        output: \(name)
        method: \(method)
        sparsity: 0.5
        pattern: '\(pattern)'
        \(method == "magnitude" ? "" : "calibration: {data: ids.npy, samples: 10, tokens: 16, samples_per_task: 4}")
        \(extra)
        """
        try yaml.write(toFile: dir.file("\(name).yaml"), atomically: false, encoding: .utf8)
        return "\(name).yaml"
    }

    private func outputs(_ job: String) -> [String: Data] {
        jobOutputs(dir.file(job))
    }

    private func run(_ name: String, method: String, pattern: String, extra: String = "", workers: Int) throws -> [String: Data] {
        let r = try Subprocess.prune(["run", "-q", "--workers", "\(workers)", try spec(name, method: method, pattern: pattern, extra: extra)], cwd: dir.path)
        XCTAssertEqual(r.status, 0, "\(name): \(r.stderr)")
        return outputs(name)
    }

    /// Taylor and Fisher, unstructured and 2:4: 0 and 2 workers give the same bytes; three
    /// gradient tasks (10 windows, 4 a task) and one score task per target; the masks pass
    /// `prune check`, differ from magnitude's and from each other's.
    func testGradientScoresGiveTheSameBytesForAnyWorkerCount() throws {
        var masks: [String: [String: Data]] = [:]
        for (method, pattern) in [("taylor", "unstructured"), ("fisher", "unstructured"), ("taylor", "2:4"), ("magnitude", "unstructured")] {
            let tag = "\(method)-\(pattern == "2:4" ? "24" : "u")"
            let expected = try run("\(tag)-w0", method: method, pattern: pattern, workers: 0)
            XCTAssertGreaterThan(expected.count, 2, tag)
            masks[tag] = expected
            guard method != "magnitude" else { continue }
            XCTAssertEqual(try run("\(tag)-w2", method: method, pattern: pattern, workers: 2), expected, tag)
            let check = try Subprocess.prune(["check", "model", "\(tag)-w2"], cwd: dir.path)
            XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
            let tasks = try Ledger(path: dir.file("\(tag)-w2/ledger.sqlite"), create: false, readOnly: true).tasks()
            XCTAssertEqual(tasks.filter { $0.id.hasPrefix("gradient:grad:") }.count, 3, tag)
            XCTAssertEqual(tasks.filter { $0.phase == "gradient-score" }.count, 3 * 7, tag)
            XCTAssertFalse(tasks.contains { $0.phase == "calibrate" }, tag)
            let manifest = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: dir.file("\(tag)-w2/out/manifest.json"))))
            XCTAssertEqual(manifest.method, method)
            for (name, t) in manifest.tensors where t.pruned {
                XCTAssertEqual(Double(t.masked) / Double(t.elements), 0.5, accuracy: 0.01, "\(tag) \(name)")
            }
        }
        XCTAssertNotEqual(masks["taylor-u"], masks["magnitude-u"])
        XCTAssertNotEqual(masks["taylor-u"], masks["fisher-u"])
    }

    /// `allocation: global` on Fisher saliencies: one threshold over the model from the
    /// gradient shards' histograms; the layers get different levels whose weighted mean is
    /// the target, the same bytes for 0 and 2 workers.
    func testFisherWithAGlobalThreshold() throws {
        let expected = try run("global-w0", method: "fisher", pattern: "unstructured", extra: "allocation: global", workers: 0)
        XCTAssertEqual(try run("global-w2", method: "fisher", pattern: "unstructured", extra: "allocation: global", workers: 2), expected)
        let manifest = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: dir.file("global-w2/out/manifest.json"))))
        let pruned = manifest.tensors.values.filter(\.pruned)
        let levels = Set(pruned.compactMap(\.targetSparsity))
        XCTAssertGreaterThan(levels.count, 3, "\(levels)")
        let masked = pruned.reduce(0) { $0 + $1.masked }, elements = pruned.reduce(0) { $0 + $1.elements }
        XCTAssertEqual(Double(masked) / Double(elements), 0.5, accuracy: 0.005)
        let check = try Subprocess.prune(["check", "model", "global-w2"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
    }

    /// Gradient methods refuse what they cannot serve: no calibration, an allocation.
    func testBadGradientSpecsAreRefused() throws {
        for (name, yaml, expect) in [
            ("nocal", "model: model\noutput: nocal\nmethod: taylor\nsparsity: 0.5\n", "needs a 'calibration' section"),
            ("owl", "model: model\noutput: owl\nmethod: fisher\nsparsity: 0.5\nallocation: owl\ncalibration: {data: ids.npy, samples: 10, tokens: 16}\n",
             "not built for method fisher"),
        ] {
            try yaml.write(toFile: dir.file("\(name).yaml"), atomically: false, encoding: .utf8)
            let r = try Subprocess.prune(["run", "-q", "--workers", "0", "\(name).yaml"], cwd: dir.path)
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("prune: error:") && r.stderr.contains(expect), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file(name)))
        }
    }
}
