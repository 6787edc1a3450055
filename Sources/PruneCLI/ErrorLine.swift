/// The one stderr line a failure becomes: `prune: error: MESSAGE`.
///
/// Messages quote paths, keys and names from hostile inputs, so the line is made safe
/// and short whatever they hold:
/// - line breaks become spaces, other control and bidirectional-formatting characters
///   are written as `\u{…}` (a name cannot move the cursor or start a second line);
/// - a word (a run without spaces: a path, a name) longer than `maxWord` characters keeps
///   its start and end around `…(N characters)…`;
/// - a line still longer than `maxLine` characters keeps its start and end the same way.
enum ErrorLine {
    /// Longest line printed, prefix included (a terminal shows a few lines of it).
    static let maxLine = 1_000
    /// Longest word kept whole: longer than any sane path or tensor name.
    static let maxWord = 300

    /// `prune: error: ` and the message made safe and short.
    static func format(_ message: String) -> String {
        let prefix = "prune: error: "
        let words = escaped(message).split(separator: " ", omittingEmptySubsequences: false).map { elide(Substring($0), to: maxWord) }
        return prefix + elide(Substring(words.joined(separator: " ")), to: maxLine - prefix.count)
    }

    /// `text` with line breaks as spaces and other invisible controls escaped.
    static func escaped(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for s in text.unicodeScalars {
            switch s.value {
            case 0x0A, 0x0D, 0x85, 0x2028, 0x2029: out.append(" ")
            case 0x09: out.append(" ")
            case 0x00..<0x20, 0x7F..<0xA0, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069:
                out.append(contentsOf: "\\u{\(String(s.value, radix: 16, uppercase: true))}".unicodeScalars)
            default: out.append(s)
            }
        }
        return String(out)
    }

    /// `text` itself when at most `limit` scalars long, else its start and end around a
    /// marker saying how much was left out (total at most `limit`, give or take the count's digits).
    static func elide(_ text: Substring, to limit: Int) -> String {
        let scalars = text.unicodeScalars
        let count = scalars.count
        guard count > limit else { return String(text) }
        let marker = "…(\(count) characters)…"
        let keep = max(limit - marker.count, 2)
        let head = scalars.prefix(keep - keep / 2), tail = scalars.suffix(keep / 2)
        return String(String.UnicodeScalarView(head)) + marker + String(String.UnicodeScalarView(tail))
    }
}
