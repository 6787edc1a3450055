import Foundation
import Pruning
import Tensors
import TestSupport
import XCTest
@testable import Engine

/// `densify` and `check` read directories a user hands them: malformed ones must give
/// errors, never traps, hangs or wrong passes.
final class HostileOutputTests: XCTestCase {
    private func job(_ dir: TempDir, _ yaml: String = "sparsity: 0.5\n") throws {
        try SyntheticModel.write(to: dir.file("m"))
        try "model: m\noutput: job\n\(yaml)".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        _ = try LocalRunner(spec: try JobSpec.load(path: dir.file("job.yaml")), quiet: true).run()
    }

    /// Rewrites sparse/model.safetensors with `change` applied to its tensors.
    private func rewriteSparse(_ dir: TempDir, _ change: (inout [(TensorSpec, [UInt8])]) -> Void) throws {
        let path = dir.file("job/out/sparse/model.safetensors")
        let file = try SafeTensorsFile(path: path)
        var tensors = file.tensors.map { (TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape), [UInt8](file.bytes($0))) }
        change(&tensors)
        let w = try SafeTensorsWriter(path: path, tensors: tensors.map(\.0), metadata: file.metadata)
        for (_, bytes) in tensors { try w.write(bytes) }
        try w.finish()
    }

    private let target = "model.layers.0.mlp.up_proj.weight"
    /// Its parts in sparse/ are named after the module (compressed-tensors' naming).
    private let module = "model.layers.0.mlp.up_proj"

    func testOverflowingOrOneDimensionalSparseShapesAreErrors() throws {
        for shape in [[Int64(1) << 33, Int64(1) << 33], [2, Int64(1) << 62, 4], [64], [8, -1]] {
            let dir = TempDir(); defer { dir.cleanup() }
            try job(dir)
            try rewriteSparse(dir) { tensors in
                let i = tensors.firstIndex { $0.0.name == self.module + ".shape" }!
                tensors[i] = (TensorSpec(name: module + ".shape", dtype: .i64, shape: [shape.count]), SparseLayout.int64Bytes(shape))
            }
            XCTAssertThrowsError(try Densifier.densify(sparseDirectory: dir.file("job/out/sparse"), to: dir.file("rebuilt"))) {
                XCTAssertTrue("\($0)".contains(module + ".shape"), "\(shape): \($0)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("rebuilt")))
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".densify") }
            XCTAssertEqual(leftovers, [], "no staging directory left behind")
            let report = try Checker.check(original: dir.file("m"), output: dir.file("job"))
            XCTAssertFalse(report.passed, "\(shape)")
        }
    }

    func testCheckRejectsWrongDtypeDigestsAndGhostEntries() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try job(dir)
        // An unpruned tensor in sparse/ with the same bytes but another dtype and shape.
        try rewriteSparse(dir) { tensors in
            let i = tensors.firstIndex { $0.0.name == "model.norm.weight" }!
            tensors[i] = (TensorSpec(name: "model.norm.weight", dtype: .i32, shape: [4, 8]), tensors[i].1)
        }
        var report = try Checker.check(original: dir.file("m"), output: dir.file("job"))
        XCTAssertTrue(report.failures.contains { $0.contains("sparse/: tensor 'model.norm.weight' is I32 [4, 8]") }, "\(report.failures)")

        let manifestPath = dir.file("job/out/manifest.json")
        var manifest = try Manifest.load(path: manifestPath)
        manifest.tensors[target]!.sha256Sparse = String(repeating: "0", count: 64)
        manifest.tensors["ghost.weight"] = manifest.tensors[target]!
        manifest.modelFiles["model.safetensors"] = String(repeating: "1", count: 64)
        try AtomicFileWriter.write(try manifest.jsonBytes(), to: manifestPath)
        report = try Checker.check(original: dir.file("m"), output: dir.file("job"))
        let all = report.failures.joined(separator: "\n")
        XCTAssertTrue(all.contains("'ghost.weight' is not in the input"), all)
        XCTAssertTrue(all.contains("sparse/: tensor '\(target)': sha256 differs"), all)
        XCTAssertTrue(all.contains("differs from the file the job pruned"), all)
    }

    func testCheckRefusesImpossibleManifestEntriesWithoutTrapping() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try job(dir, "pattern: per_row\nsparsity: 0.5\n")
        let manifestPath = dir.file("job/out/manifest.json")
        var manifest = try Manifest.load(path: manifestPath)
        manifest.tensors[target]!.targetSparsity = 1e300
        manifest.tensors["model.norm.weight"]!.pruned = true
        manifest.tensors["model.norm.weight"]!.pattern = "2:4"
        try AtomicFileWriter.write(try manifest.jsonBytes(), to: manifestPath)
        let report = try Checker.check(original: dir.file("m"), output: dir.file("job"))
        let all = report.failures.joined(separator: "\n")
        XCTAssertTrue(all.contains("tensor '\(target)': target_sparsity missing or outside [0, 1)"), all)
        XCTAssertTrue(all.contains("tensor 'model.norm.weight': marked pruned but F32 [32] cannot be pruned"), all)
    }

    func testFifoCheckpointIsAnErrorNotAHang() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try FileManager.default.createDirectory(atPath: dir.file("m"), withIntermediateDirectories: true)
        XCTAssertEqual(mkfifo(dir.file("m/model.safetensors"), 0o644), 0)
        XCTAssertThrowsError(try Checkpoint(path: dir.file("m"))) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
    }

    func testOtherWeightFormatsAreNotCopiedBesideOutputs() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("m"))
        for side in ["pytorch_model.bin", "model.gguf", "tokenizer.json", "generation_config.json"] {
            try "x".write(toFile: dir.file("m/" + side), atomically: false, encoding: .utf8)
        }
        try "model: m\noutput: job\nsparsity: 0.5\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        _ = try LocalRunner(spec: try JobSpec.load(path: dir.file("job.yaml")), quiet: true).run()
        let copied = Set(try FileManager.default.contentsOfDirectory(atPath: dir.file("job/out/dense")))
        XCTAssertEqual(copied, ["model.safetensors", "config.json", "tokenizer.json", "generation_config.json"])
    }

    func testSparsityCountsForgiveBinaryFractions() {
        XCTAssertEqual(SparsityPattern.count(of: 100, at: 0.29), 29)
        XCTAssertEqual(SparsityPattern.count(of: 100, at: 0.5), 50)
        XCTAssertEqual(SparsityPattern.count(of: 7, at: 0.5), 3)
        XCTAssertEqual(SparsityPattern.count(of: 3, at: 0.999), 2)
        XCTAssertEqual(SparsityPattern.count(of: 11008, at: 0.7), 7705)
    }
}
