import Foundation
import TestSupport
import XCTest

/// An MLP trained on Fashion-MNIST by ops/make_mlp_model.py, pruned 50% by magnitude with
/// the real `prune` binary, then `prune check --eval` compares dense and pruned accuracy.
final class MLPCheckTests: XCTestCase {
    static let fashionMNIST = "/usr/share/datasets/fashion-mnist"

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            XCTFail("build the prune binary first (swift build): \(Subprocess.pruneBinary)")
            return
        }
    }

    /// Python with numpy and safetensors, and the Fashion-MNIST files; a skip without them
    /// unless PRUNE_REQUIRE_PYTHON=1.
    private func requireDataAndPython() throws {
        var missing: [String] = []
        if !Subprocess.pythonHasSafetensors { missing.append("python3 with numpy, safetensors and ml_dtypes") }
        if !FileManager.default.fileExists(atPath: Self.fashionMNIST + "/t10k-images-idx3-ubyte.gz") {
            missing.append("Fashion-MNIST (Debian package dataset-fashion-mnist)")
        }
        guard missing.isEmpty else {
            if Subprocess.pythonRequired { XCTFail("required (PRUNE_REQUIRE_PYTHON=1): \(missing.joined(separator: ", "))") }
            throw XCTSkip("not installed: \(missing.joined(separator: ", "))")
        }
    }

    /// The first number after `prefix` in `text`.
    private func number(after prefix: String, in text: String) throws -> Double {
        let range = try XCTUnwrap(text.range(of: prefix), "'\(prefix)' in \(text)")
        let digits = text[range.upperBound...].prefix { $0.isNumber || $0 == "." }
        return try XCTUnwrap(Double(digits), "a number after '\(prefix)' in \(text)")
    }

    func testMagnitudeHalfOfAFashionMNISTClassifierKeepsMostOfItsAccuracy() throws {
        try requireDataAndPython()
        let dir = TempDir("mlp-cli"); defer { dir.cleanup() }
        // A small, quick model: 20000 training images, 3 epochs (about 2 s; test accuracy ~0.84).
        let train = try Subprocess.run("/usr/bin/env", ["python3", Subprocess.packageRoot + "/ops/make_mlp_model.py", dir.file("model"),
                                                        "--train-limit", "20000", "--epochs", "3", "--hidden", "128", "--seed", "1"])
        XCTAssertEqual(train.status, 0, train.stderr)
        let numpyAccuracy = try number(after: "test accuracy ", in: train.stdout)

        let spec = "model: model\noutput: job\nmethod: magnitude\nsparsity: 0.5\nevaluation: {data: \(Self.fashionMNIST)}\n"
        try spec.write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        let run = try Subprocess.prune(["run", "-q", "job.yaml"], cwd: dir.path)
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("2 tensors pruned"), "fc1 and fc2 weights, biases left alone: \(run.stdout)")

        let check = try Subprocess.prune(["check", "-q", "model", "job", "--eval", Self.fashionMNIST], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("accuracy on 10000 examples: dense "), check.stdout)
        XCTAssertTrue(check.stdout.contains("check passed"), check.stdout)
        let dense = try number(after: "dense ", in: check.stdout)
        let pruned = try number(after: "pruned ", in: check.stdout)
        XCTAssertGreaterThanOrEqual(dense, 0.8)
        XCTAssertEqual(dense, numpyAccuracy, accuracy: 0.0015, "our forward pass agrees with numpy's on the 10000 test images")
        XCTAssertLessThanOrEqual(pruned, dense + 0.005)
        XCTAssertGreaterThan(pruned, dense - 0.15, "50% magnitude pruning of an MLP loses some accuracy, not most of it")

        // The job's report holds the same figures.
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("job/report.json")))) as! [String: Any]
        let evaluation = try XCTUnwrap(report["evaluation"] as? [String: Any])
        XCTAssertEqual(evaluation["metric"] as? String, "accuracy")
        XCTAssertEqual(try XCTUnwrap(evaluation["dense"] as? Double), dense, accuracy: 0.00005)
        XCTAssertEqual(try XCTUnwrap(evaluation["pruned"] as? Double), pruned, accuracy: 0.00005)
        XCTAssertEqual(evaluation["count"] as? Int, 10000)

        // A subset with --eval-samples, and bad data: one line, exit 2.
        let subset = try Subprocess.prune(["check", "-q", "model", "job", "--eval", Self.fashionMNIST + "/t10k-images-idx3-ubyte.gz", "--eval-samples", "500"], cwd: dir.path)
        XCTAssertEqual(subset.status, 0, subset.stderr)
        XCTAssertTrue(subset.stdout.contains("accuracy on 500 examples: dense "), subset.stdout)
        try "hello".write(toFile: dir.file("notes.txt"), atomically: false, encoding: .utf8)
        let bad = try Subprocess.prune(["check", "-q", "model", "job", "--eval", "notes.txt"], cwd: dir.path)
        XCTAssertEqual(bad.status, 2, bad.stdout + bad.stderr)
        XCTAssertEqual(bad.stderr.split(separator: "\n").count, 1, bad.stderr)
        XCTAssertTrue(bad.stderr.hasPrefix("prune: error: notes.txt: not labelled data"), bad.stderr)
        try "{\"architecture\": \"mlp\", \"input\": 784, \"layers\": [{\"weight\": \"fc9.weight\"}]}".write(toFile: dir.file("model/mlp.json"), atomically: false, encoding: .utf8)
        let badConfig = try Subprocess.prune(["check", "-q", "model", "job", "--eval", Self.fashionMNIST], cwd: dir.path)
        XCTAssertEqual(badConfig.status, 2, badConfig.stdout + badConfig.stderr)
        XCTAssertEqual(badConfig.stderr, "prune: error: model/mlp.json: layers[0].weight: no tensor named 'fc9.weight' in model\n")
    }
}
