import Engine
import Foundation
import Protocol
import Pruning
import Tensors

/// A task's result artifacts as the ledger records them: `name=sha256` pairs joined by
/// commas ("hidden=…,stats:model.layers.0.self_attn.q_proj.weight=…"). A mask task's
/// single mask is recorded as its bare digest.
public enum ResultDigests {
    public static func format(_ outputs: [(name: String, digest: String)]) -> String {
        outputs.map { "\($0.name)=\($0.digest)" }.joined(separator: ",")
    }

    public static func parse(_ text: String) -> [(name: String, digest: String)] {
        guard text.contains("=") else { return [("mask", text)] }
        return text.split(separator: ",").compactMap { part -> (name: String, digest: String)? in
            let pieces = part.split(separator: "=")
            guard pieces.count >= 2 else { return nil }
            return (pieces.dropLast().joined(separator: "="), String(pieces.last!))
        }
    }
}

/// The calibration DAG on the coordinator: Assign bodies built from the outputs of the
/// tasks a task depends on, results validated and stored as artifacts, and the pruned
/// layers' masks, updated weights and errors read back for assembly.
extension ClusterJob {
    /// An output artifact of a finished task, by name.
    func outputRef(_ name: String, of taskID: String) throws -> Prune_V1_ArtifactRef {
        guard let recorded = done[taskID] else {
            throw MissingOutput(task: taskID, "\(ledgerPath): task \(taskID) is not done")
        }
        guard let digest = ResultDigests.parse(recorded).first(where: { $0.name == name })?.digest else {
            throw LedgerError("\(ledgerPath): task \(taskID) has no recorded output '\(name)'")
        }
        guard let size = (try? FileManager.default.attributesOfItem(atPath: artifacts.path(for: digest)))?[.size] as? Int else {
            throw MissingOutput(task: taskID, "\(artifacts.path(for: digest)): artifact '\(name)' of task \(taskID) is missing")
        }
        var ref = Prune_V1_ArtifactRef()
        ref.sha256 = digest
        ref.size = UInt64(size)
        return ref
    }

    /// The bytes of a finished task's output, verified.
    func output(_ name: String, of taskID: String) throws -> [UInt8] {
        let ref = try outputRef(name, of: taskID)
        guard let bytes = artifacts.get(ref.sha256) else {
            throw LedgerError("\(artifacts.path(for: ref.sha256)): artifact '\(name)' of task \(taskID) is corrupt")
        }
        return bytes
    }

    /// SparseGPT's updated weights of a pruned layer (F32 little-endian artifact).
    func updatedValues(of tensor: String) throws -> [Float] {
        let bytes = try output("weights", of: "prune:\(tensor)")
        return bytes.withUnsafeBytes { raw in (0..<(bytes.count / 4)).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) } }
    }

    /// Reconstruction error per pruned layer, where the method records one.
    func reconstructionErrors() throws -> [String: Double] {
        var errors: [String: Double] = [:]
        guard spec.method == .sparsegpt else { return errors }
        for t in plan.targets {
            let bytes = try output("error", of: "prune:\(t.name)")
            guard bytes.count == 8 else { throw LedgerError("error of \(t.name) is \(bytes.count) bytes") }
            errors[t.name] = bytes.withUnsafeBytes { Double(bitPattern: UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        }
        return errors
    }

    func calibrationWork(_ task: CalibrationPlan.Task) throws -> Prune_V1_Assign.OneOf_Work {
        let calibration = calibration!
        switch task {
        case .calibrate(let b, let s):
            let step = calibration.step(block: b, shard: s)
            var c = Prune_V1_CalibrateTask()
            c.block = UInt32(b)
            c.shard = UInt32(s)
            c.method = spec.method.rawValue
            c.mode = calibration.mode.rawValue
            c.configJson = Data(calibration.configJSON)
            c.tokens = UInt32(calibration.tokens)
            c.samples = UInt32(step.samples)
            c.emitHidden = step.emitHidden
            c.groups = step.groups.map { g in Prune_V1_LinearGroup.with { $0.names = g } }
            c.weights = calibration.tensorsRead(block: b).map { tensorRef(checkpoint.info($0)!) }
            if b == 0 {
                c.tokenIds = calibration.windows(shard: s).flatMap { $0 }
            } else {
                c.hidden = try outputRef("hidden", of: CalibrationPlan.Task.calibrate(block: b - 1, shard: s).id)
                if calibration.mode == .sequential {
                    c.pruned = try calibration.targets(block: b - 1).map { name in
                        var p = Prune_V1_PrunedLinear()
                        p.name = name
                        p.mask = try outputRef("mask", of: "prune:\(name)")
                        if spec.method == .sparsegpt { p.weights = try outputRef("weights", of: "prune:\(name)") }
                        return p
                    }
                }
            }
            return .calibrate(c)
        case .prune(let b, let name):
            let key = calibration.statisticsKey(for: name, block: b)
            var p = Prune_V1_LayerPruneTask()
            p.tensor = tensorRef(checkpoint.info(name)!)
            p.method = spec.method.rawValue
            p.pattern = calibration.pattern.description
            p.sparsity = calibration.sparsity
            p.blockSize = UInt32(calibration.sparseGPT.blockSize)
            p.damp = calibration.sparseGPT.damp
            p.statistics = try (0..<calibration.shardCount).map {
                try outputRef("stats:\(key)", of: CalibrationPlan.Task.calibrate(block: b, shard: $0).id)
            }
            return .layerPrune(p)
        }
    }

    /// The names of a task's result payloads, in the order the worker sends them.
    func expectedOutputs(_ task: CalibrationPlan.Task) -> [String] {
        let calibration = calibration!
        switch task {
        case .calibrate(let b, let s):
            let step = calibration.step(block: b, shard: s)
            return (step.emitHidden ? ["hidden"] : []) + step.groups.map { "stats:\($0[0])" }
        case .prune:
            return spec.method == .sparsegpt ? ["mask", "weights", "error"] : ["mask"]
        }
    }

    /// Validates a calibration task's payloads (count, sizes, parseable statistics and
    /// masks) and stores each as an artifact; the result is named by its outputs' digests.
    func storeCalibration(_ task: CalibrationPlan.Task, payloads: [ResultPayload]) throws -> StoredResult {
        if let problem = calibrationProblem(task, payloads: payloads) { return .invalid(problem) }
        var outputs: [(name: String, digest: String)] = []
        for (name, payload) in zip(expectedOutputs(task), payloads) { outputs.append((name, try artifacts.put(payload.bytes, sha256: payload.sha256))) }
        return .stored(digest: ResultDigests.format(outputs))
    }

    /// Why a calibration task's payloads are unusable, or nil.
    private func calibrationProblem(_ task: CalibrationPlan.Task, payloads: [ResultPayload]) -> String? {
        let calibration = calibration!
        let names = expectedOutputs(task)
        guard payloads.count == names.count else { return "result of \(task.id) has \(payloads.count) payloads, expected \(names.count)" }
        for (name, bytes) in zip(names, payloads.map(\.bytes)) {
            switch (task, name) {
            case (.calibrate(let b, let s), "hidden"):
                let expected = calibration.step(block: b, shard: s).hiddenBytes
                guard bytes.count == expected else { return "hidden states of \(task.id) are \(bytes.count) bytes, expected \(expected)" }
            case (.calibrate, _):
                // The statistic of a group's input has as many columns as its layers.
                let columns = checkpoint.info(String(name.dropFirst("stats:".count)))?.cols ?? -1
                let parsed = spec.method == .wanda ? (try? WandaStatistics(serialized: bytes))?.columns : SparseGPT.serializedHeader(bytes)?.columns
                guard parsed == columns else { return "\(name) of \(task.id) is not a valid statistic of \(columns) columns" }
            case (.prune(_, let tensor), "mask"):
                let info = checkpoint.info(tensor)!
                guard (try? Mask(rows: info.rows, cols: info.cols, bits: bytes)) != nil else { return "mask of \(task.id) has the wrong size" }
            case (.prune(_, let tensor), "weights"):
                guard bytes.count == checkpoint.info(tensor)!.elementCount * 4 else { return "weights of \(task.id) have the wrong size" }
            default:
                guard bytes.count == 8 else { return "\(name) of \(task.id) is not one F64" }
            }
        }
        return nil
    }

    /// Blocks whose calibration artifacts (activations, statistics) were deleted.
    func collectedBlocks() throws -> Int {
        try ledger.jobValue("collected_blocks").flatMap(Int.init) ?? 0
    }

    /// Deletes the hidden states and statistics of every block whose consumers are all
    /// done (its prunes, and the next block's calibrations), so a job's disk use stays
    /// about one block of activations. The ledger records it first: a crash in between
    /// leaves files behind, never a done task without its inputs.
    func collectFinishedBlocks() throws {
        guard let calibration else { return }
        var collected = try collectedBlocks()
        func isDone(_ t: CalibrationPlan.Task) -> Bool { done[t.id] != nil }
        while collected < calibration.blocks {
            let b = collected
            let prunes = calibration.targets(block: b).map { CalibrationPlan.Task.prune(block: b, tensor: $0) }
            let next = b + 1 < calibration.blocks ? (0..<calibration.shardCount).map { CalibrationPlan.Task.calibrate(block: b + 1, shard: $0) } : []
            let own = (0..<calibration.shardCount).map { CalibrationPlan.Task.calibrate(block: b, shard: $0) }
            guard (own + prunes + next).allSatisfy(isDone) else { break }
            collected += 1
            try ledger.setJobValue("collected_blocks", String(collected))
            // Digests still referenced by a task that keeps its artifacts are spared.
            let ownIDs = Set(own.map(\.id))
            var kept = Set<String>()
            for (id, recorded) in done where !ownIDs.contains(id) {
                if let t = calibrationTaskByID[id], case .calibrate(let tb, _) = t, tb < collected { continue }
                for output in ResultDigests.parse(recorded) { kept.insert(output.digest) }
            }
            for task in own {
                for output in ResultDigests.parse(done[task.id]!) where !kept.contains(output.digest) {
                    try? FileManager.default.removeItem(atPath: artifacts.path(for: output.digest))
                }
            }
        }
    }
}
