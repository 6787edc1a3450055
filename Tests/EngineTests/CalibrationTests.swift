import Foundation
import Models
import Pruning
import Tensors
import TestSupport
import XCTest
@testable import Engine

/// Wanda and SparseGPT through the whole job: calibration windows, block-by-block
/// statistics, pruning, assembly, check, report, evaluation.
final class CalibrationTests: XCTestCase {
    private var dir: TempDir!

    override func setUpWithError() throws {
        guard Subprocess.pythonHasSafetensors else {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy and safetensors is required") }
            throw XCTSkip("python3 with numpy and safetensors not installed")
        }
        dir = TempDir("prune-calib")
        let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file("model"), "--seed", "11"]))
        XCTAssertEqual(made.status, 0, made.stderr)
        // Token ids as an int32 .npy [16, 24].
        var state: UInt64 = 7
        let ids: [Int32] = (0..<(16 * 24)).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32(state >> 33) % 64
        }
        try writeNpy(ids, rows: 16, cols: 24, to: dir.file("ids.npy"))
    }

    override func tearDown() { dir?.cleanup() }

    private func writeNpy(_ values: [Int32], rows: Int, cols: Int, to path: String) throws {
        var header = "{'descr': '<i4', 'fortran_order': False, 'shape': (\(rows), \(cols)), }"
        while (10 + header.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count & 0xFF), UInt8(header.count >> 8)] + Array(header.utf8)
        for v in values { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    private func run(_ name: String, _ body: String) throws -> LocalRunner.Summary {
        let yaml = "model: model\noutput: \(name)\n\(body)"
        try yaml.write(toFile: dir.file("\(name).yaml"), atomically: false, encoding: .utf8)
        return try LocalRunner(spec: try JobSpec.load(path: dir.file("\(name).yaml")), quiet: true).run()
    }

    /// Within a block, prune tasks go longest first: SparseGPT's down_proj (an
    /// intermediate² Hessian) before the rest, Wanda's by weight count; ties in forward order.
    func testPruneTasksOfABlockAreQueuedLongestFirst() throws {
        func order(_ method: String) throws -> [String] {
            let yaml = "model: model\noutput: order-\(method)\nmethod: \(method)\nsparsity: 0.5\ncalibration: {data: ids.npy, samples: 8, tokens: 24}\n"
            try yaml.write(toFile: dir.file("order.yaml"), atomically: false, encoding: .utf8)
            let spec = try JobSpec.load(path: dir.file("order.yaml"))
            let checkpoint = try Checkpoint(path: spec.model)
            let plan = try CalibrationPlan(spec: spec, plan: try Plan(spec: spec, checkpoint: checkpoint), modelDirectory: checkpoint.directory)
            XCTAssertEqual(plan.targets(block: 1), plan.config.linearNames(block: 1), "targets stay in forward order")
            return plan.pruneOrder[1].map { name in
                name.replacingOccurrences(of: "model.layers.1.", with: "").replacingOccurrences(of: ".weight", with: "")
            }
        }
        let config = try LlamaConfig.load(dir.file("model"))
        XCTAssertGreaterThan(config.intermediateSize, config.hiddenSize, "the test model's MLP is wider than its attention")
        XCTAssertLessThan(config.kvHeads, config.heads, "and it has GQA")
        XCTAssertEqual(try order("sparsegpt"), ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.q_proj", "self_attn.o_proj",
                                                "self_attn.k_proj", "self_attn.v_proj"])
        XCTAssertEqual(try order("wanda"), ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.q_proj", "self_attn.o_proj",
                                            "self_attn.k_proj", "self_attn.v_proj"])
    }

    func testWandaAndSparseGPTJobsCheckReportAndEvaluate() throws {
        let calibration = "calibration: {data: ids.npy, samples: 8, tokens: 24, mode: sequential}\nevaluation: {data: ids.npy, samples: 4, tokens: 24}\n"
        let wanda = try run("wanda", "method: wanda\nsparsity: 0.5\n" + calibration)
        let sgpt = try run("sgpt", "method: sparsegpt\nsparsity: 0.5\n" + calibration)
        let sgpt24 = try run("sgpt24", "method: sparsegpt\npattern: '2:4'\n" + calibration)
        for (job, summary) in [("wanda", wanda), ("sgpt", sgpt), ("sgpt24", sgpt24)] {
            let report = try Checker.check(original: dir.file("model"), output: dir.file(job))
            XCTAssertEqual(report.failures, [], job)
            XCTAssertEqual(report.prunedTensors, 14, job)
            for name in ["report.md", "report.json", "report.svg"] {
                XCTAssertTrue(FileManager.default.fileExists(atPath: dir.file("\(job)/\(name)")), "\(job)/\(name)")
            }
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/report.json")))) as! [String: Any]
            let evaluation = try XCTUnwrap(json["evaluation"] as? [String: Any], job)
            XCTAssertEqual(evaluation["metric"] as? String, "perplexity")
            let dense = try XCTUnwrap(evaluation["dense"] as? Double)
            let pruned = try XCTUnwrap(evaluation["pruned"] as? Double)
            XCTAssertGreaterThan(pruned, 1)
            XCTAssertGreaterThan(dense, 1)
            XCTAssertTrue(summary.manifest.tensors.values.filter(\.pruned).allSatisfy { abs($0.achievedSparsity - 0.5) < 0.05 }, job)
        }
        // Wanda keeps values; SparseGPT updates them and records its reconstruction error.
        XCTAssertTrue(wanda.manifest.tensors.values.allSatisfy { !$0.valuesUpdated })
        let errors = sgpt.manifest.tensors.values.filter(\.pruned).compactMap(\.reconstructionError)
        XCTAssertEqual(errors.count, 14)
        XCTAssertTrue(errors.allSatisfy { $0 >= 0 && $0.isFinite })
        XCTAssertTrue(sgpt.manifest.tensors.values.filter(\.pruned).allSatisfy(\.valuesUpdated))
        // Wanda's per-row groups: every row of a pruned tensor is exactly half zeros.
        let out = try Checkpoint(path: dir.file("wanda/out/dense"))
        let q = try XCTUnwrap(out.info("model.layers.1.self_attn.q_proj.weight"))
        let values = try out.shard(of: q.name)!.floats(q)
        for r in 0..<q.rows { XCTAssertEqual(values[(r * q.cols)..<((r + 1) * q.cols)].filter { $0 == 0 }.count, q.cols / 2) }
    }

    func testSequentialAndDenseCalibrationDiffer() throws {
        let a = try run("seq", "method: wanda\nsparsity: 0.5\ncalibration: {data: ids.npy, samples: 8, tokens: 24, mode: sequential}\n")
        let b = try run("dense", "method: wanda\nsparsity: 0.5\ncalibration: {data: ids.npy, samples: 8, tokens: 24, mode: dense}\n")
        // Block 0 sees the same (embedding) inputs either way; later blocks do not.
        let first = "model.layers.0.mlp.up_proj.weight", later = "model.layers.1.mlp.down_proj.weight"
        XCTAssertEqual(a.manifest.tensors[first]!.sha256Dense, b.manifest.tensors[first]!.sha256Dense)
        XCTAssertNotEqual(a.manifest.tensors[later]!.sha256Dense, b.manifest.tensors[later]!.sha256Dense)
    }

    func testCalibrationSpecErrors() throws {
        XCTAssertThrowsError(try run("e1", "method: wanda\nsparsity: 0.5\n")) { XCTAssertTrue("\($0)".contains("needs a 'calibration' section"), "\($0)") }
        XCTAssertThrowsError(try run("e2", "method: magnitude\nsparsity: 0.5\ncalibration: {data: ids.npy}\n")) { XCTAssertTrue("\($0)".contains("does not use calibration"), "\($0)") }
        XCTAssertThrowsError(try run("e3", "method: wanda\nsparsity: 0.5\ncalibration: {data: missing.txt}\n")) { XCTAssertTrue("\($0)".contains("cannot read"), "\($0)") }
        XCTAssertThrowsError(try run("e4", "method: wanda\nsparsity: 0.5\ncalibration: {data: ids.npy, samples: 99, tokens: 24}\n")) { XCTAssertTrue("\($0)".contains("16 rows of token ids, 99 samples asked"), "\($0)") }
        XCTAssertThrowsError(try run("e5", "method: sparsegpt\nsparsity: 0.5\ncalibration: {data: ids.npy, tokens: 24, samples: 4}\nsparsegpt: {damp: 2}\n")) { XCTAssertTrue("\($0)".contains("sparsegpt.damp"), "\($0)") }
        XCTAssertThrowsError(try run("e6", "method: wanda\nsparsity: 0.5\ncalibration: {data: ids.npy, sample: 4}\n")) { XCTAssertTrue("\($0)".contains("unknown key 'calibration.sample'"), "\($0)") }
    }
}
