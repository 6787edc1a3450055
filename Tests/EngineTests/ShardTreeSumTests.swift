import Foundation
import XCTest
@testable import Engine

/// The classifier's shard sum: a fixed binary tree, which any split of the shards into
/// contiguous slots reaches to the bit by sending each slot's aligned runs as blocks.
final class ShardTreeSumTests: XCTestCase {
    /// Shard gradients whose sums depend on the order of the additions (values of very
    /// different sizes), seeded.
    private func shards(_ n: Int, count: Int) -> [[Float]] {
        var state: UInt64 = 11
        return (0..<n).map { _ in
            (0..<count).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let scale = Float(1 << Int(state >> 60)) // 1 … 2^15
                return (Float(state >> 40) / Float(1 << 24) - 0.5) * scale
            }
        }
    }

    private func sum(_ tree: inout ShardTreeSum) -> [Float] {
        var out = [Float](repeating: .nan, count: tree.count)
        out.withUnsafeMutableBufferPointer { tree.finish(into: $0) }
        return out
    }

    func testTheTreeIsPairsThenPairsOfPairsAndTheRestFromTheRight() throws {
        let g = shards(7, count: 64)
        var tree = ShardTreeSum(count: 64)
        for s in g { try tree.push(tensors: [Array(s[0..<10]), Array(s[10...])]) }
        // 7 shards: ((0+1)+(2+3)) + ((4+5) + 6).
        let expected = (0..<64).map { i -> Float in
            let left: Float = (g[0][i] + g[1][i]) + (g[2][i] + g[3][i])
            let right: Float = (g[4][i] + g[5][i]) + g[6][i]
            return left + right
        }
        XCTAssertEqual(sum(&tree), expected)
        XCTAssertTrue(tree.isEmpty)
        // Not the shard-order sum (the data is chosen so that the order shows).
        let sequential = (0..<64).map { i -> Float in g.dropFirst().reduce(g[0][i]) { $0 + $1[i] } }
        XCTAssertNotEqual(expected, sequential)
        // Empty: zeros.
        XCTAssertEqual(sum(&tree), [Float](repeating: 0, count: 64))
    }

    func testAlignedRunsCoverARangeAsTheTreesSubtrees() {
        XCTAssertEqual(ShardTreeSum.blocks(of: 0..<8), [0..<8])
        XCTAssertEqual(ShardTreeSum.blocks(of: 4..<8), [4..<8])
        XCTAssertEqual(ShardTreeSum.blocks(of: 5..<8), [5..<6, 6..<8])
        XCTAssertEqual(ShardTreeSum.blocks(of: 0..<3), [0..<2, 2..<3])
        XCTAssertEqual(ShardTreeSum.blocks(of: 3..<12), [3..<4, 4..<8, 8..<12])
        XCTAssertEqual(ShardTreeSum.blocks(of: 2..<2), [])
        XCTAssertEqual(ShardTreeSum.level(of: 8..<12), 2)
    }

    /// Every split of 1 … 17 shards into 2 … 4 contiguous slots, on a span's steps and on
    /// its last (the leader's run halved): each slot's blocks summed on their own and pushed
    /// in order give the bytes of pushing every shard, and the slots cover every shard once.
    func testBlocksOfAnySlotSplitGiveTheShardByShardBytes() throws {
        for n in 1...17 {
            let g = shards(n, count: 33)
            var whole = ShardTreeSum(count: 33)
            for s in g { try s.withUnsafeBufferPointer { try whole.push($0) } }
            let expected = sum(&whole)
            let splits = (2...4).filter { $0 <= n }.flatMap { slots in [false, true].map { (slots, $0) } }
            for (slots, lastStep) in splits {
                let runs = (0..<slots).map { SpanSlots.shards(slot: $0, of: slots, shards: n, lastStep: lastStep) }
                XCTAssertEqual(runs.flatMap { Array($0) }, Array(0..<n), "\(n) shards, \(slots) slots, last step \(lastStep)")
                XCTAssertFalse(runs.contains(where: \.isEmpty))
                var tree = ShardTreeSum(count: 33)
                for slot in 0..<slots {
                    for block in ShardTreeSum.blocks(of: runs[slot]) {
                        var part = ShardTreeSum(count: 33)
                        for j in block { try g[j].withUnsafeBufferPointer { try part.push($0) } }
                        let values = part.finishValues()
                        if block.count % 2 == 0 {
                            try tree.push(owned: values, level: ShardTreeSum.level(of: block))
                        } else {
                            try tree.push(bytes: values.withUnsafeBytes { [UInt8]($0) }, level: ShardTreeSum.level(of: block))
                        }
                    }
                }
                XCTAssertEqual(sum(&tree), expected, "\(n) shards, \(slots) slots, last step \(lastStep)")
            }
        }
    }

    func testAMisplacedOrMisshapenBlockIsRefused() throws {
        var tree = ShardTreeSum(count: 4)
        try [Float](repeating: 1, count: 4).withUnsafeBufferPointer { try tree.push($0) }
        // A block of two shards after a single one does not sit where the tree puts it.
        XCTAssertThrowsError(try tree.push(bytes: [UInt8](repeating: 0, count: 16), level: 1))
        XCTAssertThrowsError(try tree.push(bytes: [UInt8](repeating: 0, count: 12), level: 0))
        XCTAssertThrowsError(try tree.push(tensors: [[1, 2, 3]]))
        XCTAssertThrowsError(try tree.push(tensors: [[1, 2, 3], [4, 5]]))
    }
}
