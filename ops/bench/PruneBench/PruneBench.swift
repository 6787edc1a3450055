// Mask throughput benchmark (ops/bench/mask.sh runs it beside numpy's reference).
//
// On a rows × cols F32 matrix of seeded normal weights, times the whole path from weights
// to packed mask (scores + selection + packing) for magnitude unstructured, per-row and
// 2:4, next to a plain copy of the same bytes. Best of --repeat runs. Prints JSON.
import Foundation
import Pruning

@main
struct PruneBench {
    static func main() throws {

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
    /// batches and prune at 50% unstructured; prints JSON.
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
        print("{\"add_batch_seconds\": \(Double(mid - start) / 1e9), \"prune_seconds\": \(Double(end - mid) / 1e9), \"kept\": \(mask.keptCount)}")
    }
}
