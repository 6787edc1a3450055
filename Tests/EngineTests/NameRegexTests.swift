import Foundation
import TestSupport
import XCTest
@testable import Engine

/// `NameRegex`: Python `re.match` semantics on the supported subset, linear time, clear
/// refusals of what is not supported.
final class NameRegexTests: XCTestCase {
    private func matches(_ pattern: String, _ name: String, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        do {
            return try NameRegex(pattern).matchesPrefix(name)
        } catch {
            XCTFail("'\(pattern)' refused: \(error)", file: file, line: line)
            return false
        }
    }

    func testPatternsUsedInPractice() {
        XCTAssertTrue(matches(".*lm_head", "lm_head.weight"))
        XCTAssertTrue(matches(".*lm_head", "model.lm_head.weight"))
        XCTAssertFalse(matches(".*lm_head", "model.norm.weight"))
        XCTAssertTrue(matches("(?i).*embed", "model.Embed_tokens.weight"))
        XCTAssertTrue(matches("(?i).*norm", "model.layers.0.input_LayerNorm.weight"))
        XCTAssertFalse(matches(".*norm", "model.layers.0.input_LayerNorm.weight"), "case matters without (?i)")
        XCTAssertTrue(matches(#"model\.layers\.\d+\.mlp\..*"#, "model.layers.12.mlp.up_proj.weight"))
        XCTAssertFalse(matches(#"model\.layers\.\d+\.mlp\..*"#, "model.layers.x.mlp.up_proj.weight"))
        XCTAssertFalse(matches(#"model\.layers\.\d+\.mlp\."#, "model_layers.1.mlp.up"), "an escaped dot is a dot")
        XCTAssertTrue(matches(#".*(q_proj|k_proj|v_proj)\.weight$"#, "model.layers.3.self_attn.k_proj.weight"))
        XCTAssertFalse(matches(#".*(q_proj|k_proj|v_proj)\.weight$"#, "model.layers.3.self_attn.o_proj.weight"))
        XCTAssertFalse(matches(#".*(q_proj|k_proj)\.weight$"#, "model.layers.3.self_attn.k_proj.weight.extra"), "$ anchors the end")
        XCTAssertTrue(matches(#"model\.layers\.([0-9]|1[0-5])\."#, "model.layers.15.mlp"))
        XCTAssertFalse(matches(#"model\.layers\.([0-9]|1[0-5])\."#, "model.layers.16.mlp"))
        XCTAssertTrue(matches(#"model\.layers\.\d{1,2}\.self_attn\.[qkv]_proj"#, "model.layers.31.self_attn.v_proj.weight"))
        XCTAssertFalse(matches("mlp", "model.layers.0.mlp"), "re.match anchors at the start")
        XCTAssertTrue(matches(".*", ""))
        XCTAssertTrue(matches("", "anything"))
    }

    /// Patterns that take a backtracking engine exponential time end at once here; the
    /// result is still right.
    func testCatastrophicPatternsAreLinear() throws {
        let long = String(repeating: "a", count: 50_000)
        for pattern in ["(.*)*x$", "(a*)*b", "(a|a)*b", "(a|aa)*c", "(.*a){20}x", "(?:a+)+$b", "(x+x+)+y"] {
            let regex = try NameRegex(pattern)
            XCTAssertFalse(regex.matchesPrefix(long), pattern)
            XCTAssertLessThanOrEqual(regex.stateCount, 200, pattern)
        }
        XCTAssertTrue(try NameRegex("(a*)*a$").matchesPrefix(long))
        XCTAssertTrue(try NameRegex("(.*)*x$").matchesPrefix(long + "x"))
    }

    func testUnsupportedAndInvalidSyntaxIsRefusedNamingIt() {
        let cases: [(String, String)] = [
            ("(", "missing ), unterminated subpattern at position 0"),
            ("a)", "unbalanced parenthesis"),
            ("[a-", "unterminated character set"),
            ("[z-a]", "bad character range"),
            ("*a", "nothing to repeat"),
            ("a**", "multiple repeat"),
            ("a{3,2}", "min repeat greater than max repeat"),
            (#"(a)\1"#, "backreferences"),
            ("(?P<x>a)(?P=x)", "backreferences"),
            ("a(?=b)", "lookahead"),
            ("a(?!b)", "lookahead"),
            ("(?<=a)b", "lookbehind"),
            ("(?>a)", "atomic groups"),
            ("a*+", "possessive"),
            ("(?x)a b", "flag 'x' is not supported"),
            ("a(?i)b", "global flags not at the start"),
            (#"\q"#, "bad escape \\q"),
            ("(?P<a>x)(?P<a>y)", "redefinition of group name"),
            ("(a{1000}){1000}", "too large"),
            (String(repeating: "(", count: 200) + String(repeating: ")", count: 200), "nested deeper than 100"),
        ]
        for (pattern, text) in cases {
            XCTAssertThrowsError(try NameRegex(pattern), pattern) { error in
                XCTAssertTrue("\(error)".contains(text), "'\(pattern)': '\(error)' should contain '\(text)'")
            }
        }
    }

    /// Random patterns of the supported subset against random names: the same answer as
    /// Python's `re.match`, and a pattern Python refuses is refused.
    func testAgreesWithPythonReMatch() throws {
        guard let oracle = try Subprocess.python("regex_oracle.py", ["--cases", "4000"]) else {
            if Subprocess.pythonRequired { XCTFail("python3 is required (PRUNE_REQUIRE_PYTHON=1)") }
            throw XCTSkip("python3 with numpy and safetensors not installed")
        }
        XCTAssertEqual(oracle.status, 0, oracle.stderr)
        let cases = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(oracle.stdout.utf8)) as? [[String: Any]])
        XCTAssertEqual(cases.count, 4000)
        var checked = 0, refused = 0
        for c in cases {
            let pattern = c["pattern"] as! String, name = c["name"] as! String
            let regex = try? NameRegex(pattern)
            guard let expected = c["match"] as? Bool else {
                XCTAssertNil(regex, "Python refuses '\(pattern)'; so must NameRegex")
                refused += 1
                continue
            }
            guard let regex else { XCTFail("'\(pattern)' is valid Python and in the subset, but refused"); continue }
            XCTAssertEqual(regex.matchesPrefix(name), expected, "re.match(\(pattern.debugDescription), \(name.debugDescription))")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 3000)
        XCTAssertGreaterThan(refused, 20)
    }
}
