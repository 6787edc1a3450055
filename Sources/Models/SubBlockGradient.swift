import CKernels
import COpenBLAS
import Foundation

/// The two halves of a Llama decoder block that block-wise reconstruction re-fits
/// separately: attention (RMSNorm, q/k/v, RoPE, causal grouped-query attention, o, the
/// residual) and the MLP (RMSNorm, SwiGLU, down, the residual).
public enum SubBlock: String, Sendable, CaseIterable {
    case attention, mlp

    /// The Linear layers trained, in the order `SubBlockGradient` takes and returns them.
    public var linears: [String] {
        switch self {
        case .attention: return ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
        case .mlp: return ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        }
    }
}

/// The squared error of a sub-block's output against a target and its gradient with
/// respect to the sub-block's Linear weights (the backward pass of block-wise
/// reconstruction; `backward` also gives the gradient at its input, for a whole-model
/// backward pass, `LlamaGradient`). `evaluate` treats the input as data, and the
/// norms and biases stay fixed: only the weights the masks apply to are re-fit.
///
/// Loss = Σ (y − target)² over every sample, token and feature (a sum, so the gradients of
/// calibration shards add up in shard order to the whole set's). Everything runs in F32 on
/// OpenBLAS like the forward pass; the loss is summed in F64.
public enum SubBlockGradient {
    public struct Result: Sendable {
        /// Σ (y − target)² (0 when the output's gradient was given).
        public let loss: Double
        /// ∂loss/∂W per Linear, in `SubBlock.linears` order, each shaped like its weight.
        public let gradients: [[Float]]
        /// The sub-block's output y (samples · tokens × hidden).
        public let output: [Float]
        /// ∂loss/∂x (samples · tokens × hidden): through the residual and through the norm
        /// and the Linear layers (`backward` only; empty otherwise).
        public var inputGradient: [Float] = []
    }

    /// Where the gradient at the sub-block's output comes from.
    enum Upstream {
        /// loss = Σ (y − target)²: ∂loss/∂y = 2(y − target).
        case target([Float])
        /// ∂loss/∂y given (the blocks and head after this one: a whole-model backward).
        case gradient([Float])
    }

    /// Loss and gradients of `part` of `block` with its Linear weights replaced by
    /// `weights` (in `part.linears` order), on `input` (samples · tokens × hidden).
    /// Without `gradients`, only the loss and the output (`Result.gradients` is empty).
    public static func evaluate(_ part: SubBlock, block: LlamaBlock, weights: [[Float]], input: [Float], target: [Float],
                                samples: Int, tokens t: Int, rope: RotaryTable, gradients: Bool = true) -> Result {
        let c = block.config, rows = samples * t
        precondition(input.count == rows * c.hiddenSize && target.count == input.count, "sub-block input and target are samples × tokens × hidden")
        precondition(weights.count == part.linears.count, "one weight per Linear of the sub-block")
        switch part {
        case .attention: return attention(block, weights, input, .target(target), samples: samples, tokens: t, rope: rope, gradients: gradients)
        case .mlp: return mlp(block, weights, input, .target(target), rows: rows, gradients: gradients)
        }
    }

    /// The backward pass of `part` of `block` (its own weights) on `input` for a given
    /// ∂loss/∂y at its output: the weight gradients and ∂loss/∂x (`Result.inputGradient`).
    public static func backward(_ part: SubBlock, block: LlamaBlock, input: [Float], outputGradient: [Float],
                                samples: Int, tokens t: Int, rope: RotaryTable) -> Result {
        let c = block.config, rows = samples * t
        precondition(input.count == rows * c.hiddenSize && outputGradient.count == input.count, "sub-block input and output gradient are samples × tokens × hidden")
        switch part {
        case .attention:
            return attention(block, [block.q, block.k, block.v, block.o], input, .gradient(outputGradient), samples: samples, tokens: t, rope: rope, gradients: true)
        case .mlp:
            return mlp(block, [block.gate, block.up, block.down], input, .gradient(outputGradient), rows: rows, gradients: true)
        }
    }

    /// The sub-block's output only (no gradient): the dense teacher's targets.
    public static func output(_ part: SubBlock, block: LlamaBlock, input: [Float], samples: Int, tokens t: Int, rope: RotaryTable) -> [Float] {
        let weights = part == .attention ? [block.q, block.k, block.v, block.o] : [block.gate, block.up, block.down]
        return evaluate(part, block: block, weights: weights, input: input, target: input, samples: samples, tokens: t, rope: rope, gradients: false).output
    }

    /// y = x + z; with a target, loss = Σ (y − target)²; returns (loss, y, dL/dz), which is
    /// dL/dy: 2(y − target), or the given gradient.
    private static func residual(_ x: [Float], _ z: [Float], _ upstream: Upstream) -> (Double, [Float], [Float]) {
        var y = x
        for i in 0..<x.count { y[i] += z[i] }
        switch upstream {
        case .gradient(let dy):
            return (0, y, dy)
        case .target(let target):
            var dy = [Float](repeating: 0, count: x.count), loss = 0.0
            for i in 0..<x.count {
                let d = y[i] - target[i]
                loss += Double(d) * Double(d)
                dy[i] = 2 * d
            }
            return (loss, y, dy)
        }
    }

    /// dL/dx of n = RMSNorm(x)·w given dL/dn, added to `into` (the residual's share):
    /// with r = (mean(x²) + ε)^(−½), dx_i = r·w_i·dn_i − x_i·r³·(Σ_j w_j·dn_j·x_j)/H.
    static func rmsNormBackward(_ x: [Float], weight: [Float], _ dn: [Float], rows: Int, width: Int, eps: Float, into dx: inout [Float]) {
        for r in 0..<rows {
            let at = r * width
            var sum: Float = 0, dot: Float = 0
            for i in 0..<width {
                sum += x[at + i] * x[at + i]
                dot += weight[i] * dn[at + i] * x[at + i]
            }
            let scale = 1 / (sum / Float(width) + eps).squareRoot()
            let k = scale * scale * scale * dot / Float(width)
            for i in 0..<width { dx[at + i] += scale * weight[i] * dn[at + i] - x[at + i] * k }
        }
    }

    /// dn = Σ dY_l · W_l over Linear layers sharing an input (their input gradients summed).
    private static func sharedInputGradient(_ parts: [(dy: [Float], weight: [Float], out: Int)], rows: Int, in inFeatures: Int) -> [Float] {
        var dn = [Float](repeating: 0, count: rows * inFeatures)
        for (l, p) in parts.enumerated() {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(inFeatures), Int32(p.out), 1, p.dy, Int32(p.out),
                        p.weight, Int32(inFeatures), l == 0 ? 0 : 1, &dn, Int32(inFeatures))
        }
        return dn
    }

    /// C (m×n) = Aᵀ·B with A (k×m, row stride lda) and B (k×n, row stride ldb): a weight
    /// gradient from the output gradients and the layer's inputs.
    private static func transposedProduct(_ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int, m: Int, n: Int, k: Int,
                                          beta: Float = 0, into c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), 1, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// dX (rows×in) = dY (rows×out) · W (out×in): the gradient flowing into a Linear's input.
    private static func inputGradient(_ dy: [Float], weight: [Float], rows: Int, out: Int, in inFeatures: Int) -> [Float] {
        var dx = [Float](repeating: 0, count: rows * inFeatures)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(inFeatures), Int32(out), 1, dy, Int32(out), weight, Int32(inFeatures), 0, &dx, Int32(inFeatures))
        return dx
    }

    /// dW (out×in) = dYᵀ · X.
    private static func weightGradient(_ dy: [Float], _ x: [Float], rows: Int, out: Int, in inFeatures: Int) -> [Float] {
        var dw = [Float](repeating: 0, count: out * inFeatures)
        dy.withUnsafeBufferPointer { d in x.withUnsafeBufferPointer { xb in dw.withUnsafeMutableBufferPointer {
            transposedProduct(d.baseAddress!, lda: out, xb.baseAddress!, ldb: inFeatures, m: out, n: inFeatures, k: rows, into: $0.baseAddress!, ldc: inFeatures)
        } } }
        return dw
    }

    private static func project(_ x: [Float], _ w: [Float], bias: [Float]?, rows: Int, out: Int, in inFeatures: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * out)
        x.withUnsafeBufferPointer { xb in w.withUnsafeBufferPointer { wb in y.withUnsafeMutableBufferPointer { yb in
            if let bias {
                bias.withUnsafeBufferPointer { linear(xb.baseAddress!, tokens: rows, weight: wb.baseAddress!, bias: $0.baseAddress!, inFeatures: inFeatures, outFeatures: out, into: yb.baseAddress!) }
            } else {
                linear(xb.baseAddress!, tokens: rows, weight: wb.baseAddress!, bias: nil, inFeatures: inFeatures, outFeatures: out, into: yb.baseAddress!)
            }
        } } }
        return y
    }

    private static func normed(_ x: [Float], weight: [Float], rows: Int, width: Int, eps: Float) -> [Float] {
        var n = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xb in n.withUnsafeMutableBufferPointer { rmsNorm(xb.baseAddress!, rows: rows, width: width, weight: weight, eps: eps, into: $0.baseAddress!) } }
        return n
    }

    private static func mlp(_ block: LlamaBlock, _ w: [[Float]], _ x: [Float], _ upstream: Upstream, rows: Int, gradients: Bool) -> Result {
        let c = block.config, h = c.hiddenSize, inter = c.intermediateSize
        let n = normed(x, weight: block.postNorm, rows: rows, width: h, eps: c.rmsNormEps)
        let g = project(n, w[0], bias: block.gateBias, rows: rows, out: inter, in: h)
        let u = project(n, w[1], bias: block.upBias, rows: rows, out: inter, in: h)
        var act = [Float](repeating: 0, count: rows * inter), sig = act
        // e^(−g) by CKernels' exp: the same bytes on every CPU (libm's varies by its code path).
        for i in 0..<sig.count { sig[i] = -g[i] }
        sig.withUnsafeMutableBufferPointer { pc_exp($0.baseAddress!, $0.baseAddress!, $0.count) }
        for i in 0..<act.count {
            sig[i] = 1 / (1 + sig[i])
            act[i] = g[i] * sig[i] * u[i]
        }
        let z = project(act, w[2], bias: block.downBias, rows: rows, out: h, in: inter)
        let (loss, y, dz) = residual(x, z, upstream)
        guard gradients else { return Result(loss: loss, gradients: [], output: y) }
        let dDown = weightGradient(dz, act, rows: rows, out: h, in: inter)
        let dAct = inputGradient(dz, weight: w[2], rows: rows, out: h, in: inter)
        var dg = [Float](repeating: 0, count: act.count), du = dg
        for i in 0..<act.count {
            // silu(g) = g·σ(g); silu′(g) = σ(g)·(1 + g·(1 − σ(g))).
            du[i] = dAct[i] * g[i] * sig[i]
            dg[i] = dAct[i] * u[i] * sig[i] * (1 + g[i] * (1 - sig[i]))
        }
        var result = Result(loss: loss, gradients: [weightGradient(dg, n, rows: rows, out: inter, in: h),
                                                    weightGradient(du, n, rows: rows, out: inter, in: h), dDown], output: y)
        if case .gradient(let dy) = upstream {
            let dn = sharedInputGradient([(dg, w[0], inter), (du, w[1], inter)], rows: rows, in: h)
            var dx = dy
            rmsNormBackward(x, weight: block.postNorm, dn, rows: rows, width: h, eps: c.rmsNormEps, into: &dx)
            result.inputGradient = dx
        }
        return result
    }

    private static func attention(_ block: LlamaBlock, _ w: [[Float]], _ x: [Float], _ upstream: Upstream,
                                  samples: Int, tokens t: Int, rope: RotaryTable, gradients: Bool) -> Result {
        let c = block.config, h = c.hiddenSize, hd = c.headDim, rows = samples * t
        let qOut = c.heads * hd, kvOut = c.kvHeads * hd, group = c.heads / c.kvHeads
        let scale = 1 / Float(hd).squareRoot()
        let n = normed(x, weight: block.inputNorm, rows: rows, width: h, eps: c.rmsNormEps)
        var q = project(n, w[0], bias: block.qBias, rows: rows, out: qOut, in: h)
        var k = project(n, w[1], bias: block.kBias, rows: rows, out: kvOut, in: h)
        let v = project(n, w[2], bias: block.vBias, rows: rows, out: kvOut, in: h)
        q.withUnsafeMutableBufferPointer { qb in k.withUnsafeMutableBufferPointer { kb in
            for s in 0..<samples {
                rope.apply(qb.baseAddress! + s * t * qOut, tokens: t, heads: c.heads, headDim: hd)
                rope.apply(kb.baseAddress! + s * t * kvOut, tokens: t, heads: c.kvHeads, headDim: hd)
            }
        } }
        // Forward: per sample and query head, P = softmax(scale·Q·Kᵀ) (causal), A = P·V.
        var probabilities = [Float](repeating: 0, count: samples * c.heads * t * t)
        var attn = [Float](repeating: 0, count: rows * qOut)
        q.withUnsafeBufferPointer { qb in k.withUnsafeBufferPointer { kb in v.withUnsafeBufferPointer { vb in
            probabilities.withUnsafeMutableBufferPointer { pb in attn.withUnsafeMutableBufferPointer { ab in
                for s in 0..<samples {
                    for head in 0..<c.heads {
                        let kv = head / group
                        let p = pb.baseAddress! + (s * c.heads + head) * t * t
                        let qh = qb.baseAddress! + s * t * qOut + head * hd, kh = kb.baseAddress! + s * t * kvOut + kv * hd
                        let vh = vb.baseAddress! + s * t * kvOut + kv * hd
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(t), Int32(t), Int32(hd), scale, qh, Int32(qOut), kh, Int32(kvOut), 0, p, Int32(t))
                        for i in 0..<t { VectorMath.causalSoftmax(p + i * t, count: i + 1, total: t) }
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(t), Int32(hd), Int32(t), 1, p, Int32(t), vh, Int32(kvOut),
                                    0, ab.baseAddress! + s * t * qOut + head * hd, Int32(qOut))
                    }
                }
            } }
        } } }
        let z = project(attn, w[3], bias: block.oBias, rows: rows, out: h, in: qOut)
        let (loss, y, dz) = residual(x, z, upstream)
        guard gradients else { return Result(loss: loss, gradients: [], output: y) }
        let dO = weightGradient(dz, attn, rows: rows, out: h, in: qOut)
        let dAttn = inputGradient(dz, weight: w[3], rows: rows, out: h, in: qOut)
        // Backward through attention: dV += Pᵀ·dA; dP = dA·Vᵀ; dS = P ⊙ (dP − rowsum(dP ⊙ P));
        // dQ = scale·dS·K; dK += scale·dSᵀ·Q.
        var dq = [Float](repeating: 0, count: rows * qOut), dk = [Float](repeating: 0, count: rows * kvOut), dv = dk
        var dp = [Float](repeating: 0, count: t * t)
        q.withUnsafeBufferPointer { qb in k.withUnsafeBufferPointer { kb in v.withUnsafeBufferPointer { vb in
            probabilities.withUnsafeBufferPointer { pb in dAttn.withUnsafeBufferPointer { dab in
                dq.withUnsafeMutableBufferPointer { dqb in dk.withUnsafeMutableBufferPointer { dkb in dv.withUnsafeMutableBufferPointer { dvb in
                    dp.withUnsafeMutableBufferPointer { dpb in
                        let d = dpb.baseAddress!
                        for s in 0..<samples {
                            for head in 0..<c.heads {
                                let kv = head / group
                                let p = pb.baseAddress! + (s * c.heads + head) * t * t
                                let qh = qb.baseAddress! + s * t * qOut + head * hd, kh = kb.baseAddress! + s * t * kvOut + kv * hd
                                let vh = vb.baseAddress! + s * t * kvOut + kv * hd, dah = dab.baseAddress! + s * t * qOut + head * hd
                                let dqh = dqb.baseAddress! + s * t * qOut + head * hd, dkh = dkb.baseAddress! + s * t * kvOut + kv * hd
                                let dvh = dvb.baseAddress! + s * t * kvOut + kv * hd
                                transposedProduct(p, lda: t, dah, ldb: qOut, m: t, n: hd, k: t, beta: 1, into: dvh, ldc: kvOut)
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(t), Int32(t), Int32(hd), 1, dah, Int32(qOut), vh, Int32(kvOut), 0, d, Int32(t))
                                for i in 0..<t {
                                    var dot: Float = 0
                                    for j in 0...i { dot += d[i * t + j] * p[i * t + j] }
                                    for j in 0..<t { d[i * t + j] = j <= i ? p[i * t + j] * (d[i * t + j] - dot) : 0 }
                                }
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(t), Int32(hd), Int32(t), scale, d, Int32(t), kh, Int32(kvOut), 0, dqh, Int32(qOut))
                                transposedProduct(d, lda: t, qh, ldb: qOut, m: t, n: hd, k: t, beta: 1, into: dkh, ldc: kvOut)
                                // dkh accumulates unscaled; scaled below with the whole dK.
                            }
                        }
                    }
                } } }
            } }
        } } }
        for i in 0..<dk.count { dk[i] *= scale }
        // RoPE is a rotation per position: its gradient is the inverse rotation.
        dq.withUnsafeMutableBufferPointer { qb in dk.withUnsafeMutableBufferPointer { kb in
            for s in 0..<samples {
                rope.apply(qb.baseAddress! + s * t * qOut, tokens: t, heads: c.heads, headDim: hd, inverse: true)
                rope.apply(kb.baseAddress! + s * t * kvOut, tokens: t, heads: c.kvHeads, headDim: hd, inverse: true)
            }
        } }
        var result = Result(loss: loss, gradients: [weightGradient(dq, n, rows: rows, out: qOut, in: h), weightGradient(dk, n, rows: rows, out: kvOut, in: h),
                                                    weightGradient(dv, n, rows: rows, out: kvOut, in: h), dO], output: y)
        if case .gradient(let dy) = upstream {
            let dn = sharedInputGradient([(dq, w[0], qOut), (dk, w[1], kvOut), (dv, w[2], kvOut)], rows: rows, in: h)
            var dx = dy
            rmsNormBackward(x, weight: block.inputNorm, dn, rows: rows, width: h, eps: c.rmsNormEps, into: &dx)
            result.inputGradient = dx
        }
        return result
    }
}
