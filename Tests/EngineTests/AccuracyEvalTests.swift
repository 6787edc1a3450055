import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Tensors
import TestSupport
import XCTest
@testable import Engine
@testable import Models

/// Labelled data (IDX, gzip'd or not, and safetensors), top-1 accuracy of an MLP, and the
/// job report when a job evaluates an MLP.
final class AccuracyEvalTests: XCTestCase {
    static let fashionMNIST = "/usr/share/datasets/fashion-mnist"

    private var dir: TempDir!
    override func setUp() { dir = TempDir("accuracy") }
    override func tearDown() { dir.cleanup() }

    // MARK: helpers

    /// An unsigned-byte IDX file: magic 0 0 8 DIMS, big-endian sizes, bytes.
    private func idx(_ shape: [Int], _ values: [UInt8]) -> [UInt8] {
        var b: [UInt8] = [0, 0, 8, UInt8(shape.count)]
        for d in shape { b += [UInt8(d >> 24 & 0xFF), UInt8(d >> 16 & 0xFF), UInt8(d >> 8 & 0xFF), UInt8(d & 0xFF)] }
        return b + values
    }

    private func write(_ bytes: [UInt8], _ name: String) throws -> String {
        let path = dir.file(name)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// gzip's own compression of `bytes` at `level` (the system's gzip binary).
    private func gzip(_ bytes: [UInt8], level: Int = 9) throws -> [UInt8] {
        let path = try write(bytes, "gz-\(UInt32.random(in: 0...UInt32.max))")
        let r = try Subprocess.run("/usr/bin/env", ["gzip", "-\(level)", "-n", "-f", path])
        XCTAssertEqual(r.status, 0, r.stderr)
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path + ".gz")))
    }

    private func loadError(_ path: String) -> String {
        do {
            _ = try LabelledData.load(path)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    /// An MLP whose single Linear layer is `weight` (out × in), no bias.
    private func writeLinearModel(_ path: String, weight: [Float], out: Int, input: Int) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let w = try SafeTensorsWriter(path: path + "/model.safetensors", tensors: [TensorSpec(name: "fc.weight", dtype: .f32, shape: [out, input])], metadata: nil)
        var bytes = [UInt8](repeating: 0, count: weight.count * 4)
        weight.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { FloatConversion.fromFloat(v, dtype: .f32, into: $0) } }
        try w.write(bytes)
        try w.finish()
        try #"{"architecture": "mlp", "input": \#(input), "layers": [{"weight": "fc.weight"}]}"#
            .write(toFile: path + "/mlp.json", atomically: false, encoding: .utf8)
    }

    /// Labelled examples as safetensors: inputs F32 [N, D], labels of `labelType` [N].
    private func writeExamples(_ name: String, inputs: [Float], labels: [Int], width: Int, labelType: DType = .i64) throws -> String {
        let path = dir.file(name)
        let w = try SafeTensorsWriter(path: path, tensors: [TensorSpec(name: "inputs", dtype: .f32, shape: [labels.count, width]),
                                                           TensorSpec(name: "labels", dtype: labelType, shape: [labels.count])], metadata: nil)
        var x = [UInt8](repeating: 0, count: inputs.count * 4)
        inputs.withUnsafeBufferPointer { v in x.withUnsafeMutableBytes { FloatConversion.fromFloat(v, dtype: .f32, into: $0) } }
        try w.write(x)
        var y: [UInt8] = []
        for l in labels {
            if labelType == .i64 { withUnsafeBytes(of: Int64(l).littleEndian) { y += $0 } } else { withUnsafeBytes(of: Int32(l).littleEndian) { y += $0 } }
        }
        try w.write(y)
        try w.finish()
        return path
    }

    // MARK: gzip

    func testGzipMatchesTheSystemGzipOnEveryBlockKind() throws {
        var rng = SystemRandomNumberGenerator()
        let random = (0..<70_000).map { _ in UInt8.random(in: 0...255, using: &rng) }  // stored blocks
        let text = Array(String(repeating: "the quick brown fox jumps over the lazy dog 0123456789\n", count: 3000).utf8)  // long matches
        let tiny = Array("abc".utf8)  // a fixed-Huffman block
        let mixed = (0..<200_000).map { i in UInt8(truncatingIfNeeded: (i / 7) ^ (i % 13) * 3) }  // dynamic blocks
        for (name, data) in [("random", random), ("text", text), ("tiny", tiny), ("mixed", mixed), ("empty", [])] {
            for level in [1, 9] {
                XCTAssertEqual(try Gzip.decompress(try gzip(data, level: level)), data, "\(name) -\(level)")
            }
        }
        // Concatenated members decode as their concatenation.
        XCTAssertEqual(try Gzip.decompress(try gzip(tiny) + gzip(text)), tiny + text)
    }

    func testGzipRefusesCorruptData() throws {
        let data = Array(String(repeating: "labelled data ", count: 5000).utf8)
        let gz = try gzip(data)
        var flipped = gz
        flipped[gz.count - 6] ^= 0x01  // inside the CRC-32
        XCTAssertThrowsError(try Gzip.decompress(flipped)) { XCTAssertEqual("\($0)", "gzip CRC-32 mismatch: the data is corrupt") }
        XCTAssertThrowsError(try Gzip.decompress(Array(gz.prefix(gz.count / 2)))) { XCTAssertEqual("\($0)", "gzip data is truncated") }
        var method = gz
        method[2] = 7
        XCTAssertThrowsError(try Gzip.decompress(method)) { XCTAssertEqual("\($0)", "gzip compression method is not deflate") }
        XCTAssertThrowsError(try Gzip.decompress(gz + [0x42])) { XCTAssertTrue("\($0)".contains("not gzip data") || "\($0)".contains("truncated"), "\($0)") }
        XCTAssertThrowsError(try Gzip.decompress(gz, limit: 1000)) { XCTAssertEqual("\($0)", "decompressed data exceeds 1000 bytes") }
        XCTAssertEqual(try Gzip.decompress(gz + [0, 0, 0, 0]), data, "zero padding after the last member is allowed")
    }

    // MARK: IDX

    func testIDXImagesWithLabelsBesideThemGzipOrNot() throws {
        let pixels: [UInt8] = [0, 255, 51, 102, 0, 0, 255, 255, 1, 2, 3, 4]  // 3 images of 2 × 2
        let images = idx([3, 2, 2], pixels), labels = idx([3], [7, 0, 2])
        _ = try write(images, "x-images-idx3-ubyte")
        _ = try write(labels, "x-labels-idx1-ubyte")
        let raw = try LabelledData.load(dir.file("x-images-idx3-ubyte"))
        XCTAssertEqual(raw.count, 3)
        XCTAssertEqual(raw.width, 4)
        XCTAssertEqual(raw.labels, [7, 0, 2])
        XCTAssertEqual(raw.inputs, pixels.map { Float($0) / 255 })
        // gzip'd images with plain labels, and the reverse, and a directory with the test split.
        _ = try write(try gzip(images), "y-images-idx3-ubyte.gz")
        _ = try write(labels, "y-labels-idx1-ubyte")
        XCTAssertEqual(try LabelledData.load(dir.file("y-images-idx3-ubyte.gz")).inputs, raw.inputs)
        _ = try write(try gzip(images), "t10k-images-idx3-ubyte.gz")
        _ = try write(try gzip(labels), "t10k-labels-idx1-ubyte.gz")
        let fromDir = try LabelledData.load(dir.path, limit: 2)
        XCTAssertEqual(fromDir.labels, [7, 0])
        XCTAssertEqual(fromDir.inputs, Array(raw.inputs.prefix(8)))
    }

    func testBadIDXFilesGiveOneClearError() throws {
        let good = idx([2, 2, 2], [UInt8](repeating: 9, count: 8))
        func expect(_ images: [UInt8], _ labels: [UInt8]?, _ message: String, line: UInt = #line) throws {
            let sub = dir.file("case\(line)")
            try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
            let path = sub + "/a-images-idx3-ubyte"
            try Data(images).write(to: URL(fileURLWithPath: path))
            if let labels { try Data(labels).write(to: URL(fileURLWithPath: sub + "/a-labels-idx1-ubyte")) }
            let error = loadError(path)
            XCTAssertEqual(error, message.replacingOccurrences(of: "%", with: sub), line: line)
        }
        try expect(good, nil, "%/a-images-idx3-ubyte: its labels file a-labels-idx1-ubyte (or with/without .gz) is missing beside it")
        try expect([1, 2, 8, 1, 0], idx([2], [0, 1]), "%/a-images-idx3-ubyte: not an IDX file (bad magic number)")
        try expect(idx([2, 2, 2], [UInt8](repeating: 0, count: 32)), idx([2], [0, 1]),
                   "%/a-images-idx3-ubyte: IDX header says [2, 2, 2] (8 bytes) but the file holds 32 bytes of data")
        var float = good
        float[2] = 0x0D
        try expect(float, idx([2], [0, 1]), "%/a-images-idx3-ubyte: IDX element type 0x0D is not supported (unsigned bytes, 0x08, only)")
        try expect(good, idx([3], [0, 1, 2]), "%/a-images-idx3-ubyte: 2 images but %/a-labels-idx1-ubyte has 3 labels")
        try expect(good, idx([2, 1], [0, 1]), "%/a-labels-idx1-ubyte: IDX labels must have 1 dimension (N), header says [2, 1]")
        try expect(Array(good.dropLast(3)), idx([2], [0, 1]), "%/a-images-idx3-ubyte: IDX header says [2, 2, 2] (8 bytes) but the file holds 5 bytes of data")
        var corrupt = try gzip(good)
        corrupt[corrupt.count - 7] ^= 0xFF
        try expect(corrupt, idx([2], [0, 1]), "%/a-images-idx3-ubyte: gzip CRC-32 mismatch: the data is corrupt")

        XCTAssertEqual(loadError(dir.file("nothing")), dir.file("nothing") + ": no such file or directory")
        _ = try write([1, 2, 3], "notes.txt")
        XCTAssertTrue(loadError(dir.file("notes.txt")).hasPrefix(dir.file("notes.txt") + ": not labelled data (expected a .safetensors file"))
        _ = try write(idx([2], [0, 1]), "b-labels-idx1-ubyte")
        XCTAssertTrue(loadError(dir.file("b-labels-idx1-ubyte")).contains("give the images file"))
        let empty = dir.file("emptydir")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        XCTAssertEqual(loadError(empty), empty + ": no t10k-images-idx3-ubyte[.gz] (the MNIST-style test split) in this directory")
    }

    func testRealFashionMNISTTestSplit() throws {
        guard FileManager.default.fileExists(atPath: Self.fashionMNIST + "/t10k-images-idx3-ubyte.gz") else {
            if Subprocess.pythonRequired { XCTFail("Fashion-MNIST is required (PRUNE_REQUIRE_PYTHON=1): apt-get install dataset-fashion-mnist") }
            throw XCTSkip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
        }
        let data = try LabelledData.load(Self.fashionMNIST)
        XCTAssertEqual(data.count, 10_000)
        XCTAssertEqual(data.width, 784)
        // The test split is balanced: 1000 images of each of the 10 classes.
        XCTAssertEqual(Dictionary(grouping: data.labels, by: { $0 }).mapValues(\.count), Dictionary(uniqueKeysWithValues: (0..<10).map { ($0, 1000) }))
        XCTAssertTrue(data.inputs.allSatisfy { $0 >= 0 && $0 <= 1 })
        XCTAssertEqual(data.inputs.max(), 1)
    }

    // MARK: safetensors

    func testSafetensorsExamplesAndTheirErrors() throws {
        let path = try writeExamples("ok.safetensors", inputs: [1, 2, 3, 4, 5, 6], labels: [2, 0], width: 3, labelType: .i32)
        let data = try LabelledData.load(path)
        XCTAssertEqual(data.inputs, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(data.labels, [2, 0])
        XCTAssertEqual(data.width, 3)
        XCTAssertEqual(try LabelledData.load(path, limit: 1).labels, [2])

        func bad(_ name: String, _ tensors: [(String, DType, [Int])], _ message: String) throws {
            let p = dir.file(name)
            let w = try SafeTensorsWriter(path: p, tensors: tensors.map { TensorSpec(name: $0.0, dtype: $0.1, shape: $0.2) }, metadata: nil)
            for t in tensors { try w.write([UInt8](repeating: 0, count: t.1.size * t.2.reduce(1, *))) }
            try w.finish()
            XCTAssertEqual(loadError(p), p + ": " + message)
        }
        try bad("a.safetensors", [("labels", .i64, [2])], "no tensor named 'inputs' (floating, [N, D])")
        try bad("b.safetensors", [("inputs", .f32, [2, 3])], "no tensor named 'labels' (int32 or int64, [N])")
        try bad("c.safetensors", [("inputs", .f32, [2, 3]), ("labels", .f32, [2])], "tensor 'labels' must be int32 or int64 [N], is F32 [2]")
        try bad("d.safetensors", [("inputs", .i32, [2, 3]), ("labels", .i64, [2])], "tensor 'inputs' must be floating [N, D], is I32 [2, 3]")
        try bad("e.safetensors", [("inputs", .f32, [2, 3]), ("labels", .i64, [3])], "'inputs' has 2 rows but 'labels' has 3")
        let negative = try writeExamples("neg.safetensors", inputs: [0, 0], labels: [1, -4], width: 1)
        XCTAssertEqual(loadError(negative), negative + ": tensor 'labels' has a negative label -4 at example 1")
    }

    // MARK: accuracy

    func testAccuracyOfAKnownClassifierAcrossBatches() throws {
        // One Linear layer that is the identity: the prediction is the argmax of the input.
        let model = dir.file("identity")
        try writeLinearModel(model, weight: [1, 0, 0, 0, 1, 0, 0, 0, 1], out: 3, input: 3)
        var rng = SeededValues(seed: 4)
        let n = 2 * Evaluator.accuracyBatch + 77
        let inputs = rng.values(n * 3)
        var labels: [Int] = []
        var expectedCorrect = 0
        for r in 0..<n {
            let row = Array(inputs[(r * 3)..<(r * 3 + 3)])
            let best = row.firstIndex(of: row.max()!)!
            let label = r % 4 == 0 ? (best + 1) % 3 : best  // every 4th row labelled wrongly
            if label == best { expectedCorrect += 1 }
            labels.append(label)
        }
        let data = LabelledData(inputs: inputs, labels: labels, width: 3, source: "mem")
        let result = try Evaluator.accuracy(modelDirectory: model, data: data, label: "test", quiet: true)
        XCTAssertEqual(result.examples, n)
        XCTAssertEqual(result.correct, expectedCorrect)
        XCTAssertEqual(result.accuracy, Double(expectedCorrect) / Double(n))
        XCTAssertLessThan(result.accuracy, 0.8)
        XCTAssertGreaterThan(result.accuracy, 0.7)

        // Data that does not fit the model is refused with the files named.
        let wide = LabelledData(inputs: [Float](repeating: 0, count: 8), labels: [0, 1], width: 4, source: "wide.safetensors")
        XCTAssertThrowsError(try Evaluator.accuracy(modelDirectory: model, data: wide, label: "t", quiet: true)) {
            XCTAssertEqual("\($0)", "wide.safetensors: examples have 4 features but \(model)/mlp.json expects 'input' 3")
        }
        let outside = LabelledData(inputs: [Float](repeating: 0, count: 6), labels: [0, 3], width: 3, source: "o.safetensors")
        XCTAssertThrowsError(try Evaluator.accuracy(modelDirectory: model, data: outside, label: "t", quiet: true)) {
            XCTAssertEqual("\($0)", "o.safetensors: label 3 of example 1 is outside the 3 classes of \(model)/mlp.json")
        }
    }

    func testMetricFollowsWhatTheModelDirectoryHolds() throws {
        let mlp = dir.file("mlp")
        try writeLinearModel(mlp, weight: [1, 0, 0, 1], out: 2, input: 2)
        XCTAssertEqual(try Evaluator.Metric.of(modelDirectory: mlp), .accuracy)
        let llama = dir.file("llama")
        try SyntheticModel.write(to: llama)
        XCTAssertEqual(try Evaluator.Metric.of(modelDirectory: llama), .perplexity)
        let bare = dir.file("bare")
        try FileManager.default.createDirectory(atPath: bare, withIntermediateDirectories: true)
        XCTAssertThrowsError(try Evaluator.Metric.of(modelDirectory: bare)) {
            XCTAssertTrue("\($0)".hasPrefix(bare + ": cannot evaluate: neither mlp.json"), "\($0)")
        }
    }

    /// A two-layer ReLU MLP that classifies 8-feature points by which of 4 directions
    /// they lean to, pruned 50% by magnitude through a job whose spec evaluates it.
    func testJobReportShowsAccuracyForAnMLP() throws {
        let model = dir.file("model")
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        var rng = SeededValues(seed: 9)
        let hidden = 16, input = 8, classes = 4
        let w1 = rng.values(hidden * input).map { $0 * 5 }, b1 = rng.values(hidden), w2 = rng.values(classes * hidden).map { $0 * 5 }
        let specs = [TensorSpec(name: "fc1.weight", dtype: .f32, shape: [hidden, input]), TensorSpec(name: "fc1.bias", dtype: .f32, shape: [hidden]),
                     TensorSpec(name: "fc2.weight", dtype: .f32, shape: [classes, hidden])]
        let w = try SafeTensorsWriter(path: model + "/model.safetensors", tensors: specs, metadata: nil)
        for values in [w1, b1, w2] {
            var bytes = [UInt8](repeating: 0, count: values.count * 4)
            values.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { FloatConversion.fromFloat(v, dtype: .f32, into: $0) } }
            try w.write(bytes)
        }
        try w.finish()
        try #"{"architecture": "mlp", "input": 8, "layers": [{"weight": "fc1.weight", "bias": "fc1.bias", "activation": "relu"}, {"weight": "fc2.weight"}]}"#
            .write(toFile: model + "/mlp.json", atomically: false, encoding: .utf8)
        // Labels are the dense model's own predictions, so dense accuracy is exactly 1.
        let n = 300
        let x = rng.values(n * input).map { $0 * 10 }
        let dense = try MLPModel(directory: model)
        let labels = MLPModel.argmax(try dense.forward(x, rows: n), rows: n, classes: classes)
        _ = try writeExamples("eval.safetensors", inputs: x, labels: labels, width: input)

        let yaml = "model: model\noutput: job\nmethod: magnitude\nsparsity: 0.5\nevaluation: {data: eval.safetensors, samples: 250}\n"
        try yaml.write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        let spec = try JobSpec.load(path: dir.file("job.yaml"))
        XCTAssertEqual(spec.evaluation?.samples, 250)
        _ = try LocalRunner(spec: spec, quiet: true).run()

        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("job/report.json")))) as! [String: Any]
        let evaluation = try XCTUnwrap(json["evaluation"] as? [String: Any])
        XCTAssertEqual(evaluation["metric"] as? String, "accuracy")
        XCTAssertEqual(evaluation["dense"] as? Double, 1.0)
        let pruned = try XCTUnwrap(evaluation["pruned"] as? Double)
        XCTAssertLessThan(pruned, 1.0, "pruning half of each weight changes some predictions")
        XCTAssertGreaterThan(pruned, 0.25)
        XCTAssertEqual(evaluation["count"] as? Int, 250)
        XCTAssertEqual((json["model"] as? [String: Any])?["architecture"] as? String, "mlp")
        XCTAssertEqual((json["layers"] as? [[String: Any]])?.map { $0["kind"] as? String }, ["fc1", "fc2"])
        let markdown = try String(contentsOfFile: dir.file("job/report.md"), encoding: .utf8)
        XCTAssertTrue(markdown.contains("| evaluation (250 examples) | top-1 accuracy |"), markdown)
        XCTAssertTrue(markdown.contains("| dense | 1.0000 |"), markdown)
        XCTAssertTrue(markdown.contains(String(format: "| pruned | %.4f |", pruned)), markdown)
        XCTAssertFalse(markdown.contains("perplexity"))

        // Evaluating again on the pruned output gives the figure the report holds.
        let again = try Evaluator.compare(original: model, pruned: dir.file("job/out/dense"), data: dir.file("eval.safetensors"),
                                          samples: 250, tokens: 2, quiet: true)
        guard case .accuracy(let d) = again.dense, case .accuracy(let p) = again.pruned else { return XCTFail("\(again)") }
        XCTAssertEqual(d.correct, 250)
        XCTAssertEqual(p.accuracy, pruned)
        XCTAssertEqual(p.examples, 250)
        XCTAssertEqual(again.summary, String(format: "accuracy on 250 examples: dense 1.0000, pruned %.4f (%+.2f points; 250 → %d correct)",
                                             pruned, 100 * (pruned - 1), p.correct))
    }

    func testReportJSONIsSnakeCaseVersionedAndRoundTrips() throws {
        // A perplexity report: snake_case keys like the manifest's, a format version, the
        // spec's digest, and the model's identity; it decodes back to the same figures.
        let json = #"{"format": "prune-cluster/report", "format_version": 2, "spec_sha256": "ab12", "#
            + #""model": {"path": "/m", "architecture": "LlamaForCausalLM", "model_type": "llama", "parameters": 10, "files": {"model.safetensors": "cd"}}, "#
            + #""method": "wanda", "pattern": "2:4", "sparsity": 0.5, "#
            + #""calibration": {"data": "/c.txt", "samples": 64, "tokens": 256, "mode": "sequential", "seed": 0, "samples_per_task": 8}, "#
            + #""sizes": {"dense_bytes": 10, "sparse_bytes": 8, "sparse_to_dense": 0.8, "pruned_dense_bytes": 6, "pruned_sparse_bytes": 4, "#
            + #""parameters": 10, "pruned_parameters": 6, "zeros": 3}, "#
            + #""evaluation": {"metric": "perplexity", "data": "/e.txt", "count": 96, "dense": 12.5, "pruned": 25}, "#
            + #""phases": [{"name": "prune", "seconds": 1}], "#
            + #""layers": [{"name": "model.layers.3.mlp.up_proj.weight", "block": 3, "kind": "up_proj", "target_sparsity": 0.5, "achieved_sparsity": 0.5}], "warnings": []}"#
        let report = try JobReport.decoder().decode(JobReport.self, from: Data(json.utf8))
        XCTAssertEqual(report.calibration?.samplesPerTask, 8)
        XCTAssertEqual(report.layers.first?.block, 3)
        let encoded = try JSONSerialization.jsonObject(with: try JobReport.encoder().encode(report)) as! [String: Any]
        let original = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
        XCTAssertEqual(Set(encoded.keys), Set(original.keys))
        XCTAssertEqual(Set((encoded["sizes"] as! [String: Any]).keys), Set((original["sizes"] as! [String: Any]).keys))
        let markdown = report.markdown()
        XCTAssertTrue(markdown.contains("| evaluation (96 tokens) | perplexity |"), markdown)
        XCTAssertTrue(markdown.contains("Calibration: `/c.txt`, 64 samples × 256 tokens, sequential mode"), markdown)
        XCTAssertTrue(markdown.contains("(LlamaForCausalLM, llama)"), markdown)
        XCTAssertFalse(markdown.contains("accuracy"))
        // The check command's perplexity line is the one it always printed.
        let comparison = Evaluator.Comparison(dense: .perplexity(.init(perplexity: 12.5, tokens: 96, seconds: 0.1)),
                                              pruned: .perplexity(.init(perplexity: 25, tokens: 96, seconds: 0.1)))
        XCTAssertEqual(comparison.summary, "perplexity on 96 tokens: dense 12.500, pruned 25.000 (2.00× dense)")
    }
}

/// report.svg reads at a glance: a sparsity panel and, when measured, an error panel on a
/// log axis, layers in run order grouped by block, block numbers on the x axis.
final class ReportChartTests: XCTestCase {
    private func layer(_ block: Int?, _ kind: String, _ sparsity: Double, _ error: Double?) -> JobReport.Layer {
        JobReport.Layer(name: block.map { "model.layers.\($0).x.\(kind).weight" } ?? "\(kind).weight", block: block, kind: kind,
                        targetSparsity: 0.5, achievedSparsity: sparsity, reconstructionError: error)
    }

    func testTwoPanelsBlockLabelsAndALegendInRunOrder() throws {
        let names = ["model.layers.10.mlp.down_proj.weight", "model.layers.2.self_attn.q_proj.weight", "model.layers.2.mlp.gate_proj.weight",
                     "model.layers.2.self_attn.k_proj.weight"]
        XCTAssertEqual(names.sorted(by: LayerOrder.less), ["model.layers.2.self_attn.q_proj.weight", "model.layers.2.self_attn.k_proj.weight",
                                                           "model.layers.2.mlp.gate_proj.weight", "model.layers.10.mlp.down_proj.weight"])
        var layers: [JobReport.Layer] = []
        for b in 0..<12 { for (k, kind) in ["q_proj", "k_proj", "down_proj"].enumerated() { layers.append(layer(b, kind, 0.3 + 0.05 * Double(k), pow(10, Double(b % 5)))) } }
        let svg = ReportChart(layers: layers, target: 0.5).svg()
        XCTAssertTrue(XMLParser(data: Data(svg.utf8)).parse(), "well-formed XML")
        XCTAssertTrue(svg.contains("Achieved sparsity per layer (dashed: target 0.50)"))
        XCTAssertTrue(svg.contains("Reconstruction error"))
        for decade in ["1e0", "1e4"] { XCTAssertTrue(svg.contains(">\(decade)</text>"), decade) }
        XCTAssertTrue(svg.contains(">11</text>") && svg.contains(">decoder block</text>"), "block numbers label the x axis")
        let legend = ["q_proj", "k_proj", "down_proj"].map { svg.range(of: ">\($0)</text>")!.lowerBound }
        XCTAssertEqual(legend, legend.sorted(), "legend in run order")
        XCTAssertEqual(svg.components(separatedBy: "<circle").count - 1, 36, "one dot per layer with an error")
        // Without errors there is one panel; an MLP's layers are labelled by kind.
        let flat = ReportChart(layers: [layer(nil, "fc1", 0.5, nil), layer(nil, "fc2", 0.5, nil)], target: 0.5).svg()
        XCTAssertFalse(flat.contains("Reconstruction error"))
        XCTAssertTrue(flat.contains(">fc2</text>") && flat.contains(">layer</text>"))
    }
}
