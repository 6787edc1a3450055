import Foundation
import Tensors
import TestSupport
import XCTest

/// What the rest of the ecosystem makes of our outputs: compressed-tensors decompresses
/// sparse/ to dense/, transformers loads sparse/ to the same weights, and a Hugging Face
/// cache snapshot (files as links into ../../blobs) prunes to outputs with real files.
final class EcosystemTests: XCTestCase {
    /// The Python packages these checks run: CPU torch, transformers 4.53.3 and
    /// compressed-tensors 0.14.0.1 (ops/install-deps installs them).
    private let modules = "torch, transformers, compressed_tensors, accelerate"
    /// A config.json transformers can build a LlamaForCausalLM from.
    private let config = """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48,
         "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false}

        """

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("build the prune binary first (swift build)")
        }
    }

    private func requireInterop() throws {
        guard Subprocess.pythonHas(modules) else {
            if Subprocess.pythonRequired { XCTFail("python3 with \(modules) is required (PRUNE_REQUIRE_PYTHON=1; ops/install-deps installs them)") }
            throw XCTSkip("python3 with \(modules) not installed")
        }
    }

    private func model(_ dir: TempDir, dtype: DType, shards: Int) throws -> String {
        let path = dir.file("model-\(dtype.rawValue)-\(shards)")
        try SyntheticModel.write(to: path, dtype: dtype, shards: shards, layers: 2, hidden: 64, intermediate: 128)
        try config.write(toFile: path + "/config.json", atomically: false, encoding: .utf8)
        return path
    }

    private func run(_ dir: TempDir, model: String, job: String, _ body: String) throws {
        let spec = dir.file("\(job).yaml")
        try "model: \(model)\noutput: \(job)\n\(body)".write(toFile: spec, atomically: false, encoding: .utf8)
        let r = try Subprocess.prune(["run", "-q", "--workers", "0", spec], cwd: dir.path)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func testSparseOutputDecompressesInCompressedTensorsAndLoadsInTransformers() throws {
        try requireInterop()
        let dir = TempDir(); defer { dir.cleanup() }
        for (dtype, shards, pattern) in [(DType.f32, 1, "sparsity: 0.5\npattern: unstructured"), (.bf16, 2, "pattern: '2:4'")] {
            let job = "job-\(dtype.rawValue)"
            let source = try model(dir, dtype: dtype, shards: shards)
            try run(dir, model: source, job: job, pattern + "\n")
            let check = try Subprocess.prune(["check", source, job], cwd: dir.path)
            XCTAssertEqual(check.status, 0, check.stdout)
            let py = try XCTUnwrap(try Subprocess.python("ct_interop.py", [dir.file("\(job)/out"), "--transformers"]))
            XCTAssertEqual(py.status, 0, "\(dtype): \(py.stdout)\(py.stderr)")
            XCTAssertTrue(py.stdout.contains("ok: compressed-tensors sparse-bitmask, 14 compressed modules"), py.stdout)
            XCTAssertTrue(py.stdout.contains("loads sparse/ to the weights of dense/"), py.stdout)
            // densify gives dense/ back, its config without the sparsity block, byte for byte.
            let rebuilt = dir.file("\(job)-rebuilt")
            XCTAssertEqual(try Subprocess.prune(["densify", "\(job)/out/sparse", rebuilt], cwd: dir.path).status, 0)
            for file in try FileManager.default.contentsOfDirectory(atPath: dir.file("\(job)/out/dense")) {
                XCTAssertEqual(FileManager.default.contents(atPath: rebuilt + "/" + file),
                               FileManager.default.contents(atPath: dir.file("\(job)/out/dense/\(file)")), "\(dtype): \(file)")
            }
        }
    }

    /// Outputs written before the compressed-tensors naming (`X.weight.bitmask`) still densify.
    func testDensifyReadsTheFirstNamingToo() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let source = try model(dir, dtype: .bf16, shards: 1)
        try run(dir, model: source, job: "job", "pattern: '2:4'\n")
        let sparse = try Checkpoint(path: dir.file("job/out/sparse"))
        let old = dir.file("old")
        try FileManager.default.createDirectory(atPath: old, withIntermediateDirectories: true)
        let renamed = sparse.tensors.map { t -> TensorSpec in
            var name = t.name
            for part in [".bitmask", ".compressed", ".row_offsets", ".shape"] where name.hasSuffix(part) {
                name = String(name.dropLast(part.count)) + ".weight" + part
            }
            return TensorSpec(name: name, dtype: t.dtype, shape: t.shape)
        }
        XCTAssertTrue(renamed.contains { $0.name == "model.layers.0.mlp.up_proj.weight.bitmask" })
        let writer = try SafeTensorsWriter(path: old + "/model.safetensors", tensors: renamed, metadata: sparse.shards[0].metadata)
        for t in sparse.tensors { try writer.write(sparse.bytes(t)) }
        try writer.finish()
        try FileManager.default.copyItem(atPath: dir.file("job/out/sparse/config.json"), toPath: old + "/config.json")
        let r = try Subprocess.prune(["densify", old, "rebuilt"], cwd: dir.path)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(FileManager.default.contents(atPath: dir.file("rebuilt/model.safetensors")),
                       FileManager.default.contents(atPath: dir.file("job/out/dense/model.safetensors")))
    }
}
