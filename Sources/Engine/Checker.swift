import Foundation
import Pruning
import Tensors

/// `prune check ORIGINAL OUTPUT`: verifies an assembled output against its input.
public struct CheckReport: Sendable {
    /// One line per problem; empty means the check passed.
    public var failures: [String] = []
    public var tensorsChecked = 0
    public var prunedTensors = 0
    public var zeros = 0
    /// A structured job's smaller model (no sparse/; tensors rebuilt from kept units).
    public var structured = false
    public var passed: Bool { failures.isEmpty }
}

public enum Checker {
    /// `output` is a job's `out/` directory or the job directory holding it.
    /// Throws for unreadable input; returns failures for outputs that are wrong.
    public static func check(original: String, output: String) throws -> CheckReport {
        let outDir = outputDirectory(output)
        let manifest = try Manifest.load(path: (outDir as NSString).appendingPathComponent("manifest.json"))
        if let structure = manifest.structure {
            var report = try StructuredCheck.check(original: original, outDir: outDir, manifest: manifest, structure: structure)
            report.failures = sideFileProblems(outDir: outDir, source: try Checkpoint(path: original), in: ["dense"]) + report.failures
            report.structured = true
            return report
        }
        let source = try Checkpoint(path: original)
        let dense = try Checkpoint(path: (outDir as NSString).appendingPathComponent("dense"))
        let sparse = try SparseCheckpoint(path: (outDir as NSString).appendingPathComponent("sparse"))
        var report = CheckReport()
        func fail(_ s: String) { report.failures.append(s) }

        for problem in sideFileProblems(outDir: outDir, source: source) { fail(problem) }
        for problem in try modelFileProblems(manifest: manifest, source: source, original: original) { fail(problem) }
        let sourceNames = Set(source.tensors.map(\.name))
        let denseNames = Set(dense.tensors.map(\.name))
        let sparseEntries = Dictionary(sparse.denseNames().map { ($0.name, $0.sparse) }, uniquingKeysWith: { a, _ in a })
        for missing in sourceNames.subtracting(denseNames).sorted() { fail("dense/: tensor '\(missing)' is missing") }
        for extra in denseNames.subtracting(sourceNames).sorted() { fail("dense/: tensor '\(extra)' is not in the input") }
        for extra in Set(sparseEntries.keys).subtracting(sourceNames).sorted() { fail("sparse/: tensor '\(extra)' is not in the input") }
        for name in sourceNames.subtracting(manifest.tensors.keys).sorted() { fail("manifest: tensor '\(name)' is not listed") }
        for name in Set(manifest.tensors.keys).subtracting(sourceNames).sorted() { fail("manifest: tensor '\(name)' is not in the input") }

        for s in source.tensors {
            guard let d = dense.info(s.name), let m = manifest.tensors[s.name] else { continue }
            report.tensorsChecked += 1
            guard d.dtype == s.dtype, d.shape == s.shape else {
                fail("tensor '\(s.name)': dense/ has \(d.dtype.rawValue) \(d.shape), input has \(s.dtype.rawValue) \(s.shape)")
                continue
            }
            guard m.dtype == s.dtype.rawValue, m.shape == s.shape, m.elements == s.elementCount else {
                fail("tensor '\(s.name)': manifest says \(m.dtype) \(m.shape), input has \(s.dtype.rawValue) \(s.shape)")
                continue
            }
            let inBytes = source.bytes(s)
            let outBytes = dense.bytes(d)
            if SHA256Stream.hex(outBytes) != m.sha256Dense { fail("tensor '\(s.name)': sha256 of dense/ bytes differs from the manifest") }
            let size = s.dtype.size
            let zeros = TensorPruner.zeroCount(outBytes, elementSize: size)
            if !m.pruned {
                // Training changes tensors it does not prune (biases) by design.
                if !m.valuesUpdated, !inBytes.elementsEqual(outBytes) { fail("tensor '\(s.name)': not pruned but its bytes changed") }
            } else if let problem = manifestEntryProblem(m, info: s) {
                fail("manifest: tensor '\(s.name)': \(problem)")
                continue
            } else {
                report.prunedTensors += 1
                report.zeros += zeros
                if zeros != m.zeros { fail("tensor '\(s.name)': \(zeros) zeros, manifest says \(m.zeros)") }
                if m.masked > m.zeros { fail("tensor '\(s.name)': manifest says \(m.masked) weights masked but only \(m.zeros) zeros") }
                let achieved = Double(zeros) / Double(max(s.elementCount, 1))
                if abs(achieved - m.achievedSparsity) > 1e-12 { fail("tensor '\(s.name)': achieved sparsity \(achieved), manifest says \(m.achievedSparsity)") }
                // A method that updates kept weights (SparseGPT) changes values by design.
                if !m.valuesUpdated, let problem = valuesProblem(inBytes, outBytes, size: size) { fail("tensor '\(s.name)': \(problem)") }
                for problem in patternProblems(outBytes, info: s, pattern: effectivePattern(m), target: m.targetSparsity!) { fail("tensor '\(s.name)': \(problem)") }
            }
            // sparse/ must rebuild dense/ exactly, in the same dtype and shape, and its
            // bytes must have the digest the manifest recorded.
            switch sparseEntries[s.name] {
            case .none:
                fail("sparse/: tensor '\(s.name)' is missing")
            case .some(true):
                do {
                    let tensor = try sparse.sparseTensor(s.name)
                    if tensor.dtype != s.dtype || tensor.shape != s.shape {
                        fail("sparse/: tensor '\(s.name)' is \(tensor.dtype.rawValue) \(tensor.shape), input has \(s.dtype.rawValue) \(s.shape)")
                        continue
                    }
                    if !m.pruned { fail("sparse/: tensor '\(s.name)' is stored compressed but the manifest says it was not pruned") }
                    var digest = SHA256Stream()
                    for part in SparseLayout.parts(tensor) { digest.update(part) }
                    if digest.finalizeHex() != m.sha256Sparse { fail("sparse/: tensor '\(s.name)': sha256 differs from the manifest") }
                    if try !tensor.densify().elementsEqual(outBytes) { fail("sparse/: tensor '\(s.name)' does not rebuild dense/ bytes") }
                } catch let e as PruningError {
                    fail("sparse/: tensor '\(s.name)': \(e.message)")
                } catch {
                    fail("sparse/: \(error)")
                }
            case .some(false):
                let info = sparse.checkpoint.info(s.name)!
                if info.dtype != s.dtype || info.shape != s.shape {
                    fail("sparse/: tensor '\(s.name)' is \(info.dtype.rawValue) \(info.shape), input has \(s.dtype.rawValue) \(s.shape)")
                } else if !sparse.checkpoint.bytes(info).elementsEqual(outBytes) {
                    fail("sparse/: tensor '\(s.name)' differs from dense/")
                } else if m.sha256Sparse != m.sha256Dense {
                    fail("sparse/: tensor '\(s.name)': manifest sha256_sparse differs from sha256_dense for a tensor stored as it is")
                }
            }
        }
        return report
    }

    /// Recomputes the masks of up to `count` pruned tensors whose method needs no data
    /// (magnitude, random), spread evenly over the manifest's list, and compares the
    /// output with the input masked by them: a worker that pruned the wrong weights with
    /// the right counts passes every other check, not this one. `seed` is the job's (for
    /// `random`). Returns the tensors checked and one line per problem.
    public static func recompute(original: String, output: String, count: Int, seed: UInt64?) throws -> (checked: [String], failures: [String]) {
        let outDir = outputDirectory(output)
        let manifest = try Manifest.load(path: (outDir as NSString).appendingPathComponent("manifest.json"))
        let source = try Checkpoint(path: original)
        let dense = try Checkpoint(path: (outDir as NSString).appendingPathComponent("dense"))
        let dataFree = manifest.tensors.filter { $0.value.pruned && ($0.value.method == "magnitude" || $0.value.method == "random") }
            .keys.sorted()
        guard count > 0, !dataFree.isEmpty else { return ([], []) }
        let step = Double(dataFree.count) / Double(min(count, dataFree.count))
        let chosen = (0..<min(count, dataFree.count)).map { dataFree[Int(Double($0) * step)] }
        var failures: [String] = []
        for name in chosen {
            let m = manifest.tensors[name]!
            guard let s = source.info(name), let d = dense.info(name), s.dtype == d.dtype, s.shape == d.shape,
                  let patternText = m.pattern, let sparsity = m.targetSparsity, let method = m.method else {
                failures.append("tensor '\(name)': cannot recompute (missing from the input or dense/, or no pattern in the manifest)")
                continue
            }
            if method == "random" && seed == nil {
                failures.append("tensor '\(name)': pruned at random; the job's seed (job.yaml beside out/) is needed to recompute it")
                continue
            }
            let criterion: any ImportanceCriterion = method == "random" ? RandomCriterion(seed: seed!) : MagnitudeCriterion()
            let mask = try TensorPruner.mask(s, bytes: source.bytes(s), criterion: criterion,
                                             pattern: try SparsityPattern(parsing: patternText), sparsity: sparsity)
            let input = source.bytes(s), out = dense.bytes(d)
            var expected = [UInt8](repeating: 0, count: input.count)
            expected.withUnsafeMutableBytes { MaskApplication.apply(mask, source: input, elementSize: s.dtype.size, into: $0) }
            if !expected.elementsEqual(out) {
                let size = s.dtype.size
                let wrong = (0..<s.elementCount).filter { i in !expected[(i * size)..<((i + 1) * size)].elementsEqual(out[(i * size)..<((i + 1) * size)]) }
                failures.append("tensor '\(name)': \(wrong.count) weights differ from a \(method) \(patternText) mask recomputed here (first at element \(wrong.first ?? 0))")
            }
            source.shard(of: name)?.release(s)
        }
        return (chosen, failures)
    }

    /// The side files (config, tokenizer) of dense/ and sparse/: each one the input has is
    /// there as a regular readable file (not a link, which could dangle), config.json
    /// parses and names a `model_type`, and sparse/'s config carries the sparsity config
    /// compressed-tensors reads when any tensor is stored compressed.
    /// The input's files the manifest names, with the digests the job pruned.
    static func modelFileProblems(manifest: Manifest, source: Checkpoint, original: String) throws -> [String] {
        var problems: [String] = []
        for (file, digest) in manifest.modelFiles.sorted(by: { $0.key < $1.key }) {
            guard let shard = source.shards.first(where: { ($0.path as NSString).lastPathComponent == file }) else {
                problems.append("manifest: model file '\(file)' is not part of \(original)")
                continue
            }
            if try SHA256Stream.hex(file: shard.path) != digest { problems.append("manifest: \(shard.path) differs from the file the job pruned (sha256)") }
        }
        return problems
    }

    static func sideFileProblems(outDir: String, source: Checkpoint, in subdirectories: [String] = ["dense", "sparse"]) -> [String] {
        var problems: [String] = []
        let fm = FileManager.default
        for sub in subdirectories {
            let dir = (outDir as NSString).appendingPathComponent(sub)
            for side in source.sideFiles() {
                let path = (dir as NSString).appendingPathComponent(side)
                guard let attributes = try? fm.attributesOfItem(atPath: path) else {
                    problems.append("\(sub)/\(side): missing (the input has it)")
                    continue
                }
                guard attributes[.type] as? FileAttributeType == .typeRegular, fm.isReadableFile(atPath: path) else {
                    problems.append("\(sub)/\(side): not a regular readable file (a link?)")
                    continue
                }
                guard side == "config.json" else { continue }
                guard let data = fm.contents(atPath: path), let config = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
                    problems.append("\(sub)/config.json: not a JSON object")
                    continue
                }
                if source.sideFiles().contains("config.json"), (config["model_type"] as? String)?.isEmpty ?? true,
                   let original = fm.contents(atPath: (source.directory as NSString).appendingPathComponent("config.json")),
                   ((try? JSONSerialization.jsonObject(with: original)) as? [String: Any])?["model_type"] != nil {
                    problems.append("\(sub)/config.json: has no model_type (transformers cannot load it)")
                }
                if sub == "sparse", let sparse = try? SparseCheckpoint(path: dir), sparse.denseNames().contains(where: \.sparse) {
                    let quantization = config["quantization_config"] as? [String: Any]
                    let sparsity = quantization?["sparsity_config"] as? [String: Any]
                    if sparsity?["format"] as? String != "sparse-bitmask" {
                        problems.append("sparse/config.json: no quantization_config.sparsity_config with format sparse-bitmask (compressed-tensors would not decompress sparse/)")
                    }
                }
            }
        }
        return problems
    }

    /// The directory holding manifest.json: `path` itself, or its `out/`.
    public static func outputDirectory(_ path: String) -> String {
        FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("manifest.json"))
            ? path : (path as NSString).appendingPathComponent("out")
    }

    /// A pruned entry must describe something we could have produced; checked before any
    /// of its numbers is used for arithmetic.
    static func manifestEntryProblem(_ m: Manifest.Tensor, info: TensorInfo) -> String? {
        guard info.dtype.isFloat, info.shape.count >= 2 else { return "marked pruned but \(info.dtype.rawValue) \(info.shape) cannot be pruned" }
        guard let target = m.targetSparsity, target >= 0, target < 1 else { return "target_sparsity missing or outside [0, 1)" }
        guard let text = m.pattern, let pattern = try? SparsityPattern(parsing: text) else { return "pattern missing or unknown" }
        do { try pattern.validate(rows: info.rows, cols: info.cols) } catch { return "\(error)" }
        guard m.masked >= 0, m.zeros >= 0, m.zeros <= m.elements else { return "masked/zeros counts out of range" }
        return nil
    }

    /// Every output element is its input bytes or +0.
    static func valuesProblem(_ input: UnsafeRawBufferPointer, _ output: UnsafeRawBufferPointer, size: Int) -> String? {
        var changedNonZero = 0
        var e = 0
        while e < input.count {
            var same = true, zero = true
            for b in 0..<size {
                if input[e + b] != output[e + b] { same = false }
                if output[e + b] != 0 { zero = false }
            }
            if !same && !zero { changedNonZero += 1 }
            e += size
        }
        return changedNonZero == 0 ? nil : "\(changedNonZero) kept weights differ from the input"
    }

    /// The rule a tensor's zeros follow: its pattern as its method applies it.
    static func effectivePattern(_ m: Manifest.Tensor) -> String {
        guard let text = m.pattern, let pattern = try? SparsityPattern(parsing: text), let method = m.method.flatMap(JobSpec.Method.init(rawValue:)) else {
            return m.pattern!
        }
        return method.comparisonPattern(for: pattern).description
    }

    /// Pattern rules: N:M groups, per-row counts, whole rows, overall count.
    static func patternProblems(_ out: UnsafeRawBufferPointer, info: TensorInfo, pattern: String, target: Double) -> [String] {
        guard let p = try? SparsityPattern(parsing: pattern) else { return ["unknown pattern in manifest"] }
        let rows = info.rows, cols = info.cols, size = info.dtype.size
        func isZero(_ r: Int, _ c: Int) -> Bool { SparseBitmaskTensor.isZero(out, at: (r * cols + c) * size, size: size) }
        var problems: [String] = []
        switch p {
        case .nm(let n, let m):
            var bad = 0
            for r in 0..<rows {
                var g = 0
                while g < cols {
                    var nonzero = 0
                    for c in g..<min(g + m, cols) where !isZero(r, c) { nonzero += 1 }
                    if nonzero > n { bad += 1 }
                    g += m
                }
            }
            if bad > 0 { problems.append("\(bad) groups of \(m) hold more than \(n) nonzero weights") }
        case .perRow:
            let need = SparsityPattern.count(of: cols, at: target)
            let short = (0..<rows).filter { r in (0..<cols).filter { isZero(r, $0) }.count < need }.count
            if short > 0 { problems.append("\(short) rows have fewer than \(need) zeros") }
        case .rows:
            let need = SparsityPattern.count(of: rows, at: target)
            let zeroRows = (0..<rows).filter { r in (0..<cols).allSatisfy { isZero(r, $0) } }.count
            if zeroRows < need { problems.append("\(zeroRows) all-zero rows, planned at least \(need)") }
        case .unstructured:
            let need = p.plannedPruned(rows: rows, cols: cols, sparsity: target)
            let zeros = TensorPruner.zeroCount(out, elementSize: size)
            if zeros < need { problems.append("\(zeros) zeros, planned at least \(need)") }
        case .units:
            // Removed units leave no zeros: `StructuredCheck` compares the smaller tensors.
            problems.append("pattern \(p) is checked against its kept units, not by zeros")
        }
        return problems
    }
}
