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
        filesUnder(dir.file("\(job)/out")).filter { !$0.key.hasSuffix("manifest.json") }
    }

    private func run(_ name: String, method: String, pattern: String, workers: Int) throws -> [String: Data] {
        let r = try Subprocess.prune(["run", "-q", "--workers", "\(workers)", try spec(name, method: method, pattern: pattern)], cwd: dir.path)
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
            XCTAssertEqual(tasks.filter { $0.id.hasPrefix("gradient:score:") }.count, 3 * 7, tag)
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
