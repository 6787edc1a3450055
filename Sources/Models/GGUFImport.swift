import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// What `GGUFImporter.importModel` wrote.
public struct ImportSummary: Sendable {
    /// The output directory (now holding the files below).
    public let outputDirectory: String
    /// `num_hidden_layers`.
    public let layers: Int
    /// Tensors written to `model.safetensors`.
    public let tensorCount: Int
    /// Elements over all written tensors.
    public let parameterCount: Int
    /// True when the GGUF has no `output.weight`: lm_head shares the embeddings.
    public let tiedEmbeddings: Bool
    /// The dtype of the written tensors.
    public let dtype: DType
    /// How many source tensors had each ggml type, e.g. `["Q4_1": 210, "F32": 61, "Q8_0": 1]`.
    public let sourceTypes: [String: Int]
    /// The files written, by name.
    public let files: [String]
}

/// Imports a llama.cpp GGUF checkpoint of the llama architecture as a Hugging Face
/// checkpoint directory: `model.safetensors`, `config.json` (LlamaForCausalLM),
/// `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`.
///
/// Tensors are dequantized to F32 (types F32, F16, BF16, Q8_0, Q4_0, Q4_1; any other
/// type fails naming it) and written in `dtype`. llama.cpp's converter permutes the rows
/// of q_proj and k_proj for its rotary layout; the import undoes that, so the output
/// equals the original Hugging Face weights up to quantization.
///
/// Everything is validated before anything is written, the output goes to a staging
/// directory beside `outDir`, and is renamed into place only when complete: a failed
/// import leaves nothing behind. `outDir` must not exist or be an empty directory.
public enum GGUFImporter {
    /// GGUF tensor name suffixes in a block → Hugging Face names, in the order written.
    static let blockTensors: [(gguf: String, hf: String)] = [
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_norm", "post_attention_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ]

    /// The Hugging Face name of a llama.cpp tensor name (`blk.3.attn_q.weight` →
    /// `model.layers.3.self_attn.q_proj.weight`), or nil when it has none.
    public static func huggingFaceName(_ gguf: String) -> String? {
        switch gguf {
        case "token_embd.weight": return "model.embed_tokens.weight"
        case "output_norm.weight": return "model.norm.weight"
        case "output.weight": return "lm_head.weight"
        default: break
        }
        let parts = gguf.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "blk", parts[3] == "weight",
              let n = Int(parts[1]), n >= 0, String(n) == parts[1],
              let hf = blockTensors.first(where: { $0.gguf == parts[2] })?.hf else { return nil }
        return "model.layers.\(n).\(hf).weight"
    }

    // MARK: q/k permutation

    /// The row of llama.cpp's permuted q/k tensor that holds row `row` of the Hugging Face
    /// tensor. convert_hf_to_gguf.py's `permute` reshapes the rows as
    /// `(heads, 2, rows/heads/2)`, swaps the last two axes and flattens; so Hugging Face row
    /// `h·d + i·d/2 + j` (head h, half i, index j) is stored at row `h·d + 2j + i`.
    public static func permutedRow(ofHFRow row: Int, rows: Int, heads: Int) -> Int {
        let perHead = rows / heads, half = perHead / 2
        let h = row / perHead, k = row % perHead
        let i = k / half, j = k % half
        return h * perHead + 2 * j + i
    }

    /// llama.cpp's permutation of a row-major `rows × cols` matrix (what the converter
    /// does to q/k; here for tests and for symmetry).
    public static func permute(_ m: [Float], rows: Int, cols: Int, heads: Int) -> [Float] {
        var out = m
        for r in 0..<rows {
            let p = permutedRow(ofHFRow: r, rows: rows, heads: heads)
            out[(p * cols)..<((p + 1) * cols)] = m[(r * cols)..<((r + 1) * cols)]
        }
        return out
    }

    /// The inverse of `permute`: the Hugging Face matrix from llama.cpp's.
    public static func unpermute(_ m: [Float], rows: Int, cols: Int, heads: Int) -> [Float] {
        var out = m
        for r in 0..<rows {
            let p = permutedRow(ofHFRow: r, rows: rows, heads: heads)
            out[(r * cols)..<((r + 1) * cols)] = m[(p * cols)..<((p + 1) * cols)]
        }
        return out
    }

    // MARK: import

    /// Imports `gguf` into the directory `outDir` with tensors in `dtype` (F32, F16 or BF16).
    public static func importModel(gguf path: String, to outDir: String, dtype: DType = .f32) throws -> ImportSummary {
        guard dtype.isFloat else {
            throw CheckpointError(file: path, "output dtype \(dtype.rawValue) is not a floating type (F32, F16, BF16)")
        }
        let file = try GGUFFile(path: path)
        let arch = try file.string("general.architecture")
        guard let arch else { throw CheckpointError(file: path, "missing metadata key 'general.architecture'") }
        guard arch == "llama" else {
            throw CheckpointError(file: path, "architecture '\(CheckpointError.printable(arch))' is not supported (only llama)")
        }
        let hp = try GGUFLlamaParams(file)
        let plan = try tensorPlan(file, hp)
        let tied = !plan.contains { $0.name == "lm_head.weight" }
        let tokenizer = try GGUFTokenizerFiles(file, vocabSize: hp.vocab, contextLength: hp.contextLength)
        let config = configJSON(hp, tied: tied, dtype: dtype, tokenizer: tokenizer)

        // Nothing is written before this point: all the checks above only read.
        let out = URL(fileURLWithPath: outDir).standardizedFileURL
        let parent = out.deletingLastPathComponent().path
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: out.path, isDirectory: &isDir) {
            guard isDir.boolValue else { throw CheckpointError(file: out.path, "exists and is not a directory") }
            let entries = (try? fm.contentsOfDirectory(atPath: out.path)) ?? []
            guard entries.isEmpty else { throw CheckpointError(file: out.path, "exists and is not empty: refusing to overwrite") }
        }
        do {
            try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError(file: parent, "cannot create: \(CheckpointError.reason(error))")
        }
        let staging = (parent as NSString).appendingPathComponent(".\(out.lastPathComponent).importing-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        do {
            try fm.createDirectory(atPath: staging, withIntermediateDirectories: false)
        } catch {
            throw CheckpointError(file: staging, "cannot create: \(CheckpointError.reason(error))")
        }
        var published = false
        defer { if !published { try? fm.removeItem(atPath: staging) } }

        try writeWeights(file, plan, dtype: dtype, to: (staging as NSString).appendingPathComponent("model.safetensors"))
        var files = ["model.safetensors"]
        let side: [(String, OrderedJSON, Bool)] = [
            ("config.json", config, true),
            ("tokenizer.json", tokenizer.tokenizerJSON, false),
            ("tokenizer_config.json", tokenizer.configJSON, true),
            ("special_tokens_map.json", tokenizer.specialTokensJSON, true),
        ]
        for (name, json, pretty) in side {
            try AtomicFileWriter.write(Array((json.rendered(pretty: pretty) + "\n").utf8), to: (staging as NSString).appendingPathComponent(name))
            files.append(name)
        }
        // rename(2) replaces an empty directory atomically and fails on a non-empty one.
        guard rename(staging, out.path) == 0 else {
            throw CheckpointError(file: out.path, "cannot move the imported checkpoint into place: \(String(cString: strerror(errno)))")
        }
        published = true
        AtomicFileWriter.syncDirectory(parent)

        var types: [String: Int] = [:]
        for t in file.tensors { types[t.type.name, default: 0] += 1 }
        return ImportSummary(outputDirectory: out.path, layers: hp.layers, tensorCount: plan.count,
                             parameterCount: plan.reduce(0) { $0 + $1.source.elementCount },
                             tiedEmbeddings: tied, dtype: dtype, sourceTypes: types, files: files.sorted())
    }

    /// One tensor to write: its GGUF source, Hugging Face name and shape, and the head
    /// count to un-permute its rows with (q and k only).
    struct Planned {
        let source: GGUFTensorInfo
        let name: String
        let shape: [Int]
        let unpermuteHeads: Int?
    }

    /// Maps and checks every tensor of the file against the hyperparameters; refuses
    /// unknown, missing, misshapen or non-dequantizable tensors before anything is written.
    static func tensorPlan(_ file: GGUFFile, _ hp: GGUFLlamaParams) throws -> [Planned] {
        let h = hp.hidden, q = hp.heads * hp.headDim, kv = hp.kvHeads * hp.headDim, ff = hp.intermediate
        var expected: [(gguf: String, shape: [Int], heads: Int?)] = [("token_embd.weight", [hp.vocab, h], nil)]
        let shapes: [String: ([Int], Int?)] = [
            "attn_norm": ([h], nil), "attn_q": ([q, h], hp.heads), "attn_k": ([kv, h], hp.kvHeads),
            "attn_v": ([kv, h], nil), "attn_output": ([h, q], nil), "ffn_norm": ([h], nil),
            "ffn_gate": ([ff, h], nil), "ffn_up": ([ff, h], nil), "ffn_down": ([h, ff], nil),
        ]
        for l in 0..<hp.layers {
            for (g, _) in blockTensors {
                let (shape, heads) = shapes[g] ?? ([], nil)
                expected.append(("blk.\(l).\(g).weight", shape, heads))
            }
        }
        expected.append(("output_norm.weight", [h], nil))
        if file.info("output.weight") != nil { expected.append(("output.weight", [hp.vocab, h], nil)) }

        let known = Set(expected.map(\.gguf))
        for t in file.tensors where !known.contains(t.name) {
            if t.name == "rope_freqs.weight" {
                throw CheckpointError(file: file.path, tensor: t.name, "Llama 3.1-style rope scaling (rope_freqs) is not supported")
            }
            throw CheckpointError(file: file.path, tensor: t.name, "not a tensor of a llama model with \(hp.layers) layers (no Hugging Face name for it)")
        }
        return try expected.map { e in
            guard let t = file.info(e.gguf) else {
                throw CheckpointError(file: file.path, tensor: e.gguf, "missing")
            }
            guard t.shape == e.shape else {
                throw CheckpointError(file: file.path, tensor: e.gguf, "shape \(t.shape) (row-major) does not match the metadata, which implies \(e.shape)")
            }
            guard t.type.canDequantize else {
                throw CheckpointError(file: file.path, tensor: e.gguf, "tensor type \(t.type.name) is not supported (supported: \(GGMLType.dequantizableNames))")
            }
            return Planned(source: t, name: huggingFaceName(e.gguf) ?? e.gguf, shape: e.shape, unpermuteHeads: e.heads)
        }
    }

    /// Streams the tensors into `model.safetensors`, a chunk of rows at a time.
    static func writeWeights(_ file: GGUFFile, _ plan: [Planned], dtype: DType, to path: String) throws {
        let writer = try SafeTensorsWriter(path: path, tensors: plan.map { TensorSpec(name: $0.name, dtype: dtype, shape: $0.shape) },
                                           metadata: ["format": "pt"])
        let chunkElements = 1 << 20
        var floats: [Float] = []
        var bytes: [UInt8] = []
        for p in plan {
            let t = p.source
            let rows = t.rowCount, cols = t.rowLength
            let rowsPerChunk = max(1, chunkElements / cols)
            let need = min(rows, rowsPerChunk) * cols
            if floats.count < need { floats = [Float](repeating: 0, count: need) }
            if bytes.count < need * dtype.size { bytes = [UInt8](repeating: 0, count: need * dtype.size) }
            var start = 0
            while start < rows {
                let n = min(rowsPerChunk, rows - start)
                try floats.withUnsafeMutableBufferPointer { buf in
                    for r in start..<(start + n) {
                        let src = p.unpermuteHeads.map { permutedRow(ofHFRow: r, rows: rows, heads: $0) } ?? r
                        let dst = UnsafeMutableBufferPointer(rebasing: buf[((r - start) * cols)..<((r - start + 1) * cols)])
                        try file.dequantizeRows(t, rows: src..<(src + 1), into: dst)
                    }
                }
                let count = n * cols
                floats.withUnsafeBufferPointer { f in
                    bytes.withUnsafeMutableBytes { b in
                        FloatConversion.fromFloat(UnsafeBufferPointer(rebasing: f[0..<count]), dtype: dtype, into: b)
                    }
                }
                try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[0..<(count * dtype.size)])) }
                start += n
            }
            file.release(t)
        }
        try writer.finish()
    }

    // MARK: config.json

    static func configJSON(_ hp: GGUFLlamaParams, tied: Bool, dtype: DType, tokenizer: GGUFTokenizerFiles) -> OrderedJSON {
        var c: [(String, OrderedJSON)] = [
            ("architectures", .array([.string("LlamaForCausalLM")])),
            ("model_type", .string("llama")),
            ("hidden_size", .int(hp.hidden)),
            ("intermediate_size", .int(hp.intermediate)),
            ("num_hidden_layers", .int(hp.layers)),
            ("num_attention_heads", .int(hp.heads)),
            ("num_key_value_heads", .int(hp.kvHeads)),
        ]
        if hp.headDimExplicit { c.append(("head_dim", .int(hp.headDim))) }
        c += [
            ("hidden_act", .string("silu")),
            ("rms_norm_eps", .number(hp.rmsEps)),
            ("rope_theta", .number(hp.ropeTheta)),
            ("rope_scaling", hp.ropeScalingFactor.map { .object([("type", .string("linear")), ("factor", .number($0))]) } ?? .null),
            ("max_position_embeddings", .int(hp.contextLength)),
            ("vocab_size", .int(hp.vocab)),
            ("tie_word_embeddings", .bool(tied)),
            ("attention_bias", .bool(false)),
            ("mlp_bias", .bool(false)),
            ("bos_token_id", tokenizer.bos.map { .int($0) } ?? .null),
            ("eos_token_id", tokenizer.eos.map { .int($0) } ?? .null),
        ]
        if let pad = tokenizer.pad { c.append(("pad_token_id", .int(pad))) }
        c += [
            ("torch_dtype", .string(dtype == .f32 ? "float32" : dtype == .f16 ? "float16" : "bfloat16")),
            ("use_cache", .bool(true)),
        ]
        return .object(c)
    }
}

/// The llama hyperparameters from the GGUF metadata (`llama.*` keys).
struct GGUFLlamaParams {
    let hidden, intermediate, layers, heads, kvHeads, headDim, contextLength, vocab: Int
    let headDimExplicit: Bool
    let rmsEps, ropeTheta: Double
    let ropeScalingFactor: Double?

    init(_ f: GGUFFile) throws {
        func required(_ key: String) throws -> Int {
            guard let v = try f.int("llama." + key) else { throw CheckpointError(file: f.path, "missing metadata key 'llama.\(key)'") }
            guard v > 0, v <= 1 << 30 else { throw CheckpointError(file: f.path, "metadata key 'llama.\(key)' = \(v) is out of range") }
            return v
        }
        hidden = try required("embedding_length")
        intermediate = try required("feed_forward_length")
        layers = try required("block_count")
        // The plan builds 9 names per block: a count the tensor table cannot come close to
        // holding is refused before that (names then stay within 9 × the tensor count, which
        // the file's size bounds); a block or two short is left to the plan, which names
        // the first missing tensor.
        guard layers <= f.tensors.count else {
            throw CheckpointError(file: f.path, "llama.block_count \(layers) is more than the file's \(f.tensors.count) tensors could hold (\(GGUFImporter.blockTensors.count) per block)")
        }
        heads = try required("attention.head_count")
        kvHeads = try f.int("llama.attention.head_count_kv") ?? heads
        contextLength = try required("context_length")
        guard kvHeads > 0, heads % kvHeads == 0 else {
            throw CheckpointError(file: f.path, "llama.attention.head_count \(heads) is not a multiple of head_count_kv \(kvHeads)")
        }
        if let k = try f.int("llama.attention.key_length") {
            guard k > 0, k <= 1 << 16, try f.int("llama.attention.value_length") ?? k == k else {
                throw CheckpointError(file: f.path, "llama.attention.key_length \(k) is out of range or differs from value_length")
            }
            headDim = k
            headDimExplicit = k * heads != hidden
        } else {
            guard hidden % heads == 0 else {
                throw CheckpointError(file: f.path, "llama.embedding_length \(hidden) is not a multiple of the head count \(heads)")
            }
            headDim = hidden / heads
            headDimExplicit = false
        }
        guard headDim % 2 == 0 else { throw CheckpointError(file: f.path, "head dimension \(headDim) is odd (rotary embeddings need it even)") }
        if let rot = try f.int("llama.rope.dimension_count"), rot != headDim {
            throw CheckpointError(file: f.path, "llama.rope.dimension_count \(rot) differs from the head dimension \(headDim) (partial rotary is not supported)")
        }
        // Written to config.json as numbers: NaN or ±Inf have no JSON form, and a value the
        // forward pass cannot use (eps ≤ 0, base ≤ 0) is refused as LlamaConfig would.
        rmsEps = try f.double("llama.attention.layer_norm_rms_epsilon") ?? 1e-5
        guard rmsEps.isFinite, rmsEps > 0, rmsEps < 1, Float(rmsEps) > 0 else {
            throw CheckpointError(file: f.path, "llama.attention.layer_norm_rms_epsilon \(rmsEps) is not a small positive number (0 < eps < 1)")
        }
        ropeTheta = try f.double("llama.rope.freq_base") ?? 10000
        guard ropeTheta.isFinite, ropeTheta > 0 else {
            throw CheckpointError(file: f.path, "llama.rope.freq_base \(ropeTheta) is not a positive number")
        }
        switch try f.string("llama.rope.scaling.type") {
        case nil, "none":
            ropeScalingFactor = nil
        case "linear":
            guard let factor = try f.double("llama.rope.scaling.factor"), factor.isFinite, factor > 0 else {
                throw CheckpointError(file: f.path, "llama.rope.scaling.type is linear but llama.rope.scaling.factor is missing or not a positive number")
            }
            ropeScalingFactor = factor
        case let other?:
            throw CheckpointError(file: f.path, "rope scaling '\(CheckpointError.printable(other))' is not supported (none, linear)")
        }
        guard let embed = f.info("token_embd.weight") else {
            throw CheckpointError(file: f.path, tensor: "token_embd.weight", "missing")
        }
        let rows = embed.shape.first ?? 0
        if let v = try f.int("llama.vocab_size"), v != rows {
            throw CheckpointError(file: f.path, tensor: "token_embd.weight", "has \(rows) rows but llama.vocab_size is \(v)")
        }
        vocab = rows
    }
}

/// The tokenizer files written beside the weights, built from `tokenizer.ggml.*`.
///
/// Only byte-level BPE (`tokenizer.ggml.model` = `gpt2`) is supported. llama.cpp names
/// its pre-tokenizer (`tokenizer.ggml.pre`); the families below are written as the
/// Hugging Face pre-tokenizer that splits text the same way.
struct GGUFTokenizerFiles {
    let tokenizerJSON: OrderedJSON
    let configJSON: OrderedJSON
    let specialTokensJSON: OrderedJSON
    let bos: Int?
    let eos: Int?
    let pad: Int?

    /// GPT-2's split: contractions, letters, digits, other symbols, spaces. Both
    /// llama.cpp and Hugging Face's ByteLevel(use_regex) use it.
    static let gpt2Names: Set<String> = ["gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4"]
    /// StarCoder-style: every digit on its own (`\p{N}`), then the GPT-2 split.
    static let digitsNames: Set<String> = ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"]
    /// Llama 3's split (numbers in runs of up to 3 digits); merges ignored for whole-word tokens.
    static let llama3Names: Set<String> = ["llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"]
    /// Qwen2's split: like Llama 3's but one digit at a time (text NFC-normalized first).
    static let qwen2Names: Set<String> = ["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"]
    /// Pre-tokenizers for which llama.cpp turns off cleaning spaces when decoding.
    static let keepSpaces: Set<String> = ["smollm", "command-r", "qwen2", "deepseek-r1-qwen"]


    init(_ f: GGUFFile, vocabSize: Int, contextLength: Int) throws {
        let path = f.path
        // The tokenizer files are UTF-8 JSON: a token whose bytes are not UTF-8 would be
        // written with U+FFFD in their place, a different token.
        for (key, index) in f.invalidUTF8.sorted(by: { $0.key < $1.key }) where key.hasPrefix("tokenizer.") {
            let element = f[key]?.arrayValue != nil ? "[\(index)]" : ""
            throw CheckpointError(file: path, "\(key)\(element) is not valid UTF-8 (the tokenizer files cannot hold it)")
        }
        let model = try f.string("tokenizer.ggml.model")
        guard model == "gpt2" else {
            throw CheckpointError(file: path, "tokenizer.ggml.model '\(CheckpointError.printable(model ?? "(missing)"))' is not supported (only gpt2, byte-level BPE)")
        }
        guard let tokens = try f.strings("tokenizer.ggml.tokens"), !tokens.isEmpty else {
            throw CheckpointError(file: path, "missing or empty metadata key 'tokenizer.ggml.tokens'")
        }
        guard tokens.count <= vocabSize else {
            throw CheckpointError(file: path, "tokenizer.ggml.tokens has \(tokens.count) tokens but the embeddings only \(vocabSize) rows")
        }
        let types = try f.ints("tokenizer.ggml.token_type") ?? [Int](repeating: 1, count: tokens.count)
        guard types.count == tokens.count else {
            throw CheckpointError(file: path, "tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens")
        }
        let merges = try f.strings("tokenizer.ggml.merges") ?? []
        let pre = try f.string("tokenizer.ggml.pre") ?? "default"
        func tokenID(_ key: String) throws -> Int? {
            guard let id = try f.int("tokenizer.ggml." + key) else { return nil }
            guard id >= 0, id < tokens.count else {
                throw CheckpointError(file: path, "tokenizer.ggml.\(key) \(id) is not a token id (0..<\(tokens.count))")
            }
            return id
        }
        bos = try tokenID("bos_token_id")
        eos = try tokenID("eos_token_id")
        let unk = try tokenID("unknown_token_id")
        pad = try tokenID("padding_token_id")
        let addBos = try f.bool("tokenizer.ggml.add_bos_token") ?? GGUFTokenizerFiles.llama3Names.contains(pre)
        let addEos = try f.bool("tokenizer.ggml.add_eos_token") ?? false
        let chatTemplate = try f.string("tokenizer.chat_template")

        // The vocabulary, first id of a text winning if a text repeats.
        var vocab: [(String, OrderedJSON)] = []
        var ids: [String: Int] = [:]
        vocab.reserveCapacity(tokens.count)
        for (id, t) in tokens.enumerated() where ids[t] == nil {
            ids[t] = id
            vocab.append((t, .int(id)))
        }
        // Merges are "left right"; both sides and their concatenation must be tokens, or
        // the tokenizers library refuses the file.
        for (i, m) in merges.enumerated() {
            guard let space = m.firstIndex(of: " "), ids[String(m[..<space])] != nil,
                  ids[String(m[m.index(after: space)...])] != nil,
                  ids[String(m[..<space]) + String(m[m.index(after: space)...])] != nil else {
                throw CheckpointError(file: path, "tokenizer.ggml.merges #\(i) '\(CheckpointError.printable(m))' is not two tokens joined by a space whose concatenation is a token")
            }
        }

        // Control (3) and user-defined (4) tokens are added tokens; control ones are special.
        let added = types.enumerated().filter { $0.element == 3 || $0.element == 4 }.map { $0.offset }
        func addedToken(_ id: Int) -> OrderedJSON {
            .object([("id", .int(id)), ("content", .string(tokens[id])), ("single_word", .bool(false)),
                     ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(false)),
                     ("special", .bool(types[id] == 3))])
        }

        let byteLevel: (Bool) -> OrderedJSON = { useRegex in
            .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)),
                     ("trim_offsets", .bool(true)), ("use_regex", .bool(useRegex))])
        }
        let split: (String) -> OrderedJSON = { regex in
            .object([("type", .string("Split")), ("pattern", .object([("Regex", .string(regex))])),
                     ("behavior", .string("Isolated")), ("invert", .bool(false))])
        }
        let preTokenizer: OrderedJSON
        var ignoreMerges = false
        if GGUFTokenizerFiles.gpt2Names.contains(pre) {
            preTokenizer = byteLevel(true)
        } else if GGUFTokenizerFiles.digitsNames.contains(pre) {
            preTokenizer = .object([("type", .string("Sequence")), ("pretokenizers", .array([
                .object([("type", .string("Digits")), ("individual_digits", .bool(true))]), byteLevel(true)]))])
        } else if GGUFTokenizerFiles.llama3Names.contains(pre) || GGUFTokenizerFiles.qwen2Names.contains(pre) {
            let llama3 = GGUFTokenizerFiles.llama3Names.contains(pre)
            preTokenizer = .object([("type", .string("Sequence")), ("pretokenizers", .array([
                split(llama3 ? PreTokenizerKind.llama3Regex : PreTokenizerKind.qwen2Regex), byteLevel(false)]))])
            ignoreMerges = ["llama3", "llama-v3", "llama-bpe", "falcon3"].contains(pre)
        } else {
            let known = (GGUFTokenizerFiles.gpt2Names.union(GGUFTokenizerFiles.digitsNames).union(GGUFTokenizerFiles.llama3Names).union(GGUFTokenizerFiles.qwen2Names)).sorted()
            throw CheckpointError(file: path, "tokenizer.ggml.pre '\(CheckpointError.printable(pre))' is not supported (supported: \(known.joined(separator: ", ")))")
        }

        let postProcessor: OrderedJSON
        if addBos, let bos {
            // BOS before each sequence, as Llama 3's tokenizer.json does.
            let bosPiece: (Int) -> OrderedJSON = { type in .object([("SpecialToken", .object([("id", .string(tokens[bos])), ("type_id", .int(type))]))]) }
            let seq: (String, Int) -> OrderedJSON = { id, type in .object([("Sequence", .object([("id", .string(id)), ("type_id", .int(type))]))]) }
            postProcessor = .object([
                ("type", .string("TemplateProcessing")),
                ("single", .array([bosPiece(0), seq("A", 0)])),
                ("pair", .array([bosPiece(0), seq("A", 0), bosPiece(1), seq("B", 1)])),
                ("special_tokens", .object([(tokens[bos], .object([("id", .string(tokens[bos])), ("ids", .array([.int(bos)])), ("tokens", .array([.string(tokens[bos])]))]))])),
            ])
        } else {
            postProcessor = .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)),
                                     ("trim_offsets", .bool(false)), ("use_regex", .bool(true))])
        }

        var bpe: [(String, OrderedJSON)] = [
            ("type", .string("BPE")), ("dropout", .null), ("unk_token", .null),
            ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null),
            ("fuse_unk", .bool(false)), ("byte_fallback", .bool(false)),
        ]
        if ignoreMerges { bpe.append(("ignore_merges", .bool(true))) }
        bpe += [("vocab", .object(vocab)), ("merges", .array(merges.map { .string($0) }))]
        tokenizerJSON = .object([
            ("version", .string("1.0")), ("truncation", .null), ("padding", .null),
            ("added_tokens", .array(added.map(addedToken))),
            ("normalizer", GGUFTokenizerFiles.qwen2Names.contains(pre) ? .object([("type", .string("NFC"))]) : .null),
            ("pre_tokenizer", preTokenizer),
            ("post_processor", postProcessor),
            ("decoder", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)),
                                 ("trim_offsets", .bool(true)), ("use_regex", .bool(true))])),
            ("model", .object(bpe)),
        ])

        let named = [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)]
        let namedIDs = Set(named.compactMap(\.1))
        let additional = added.filter { types[$0] == 3 && !namedIDs.contains($0) }.map { OrderedJSON.string(tokens[$0]) }
        var special: [(String, OrderedJSON)] = named.compactMap { key, id in id.map { (key, .string(tokens[$0])) } }
        if !additional.isEmpty { special.append(("additional_special_tokens", .array(additional))) }
        specialTokensJSON = .object(special)

        var config: [(String, OrderedJSON)] = [
            ("tokenizer_class", .string("PreTrainedTokenizerFast")),
            // PreTrainedTokenizerFast returns token_type_ids by default, which a causal
            // LM's generate() refuses; a Llama tokenizer gives these two (as SmolLM2's own
            // GPT2Tokenizer config does).
            ("model_input_names", .array([.string("input_ids"), .string("attention_mask")])),
            ("add_bos_token", .bool(addBos)),
            ("add_eos_token", .bool(addEos)),
            ("add_prefix_space", .bool(false)),
            ("clean_up_tokenization_spaces", .bool(!GGUFTokenizerFiles.keepSpaces.contains(pre))),
            ("model_max_length", .int(contextLength)),
            ("added_tokens_decoder", .object(added.map { id in
                guard case .object(let fields) = addedToken(id) else { return (String(id), .null) }
                return (String(id), .object(fields.filter { $0.0 != "id" }))
            })),
        ]
        config += special
        if let chatTemplate { config.append(("chat_template", .string(chatTemplate))) }
        configJSON = .object(config)
    }
}

/// A OrderedJSON value whose objects keep their key order, rendered compactly or indented.
indirect enum OrderedJSON {
    case null
    case bool(Bool)
    case int(Int)
    case number(Double)
    case string(String)
    case array([OrderedJSON])
    case object([(String, OrderedJSON)])

    func rendered(pretty: Bool) -> String {
        var s = ""
        render(into: &s, indent: pretty ? 0 : nil)
        return s
    }

    private func render(into s: inout String, indent: Int?) {
        switch self {
        case .null: s += "null"
        case .bool(let b): s += b ? "true" : "false"
        case .int(let i): s += String(i)
        // Callers write finite numbers only (GGUFLlamaParams refuses NaN and ±Inf); a
        // non-finite one has no JSON form and becomes null rather than invalid JSON.
        case .number(let d): s += d.isFinite ? "\(d)" : "null"
        case .string(let str): s += SafeTensorsWriter.jsonString(str)
        case .array(let items):
            renderList(items.map { item in { (s: inout String, ind: Int?) in item.render(into: &s, indent: ind) } }, open: "[", close: "]", into: &s, indent: indent)
        case .object(let fields):
            renderList(fields.map { key, value in { (s: inout String, ind: Int?) in
                s += SafeTensorsWriter.jsonString(key) + (ind == nil ? ":" : ": ")
                value.render(into: &s, indent: ind)
            } }, open: "{", close: "}", into: &s, indent: indent)
        }
    }

    private func renderList(_ items: [(inout String, Int?) -> Void], open: String, close: String, into s: inout String, indent: Int?) {
        s += open
        guard !items.isEmpty else { s += close; return }
        for (i, item) in items.enumerated() {
            if i > 0 { s += "," }
            if let indent { s += "\n" + String(repeating: "  ", count: indent + 1) }
            item(&s, indent.map { $0 + 1 })
        }
        if let indent { s += "\n" + String(repeating: "  ", count: indent) }
        s += close
    }
}
