import Foundation
import XCTest
@testable import Pruning

/// The two-round global threshold against sorting every score.
final class ScoreHistogramTests: XCTestCase {
    func testTwoRoundsGiveTheLevelsOfOneExactThreshold() throws {
        var rng = SeededNormal(seed: 11)
        // Three tensors of different scales; scores rounded so ties occur at the threshold.
        let tensors: [[Float]] = [(300, 1.0), (500, 0.1), (200, 10.0)].map { n, scale in
            (0..<n).map { _ in (abs(rng.next()) * Float(scale) * 64).rounded() / 64 }
        }
        let sizes = tensors.map { UInt64($0.count) }
        for target in [0.1, 0.5, 0.7, 0.93] {
            let k = ScoreHistogram.pruneCount(target: target, total: sizes.reduce(0, +))
            var merged = ScoreHistogram.Counts()
            for t in tensors { merged.add(try t.withUnsafeBufferPointer { try ScoreHistogram.coarse($0) }) }
            let cut = try ScoreHistogram.locate(merged, prune: k)
            // Each worker's round-2 result crosses the wire as bytes.
            let parts = try tensors.map { t in
                try ScoreHistogram.Fine(serialized: try t.withUnsafeBufferPointer { try ScoreHistogram.fine($0, high: cut.key) }.serialized())
            }
            let levels = try ScoreHistogram.levels(parts, sizes: sizes, prune: k)

            // Reference: the k-th smallest score; all below it pruned, ties in tensor order.
            let threshold = tensors.flatMap { $0 }.sorted()[Int(k) - 1]
            var ties = Int(k) - tensors.flatMap { $0 }.filter { $0 < threshold }.count
            for (i, t) in tensors.enumerated() {
                let equal = t.filter { $0 == threshold }.count, taken = min(equal, ties)
                ties -= taken
                let expected = t.filter { $0 < threshold }.count + taken
                XCTAssertEqual(levels[i] * Double(t.count), Double(expected), accuracy: 1e-9, "target \(target), tensor \(i)")
            }
            XCTAssertEqual(zip(levels, sizes).reduce(0.0) { $0 + $1.0 * Double($1.1) }, Double(k), accuracy: 1e-6)
        }
        // The smallest scale's tensor is pruned hardest: magnitude is not comparable across layers.
        let levels = try { () throws -> [Double] in
            let k = ScoreHistogram.pruneCount(target: 0.5, total: 1000)
            var merged = ScoreHistogram.Counts()
            for t in tensors { merged.add(try t.withUnsafeBufferPointer { try ScoreHistogram.coarse($0) }) }
            let cut = try ScoreHistogram.locate(merged, prune: k)
            return try ScoreHistogram.levels(try tensors.map { t in try t.withUnsafeBufferPointer { try ScoreHistogram.fine($0, high: cut.key) } },
                                            sizes: sizes, prune: k)
        }()
        XCTAssertGreaterThan(levels[1], levels[0])
        XCTAssertGreaterThan(levels[0], levels[2])
    }

    func testBadHistogramsAndScoresAreRefused() {
        XCTAssertThrowsError(try [Float(1), .nan].withUnsafeBufferPointer { try ScoreHistogram.coarse($0) })
        XCTAssertThrowsError(try [Float(-1)].withUnsafeBufferPointer { try ScoreHistogram.coarse($0) })
        var bytes = (try? [Float(1), 2].withUnsafeBufferPointer { try ScoreHistogram.coarse($0) })!.serialized()
        XCTAssertThrowsError(try ScoreHistogram.Counts(serialized: Array(bytes.dropLast())))
        // Keys out of order.
        bytes = [2, 0, 0, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        XCTAssertThrowsError(try ScoreHistogram.Counts(serialized: bytes))
        XCTAssertThrowsError(try ScoreHistogram.locate(ScoreHistogram.Counts(), prune: 1))
        XCTAssertEqual(try ScoreHistogram.cut(serialized: ScoreHistogram.serializedCut(0x3F80)), 0x3F80)
        XCTAssertThrowsError(try ScoreHistogram.cut(serialized: [0, 0, 1, 0, 0, 0, 0, 0]), "a bucket beyond 16 bits")
        XCTAssertThrowsError(try ScoreHistogram.Fine(serialized: [1, 2, 3]), "truncated")
    }
}
