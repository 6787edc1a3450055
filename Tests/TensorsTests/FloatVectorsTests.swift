import XCTest
@testable import Tensors

/// `FloatVectors` against the scalar loops: `allFinite` on every position of the
/// vectorized body and the tail, for ±Inf and NaN, and the largest finite values; `add`
/// bit for bit.
final class FloatVectorsTests: XCTestCase {
    func testAddGivesTheScalarLoopsBits() {
        var state: UInt32 = 7
        func next() -> Float {
            state = state &* 1664525 &+ 1013904223
            return Float(bitPattern: 0x3000_0000 | (state >> 4)) * (state & 1 == 0 ? 1 : -3)
        }
        for n in [0, 1, 8, 13, 1000] {
            let a = (0..<n).map { _ in next() }, b = (0..<n).map { _ in next() }
            var scalar = a
            for i in 0..<n { scalar[i] += b[i] }
            var vector = a
            vector.withUnsafeMutableBufferPointer { d in b.withUnsafeBufferPointer { FloatVectors.add($0, to: d.baseAddress ?? UnsafeMutablePointer(bitPattern: 8)!) } }
            XCTAssertEqual(vector.map(\.bitPattern), scalar.map(\.bitPattern), "\(n) values")
        }
    }

    func testEveryNonFiniteValueIsFoundWhereverItIs() {
        for n in [0, 1, 7, 8, 9, 23] {
            let finite = (0..<n).map { Float($0) * (($0 % 2 == 0) ? Float.greatestFiniteMagnitude / 64 : -1e-38) }
            XCTAssertTrue(FloatVectors.allFinite(finite), "\(n) finite values")
            for at in 0..<n {
                for bad in [Float.infinity, -Float.infinity, Float.nan] {
                    var values = finite
                    values[at] = bad
                    XCTAssertFalse(FloatVectors.allFinite(values), "\(bad) at \(at) of \(n)")
                    XCTAssertEqual(FloatVectors.allFinite(values), values.allSatisfy(\.isFinite))
                }
            }
        }
        XCTAssertTrue(FloatVectors.allFinite([Float](repeating: .greatestFiniteMagnitude, count: 17)))
        XCTAssertTrue(FloatVectors.allFinite([Float](repeating: -.greatestFiniteMagnitude, count: 17)))
    }
}
