import Foundation
import Tensors

/// Everything a `ByteLevelBPETokenizer` is built from, whatever the source.
struct TokenizerSpec {
    struct Added {
        var content: String
        var id: Int
        var lstrip: Bool
        var rstrip: Bool
        /// Matched after normalization (tokenizers' `normalized`), else in the raw text.
        var normalized: Bool
    }

    /// Names the source in error messages.
    var source: String
    var preTokenizer: PreTokenizerKind
    var vocab: [String: Int] = [:]
    var merges: [(String, String)] = []
    var added: [Added] = []
    var nfc = false
    var ignoreMerges = false
    var unkToken: String?
    var fuseUnk = false
    var bosTokenID: Int32?
    var eosTokenID: Int32?
}

extension TokenizerSpec {
    /// Largest token id accepted: far above any vocabulary (~262K), and what sizes the
    /// decoding table (one entry per id up to the largest).
    static let maxTokenID = 1 << 24

    /// Refuses ids that are negative, larger than `maxTokenID`, or so far above the number
    /// of tokens that the id table would be mostly empty (an added token with id 2^31 − 1
    /// would size it at 2^31 entries); and two vocabulary tokens with one id (a tokenizer
    /// mapping everything to 0 would encode any text as zeros).
    func checkIDs() throws {
        let entries = vocab.count + added.count
        let limit = min(TokenizerSpec.maxTokenID, max(2 * entries, entries + 65_536))
        var owner: [Int: String] = [:]
        owner.reserveCapacity(vocab.count)
        for (token, id) in vocab {
            guard id >= 0, id < limit else {
                throw TokenizerError("\(source): vocabulary token \(token.debugDescription) has id \(id), expected 0..<\(limit) for \(entries) tokens")
            }
            if let other = owner.updateValue(token, forKey: id) {
                let (a, b) = other < token ? (other, token) : (token, other)
                throw TokenizerError("\(source): vocabulary tokens \(a.debugDescription) and \(b.debugDescription) have the same id \(id)")
            }
        }
        for a in added {
            guard a.id >= 0, a.id < limit else {
                throw TokenizerError("\(source): added token \(a.content.debugDescription) has id \(a.id), expected 0..<\(limit) for \(entries) tokens")
            }
        }
    }
}

/// Reading Hugging Face `tokenizer.json` (and the BOS/EOS names beside it).
enum TokenizerJSON {
    /// Largest tokenizer.json read (big vocabularies take ~35 MB).
    static let maxBytes = 64 << 20
    /// Largest tokenizer_config.json read (chat templates make them ~100 KB at most).
    static let maxConfigBytes = 16 << 20

    static func read(path: String) throws -> TokenizerSpec {
        let data: Data
        do {
            data = try SmallFile.read(path, limit: maxBytes)
        } catch {
            throw TokenizerError("\(path): \(error.describe("the tokenizer"))")
        }
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw TokenizerError("\(path): not valid JSON (\(error.localizedDescription))")
        }
        guard let root = parsed as? [String: Any] else { throw TokenizerError("\(path): expected a JSON object") }
        guard let model = root["model"] as? [String: Any] else { throw TokenizerError("\(path): no \"model\" object") }
        let type = model["type"] as? String ?? (model["merges"] != nil ? "BPE" : "?")
        guard type == "BPE" else {
            throw TokenizerError("\(path): model type \(type) is not supported (byte-level BPE only)")
        }

        var spec = TokenizerSpec(source: path, preTokenizer: try preTokenizer(root["pre_tokenizer"], path: path))
        spec.nfc = try normalizerIsNFC(root["normalizer"], path: path)

        guard let vocab = model["vocab"] as? [String: Any] else {
            throw TokenizerError("\(path): model.vocab is missing or not an object")
        }
        spec.vocab.reserveCapacity(vocab.count)
        for (token, value) in vocab {
            guard !ConfigFields.isBool(value), let id = value as? Int else {
                throw TokenizerError("\(path): model.vocab[\(token.debugDescription)] is not an integer")
            }
            spec.vocab[token] = id
        }
        guard let merges = model["merges"] as? [Any] else {
            throw TokenizerError("\(path): model.merges is missing or not an array")
        }
        spec.merges.reserveCapacity(merges.count)
        for (i, m) in merges.enumerated() {
            if let s = m as? String, let space = s.firstIndex(of: " ") {
                spec.merges.append((String(s[..<space]), String(s[s.index(after: space)...])))
            } else if let pair = m as? [Any], pair.count == 2, let a = pair[0] as? String, let b = pair[1] as? String {
                spec.merges.append((a, b))
            } else {
                throw TokenizerError("\(path): model.merges[\(i)] is neither \"a b\" nor [\"a\", \"b\"]")
            }
        }
        if let dropout = model["dropout"] as? Double, dropout > 0 {
            throw TokenizerError("\(path): model.dropout \(dropout) is not supported (null expected)")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = model[key] as? String, !s.isEmpty {
                throw TokenizerError("\(path): model.\(key) \(s.debugDescription) is not supported (null expected)")
            }
        }
        if model["byte_fallback"] as? Bool == true {
            throw TokenizerError("\(path): model.byte_fallback is not supported (a SentencePiece-style BPE, not byte-level)")
        }
        spec.ignoreMerges = model["ignore_merges"] as? Bool ?? false
        spec.unkToken = model["unk_token"] as? String
        spec.fuseUnk = model["fuse_unk"] as? Bool ?? false

        for (i, any) in (root["added_tokens"] as? [Any] ?? []).enumerated() {
            guard let t = any as? [String: Any], let rawID = t["id"], !ConfigFields.isBool(rawID), let id = rawID as? Int,
                  let content = t["content"] as? String else {
                throw TokenizerError("\(path): added_tokens[\(i)] needs an integer \"id\" and a string \"content\"")
            }
            if t["single_word"] as? Bool == true {
                throw TokenizerError("\(path): added token \(content.debugDescription) has single_word: true, which is not supported")
            }
            let special = t["special"] as? Bool ?? false
            spec.added.append(.init(content: content, id: id, lstrip: t["lstrip"] as? Bool ?? false,
                                    rstrip: t["rstrip"] as? Bool ?? false,
                                    normalized: t["normalized"] as? Bool ?? !special))
        }

        // Ids are checked before anything indexes by them or narrows them to Int32.
        try spec.checkIDs()
        let dir = (path as NSString).deletingLastPathComponent
        (spec.bosTokenID, spec.eosTokenID) = try specialIDs(directory: dir.isEmpty ? "." : dir, spec: spec)
        return spec
    }

    /// BOS/EOS from tokenizer_config.json (`bos_token`: a string or {"content": …}) or else
    /// config.json (`bos_token_id`: an integer or a list, first taken) in `directory`.
    static func specialIDs(directory: String, spec: TokenizerSpec) throws -> (Int32?, Int32?) {
        func load(_ name: String) throws -> [String: Any]? {
            let path = (directory as NSString).appendingPathComponent(name)
            let data: Data?
            do {
                data = try SmallFile.readIfPresent(path, limit: name == "config.json" ? LlamaConfig.Limits.configBytes : maxConfigBytes)
            } catch {
                throw TokenizerError("\(path): \(error.describe(name))")
            }
            return data.flatMap { (try? JSONSerialization.jsonObject(with: $0)) as? [String: Any] }
        }
        func id(ofToken content: String) -> Int32? {
            let bytes = Array(content.utf8)
            if let a = spec.added.first(where: { Array($0.content.utf8) == bytes }) { return Int32(exactly: a.id) }
            return spec.vocab[content].flatMap { Int32(exactly: $0) }
        }
        var bos: Int32?, eos: Int32?
        if let cfg = try load("tokenizer_config.json") {
            func token(_ key: String) -> Int32? {
                if let s = cfg[key] as? String { return id(ofToken: s) }
                if let d = cfg[key] as? [String: Any], let s = d["content"] as? String { return id(ofToken: s) }
                return nil
            }
            bos = token("bos_token")
            eos = token("eos_token")
        }
        if bos == nil || eos == nil, let cfg = try load("config.json") {
            func value(_ key: String) -> Int32? {
                if let i = cfg[key] as? Int { return Int32(exactly: i) }
                if let a = cfg[key] as? [Any], let i = a.first as? Int { return Int32(exactly: i) }
                return nil
            }
            bos = bos ?? value("bos_token_id")
            eos = eos ?? value("eos_token_id")
        }
        return (bos, eos)
    }

    static func normalizerIsNFC(_ any: Any?, path: String) throws -> Bool {
        guard let n = any as? [String: Any] else {
            if any == nil || any is NSNull { return false }
            throw TokenizerError("\(path): normalizer is not an object")
        }
        let type = n["type"] as? String ?? "?"
        if type == "NFC" { return true }
        if type == "Sequence", let list = n["normalizers"] as? [Any] {
            if list.isEmpty { return false }
            if list.count == 1 { return try normalizerIsNFC(list[0], path: path) }
        }
        throw TokenizerError("\(path): normalizer \(type) is not supported (none or NFC)")
    }

    /// Recognizes the supported pre-tokenizer pipelines; anything else is an error naming it.
    static func preTokenizer(_ any: Any?, path: String) throws -> PreTokenizerKind {
        var steps: [[String: Any]] = []
        func flatten(_ any: Any?) throws {
            guard let d = any as? [String: Any] else {
                throw TokenizerError("\(path): pre_tokenizer is missing; byte-level BPE needs a ByteLevel pre-tokenizer")
            }
            if d["type"] as? String == "Sequence" {
                for x in d["pretokenizers"] as? [Any] ?? [] { try flatten(x) }
            } else {
                steps.append(d)
            }
        }
        try flatten(any)

        func type(_ s: [String: Any]) -> String { s["type"] as? String ?? "?" }
        func byteLevel(_ s: [String: Any]) throws -> Bool? {  // use_regex, or nil if not ByteLevel
            guard type(s) == "ByteLevel" else { return nil }
            if s["add_prefix_space"] as? Bool == true {
                throw TokenizerError("\(path): pre_tokenizer ByteLevel with add_prefix_space: true is not supported")
            }
            return s["use_regex"] as? Bool ?? true
        }
        func regex(_ s: [String: Any]) -> String? {
            (s["pattern"] as? [String: Any])?["Regex"] as? String
        }
        func describe(_ s: [String: Any]) -> String {
            switch type(s) {
            case "ByteLevel": return "ByteLevel(use_regex: \(s["use_regex"] as? Bool ?? true))"
            case "Digits": return "Digits(individual_digits: \(s["individual_digits"] as? Bool ?? false))"
            case "Split":
                if let r = regex(s) { return "Split(regex: \(r), behavior: \(s["behavior"] as? String ?? "?"))" }
                return "Split(\(s["pattern"].map { "\($0)" } ?? "?"))"
            default: return type(s)
            }
        }

        if steps.count == 1, try byteLevel(steps[0]) == true { return .gpt2 }
        if steps.count == 2, type(steps[0]) == "Digits", steps[0]["individual_digits"] as? Bool == true,
           try byteLevel(steps[1]) == true {
            return .gpt2IndividualDigits
        }
        if steps.count == 2, type(steps[0]) == "Split", try byteLevel(steps[1]) == false {
            guard let r = regex(steps[0]) else {
                throw TokenizerError("\(path): pre_tokenizer \(describe(steps[0])) is not supported (a Regex pattern expected)")
            }
            guard let kind = PreTokenizerKind(splitRegex: r) else {
                throw TokenizerError("\(path): pre_tokenizer regex \(r) is not supported (known: the GPT-2, Llama 3 and Qwen2 regexes)")
            }
            guard steps[0]["behavior"] as? String ?? "Isolated" == "Isolated", steps[0]["invert"] as? Bool != true else {
                throw TokenizerError("\(path): pre_tokenizer \(describe(steps[0])) is not supported (behavior Isolated, invert false expected)")
            }
            return kind
        }
        throw TokenizerError("\(path): pre_tokenizer \(steps.map(describe).joined(separator: " + ")) is not supported; "
            + "expected ByteLevel(use_regex: true), Digits(individual_digits: true) + ByteLevel(use_regex: true), "
            + "or Split(regex) + ByteLevel(use_regex: false)")
    }
}
