import Foundation
import XCTest
@testable import Pruning

/// A seeded normal generator (SplitMix64 + Box–Muller): the same layer on every run.
struct SeededNormal {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func uniform() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return (Double((z ^ (z >> 31)) >> 11) + 0.5) / Double(1 << 53)
    }
    mutating func next() -> Float {
        Float((-2 * log(uniform())).squareRoot() * cos(2 * Double.pi * uniform()))
    }
    mutating func array(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in next() * scale } }
}

/// A layer for the reference comparisons: W (rows × cols) and `batches` calibration
/// samples of tokens × cols, with per-column activation scales spread over two decades
/// (so |W|·‖X_j‖ ranks differently from |W|) and optionally dead input columns.
struct CalibratedLayer {
    let rows: Int, cols: Int, tokens: Int
    var weights: [Float]
    var batches: [[Float]]

    init(rows: Int = 64, cols: Int = 96, tokens: Int = 32, batches: Int = 4, seed: UInt64, dead: [Int] = []) {
        self.rows = rows
        self.cols = cols
        self.tokens = tokens
        var rng = SeededNormal(seed: seed)
        weights = rng.array(rows * cols, scale: 0.05)
        let scales = (0..<cols).map { _ in Float(pow(10, rng.uniform() * 2 - 1)) }
        self.batches = (0..<batches).map { _ in
            var x = rng.array(tokens * cols)
            for t in 0..<tokens { for c in 0..<cols { x[t * cols + c] *= dead.contains(c) ? 0 : scales[c] } }
            return x
        }
    }

    /// Writes W.f32 and X0.f32… into a fresh temporary directory.
    func write() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("prune-ref-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try RawFile.write(weights, to: dir.appendingPathComponent("W.f32"))
        for (i, b) in batches.enumerated() { try RawFile.write(b, to: dir.appendingPathComponent("X\(i).f32")) }
        return dir
    }
}

/// Raw little-endian arrays, as numpy's tofile/fromfile see them.
enum RawFile {
    static func write<T: BitwiseCopyable>(_ values: [T], to url: URL) throws {
        try values.withUnsafeBytes { Data($0) }.write(to: url)
    }
    static func read<T: BitwiseCopyable>(_ type: T.Type, _ url: URL, count: Int) throws -> [T] {
        let data = try Data(contentsOf: url)
        guard data.count == count * MemoryLayout<T>.stride else {
            throw PruningError("\(url.lastPathComponent): \(data.count) bytes, expected \(count * MemoryLayout<T>.stride)")
        }
        return data.withUnsafeBytes { Array($0.bindMemory(to: T.self)) }
    }
}

/// python3 with numpy, for the reference ports in Tests/python. Skips the test when numpy
/// is missing, unless PRUNE_REQUIRE_PYTHON=1 (CI), which turns that into a failure.
enum PythonReference {
    static let scripts = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("python")

    static let hasNumpy: Bool = (try? run(["-c", "import numpy"])) != nil

    static func require() throws {
        guard !hasNumpy else { return }
        if ProcessInfo.processInfo.environment["PRUNE_REQUIRE_PYTHON"] == "1" {
            throw PruningError("python3 with numpy is required (PRUNE_REQUIRE_PYTHON=1) but not available")
        }
        throw XCTSkip("python3 with numpy is not available")
    }

    /// Runs a script from Tests/python; throws with its stderr when it fails.
    static func script(_ name: String, _ arguments: [String]) throws {
        try require()
        try run([scripts.appendingPathComponent(name).path] + arguments)
    }

    @discardableResult
    static func run(_ arguments: [String]) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3"] + arguments
        let err = Pipe()
        p.standardOutput = FileHandle.nullDevice
        p.standardError = err
        try p.run()
        let message = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw PruningError("python3 \(arguments.joined(separator: " ")) exited \(p.terminationStatus): "
                               + String(decoding: message, as: UTF8.self))
        }
        return 0
    }
}

/// Unpacks a mask to one byte per weight (1 = kept), the reference scripts' format.
func maskBytes(_ mask: Mask) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(mask.rows * mask.cols)
    for r in 0..<mask.rows { for c in 0..<mask.cols { out.append(mask[r, c] ? 1 : 0) } }
    return out
}

final class WandaTests: XCTestCase {
    func statistics(_ layer: CalibratedLayer, _ batches: Range<Int>) -> WandaStatistics {
        var s = WandaStatistics(columns: layer.cols)
        for b in batches {
            layer.batches[b].withUnsafeBufferPointer { s.add(batch: $0, tokens: layer.tokens, columns: layer.cols) }
        }
        return s
    }

    func wandaMask(_ layer: CalibratedLayer, _ stats: WandaStatistics, _ pattern: SparsityPattern, _ sparsity: Double) throws -> Mask {
        let criterion = WandaCriterion(statistics: stats)
        var scores = [Float](repeating: 0, count: layer.rows * layer.cols)
        layer.weights.withUnsafeBufferPointer { w in
            scores.withUnsafeMutableBufferPointer { criterion.scores(WeightBlock(name: "w", values: w, rows: layer.rows, cols: layer.cols), into: $0) }
        }
        return try scores.withUnsafeBufferPointer {
            try MaskSelection.mask(scores: $0, rows: layer.rows, cols: layer.cols, pattern: pattern, sparsity: sparsity)
        }
    }

    /// Masks identical to the numpy port of locuslab/wanda on the same layer and activations.
    func checkAgainstReference(pattern: SparsityPattern, sparsity: Double, seed: UInt64, dead: [Int] = []) throws {
        try PythonReference.require()
        let layer = CalibratedLayer(seed: seed, dead: dead)
        let dir = try layer.write()
        defer { try? FileManager.default.removeItem(at: dir) }
        var args = [dir.path, "\(layer.rows)", "\(layer.cols)", "\(layer.tokens)", "\(layer.batches.count)", "\(sparsity)"]
        if case .nm(let n, let m) = pattern { args.append("\(n):\(m)") }
        try PythonReference.script("wanda_ref.py", args)

        let stats = statistics(layer, 0..<layer.batches.count)
        let refNorms = try RawFile.read(Float.self, dir.appendingPathComponent("scaler_row.f32"), count: layer.cols)
        for (c, (ours, ref)) in zip(stats.norms, refNorms).enumerated() {
            XCTAssertEqual(ours, Double(ref), accuracy: 1e-5 * max(Double(ref), 1e-30), "norm of column \(c)")
        }
        let mask = try wandaMask(layer, stats, pattern, sparsity)
        let refMask = try RawFile.read(UInt8.self, dir.appendingPathComponent("mask.u8"), count: layer.rows * layer.cols)
        let ours = maskBytes(mask)
        let differing = zip(ours, refMask).filter { $0 != $1 }.count
        XCTAssertEqual(differing, 0, "\(pattern): \(differing) mask bits differ from the reference")
        XCTAssertEqual(mask.prunedCount, pattern.plannedPruned(rows: layer.rows, cols: layer.cols, sparsity: sparsity))
    }

    func testPerRowHalfMatchesReference() throws {
        try checkAgainstReference(pattern: .perRow, sparsity: 0.5, seed: 11)
    }

    func testTwoFourMatchesReference() throws {
        try checkAgainstReference(pattern: .nm(n: 2, m: 4), sparsity: 0, seed: 12)
    }

    func testDeadColumnAndOtherSparsityMatchReference() throws {
        try checkAgainstReference(pattern: .perRow, sparsity: 0.7, seed: 13, dead: [5, 50])
    }

    /// The definition: Σ x² over all tokens / samples (not tokens).
    func testNormIsSumOverTokensPerSample() {
        var s = WandaStatistics(columns: 2)
        [Float(1), 2, 3, 4].withUnsafeBufferPointer { s.add(batch: $0, tokens: 2, columns: 2) }      // (1+9, 4+16)
        [Float(2), 0].withUnsafeBufferPointer { s.add(batch: $0, tokens: 1, columns: 2, samples: 2) }  // (4, 0)
        XCTAssertEqual(s.samples, 3)
        XCTAssertEqual(s.norms, [14.0 / 3, 20.0 / 3])
        XCTAssertEqual(WandaStatistics(columns: 3).norms, [0, 0, 0])
    }

    /// Three partial accumulations merged give the bits of one accumulation, in any order,
    /// even over magnitudes where a plain Double running sum would round differently.
    func testMergeIsBitExact() throws {
        var layer = CalibratedLayer(rows: 4, cols: 96, tokens: 32, batches: 6, seed: 21)
        for (b, scale) in [Float(1e-18), 1e12, 1, 3e-7, 7e15, 0.5].enumerated() {
            layer.batches[b] = layer.batches[b].map { $0 * scale }
        }
        let whole = statistics(layer, 0..<6)
        let a = statistics(layer, 0..<1), b = statistics(layer, 1..<4), c = statistics(layer, 4..<6)
        var abc = a; abc.merge(b); abc.merge(c)
        var cab = c; cab.merge(a); cab.merge(b)
        for merged in [abc, cab] {
            XCTAssertEqual(merged, whole)
            XCTAssertEqual(merged.samples, 6)
            XCTAssertEqual(merged.norms.map(\.bitPattern), whole.norms.map(\.bitPattern))
            XCTAssertEqual(merged.serialized(), whole.serialized())
        }
        // A plain Double sum in the two orders is not associative here: the exact sum matters.
        var plainWhole = [Double](repeating: 0, count: 96), plainSplit = plainWhole
        var parts = [[Double]](repeating: plainWhole, count: 3)
        for bi in 0..<6 {
            for t in 0..<32 { for col in 0..<96 {
                let x = Double(layer.batches[bi][t * 96 + col])
                plainWhole[col] += x * x
                parts[bi < 1 ? 0 : bi < 4 ? 1 : 2][col] += x * x
            } }
        }
        for col in 0..<96 { plainSplit[col] = parts[2][col] + parts[0][col] + parts[1][col] }
        XCTAssertNotEqual(plainWhole, plainSplit, "the test data should defeat a naive Double sum")
    }

    func testSerializationRoundTrips() throws {
        let layer = CalibratedLayer(rows: 4, cols: 96, tokens: 32, batches: 3, seed: 31, dead: [7])
        var s = statistics(layer, 0..<3)
        let bytes = s.serialized()
        let back = try WandaStatistics(serialized: bytes)
        XCTAssertEqual(back, s)
        XCTAssertEqual(back.norms.map(\.bitPattern), s.norms.map(\.bitPattern))
        // Non-finite inputs survive too.
        var special = [Float](repeating: 1, count: 96)
        special[3] = .infinity
        special[4] = .nan
        special.withUnsafeBufferPointer { s.add(batch: $0, tokens: 1, columns: 96) }
        let back2 = try WandaStatistics(serialized: s.serialized())
        XCTAssertEqual(back2, s)
        XCTAssertEqual(back2.norms[3], .infinity)
        XCTAssertTrue(back2.norms[4].isNaN)
        XCTAssertEqual(try WandaStatistics(serialized: WandaStatistics(columns: 0).serialized()), WandaStatistics(columns: 0))
        // Truncated, extended or foreign bytes are refused.
        XCTAssertThrowsError(try WandaStatistics(serialized: Array(bytes.dropLast())))
        XCTAssertThrowsError(try WandaStatistics(serialized: bytes + [0]))
        XCTAssertThrowsError(try WandaStatistics(serialized: Array(bytes.prefix(20))))
        var foreign = bytes
        foreign[0] = UInt8(ascii: "X")
        XCTAssertThrowsError(try WandaStatistics(serialized: foreign))
    }

    func testCriterionScoresAreAbsWeightTimesRootNorm() {
        let criterion = WandaCriterion(norms: [4, 0.25, 0])
        XCTAssertEqual(criterion.name, "wanda")
        let w: [Float] = [-1, 2, 3, 0.5, -8, 1]
        var scores = [Float](repeating: -1, count: 6)
        w.withUnsafeBufferPointer { wb in
            scores.withUnsafeMutableBufferPointer { criterion.scores(WeightBlock(name: "w", values: wb, rows: 2, cols: 3), into: $0) }
        }
        XCTAssertEqual(scores, [2, 1, 0, 1, 4, 0])
    }
}
