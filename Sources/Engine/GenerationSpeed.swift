import Foundation
import Models

/// Generation speed and memory of one Llama-family model on the project's own forward
/// pass (`LlamaDecoder`: weights in memory, a key/value cache, one BLAS thread unless the
/// environment says), what `prune bench` prints and a job's report gives under `speed`.
public struct GenerationSpeed: Codable, Sendable, Equatable {
    public var model: String
    public var parameters: Int
    public var weightBytes: Int
    public var sparseWeights: Int
    public var linearWeights: Int
    public var loadSeconds: Double
    /// Best of the repeats.
    public var prefillTokensPerSecond: Double
    public var decodeTokensPerSecond: Double
    /// Resident set once loaded (the weights as held), and the measuring process's peak.
    public var residentBytes: Int
    public var peakBytes: Int

    /// What is measured: a prompt of `prompt` fixed token ids prefilled, then `decode`
    /// tokens generated greedily; tokens/s the best of `repeats`. Weights with at least
    /// `sparseAbove` of their entries zero are held in CSR (nil: every weight dense).
    public struct Options: Sendable, Equatable {
        public var prompt = 128
        public var decode = 64
        public var repeats = 3
        public var sparseAbove: Double? = 0.5

        public init(prompt: Int = 128, decode: Int = 64, repeats: Int = 3, sparseAbove: Double? = 0.5) {
            self.prompt = prompt
            self.decode = decode
            self.repeats = repeats
            self.sparseAbove = sparseAbove
        }

        /// Bounds (the key/value cache holds prompt + decode positions).
        public static let tokens = 1...8192
        public static let repeatRange = 1...100
    }

    /// The `prune` executable that measures each model in a process of its own (`prune
    /// bench-one`), so that its peak memory is its own; nil measures in this process (a
    /// test's in-process job: the peak is then the whole process's). The CLI sets it at
    /// start, before any job runs.
    nonisolated(unsafe) public static var childExecutable: String?

    /// Measures `model` (a checkpoint directory), in a child process when `childExecutable` is set.
    public static func measure(_ model: String, options: Options) throws -> GenerationSpeed {
        guard let executable = childExecutable else { return try measureHere(model, options: options) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        // --sparse-above 0: every weight dense.
        process.arguments = ["bench-one", model, "--prompt", String(options.prompt), "--decode", String(options.decode),
                             "--repeats", String(options.repeats), "--sparse-above", String(options.sparseAbove ?? 0)]
        var environment = ProcessInfo.processInfo.environment
        environment["OPENBLAS_NUM_THREADS"] = environment["OPENBLAS_NUM_THREADS"] ?? "1"
        process.environment = environment
        // stdout is one JSON line; stderr goes to a file, so neither pipe can fill while
        // the other is read.
        let errorFile = (NSTemporaryDirectory() as NSString).appendingPathComponent("prune-bench-one-\(UUID().uuidString).err")
        guard FileManager.default.createFile(atPath: errorFile, contents: nil), let err = FileHandle(forWritingAtPath: errorFile) else {
            throw ModelError("speed of \(model): cannot create \(errorFile)")
        }
        defer { try? FileManager.default.removeItem(atPath: errorFile) }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try? err.close()
        let message = (try? String(contentsOfFile: errorFile, encoding: .utf8)) ?? ""
        guard process.terminationStatus == 0 else {
            let line = message.split(separator: "\n").last.map(String.init) ?? "exit status \(process.terminationStatus)"
            throw ModelError("speed of \(model): \(line.replacingOccurrences(of: "prune: error: ", with: ""))")
        }
        return try JSONDecoder().decode(GenerationSpeed.self, from: data)
    }

    /// Measures every model in `rounds` rounds, each round every model once in turn (in
    /// its own process when `childExecutable` is set), keeping each model's best prefill
    /// and decode: a machine whose speed drifts during the run then favours no model, as
    /// measuring one model's repeats and then the next one's would.
    public static func measure(_ models: [String], options: Options, rounds: Int) throws -> [GenerationSpeed] {
        var best: [GenerationSpeed] = []
        for round in 0..<max(rounds, 1) {
            for (i, model) in models.enumerated() {
                let r = try measure(model, options: options)
                guard round > 0 else { best.append(r); continue }
                best[i].prefillTokensPerSecond = max(best[i].prefillTokensPerSecond, r.prefillTokensPerSecond)
                best[i].decodeTokensPerSecond = max(best[i].decodeTokensPerSecond, r.decodeTokensPerSecond)
                best[i].peakBytes = max(best[i].peakBytes, r.peakBytes)
            }
        }
        return best
    }

    /// Measures `model` in this process.
    public static func measureHere(_ model: String, options: Options) throws -> GenerationSpeed {
        let started = Date()
        let decoder = try LlamaDecoder(directory: model, maxTokens: options.prompt + options.decode, sparseAbove: options.sparseAbove)
        let loadSeconds = Date().timeIntervalSince(started)
        let resident = residentBytes()
        let vocab = decoder.config.vocabSize
        // Fixed token ids spread over the vocabulary: speed does not depend on the text.
        let ids = (0..<options.prompt).map { Int32(($0 * 7919 + 13) % vocab) }
        var bestPrefill = 0.0, bestDecode = 0.0
        for _ in 0..<options.repeats {
            decoder.reset()
            var t0 = Date()
            var logits = try decoder.prefill(ids)
            bestPrefill = max(bestPrefill, Double(options.prompt) / Date().timeIntervalSince(t0))
            t0 = Date()
            for _ in 0..<options.decode {
                // Greedy: the most likely next token.
                var best = 0
                for v in 1..<vocab where logits[v] > logits[best] { best = v }
                logits = try decoder.step(Int32(best))
            }
            bestDecode = max(bestDecode, Double(options.decode) / Date().timeIntervalSince(t0))
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return GenerationSpeed(model: model, parameters: decoder.parameters, weightBytes: decoder.weightBytes,
                               sparseWeights: decoder.sparseWeights, linearWeights: decoder.linearWeights, loadSeconds: loadSeconds,
                               prefillTokensPerSecond: bestPrefill, decodeTokensPerSecond: bestDecode,
                               residentBytes: resident, peakBytes: Int(usage.ru_maxrss) * 1024)
    }

    /// The resident set now (/proc/self/statm), in bytes.
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }
}
