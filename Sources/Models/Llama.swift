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
    /// Llama's o_proj bias (`attention_bias`) and MLP biases (`mlp_bias`): FLAP's
    /// compensation for removed units.
    let oBias: [Float]?, gateBias: [Float]?, upBias: [Float]?, downBias: [Float]?
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
        oBias = c.outputBias ? try store.load(p + "self_attn.o_proj.bias", shape: [h]) : nil
        gateBias = c.mlpBias ? try store.load(p + "mlp.gate_proj.bias", shape: [c.intermediateSize]) : nil
        upBias = c.mlpBias ? try store.load(p + "mlp.up_proj.bias", shape: [c.intermediateSize]) : nil
        downBias = c.mlpBias ? try store.load(p + "mlp.down_proj.bias", shape: [h]) : nil
        gate = try store.load(p + "mlp.gate_proj.weight", shape: [c.intermediateSize, h])
        up = try store.load(p + "mlp.up_proj.weight", shape: [c.intermediateSize, h])
        down = try store.load(p + "mlp.down_proj.weight", shape: [h, c.intermediateSize])
    }

    /// Runs the block on one sequence in place: x is tokens × hidden.
    public func forward(_ x: inout [Float], tokens t: Int, rope: RotaryTable, hook: LinearInputHook? = nil) {
        forward(&x, samples: 1, tokens: t, rope: rope, hook: hook)
    }

    /// Runs the block in place on `samples` sequences of `tokens` tokens each: x is
    /// (samples · tokens) × hidden, sequence after sequence.
    ///
    /// Each Linear layer is one GEMM over every sequence's rows, so its weight is packed
    /// once rather than once per sequence; norms, RoPE and attention run per sequence.
    /// `hook` sees each Linear's input one sequence at a time, in sequence order, as a
    /// pass over one sequence at a time would show it. With `statisticsOnly` the pass
    /// stops once down_proj's input has been shown (x is then left as it was half-way):
    /// calibration that only gathers statistics skips the last GEMM.
    public func forward(_ x: inout [Float], samples: Int, tokens t: Int, rope: RotaryTable, statisticsOnly: Bool = false,
                        hook: LinearInputHook? = nil) {
        let c = config, h = c.hiddenSize, hd = c.headDim
        let qOut = c.heads * hd, kvOut = c.kvHeads * hd, inter = c.intermediateSize
        let rows = samples * t
        precondition(x.count == rows * h, "block \(index): \(x.count) values for \(samples) × \(t) tokens")
        let p = "model.layers.\(index)."
        // Every buffer is written in full before it is read (GEMMs with β = 0, norms).
        var normed = VectorMath.scratch(rows * h)
        var qs = VectorMath.scratch(rows * qOut)
        var ks = VectorMath.scratch(rows * kvOut)
        var vs = VectorMath.scratch(rows * kvOut)
        var attn = VectorMath.scratch(rows * qOut)
        var projected = VectorMath.scratch(rows * h)

        /// Shows the hook a Linear's input, one sequence at a time.
        func show(_ names: [String], _ input: UnsafeBufferPointer<Float>, width: Int) {
            guard let hook else { return }
            for name in names {
                for s in 0..<samples { hook(p + name + ".weight", UnsafeBufferPointer(rebasing: input[(s * t * width)..<((s + 1) * t * width)]), t) }
            }
        }

        x.withUnsafeBufferPointer { xb in normed.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: rows, width: h, weight: inputNorm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
        normed.withUnsafeBufferPointer { n in
            show(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], n, width: h)
            qs.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: rows, weight: q, bias: qBias, inFeatures: h, outFeatures: qOut, into: $0.baseAddress!) }
            ks.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: rows, weight: k, bias: kBias, inFeatures: h, outFeatures: kvOut, into: $0.baseAddress!) }
            vs.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: rows, weight: v, bias: vBias, inFeatures: h, outFeatures: kvOut, into: $0.baseAddress!) }
        }

        // Per sequence: RoPE (positions restart at 0), then causal attention, one key/value
        // head at a time. The `group` query heads that read the same key/value head are
        // stacked position-major (row i·group + r is query head kvHead·group + r at position
        // i), so each GEMM serves all of them, and the rows are cut into blocks of `span`
        // positions: a block's queries see only the keys up to its last position, which
        // skips most of the masked upper triangle (62.5% of the full work for 4 blocks).
        let group = c.heads / c.kvHeads
        let scale = 1 / Float(hd).squareRoot()
        let span = min(t, 64)
        var stackedQ = VectorMath.scratch(t * group * hd)
        var stackedOut = VectorMath.scratch(t * group * hd)
        var scores = VectorMath.scratch(span * group * t)  // one block of stacked query rows × keys
        qs.withUnsafeMutableBufferPointer { qAll in ks.withUnsafeMutableBufferPointer { kAll in vs.withUnsafeBufferPointer { vAll in
            attn.withUnsafeMutableBufferPointer { aAll in scores.withUnsafeMutableBufferPointer { sb in
                stackedQ.withUnsafeMutableBufferPointer { sq in stackedOut.withUnsafeMutableBufferPointer { so in
                    let groupWidth = group * hd
                    for s in 0..<samples {
                        let qb = qAll.baseAddress! + s * t * qOut, kb = kAll.baseAddress! + s * t * kvOut
                        let vb = vAll.baseAddress! + s * t * kvOut, ab = aAll.baseAddress! + s * t * qOut
                        rope.apply(qb, tokens: t, heads: c.heads, headDim: hd)
                        rope.apply(kb, tokens: t, heads: c.kvHeads, headDim: hd)
                        for kvHead in 0..<c.kvHeads {
                            for i in 0..<t {
                                (sq.baseAddress! + i * groupWidth).update(from: qb + i * qOut + kvHead * groupWidth, count: groupWidth)
                            }
                            var first = 0
                            while first < t {
                                let end = min(first + span, t), rows = (end - first) * group
                                // scores (rows × end) = Q_block · K[0..<end]ᵀ · scale
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(end), Int32(hd), scale,
                                            sq.baseAddress! + first * groupWidth, Int32(hd), kb + kvHead * hd, Int32(kvOut),
                                            0, sb.baseAddress!, Int32(end))
                                for row in 0..<rows {
                                    VectorMath.causalSoftmax(sb.baseAddress! + row * end, count: first + row / group + 1, total: end)
                                }
                                // out (rows × hd) = scores · V[0..<end]
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(hd), Int32(end), 1,
                                            sb.baseAddress!, Int32(end), vb + kvHead * hd, Int32(kvOut),
                                            0, so.baseAddress! + first * groupWidth, Int32(hd))
                                first = end
                            }
                            for i in 0..<t {
                                (ab + i * qOut + kvHead * groupWidth).update(from: so.baseAddress! + i * groupWidth, count: groupWidth)
                            }
                        }
                    }
                } }
            } }
        } } }
        x.withUnsafeMutableBufferPointer { xb in
            attn.withUnsafeBufferPointer { a in
                show(["self_attn.o_proj"], a, width: qOut)
                projected.withUnsafeMutableBufferPointer { linear(a.baseAddress!, tokens: rows, weight: o, bias: oBias, inFeatures: qOut, outFeatures: h, into: $0.baseAddress!) }
            }
            projected.withUnsafeBufferPointer { VectorMath.add($0.baseAddress!, into: xb.baseAddress!, count: rows * h) }
        }

        // SwiGLU MLP: down(silu(gate(x)) · up(x)).
        x.withUnsafeBufferPointer { xb in normed.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: rows, width: h, weight: postNorm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
        var g = VectorMath.scratch(rows * inter)
        var u = VectorMath.scratch(rows * inter)
        normed.withUnsafeBufferPointer { n in
            show(["mlp.gate_proj", "mlp.up_proj"], n, width: h)
            g.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: rows, weight: gate, bias: gateBias, inFeatures: h, outFeatures: inter, into: $0.baseAddress!) }
            u.withUnsafeMutableBufferPointer { linear(n.baseAddress!, tokens: rows, weight: up, bias: upBias, inFeatures: h, outFeatures: inter, into: $0.baseAddress!) }
        }
        g.withUnsafeMutableBufferPointer { gb in u.withUnsafeBufferPointer { VectorMath.swiGLU(gb.baseAddress!, $0.baseAddress!, count: rows * inter) } }
        g.withUnsafeBufferPointer { a in show(["mlp.down_proj"], a, width: inter) }
        if statisticsOnly { return }
        x.withUnsafeMutableBufferPointer { xb in
            g.withUnsafeBufferPointer { a in
                projected.withUnsafeMutableBufferPointer { linear(a.baseAddress!, tokens: rows, weight: down, bias: downBias, inFeatures: inter, outFeatures: h, into: $0.baseAddress!) }
            }
            projected.withUnsafeBufferPointer { VectorMath.add($0.baseAddress!, into: xb.baseAddress!, count: rows * h) }
        }
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

    /// Rotates one sequence's heads in place: x is tokens × (heads · headDim). `inverse`
    /// rotates back (the transpose: a gradient through RoPE); multiplying sin by ±1 is
    /// exact, so the forward rotation's bits do not depend on the flag's existence.
    /// `from` is the first token's position (a decode step's place after the cache).
    func apply(_ x: UnsafeMutablePointer<Float>, tokens: Int, heads: Int, headDim: Int, inverse: Bool = false, from start: Int = 0) {
        let direction: Float = inverse ? -1 : 1
        for t in 0..<tokens {
            let p = start + t
            for h in 0..<heads {
                let v = x + (t * heads + h) * headDim
                for i in 0..<half {
                    let a = v[i], bb = v[i + half]
                    let co = cos[p * half + i], si = direction * sin[p * half + i]
                    v[i] = a * co - bb * si
                    v[i + half] = bb * co + a * si
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

    /// Opens a checkpoint directory with its config.json, checked against the tensors.
    public convenience init(directory: String) throws {
        let config = try LlamaConfig.load(directory), checkpoint = try Checkpoint(path: directory)
        try config.validate(against: checkpoint, file: (checkpoint.directory as NSString).appendingPathComponent("config.json"))
        self.init(config: config, store: WeightStore(checkpoint: checkpoint))
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
        try LlamaBlock(index: index, config: config.block(index), store: store)
    }

    /// The final norm's weight and the LM head (vocab × hidden; the embeddings when tied).
    func head() throws -> (norm: [Float], head: [Float]) {
        let c = config
        let norm = try store.load("model.norm.weight", shape: [c.hiddenSize])
        if store.has("lm_head.weight") { return (norm, try store.load("lm_head.weight", shape: [c.vocabSize, c.hiddenSize])) }
        guard c.tieWordEmbeddings else { throw ModelError("lm_head.weight is missing and tie_word_embeddings is false") }
        return (norm, try embeddings())
    }

    /// Final norm and LM head: hidden (tokens × hidden) → logits (tokens × vocab).
    public func logits(_ x: [Float], tokens t: Int) throws -> [Float] {
        let c = config, h = c.hiddenSize
        let (norm, head) = try self.head()
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
