import COpenBLAS
import Foundation
import Tensors

/// Called with each Linear layer's input during a forward pass: the layer's weight
/// name and its input (tokens × in_features, row-major). Calibration collects
/// statistics here (Wanda column norms, SparseGPT Hessians).
public typealias LinearInputHook = (_ weightName: String, _ input: UnsafeBufferPointer<Float>, _ tokens: Int) -> Void

/// One decoder block of a Llama-family model, weights in F32.
public struct LlamaBlock: Sendable {
    public let index: Int
    let config: LlamaConfig
    let inputNorm: [Float], postNorm: [Float]
    let q: [Float], k: [Float], v: [Float], o: [Float]
    let qBias: [Float]?, kBias: [Float]?, vBias: [Float]?
    let gate: [Float], up: [Float], down: [Float]

    /// Loads block `index`'s weights (about 12·hidden² floats: one block, never the model).
    public init(index: Int, config c: LlamaConfig, store: WeightStore) throws {
        self.index = index
        config = c
        let p = "model.layers.\(index)."
        let h = c.hiddenSize, qOut = c.heads * c.headDim, kvOut = c.kvHeads * c.headDim
        inputNorm = try store.load(p + "input_layernorm.weight", shape: [h])
        postNorm = try store.load(p + "post_attention_layernorm.weight", shape: [h])
        q = try store.load(p + "self_attn.q_proj.weight", shape: [qOut, h])
        k = try store.load(p + "self_attn.k_proj.weight", shape: [kvOut, h])
        v = try store.load(p + "self_attn.v_proj.weight", shape: [kvOut, h])
        o = try store.load(p + "self_attn.o_proj.weight", shape: [h, qOut])
        if c.attentionBias {
            qBias = try store.load(p + "self_attn.q_proj.bias", shape: [qOut])
            kBias = try store.load(p + "self_attn.k_proj.bias", shape: [kvOut])
            vBias = try store.load(p + "self_attn.v_proj.bias", shape: [kvOut])
        } else {
            qBias = nil; kBias = nil; vBias = nil
        }
        gate = try store.load(p + "mlp.gate_proj.weight", shape: [c.intermediateSize, h])
        up = try store.load(p + "mlp.up_proj.weight", shape: [c.intermediateSize, h])
        down = try store.load(p + "mlp.down_proj.weight", shape: [h, c.intermediateSize])
    }

    /// Runs the block on one sequence in place: x is tokens × hidden.
    public func forward(_ x: inout [Float], tokens t: Int, rope: RotaryTable, hook: LinearInputHook? = nil) {
        let c = config, h = c.hiddenSize, hd = c.headDim
        let qOut = c.heads * hd, kvOut = c.kvHeads * hd, inter = c.intermediateSize
        let p = "model.layers.\(index)."
        var normed = [Float](repeating: 0, count: t * h)
        var qs = [Float](repeating: 0, count: t * qOut)
        var ks = [Float](repeating: 0, count: t * kvOut)
        var vs = [Float](repeating: 0, count: t * kvOut)
        var attn = [Float](repeating: 0, count: t * qOut)
        var scores = [Float](repeating: 0, count: t * t)
        var projected = [Float](repeating: 0, count: t * h)

        x.withUnsafeBufferPointer { xb in normed.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: t, width: h, weight: inputNorm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
        normed.withUnsafeBufferPointer { n in
            if let hook {
                for name in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] { hook(p + name + ".weight", n, t) }
            }
            qs.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: t, weight: q, bias: qBias, inFeatures: h, outFeatures: qOut, into: $0.baseAddress!) }
            ks.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: t, weight: k, bias: kBias, inFeatures: h, outFeatures: kvOut, into: $0.baseAddress!) }
            vs.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: t, weight: v, bias: vBias, inFeatures: h, outFeatures: kvOut, into: $0.baseAddress!) }
        }
        rope.apply(&qs, tokens: t, heads: c.heads, headDim: hd)
        rope.apply(&ks, tokens: t, heads: c.kvHeads, headDim: hd)

        // Causal attention per head; query head h reads key/value head h / (heads / kvHeads).
        let group = c.heads / c.kvHeads
        let scale = 1 / Float(hd).squareRoot()
        qs.withUnsafeBufferPointer { qb in ks.withUnsafeBufferPointer { kb in vs.withUnsafeBufferPointer { vb in
            attn.withUnsafeMutableBufferPointer { ab in scores.withUnsafeMutableBufferPointer { sb in
                for head in 0..<c.heads {
                    let kvHead = head / group
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(t), Int32(t), Int32(hd), scale,
                                qb.baseAddress! + head * hd, Int32(qOut), kb.baseAddress! + kvHead * hd, Int32(kvOut),
                                0, sb.baseAddress!, Int32(t))
                    for i in 0..<t {
                        let row = sb.baseAddress! + i * t
                        var maxScore = -Float.infinity
                        for j in 0...i { maxScore = max(maxScore, row[j]) }
                        var sum: Float = 0
                        for j in 0...i { row[j] = expf(row[j] - maxScore); sum += row[j] }
                        let inv = 1 / sum
                        for j in 0...i { row[j] *= inv }
                        for j in (i + 1)..<max(t, i + 1) { row[j] = 0 }
                    }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(t), Int32(hd), Int32(t), 1,
                                sb.baseAddress!, Int32(t), vb.baseAddress! + kvHead * hd, Int32(kvOut),
                                0, ab.baseAddress! + head * hd, Int32(qOut))
                }
            } }
        } } }
        attn.withUnsafeBufferPointer { a in
            hook?(p + "self_attn.o_proj.weight", a, t)
            projected.withUnsafeMutableBufferPointer { linear(a.baseAddress!, tokens: t, weight: o, bias: nil, inFeatures: qOut, outFeatures: h, into: $0.baseAddress!) }
        }
        for i in 0..<(t * h) { x[i] += projected[i] }

        // SwiGLU MLP: down(silu(gate(x)) · up(x)).
        x.withUnsafeBufferPointer { xb in normed.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: t, width: h, weight: postNorm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
        var g = [Float](repeating: 0, count: t * inter)
        var u = [Float](repeating: 0, count: t * inter)
        normed.withUnsafeBufferPointer { n in
            if let hook {
                hook(p + "mlp.gate_proj.weight", n, t)
                hook(p + "mlp.up_proj.weight", n, t)
            }
            g.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: t, weight: gate, bias: nil, inFeatures: h, outFeatures: inter, into: $0.baseAddress!) }
            u.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: t, weight: up, bias: nil, inFeatures: h, outFeatures: inter, into: $0.baseAddress!) }
        }
        for i in 0..<(t * inter) { g[i] = g[i] / (1 + expf(-g[i])) * u[i] }
        g.withUnsafeBufferPointer { a in
            hook?(p + "mlp.down_proj.weight", a, t)
            projected.withUnsafeMutableBufferPointer { linear(a.baseAddress!, tokens: t, weight: down, bias: nil, inFeatures: inter, outFeatures: h, into: $0.baseAddress!) }
        }
        for i in 0..<(t * h) { x[i] += projected[i] }
    }
}

/// Rotary position embedding, Hugging Face's rotate-half convention: for a head vector
/// split in halves (a, b), position p rotates (a, b) → (a·cos − b·sin, b·cos + a·sin)
/// with angle p / θ^(2i/d) for pair i.
public struct RotaryTable: Sendable {
    let cos: [Float], sin: [Float]
    let half: Int

    public init(headDim: Int, theta: Double, maxTokens: Int) {
        half = headDim / 2
        var c = [Float](repeating: 0, count: maxTokens * half), s = c
        for pos in 0..<maxTokens {
            for i in 0..<half {
                // inv_freq in F32 as HF computes it, the angle in F32 too.
                let invFreq = Float(1.0 / pow(theta, Double(2 * i) / Double(headDim)))
                let angle = Float(pos) * invFreq
                c[pos * half + i] = cosf(angle)
                s[pos * half + i] = sinf(angle)
            }
        }
        cos = c
        sin = s
    }

    func apply(_ x: inout [Float], tokens: Int, heads: Int, headDim: Int) {
        x.withUnsafeMutableBufferPointer { b in
            for t in 0..<tokens {
                for h in 0..<heads {
                    let v = b.baseAddress! + (t * heads + h) * headDim
                    for i in 0..<half {
                        let a = v[i], bb = v[i + half]
                        let co = cos[t * half + i], si = sin[t * half + i]
                        v[i] = a * co - bb * si
                        v[i + half] = bb * co + a * si
                    }
                }
            }
        }
    }
}

/// A Llama-family causal LM, loaded block by block so memory holds one block at a time.
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    public let store: WeightStore
    private var embedding: [Float]?

    public init(config: LlamaConfig, store: WeightStore) {
        self.config = config
        self.store = store
    }

    /// Opens a checkpoint directory with its config.json.
    public convenience init(directory: String) throws {
        self.init(config: try LlamaConfig.load(directory), store: WeightStore(checkpoint: try Checkpoint(path: directory)))
    }

    private func embeddings() throws -> [Float] {
        if let embedding { return embedding }
        let e = try store.load("model.embed_tokens.weight", shape: [config.vocabSize, config.hiddenSize])
        embedding = e
        return e
    }

    /// Token ids → hidden states (tokens × hidden), decoding only the rows looked up.
    public func embed(_ tokens: [Int32]) throws -> [Float] {
        let h = config.hiddenSize
        var x = [Float](repeating: 0, count: tokens.count * h)
        for (t, id) in tokens.enumerated() {
            guard id >= 0, Int(id) < config.vocabSize else { throw ModelError("token id \(id) is outside the vocabulary (\(config.vocabSize))") }
            let row = try store.row("model.embed_tokens.weight", Int(id), width: h)
            for i in 0..<h { x[t * h + i] = row[i] }
        }
        return x
    }

    public func block(_ index: Int) throws -> LlamaBlock {
        try LlamaBlock(index: index, config: config, store: store)
    }

    /// Final norm and LM head: hidden (tokens × hidden) → logits (tokens × vocab).
    public func logits(_ x: [Float], tokens t: Int) throws -> [Float] {
        let c = config, h = c.hiddenSize
        let norm = try store.load("model.norm.weight", shape: [h])
        let head: [Float]
        if store.has("lm_head.weight") {
            head = try store.load("lm_head.weight", shape: [c.vocabSize, h])
        } else if c.tieWordEmbeddings {
            head = try embeddings()
        } else {
            throw ModelError("lm_head.weight is missing and tie_word_embeddings is false")
        }
        var normed = [Float](repeating: 0, count: t * h)
        x.withUnsafeBufferPointer { xb in normed.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: t, width: h, weight: norm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
        var out = [Float](repeating: 0, count: t * c.vocabSize)
        normed.withUnsafeBufferPointer { n in out.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: t, weight: head, bias: nil, inFeatures: h, outFeatures: c.vocabSize, into: $0.baseAddress!) } }
        return out
    }

    /// The whole forward pass for one sequence (tests, evaluation).
    public func forward(_ tokens: [Int32], hook: LinearInputHook? = nil) throws -> [Float] {
        let rope = RotaryTable(headDim: config.headDim, theta: config.ropeTheta, maxTokens: tokens.count)
        var x = try embed(tokens)
        for b in 0..<config.layers { try block(b).forward(&x, tokens: tokens.count, rope: rope, hook: hook) }
        return try logits(x, tokens: tokens.count)
    }

    /// Mean negative log-likelihood of each next token, and how many were scored.
    public static func nextTokenNLL(logits: [Float], tokens: [Int32], vocab: Int) -> (sum: Double, count: Int) {
        var total = 0.0
        for t in 0..<(tokens.count - 1) {
            let row = t * vocab
            var maxLogit = -Float.infinity
            for v in 0..<vocab { maxLogit = max(maxLogit, logits[row + v]) }
            var sum = 0.0
            for v in 0..<vocab { sum += Double(expf(logits[row + v] - maxLogit)) }
            total += (log(sum) + Double(maxLogit)) - Double(logits[row + Int(tokens[t + 1])])
        }
        return (total, max(tokens.count - 1, 0))
    }
}
