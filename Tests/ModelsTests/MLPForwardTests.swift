import Foundation
import Tensors
import TestSupport
import XCTest
@testable import Models

/// Our MLP forward pass against a numpy reference (float64, exact-erf GELU) on small
/// random checkpoints, the hook on every Linear's input, and mlp.json errors.
final class MLPForwardTests: XCTestCase {
    private func requirePython() throws {
        if !Subprocess.pythonHasSafetensors {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy, safetensors and ml_dtypes is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with numpy, safetensors and ml_dtypes not installed")
        }
    }

    /// A float32 .npy written by numpy (little-endian, C order): values and shape.
    private func readNpy(_ path: String) throws -> (values: [Float], shape: [Int]) {
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let headerLength = Int(data[8]) | Int(data[9]) << 8
        let header = String(decoding: data[10..<(10 + headerLength)], as: UTF8.self)
        XCTAssertTrue(header.contains("'<f4'"), header)
        let inside = header[header.range(of: "(")!.upperBound..<header.range(of: ")")!.lowerBound]
        let shape = inside.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let values = stride(from: 10 + headerLength, to: data.count, by: 4).map { i in
            Float(bitPattern: UInt32(data[i]) | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2]) << 16 | UInt32(data[i + 3]) << 24)
        }
        return (values, shape)
    }

    /// Largest |a − b| relative to the largest |b|.
    private func maxRelative(_ a: [Float], _ b: [Float]) -> Float {
        let scale = max(b.map(abs).max() ?? 1, 1e-30)
        return zip(a, b).map { abs($0 - $1) / scale }.max() ?? 0
    }

    private func compare(_ flags: [String]) throws {
        try requirePython()
        let dir = TempDir("mlp-ref"); defer { dir.cleanup() }
        let made = try XCTUnwrap(try Subprocess.python("mlp_ref.py", ["make", dir.file("m")] + flags))
        XCTAssertEqual(made.status, 0, made.stderr)
        let ref = try XCTUnwrap(try Subprocess.python("mlp_ref.py", ["forward", dir.file("m"), dir.file("m/inputs.npy"), dir.file("ref.npy")]))
        XCTAssertEqual(ref.status, 0, ref.stderr)
        let (x, xShape) = try readNpy(dir.file("m/inputs.npy"))
        let (expected, outShape) = try readNpy(dir.file("ref.npy"))

        let model = try MLPModel(directory: dir.file("m"))
        XCTAssertEqual(model.classes, 7)
        XCTAssertEqual(outShape, [xShape[0], 7])
        var hooked: [(String, [Float], Int)] = []
        let got = try model.forward(x, rows: xShape[0]) { name, input, rows in hooked.append((name, Array(input), rows)) }
        XCTAssertEqual(got.count, expected.count)
        let rel = maxRelative(got, expected)
        XCTAssertLessThan(rel, 1e-4, "logits: max relative difference \(rel) \(flags)")
        // Not vacuous: the logits are far from zero and differ between rows.
        XCTAssertGreaterThan(expected.map(abs).max() ?? 0, 0.1)

        XCTAssertEqual(hooked.map(\.0), ["net.0.weight", "net.1.weight", "net.2.weight"], "each Linear hooked once, in order")
        for (k, (name, input, rows)) in hooked.enumerated() {
            let (reference, shape) = try readNpy(dir.file("ref.layer\(k).npy"))
            XCTAssertEqual(rows, xShape[0], name)
            XCTAssertEqual(input.count, shape[0] * shape[1], name)
            XCTAssertLessThan(maxRelative(input, reference), 1e-4, "input of \(name)")
        }
        XCTAssertEqual(hooked[0].1, x, "the first Linear sees the data as given")

        // Batching does not change a row's logits.
        let r = xShape[0] - 1
        let one = try model.forward(Array(x[(r * 20)..<((r + 1) * 20)]), rows: 1)
        XCTAssertLessThan(maxRelative(one, Array(got[(r * 7)..<((r + 1) * 7)])), 1e-5)
    }

    func testReLUMatchesNumpy() throws {
        try compare(["--activation", "relu", "--seed", "1"])
    }

    func testGELUErfFormMatchesNumpy() throws {
        try compare(["--activation", "gelu", "--seed", "2"])
    }

    func testBF16WeightsMatchNumpy() throws {
        try compare(["--activation", "gelu", "--seed", "3", "--dtype", "bf16", "--rows", "5"])
    }

    func testArgmaxTakesTheFirstLargest() {
        XCTAssertEqual(MLPModel.argmax([0, 2, 2, -1, 5, 1, 3, 3, 3], rows: 3, classes: 3), [1, 1, 0])
    }

    // MARK: errors

    private func parseError(_ json: [String: Any]) -> String {
        do {
            _ = try MLPConfig.parse(json, file: "m/mlp.json")
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    private let good: [String: Any] = ["architecture": "mlp", "input": 4,
                                       "layers": [["weight": "a.weight", "bias": "a.bias", "activation": "relu"], ["weight": "b.weight"]]]

    func testConfigParses() throws {
        let c = try MLPConfig.parse(good, file: "m/mlp.json")
        XCTAssertEqual(c, MLPConfig(input: 4, layers: [.init(weight: "a.weight", bias: "a.bias", activation: .relu), .init(weight: "b.weight")]))
    }

    func testBadConfigsNameFileAndKey() {
        func with(_ key: String, _ value: Any?) -> [String: Any] {
            var j = good
            j[key] = value
            return j
        }
        let cases: [([String: Any], String)] = [
            (with("architecture", nil), "m/mlp.json: missing string 'architecture'"),
            (with("architecture", "llama"), "m/mlp.json: architecture: 'llama' is not supported"),
            (with("input", nil), "m/mlp.json: missing integer 'input'"),
            (with("input", 0), "m/mlp.json: input: must be a positive integer"),
            (with("input", 2.5), "m/mlp.json: input: must be a positive integer"),
            (with("input", true), "m/mlp.json: input: must be a positive integer"),
            (with("layers", nil), "m/mlp.json: missing list 'layers'"),
            (with("layers", [Any]()), "m/mlp.json: layers: the list is empty"),
            (with("layers", [["bias": "a.bias"]]), "m/mlp.json: layers[0].weight: missing tensor name"),
            (with("layers", [["weight": "a", "activation": "tanh"]]), "m/mlp.json: layers[0].activation: 'tanh' is not one of none, relu, gelu"),
            (with("layers", [["weight": "a"], ["weight": "b", "bias": 3]]), "m/mlp.json: layers[1].bias: must be a tensor name or null"),
            (with("layers", [["weight": "a", "act": "relu"]]), "m/mlp.json: layers[0]: unknown key 'act'"),
            (with("layers", ["a.weight"]), "m/mlp.json: layers[0]: must be an object"),
            (with("hidden", 3), "m/mlp.json: unknown key 'hidden'"),
            (with("labels", [1, 2]), "m/mlp.json: labels: must be a list of strings"),
        ]
        for (json, expected) in cases {
            let message = parseError(json)
            XCTAssertTrue(message.hasPrefix(expected), "'\(message)' should start with '\(expected)'")
            XCTAssertFalse(message.contains("\n"))
        }
    }

    /// Writes F32 tensors (zeros) of the given shapes, and an mlp.json.
    private func writeModel(_ dir: String, tensors: [(String, [Int])], config: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let w = try SafeTensorsWriter(path: dir + "/model.safetensors", tensors: tensors.map { TensorSpec(name: $0.0, dtype: .f32, shape: $0.1) }, metadata: nil)
        for (_, shape) in tensors { try w.write([UInt8](repeating: 0, count: 4 * shape.reduce(1, *))) }
        try w.finish()
        try config.write(toFile: dir + "/mlp.json", atomically: false, encoding: .utf8)
    }

    func testShapesAreCheckedAgainstTheCheckpoint() throws {
        let dir = TempDir("mlp-bad"); defer { dir.cleanup() }
        let layers = #"[{"weight": "a.weight", "bias": "a.bias", "activation": "relu"}, {"weight": "b.weight"}]"#
        let cases: [([(String, [Int])], String, String)] = [
            ([("a.weight", [8, 5]), ("a.bias", [8]), ("b.weight", [3, 8])], layers,
             "layers[0].weight: tensor 'a.weight' in %/model.safetensors has shape [8, 5], but 'input' is 4 (expected [*, 4])"),
            ([("a.weight", [8, 4]), ("a.bias", [8]), ("b.weight", [3, 6])], layers,
             "layers[1].weight: tensor 'b.weight' in %/model.safetensors has shape [3, 6], but layers[0] has 8 outputs (expected [*, 8])"),
            ([("a.weight", [8, 4]), ("a.bias", [3]), ("b.weight", [3, 8])], layers,
             "layers[0].bias: tensor 'a.bias' in %/model.safetensors has shape [3], expected [8]"),
            ([("a.weight", [8, 4]), ("a.bias", [8])], layers,
             "layers[1].weight: no tensor named 'b.weight' in %"),
            ([("a.weight", [32]), ("a.bias", [8]), ("b.weight", [3, 8])], layers,
             "layers[0].weight: tensor 'a.weight' in %/model.safetensors has shape [32], a Linear weight must be 2-D [out, in]"),
        ]
        for (i, (tensors, layerJSON, expected)) in cases.enumerated() {
            let m = dir.file("m\(i)")
            try writeModel(m, tensors: tensors, config: #"{"architecture": "mlp", "input": 4, "layers": "# + layerJSON + "}")
            XCTAssertThrowsError(try MLPModel(directory: m), "case \(i)") { error in
                let want = m + "/mlp.json: " + expected.replacingOccurrences(of: "%", with: m)
                XCTAssertEqual("\(error)", want)
            }
        }
        // classes and labels must agree with the last layer.
        let m = dir.file("labels")
        try writeModel(m, tensors: [("a.weight", [8, 4]), ("a.bias", [8]), ("b.weight", [3, 8])],
                       config: #"{"architecture": "mlp", "input": 4, "layers": "# + layers + #", "labels": ["x", "y"]}"#)
        XCTAssertThrowsError(try MLPModel(directory: m)) {
            XCTAssertEqual("\($0)", m + "/mlp.json: labels: 2 names, but the last layer has 3 outputs")
        }
        // An integer weight is refused by dtype.
        let ints = dir.file("ints")
        try FileManager.default.createDirectory(atPath: ints, withIntermediateDirectories: true)
        let w = try SafeTensorsWriter(path: ints + "/model.safetensors", tensors: [TensorSpec(name: "a.weight", dtype: .i32, shape: [3, 4])], metadata: nil)
        try w.write([UInt8](repeating: 0, count: 48))
        try w.finish()
        try #"{"architecture": "mlp", "input": 4, "layers": [{"weight": "a.weight"}]}"#.write(toFile: ints + "/mlp.json", atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try MLPModel(directory: ints)) {
            XCTAssertTrue("\($0)".contains("layers[0].weight: tensor 'a.weight' in \(ints)/model.safetensors is I32, expected F32, F16 or BF16"), "\($0)")
        }
        // Not JSON at all.
        try "{ nope".write(toFile: ints + "/mlp.json", atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try MLPModel(directory: ints)) { XCTAssertEqual("\($0)", ints + "/mlp.json: not a JSON object") }
        // Wrong input width at forward time.
        let ok = dir.file("ok")
        try writeModel(ok, tensors: [("a.weight", [8, 4]), ("a.bias", [8]), ("b.weight", [3, 8])],
                       config: #"{"architecture": "mlp", "input": 4, "layers": "# + layers + "}")
        let model = try MLPModel(directory: ok)
        XCTAssertThrowsError(try model.forward([1, 2, 3], rows: 1)) { XCTAssertTrue("\($0)".contains("expected 1 rows × 4"), "\($0)") }
        XCTAssertEqual(try model.forward([1, 2, 3, 4, 5, 6, 7, 8], rows: 2), [Float](repeating: 0, count: 6), "zero weights give zero logits")
    }
}
