/// Which tensors a job prunes, by exact name or by `re:` regular expression (matched at
/// the start of the name, as Python's `re.match` does in llm-compressor's specs). Regexes
/// use `NameRegex`: a subset of Python's syntax matched in linear time, so no pattern can
/// hang a job.
public struct NamePattern: Sendable, CustomStringConvertible {
    public let text: String
    private let regex: NameRegex?

    /// Parses `text`; a `re:` pattern that `NameRegex` refuses is a `SpecError`.
    public init(_ text: String) throws {
        self.text = text
        if text.hasPrefix("re:") {
            do {
                regex = try NameRegex(String(text.dropFirst(3)))
            } catch let e as NameRegex.SyntaxError {
                throw SpecError("'\(text)' is not a valid regular expression: \(e.description)")
            }
        } else {
            regex = nil
        }
    }

    public var isExact: Bool { regex == nil }
    public var description: String { text }
    /// NFA states of a regex (the cost of matching one character), 0 for an exact name.
    public var regexStates: Int { regex?.stateCount ?? 0 }

    /// An exact entry names a tensor, or a module (llm-compressor's habit): `lm_head`
    /// stands for `lm_head.weight`.
    public func matches(_ name: String) -> Bool {
        guard let regex else { return name == text || name == text + ".weight" }
        return regex.matchesPrefix(name)
    }
}

/// A list of `NamePattern`s matched as one: exact names through a set (so a list of many
/// names costs one lookup per tensor), then each regex.
public struct NameMatcher: Sendable {
    private let exact: Set<String>
    private let regexes: [NamePattern]

    public init(_ patterns: [NamePattern]) {
        exact = Set(patterns.filter(\.isExact).map(\.text))
        regexes = patterns.filter { !$0.isExact }
    }

    /// True when any pattern matches `name` (an exact entry naming it or its module).
    public func matches(_ name: String) -> Bool {
        exact.contains(name) || (name.hasSuffix(".weight") && exact.contains(String(name.dropLast(".weight".count))))
            || regexes.contains { $0.matches(name) }
    }
}
