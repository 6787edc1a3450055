// Mask throughput benchmark (ops/bench/mask.sh runs it beside numpy's reference).
//
// On a rows × cols F32 matrix of seeded normal weights, times the whole path from weights
// to packed mask (scores + selection + packing) for magnitude unstructured, per-row and
// 2:4, next to a plain copy of the same bytes. Best of --repeat runs. Prints JSON.
// `PruneBench mask-coding`: the wire's mask coders (ops/bench/wire.sh runs it).
import Engine
import Foundation
import Models
import Protocol
import Pruning
import Tensors

@main
struct PruneBench {
    static func main() throws {
        // The OpenBLAS kernels and the one thread a prune process uses, so the figures
        // are prune's (and the train step's twin in torch runs one thread too).
        BLASThreads.pinKernels()
        BLASThreads.useDefault()

        if CommandLine.arguments.dropFirst().first == "mask-coding" {
            maskCodingBench()
            return
        }
        if CommandLine.arguments.dropFirst().first == "train-step" {
            try trainStepBench(Array(CommandLine.arguments.dropFirst(2)))
            return
        }
        if CommandLine.arguments.dropFirst().first == "sparsegpt" {
            try sparseGPTBench(Array(CommandLine.arguments.dropFirst(2)))
            return
        }
        var rows = 4096, cols = 11008, repeatCount = 5
        var args = CommandLine.arguments.dropFirst().makeIterator()
        while let a = args.next() {
            switch a {
            case "--rows": rows = Int(args.next()!)!
            case "--cols": cols = Int(args.next()!)!
            case "--repeat": repeatCount = Int(args.next()!)!
            default: FileHandle.standardError.write("usage: PruneBench [--rows N] [--cols N] [--repeat N]\n".data(using: .utf8)!); exit(2)
            }
        }

        let n = rows * cols
        var state: UInt64 = 12345
        var weights = [Float](repeating: 0, count: n)
        for i in 0..<n {
            // Box–Muller from a 64-bit LCG: normal weights like a trained layer's.
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let u1 = max(Double(state >> 11) / Double(1 << 53), 1e-300)
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let u2 = Double(state >> 11) / Double(1 << 53)
            weights[i] = Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2) * 0.02)
        }
        var destination = [Float](repeating: 1, count: n)
        var scores = [Float](repeating: 0, count: n)

        func best(_ body: () throws -> Void) rethrows -> Double {
            var t = Double.infinity
            for _ in 0..<repeatCount {
                let start = DispatchTime.now().uptimeNanoseconds
                try body()
                t = min(t, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            return t
        }

        var sink = 0
        let copy = best {
            destination.withUnsafeMutableBytes { d in weights.withUnsafeBytes { d.copyMemory(from: $0) } }
        }
        func maskTime(_ pattern: SparsityPattern) throws -> Double {
            try best {
                let mask = try weights.withUnsafeBufferPointer { w in
                    try scores.withUnsafeMutableBufferPointer { s in
                        MagnitudeCriterion().scores(WeightBlock(name: "w", values: w, rows: rows, cols: cols), into: s)
                        return try MaskSelection.mask(scores: UnsafeBufferPointer(s), rows: rows, cols: cols, pattern: pattern, sparsity: 0.5)
                    }
                }
                sink &+= mask.keptCount
            }
        }
        let scoreOnly = best {
            weights.withUnsafeBufferPointer { w in
                scores.withUnsafeMutableBufferPointer { s in
                    MagnitudeCriterion().scores(WeightBlock(name: "w", values: w, rows: rows, cols: cols), into: s)
                }
            }
        }
        var scratch = RadixSelect.Scratch()
        let selectOnly = best {
            let cut = scores.withUnsafeBufferPointer { s in
                s.withMemoryRebound(to: UInt32.self) { RadixSelect.cut($0, prune: n / 2, digits: RadixSelect.wideDigits, scratch: &scratch) }
            }
            sink &+= cut.equalPruned
        }
        FileHandle.standardError.write("phases: scores \(scoreOnly)s, select \(selectOnly)s\n".data(using: .utf8)!)
        let results: [(String, Double)] = [("copy", copy), ("unstructured", try maskTime(.unstructured)),
                                           ("per_row", try maskTime(.perRow)), ("2:4", try maskTime(.nm(n: 2, m: 4)))]
        let bytes = Double(n * 4)
        let json = results.map { "\"\($0.0)\": {\"seconds\": \(String(format: "%.5f", $0.1)), \"gbps\": \(String(format: "%.3f", bytes / $0.1 / 1e9))}" }
        print("{" + json.joined(separator: ", ") + "}")
        if sink == 42 { print("") }

    }

    /// `PruneBench sparsegpt DIR ROWS COLS TOKENS BATCHES`: writes W.f32 and X{i}.f32 (seeded
    /// normals) into DIR for the numpy port to read, then times our addBatch over all
    /// batches and prune at 50% unstructured, then the layer-wise re-fit under that mask;
    /// prints JSON.
    /// ns per weight to encode and decode a 1536 × 2304 mask (a 2:4 one, and a 90%
    /// unstructured one) with each wire coding, next to the sha256 of its packed bits that
    /// the coordinator computes for every mask however it travels. Best of 5.
    static func maskCodingBench() {
        let rows = 1536, cols = 2304, weights = Double(rows * cols)
        var state: UInt64 = 7
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 11 }
        let pairs: [UInt8] = [0b0011, 0b0101, 0b0110, 0b1001, 0b1010, 0b1100]
        let twoFour = (0..<(rows * cols / 8)).map { _ in pairs[Int(next() % 6)] | pairs[Int(next() % 6)] << 4 }
        let sparse = (0..<(rows * cols / 8)).map { _ in (0..<8).reduce(UInt8(0)) { $0 | (next() % 10 == 0 ? 1 << $1 : 0) } }
        func best(_ body: () -> Void) -> Double {
            (0..<5).map { _ in
                let t = DispatchTime.now().uptimeNanoseconds
                body()
                return Double(DispatchTime.now().uptimeNanoseconds - t) / weights
            }.min()!
        }
        var frame: [UInt8] = []
        var report: [String: Double] = [:]
        report["sha256 of the packed bits"] = best { _ = twoFour.withUnsafeBytes { SHA256Stream.hex($0) } }
        report["2:4 mask-nm1 encode"] = best { frame = NMMaskCoding.encode(bits: twoFour, rows: rows, cols: cols, n: 2, m: 4)! }
        report["2:4 mask-nm1 decode"] = best { precondition(try! NMMaskCoding.decode(frame, maxBytes: 1 << 30) == twoFour) }
        report["2:4 mask-nm1 bits per weight"] = Double(frame.count * 8) / weights
        report["90% mask-rc1 encode"] = best { frame = MaskCoding.encode(bits: sparse, rows: rows, cols: cols, group: 0)! }
        report["90% mask-rc1 decode"] = best { precondition(try! MaskCoding.decode(frame, maxBytes: 1 << 30) == sparse) }
        report["90% mask-rc1 bits per weight"] = Double(frame.count * 8) / weights
        for key in report.keys.sorted() {
            print(key.hasSuffix("bits per weight") ? String(format: "%-32@ %.3f", key, report[key]!) : String(format: "%-32@ %.2f ns per weight", key, report[key]!))
        }
    }

    /// `PruneBench train-step DIR BATCH STEPS`: one training step of the Fashion-MNIST MLP
    /// (784-256-128-10, ReLU; forward, backward, momentum SGD) on seeded inputs, as a
    /// train task computes it, timed over STEPS steps after 5 warm-up steps. Writes the
    /// start model to DIR (for the torch twin, ops/bench/train_step_torch.py). Prints JSON:
    /// median and best seconds per step.
    static func trainStepBench(_ a: [String]) throws {
        let dir = a[0], batch = Int(a[1])!, steps = Int(a[2])!
        try? FileManager.default.removeItem(atPath: dir)
        try MLPInit.write(MLPInit.Options(input: 784, hidden: [256, 128], classes: 10), to: dir)
        let model = try MLPModel(directory: dir)
        var state: UInt64 = 7
        let x: [Float] = (0..<(batch * 784)).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(state >> 40) / Float(1 << 24)
        }
        let labels = (0..<batch).map { Int32($0 % 10) }
        var training = MLPTraining(parameters: model.parameters, masks: [nil, nil, nil], optimizer: .sgd(learningRate: 0.05, momentum: 0.9, weightDecay: 0))
        var times: [Double] = []
        for i in 0..<(steps + 5) {
            let start = DispatchTime.now().uptimeNanoseconds
            let r = MLPGradient.evaluate(model, parameters: training.parameters, x: x, labels: labels, rows: batch)
            training.apply(summedGradient: MLPTraining.flatten(r.gradients), batch: batch)
            if i >= 5 { times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9) }
        }
        times.sort()
        print("{\"median_step_seconds\": \(times[times.count / 2]), \"best_step_seconds\": \(times[0]), \"blas_core\": \"\(BLASThreads.coreName)\"}")
    }

    static func sparseGPTBench(_ a: [String]) throws {
        guard a.count == 5, let rows = Int(a[1]), let cols = Int(a[2]), let tokens = Int(a[3]), let batches = Int(a[4]) else {
            FileHandle.standardError.write("usage: PruneBench sparsegpt DIR ROWS COLS TOKENS BATCHES\n".data(using: .utf8)!)
            exit(2)
        }
        let dir = a[0]
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var state: UInt64 = 99
        func normals(_ n: Int, scale: Float) -> [Float] {
            (0..<n).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let u1 = max(Double(state >> 11) / Double(1 << 53), 1e-300)
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let u2 = Double(state >> 11) / Double(1 << 53)
                return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)) * scale
            }
        }
        let w = normals(rows * cols, scale: 0.02)
        try w.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: dir + "/W.f32")) }
        var xs: [[Float]] = []
        for b in 0..<batches {
            let x = normals(tokens * cols, scale: 1)
            try x.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: dir + "/X\(b).f32")) }
            xs.append(x)
        }
        let start = DispatchTime.now().uptimeNanoseconds
        var sgpt = SparseGPT(rows: rows, columns: cols)
        for x in xs { x.withUnsafeBufferPointer { sgpt.addBatch($0, tokens: tokens) } }
        let mid = DispatchTime.now().uptimeNanoseconds
        var weights = w
        let (mask, _) = try sgpt.prune(weights: &weights, sparsity: 0.5, n: 0, m: 0, blockSize: 128, percDamp: 0.01, layer: "bench")
        let end = DispatchTime.now().uptimeNanoseconds
        // The layer-wise re-fit (`reconstruct: layer`) of the same layer under SparseGPT's mask.
        let fit = try LayerReconstruction.refit(dense: w, start: weights, mask: mask, hessian: sgpt, damp: 0.01, layer: "bench")
        let refitEnd = DispatchTime.now().uptimeNanoseconds
        print("{\"add_batch_seconds\": \(Double(mid - start) / 1e9), \"prune_seconds\": \(Double(end - mid) / 1e9), \"kept\": \(mask.keptCount), "
              + "\"refit_seconds\": \(Double(refitEnd - end) / 1e9), \"sparsegpt_error\": \(fit.errorBefore), \"refit_error\": \(fit.errorAfter)}")
    }
}
