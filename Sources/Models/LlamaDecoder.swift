import CKernels
import COpenBLAS
import Foundation
import Tensors

/// A weight matrix (rows × cols, row-major) in compressed sparse rows: the nonzero values
/// row by row, their 16-bit column indices and where each row starts. At sparsity s it
/// holds (1 − s)·6 bytes a weight against 4 dense: a decode step, which reads every
/// weight once per token, reads less (at 90%, 0.6 bytes a weight).
public struct CSRMatrix: Sendable {
    public let rows: Int
    public let cols: Int
    let rowStart: [Int32]
    let columns: [UInt16]
    let values: [Float]

    /// Whether a rows × cols matrix fits the format (16-bit columns, 32-bit offsets).
    public static func fits(rows: Int, cols: Int) -> Bool { cols <= 1 << 16 && rows * cols < Int(Int32.max) }

    public init(dense: [Float], rows: Int, cols: Int) {
        precondition(dense.count == rows * cols && CSRMatrix.fits(rows: rows, cols: cols))
        self.rows = rows
        self.cols = cols
        var starts = [Int32](repeating: 0, count: rows + 1)
        var columns: [UInt16] = [], values: [Float] = []
        let nonzero = dense.reduce(0) { $0 + ($1 != 0 ? 1 : 0) }
        columns.reserveCapacity(nonzero)
        values.reserveCapacity(nonzero)
        for r in 0..<rows {
            for c in 0..<cols where dense[r * cols + c] != 0 {
                columns.append(UInt16(c))
                values.append(dense[r * cols + c])
            }
            starts[r + 1] = Int32(values.count)
        }
        rowStart = starts
        self.columns = columns
        self.values = values
    }

    /// Bytes the matrix occupies.
    public var bytes: Int { rowStart.count * 4 + columns.count * 2 + values.count * 4 }

    /// y (tokens × rows) = x (tokens × cols) · Wᵀ: one pass over W for every token (x is
    /// transposed so that each entry of W multiplies a contiguous run of tokens).
    public func multiply(_ x: UnsafePointer<Float>, tokens: Int, into y: UnsafeMutablePointer<Float>) {
        guard tokens > 1 else { return multiply(x, into: y) }
        var xt = [Float](repeating: 0, count: cols * tokens), yt = [Float](repeating: 0, count: rows * tokens)
        for t in 0..<tokens { for c in 0..<cols { xt[c * tokens + t] = x[t * cols + c] } }
        rowStart.withUnsafeBufferPointer { s in columns.withUnsafeBufferPointer { c in values.withUnsafeBufferPointer { v in
            xt.withUnsafeBufferPointer { xb in yt.withUnsafeMutableBufferPointer { yb in
                pc_csr_matmat(s.baseAddress!, c.baseAddress!, v.baseAddress!, rows, xb.baseAddress!, tokens, yb.baseAddress!)
            } }
        } } }
        for r in 0..<rows { for t in 0..<tokens { y[t * rows + r] = yt[r * tokens + t] } }
    }

    /// y = W·x.
    public func multiply(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        rowStart.withUnsafeBufferPointer { s in columns.withUnsafeBufferPointer { c in values.withUnsafeBufferPointer { v in
            pc_csr_matvec(s.baseAddress!, c.baseAddress!, v.baseAddress!, rows, x, y)
        } } }
    }
}

/// One Linear weight of the decoder, dense or sparse.
enum DecoderWeight: Sendable {
    case dense([Float], rows: Int, cols: Int)
    case sparse(CSRMatrix)

    var rows: Int {
        switch self {
        case .dense(_, let rows, _): return rows
        case .sparse(let m): return m.rows
        }
    }

    var bytes: Int {
        switch self {
        case .dense(let w, _, _): return w.count * 4
        case .sparse(let m): return m.bytes
        }
    }

    /// y (tokens × rows) = x (tokens × cols) · Wᵀ: one GEMM dense, one sparse product per token.
    func apply(_ x: UnsafePointer<Float>, tokens: Int, into y: UnsafeMutablePointer<Float>) {
        switch self {
        case .dense(let w, let rows, let cols):
            w.withUnsafeBufferPointer { wb in
                if tokens == 1 {
                    cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, wb.baseAddress!, Int32(cols), x, 1, 0, y, 1)
                } else {
                    linear(x, tokens: tokens, weight: wb.baseAddress!, bias: nil, inFeatures: cols, outFeatures: rows, into: y)
                }
            }
        case .sparse(let m):
            m.multiply(x, tokens: tokens, into: y)
        }
    }
}

/// A Llama-family model held whole in memory for generation: `prefill` runs a prompt and
/// fills the key/value cache, `step` decodes one token from it. Weights with at least
/// `sparseAbove` of their entries zero are kept in CSR (`CSRMatrix`) and multiplied by
/// the sparse kernel; the rest, and the output head, stay dense (OpenBLAS). What
/// `prune bench` times; its logits equal `LlamaModel.forward`'s within float rounding.
public final class LlamaDecoder {
    struct Layer {
        let inputNorm: [Float], postNorm: [Float]
        let q: DecoderWeight, k: DecoderWeight, v: DecoderWeight, o: DecoderWeight
        let qBias: [Float]?, kBias: [Float]?, vBias: [Float]?
        /// Llama's o_proj and MLP biases (FLAP's compensation for removed units).
        var oBias: [Float]? = nil, gateBias: [Float]? = nil, upBias: [Float]? = nil, downBias: [Float]? = nil
        let gate: DecoderWeight, up: DecoderWeight, down: DecoderWeight
    }

    public let config: LlamaConfig
    let layers: [Layer]
    let embedding: [Float]
    let finalNorm: [Float]
    let head: DecoderWeight
    let rope: RotaryTable
    public let maxTokens: Int
    /// Linear weights held sparse, of all of them.
    public private(set) var sparseWeights = 0, linearWeights = 0
    /// Parameters of the checkpoint (every tensor's elements).
    public let parameters: Int
    /// Bytes of every weight as held (CSR for the sparse ones).
    public private(set) var weightBytes = 0
    /// Cached keys and values per layer: maxTokens × (kv heads · head_dim) each.
    private var keys: [[Float]], values: [[Float]]
    /// Positions in the cache.
    public private(set) var position = 0

    public init(directory: String, maxTokens: Int, sparseAbove: Double? = 0.5) throws {
        let config = try LlamaConfig.load(directory), checkpoint = try Checkpoint(path: directory)
        try config.validate(against: checkpoint, file: (checkpoint.directory as NSString).appendingPathComponent("config.json"))
        try config.checkSequenceLength(maxTokens, what: "tokens")
        self.config = config
        self.maxTokens = maxTokens
        parameters = checkpoint.parameterCount
        let store = WeightStore(checkpoint: checkpoint)
        var sparse = 0, total = 0, bytes = 0
        func weight(_ name: String, rows: Int, cols: Int) throws -> DecoderWeight {
            let w = try store.load(name, shape: [rows, cols])
            total += 1
            let zeros = w.reduce(0) { $0 + ($1 == 0 ? 1 : 0) }
            let made: DecoderWeight
            if let sparseAbove, Double(zeros) >= sparseAbove * Double(w.count), CSRMatrix.fits(rows: rows, cols: cols) {
                sparse += 1
                made = .sparse(CSRMatrix(dense: w, rows: rows, cols: cols))
            } else {
                made = .dense(w, rows: rows, cols: cols)
            }
            bytes += made.bytes
            return made
        }
        let h = config.hiddenSize, kv = config.kvHeads * config.headDim
        layers = try (0..<config.layers).map { b in
            let p = "model.layers.\(b).", own = config.block(b), q = own.heads * config.headDim, ff = own.intermediateSize
            var layer = Layer(inputNorm: try store.load(p + "input_layernorm.weight", shape: [h]),
                         postNorm: try store.load(p + "post_attention_layernorm.weight", shape: [h]),
                         q: try weight(p + "self_attn.q_proj.weight", rows: q, cols: h), k: try weight(p + "self_attn.k_proj.weight", rows: kv, cols: h),
                         v: try weight(p + "self_attn.v_proj.weight", rows: kv, cols: h), o: try weight(p + "self_attn.o_proj.weight", rows: h, cols: q),
                         qBias: config.attentionBias ? try store.load(p + "self_attn.q_proj.bias", shape: [q]) : nil,
                         kBias: config.attentionBias ? try store.load(p + "self_attn.k_proj.bias", shape: [kv]) : nil,
                         vBias: config.attentionBias ? try store.load(p + "self_attn.v_proj.bias", shape: [kv]) : nil,
                         gate: try weight(p + "mlp.gate_proj.weight", rows: ff, cols: h), up: try weight(p + "mlp.up_proj.weight", rows: ff, cols: h),
                         down: try weight(p + "mlp.down_proj.weight", rows: h, cols: ff))
            if config.outputBias { layer.oBias = try store.load(p + "self_attn.o_proj.bias", shape: [h]) }
            if config.mlpBias {
                layer.gateBias = try store.load(p + "mlp.gate_proj.bias", shape: [ff])
                layer.upBias = try store.load(p + "mlp.up_proj.bias", shape: [ff])
                layer.downBias = try store.load(p + "mlp.down_proj.bias", shape: [h])
            }
            return layer
        }
        embedding = try store.load("model.embed_tokens.weight", shape: [config.vocabSize, h])
        finalNorm = try store.load("model.norm.weight", shape: [h])
        let headWeights = store.has("lm_head.weight") ? try store.load("lm_head.weight", shape: [config.vocabSize, h]) : embedding
        head = .dense(headWeights, rows: config.vocabSize, cols: h)
        bytes += (embedding.count + (store.has("lm_head.weight") ? headWeights.count : 0)) * 4
        sparseWeights = sparse
        linearWeights = total
        weightBytes = bytes
        rope = RotaryTable(headDim: config.headDim, theta: config.ropeTheta, maxTokens: maxTokens)
        keys = layers.map { _ in [Float](repeating: 0, count: maxTokens * kv) }
        values = keys
    }

    /// Forgets the cache.
    public func reset() { position = 0 }

    /// Runs `tokens` from the current position (a prompt after `reset`), filling the
    /// cache; returns the last token's logits.
    public func prefill(_ tokens: [Int32]) throws -> [Float] {
        try run(tokens)
    }

    /// One token after the cached ones; returns its logits.
    public func step(_ token: Int32) throws -> [Float] {
        try run([token])
    }

    /// Adds a bias (Qwen2's q/k/v; Llama's o and MLP biases) to every row.
    private static func add(_ bias: [Float]?, to y: inout [Float], rows: Int) {
        guard let bias else { return }
        for r in 0..<rows { for j in bias.indices { y[r * bias.count + j] += bias[j] } }
    }

    private func run(_ tokens: [Int32]) throws -> [Float] {
        let c = config, h = c.hiddenSize, t = tokens.count, hd = c.headDim
        let widestQ = c.heads * hd, kvOut = c.kvHeads * hd, widestFF = c.intermediateSize
        guard t > 0, position + t <= maxTokens else { throw ModelError("\(position + t) tokens, more than the decoder's \(maxTokens)") }
        var x = [Float](repeating: 0, count: t * h)
        for (i, id) in tokens.enumerated() {
            guard id >= 0, Int(id) < c.vocabSize else { throw ModelError("token id \(id) is outside the vocabulary (\(c.vocabSize))") }
            for j in 0..<h { x[i * h + j] = embedding[Int(id) * h + j] }
        }
        var normed = [Float](repeating: 0, count: t * h), projected = normed
        var qs = [Float](repeating: 0, count: t * widestQ), attn = qs
        var ks = [Float](repeating: 0, count: t * kvOut), vs = ks
        var g = [Float](repeating: 0, count: t * widestFF), u = g
        var scores = [Float](repeating: 0, count: position + t)
        let scale = 1 / Float(hd).squareRoot()
        let start = position
        for (b, layer) in layers.enumerated() {
            // The buffers fit the widest block; a block's own widths lay out its rows.
            let own = c.block(b), heads = own.heads, qOut = heads * hd, ff = own.intermediateSize, group = heads / c.kvHeads
            x.withUnsafeBufferPointer { xb in normed.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: t, width: h, weight: layer.inputNorm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
            normed.withUnsafeBufferPointer { n in
                qs.withUnsafeMutableBufferPointer { layer.q.apply(n.baseAddress!, tokens: t, into: $0.baseAddress!) }
                ks.withUnsafeMutableBufferPointer { layer.k.apply(n.baseAddress!, tokens: t, into: $0.baseAddress!) }
                vs.withUnsafeMutableBufferPointer { layer.v.apply(n.baseAddress!, tokens: t, into: $0.baseAddress!) }
            }
            LlamaDecoder.add(layer.qBias, to: &qs, rows: t)
            LlamaDecoder.add(layer.kBias, to: &ks, rows: t)
            LlamaDecoder.add(layer.vBias, to: &vs, rows: t)
            // RoPE at the absolute positions, then the new keys and values into the cache.
            qs.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: t, heads: heads, headDim: hd, from: start) }
            ks.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: t, heads: c.kvHeads, headDim: hd, from: start) }
            keys[b].withUnsafeMutableBufferPointer { (($0.baseAddress! + start * kvOut)).update(from: ks, count: t * kvOut) }
            values[b].withUnsafeMutableBufferPointer { (($0.baseAddress! + start * kvOut)).update(from: vs, count: t * kvOut) }
            // Causal attention of each new position over the cache up to it.
            keys[b].withUnsafeBufferPointer { kc in values[b].withUnsafeBufferPointer { vc in
                qs.withUnsafeBufferPointer { qb in attn.withUnsafeMutableBufferPointer { ab in scores.withUnsafeMutableBufferPointer { sb in
                    for i in 0..<t {
                        let seen = start + i + 1
                        for head in 0..<heads {
                            let kvHead = head / group
                            let query = qb.baseAddress! + i * qOut + head * hd
                            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(seen), Int32(hd), scale, kc.baseAddress! + kvHead * hd, Int32(kvOut),
                                        query, 1, 0, sb.baseAddress!, 1)
                            VectorMath.causalSoftmax(sb.baseAddress!, count: seen, total: seen)
                            cblas_sgemv(CblasRowMajor, CblasTrans, Int32(seen), Int32(hd), 1, vc.baseAddress! + kvHead * hd, Int32(kvOut),
                                        sb.baseAddress!, 1, 0, ab.baseAddress! + i * qOut + head * hd, 1)
                        }
                    }
                } } }
            } }
            attn.withUnsafeBufferPointer { a in projected.withUnsafeMutableBufferPointer { layer.o.apply(a.baseAddress!, tokens: t, into: $0.baseAddress!) } }
            LlamaDecoder.add(layer.oBias, to: &projected, rows: t)
            for i in 0..<(t * h) { x[i] += projected[i] }
            x.withUnsafeBufferPointer { xb in normed.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: t, width: h, weight: layer.postNorm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
            normed.withUnsafeBufferPointer { n in
                g.withUnsafeMutableBufferPointer { layer.gate.apply(n.baseAddress!, tokens: t, into: $0.baseAddress!) }
                u.withUnsafeMutableBufferPointer { layer.up.apply(n.baseAddress!, tokens: t, into: $0.baseAddress!) }
            }
            LlamaDecoder.add(layer.gateBias, to: &g, rows: t)
            LlamaDecoder.add(layer.upBias, to: &u, rows: t)
            g.withUnsafeMutableBufferPointer { gb in u.withUnsafeBufferPointer { VectorMath.swiGLU(gb.baseAddress!, $0.baseAddress!, count: t * ff) } }
            g.withUnsafeBufferPointer { a in projected.withUnsafeMutableBufferPointer { layer.down.apply(a.baseAddress!, tokens: t, into: $0.baseAddress!) } }
            LlamaDecoder.add(layer.downBias, to: &projected, rows: t)
            for i in 0..<(t * h) { x[i] += projected[i] }
        }
        position += t
        // Only the last position's logits.
        var last = [Float](repeating: 0, count: h)
        x.withUnsafeBufferPointer { xb in last.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress! + (t - 1) * h, rows: 1, width: h, weight: finalNorm, eps: c.rmsNormEps, into: $0.baseAddress!) } }
        var logits = [Float](repeating: 0, count: c.vocabSize)
        last.withUnsafeBufferPointer { n in logits.withUnsafeMutableBufferPointer { head.apply(n.baseAddress!, tokens: 1, into: $0.baseAddress!) } }
        return logits
    }
}
