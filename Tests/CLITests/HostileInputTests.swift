import Foundation
import TestSupport
import XCTest

/// The hostile-input corpus of `Tests/python/hostile_specs.py` (issue 11, section 3): job
/// specs, configs, tokenizers, token-id files and GGUF files that once crashed, hung or
/// gave a silently wrong answer. Each must now end with exit 2 and one bounded
/// `prune: error:` line naming the problem, within a generous timeout, leaving the corpus
/// directory exactly as it was. The valid controls each case varies must still succeed.
final class HostileInputTests: XCTestCase {
    /// A case that runs longer than this hangs (the slowest takes about 2 s in a debug build).
    static let timeout = 120.0

    struct Case: Decodable {
        let name: String
        let args: [String]
        let exit: Int32
        let expect: String
        let absent: [String]
    }

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            XCTFail("build the prune binary first (swift build): \(Subprocess.pruneBinary)")
            return
        }
        if !Subprocess.pythonHasSafetensors {
            if Subprocess.pythonRequired { XCTFail("python3 with numpy, safetensors and ml_dtypes is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with numpy, safetensors and ml_dtypes not installed")
        }
    }

    /// Runs `prune` with a timeout: (status, stdout, stderr), or nil when it did not finish.
    private func run(_ arguments: [String], cwd: String) throws -> (status: Int32, stdout: String, stderr: String)? {
        let p = try Background(Subprocess.pruneBinary, arguments, cwd: cwd)
        guard let status = p.wait(seconds: HostileInputTests.timeout) else {
            p.kill()
            return nil
        }
        return (status, p.stdout, p.stderr)
    }

    /// Every entry under `dir` (symbolic links not followed) with its type, size and
    /// modification time: equal snapshots mean nothing was created, removed or written.
    private func snapshot(_ dir: String) throws -> [String: String] {
        var out: [String: String] = [:]
        let fm = FileManager.default
        for case let path as String in fm.enumerator(atPath: dir)! {
            let a = try fm.attributesOfItem(atPath: (dir as NSString).appendingPathComponent(path))
            out[path] = "\(a[.type] ?? "?") \(a[.size] ?? "?") \((a[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)"
        }
        return out
    }

    func testHostileInputsExitTwoWithOneBoundedLineAndChangeNothing() throws {
        let dir = TempDir("prune-hostile"); defer { dir.cleanup() }
        let made = try XCTUnwrap(try Subprocess.python("hostile_specs.py", [dir.path]))
        XCTAssertEqual(made.status, 0, made.stderr)
        let cases = try JSONDecoder().decode([Case].self, from: Data(contentsOf: URL(fileURLWithPath: dir.file("cases.json"))))
        let hostile = cases.filter { $0.exit == 2 }, controls = cases.filter { $0.exit == 0 }
        XCTAssertGreaterThanOrEqual(hostile.count, 60)
        XCTAssertGreaterThanOrEqual(controls.count, 5)

        let before = try snapshot(dir.path)
        for c in hostile {
            guard let r = try run(c.args, cwd: dir.path) else {
                XCTFail("\(c.name): still running after \(HostileInputTests.timeout) s (a hang)")
                continue
            }
            XCTAssertEqual(r.status, 2, "\(c.name): \(r.stderr.prefix(2000))")
            let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            XCTAssertEqual(lines.count, 1, "\(c.name): one line expected, got \(r.stderr.prefix(2000))")
            XCTAssertTrue(r.stderr.hasPrefix("prune: error: "), "\(c.name): \(r.stderr.prefix(2000))")
            XCTAssertTrue(r.stderr.contains(c.expect), "\(c.name): '\(r.stderr.prefix(2000))' should contain '\(c.expect)'")
            XCTAssertLessThanOrEqual(lines.first?.count ?? 0, 1_000, "\(c.name): the line is bounded")
            XCTAssertEqual(r.stdout, "", c.name)
            for path in c.absent {
                XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file(path)), "\(c.name): \(path) was created")
            }
        }
        let after = try snapshot(dir.path)
        XCTAssertEqual(Set(after.keys).symmetricDifference(before.keys).sorted(), [], "entries created or removed")
        XCTAssertEqual(after.filter { before[$0.key] != $0.value }.keys.sorted(), [], "entries changed")

        for c in controls {
            guard let r = try run(c.args, cwd: dir.path) else {
                XCTFail("\(c.name): still running after \(HostileInputTests.timeout) s (a hang)")
                continue
            }
            XCTAssertEqual(r.status, 0, "\(c.name): \(r.stderr.prefix(2000))")
        }
    }

    /// A job directory is input too: `prune resume` reads its job.yaml bounded, so a link
    /// to /dev/zero is one error line, not a read that never ends.
    func testResumeReadsTheJobSpecBounded() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try SyntheticModel.write(to: dir.file("model"))
        try "model: model\noutput: job\nsparsity: 0.5\n".write(toFile: dir.file("job.yaml"), atomically: false, encoding: .utf8)
        XCTAssertEqual(try Subprocess.prune(["run", "-q", "job.yaml"], cwd: dir.path).status, 0)
        try FileManager.default.removeItem(atPath: dir.file("job/job.yaml"))
        try FileManager.default.createSymbolicLink(atPath: dir.file("job/job.yaml"), withDestinationPath: "/dev/zero")
        let r = try XCTUnwrap(try run(["resume", "job"], cwd: dir.path), "resume hangs")
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertEqual(r.stderr, "prune: error: job/job.yaml: cannot read the job spec\n")
    }
}
