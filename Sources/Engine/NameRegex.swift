/// A regular expression over tensor names, in a subset of Python's `re` syntax, matched in
/// time linear in the name's length (never backtracking).
///
/// Job specs select tensors with `re:` patterns. A backtracking engine (Swift `Regex`,
/// Python `re`) can take exponential time on patterns such as `(.*)*x$`, so a spec could
/// hang the coordinator. This matcher compiles the pattern to a Thompson NFA and runs it as
/// a Pike VM: each character of the name advances a set of NFA states, each state at most
/// once, so a match costs at most `name length × stateCount` steps whatever the pattern.
///
/// Supported (as in Python): literals; escapes `\.`, `\\` and any other punctuation,
/// `\d \D \w \W \s \S` (Unicode, as Python's `str` patterns), `\n \t \r \f \v \a \0`,
/// `\xHH \uHHHH \UHHHHHHHH`; classes `[...]`, `[^...]` with ranges and the escapes above;
/// `.`; quantifiers `* + ? {m} {m,} {,n} {m,n}` and their lazy forms (`*?`, …); `|`;
/// groups `(...)`, `(?:...)`, `(?P<name>...)`; comments `(?#...)`; flags `i`, `s`, `m` as
/// `(?i)` at the start of the pattern or scoped `(?i:...)`, `(?-i:...)`; anchors `^ $ \A \Z`
/// and word boundaries `\b \B`.
///
/// Refused with a `SyntaxError` naming the construct: backreferences, lookaround, atomic
/// groups, possessive quantifiers, conditionals, other flags, and patterns whose NFA (after
/// expanding counted repetitions) has more than `maxStates` states.
///
/// `matchesPrefix` has the semantics of Python's `re.match`: the pattern must match at the
/// start of the name, not necessarily up to its end.
public struct NameRegex: Sendable {
    /// Why a pattern was refused; `offset` is the position (in Unicode scalars) in the pattern.
    public struct SyntaxError: Error, CustomStringConvertible, Sendable {
        public let message: String
        public let offset: Int
        public var description: String { "\(message) at position \(offset)" }
    }

    /// NFA states above this make a pattern an error (each costs time on every character).
    public static let defaultMaxStates = 10_000
    /// Groups nested deeper than this make a pattern an error (bounds the parser's recursion).
    public static let maxNesting = 100

    /// The pattern as given.
    public let pattern: String
    private let program: [Instruction]

    /// States of the compiled NFA: the cost of one character of a name, at most.
    public var stateCount: Int { program.count }

    /// Parses and compiles `pattern`; throws `SyntaxError` for invalid or unsupported syntax.
    public init(_ pattern: String, maxStates: Int = NameRegex.defaultMaxStates) throws {
        self.pattern = pattern
        var parser = Parser(Array(pattern.unicodeScalars))
        let tree = try parser.parseAll()
        let size = tree.programSize
        guard size < maxStates else {
            throw SyntaxError(message: "the pattern is too large (\(size) states after expanding repetitions, at most \(maxStates))", offset: 0)
        }
        var compiler = Compiler()
        compiler.emit(tree)
        compiler.program.append(.match)
        program = compiler.program
    }

    /// True when the pattern matches at the start of `name` (Python's `re.match`).
    public func matchesPrefix(_ name: String) -> Bool {
        let text = Array(name.unicodeScalars)
        var current = StateSet(count: program.count), next = StateSet(count: program.count)
        var stack: [Int] = []
        addClosure(0, at: 0, text, into: &current, stack: &stack)
        var position = 0
        while true {
            if current.containsMatch { return true }
            if position == text.count || current.members.isEmpty { return false }
            let c = text[position]
            next.clear()
            for pc in current.members {
                if case .char(let set) = program[pc], set.matches(c) {
                    addClosure(pc + 1, at: position + 1, text, into: &next, stack: &stack)
                }
            }
            swap(&current, &next)
            position += 1
        }
    }

    /// Adds `start` and every state reachable from it without consuming a character
    /// (through splits, jumps and assertions that hold at `position`).
    private func addClosure(_ start: Int, at position: Int, _ text: [Unicode.Scalar], into set: inout StateSet, stack: inout [Int]) {
        stack.removeAll(keepingCapacity: true)
        stack.append(start)
        while let pc = stack.popLast() {
            guard set.insert(pc) else { continue }
            switch program[pc] {
            case .char: break
            case .match: set.containsMatch = true
            case .jump(let to): stack.append(to)
            case .split(let a, let b): stack.append(b); stack.append(a)
            case .assert(let a): if a.holds(at: position, in: text) { stack.append(pc + 1) }
            }
        }
    }
}

// MARK: - Character sets

/// What one `char` instruction accepts: a literal, `.`, an escape class or a bracketed set.
struct CharSet: Sendable {
    enum Item: Sendable {
        case scalar(UInt32)
        case range(UInt32, UInt32)
        case digit(negated: Bool)
        case word(negated: Bool)
        case space(negated: Bool)
        /// `.`: anything but a newline, unless `dotAll`.
        case any(dotAll: Bool)
    }

    var items: [Item]
    var negated = false
    var ignoreCase = false

    func matches(_ c: Unicode.Scalar) -> Bool {
        // Python's IGNORECASE: the character is in the set when it or its other case is;
        // a negated set negates that (so `(?i)[^a]` refuses both `a` and `A`).
        var inSet = contains(c.value)
        if !inSet && ignoreCase {
            inSet = CharSet.caseVariants(c).contains(where: contains)
        }
        return inSet != negated
    }

    private func contains(_ v: UInt32) -> Bool {
        items.contains { $0.contains(v) }
    }

    /// The simple (one-scalar) lower- and upper-case forms of `c` other than itself.
    static func caseVariants(_ c: Unicode.Scalar) -> [UInt32] {
        if c.isASCII {
            let v = c.value
            if v >= 0x41 && v <= 0x5A { return [v + 32] }
            if v >= 0x61 && v <= 0x7A { return [v - 32] }
            return []
        }
        var out: [UInt32] = []
        for mapping in [c.properties.lowercaseMapping, c.properties.uppercaseMapping] {
            let scalars = mapping.unicodeScalars
            if scalars.count == 1, let s = scalars.first, s != c { out.append(s.value) }
        }
        return out
    }
}

extension CharSet.Item {
    func contains(_ v: UInt32) -> Bool {
        switch self {
        case .scalar(let s): return v == s
        case .range(let lo, let hi): return v >= lo && v <= hi
        case .digit(let negated): return CharSet.Item.isDigit(v) != negated
        case .word(let negated): return CharSet.Item.isWord(v) != negated
        case .space(let negated): return CharSet.Item.isSpace(v) != negated
        case .any(let dotAll): return dotAll || v != 0x0A
        }
    }

    /// `\d` of a Python `str` pattern: Unicode decimal digits.
    static func isDigit(_ v: UInt32) -> Bool {
        if v < 0x80 { return v >= 0x30 && v <= 0x39 }
        guard let s = Unicode.Scalar(v) else { return false }
        return s.properties.numericType == .decimal
    }

    /// `\w`: letters, digits (any numeric character, as Python's `str.isalnum`) and `_`.
    static func isWord(_ v: UInt32) -> Bool {
        if v < 0x80 {
            return (v >= 0x30 && v <= 0x39) || (v >= 0x41 && v <= 0x5A) || (v >= 0x61 && v <= 0x7A) || v == 0x5F
        }
        guard let s = Unicode.Scalar(v) else { return false }
        return s.properties.isAlphabetic || s.properties.numericType != nil
    }

    /// `\s`: ASCII whitespace and Unicode white space.
    static func isSpace(_ v: UInt32) -> Bool {
        if v < 0x80 { return v == 0x20 || (v >= 0x09 && v <= 0x0D) || (v >= 0x1C && v <= 0x1F) }
        guard let s = Unicode.Scalar(v) else { return false }
        return s.properties.isWhitespace
    }
}

// MARK: - Assertions

/// Zero-width tests: anchors and word boundaries.
enum Assertion: Sendable {
    case startOfLine(multiline: Bool)  // ^
    case endOfLine(multiline: Bool)    // $
    case startOfText                   // \A
    case endOfText                     // \Z
    case wordBoundary(negated: Bool)   // \b, \B

    func holds(at i: Int, in text: [Unicode.Scalar]) -> Bool {
        switch self {
        case .startOfText: return i == 0
        case .endOfText: return i == text.count
        case .startOfLine(let multiline):
            return i == 0 || (multiline && text[i - 1] == "\n")
        case .endOfLine(let multiline):
            // Python: at the end, or before a newline that ends the text (any newline when multiline).
            if i == text.count { return true }
            return text[i] == "\n" && (multiline || i == text.count - 1)
        case .wordBoundary(let negated):
            // Python (before 3.14): \B does not match in an empty text.
            if negated && text.isEmpty { return false }
            let before = i > 0 && CharSet.Item.isWord(text[i - 1].value)
            let after = i < text.count && CharSet.Item.isWord(text[i].value)
            return (before != after) != negated
        }
    }
}

// MARK: - Syntax tree

indirect enum RegexNode: Sendable {
    case empty
    case char(CharSet)
    case concat([RegexNode])
    case alternation([RegexNode])
    /// `max == nil`: unbounded.
    case repetition(RegexNode, min: Int, max: Int?)
    case assertion(Assertion)

    /// Instructions `Compiler.emit` produces for this node, saturating at `Int.max / 4`.
    var programSize: Int {
        let cap = Int.max / 4
        func add(_ a: Int, _ b: Int) -> Int { min(cap, a + b) }
        func mul(_ a: Int, _ b: Int) -> Int { a == 0 || b == 0 ? 0 : (a > cap / b ? cap : a * b) }
        switch self {
        case .empty: return 0
        case .char, .assertion: return 1
        case .concat(let items): return items.reduce(0) { add($0, $1.programSize) }
        case .alternation(let items):
            // n − 1 splits and n − 1 jumps around the alternatives.
            return add(items.reduce(0) { add($0, $1.programSize) }, 2 * (items.count - 1))
        case .repetition(let node, let lo, let hi):
            let body = node.programSize
            let mandatory = mul(lo, body)
            if let hi { return add(mandatory, mul(hi - lo, add(body, 1))) }  // each optional copy: split + body
            return add(mandatory, add(body, 2))  // loop: split + body + jump
        }
    }
}

// MARK: - Parser

private struct Parser {
    struct Flags {
        var ignoreCase = false
        var dotAll = false
        var multiline = false
    }

    let s: [Unicode.Scalar]
    var i = 0
    var flags = Flags()
    var depth = 0
    var groupNames: Set<String> = []

    init(_ scalars: [Unicode.Scalar]) { s = scalars }

    func error(_ message: String, at offset: Int? = nil) -> NameRegex.SyntaxError {
        NameRegex.SyntaxError(message: message, offset: offset ?? i)
    }

    var atEnd: Bool { i >= s.count }
    func peek(_ k: Int = 0) -> Unicode.Scalar? { i + k < s.count ? s[i + k] : nil }

    mutating func parseAll() throws -> RegexNode {
        try parseGlobalFlags()
        let node = try parseAlternation()
        if !atEnd {
            // Only an unmatched ')' stops the top-level alternation early.
            throw error("unbalanced parenthesis")
        }
        return node
    }

    /// `(?i)`, `(?s)`, `(?m)` (and combinations) at the start: Python accepts global flags only there.
    mutating func parseGlobalFlags() throws {
        while peek() == "(" && peek(1) == "?" {
            var k = 2
            var letters: [Unicode.Scalar] = []
            while let c = peek(k), c != ")" && c != ":" && c != "-" && c.properties.isAlphabetic { letters.append(c); k += 1 }
            guard !letters.isEmpty, peek(k) == ")" else { return }
            try apply(letters, to: &flags, at: i + 2)
            i += k + 1
        }
    }

    func apply(_ letters: [Unicode.Scalar], to f: inout Flags, at offset: Int, enable: Bool = true) throws {
        for c in letters {
            switch c {
            case "i": f.ignoreCase = enable
            case "s": f.dotAll = enable
            case "m": f.multiline = enable
            case "u": break  // Unicode matching: what str patterns do anyway
            case "a", "L", "x":
                throw error("flag '\(c)' is not supported (supported: i, s, m, u)", at: offset)
            default:
                throw error("unknown flag '\(c)'", at: offset)
            }
        }
    }

    mutating func parseAlternation() throws -> RegexNode {
        var branches = [try parseConcat()]
        while peek() == "|" {
            i += 1
            branches.append(try parseConcat())
        }
        return branches.count == 1 ? branches[0] : .alternation(branches)
    }

    mutating func parseConcat() throws -> RegexNode {
        // Each item, and whether it may take a quantifier: not a bare anchor (`^*` is
        // "nothing to repeat") nor an item already quantified (`a**` is "multiple repeat").
        var items: [(node: RegexNode, kind: ItemKind)] = []
        while let c = peek(), c != "|", c != ")" {
            let start = i
            if let (lo, hi) = try parseQuantifier() {
                guard let last = items.last, last.kind != .anchor else { throw error("nothing to repeat", at: start) }
                guard last.kind != .quantified else { throw error("multiple repeat", at: start) }
                items[items.count - 1] = (.repetition(last.node, min: lo, max: hi), .quantified)
                continue
            }
            // A comment matches nothing and is skipped: `a(?#x)*` repeats the `a`.
            guard let atom = try parseAtom() else { continue }
            if case .assertion = atom { items.append((atom, .anchor)) } else { items.append((atom, .atom)) }
        }
        if items.isEmpty { return .empty }
        return items.count == 1 ? items[0].node : .concat(items.map(\.node))
    }

    enum ItemKind { case atom, anchor, quantified }

    /// A quantifier after an atom: (min, max or nil), consuming a lazy `?`; a possessive `+` is refused.
    mutating func parseQuantifier() throws -> (Int, Int?)? {
        guard let c = peek() else { return nil }
        var q: (Int, Int?)
        let start = i
        switch c {
        case "*": q = (0, nil); i += 1
        case "+": q = (1, nil); i += 1
        case "?": q = (0, 1); i += 1
        case "{":
            guard let (lo, hi, length) = quantifierBraces() else { return nil }  // a literal '{'
            if let hi, hi < lo { throw error("min repeat greater than max repeat", at: start) }
            q = (lo, hi)
            i += length
        default: return nil
        }
        if peek() == "?" {
            i += 1  // lazy: whether a match exists does not depend on it
        } else if peek() == "+" {
            throw error("possessive quantifiers are not supported", at: start)
        }
        return q
    }

    /// `{m}`, `{m,}`, `{,n}`, `{m,n}`, `{,}` at the cursor: (min, max or nil for unbounded,
    /// length in scalars), or nil when the brace is a literal, as Python reads `a{`, `a{}`
    /// and `a{x}`. Counts too large to matter saturate (the size check refuses them).
    func quantifierBraces() -> (Int, Int?, Int)? {
        guard peek() == "{", peek(1) != "}" else { return nil }
        var k = 1
        func digits() -> Int? {
            var value: Int?
            while let c = peek(k), c >= "0" && c <= "9" {
                value = min(1 << 40, (value ?? 0) * 10 + Int(c.value - 0x30))
                k += 1
            }
            return value
        }
        let lo = digits()
        var hi = lo
        var unbounded = false
        if peek(k) == "," {
            k += 1
            hi = digits()
            unbounded = hi == nil
        }
        guard peek(k) == "}" else { return nil }
        return (lo ?? 0, unbounded ? nil : hi ?? 0, k + 1)
    }

    /// One atom, or nil for something that matches nothing at all (a comment, `(?i)` late).
    mutating func parseAtom() throws -> RegexNode? {
        let c = s[i]
        let start = i
        switch c {
        case "(":
            return try parseGroup()
        case "*", "+", "?":
            throw error("nothing to repeat")  // parseConcat takes quantifiers after an item
        case "[":
            return .char(try parseClass())
        case ".":
            i += 1
            return .char(CharSet(items: [.any(dotAll: flags.dotAll)]))
        case "^":
            i += 1
            return .assertion(.startOfLine(multiline: flags.multiline))
        case "$":
            i += 1
            return .assertion(.endOfLine(multiline: flags.multiline))
        case "\\":
            i += 1
            guard let e = peek() else { throw error("bad escape (end of pattern)", at: start) }
            i += 1
            switch e {
            case "A": return .assertion(.startOfText)
            case "Z": return .assertion(.endOfText)
            case "b": return .assertion(.wordBoundary(negated: false))
            case "B": return .assertion(.wordBoundary(negated: true))
            default:
                let item = try escape(e, at: start, inClass: false)
                return .char(CharSet(items: [item], ignoreCase: flags.ignoreCase))
            }
        default:
            i += 1
            return literal(c)
        }
    }

    func literal(_ c: Unicode.Scalar) -> RegexNode {
        .char(CharSet(items: [.scalar(c.value)], ignoreCase: flags.ignoreCase))
    }

    /// The item of an escape `\e` (the backslash and `e` already consumed).
    mutating func escape(_ e: Unicode.Scalar, at start: Int, inClass: Bool) throws -> CharSet.Item {
        switch e {
        case "d": return .digit(negated: false)
        case "D": return .digit(negated: true)
        case "w": return .word(negated: false)
        case "W": return .word(negated: true)
        case "s": return .space(negated: false)
        case "S": return .space(negated: true)
        case "n": return .scalar(0x0A)
        case "t": return .scalar(0x09)
        case "r": return .scalar(0x0D)
        case "f": return .scalar(0x0C)
        case "v": return .scalar(0x0B)
        case "a": return .scalar(0x07)
        case "b" where inClass: return .scalar(0x08)
        case "x": return .scalar(try hex(2, at: start))
        case "u": return .scalar(try hex(4, at: start))
        case "U": return .scalar(try hex(8, at: start))
        case "0":
            // Up to two more octal digits, as Python reads \0, \01, \012.
            var v: UInt32 = 0, n = 0
            while n < 2, let c = peek(), c >= "0" && c <= "7" { v = v * 8 + (c.value - 0x30); i += 1; n += 1 }
            return .scalar(v)
        case "1"..."9":
            if inClass { throw error("octal escapes other than \\0 are not supported", at: start) }
            throw error("backreferences (\\\(e)) are not supported", at: start)
        case "N":
            throw error("named characters (\\N{...}) are not supported", at: start)
        default:
            if e.isASCII && e.properties.isAlphabetic { throw error("bad escape \\\(e)", at: start) }
            return .scalar(e.value)  // escaped punctuation (and any non-ASCII character) is itself
        }
    }

    mutating func hex(_ digits: Int, at start: Int) throws -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<digits {
            guard let c = peek(), let d = Parser.hexDigit(c) else {
                throw error("incomplete escape (\(digits) hex digits expected)", at: start)
            }
            v = v * 16 + d
            i += 1
        }
        guard Unicode.Scalar(v) != nil else { throw error("bad escape: U+\(String(v, radix: 16, uppercase: true)) is not a character", at: start) }
        return v
    }

    /// Python's rule for group names: an identifier.
    static func isIdentifier(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || first.properties.isAlphabetic else { return false }
        return name.unicodeScalars.allSatisfy { $0 == "_" || $0.properties.isAlphabetic || $0.properties.numericType == .decimal }
    }

    static func hexDigit(_ c: Unicode.Scalar) -> UInt32? {
        switch c {
        case "0"..."9": return c.value - 0x30
        case "a"..."f": return c.value - 0x61 + 10
        case "A"..."F": return c.value - 0x41 + 10
        default: return nil
        }
    }

    /// `[...]` at the cursor.
    mutating func parseClass() throws -> CharSet {
        let start = i
        i += 1
        var set = CharSet(items: [], ignoreCase: flags.ignoreCase)
        if peek() == "^" { set.negated = true; i += 1 }
        var first = true
        while true {
            guard let c = peek() else { throw error("unterminated character set", at: start) }
            if c == "]" && !first { i += 1; break }
            first = false
            let itemStart = i
            let lo = try classAtom()
            // A range: `lo-hi`, unless the '-' is the last character before ']'.
            if peek() == "-", let next = peek(1), next != "]" {
                i += 1
                let hiStart = i
                let hi = try classAtom()
                guard case .scalar(let a) = lo, case .scalar(let b) = hi else {
                    throw error("bad character range", at: itemStart)
                }
                guard a <= b else { throw error("bad character range", at: hiStart) }
                set.items.append(.range(a, b))
            } else {
                set.items.append(lo)
            }
        }
        return set
    }

    /// One character or escape class inside `[...]`.
    mutating func classAtom() throws -> CharSet.Item {
        let start = i
        let c = s[i]
        i += 1
        guard c == "\\" else { return .scalar(c.value) }
        guard let e = peek() else { throw error("bad escape (end of pattern)", at: start) }
        i += 1
        return try escape(e, at: start, inClass: true)
    }

    /// `(` at the cursor: a group, a non-capturing or named group, a scoped-flags group, a
    /// comment; lookaround and the rest are refused.
    mutating func parseGroup() throws -> RegexNode? {
        let start = i
        i += 1
        depth += 1
        defer { depth -= 1 }
        guard depth <= NameRegex.maxNesting else { throw error("groups nested deeper than \(NameRegex.maxNesting)", at: start) }
        let saved = flags
        defer { flags = saved }
        if peek() == "?" {
            i += 1
            guard let c = peek() else { throw error("unexpected end of pattern", at: start) }
            switch c {
            case ":":
                i += 1
            case "P":
                i += 1
                if peek() == "<" {
                    i += 1
                    var name = ""
                    while let n = peek(), n != ">" { name.unicodeScalars.append(n); i += 1 }
                    guard peek() == ">", !name.isEmpty else { throw error("missing group name or '>'", at: start) }
                    guard Parser.isIdentifier(name) else { throw error("bad character in group name '\(name)'", at: start) }
                    guard groupNames.insert(name).inserted else { throw error("redefinition of group name '\(name)'", at: start) }
                    i += 1
                } else if peek() == "=" {
                    throw error("backreferences (?P=...) are not supported", at: start)
                } else {
                    throw error("unknown extension ?P", at: start)
                }
            case "#":
                while let n = peek(), n != ")" { i += 1; _ = n }
                guard peek() == ")" else { throw error("missing ), unterminated comment", at: start) }
                i += 1
                return nil
            case "=", "!":
                throw error("lookahead (?\(c)...) is not supported", at: start)
            case "<":
                if peek(1) == "=" || peek(1) == "!" { throw error("lookbehind (?<\(peek(1)!)...) is not supported", at: start) }
                throw error("unknown extension ?<", at: start)
            case ">":
                throw error("atomic groups (?>...) are not supported", at: start)
            case "(":
                throw error("conditional groups (?(...)...) are not supported", at: start)
            default:
                // Scoped flags: (?i:...), (?-i:...), (?i-s:...). Global ones only at the start.
                var on: [Unicode.Scalar] = [], off: [Unicode.Scalar] = []
                var turningOff = false
                while let f = peek(), f != ":" && f != ")" {
                    if f == "-" { turningOff = true } else if turningOff { off.append(f) } else { on.append(f) }
                    i += 1
                }
                guard let end = peek() else { throw error("missing -, : or )", at: start) }
                if end == ")" {
                    throw error("global flags not at the start of the expression", at: start)
                }
                i += 1
                try apply(on, to: &flags, at: start + 2)
                try apply(off, to: &flags, at: start + 2, enable: false)
            }
        }
        let inner = try parseAlternation()
        guard peek() == ")" else { throw error("missing ), unterminated subpattern", at: start) }
        i += 1
        // A group is an item of its own, even when empty or made of anchors: `()*` and
        // `(\b)*` may be repeated, a bare `\b*` may not.
        return .concat([inner])
    }
}

// MARK: - Compiler

private enum Instruction: Sendable {
    case char(CharSet)
    case split(Int, Int)
    case jump(Int)
    case assert(Assertion)
    case match
}

private struct Compiler {
    var program: [Instruction] = []

    mutating func emit(_ node: RegexNode) {
        switch node {
        case .empty: break
        case .char(let set): program.append(.char(set))
        case .assertion(let a): program.append(.assert(a))
        case .concat(let items): for item in items { emit(item) }
        case .alternation(let branches):
            // split L1, next; L1: a; jump end; next: split L2, … ; last branch falls through.
            var jumps: [Int] = []
            for (k, branch) in branches.enumerated() {
                if k < branches.count - 1 {
                    let split = program.count
                    program.append(.split(0, 0))
                    emit(branch)
                    jumps.append(program.count)
                    program.append(.jump(0))
                    program[split] = .split(split + 1, program.count)
                } else {
                    emit(branch)
                }
            }
            for j in jumps { program[j] = .jump(program.count) }
        case .repetition(let body, let lo, let hi):
            for _ in 0..<lo { emit(body) }
            if let hi {
                // Optional copies: split(body, end) … each may stop.
                var splits: [Int] = []
                for _ in lo..<hi {
                    splits.append(program.count)
                    program.append(.split(0, 0))
                    emit(body)
                }
                for s in splits { program[s] = .split(s + 1, program.count) }
            } else {
                // loop: split(body, end); body; jump loop
                let loop = program.count
                program.append(.split(0, 0))
                emit(body)
                program.append(.jump(loop))
                program[loop] = .split(loop + 1, program.count)
            }
        }
    }
}

// MARK: - State sets

/// A set of NFA states with O(1) insert and clear (sparse set), iterated in insertion order.
private struct StateSet {
    private var seen: [Int32]
    private var generation: Int32 = 1
    private(set) var members: [Int] = []
    var containsMatch = false

    init(count: Int) { seen = [Int32](repeating: 0, count: count) }

    /// False when `pc` was already in the set.
    mutating func insert(_ pc: Int) -> Bool {
        if seen[pc] == generation { return false }
        seen[pc] = generation
        members.append(pc)
        return true
    }

    mutating func clear() {
        members.removeAll(keepingCapacity: true)
        containsMatch = false
        if generation == Int32.max {
            for k in seen.indices { seen[k] = 0 }
            generation = 1
        } else {
            generation += 1
        }
    }
}
