import Foundation
import TestSupport
import XCTest
@testable import Models

/// The backward pass of block-wise reconstruction: gradients of a sub-block's squared error
/// with respect to its Linear weights, against central finite differences of our own forward
/// and against torch autograd (float64) on a small random checkpoint with grouped-query
/// attention (and with q/k/v biases).
final class SubBlockGradientTests: XCTestCase {
    private let samples = 2, tokens = 7

    private func setUp(_ dir: TempDir, flags: [String]) throws -> (LlamaModel, LlamaBlock, [Float], [Float]) {
        let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file("m")] + flags))
        XCTAssertEqual(made.status, 0, made.stderr)
        let model = try LlamaModel(directory: dir.file("m"))
        let block = try model.block(1)
        // Inputs: embeddings of token windows; targets: a perturbed copy (a student that is off).
        let ids: [Int32] = (0..<(samples * tokens)).map { Int32(($0 * 29 + 3) % 64) }
        let x = try model.embed(ids)
        var state: UInt64 = 5
        let target = x.map { v -> Float in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return v + Float(Double(state >> 40) / Double(1 << 24) - 0.5)
        }
        return (model, block, x, target)
    }

    private func weights(_ part: SubBlock, _ block: LlamaBlock) -> [[Float]] {
        part == .attention ? [block.q, block.k, block.v, block.o] : [block.gate, block.up, block.down]
    }

    func testGradientsMatchFiniteDifferences() throws {
        guard Subprocess.pythonHasSafetensors else { throw XCTSkip("python3 with numpy and safetensors not installed") }
        let dir = TempDir("subblock-fd"); defer { dir.cleanup() }
        let (model, block, x, target) = try setUp(dir, flags: [])
        let rope = RotaryTable(headDim: model.config.headDim, theta: model.config.ropeTheta, maxTokens: tokens)
        for part in SubBlock.allCases {
            let w = weights(part, block)
            let result = SubBlockGradient.evaluate(part, block: block, weights: w, input: x, target: target, samples: samples, tokens: tokens, rope: rope)
            XCTAssertGreaterThan(result.loss, 0)
            for (l, weight) in w.enumerated() {
                let scale = result.gradients[l].map(abs).max()!
                XCTAssertGreaterThan(scale, 0, "\(part) \(part.linears[l])")
                for index in stride(from: l * 7 % weight.count, to: weight.count, by: max(1, weight.count / 9)) {
                    let eps: Float = 1e-2
                    var plus = w, minus = w
                    plus[l][index] += eps
                    minus[l][index] -= eps
                    let up = SubBlockGradient.evaluate(part, block: block, weights: plus, input: x, target: target, samples: samples, tokens: tokens, rope: rope).loss
                    let down = SubBlockGradient.evaluate(part, block: block, weights: minus, input: x, target: target, samples: samples, tokens: tokens, rope: rope).loss
                    let numeric = (up - down) / Double(2 * eps)
                    XCTAssertEqual(Double(result.gradients[l][index]), numeric, accuracy: 2e-2 * Double(scale) + 1e-3 * abs(numeric),
                                   "\(part) \(part.linears[l])[\(index)]")
                }
            }
        }
    }

    func testGradientsMatchTorchAutograd() throws {
        guard Subprocess.pythonHasSafetensors, Subprocess.pythonHas("torch") else {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy, safetensors and torch is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with torch not installed")
        }
        for flags in [[], ["--bias", "--seed", "4"]] {
            let dir = TempDir("subblock-torch"); defer { dir.cleanup() }
            let (model, block, x, target) = try setUp(dir, flags: flags)
            let rope = RotaryTable(headDim: model.config.headDim, theta: model.config.ropeTheta, maxTokens: tokens)
            try writeNpy(x, to: dir.file("x.npy"))
            try writeNpy(target, to: dir.file("target.npy"))
            for part in SubBlock.allCases {
                let ours = SubBlockGradient.evaluate(part, block: block, weights: weights(part, block), input: x, target: target,
                                                     samples: samples, tokens: tokens, rope: rope)
                let r = try XCTUnwrap(try Subprocess.python("subblock_grad_ref.py", [dir.file("m"), "1", part.rawValue, "\(samples)", "\(tokens)",
                                                                                     dir.file("x.npy"), dir.file("target.npy"), dir.file(part.rawValue)]))
                XCTAssertEqual(r.status, 0, r.stderr)
                let loss = try readNpy64(dir.file("\(part.rawValue).loss.npy"))[0]
                XCTAssertEqual(ours.loss, loss, accuracy: 1e-5 * loss, "\(flags) \(part) loss")
                for (l, name) in part.linears.enumerated() {
                    let expected = try readNpy(dir.file("\(part.rawValue).\(name).npy"))
                    XCTAssertEqual(expected.count, ours.gradients[l].count)
                    let scale = expected.map(abs).max()!
                    let worst = zip(ours.gradients[l], expected).map { abs($0 - $1) }.max()! / scale
                    XCTAssertLessThan(worst, 1e-4, "\(flags) \(part) \(name): max relative difference \(worst)")
                }
            }
        }
    }

    // MARK: The whole model (LlamaGradient)

    private let sequence: [Int32] = (0..<11).map { Int32(($0 * 37 + 5) % 64) }

    private func wholeModel(_ model: LlamaModel) throws -> (loss: Double, count: Int, gradients: [String: [Float]]) {
        let blocks = try (0..<model.config.layers).map { try model.block($0) }
        var gradients: [String: [Float]] = [:]
        let r = try LlamaGradient.evaluate(model, blocks: blocks, tokens: sequence) { gradients[$0] = $1 }
        return (r.loss, r.count, gradients)
    }

    /// The next-token cross-entropy of the whole model equals the forward pass's, and its
    /// gradient matches central finite differences of that loss (through every block,
    /// the final norm and the tied head).
    func testWholeModelGradientMatchesFiniteDifferences() throws {
        guard Subprocess.pythonHasSafetensors else { throw XCTSkip("python3 with numpy and safetensors not installed") }
        let dir = TempDir("llama-grad-fd"); defer { dir.cleanup() }
        let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file("m"), "--tied"]))
        XCTAssertEqual(made.status, 0, made.stderr)
        let model = try LlamaModel(directory: dir.file("m"))
        let (loss, count, gradients) = try wholeModel(model)
        XCTAssertEqual(count, sequence.count - 1)
        let reference = LlamaModel.nextTokenNLL(logits: try model.forward(sequence), tokens: sequence, vocab: model.config.vocabSize).sum
        XCTAssertEqual(loss, reference, accuracy: 1e-4 * reference)
        XCTAssertEqual(gradients.count, 7 * model.config.layers)
        for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.v_proj.weight",
                     "model.layers.1.mlp.gate_proj.weight"] {
            let g = try XCTUnwrap(gradients[name])
            let original = try model.store.load(name, shape: try XCTUnwrap(model.store.reader.shape(of: name)))
            let scale = Double(g.map(abs).max()!)
            XCTAssertGreaterThan(scale, 0, name)
            for index in stride(from: 3, to: g.count, by: max(1, g.count / 6)) {
                func lossWith(_ delta: Float) throws -> Double {
                    var w = original
                    w[index] += delta
                    model.store.override(name, with: w)
                    defer { model.store.clearOverrides() }
                    return LlamaModel.nextTokenNLL(logits: try model.forward(sequence), tokens: sequence, vocab: model.config.vocabSize).sum
                }
                let eps: Float = 1e-2
                let numeric = (try lossWith(eps) - (try lossWith(-eps))) / Double(2 * eps)
                XCTAssertEqual(Double(g[index]), numeric, accuracy: 2e-2 * scale + 2e-3 * abs(numeric), "\(name)[\(index)]")
            }
        }
    }

    /// Against torch autograd (float64) on the same checkpoint and tokens: every decoder
    /// Linear weight's gradient, tied and separate heads, with and without q/k/v biases.
    func testWholeModelGradientMatchesTorchAutograd() throws {
        guard Subprocess.pythonHasSafetensors, Subprocess.pythonHas("torch") else {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy, safetensors and torch is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with torch not installed")
        }
        for flags in [["--tied"], ["--bias", "--seed", "4"]] {
            let dir = TempDir("llama-grad-torch"); defer { dir.cleanup() }
            let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file("m")] + flags))
            XCTAssertEqual(made.status, 0, made.stderr)
            let model = try LlamaModel(directory: dir.file("m"))
            let ours = try wholeModel(model)
            let r = try XCTUnwrap(try Subprocess.python("llama_grad_ref.py", [dir.file("m"), sequence.map(String.init).joined(separator: ","), dir.file("ref")]))
            XCTAssertEqual(r.status, 0, r.stderr)
            let loss = try readNpy64(dir.file("ref.loss.npy"))[0]
            XCTAssertEqual(ours.loss, loss, accuracy: 1e-5 * loss, "\(flags) loss")
            for (name, gradient) in ours.gradients {
                let expected = try readNpy(dir.file("ref.\(name).npy"))
                XCTAssertEqual(expected.count, gradient.count, name)
                let scale = expected.map(abs).max()!
                let worst = zip(gradient, expected).map { abs($0 - $1) }.max()! / scale
                XCTAssertLessThan(worst, 1e-4, "\(flags) \(name): max relative difference \(worst)")
            }
        }
    }

    private func writeNpy(_ values: [Float], to path: String) throws {
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(values.count),), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xff), UInt8(header.utf8.count >> 8)] + Array(header.utf8)
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    private func payload(_ path: String) throws -> [UInt8] {
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        return Array(data[(10 + (Int(data[8]) | Int(data[9]) << 8))...])
    }

    private func readNpy(_ path: String) throws -> [Float] {
        let p = try payload(path)
        return stride(from: 0, to: p.count, by: 4).map { i in Float(bitPattern: UInt32(p[i]) | UInt32(p[i + 1]) << 8 | UInt32(p[i + 2]) << 16 | UInt32(p[i + 3]) << 24) }
    }

    private func readNpy64(_ path: String) throws -> [Double] {
        let p = try payload(path)
        return stride(from: 0, to: p.count, by: 8).map { i in Double(bitPattern: (0..<8).reduce(UInt64(0)) { $0 | UInt64(p[i + $1]) << (8 * $1) }) }
    }
}
