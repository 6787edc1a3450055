import Foundation

/// The byte layout of a masked optimizer's state (`MaskedAdam`, `MaskedSGD`): an 8-byte
/// magic naming the optimizer, the step (u64), the weight count n (u64), then `buffers`
/// arrays of n F32 values (moments, velocity), little-endian, copied in bulk: a large
/// layer's state is tens of MB per checkpoint.
enum OptimizerState {
    static func encode(magic: [UInt8], step: Int, buffers: [[Float]]) -> [UInt8] {
        let n = buffers.first?.count ?? 0
        var out = magic
        out.reserveCapacity(24 + 4 * n * buffers.count)
        withUnsafeBytes(of: UInt64(step).littleEndian) { out += $0 }
        withUnsafeBytes(of: UInt64(n).littleEndian) { out += $0 }
        // Swift's Float is IEEE-754 binary32 in host order; every host this runs on is little-endian.
        for b in buffers { b.withUnsafeBytes { out += $0 } }
        return out
    }

    /// The step and the buffers of `bytes`; refuses another magic, count or size, and
    /// non-finite values. The caller checks what its optimizer requires of the values.
    static func decode(_ bytes: [UInt8], magic: [UInt8], count n: Int, buffers: Int) throws -> (step: Int, buffers: [[Float]]) {
        guard bytes.count == 24 + 4 * n * buffers, Array(bytes[0..<8]) == magic else {
            throw ModelError("optimizer state: \(bytes.count) bytes, expected \(24 + 4 * n * buffers) for \(n) weights")
        }
        func u64(_ at: Int) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) } }
        guard u64(16) == UInt64(n), u64(8) <= UInt64(Int32.max) else { throw ModelError("optimizer state: wrong count or step") }
        let values = (0..<buffers).map { k in
            var v = [Float](repeating: 0, count: n)
            bytes.withUnsafeBytes { raw in v.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[(24 + 4 * n * k)..<(24 + 4 * n * (k + 1))])) } }
            return v
        }
        for (k, v) in values.enumerated() {
            if let i = v.firstIndex(where: { !$0.isFinite }) { throw ModelError("optimizer state: value \(i) of buffer \(k) is \(v[i])") }
        }
        return (Int(u64(8)), values)
    }
}
