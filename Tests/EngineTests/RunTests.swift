import Foundation
import Pruning
import Tensors
import TestSupport
import XCTest
@testable import Engine

final class RunTests: XCTestCase {
    private func spec(_ dir: TempDir, model: String, _ body: String) throws -> JobSpec {
        let path = dir.file("job-\(UInt32.random(in: 0...UInt32.max)).yaml")
        try "model: \(model)\n\(body)".write(toFile: path, atomically: false, encoding: .utf8)
        return try JobSpec.load(path: path)
    }

    private func files(_ dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: dir)!
        while let f = e.nextObject() as? String {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: dir + "/" + f, isDirectory: &isDir), !isDir.boolValue {
                out[f] = FileManager.default.contents(atPath: dir + "/" + f)
            }
        }
        return out
    }

    func testPlanIgnoresEmbeddingsNormsAndHeadByDefault() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("m"), layers: 1)
        let s = try spec(dir, model: "m", "output: job\nsparsity: 0.5\n")
        let plan = try Plan(spec: s, checkpoint: try Checkpoint(path: s.model))
        XCTAssertEqual(plan.targets.map(\.name), ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                                                  "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                                                  "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                                                  "model.layers.0.mlp.down_proj.weight"])
        let none = try spec(dir, model: "m", "output: job\nsparsity: 0.5\ntargets: ['re:.*bias']\n")
        XCTAssertThrowsError(try Plan(spec: none, checkpoint: try Checkpoint(path: none.model))) { XCTAssertTrue("\($0)".contains("no prunable tensor matched")) }
        let missing = try spec(dir, model: "m", "output: job\nsparsity: 0.5\ntargets: [model.layers.9.mlp.up_proj.weight]\n")
        XCTAssertThrowsError(try Plan(spec: missing, checkpoint: try Checkpoint(path: missing.model))) { XCTAssertTrue("\($0)".contains("no tensor named 'model.layers.9.mlp.up_proj.weight'")) }
        let oneD = try spec(dir, model: "m", "output: job\nsparsity: 0.5\ntargets: [model.norm.weight]\nignore: []\n")
        XCTAssertThrowsError(try Plan(spec: oneD, checkpoint: try Checkpoint(path: oneD.model))) { XCTAssertTrue("\($0)".contains("only floating tensors of 2 or more")) }
        let nm = try spec(dir, model: "m", "output: job\npattern: '2:3'\n")
        XCTAssertThrowsError(try Plan(spec: nm, checkpoint: try Checkpoint(path: nm.model))) { XCTAssertTrue("\($0)".contains("divisible by 3")) }
    }

    func testShardedHalfPrecisionJobChecksDensifiesAndShrinks() throws {
        for (dtype, pattern) in [(DType.f16, "pattern: unstructured\nsparsity: 0.5"), (.bf16, "pattern: '2:4'"), (.f32, "pattern: per_row\nsparsity: 0.5"),
                                 (.bf16, "pattern: rows_l2\nsparsity: 0.25\nmethod: random\nseed: 7")] {
            let dir = TempDir(); defer { dir.cleanup() }
            try SyntheticModel.write(to: dir.file("m"), dtype: dtype, shards: 2)
            let s = try spec(dir, model: "m", "output: job\n\(pattern)\n")
            let summary = try LocalRunner(spec: s, quiet: true).run()
            let report = try Checker.check(original: dir.file("m"), output: dir.file("job"))
            XCTAssertEqual(report.failures, [], "\(dtype) \(pattern)")
            XCTAssertEqual(report.prunedTensors, 14)
            let t = summary.manifest.totals
            // The sparse size is exactly: kept values + 1 bit per weight (rows padded to bytes)
            // + one int64 offset per row + the int64 shape.
            var expected = 0
            for m in summary.manifest.tensors.values where m.pruned {
                let rows = m.shape[0], cols = m.shape[1]
                expected += (m.elements - m.zeros) * dtype.size + rows * ((cols + 7) / 8) + rows * 8 + 2 * 8
            }
            XCTAssertEqual(t.prunedSparseBytes, expected, "\(dtype) \(pattern)")
            if s.sparsity >= 0.5 { XCTAssertLessThan(t.sparseBytes, t.denseBytes) }
            for (name, m) in summary.manifest.tensors where m.pruned {
                XCTAssertGreaterThanOrEqual(m.zeros, s.pattern.plannedPruned(rows: m.shape[0], cols: m.shape[1], sparsity: s.sparsity), name)
            }
            try Densifier.densify(sparseDirectory: dir.file("job/out/sparse"), to: dir.file("dense2"))
            XCTAssertEqual(try files(dir.file("dense2")), try files(dir.file("job/out/dense")), "densify is bit-exact")
        }
    }

    func testOutputBytesAreDeterministicAndRerunIsIdempotent() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("m"), dtype: .bf16)
        try "model: m\noutput: a\nsparsity: 0.5\nmethod: random\nseed: 3\n".write(toFile: dir.file("a.yaml"), atomically: false, encoding: .utf8)
        try "model: m\noutput: b\nsparsity: 0.5\nmethod: random\nseed: 3\n".write(toFile: dir.file("b.yaml"), atomically: false, encoding: .utf8)
        _ = try LocalRunner(spec: try JobSpec.load(path: dir.file("a.yaml")), quiet: true).run()
        let first = try files(dir.file("a/out"))
        _ = try LocalRunner(spec: try JobSpec.load(path: dir.file("a.yaml")), quiet: true).run()
        XCTAssertEqual(try files(dir.file("a/out")), first, "re-running the same job gives the same bytes")
        _ = try LocalRunner(spec: try JobSpec.load(path: dir.file("b.yaml")), quiet: true).run()
        var second = try files(dir.file("b/out"))
        var firstNoManifest = first
        // The manifests differ only by the spec digest (the output path is in the spec).
        firstNoManifest["manifest.json"] = nil
        second["manifest.json"] = nil
        XCTAssertEqual(second, firstNoManifest)
    }

    func testTaskSplitAndAssemblyBlocksDoNotChangeTheBytes() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("m"), dtype: .f16, layers: 1)
        var outputs: [[String: Data]] = []
        for (i, (weights, block)) in [(16 << 20, 32 << 20), (96, 100), (1000, 7)].enumerated() {
            try "model: m\noutput: j\(i)\npattern: per_row\nsparsity: 0.6\nmethod: random\nseed: 9\n".write(toFile: dir.file("j\(i).yaml"), atomically: false, encoding: .utf8)
            let spec = try JobSpec.load(path: dir.file("j\(i).yaml"))
            var runner = LocalRunner(spec: spec, quiet: true)
            runner.maxWeightsPerTask = weights
            runner.assemblyBlockBytes = block
            let summary = try runner.run()
            // The job really was cut as asked: one task per tensor, or blocks of rows no
            // larger than the budget (at least one row).
            let plan = try Plan(spec: spec, checkpoint: try Checkpoint(path: spec.model))
            XCTAssertEqual(summary.tasks, MaskTaskPlan.tasks(for: plan, maxWeightsPerTask: weights).count)
            if weights >= 16 << 20 {
                XCTAssertEqual(summary.tasks, plan.targets.count)
            } else {
                XCTAssertGreaterThan(summary.tasks, plan.targets.count, "\(weights) weights per task: tensors cut into row blocks")
                XCTAssertTrue(MaskTaskPlan.tasks(for: plan, maxWeightsPerTask: weights).allSatisfy { $0.rowCount == 1 || $0.rowCount * $0.tensor.cols <= weights })
            }
            var files = try self.files(dir.file("j\(i)/out"))
            files["manifest.json"] = nil
            outputs.append(files)
        }
        XCTAssertEqual(outputs[1], outputs[0])
        XCTAssertEqual(outputs[2], outputs[0])
    }

    func testAnotherJobsDirectoryIsRefusedAndLeftAlone() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("m"))
        _ = try LocalRunner(spec: try spec(dir, model: "m", "output: job\nsparsity: 0.5\n"), quiet: true).run()
        let before = try files(dir.file("job"))
        let other = try spec(dir, model: "m", "output: job\nsparsity: 0.7\n")
        XCTAssertThrowsError(try LocalRunner(spec: other, quiet: true).run()) { XCTAssertTrue("\($0)".contains("already holds a different job")) }
        XCTAssertEqual(try files(dir.file("job")), before)
        try FileManager.default.createDirectory(atPath: dir.file("full"), withIntermediateDirectories: true)
        try "x".write(toFile: dir.file("full/notes.txt"), atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try LocalRunner(spec: try spec(dir, model: "m", "output: full\nsparsity: 0.5\n"), quiet: true).run()) {
            XCTAssertTrue("\($0)".contains("holds no job"))
        }
        try "x".write(toFile: dir.file("afile"), atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try LocalRunner(spec: try spec(dir, model: "m", "output: afile/job\nsparsity: 0.5\n"), quiet: true).run()) {
            XCTAssertTrue("\($0)".contains("is not a directory"), "\($0)")
        }
    }

    func testNonFiniteWeightsAreRefusedUnlessAllowed() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        var bad = [Float](repeating: 0.5, count: 64)
        bad[3] = .nan
        bad[9] = -.infinity
        try SyntheticModel.write(to: dir.file("m"), extra: [("extra.weight", .f32, [8, 8], bad.withUnsafeBytes { Array($0) })])
        XCTAssertThrowsError(try LocalRunner(spec: try spec(dir, model: "m", "output: job\nsparsity: 0.5\n"), quiet: true).run()) {
            XCTAssertTrue("\($0)".contains("tensor 'extra.weight' has 1 NaN and 1 Inf values"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("job")), "nothing written")
        let s = try spec(dir, model: "m", "output: job\nsparsity: 0.5\nallow_nonfinite: true\n")
        let summary = try LocalRunner(spec: s, quiet: true).run()
        let extra = try XCTUnwrap(summary.manifest.tensors["extra.weight"])
        XCTAssertTrue(extra.pruned)
        let out = try Checkpoint(path: dir.file("job/out/dense"))
        let values = try out.shard(of: "extra.weight")!.floats(out.info("extra.weight")!)
        XCTAssertTrue(values[3].isNaN, "NaN ranks as most important and is kept")
    }

    func testCheckCatchesTampering() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("m"))
        let summary = try LocalRunner(spec: try spec(dir, model: "m", "output: job\npattern: '2:4'\n"), quiet: true).run()
        XCTAssertTrue(try Checker.check(original: dir.file("m"), output: dir.file("job")).passed)
        // Put a nonzero value where the mask pruned: N:M group broken, zeros and digest off.
        let path = dir.file("job/out/dense/model.safetensors")
        let file = try SafeTensorsFile(path: path)
        let info = try XCTUnwrap(file.info("model.layers.0.mlp.up_proj.weight"))
        let values = try file.floats(info)
        let zeroIndex = try XCTUnwrap(values.firstIndex(of: 0))
        let offset = file.header.dataStart + info.dataOffsets.lowerBound + zeroIndex * 4
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        withUnsafeBytes(of: Float(0.25).bitPattern.littleEndian) { for i in 0..<4 { data[offset + i] = $0[i] } }
        try data.write(to: URL(fileURLWithPath: path))
        let report = try Checker.check(original: dir.file("m"), output: dir.file("job"))
        XCTAssertFalse(report.passed)
        let all = report.failures.joined(separator: "\n")
        XCTAssertTrue(all.contains("sha256"), all)
        XCTAssertTrue(all.contains("more than 2 nonzero"), all)
        XCTAssertTrue(all.contains("kept weights differ"), all)
        XCTAssertTrue(all.contains("does not rebuild"), all)
        XCTAssertEqual(summary.manifest.pattern, "2:4")
    }
}
