import CKernels
import COpenBLAS
import Foundation
import Tensors

/// The whole-model backward pass of a Llama-family causal LM: the summed next-token
/// cross-entropy of one sequence, Σ_t −log p(token_{t+1} | tokens_≤t), and its gradient
/// with respect to every decoder block's Linear weights (what gradient-based importance,
/// Taylor and Fisher, and masked fine-tuning need). Embeddings, norms and the LM head are
/// held fixed: nothing is computed for them.
///
/// The forward pass keeps each block's input and the hidden state between its two halves
/// (2 × tokens × hidden floats a block); the backward pass runs the head's gradient back
/// through the final norm, then block after block from the last, each half re-running
/// its own forward (`SubBlockGradient.backward`), so memory holds one block's
/// activations at a time. F32 on OpenBLAS, the loss summed in F64.
public enum LlamaGradient {
    /// The loss of `tokens` and ∂loss/∂W for every block's Linear weights: `body` gets each
    /// weight's name and gradient (shaped like the weight) once, from the last block to the
    /// first, so a caller can accumulate without holding them all. `blocks` are the
    /// model's blocks with the weights to differentiate at (pruned ones, for instance).
    /// Returns the summed negative log-likelihood and how many tokens it scored.
    @discardableResult
    public static func evaluate(_ model: LlamaModel, blocks: [LlamaBlock], tokens: [Int32],
                                body: (_ name: String, _ gradient: [Float]) throws -> Void) throws -> (loss: Double, count: Int) {
        let c = model.config, h = c.hiddenSize, t = tokens.count, vocab = c.vocabSize
        guard t >= 2 else { throw ModelError("a gradient needs a sequence of at least 2 tokens, not \(t)") }
        guard blocks.count == c.layers else { throw ModelError("\(blocks.count) blocks for a model of \(c.layers)") }
        try c.checkSequenceLength(t, what: "gradient sequence")
        let rope = RotaryTable(headDim: c.headDim, theta: c.ropeTheta, maxTokens: t)

        // Forward, keeping each half's input.
        var x = try model.embed(tokens)
        var inputs: [(attention: [Float], mlp: [Float])] = []
        inputs.reserveCapacity(blocks.count)
        for block in blocks {
            try Cancellation.checkpoint()
            let mid = SubBlockGradient.output(.attention, block: block, input: x, samples: 1, tokens: t, rope: rope)
            let out = SubBlockGradient.output(.mlp, block: block, input: mid, samples: 1, tokens: t, rope: rope)
            inputs.append((x, mid))
            x = out
        }

        // Head: logits = RMSNorm(x)·w · headᵀ; dlogits = softmax − onehot(next) per
        // position but the last (which predicts nothing).
        let (norm, head) = try model.head()
        var normed = [Float](repeating: 0, count: t * h)
        x.withUnsafeBufferPointer { xb in normed.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: t, width: h, weight: norm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
        var logits = [Float](repeating: 0, count: t * vocab)
        normed.withUnsafeBufferPointer { n in logits.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: t, weight: head, bias: nil, inFeatures: h, outFeatures: vocab, into: $0.baseAddress!) } }
        var loss = 0.0
        logits.withUnsafeMutableBufferPointer { lb in
            for p in 0..<t {
                let row = lb.baseAddress! + p * vocab
                guard p < t - 1 else {
                    row.update(repeating: 0, count: vocab)
                    continue
                }
                var top = -Float.infinity
                for v in 0..<vocab { top = max(top, row[v]) }
                for v in 0..<vocab { row[v] -= top }
                // CKernels' exp: the same bytes on every CPU (libm's varies by its code path).
                pc_exp(row, row, vocab)
                var sum = 0.0
                for v in 0..<vocab { sum += Double(row[v]) }
                let next = Int(tokens[p + 1])
                loss += log(sum) - Double(logf(max(row[next], .leastNonzeroMagnitude)))
                let inverse = Float(1 / sum)
                for v in 0..<vocab { row[v] *= inverse }
                row[next] -= 1
            }
        }
        // dNormed (t × h) = dlogits (t × vocab) · head (vocab × h).
        var dn = [Float](repeating: 0, count: t * h)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(t), Int32(h), Int32(vocab), 1, logits, Int32(vocab), head, Int32(h), 0, &dn, Int32(h))
        logits = []
        var dx = [Float](repeating: 0, count: t * h)
        SubBlockGradient.rmsNormBackward(x, weight: norm, dn, rows: t, width: h, eps: c.rmsNormEps, into: &dx)

        for (b, block) in blocks.enumerated().reversed() {
            try Cancellation.checkpoint()
            for part in [SubBlock.mlp, .attention] {
                let input = part == .mlp ? inputs[b].mlp : inputs[b].attention
                let r = SubBlockGradient.backward(part, block: block, input: input, outputGradient: dx, samples: 1, tokens: t, rope: rope)
                for (l, name) in part.linears.enumerated() { try body("model.layers.\(block.index).\(name).weight", r.gradients[l]) }
                dx = r.inputGradient
            }
            inputs[b] = ([], [])
        }
        return (loss, t - 1)
    }
}
