import Foundation
import TestSupport
import XCTest
@testable import Models

/// The generation path `prune bench` times: a prompt prefilled, then one token at a time
/// from the key/value cache, gives the logits the whole-sequence forward pass gives at
/// every position, with weights dense or in CSR.
final class LlamaDecoderTests: XCTestCase {
    private func requirePython() throws {
        guard Subprocess.pythonHasSafetensors else {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy and safetensors is required") }
            throw XCTSkip("python3 with numpy and safetensors not installed")
        }
    }

    private static func maxRelative(_ a: ArraySlice<Float>, _ b: [Float]) -> Float {
        let scale = b.map(abs).max() ?? 1
        return zip(a, b).map { abs($0 - $1) / scale }.max() ?? .infinity
    }

    func testDecodingFromTheCacheGivesTheWholeSequencesLogits() throws {
        try requirePython()
        let dir = TempDir("decoder"); defer { dir.cleanup() }
        let tokens: [Int32] = [1, 5, 9, 33, 2, 60, 7, 7, 12, 40, 41, 3, 17, 0, 63]
        for (name, flags) in [("llama", ["--seed", "2"]), ("qwen2", ["--bias", "--seed", "5"]), ("tied", ["--tied", "--seed", "3"])] {
            let made = try XCTUnwrap(try Subprocess.python("llama_ref.py", ["make", dir.file(name)] + flags))
            XCTAssertEqual(made.status, 0, made.stderr)
            let whole = try LlamaModel(directory: dir.file(name)).forward(tokens)
            let vocab = 64
            for sparseAbove in [nil, 0.0] as [Double?] {
                let decoder = try LlamaDecoder(directory: dir.file(name), maxTokens: 32, sparseAbove: sparseAbove)
                XCTAssertEqual(decoder.sparseWeights, sparseAbove == nil ? 0 : decoder.linearWeights)
                let prompt = 6
                var logits = try decoder.prefill(Array(tokens[..<prompt]))
                XCTAssertLessThan(Self.maxRelative(whole[((prompt - 1) * vocab)..<(prompt * vocab)], logits), 1e-4, "\(name) prefill")
                for p in prompt..<tokens.count {
                    logits = try decoder.step(tokens[p])
                    XCTAssertLessThan(Self.maxRelative(whole[(p * vocab)..<((p + 1) * vocab)], logits), 1e-4, "\(name) position \(p) sparse \(String(describing: sparseAbove))")
                }
                XCTAssertEqual(decoder.position, tokens.count)
                XCTAssertThrowsError(try decoder.prefill([Int32](repeating: 1, count: 32)), "past the cache's length")
                decoder.reset()
                XCTAssertLessThan(Self.maxRelative(whole[((prompt - 1) * vocab)..<(prompt * vocab)], try decoder.prefill(Array(tokens[..<prompt]))), 1e-4)
            }
        }
    }

    /// The sparse kernel against a plain dense product, on a matrix whose rows have
    /// every remainder of 8 (the lane loop and the tail), at several sparsities.
    func testCSRProductEqualsTheDenseOne() {
        var rng = SeededValues(seed: 9)
        var coin: UInt64 = 5
        for sparsity in [0.0, 0.5, 0.9, 1.0] {
            let rows = 37, cols = 301
            let dense = (0..<(rows * cols)).map { _ -> Float in
                coin = coin &* 6364136223846793005 &+ 1442695040888963407
                let v = rng.next()
                return Double(coin >> 11) / Double(1 << 53) < sparsity ? 0 : v
            }
            let x = rng.values(cols)
            let m = CSRMatrix(dense: dense, rows: rows, cols: cols)
            let nonzero = dense.filter { $0 != 0 }.count
            XCTAssertEqual(Double(nonzero) / Double(rows * cols), 1 - sparsity, accuracy: 0.03)
            XCTAssertEqual(m.bytes, (rows + 1) * 4 + nonzero * 6)
            var y = [Float](repeating: .nan, count: rows)
            y.withUnsafeMutableBufferPointer { out in x.withUnsafeBufferPointer { m.multiply($0.baseAddress!, into: out.baseAddress!) } }
            for r in 0..<rows {
                var want = 0.0
                for c in 0..<cols { want += Double(dense[r * cols + c]) * Double(x[c]) }
                XCTAssertEqual(Double(y[r]), want, accuracy: 1e-4 * max(1, abs(want)), "row \(r) at \(sparsity)")
            }
            // Several tokens at once (a prompt): each token's product as one alone gives it.
            let tokens = 11
            let xs = rng.values(tokens * cols)
            var ys = [Float](repeating: .nan, count: tokens * rows)
            ys.withUnsafeMutableBufferPointer { out in xs.withUnsafeBufferPointer { m.multiply($0.baseAddress!, tokens: tokens, into: out.baseAddress!) } }
            for t in 0..<tokens {
                for r in 0..<rows {
                    var want = 0.0
                    for c in 0..<cols { want += Double(dense[r * cols + c]) * Double(xs[t * cols + c]) }
                    XCTAssertEqual(Double(ys[t * rows + r]), want, accuracy: 1e-4 * max(1, abs(want)), "token \(t) row \(r) at \(sparsity)")
                }
            }
        }
    }
}
