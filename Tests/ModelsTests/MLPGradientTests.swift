import Foundation
import TestSupport
import XCTest
@testable import Models

/// The MLP classifier's backward pass (summed softmax cross-entropy) against central finite
/// differences of its own loss and against torch autograd (float64), with ReLU and GELU, a
/// layer without bias; and masked SGD with momentum against torch.optim.SGD's formula.
final class MLPGradientTests: XCTestCase {
    private let rows = 9

    private func model(_ dir: TempDir, activation: String) throws -> (MLPModel, [Float], [Int32]) {
        guard Subprocess.pythonHasSafetensors else {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy, safetensors and ml_dtypes is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with numpy, safetensors and ml_dtypes not installed")
        }
        let made = try XCTUnwrap(try Subprocess.python("mlp_ref.py", ["make", dir.file("m"), "--activation", activation, "--rows", "\(rows)"]))
        XCTAssertEqual(made.status, 0, made.stderr)
        let model = try MLPModel(directory: dir.file("m"))
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir.file("m/inputs.npy"))))
        let start = 10 + (Int(data[8]) | Int(data[9]) << 8)
        let x = stride(from: start, to: data.count, by: 4).map { i in
            Float(bitPattern: UInt32(data[i]) | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2]) << 16 | UInt32(data[i + 3]) << 24)
        }
        let labels = (0..<rows).map { Int32(($0 * 5 + 2) % model.classes) }
        return (model, x, labels)
    }

    func testGradientsMatchFiniteDifferences() throws {
        for activation in ["relu", "gelu"] {
            let dir = TempDir("mlp-fd"); defer { dir.cleanup() }
            let (model, x, labels) = try self.model(dir, activation: activation)
            let p = model.parameters
            let result = MLPGradient.evaluate(model, parameters: p, x: x, labels: labels, rows: rows)
            XCTAssertGreaterThan(result.loss, 0)
            // The loss is the cross-entropy of the forward pass's logits.
            let logits = try model.forward(x, rows: rows)
            var expected = 0.0
            for r in 0..<rows {
                let row = logits[(r * model.classes)..<((r + 1) * model.classes)].map(Double.init)
                expected += Foundation.log(row.map { Foundation.exp($0) }.reduce(0, +)) - row[Int(labels[r])]
            }
            XCTAssertEqual(result.loss, expected, accuracy: 1e-4 * expected)
            XCTAssertEqual(result.correct, zip(MLPModel.argmax(logits, rows: rows, classes: model.classes), labels).filter { $0 == Int($1) }.count)
            for l in p.weights.indices {
                for (isBias, values) in [(false, p.weights[l]), (true, p.biases[l] ?? [])] where !values.isEmpty {
                    let grad = isBias ? result.gradients.biases[l]! : result.gradients.weights[l]
                    let scale = Double(grad.map(abs).max()!)
                    XCTAssertGreaterThan(scale, 0)
                    for i in stride(from: l % values.count, to: values.count, by: max(1, values.count / 11)) {
                        let eps: Float = 1e-2
                        var plus = p, minus = p
                        if isBias { plus.biases[l]![i] += eps; minus.biases[l]![i] -= eps } else { plus.weights[l][i] += eps; minus.weights[l][i] -= eps }
                        let numeric = (MLPGradient.evaluate(model, parameters: plus, x: x, labels: labels, rows: rows, gradients: false).loss
                                       - MLPGradient.evaluate(model, parameters: minus, x: x, labels: labels, rows: rows, gradients: false).loss) / Double(2 * eps)
                        XCTAssertEqual(Double(grad[i]), numeric, accuracy: 2e-2 * scale + 1e-3 * abs(numeric), "\(activation) layer \(l) \(isBias ? "bias" : "weight")[\(i)]")
                    }
                }
            }
        }
    }

    func testGradientsMatchTorchAutograd() throws {
        guard Subprocess.pythonHas("torch") else {
            if Subprocess.pythonRequired { XCTFail("python3 with torch is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with torch not installed")
        }
        for activation in ["relu", "gelu"] {
            let dir = TempDir("mlp-torch"); defer { dir.cleanup() }
            let (model, x, labels) = try self.model(dir, activation: activation)
            let ours = MLPGradient.evaluate(model, parameters: model.parameters, x: x, labels: labels, rows: rows)
            let r = try XCTUnwrap(try Subprocess.python("mlp_grad_ref.py", [dir.file("m"), dir.file("m/inputs.npy"), labels.map(String.init).joined(separator: ","),
                                                                            dir.file("ref")]))
            XCTAssertEqual(r.status, 0, r.stderr)
            let loss = try npy(dir.file("ref.loss.npy"), width: 8).map { Double(bitPattern: $0) }[0]
            XCTAssertEqual(ours.loss, loss, accuracy: 1e-5 * loss, activation)
            for (l, layer) in model.config.layers.enumerated() {
                for (name, got) in [(layer.weight, ours.gradients.weights[l])] + (layer.bias.map { [($0, ours.gradients.biases[l]!)] } ?? []) {
                    let expected = try npy(dir.file("ref.\(name).npy"), width: 4).map { Float(bitPattern: UInt32($0)) }
                    XCTAssertEqual(expected.count, got.count, name)
                    let scale = expected.map(abs).max()!
                    XCTAssertLessThan(zip(got, expected).map { abs($0 - $1) }.max()! / scale, 1e-4, "\(activation) \(name)")
                }
            }
        }
    }

    /// torch.optim.SGD(momentum=0.9, weight_decay=0.01) by hand, on the kept entries; the
    /// pruned ones and their velocity stay 0; a restored state continues to the same bits.
    func testMaskedSGDIsTorchsFormulaAndKeepsPrunedEntriesZero() throws {
        let keep = [true, false, true, true]
        var sgd = MaskedSGD(keep: keep, learningRate: 0.1, momentum: 0.9, weightDecay: 0.01)
        var w: [Float] = [1, 2, -1, 0.5]
        let grads: [[Float]] = [[0.5, 3, -0.2, 0], [0.1, -1, 0.3, 0.2]]
        var expected = w.map(Double.init), v = [Double](repeating: 0, count: 4)
        for g in grads {
            sgd.update(&w, gradient: g)
            for i in 0..<4 where keep[i] {
                v[i] = 0.9 * v[i] + Double(g[i]) + 0.01 * expected[i]
                expected[i] -= 0.1 * v[i]
            }
            expected[1] = 0
        }
        for i in 0..<4 { XCTAssertEqual(Double(w[i]), expected[i], accuracy: 1e-6) }
        XCTAssertEqual(w[1], 0)
        XCTAssertEqual(sgd.velocity[1], 0)
        var copy = MaskedSGD(keep: keep, learningRate: 0.1, momentum: 0.9, weightDecay: 0.01)
        try copy.restore(sgd.serializedState())
        XCTAssertEqual(copy, sgd)
        var a = w, b = w
        sgd.update(&a, gradient: [1, 1, 1, 1])
        copy.update(&b, gradient: [1, 1, 1, 1])
        XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern))
        var bad = sgd.serializedState()
        bad[24 + 4] = 0x7f; bad[24 + 5] = 0x7f; bad[24 + 6] = 0x7f; bad[24 + 7] = 0x7f
        XCTAssertThrowsError(try copy.restore(bad), "a nonzero velocity where pruned is refused")
        XCTAssertThrowsError(try copy.restore(Array(bad.dropLast())))
    }

    /// The payload of a little-endian .npy as `width`-byte words.
    private func npy(_ path: String, width: Int) throws -> [UInt64] {
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let start = 10 + (Int(data[8]) | Int(data[9]) << 8)
        return stride(from: start, to: data.count, by: width).map { i in (0..<width).reduce(UInt64(0)) { $0 | UInt64(data[i + $1]) << (8 * $1) } }
    }
}

/// MLPTraining: a step is the optimizer's on the mean gradient, pruned weights stay zero,
/// an L1 penalty pulls weights towards 0, the state restores to the same bits.
final class MLPTrainingTests: XCTestCase {
    private let start = MLPGradient.Parameters(weights: [[0.5, -0.25, 1, 2], [1, -1]], biases: [[0.1, 0.2], nil])

    func testAStepIsSGDOnTheMeanGradientWithMasksHeld() throws {
        var t = MLPTraining(parameters: start, masks: [[true, true, false, true], nil], optimizer: .sgd(learningRate: 0.5, momentum: 0, weightDecay: 0))
        XCTAssertEqual(t.parameters.weights[0][2], 0, "a pruned weight is zeroed at the start")
        XCTAssertEqual(t.parameterCount, 8)
        // Summed over a batch of 4: the mean is a quarter.
        t.apply(summedGradient: [4, 8, 4, -4, 0, 4, 2, -2], batch: 4)
        XCTAssertEqual(t.parameters.weights[0], [0.5 - 0.5, -0.25 - 1, 0, 2 + 0.5])
        XCTAssertEqual(t.parameters.biases[0]!, [0.1, 0.2 - 0.5])
        XCTAssertEqual(t.parameters.weights[1], [1 - 0.25, -1 + 0.25])
        XCTAssertEqual(t.step, 1)
        var copy = MLPTraining(parameters: start, masks: [[true, true, false, true], nil], optimizer: .sgd(learningRate: 0.5, momentum: 0, weightDecay: 0))
        try copy.restore(t.serialized())
        XCTAssertEqual(copy, t)
        var bad = t.serialized()
        // Weight 2 of layer 0 (pruned) made nonzero: refused.
        bad[24 + 8] = 0; bad[24 + 9] = 0; bad[24 + 10] = 0x80; bad[24 + 11] = 0x3f
        XCTAssertThrowsError(try copy.restore(bad))
        XCTAssertThrowsError(try copy.restore(Array(t.serialized().dropLast())))
    }

    func testAnL1PenaltyPullsWeightsTowardsZero() {
        var t = MLPTraining(parameters: start, masks: [nil, nil], optimizer: .sgd(learningRate: 0.1, momentum: 0, weightDecay: 0), l1: 0.5)
        t.apply(summedGradient: [Float](repeating: 0, count: 8), batch: 1)
        XCTAssertEqual(t.parameters.weights[0], [0.5 - 0.05, -0.25 + 0.05, 1 - 0.05, 2 - 0.05])
        XCTAssertEqual(t.parameters.biases[0]!, [0.1, 0.2], "biases carry no penalty")
    }
}
