import Foundation
import Protocol
import Pruning
import Tensors
import XCTest
@testable import Engine

/// A classifier task's examples on the worker: rows of the job's example data, which a
/// worker fetches once (digest checked by its inputs) and keeps, checked before anything
/// is fetched or allocated.
final class TrainExamplesTests: XCTestCase {
    /// Artifacts held in memory, counting how often each is fetched.
    final class CountingInputs: TaskInputs {
        var artifacts: [String: [UInt8]] = [:]
        var fetches = 0
        func withTensorBytes<R>(_ ref: Prune_V1_TensorRef, _ range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
            throw PruningError("no tensors here")
        }
        func artifact(_ ref: Prune_V1_ArtifactRef) throws -> [UInt8] {
            fetches += 1
            guard let bytes = artifacts[ref.sha256] else { throw PruningError("artifact \(ref.sha256) is missing") }
            return bytes
        }
    }

    private func task(_ data: [UInt8], name: String, bytesPerValue: UInt32, rows: [UInt32], labels: [UInt32]? = nil, size: UInt64? = nil) -> Prune_V1_TrainTask {
        var t = Prune_V1_TrainTask()
        t.examples.sha256 = name
        t.examples.size = size ?? UInt64(data.count)
        t.exampleBytes = bytesPerValue
        t.rows = rows
        t.labels = labels ?? rows.map { $0 % 10 }
        return t
    }

    override func setUp() { TrainStep.kept.examples = nil }

    func testRowsOfIDXBytesAndOfF32AreTheExamplesInTheTasksOrder() throws {
        // Three examples of width 4, as IDX bytes and as F32.
        let pixels: [UInt8] = [0, 51, 102, 255, 10, 20, 30, 40, 255, 0, 128, 1]
        let inputs = CountingInputs()
        inputs.artifacts["pixels"] = pixels
        let t = task(pixels, name: "pixels", bytesPerValue: 1, rows: [2, 0, 2])
        let data = try TrainStep.exampleData(t, width: 4, inputs: inputs, where: "test")
        let x = TrainStep.inputValues(t, data: data, width: 4, examples: 0..<3)
        XCTAssertEqual(x, [8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11].map { LabelledData.pixel(pixels[$0]) })
        XCTAssertEqual(TrainStep.inputValues(t, data: data, width: 4, examples: 1..<2), (0..<4).map { LabelledData.pixel(pixels[$0]) })
        // The same data again is not fetched again.
        _ = try TrainStep.exampleData(task(pixels, name: "pixels", bytesPerValue: 1, rows: [1]), width: 4, inputs: inputs, where: "test")
        XCTAssertEqual(inputs.fetches, 1)

        let values: [Float] = [0.5, -1, 2, 3.25, 7, 8, 9, 10]
        let floats = FloatPayload.encode(values)
        inputs.artifacts["floats"] = floats
        let f = task(floats, name: "floats", bytesPerValue: 4, rows: [1, 1, 0])
        let fdata = try TrainStep.exampleData(f, width: 4, inputs: inputs, where: "test")
        XCTAssertEqual(TrainStep.inputValues(f, data: fdata, width: 4, examples: 0..<3), [7, 8, 9, 10, 7, 8, 9, 10, 0.5, -1, 2, 3.25])
        XCTAssertEqual(inputs.fetches, 2, "other data is fetched")
    }

    func testKeptDataIsUsedOnlyForTheSameDigestAndSize() throws {
        let inputs = CountingInputs()
        inputs.artifacts["d"] = [UInt8](repeating: 1, count: 8)
        _ = try TrainStep.exampleData(task(inputs.artifacts["d"]!, name: "d", bytesPerValue: 1, rows: [1]), width: 4, inputs: inputs, where: "t")
        // The same name with another size is not what is kept: fetched (and here refused).
        inputs.artifacts["d"] = [UInt8](repeating: 2, count: 12)
        let bigger = try TrainStep.exampleData(task(inputs.artifacts["d"]!, name: "d", bytesPerValue: 1, rows: [2]), width: 4, inputs: inputs, where: "t")
        XCTAssertEqual(bigger, [UInt8](repeating: 2, count: 12))
        XCTAssertEqual(inputs.fetches, 2)
    }

    /// A span's end state is named by its examples: other rows, labels or data name another state.
    func testASpansLineageNamesItsExamples() {
        let pixels = [UInt8](repeating: 0, count: 12)
        var base = task(pixels, name: "p", bytesPerValue: 1, rows: [0, 1, 2], labels: [3, 4, 5])
        base.shards = 1
        base.examplesPerStep = 3
        var otherRows = base; otherRows.rows = [0, 2, 1]
        var otherLabels = base; otherLabels.labels = [3, 5, 4]
        var otherData = base; otherData.examples.sha256 = "q"
        var otherWidth = base; otherWidth.exampleBytes = 4
        let lineages = [base, otherRows, otherLabels, otherData, otherWidth].map { TrainStep.spanLineage("start", $0) }
        XCTAssertEqual(Set(lineages).count, lineages.count)
        XCTAssertEqual(TrainStep.spanLineage("start", base), lineages[0])
    }

    func testBadExampleDataOrRowsAreRefusedBeforeAnythingIsFetched() throws {
        let pixels = [UInt8](repeating: 7, count: 12)
        let bad: [(String, Prune_V1_TrainTask, String)] = [
            ("a row past the data", task(pixels, name: "p", bytesPerValue: 1, rows: [0, 3]), "outside the 3 of the data"),
            ("a size that is no whole number of examples", task(pixels, name: "p", bytesPerValue: 1, rows: [0], size: 13), "13 bytes"),
            ("a value size other than 1 or 4", task(pixels, name: "p", bytesPerValue: 2, rows: [0]), "2 bytes a value"),
            ("more data than a task may name", task(pixels, name: "p", bytesPerValue: 1, rows: [0], size: 8 << 30), "\(8 << 30) bytes"),
            ("fewer labels than rows", task(pixels, name: "p", bytesPerValue: 1, rows: [0, 1], labels: [0]), "2 examples and 1 labels"),
            ("no data", task([], name: "p", bytesPerValue: 1, rows: [0]), "0 bytes"),
        ]
        for (what, t, expected) in bad {
            let inputs = CountingInputs()
            inputs.artifacts["p"] = pixels
            XCTAssertThrowsError(try TrainStep.exampleData(t, width: 4, inputs: inputs, where: "train task"), what) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(what): \(error)")
                XCTAssertTrue("\(error)".hasPrefix("train task: "), "\(what): \(error)")
            }
            XCTAssertEqual(inputs.fetches, 0, "\(what): refused before fetching")
        }
        // Bytes that are not what the reference says are refused too.
        let inputs = CountingInputs()
        inputs.artifacts["p"] = Array(pixels.prefix(8))
        XCTAssertThrowsError(try TrainStep.exampleData(task(pixels, name: "p", bytesPerValue: 1, rows: [0]), width: 4, inputs: inputs, where: "t"))
        XCTAssertNil(TrainStep.kept.examples)
    }
}
