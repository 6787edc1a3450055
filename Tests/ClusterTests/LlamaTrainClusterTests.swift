import Foundation
import Engine
import Tensors
import TestSupport
import XCTest
@testable import Cluster

/// Masked fine-tuning of a Llama-family model (`train:` with `tokens:`) on real worker
/// processes: every step's gradient the sum, in shard order, of the shards' next-token
/// cross-entropy gradients (`LlamaGradient`), AdamW with the masks fixed; the same bytes
/// for any worker count, pruned weights exactly zero, the loss falling.
final class LlamaTrainClusterTests: XCTestCase {
    private var dir: TempDir!

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("build the prune binary first (swift build)")
        }
        dir = TempDir("prune-llama-train")
        // A BF16 Llama in two shards (3 blocks, GQA, untied head) and token ids [20, 16].
        try JobProcessTestCase.writeCalibratedLlama(in: dir, seed: 5)
    }

    override func tearDown() { dir?.cleanup() }

    private func spec(_ name: String, train: String?, pruning: String = "method: wanda") throws -> String {
        let yaml = """
        model: model
        output: \(name)
        \(pruning)
        sparsity: 0.5
        calibration: {data: ids.npy, samples: 10, tokens: 16}
        evaluation: {data: ids.npy, samples: 8, tokens: 16}
        \(train.map { "train: {\($0)}" } ?? "")
        """
        try yaml.write(toFile: dir.file("\(name).yaml"), atomically: false, encoding: .utf8)
        return "\(name).yaml"
    }

    private func run(_ name: String, train: String?, workers: Int, pruning: String = "method: wanda",
                     environment: [String: String] = [:]) throws -> [String: Data] {
        let r = try Subprocess.run(Subprocess.pruneBinary, ["run", "-q", "--workers", "\(workers)", try spec(name, train: train, pruning: pruning)],
                                   cwd: dir.path, environment: environment)
        XCTAssertEqual(r.status, 0, "\(name): \(r.stderr)")
        return jobOutputs(dir.file(name))
    }

    private func manifest(_ job: String) throws -> Manifest {
        try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: dir.file("\(job)/out/manifest.json"))))
    }

    /// Wanda masks at 50%, then 3 epochs of AdamW on 40 windows of 8 tokens (batches of
    /// 8 in 2 gradient tasks): 0 and 2 workers write the same bytes; the decoder weights
    /// moved, their pruned entries stay exactly 0 (the masks are Wanda's); the training
    /// loss falls epoch by epoch and the evaluation perplexity ends below the masked start's.
    func testMaskedFineTuneGivesTheSameBytesForAnyWorkerCountAndLowersTheLoss() throws {
        let train = "data: ids.npy, tokens: 8, batch: 8, shards: 2, epochs: 3, learning_rate: 0.003, checkpoint_every: 3"
        let expected = try run("ft-w0", train: train, workers: 0)
        XCTAssertEqual(try run("ft-w2", train: train, workers: 2), expected)
        // Gradients and states read back and verified off the coordinator's loop (as
        // SmolLM2's hundreds of MB are): the same bytes.
        XCTAssertEqual(try run("ft-off-loop", train: train, workers: 2, environment: ["PRUNE_TEST_OFF_LOOP_BYTES": "1"]), expected)
        // Without an exchange (each span of 3 steps one task, its shards in order): the same bytes.
        XCTAssertEqual(try run("ft-none", train: train + ", exchange: none", workers: 2), expected)
        XCTAssertFalse(Ledger.doneRows(at: dir.file("ft-none/ledger.sqlite")).contains { $0.id.hasPrefix("train:grad:") })
        let m = try manifest("ft-w2")
        let training = try XCTUnwrap(m.training)
        XCTAssertEqual(training.epochs.count, 3)
        XCTAssertEqual(training.stepsPerEpoch, 5)
        let losses = training.epochs.map(\.trainLoss)
        XCTAssertLessThan(losses[2], losses[0], "\(losses)")
        let start = try XCTUnwrap(training.startPerplexity)
        let end = try XCTUnwrap(training.epochs.last?.testPerplexity)
        XCTAssertLessThan(end, start)
        XCTAssertNil(training.epochs[0].trainAccuracy)
        let check = try Subprocess.prune(["check", "model", "ft-w2"], cwd: dir.path)
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)

        // Against the same job without train: the same zeros (Wanda's masks), other kept values.
        _ = try run("plain", train: nil, workers: 0)
        let plain = try Checkpoint(path: dir.file("plain/out/dense")), tuned = try Checkpoint(path: dir.file("ft-w2/out/dense"))
        for (name, t) in m.tensors where t.pruned {
            let a = try plain.shard(of: name)!.floats(plain.info(name)!), b = try tuned.shard(of: name)!.floats(tuned.info(name)!)
            var moved = 0
            for i in a.indices {
                XCTAssertEqual(a[i] == 0, b[i] == 0, "\(name)[\(i)]: \(a[i]) before, \(b[i]) after fine-tuning")
                if b[i] != a[i] { moved += 1 }
            }
            XCTAssertGreaterThan(moved, a.count / 4, "\(name): the kept weights were trained")
            XCTAssertTrue(t.valuesUpdated, name)
        }
        let report = try String(contentsOfFile: dir.file("ft-w2/report.md"), encoding: .utf8)
        XCTAssertTrue(report.contains("evaluation perplexity"), report)
    }

    /// Fine-tuning after a pruning that re-fits the kept weights (SparseGPT's update, a
    /// layer-wise and a block-wise reconstruction) starts from the re-fit values: with a
    /// step too small to move a BF16 value (learning rate 1e-9), out/ holds the same
    /// weights as the same job without `train:`, which differ from the checkpoint's; the
    /// start perplexity is that of the re-fit model (to BF16 rounding), and 0 and 2
    /// workers write the same bytes.
    func testFineTuningStartsFromTheWeightsThePruningReFit() throws {
        let train = "data: ids.npy, tokens: 8, batch: 8, shards: 2, epochs: 1, learning_rate: 0.000000001"
        let original = try Checkpoint(path: dir.file("model"))
        for (k, pruning) in ["method: sparsegpt", "method: wanda\nreconstruct: layer", "method: wanda\nreconstruct: {scope: block, epochs: 1}"].enumerated() {
            let plain = "plain\(k)", tuned = "tuned\(k)"
            _ = try run(plain, train: nil, workers: 0, pruning: pruning)
            let expected = try run(tuned, train: train, workers: 0, pruning: pruning)
            XCTAssertEqual(try run("\(tuned)-w2", train: train, workers: 2, pruning: pruning), expected, pruning)
            let m = try manifest(tuned)
            let a = try Checkpoint(path: dir.file("\(plain)/out/dense")), b = try Checkpoint(path: dir.file("\(tuned)/out/dense"))
            var same = 0, all = 0, refit = 0
            for (name, t) in m.tensors where t.pruned {
                let x = try a.shard(of: name)!.floats(a.info(name)!), y = try b.shard(of: name)!.floats(b.info(name)!)
                let w = try original.shard(of: name)!.floats(original.info(name)!)
                for i in x.indices {
                    XCTAssertEqual(x[i] == 0, y[i] == 0, "\(pruning): \(name)[\(i)] the same masks")
                    if x[i] == y[i] { same += 1 }
                    if x[i] != 0, x[i] != w[i] { refit += 1 }
                    all += 1
                }
            }
            XCTAssertGreaterThan(refit, all / 10, "\(pruning): the pruning changed kept weights")
            XCTAssertGreaterThan(Double(same), 0.999 * Double(all), "\(pruning): fine-tuning started from the re-fit weights")
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir.file("\(plain)/report.json")))) as? [String: Any])
            let plainPerplexity = try XCTUnwrap((report["evaluation"] as? [String: Any])?["pruned"] as? Double)
            let start = try XCTUnwrap(m.training?.startPerplexity)
            XCTAssertEqual(start, plainPerplexity, accuracy: 0.01 * plainPerplexity, pruning)
        }
    }

    /// Bad fine-tuning input on a Llama: one `prune: error:` line naming the key or the
    /// data, exit 2, nothing written.
    func testBadFineTuningInputIsRefusedBeforeAnythingIsWritten() throws {
        try Data(Npy.int32([1, 2, 3, 70_000, 5, 6, 7, 8], shape: [1, 8])).write(to: URL(fileURLWithPath: dir.file("oov.npy")))
        let calibration = "calibration: {data: ids.npy, samples: 10, tokens: 16}"
        let cases: [(spec: String, expect: String)] = [
            ("method: wanda\n\(calibration)\ntrain: {data: ids.npy, tokens: 100000}", "train.tokens"),
            ("method: wanda\n\(calibration)\ntrain: {data: ids.npy, tokens: 64}", "not one window of train.tokens"),
            ("method: wanda\n\(calibration)\ntrain: {data: ids.npy, tokens: 8, batch: 100}", "more than the 40 training examples"),
            ("method: wanda\n\(calibration)\ntrain: {data: ids.npy, tokens: 8, learning_rate: -1}", "train.learning_rate"),
            ("method: wanda\n\(calibration)\ntrain: {data: oov.npy, tokens: 8}", "outside the model's vocabulary"),
            ("method: magnitude\ntrain: {data: ids.npy, tokens: 8}\nschedule: {method: gradual}", "a Llama model fine-tunes the job's masks"),
            ("method: wanda\n\(calibration)\ntrain: {data: ids.npy, tokens: 8, exchange: allgather}", "train.exchange: allgather"),
        ]
        for (i, c) in cases.enumerated() {
            let name = "bad\(i)"
            try "model: model\noutput: \(name)\nsparsity: 0.5\n\(c.spec)\n".write(toFile: dir.file("\(name).yaml"), atomically: false, encoding: .utf8)
            let r = try Subprocess.prune(["run", "-q", "--workers", "0", "\(name).yaml"], cwd: dir.path)
            XCTAssertEqual(r.status, 2, "\(c.spec): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("prune: error:") && r.stderr.contains(c.expect), "\(c.spec): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file(name)), "\(c.spec): nothing written")
        }
    }

    /// A coordinator SIGKILLed mid-way through a fine-tune whose state is cut into
    /// several payloads (PRUNE_TEST_STATE_CHUNK_BYTES), then `prune resume`: the same bytes
    /// as an unbroken run, and no finished task is done again.
    func testAKilledFineTuneResumesToTheSameBytes() throws {
        let train = "data: ids.npy, tokens: 8, batch: 4, shards: 2, epochs: 2, learning_rate: 0.003, checkpoint_every: 3"
        let chunks = ["PRUNE_TEST_STATE_CHUNK_BYTES": "262144"]
        let expected = try run("reference", train: train, workers: 0)
        try crashAndResume(in: dir, job: "crash", spec: try spec("crash", train: train), after: "train:grad:11:0", environment: chunks) { before in
            XCTAssertFalse(before.contains { $0.id == "train:ckpt:20" }, "the crash came before the end")
            // The state (parameters and two AdamW moments, about 1.3 MB) in payloads of at most 256 KiB.
            let checkpoint = try XCTUnwrap(before.first { $0.id.hasPrefix("train:ckpt:") }?.resultSHA256, "a checkpoint was kept before the crash")
            XCTAssertGreaterThan(ResultDigests.parse(checkpoint).filter { $0.name.hasPrefix("state") }.count, 4)
        }
        XCTAssertEqual(jobOutputs(dir.file("crash")), expected)
    }
}
