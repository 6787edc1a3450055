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

    /// A Hugging Face cache snapshot: files are relative links into ../../blobs. The
    /// outputs hold real files (no dangling links), check verifies that, transformers loads
    /// out/dense, and the hub id itself resolves through HF_HUB_CACHE, without downloads.
    func testAHubCacheSnapshotPrunesToOutputsThatLoad() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let source = try model(dir, dtype: .f32, shards: 1)
        let repo = dir.file("hub/models--acme--tiny")
        let snapshot = repo + "/snapshots/0123abcd"
        let fm = FileManager.default
        for sub in ["blobs", "snapshots/0123abcd", "refs"] { try fm.createDirectory(atPath: repo + "/" + sub, withIntermediateDirectories: true) }
        for file in ["config.json", "model.safetensors"] {
            let data = try Data(contentsOf: URL(fileURLWithPath: source + "/" + file))
            let blob = data.withUnsafeBytes { SHA256Stream.hex($0) }
            try data.write(to: URL(fileURLWithPath: repo + "/blobs/" + blob))
            try fm.createSymbolicLink(atPath: snapshot + "/" + file, withDestinationPath: "../../blobs/" + blob)
        }
        try "0123abcd".write(toFile: repo + "/refs/main", atomically: false, encoding: .utf8)

        try run(dir, model: snapshot, job: "snap", "sparsity: 0.5\n")
        for sub in ["dense", "sparse"] {
            let attributes = try fm.attributesOfItem(atPath: dir.file("snap/out/\(sub)/config.json"))
            XCTAssertEqual(attributes[.type] as? FileAttributeType, .typeRegular, "\(sub)/config.json is a file, not a link")
        }
        let check = try Subprocess.prune(["check", snapshot, "snap"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout)
        // check catches a dangling link, as a copy of the snapshot's links would be.
        try fm.removeItem(atPath: dir.file("snap/out/dense/config.json"))
        try fm.createSymbolicLink(atPath: dir.file("snap/out/dense/config.json"), withDestinationPath: "../../blobs/nothing")
        let dangling = try Subprocess.prune(["check", snapshot, "snap"], cwd: dir.path)
        XCTAssertEqual(dangling.status, 1, dangling.stdout)
        XCTAssertTrue(dangling.stdout.contains("dense/config.json"), dangling.stdout)

        // model: ORG/NAME through HF_HUB_CACHE; an id the cache lacks is one line, nothing made.
        let env = ["HF_HUB_CACHE": dir.file("hub")]
        try "model: acme/tiny\noutput: byid\nsparsity: 0.5\n".write(toFile: dir.file("byid.yaml"), atomically: false, encoding: .utf8)
        let byID = try Subprocess.run(Subprocess.pruneBinary, ["run", "-q", "--workers", "0", "byid.yaml"], cwd: dir.path, environment: env)
        XCTAssertEqual(byID.status, 0, byID.stderr)
        XCTAssertEqual(fm.contents(atPath: dir.file("byid/out/dense/model.safetensors")), fm.contents(atPath: dir.file("snap/out/dense/model.safetensors")))
        try "model: acme/absent\noutput: none\nsparsity: 0.5\n".write(toFile: dir.file("none.yaml"), atomically: false, encoding: .utf8)
        let absent = try Subprocess.run(Subprocess.pruneBinary, ["run", "-q", "none.yaml"], cwd: dir.path, environment: env)
        XCTAssertEqual(absent.status, 2)
        XCTAssertEqual(absent.stderr.split(separator: "\n").count, 1, absent.stderr)
        XCTAssertTrue(absent.stderr.contains("neither a path nor a model in the Hugging Face cache"), absent.stderr)
        XCTAssertFalse(fm.fileExists(atPath: dir.file("none")))

        try requireInterop()
        let load = try Subprocess.run("/usr/bin/env", ["python3", "-c", """
            import transformers
            transformers.logging.set_verbosity_error()
            m, info = transformers.AutoModelForCausalLM.from_pretrained("\(dir.file("byid/out/dense"))", output_loading_info=True)
            assert not info["missing_keys"] and not info["unexpected_keys"], info
            print("loaded", type(m).__name__)
            """])
        XCTAssertEqual(load.status, 0, load.stderr)
        XCTAssertTrue(load.stdout.contains("loaded LlamaForCausalLM"), load.stdout)
    }
}
