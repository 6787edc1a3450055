import Foundation
import Tensors
import TestSupport
import XCTest
@testable import Cluster
import Protocol
import ZeroMQ

/// Tests that run the real `prune` binary on a small BF16 Llama (3 blocks, GQA, two
/// shards) in a temporary directory: the fixture and the helpers they share.
class JobProcessTestCase: XCTestCase {
    var dir: TempDir!
    /// The context of the test's own sockets (`protocolPeer`).
    private var context: ZMQContext?
    /// The spec every job of the test class runs (without `output:`).
    var spec: String { "model: model\nmethod: magnitude\npattern: per_row\nsparsity: 0.5\n" }
    /// Small tasks: many of them, so kills land mid-job.
    var taskWeights: [String] { ["--task-weights", "2048"] }

    /// A config.json the forward pass can run (the synthetic model's own names only the
    /// sizes): 4 query heads on 2 key/value heads, untied head.
    static let llamaConfig = """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "tie_word_embeddings": false}
        """

    /// `model/` (the synthetic BF16 Llama with `llamaConfig`) and `ids.npy` (20 windows of
    /// 16 seeded token ids, int32) in `dir`: what a calibrated job on real processes runs on.
    static func writeCalibratedLlama(in dir: TempDir, seed: UInt64) throws {
        try SyntheticModel.write(to: dir.file("model"), dtype: .bf16, shards: 2, layers: 3, hidden: 64, intermediate: 128)
        try llamaConfig.write(toFile: dir.file("model/config.json"), atomically: false, encoding: .utf8)
        var state = seed
        let ids: [Int32] = (0..<(20 * 16)).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32(state >> 33) % 48
        }
        try Data(Npy.int32(ids, shape: [20, 16])).write(to: URL(fileURLWithPath: dir.file("ids.npy")))
    }

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            throw XCTSkip("build the prune binary first (swift build)")
        }
        dir = TempDir("prune-\(String(describing: type(of: self)))")
        try SyntheticModel.write(to: dir.file("model"), dtype: .bf16, shards: 2, layers: 3, hidden: 64, intermediate: 128)
    }

    override func tearDown() {
        dir?.cleanup()
    }

    /// A DEALER that speaks the protocol itself, connected to `endpoint` and past its
    /// Hello as `name`: a worker that does what the test says, lies included.
    func protocolPeer(_ endpoint: String, name: String) throws -> ZMQSocket {
        if context == nil { context = try ZMQContext() }
        let peer = try ZMQSocket(context!, .dealer)
        try peer.setLinger(ms: 0)
        try peer.setReceiveTimeout(ms: 10_000)
        try peer.connect(endpoint)
        var hello = Prune_V1_Hello()
        hello.protocolVersion = Settings.protocolVersion
        hello.workerName = name
        try peer.send(try WireMessage.frames(.with(.hello(hello))))
        return peer
    }

    /// Writes NAME.yaml: the class's spec, `extra` lines, and `output:` (NAME by default).
    func writeSpec(_ name: String, extra: String = "", output: String? = nil) throws -> String {
        let path = dir.file("\(name).yaml")
        try (spec + extra + "output: \(output ?? name)\n").write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }

    /// dense/ and sparse/ bytes of a job's output.
    func outputs(_ job: String) -> [String: Data] {
        jobOutputs(dir.file(job))
    }

    /// The output of the class's spec run in one process: what every other run must equal.
    func reference() throws -> [String: Data] {
        let r = try Subprocess.prune(["run", "-q", "--workers", "0"] + taskWeights + [try writeSpec("reference")], cwd: dir.path)
        XCTAssertEqual(r.status, 0, r.stderr)
        return outputs("reference")
    }

    func ledger(_ job: String) throws -> Ledger {
        try Ledger(path: dir.file("\(job)/ledger.sqlite"), create: false, readOnly: true)
    }

    func doneTasks(_ job: String) -> Int {
        ((try? ledger(job).tasks()) ?? []).filter { $0.state == "done" }.count
    }

    func events(_ job: String, _ kind: String) throws -> [Ledger.Event] {
        try ledger(job).events().filter { $0.kind == kind }
    }

    /// Starts `prune coordinator` on a fresh loopback port for the spec NAME (written with
    /// `specExtra` lines), once it listens.
    func coordinator(_ name: String, specExtra: String = "", options: [String], environment: [String: String] = [:]) throws -> (Background, String) {
        let endpoint = "tcp://127.0.0.1:\(Background.freePort())"
        let job = try writeSpec(name, extra: specExtra)
        let c = try Background(Subprocess.pruneBinary, ["coordinator", "--job", job, "--bind", endpoint] + options, cwd: dir.path, environment: environment)
        XCTAssertTrue(Background.waitUntil(seconds: 20) { c.stderr.contains("listening on") }, c.stderr)
        return (c, endpoint)
    }
}

extension Ledger {
    /// The done tasks of the ledger at `path`, read-only while a job may still write it
    /// (none when it cannot be opened yet).
    static func doneRows(at path: String) -> [TaskRow] {
        guard let ledger = try? Ledger(path: path, create: false, readOnly: true), let rows = try? ledger.tasks() else { return [] }
        return rows.filter { $0.state == "done" }
    }
}

/// A coordinator SIGKILLed mid-job, then resumed: `prune run -q --workers 2 SPEC` (tasks
/// slowed by 30 ms) until `after` is done, SIGKILL, `check` on the tasks done before the
/// crash, `prune resume -q JOB`; asserts the resume succeeds and redoes no task done before
/// the crash, and returns those tasks. `environment` goes to both runs.
func crashAndResume(in dir: TempDir, job: String, spec: String, after task: String, environment: [String: String] = [:],
                    check: ([Ledger.TaskRow]) throws -> Void, file: StaticString = #filePath, line: UInt = #line) throws {
    let ledger = dir.file("\(job)/ledger.sqlite")
    let run = try Background(Subprocess.pruneBinary, ["run", "-q", "--workers", "2", spec], cwd: dir.path,
                             environment: environment.merging(["PRUNE_TEST_TASK_DELAY_MS": "30"]) { a, _ in a })
    XCTAssertTrue(Background.waitUntil(seconds: 180) { Ledger.doneRows(at: ledger).contains { $0.id == task } }, file: file, line: line)
    run.kill(SIGKILL)
    XCTAssertNotNil(run.wait(seconds: 10), file: file, line: line)
    let before = Ledger.doneRows(at: ledger)
    try check(before)
    let resume = try Subprocess.run(Subprocess.pruneBinary, ["resume", "-q", job], cwd: dir.path, environment: environment)
    XCTAssertEqual(resume.status, 0, resume.stderr, file: file, line: line)
    let events = try Ledger(path: ledger, create: false, readOnly: true).events()
    for t in before {
        XCTAssertEqual(events.filter { $0.kind == "done" && $0.task == t.id }.count, 1, "\(t.id) was not redone", file: file, line: line)
    }
}
