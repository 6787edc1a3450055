import Foundation
import XCTest
@testable import Models

/// Adam with a fixed mask: pruned weights and their moments stay exactly zero, the kept
/// ones converge, the first step is Adam's, and a state saved and restored continues to the
/// same bits as an unbroken run.
final class MaskedAdamTests: XCTestCase {
    private let n = 37
    private var keep: [Bool] { (0..<n).map { $0 % 3 != 1 } }
    private var target: [Float] { (0..<n).map { Float($0 % 7) * 0.3 - 0.8 } }

    /// ∂/∂w Σ (w − t)².
    private func gradient(_ w: [Float]) -> [Float] { zip(w, target).map { 2 * ($0 - $1) } }

    func testKeptWeightsConvergeAndPrunedOnesStayZero() {
        var adam = MaskedAdam(keep: keep, learningRate: 0.05)
        var w = [Float](repeating: 0.5, count: n)
        for _ in 0..<3000 { adam.update(&w, gradient: gradient(w)) }
        for i in 0..<n {
            if keep[i] {
                XCTAssertEqual(w[i], target[i], accuracy: 1e-3, "kept \(i)")
            } else {
                XCTAssertEqual(w[i], 0, "pruned \(i)")
                XCTAssertEqual(adam.first[i], 0)
                XCTAssertEqual(adam.second[i], 0)
            }
        }
    }

    func testTheFirstStepIsAdams() {
        var adam = MaskedAdam(keep: keep, learningRate: 0.01, weightDecay: 0.1)
        let start = (0..<n).map { Float($0) * 0.05 - 0.4 }
        var w = start
        let g = gradient(w)
        adam.update(&w, gradient: g)
        for i in 0..<n where keep[i] {
            // m̂ = g, v̂ = g² after one step: w − lr·(g / (|g| + ε) + λ·w).
            let expected = Double(start[i]) - 0.01 * (Double(g[i]) / (abs(Double(g[i])) + 1e-8) + 0.1 * Double(start[i]))
            XCTAssertEqual(Double(w[i]), expected, accuracy: 1e-6, "\(i)")
        }
    }

    func testARestoredStateContinuesToTheSameBits() throws {
        var unbroken = MaskedAdam(keep: keep, learningRate: 0.02)
        var a = [Float](repeating: -0.3, count: n)
        for _ in 0..<40 { unbroken.update(&a, gradient: gradient(a)) }

        var first = MaskedAdam(keep: keep, learningRate: 0.02)
        var b = [Float](repeating: -0.3, count: n)
        for _ in 0..<17 { first.update(&b, gradient: gradient(b)) }
        let saved = first.serializedState()
        var resumed = MaskedAdam(keep: keep, learningRate: 0.02)
        try resumed.restore(saved)
        XCTAssertEqual(resumed, first)
        for _ in 17..<40 { resumed.update(&b, gradient: gradient(b)) }
        XCTAssertEqual(a, b)
        XCTAssertEqual(resumed, unbroken)

        var fresh = MaskedAdam(keep: keep, learningRate: 0.02)
        XCTAssertThrowsError(try fresh.restore(Array(saved.dropLast())))
        var nan = saved
        nan.replaceSubrange((24 + 4 * 2)..<(24 + 4 * 3), with: withUnsafeBytes(of: Float.nan.bitPattern.littleEndian, Array.init))
        XCTAssertThrowsError(try fresh.restore(nan))
        var prunedMoment = saved
        prunedMoment.replaceSubrange((24 + 4 * 1)..<(24 + 4 * 2), with: withUnsafeBytes(of: Float(0.5).bitPattern.littleEndian, Array.init))
        XCTAssertThrowsError(try fresh.restore(prunedMoment), "entry 1 is pruned: its moment must be zero")
        XCTAssertEqual(fresh.step, 0, "a refused state changes nothing")
    }

    /// Half a cosine: the first step takes the base, each later one less, the last a small
    /// positive size (never 0, which the optimizers refuse), the middle half the base.
    func testTheCosineScheduleFallsFromTheBaseTowardsZero() {
        let sizes = (0..<8).map { CosineSchedule.stepSize(base: 0.004, step: $0, of: 8) }
        XCTAssertEqual(sizes[0], 0.004)
        XCTAssertEqual(sizes[4], 0.002, accuracy: 1e-9)
        XCTAssertTrue(zip(sizes, sizes.dropFirst()).allSatisfy { $0 > $1 }, "\(sizes)")
        XCTAssertGreaterThan(sizes[7], 0)
        XCTAssertLessThan(sizes[7], 0.0002)
        XCTAssertEqual(CosineSchedule.stepSize(base: 0.5, step: 0, of: 1), 0.5)
    }
}
