import Foundation
import Models
import Pruning
import Tensors

/// `prune check` of a structured job's smaller model: every tensor of dense/ is rebuilt
/// from the input and the manifest's kept units and compared byte for byte, the config
/// is checked against the shapes (the forward pass's own validation) and the widths the
/// units imply, and the parameter count against the manifest.
enum StructuredCheck {
    static func check(original: String, outDir: String, manifest: Manifest, structure: Manifest.Structure) throws -> CheckReport {
        var report = CheckReport()
        func fail(_ s: String) { report.failures.append(s) }
        let source = try Checkpoint(path: original)
        let denseDir = (outDir as NSString).appendingPathComponent("dense")
        let dense = try Checkpoint(path: denseDir)
        if FileManager.default.fileExists(atPath: (outDir as NSString).appendingPathComponent("sparse")) {
            fail("sparse/: present, but a structured job writes only the smaller dense/")
        }
        for problem in try Checker.modelFileProblems(manifest: manifest, source: source, original: original) { fail(problem) }
        let parts = structure.allParts(sparsity: manifest.sparsity)
        let kinds = parts.compactMap { UnitKind(rawValue: $0.kind) }
        guard let score = UnitScore(rawValue: structure.score), kinds.count == parts.count, !kinds.isEmpty,
              kinds == UnitKind.allCases.filter(kinds.contains), structure.kind == SparsityPattern.units(kinds).description else {
            fail("manifest: structure kind '\(structure.kind)' (parts \(parts.map(\.kind))) or score '\(structure.score)' is unknown")
            return report
        }
        let plan: StructuredPlan
        let isMLP = MLPConfig.exists(in: source.directory)
        do {
            let heads = parts.first { $0.kind == UnitKind.heads.rawValue }?.sparsity
            plan = isMLP ? try StructuredPlan(mlp: source, sparsity: manifest.sparsity, score: score)
                : try StructuredPlan(config: try LlamaConfig.load(source.directory), kinds: kinds, score: score, sparsity: manifest.sparsity, headSparsity: heads,
                                     global: structure.allocation == "global" ? 0...1 : nil, checking: true)
        } catch {
            fail("the input's config does not give the job's units: \(error)")
            return report
        }
        guard structure.kept.count == plan.groups.count, plan.kinds == kinds else {
            fail("manifest: kept units of \(structure.kept.count) groups of \(structure.kind), the model has \(plan.groups.count) of \(plan.kindName)")
            return report
        }
        if let allocation = structure.allocation, allocation != "global" { fail("manifest: structure allocation '\(allocation)' is unknown") }
        for (g, kept) in structure.kept.enumerated() {
            // A global allocation's counts came from the scores: each must still keep the
            // same number in every key/value group.
            let count = plan.global == nil ? plan.keptCount(ofGroup: g) : nil
            if let problem = UnitPrunePhase.problem(kept: kept, block: plan.groups[g], count: count) {
                fail("manifest: block \(plan.blockOf[g]) \(plan.groups[g].kind.rawValue): \(problem)")
            }
        }
        for part in parts {
            let kind = UnitKind(rawValue: part.kind)!
            if part.keptPerBlock != plan.keptPerBlock(kind) {
                fail("manifest: \(part.kind): \(part.keptPerBlock.map(String.init) ?? "none") kept a block, the units give \(plan.keptPerBlock(kind).map(String.init) ?? "none (a global allocation)")")
            }
            if plan.global != nil, part.keptPerLayer != plan.keptPerLayer(kind, kept: structure.kept) {
                fail("manifest: \(part.kind): kept_per_layer is not the kept units' count of each block")
            }
        }
        guard report.passed else { return report }
        // The config the smaller model carries describes its tensors, as the forward pass reads them.
        if isMLP {
            do { _ = try MLPModel(directory: denseDir) } catch { fail("dense/: \(error)") }
        } else if let sourceConfig = plan.config {
            checkLlamaConfig(denseDir: denseDir, dense: dense, plan: plan, kept: structure.kept, source: sourceConfig, fail: fail)
        }
        if dense.parameterCount != structure.parametersAfter { fail("dense/: \(dense.parameterCount) parameters, manifest says \(structure.parametersAfter)") }
        if source.parameterCount != structure.parametersBefore { fail("input: \(source.parameterCount) parameters, manifest says \(structure.parametersBefore)") }
        let sourceNames = Set(source.tensors.map(\.name)), denseNames = Set(dense.tensors.map(\.name))
        for missing in sourceNames.subtracting(denseNames).sorted() { fail("dense/: tensor '\(missing)' is missing") }
        // FLAP's biases are new: each has its weight's dtype, its length, zeros unless it
        // carries the compensation (new values by design: its digest is checked).
        let added = Dictionary(uniqueKeysWithValues: plan.addedBiases(kept: structure.kept).map { ($0.name, $0) })
        for extra in denseNames.subtracting(sourceNames).sorted() {
            guard let bias = added[extra], let d = dense.info(extra), let weight = source.info(bias.weight) else { fail("dense/: tensor '\(extra)' is not in the input"); continue }
            report.tensorsChecked += 1
            let out = dense.bytes(d)
            guard d.dtype == weight.dtype, d.shape == [bias.length], let m = manifest.tensors[extra], m.added, m.shape == d.shape else {
                fail("tensor '\(extra)': dense/ has \(d.dtype.rawValue) \(d.shape), an added bias of \(bias.weight) is \(weight.dtype.rawValue) [\(bias.length)] listed as added")
                continue
            }
            if SHA256Stream.hex(out) != m.sha256Dense { fail("tensor '\(extra)': sha256 of dense/ bytes differs from the manifest") }
            if !bias.compensates && out.contains(where: { $0 != 0 }) { fail("tensor '\(extra)': a zero bias has nonzero bytes") }
        }
        for name in added.keys.sorted() where !denseNames.contains(name) { fail("dense/: added bias '\(name)' is missing") }
        let sliced = plan.slicedTensors
        for s in source.tensors {
            guard let d = dense.info(s.name) else { continue }
            guard let m = manifest.tensors[s.name] else { fail("manifest: tensor '\(s.name)' is not listed"); continue }
            report.tensorsChecked += 1
            let out = dense.bytes(d)
            let expected: [UInt8]
            if let cuts = sliced[s.name] {
                report.prunedTensors += 1
                let lines = plan.keptLines(cuts, kept: structure.kept)
                let shape = StructuredWriter.outputShape(s, rows: lines.rows, cols: lines.cols)
                guard d.dtype == s.dtype, d.shape == shape, m.shape == shape, m.sourceShape == s.shape else {
                    fail("tensor '\(s.name)': dense/ has \(d.dtype.rawValue) \(d.shape), the kept units give \(s.dtype.rawValue) \(shape)")
                    continue
                }
                // A re-fit layer's kept values are new by design: its shape and digest are checked.
                if m.valuesUpdated {
                    if SHA256Stream.hex(out) != m.sha256Dense { fail("tensor '\(s.name)': sha256 of dense/ bytes differs from the manifest") }
                    continue
                }
                expected = StructuredWriter.shrunk(source.bytes(s), info: s, rows: lines.rows, cols: lines.cols)
            } else {
                guard d.dtype == s.dtype, d.shape == s.shape else {
                    fail("tensor '\(s.name)': dense/ has \(d.dtype.rawValue) \(d.shape), input has \(s.dtype.rawValue) \(s.shape)")
                    continue
                }
                expected = [UInt8](source.bytes(s))
            }
            if !expected.elementsEqual(out) { fail("tensor '\(s.name)': dense/ bytes are not the input's \(sliced[s.name] == nil ? "bytes" : "kept rows and columns")") }
            if SHA256Stream.hex(out) != m.sha256Dense { fail("tensor '\(s.name)': sha256 of dense/ bytes differs from the manifest") }
        }
        return report
    }

    /// dense/config.json against the smaller shapes and the units' widths.
    private static func checkLlamaConfig(denseDir: String, dense: Checkpoint, plan: StructuredPlan, kept: [[Int]], source: LlamaConfig, fail: (String) -> Void) {
        do {
            let config = try LlamaConfig.load(denseDir)
            try config.validate(against: dense, file: (denseDir as NSString).appendingPathComponent("config.json"))
            for kind in UnitKind.allCases {
                let widths = (0..<config.layers).map { kind == .channels ? config.block($0).intermediateSize : config.block($0).heads }
                let expected = plan.kinds.contains(kind) ? plan.keptPerLayer(kind, kept: kept) : Array(repeating: kind == .channels ? source.intermediateSize : source.heads, count: source.layers)
                if widths != expected {
                    let key = kind == .channels ? "intermediate_size" : "num_attention_heads"
                    fail("dense/config.json: \(key) per block \(Set(widths).count == 1 ? "\(widths[0])" : "\(widths)"), the kept units give \(Set(expected).count == 1 ? "\(expected[0])" : "\(expected)")")
                }
            }
            // A stock config says one width: per-layer keys only where the blocks differ.
            if plan.global == nil && !config.hasUniformBlocks { fail("dense/config.json: per-layer widths, but every block keeps the same units") }
            // Key/value heads go only with whole heads (a model without grouped-query attention).
            let keyValueHeads = plan.headsTakeKeyValues ? config.heads : source.kvHeads
            if config.kvHeads != keyValueHeads {
                fail("dense/config.json: num_key_value_heads \(config.kvHeads), the kept heads give \(keyValueHeads)")
            }
            if config.headDim != source.headDim || config.hiddenSize != source.hiddenSize {
                fail("dense/config.json: head_dim or hidden_size changed")
            }
        } catch {
            fail("dense/config.json: \(error)")
        }
    }
}
