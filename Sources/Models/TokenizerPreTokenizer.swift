/// How a byte-level BPE tokenizer cuts text into words before merging: the regex of the
/// tokenizer.json pre-tokenizer, implemented as a hand-written scanner over UTF-8.
///
/// `\s` is Unicode White_Space, `\p{L}` and `\p{N}` the Letter and Number general categories,
/// as in Oniguruma (which Hugging Face `tokenizers` uses).
public enum PreTokenizerKind: Sendable, Equatable, CustomStringConvertible {
    /// GPT-2: `ByteLevel(use_regex: true)`, the regex `gpt2Regex`.
    case gpt2
    /// Every digit (`\p{N}`) alone, then GPT-2 on the rest: `Sequence[Digits(individual_digits:
    /// true), ByteLevel(use_regex: true)]`. SmolLM/SmolLM2 and StarCoder (llama.cpp `smollm`, `starcoder`).
    case gpt2IndividualDigits
    /// Llama 3: `Split(llama3Regex)` then `ByteLevel(use_regex: false)`; numbers in groups of up to 3.
    case llama3
    /// Qwen2: `Split(qwen2Regex)` then `ByteLevel(use_regex: false)`; the Llama 3 regex with single digits.
    case qwen2

    /// The GPT-2 regex (`ByteLevel(use_regex: true)` uses it).
    public static let gpt2Regex =
        #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    /// The Llama 3 regex.
    public static let llama3Regex =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    /// The Qwen2 regex.
    public static let qwen2Regex =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The kind for a llama.cpp `tokenizer.ggml.pre` value (GGUF metadata); nil when unknown.
    public init?(ggmlPre name: String) {
        switch name {
        case "gpt2", "gpt-2": self = .gpt2
        case "smollm", "starcoder": self = .gpt2IndividualDigits
        case "llama3", "llama-v3", "llama-bpe": self = .llama3
        case "qwen2": self = .qwen2
        default: return nil
        }
    }

    /// The kind whose `Split` regex is exactly `regex`; nil for any other regex.
    public init?(splitRegex regex: String) {
        switch regex {
        case Self.gpt2Regex: self = .gpt2
        case Self.llama3Regex: self = .llama3
        case Self.qwen2Regex: self = .qwen2
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .gpt2: return "gpt2"
        case .gpt2IndividualDigits: return "gpt2IndividualDigits"
        case .llama3: return "llama3"
        case .qwen2: return "qwen2"
        }
    }

    /// Appends to `ends` the end offset of each word of `bytes[start..<end]` (valid UTF-8 cut at
    /// scalar boundaries). The words tile the range.
    func split(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, into ends: inout [Int]) {
        switch self {
        case .gpt2:
            ScalarScanner(p: p).gpt2(start, end, &ends)
        case .gpt2IndividualDigits:
            let s = ScalarScanner(p: p)
            var runStart = start, i = start
            while i < end {
                let (c, n) = s.classAt(i)
                if c == CharClass.number {
                    if runStart < i { s.gpt2(runStart, i, &ends) }
                    ends.append(i + n)
                    runStart = i + n
                }
                i += n
            }
            if runStart < end { s.gpt2(runStart, end, &ends) }
        case .llama3:
            ScalarScanner(p: p).llama3(start, end, maxDigits: 3, &ends)
        case .qwen2:
            ScalarScanner(p: p).llama3(start, end, maxDigits: 1, &ends)
        }
    }
}

/// Character classes of the pre-tokenizer regexes.
enum CharClass {
    static let other: UInt8 = 0
    static let letter: UInt8 = 1
    static let number: UInt8 = 2
    static let space: UInt8 = 3

    static func classify(_ v: UInt32) -> UInt8 {
        guard let s = Unicode.Scalar(v) else { return other }
        let p = s.properties
        if p.isWhitespace { return space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return letter
        case .decimalNumber, .letterNumber, .otherNumber: return number
        default: return other
        }
    }

    /// Classes of the Basic Multilingual Plane, computed once and never freed nor written again.
    nonisolated(unsafe) static let bmp: UnsafePointer<UInt8> = {
        let t = UnsafeMutablePointer<UInt8>.allocate(capacity: 0x10000)
        for v in 0..<UInt32(0x10000) { t[Int(v)] = classify(v) }
        return UnsafePointer(t)
    }()

    /// Unicode White_Space (Rust's `char::is_whitespace`), for lstrip/rstrip of added tokens.
    static func isSpace(_ v: UInt32) -> Bool {
        v < 0x10000 ? bmp[Int(v)] == space : classify(v) == space
    }
}

/// Decodes and classifies the scalars of a UTF-8 buffer and implements the regex alternatives.
struct ScalarScanner {
    let p: UnsafePointer<UInt8>
    let table = CharClass.bmp

    init(p: UnsafePointer<UInt8>) { self.p = p }

    /// The scalar at byte offset `i` and its length in bytes.
    @inline(__always)
    func scalarAt(_ i: Int) -> (UInt32, Int) {
        let b0 = UInt32(p[i])
        if b0 < 0x80 { return (b0, 1) }
        if b0 < 0xE0 { return ((b0 & 0x1F) << 6 | UInt32(p[i + 1] & 0x3F), 2) }
        if b0 < 0xF0 {
            return ((b0 & 0x0F) << 12 | UInt32(p[i + 1] & 0x3F) << 6 | UInt32(p[i + 2] & 0x3F), 3)
        }
        return ((b0 & 0x07) << 18 | UInt32(p[i + 1] & 0x3F) << 12 | UInt32(p[i + 2] & 0x3F) << 6
                | UInt32(p[i + 3] & 0x3F), 4)
    }

    /// The class of the scalar at byte offset `i` and its length in bytes.
    @inline(__always)
    func classAt(_ i: Int) -> (UInt8, Int) {
        let b0 = p[i]
        if b0 < 0x80 { return (asciiClass(b0), 1) }
        let (v, n) = scalarAt(i)
        return (v < 0x10000 ? table[Int(v)] : CharClass.classify(v), n)
    }

    @inline(__always)
    func asciiClass(_ b: UInt8) -> UInt8 {
        switch b {
        case 0x41...0x5A, 0x61...0x7A: return CharClass.letter
        case 0x30...0x39: return CharClass.number
        case 0x09...0x0D, 0x20: return CharClass.space
        default: return CharClass.other
        }
    }

    /// End of the run of scalars of class `cls` starting at `i`.
    @inline(__always)
    func run(_ cls: UInt8, from i: Int, _ end: Int) -> Int {
        var k = i
        while k < end {
            let (c, n) = classAt(k)
            if c != cls { break }
            k += n
        }
        return k
    }

    /// `\s+(?!\S)|\s+` at a whitespace scalar `i`: the run, less its last scalar when a
    /// non-space follows and the run is longer than one scalar.
    @inline(__always)
    func spaces(_ i: Int, _ end: Int) -> Int {
        var k = i, last = i
        while k < end {
            let (c, n) = classAt(k)
            if c != CharClass.space { break }
            last = k
            k += n
        }
        if k == end || last == i { return k }
        return last
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    func gpt2(_ start: Int, _ end: Int, _ ends: inout [Int]) {
        var i = start
        while i < end {
            let b = p[i]
            if b == 0x27, i + 1 < end {  // '
                let b1 = p[i + 1]
                if b1 == 0x73 || b1 == 0x74 || b1 == 0x6D || b1 == 0x64 {  // s t m d
                    i += 2; ends.append(i); continue
                }
                if i + 2 < end {
                    let b2 = p[i + 2]
                    if (b1 == 0x72 && b2 == 0x65) || (b1 == 0x76 && b2 == 0x65) || (b1 == 0x6C && b2 == 0x6C) {  // re ve ll
                        i += 3; ends.append(i); continue
                    }
                }
            }
            var (c, n) = classAt(i)
            var j = i
            if b == 0x20, i + 1 < end {
                let (c1, _) = classAt(i + 1)
                if c1 != CharClass.space { c = c1; j = i + 1; n = 0 }
            }
            if c != CharClass.space {
                i = run(c, from: j + n, end)
            } else {
                i = spaces(i, end)
            }
            ends.append(i)
        }
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    func llama3(_ start: Int, _ end: Int, maxDigits: Int, _ ends: inout [Int]) {
        var i = start
        while i < end {
            let b = p[i]
            if b == 0x27, i + 1 < end, let k = contraction(i + 1, end) {
                i = k; ends.append(i); continue
            }
            let (c, n) = classAt(i)
            if c == CharClass.letter {
                i = run(CharClass.letter, from: i + n, end); ends.append(i); continue
            }
            if c != CharClass.number && b != 0x0D && b != 0x0A && i + n < end {
                let (c1, n1) = classAt(i + n)
                if c1 == CharClass.letter {
                    i = run(CharClass.letter, from: i + n + n1, end); ends.append(i); continue
                }
            }
            if c == CharClass.number {
                var k = i + n, count = 1
                while count < maxDigits && k < end {
                    let (ck, nk) = classAt(k)
                    if ck != CharClass.number { break }
                    k += nk; count += 1
                }
                i = k; ends.append(i); continue
            }
            var j = i
            if b == 0x20, i + 1 < end, classAt(i + 1).0 == CharClass.other { j = i + 1 }
            if j > i || c == CharClass.other {
                var k = run(CharClass.other, from: j, end)
                while k < end && (p[k] == 0x0D || p[k] == 0x0A) { k += 1 }
                i = k; ends.append(i); continue
            }
            // Whitespace at i: `\s*[\r\n]+` up to the last newline of the run, else `\s+(?!\S)|\s+`.
            var k = i, lastNewline = -1
            while k < end {
                let (ck, nk) = classAt(k)
                if ck != CharClass.space { break }
                if p[k] == 0x0D || p[k] == 0x0A { lastNewline = k }
                k += nk
            }
            i = lastNewline >= 0 ? lastNewline + 1 : spaces(i, end)
            ends.append(i)
        }
    }

    /// After an apostrophe at `i - 1`: the end of a case-insensitive contraction, or nil.
    @inline(__always)
    private func contraction(_ i: Int, _ end: Int) -> Int? {
        let b1 = p[i] | 0x20
        if b1 == 0x73 || b1 == 0x74 || b1 == 0x6D || b1 == 0x64, p[i] & 0x80 == 0 { return i + 1 }  // s t m d
        // U+017F LATIN SMALL LETTER LONG S folds to s.
        if p[i] == 0xC5, i + 1 < end, p[i + 1] == 0xBF { return i + 2 }
        guard i + 1 < end, p[i] & 0x80 == 0, p[i + 1] & 0x80 == 0 else { return nil }
        let b2 = p[i + 1] | 0x20
        if (b1 == 0x72 && b2 == 0x65) || (b1 == 0x76 && b2 == 0x65) || (b1 == 0x6C && b2 == 0x6C) { return i + 2 }
        return nil
    }
}
