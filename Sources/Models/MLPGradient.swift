import COpenBLAS
import Foundation

/// Softmax cross-entropy of an MLP classifier (`MLPModel`) over a batch, and its gradient
/// with respect to every weight and bias: the whole-model backward pass that training and
/// gradient-based importance run on.
///
/// Sums, not means, over the batch's rows (loss in F64): a batch split over workers gives
/// per-shard sums that add up, in a fixed shard order, to the whole batch's; the optimizer
/// divides by the batch size once.
public enum MLPGradient {
    /// An MLP's trainable tensors, in layer order: weight out × in (row-major), bias [out].
    public struct Parameters: Sendable, Equatable {
        public var weights: [[Float]]
        public var biases: [[Float]?]
        public init(weights: [[Float]], biases: [[Float]?]) {
            self.weights = weights
            self.biases = biases
        }
    }

    public struct Result: Sendable {
        /// Σ over rows of −log softmax(logits)[label].
        public let loss: Double
        /// Rows whose largest logit is their label (the first on ties).
        public let correct: Int
        /// ∂loss/∂parameters, shaped like them (empty without `gradients`).
        public let gradients: Parameters
    }

    /// Loss, accuracy count and (with `gradients`) the gradient of `model`'s architecture
    /// with `parameters` on `x` (rows × input) with `labels` (each in 0..<classes).
    public static func evaluate(_ model: MLPModel, parameters p: Parameters, x: [Float], labels: [Int32], rows: Int,
                                gradients: Bool = true) -> Result {
        let layers = model.layers, classes = model.classes
        precondition(x.count == rows * model.config.input && labels.count == rows, "MLP batch: rows × input values and one label per row")
        precondition(p.weights.count == layers.count && p.biases.count == layers.count, "one weight and bias slot per layer")
        precondition(labels.allSatisfy { $0 >= 0 && Int($0) < classes }, "labels are class indices")
        // Forward, keeping each layer's input and pre-activation.
        var inputs: [[Float]] = [], preActivations: [[Float]] = []
        var a = x
        for (l, layer) in layers.enumerated() {
            var z = [Float](repeating: 0, count: rows * layer.outFeatures)
            if rows > 0 {
                a.withUnsafeBufferPointer { input in
                    p.weights[l].withUnsafeBufferPointer { w in
                        z.withUnsafeMutableBufferPointer { y in
                            if let bias = p.biases[l] {
                                bias.withUnsafeBufferPointer { linear(input.baseAddress!, tokens: rows, weight: w.baseAddress!, bias: $0.baseAddress!,
                                                                      inFeatures: layer.inFeatures, outFeatures: layer.outFeatures, into: y.baseAddress!) }
                            } else {
                                linear(input.baseAddress!, tokens: rows, weight: w.baseAddress!, bias: nil,
                                       inFeatures: layer.inFeatures, outFeatures: layer.outFeatures, into: y.baseAddress!)
                            }
                        }
                    }
                }
            }
            inputs.append(a)
            preActivations.append(z)
            a = z
            MLPModel.apply(layer.activation, to: &a)
        }

        // Softmax cross-entropy per row; its gradient with respect to the logits.
        var loss = 0.0, correct = 0
        var delta = [Float](repeating: 0, count: rows * classes)
        for r in 0..<rows {
            let logits = a[(r * classes)..<((r + 1) * classes)]
            let top = logits.max()!
            var sum = 0.0
            for v in logits { sum += Foundation.exp(Double(v - top)) }
            let label = Int(labels[r])
            loss += Foundation.log(sum) - Double(logits[logits.startIndex + label] - top)
            if MLPModel.argmax(Array(logits), rows: 1, classes: classes)[0] == label { correct += 1 }
            guard gradients else { continue }
            for c in 0..<classes { delta[r * classes + c] = Float(Foundation.exp(Double(logits[logits.startIndex + c] - top)) / sum) }
            delta[r * classes + label] -= 1
        }
        guard gradients else { return Result(loss: loss, correct: correct, gradients: Parameters(weights: [], biases: [])) }

        // Backward: δ ← δ ⊙ act′(z); ∂W = δᵀ·input, ∂b = Σ rows δ; δ ← δ·W for the layer before.
        var dW = p.weights.map { [Float](repeating: 0, count: $0.count) }
        var dB: [[Float]?] = p.biases.map { $0.map { [Float](repeating: 0, count: $0.count) } }
        for l in layers.indices.reversed() {
            let layer = layers[l], out = layer.outFeatures, inF = layer.inFeatures
            multiplyByDerivative(layer.activation, of: preActivations[l], into: &delta)
            guard rows > 0 else { continue }
            delta.withUnsafeBufferPointer { d in
                inputs[l].withUnsafeBufferPointer { input in
                    dW[l].withUnsafeMutableBufferPointer { g in
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(out), Int32(inF), Int32(rows),
                                    1, d.baseAddress!, Int32(out), input.baseAddress!, Int32(inF), 0, g.baseAddress!, Int32(inF))
                    }
                }
            }
            if var bias = dB[l] {
                delta.withUnsafeBufferPointer { d in
                    bias.withUnsafeMutableBufferPointer { b in
                        for r in 0..<rows {
                            let row = d.baseAddress! + r * out
                            for o in 0..<out { b[o] += row[o] }
                        }
                    }
                }
                dB[l] = bias
            }
            guard l > 0 else { break }
            var previous = [Float](repeating: 0, count: rows * inF)
            delta.withUnsafeBufferPointer { d in
                p.weights[l].withUnsafeBufferPointer { w in
                    previous.withUnsafeMutableBufferPointer { y in
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(inF), Int32(out),
                                    1, d.baseAddress!, Int32(out), w.baseAddress!, Int32(inF), 0, y.baseAddress!, Int32(inF))
                    }
                }
            }
            delta = previous
        }
        return Result(loss: loss, correct: correct, gradients: Parameters(weights: dW, biases: dB))
    }

    /// δ ⊙ act′(z): ReLU's step, GELU's Φ(z) + z·φ(z) (the exact form's derivative).
    static func multiplyByDerivative(_ activation: MLPConfig.Activation, of z: [Float], into delta: inout [Float]) {
        switch activation {
        case .none:
            return
        case .relu:
            z.withUnsafeBufferPointer { z in
                delta.withUnsafeMutableBufferPointer { d in
                    for i in 0..<d.count where z[i] <= 0 { d[i] = 0 }
                }
            }
        case .gelu:
            let invSqrt2 = Float(1 / 2.0.squareRoot()), invSqrt2Pi = Float(1 / (2 * Double.pi).squareRoot())
            for i in delta.indices {
                let v = z[i]
                delta[i] *= 0.5 * (1 + erff(v * invSqrt2)) + v * invSqrt2Pi * expf(-0.5 * v * v)
            }
        }
    }
}

extension MLPModel {
    /// The model's weights and biases as loaded (the start of training or of a gradient).
    public var parameters: MLPGradient.Parameters {
        MLPGradient.Parameters(weights: layers.map(\.weight), biases: layers.map(\.bias))
    }
}
