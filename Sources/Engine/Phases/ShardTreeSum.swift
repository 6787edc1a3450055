import Pruning
import Tensors

/// A classifier step's gradient summed over its shards in a fixed binary tree: shards
/// 2i and 2i + 1 first, then those pairs, and so on (a binary counter of complete
/// subtrees); with a shard count that is no power of two, the complete subtrees left at
/// the end are added from the right, L + (M + R). F32 addition is commutative, so a pair
/// is the same whichever side adds to which; the tree fixes what is added to what.
///
/// Why a tree and not shard after shard: any aligned run of shards (2^k of them, starting
/// at a multiple of 2^k) is one subtree, so a member of a span's group
/// (`train.exchange: allgather`) sends the sum of each aligned run it computed as one
/// block, and every member still reaches the bytes one process summing shard by shard
/// into the same tree reaches, whoever computed what (`blocks(of:)`).
struct ShardTreeSum {
    /// Values per shard gradient.
    let count: Int
    /// Complete subtrees so far, left to right, their levels (log2 of their shards) falling.
    private var stack: [(level: Int, values: [Float])] = []
    /// Buffers to reuse: at most `maxSpare` (a tree handed buffers it did not make, through
    /// `push(owned:)`, would otherwise keep every one it freed).
    private var spare: [[Float]] = [] {
        didSet { if spare.count > ShardTreeSum.maxSpare { spare.removeFirst(spare.count - ShardTreeSum.maxSpare) } }
    }
    private static let maxSpare = 8

    init(count: Int) { self.count = count }

    /// Whether nothing has been added since the last `finish`.
    var isEmpty: Bool { stack.isEmpty }

    /// Adds the next subtree: one shard's gradient (level 0), or the sum of 2^level shards
    /// that `ShardTreeSum` built for an aligned run (`blocks(of:)`). A subtree larger than
    /// the last one added would not sit where the tree puts it, and is refused.
    mutating func push(_ values: UnsafeBufferPointer<Float>, level: Int = 0) throws {
        guard values.count == count else { throw PruningError("a shard sum of \(values.count) values, expected \(count)") }
        var copy = buffer()
        copy.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: values.baseAddress!, count: count) }
        try push(owned: copy, level: level)
    }

    /// Adds a subtree whose values this tree may keep (no copy).
    mutating func push(owned values: [Float], level: Int) throws {
        guard values.count == count else { throw PruningError("a shard sum of \(values.count) values, expected \(count)") }
        guard level >= 0, stack.last.map({ $0.level >= level }) ?? true else {
            throw PruningError("a sum of 2^\(level) shards after one of 2^\(stack.last!.level): not an aligned run")
        }
        var entry = (level: level, values: values)
        while let top = stack.last, top.level == entry.level {
            stack.removeLast()
            var left = top.values
            left.withUnsafeMutableBufferPointer { l in entry.values.withUnsafeBufferPointer { FloatVectors.add($0, to: l.baseAddress!) } }
            spare.append(entry.values)
            entry = (entry.level + 1, left)
        }
        stack.append(entry)
    }

    /// Adds one shard's gradient given tensor by tensor, in the flat order.
    mutating func push(tensors: [[Float]]) throws {
        let total = tensors.reduce(0) { $0 + $1.count }
        guard total == count else { throw PruningError("a shard gradient of \(total) values, expected \(count)") }
        var flat = buffer(), at = 0
        flat.withUnsafeMutableBufferPointer { out in
            for t in tensors where !t.isEmpty {
                t.withUnsafeBufferPointer { (out.baseAddress! + at).update(from: $0.baseAddress!, count: t.count) }
                at += t.count
            }
        }
        try push(owned: flat, level: 0)
    }

    /// Adds a block's F32 bytes (`blocks(of:)`: the sum of 2^level shards).
    mutating func push(bytes: [UInt8], level: Int) throws {
        guard bytes.count == 4 * count else { throw PruningError("a shard sum of \(bytes.count) bytes, expected \(4 * count)") }
        try bytes.withUnsafeBytes { raw in try raw.withMemoryRebound(to: Float.self) { try push($0, level: level) } }
    }

    /// The sum of everything added, into `out` (`count` values); the tree is empty after.
    mutating func finish(into out: UnsafeMutableBufferPointer<Float>) {
        precondition(out.count == count)
        let acc = finishValues()
        acc.withUnsafeBufferPointer { out.baseAddress!.update(from: $0.baseAddress!, count: count) }
        spare.append(acc)
    }

    /// The sum as a buffer of its own (one block, to share and to push into another
    /// tree); the tree is empty after.
    mutating func finishValues() -> [Float] {
        guard var acc = stack.popLast()?.values else { return [Float](repeating: 0, count: count) }
        while let left = stack.popLast() {
            var l = left.values
            l.withUnsafeMutableBufferPointer { lb in acc.withUnsafeBufferPointer { FloatVectors.add($0, to: lb.baseAddress!) } }
            spare.append(acc)
            acc = l
        }
        return acc
    }

    /// The aligned runs a contiguous range of shards falls into, in order: each as long as
    /// its start allows (2^k shards from a multiple of 2^k) and the range holds. Each is one
    /// subtree of the step's tree, pushed at level log2 of its length.
    static func blocks(of range: Range<Int>) -> [Range<Int>] {
        var out: [Range<Int>] = [], at = range.lowerBound
        while at < range.upperBound {
            var size = 1
            while at % (2 * size) == 0, at + 2 * size <= range.upperBound { size *= 2 }
            out.append(at..<(at + size))
            at += size
        }
        return out
    }

    /// log2 of a block's length (a power of two).
    static func level(of block: Range<Int>) -> Int { block.count.trailingZeroBitCount }

    private mutating func buffer() -> [Float] {
        if let b = spare.popLast(), b.count == count { return b }
        return [Float](repeating: 0, count: count)
    }
}
