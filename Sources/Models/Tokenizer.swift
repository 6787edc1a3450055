import Foundation

/// A reason a tokenizer could not be read: one line naming the file or the entry and what was expected.
public struct TokenizerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Byte-level BPE tokenizer of the GPT-2 / Llama 3 / SmolLM family, giving the same ids as
/// Hugging Face `tokenizers` with `add_special_tokens=False`.
///
/// Encoding: added tokens (`<|im_start|>`, …) are cut out of the raw text first (leftmost-longest,
/// with their lstrip/rstrip), the rest is normalized (NFC if the tokenizer says so), cut into words
/// by the pre-tokenizer regex (`PreTokenizerKind`), each word's UTF-8 bytes mapped through GPT-2's
/// byte-to-unicode table and merged by rank exactly as `tokenizers`' BPE model does.
/// `encode` never adds BOS/EOS; `bosTokenID` and `eosTokenID` say what a caller may add.
/// Immutable once built: one instance may encode from many threads.
public final class ByteLevelBPETokenizer: Sendable {
    /// How text is cut into words before merging.
    public let preTokenizer: PreTokenizerKind
    /// Beginning-of-sequence token, from tokenizer_config.json (`bos_token`) or config.json
    /// (`bos_token_id`) beside tokenizer.json, or as given to the memberwise initializer.
    public let bosTokenID: Int32?
    /// End-of-sequence token, found the same way as `bosTokenID`.
    public let eosTokenID: Int32?
    /// One more than the largest token id (vocabulary and added tokens).
    public let vocabularySize: Int

    let byteToID: [Int32]
    let merges: [UInt64: UInt64]  // (left << 32 | right) -> (rank << 32 | merged id)
    let vocabByUTF8: [[UInt8]: Int32]
    let ignoreMerges: Bool
    let unkID: Int32?
    let fuseUnk: Bool
    let nfc: Bool
    let rawAdded: AddedTokenMatcher
    let normalizedAdded: AddedTokenMatcher
    let tokenBytes: [UInt8]  // decoded bytes of every id, back to back
    let tokenOffsets: [Int]  // id i decodes to tokenBytes[tokenOffsets[i] ..< tokenOffsets[i + 1]]

    /// Reads a Hugging Face `tokenizer.json` whose model is BPE with a byte-level pre-tokenizer:
    /// `ByteLevel(use_regex: true)`, `Sequence[Digits(individual_digits: true), ByteLevel(use_regex: true)]`,
    /// or `Sequence[Split(Regex, Isolated), ByteLevel(use_regex: false)]` with the GPT-2, Llama 3 or
    /// Qwen2 regex. Anything else (another model, normalizer or regex) is an error naming it.
    public convenience init(tokenizerJSON path: String) throws {
        try self.init(spec: TokenizerJSON.read(path: path))
    }

    /// Builds a tokenizer from a vocabulary (byte-level token strings as in tokenizer.json, e.g.
    /// `Ġthe`), merges in rank order, and added tokens (special, matched before pre-tokenization),
    /// e.g. from GGUF metadata. Throws if a merge names a token that is not in the vocabulary.
    public convenience init(vocab: [String: Int], merges: [(String, String)], addedTokens: [String: Int],
                            preTokenizer: PreTokenizerKind, bosTokenID: Int32? = nil, eosTokenID: Int32? = nil) throws {
        var spec = TokenizerSpec(source: "tokenizer", preTokenizer: preTokenizer)
        spec.vocab = vocab
        spec.merges = merges
        spec.added = addedTokens.sorted { $0.value < $1.value }.map {
            TokenizerSpec.Added(content: $0.key, id: $0.value, lstrip: false, rstrip: false, normalized: false)
        }
        spec.bosTokenID = bosTokenID
        spec.eosTokenID = eosTokenID
        try self.init(spec: spec)
    }

    init(spec: TokenizerSpec) throws {
        preTokenizer = spec.preTokenizer
        ignoreMerges = spec.ignoreMerges
        nfc = spec.nfc
        fuseUnk = spec.fuseUnk
        bosTokenID = spec.bosTokenID
        eosTokenID = spec.eosTokenID

        // Bounded ids (checkIDs) keep the id table below and every Int32(id) exact.
        try spec.checkIDs()
        var byUTF8: [[UInt8]: Int32] = [:]
        byUTF8.reserveCapacity(spec.vocab.count)
        var maxID = -1
        for (token, id) in spec.vocab {
            byUTF8[Array(token.utf8)] = Int32(id)
            maxID = max(maxID, id)
        }
        for a in spec.added { maxID = max(maxID, a.id) }
        vocabByUTF8 = byUTF8
        vocabularySize = maxID + 1

        let table = ByteLevel.byteToUnicodeUTF8
        byteToID = (0..<256).map { byUTF8[table[$0]] ?? -1 }

        var m: [UInt64: UInt64] = [:]
        m.reserveCapacity(spec.merges.count)
        for (rank, (a, b)) in spec.merges.enumerated() {
            let ua = Array(a.utf8), ub = Array(b.utf8)
            guard let ia = byUTF8[ua], let ib = byUTF8[ub], let merged = byUTF8[ua + ub] else {
                throw TokenizerError("\(spec.source): merge \(rank) \"\(a) \(b)\" names a token that is not in the vocabulary")
            }
            m[UInt64(UInt32(ia)) << 32 | UInt64(UInt32(ib))] = UInt64(rank) << 32 | UInt64(UInt32(merged))
        }
        merges = m

        if let unk = spec.unkToken {
            guard let id = byUTF8[Array(unk.utf8)] else {
                throw TokenizerError("\(spec.source): unk_token \(unk.debugDescription) is not in the vocabulary")
            }
            unkID = id
        } else {
            unkID = nil
        }

        for a in spec.added where a.content.isEmpty {
            throw TokenizerError("\(spec.source): added token \(a.id) is empty")
        }
        rawAdded = AddedTokenMatcher(spec.added.filter { !$0.normalized })
        normalizedAdded = AddedTokenMatcher(spec.added.filter { $0.normalized })

        // Decoding: vocabulary tokens through the inverse byte map (a token with a character
        // outside it stays as its UTF-8, as `tokenizers`' ByteLevel decoder does); added tokens as written.
        var pieces = [[UInt8]?](repeating: nil, count: vocabularySize)
        let inverse = ByteLevel.unicodeToByte
        for (token, id) in spec.vocab {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(token.unicodeScalars.count)
            var mapped = true
            for s in token.unicodeScalars {
                guard let b = inverse[s.value] else { mapped = false; break }
                bytes.append(b)
            }
            pieces[id] = mapped ? bytes : Array(token.utf8)
        }
        for a in spec.added { pieces[a.id] = Array(a.content.utf8) }
        var all: [UInt8] = []
        var offsets = [0]
        offsets.reserveCapacity(vocabularySize + 1)
        for p in pieces {
            if let p { all += p }
            offsets.append(all.count)
        }
        tokenBytes = all
        tokenOffsets = offsets
    }

    /// The id of a token written as in tokenizer.json (`<|im_start|>`, `Ġthe`), or nil.
    public func tokenID(_ token: String) -> Int32? {
        if let a = rawAdded.id(of: token) ?? normalizedAdded.id(of: token) { return a }
        return vocabByUTF8[Array(token.utf8)]
    }

    /// Token ids of `text`; no BOS/EOS added.
    public func encode(_ text: String) -> [Int32] {
        var out: [Int32] = []
        out.reserveCapacity(text.utf8.count / 3 + 1)
        var state = EncodeState()
        var t = text
        t.withUTF8 { buf in
            guard let p = buf.baseAddress else { return }
            rawAdded.split(p, 0, buf.count, text: { s, e in
                if nfc && !isASCII(p, s, e) {
                    var norm = String(decoding: UnsafeBufferPointer(start: p + s, count: e - s), as: UTF8.self)
                        .precomposedStringWithCanonicalMapping
                    norm.withUTF8 { nb in
                        if let np = nb.baseAddress { encodeNormalized(np, 0, nb.count, &out, &state) }
                    }
                } else {
                    encodeNormalized(p, s, e, &out, &state)
                }
            }, token: { out.append($0) })
        }
        return out
    }

    /// The words `encode` would merge, as strings (for inspection and tests); added tokens
    /// appear whole.
    public func preTokenize(_ text: String) -> [String] {
        var out: [String] = []
        var ends: [Int] = []
        var t = text
        t.withUTF8 { buf in
            guard let p = buf.baseAddress else { return }
            func words(_ q: UnsafePointer<UInt8>, _ s: Int, _ e: Int) {
                normalizedAdded.split(q, s, e, text: { s, e in
                    ends.removeAll(keepingCapacity: true)
                    preTokenizer.split(q, s, e, into: &ends)
                    var w = s
                    for end in ends {
                        out.append(String(decoding: UnsafeBufferPointer(start: q + w, count: end - w), as: UTF8.self))
                        w = end
                    }
                }, token: { out.append(self.tokenString($0)) })
            }
            rawAdded.split(p, 0, buf.count, text: { s, e in
                if nfc && !isASCII(p, s, e) {
                    var norm = String(decoding: UnsafeBufferPointer(start: p + s, count: e - s), as: UTF8.self)
                        .precomposedStringWithCanonicalMapping
                    norm.withUTF8 { nb in if let np = nb.baseAddress { words(np, 0, nb.count) } }
                } else {
                    words(p, s, e)
                }
            }, token: { out.append(self.tokenString($0)) })
        }
        return out
    }

    /// Text of `ids`; added and special tokens are written out as they are. Unknown ids are
    /// skipped; bytes that are not valid UTF-8 become U+FFFD.
    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        tokenBytes.withUnsafeBufferPointer { all in
            for id in ids where id >= 0 && Int(id) < vocabularySize {
                let s = tokenOffsets[Int(id)], e = tokenOffsets[Int(id) + 1]
                bytes.append(contentsOf: all[s..<e])
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func tokenString(_ id: Int32) -> String {
        String(decoding: tokenBytes[tokenOffsets[Int(id)]..<tokenOffsets[Int(id) + 1]], as: UTF8.self)
    }

    // MARK: - Encoding internals

    struct EncodeState {
        var ends: [Int] = []
        var cache = WordCache()
        var bpe = BPEScratch()
    }

    private func isASCII(_ p: UnsafePointer<UInt8>, _ s: Int, _ e: Int) -> Bool {
        var i = s
        while i < e { if p[i] >= 0x80 { return false }; i += 1 }
        return true
    }

    private func encodeNormalized(_ p: UnsafePointer<UInt8>, _ s: Int, _ e: Int, _ out: inout [Int32], _ state: inout EncodeState) {
        normalizedAdded.split(p, s, e, text: { s, e in
            encodeWords(p, s, e, &out, &state)
        }, token: { out.append($0) })
    }

    private func encodeWords(_ p: UnsafePointer<UInt8>, _ s: Int, _ e: Int, _ out: inout [Int32], _ state: inout EncodeState) {
        state.ends.removeAll(keepingCapacity: true)
        preTokenizer.split(p, s, e, into: &state.ends)
        var w = s
        for end in state.ends {
            let word = p + w, n = end - w
            w = end
            let h = WordCache.hash(word, n)
            if state.cache.append(word, n, hash: h, to: &out) { continue }
            let start = out.count
            mergeWord(word, n, into: &out, scratch: &state.bpe)
            state.cache.insert(word, n, hash: h, values: out[start...])
        }
    }

    /// `tokenizers`' BPE `merge_word` + `Word::merge_all`: symbols are the bytes' tokens; the
    /// lowest-ranked adjacent pair (leftmost on ties) merges first; stale queue entries are skipped
    /// when the pair at their position no longer merges into the same token.
    private func mergeWord(_ word: UnsafePointer<UInt8>, _ n: Int, into out: inout [Int32], scratch: inout BPEScratch) {
        if ignoreMerges {
            var key: [UInt8] = []
            key.reserveCapacity(n * 2)
            for k in 0..<n { key += ByteLevel.byteToUnicodeUTF8[Int(word[k])] }
            if let id = vocabByUTF8[key] { out.append(id); return }
        }
        scratch.reset()
        var pendingUnk = false
        for k in 0..<n {
            let id = byteToID[Int(word[k])]
            if id >= 0 {
                if pendingUnk { scratch.push(unkID!); pendingUnk = false }
                scratch.push(id)
            } else if let unk = unkID {
                if pendingUnk && !fuseUnk { scratch.push(unk) }
                pendingUnk = true
            }
        }
        if pendingUnk { scratch.push(unkID!) }
        let count = scratch.symbols.count
        if count > 1 {
            for i in 0..<(count - 1) {
                if let m = merges[UInt64(UInt32(scratch.symbols[i].c)) << 32 | UInt64(UInt32(scratch.symbols[i + 1].c))] {
                    scratch.heapPush(rank: UInt32(m >> 32), pos: Int32(i), newID: Int32(truncatingIfNeeded: m))
                }
            }
        }
        while let top = scratch.heapPop() {
            let pos = Int(top.pos)
            let cur = scratch.symbols[pos]
            if !cur.alive || cur.next < 0 { continue }
            let nextPos = Int(cur.next)
            let right = scratch.symbols[nextPos]
            guard let m = merges[UInt64(UInt32(cur.c)) << 32 | UInt64(UInt32(right.c))],
                  Int32(truncatingIfNeeded: m) == top.newID else { continue }
            scratch.symbols[pos].c = top.newID
            scratch.symbols[pos].next = right.next
            scratch.symbols[nextPos].alive = false
            if right.next >= 0 { scratch.symbols[Int(right.next)].prev = Int32(pos) }
            let merged = scratch.symbols[pos]
            if merged.prev >= 0 {
                let prev = scratch.symbols[Int(merged.prev)]
                if let m = merges[UInt64(UInt32(prev.c)) << 32 | UInt64(UInt32(merged.c))] {
                    scratch.heapPush(rank: UInt32(m >> 32), pos: merged.prev, newID: Int32(truncatingIfNeeded: m))
                }
            }
            if merged.next >= 0 {
                let next = scratch.symbols[Int(merged.next)]
                if let m = merges[UInt64(UInt32(merged.c)) << 32 | UInt64(UInt32(next.c))] {
                    scratch.heapPush(rank: UInt32(m >> 32), pos: Int32(pos), newID: Int32(truncatingIfNeeded: m))
                }
            }
        }
        for s in scratch.symbols where s.alive { out.append(s.c) }
    }
}

/// GPT-2's reversible map from bytes to printable characters.
enum ByteLevel {
    /// The character of every byte: printable Latin-1 stands for itself, the other 68 bytes
    /// become U+0100, U+0101, … in byte order.
    static let byteToUnicode: [Unicode.Scalar] = {
        var printable = Set<Int>()
        for r in [0x21...0x7E, 0xA1...0xAC, 0xAE...0xFF] { printable.formUnion(r) }
        var out: [Unicode.Scalar] = []
        var extra = 0
        for b in 0..<256 {
            if printable.contains(b) {
                out.append(Unicode.Scalar(UInt32(b))!)
            } else {
                out.append(Unicode.Scalar(UInt32(256 + extra))!)
                extra += 1
            }
        }
        return out
    }()

    static let byteToUnicodeUTF8: [[UInt8]] = byteToUnicode.map { Array(String(Character($0)).utf8) }

    static let unicodeToByte: [UInt32: UInt8] = {
        var d: [UInt32: UInt8] = [:]
        for (b, s) in byteToUnicode.enumerated() { d[s.value] = UInt8(b) }
        return d
    }()
}

/// Working memory of one word's merges.
struct BPEScratch {
    struct Symbol {
        var c: Int32
        var prev: Int32
        var next: Int32
        var alive: Bool
    }
    struct Merge {
        var key: UInt64  // rank << 32 | pos: the heap pops the lowest rank, then the leftmost pos
        var newID: Int32
        var pos: Int32 { Int32(truncatingIfNeeded: key) }
    }

    var symbols: [Symbol] = []
    var heap: [Merge] = []

    mutating func reset() {
        symbols.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
    }

    mutating func push(_ id: Int32) {
        let n = Int32(symbols.count)
        if n > 0 { symbols[Int(n) - 1].next = n }
        symbols.append(Symbol(c: id, prev: n - 1, next: -1, alive: true))
    }

    mutating func heapPush(rank: UInt32, pos: Int32, newID: Int32) {
        heap.append(Merge(key: UInt64(rank) << 32 | UInt64(UInt32(pos)), newID: newID))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if heap[parent].key <= heap[i].key { break }
            heap.swapAt(parent, i)
            i = parent
        }
    }

    mutating func heapPop() -> Merge? {
        guard let last = heap.popLast() else { return nil }
        if heap.isEmpty { return last }
        let top = heap[0]
        heap[0] = last
        var i = 0
        let n = heap.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n && heap[l].key < heap[m].key { m = l }
            if r < n && heap[r].key < heap[m].key { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return top
    }
}

/// Token ids of the words already merged during one `encode`, keyed by their bytes
/// (never by `String`, whose equality is canonical equivalence).
struct WordCache {
    private struct Entry {
        var hash: UInt64
        var keyStart: Int
        var keyCount: Int
        var valueStart: Int
        var valueCount: Int
    }
    private var slots = [Int32](repeating: -1, count: 1 << 12)
    private var entries: [Entry] = []
    private var keys: [UInt8] = []
    private var values: [Int32] = []
    private static let maxEntries = 1 << 20

    static func hash(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<n { h = (h ^ UInt64(p[i])) &* 0x100_0000_01b3 }
        return h ^ (h >> 29)
    }

    /// Appends the cached ids of the word to `out`; false when the word is not cached.
    mutating func append(_ p: UnsafePointer<UInt8>, _ n: Int, hash h: UInt64, to out: inout [Int32]) -> Bool {
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: h) & mask
        while true {
            let e = Int(slots[i])
            if e < 0 { return false }
            let entry = entries[e]
            if entry.hash == h && entry.keyCount == n {
                let same = keys.withUnsafeBufferPointer { memcmp($0.baseAddress! + entry.keyStart, p, n) == 0 }
                if same {
                    out.append(contentsOf: values[entry.valueStart..<(entry.valueStart + entry.valueCount)])
                    return true
                }
            }
            i = (i + 1) & mask
        }
    }

    mutating func insert(_ p: UnsafePointer<UInt8>, _ n: Int, hash h: UInt64, values ids: ArraySlice<Int32>) {
        if entries.count >= Self.maxEntries { self = WordCache() }
        if (entries.count + 1) * 2 > slots.count { grow() }
        entries.append(Entry(hash: h, keyStart: keys.count, keyCount: n, valueStart: values.count, valueCount: ids.count))
        keys.append(contentsOf: UnsafeBufferPointer(start: p, count: n))
        values.append(contentsOf: ids)
        place(Int32(entries.count - 1), hash: h)
    }

    private mutating func place(_ e: Int32, hash h: UInt64) {
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: h) & mask
        while slots[i] >= 0 { i = (i + 1) & mask }
        slots[i] = e
    }

    private mutating func grow() {
        slots = [Int32](repeating: -1, count: slots.count * 2)
        for (i, e) in entries.enumerated() { place(Int32(i), hash: e.hash) }
    }
}

/// Added tokens matched leftmost-longest in raw bytes, as `tokenizers`' AddedVocabulary does.
struct AddedTokenMatcher: Sendable {
    struct Token: Sendable {
        var id: Int32
        var lstrip: Bool
        var rstrip: Bool
    }
    private var first = [Bool](repeating: false, count: 256)
    private var children: [[UInt8: Int32]] = [[:]]
    private var terminal: [Int32] = [-1]  // index into tokens, or -1
    private var tokens: [Token] = []
    private var byContent: [[UInt8]: Int32] = [:]

    init(_ added: [TokenizerSpec.Added]) {
        for a in added {
            let bytes = Array(a.content.utf8)
            first[Int(bytes[0])] = true
            var node = 0
            for b in bytes {
                if let c = children[node][b] {
                    node = Int(c)
                } else {
                    children.append([:])
                    terminal.append(-1)
                    children[node][b] = Int32(children.count - 1)
                    node = children.count - 1
                }
            }
            terminal[node] = Int32(tokens.count)
            tokens.append(Token(id: Int32(a.id), lstrip: a.lstrip, rstrip: a.rstrip))
            byContent[bytes] = Int32(a.id)
        }
    }

    func id(of content: String) -> Int32? { byContent[Array(content.utf8)] }

    /// Calls `text` for each stretch of `p[start..<end]` between added tokens and `token` for
    /// each added token, in order.
    func split(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int,
               text: (Int, Int) -> Void, token: (Int32) -> Void) {
        if tokens.isEmpty {
            if start < end { text(start, end) }
            return
        }
        let scanner = ScalarScanner(p: p)
        var segment = start, i = start
        while i < end {
            guard first[Int(p[i])] else { i += 1; continue }
            var node = 0, k = i, best = -1, bestEnd = i
            while k < end, let c = children[node][p[k]] {
                node = Int(c)
                k += 1
                if terminal[node] >= 0 { best = Int(terminal[node]); bestEnd = k }
            }
            guard best >= 0 else { i += 1; continue }
            let t = tokens[best]
            var s = i, e = bestEnd
            if t.lstrip {
                while s > segment {
                    var q = s - 1
                    while q > segment && p[q] & 0xC0 == 0x80 { q -= 1 }
                    guard CharClass.isSpace(scanner.scalarAt(q).0) else { break }
                    s = q
                }
            }
            if t.rstrip {
                while e < end {
                    let (v, n) = scanner.scalarAt(e)
                    guard CharClass.isSpace(v) else { break }
                    e += n
                }
            }
            if segment < s { text(segment, s) }
            token(t.id)
            segment = e
            i = e
        }
        if segment < end { text(segment, end) }
    }
}
