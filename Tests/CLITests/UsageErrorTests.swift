import Foundation
import TestSupport
import XCTest

/// Every failure of every subcommand is one `prune: error:` line and exit 2; help exits 0.
final class UsageErrorTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: Subprocess.pruneBinary) else {
            XCTFail("build the prune binary first (swift build): \(Subprocess.pruneBinary)")
            return
        }
    }

    /// Exit 2, one stderr line starting `prune: error: ` that contains `text`, nothing on stdout.
    private func assertOneLine(_ arguments: [String], _ text: String, cwd: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try Subprocess.prune(arguments, cwd: cwd)
        let label = "prune \(arguments.joined(separator: " ").prefix(80))"
        XCTAssertEqual(r.status, 2, "\(label): \(r.stderr)", file: file, line: line)
        let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        XCTAssertEqual(lines.count, 1, "\(label): one line expected, got \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("prune: error: "), "\(label): \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(text), "\(label): '\(r.stderr)' should contain '\(text)'", file: file, line: line)
        XCTAssertLessThanOrEqual(r.stderr.count, 1_001, label, file: file, line: line)
        XCTAssertEqual(r.stdout, "", label, file: file, line: line)
    }

    func testParserErrorsAreOneLinePointingAtHelp() throws {
        try assertOneLine([], "no command given (one of inspect, run, check,")
        try assertOneLine(["frobnicate"], "Unexpected argument 'frobnicate'; see 'prune --help'")
        try assertOneLine(["run"], "Missing expected argument '<spec>'; see 'prune run --help'")
        try assertOneLine(["run", "--workers", "x", "job.yaml"], "The value 'x' is invalid for '--workers <workers>'; see 'prune run --help'")
        try assertOneLine(["run", "--bogus", "job.yaml"], "Unknown option '--bogus'; see 'prune run --help'")
        try assertOneLine(["inspect"], "see 'prune inspect --help'")
        try assertOneLine(["check", "a"], "Missing expected argument '<output>'; see 'prune check --help'")
        try assertOneLine(["densify", "a"], "see 'prune densify --help'")
        try assertOneLine(["resume"], "see 'prune resume --help'")
        try assertOneLine(["status"], "see 'prune status --help'")
        try assertOneLine(["coordinator", "--job", "j.yaml"], "Missing expected argument '--bind <bind>'; see 'prune coordinator --help'")
        try assertOneLine(["worker"], "see 'prune worker --help'")
        try assertOneLine(["keygen"], "see 'prune keygen --help'")
        try assertOneLine(["import-gguf", "a.gguf"], "see 'prune import-gguf --help'")
        try assertOneLine(["run", "--workers", "99999999999999999999", "job.yaml"], "is invalid for '--workers <workers>'")
    }

    func testValidationErrorsFromCommandsAreOneLine() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try assertOneLine(["import-gguf", "a.gguf", dir.file("out"), "--dtype", "I8"], "--dtype must be F32, F16 or BF16; see 'prune import-gguf --help'")
        try assertOneLine(["run", "--workers=-1", "job.yaml"], "cannot read the job spec")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("out")))
    }

    func testHelpExitsZero() throws {
        for arguments in [["--help"], ["-h"], ["help"], ["run", "--help"], ["help", "run"], ["import-gguf", "--help"]] {
            let r = try Subprocess.prune(arguments)
            XCTAssertEqual(r.status, 0, "\(arguments): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("USAGE:"), "\(arguments): \(r.stdout)")
        }
    }

    /// Hostile text in a message cannot make a second line, move the cursor or flood the terminal.
    func testErrorLinesAreEscapedAndBounded() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        try assertOneLine(["run", "a\nb\u{1B}[31mred\u{202E}.yaml"], "a b\\u{1B}[31mred\\u{202E}.yaml: cannot read the job spec")
        // A 10 MB path: elided in the middle, the reason kept.
        let long = "/tmp/" + String(repeating: "x", count: 10_000_000)
        try "model: \(long)\noutput: out\nsparsity: 0.5\n".write(toFile: dir.file("long.yaml"), atomically: false, encoding: .utf8)
        try assertOneLine(["run", "long.yaml"], "…(10000006 characters)…", cwd: dir.path)
        try assertOneLine(["run", "long.yaml"], "xxxx: no such file or directory", cwd: dir.path)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("out")))
    }
}
