import Engine
import Foundation
import Protocol
import Pruning
import Tensors

/// A task's result artifacts as the ledger records them: `name=sha256` pairs joined by
/// commas ("hidden=…,stats:model.layers.0.self_attn.q_proj.weight=…"). A result with one
/// mask is recorded as its bare digest.
public enum ResultDigests {
    public static func format(_ outputs: [(name: String, digest: String)]) -> String {
        if outputs.count == 1, outputs[0].name == OutputName.mask.rawValue { return outputs[0].digest }
        return outputs.map { "\($0.name)=\($0.digest)" }.joined(separator: ",")
    }

    public static func parse(_ text: String) -> [(name: String, digest: String)] {
        // A task with no outputs (the last block's calibration when it prunes nothing) records "".
        guard !text.isEmpty else { return [] }
        guard text.contains("=") else { return [(OutputName.mask.rawValue, text)] }
        return text.split(separator: ",").compactMap { part -> (name: String, digest: String)? in
            let pieces = part.split(separator: "=")
            guard pieces.count >= 2 else { return nil }
            return (pieces.dropLast().joined(separator: "="), String(pieces.last!))
        }
    }
}

/// The outputs of a cluster job's done tasks: the ledger's digests, the artifact store's
/// files (each verified when read).
struct ArtifactOutputs: OutputStore {
    let job: ClusterJob

    private func digest(_ name: OutputName, of task: TaskID) throws -> String {
        let key = task.description
        guard let recorded = job.done[key] else {
            throw MissingOutput(task: key, "\(job.ledgerPath): task \(task) is not done")
        }
        // A task's outputs are parsed once per result (a training step's tasks name every
        // gradient since the last checkpoint: dozens of lookups per assignment).
        let outputs: [(name: String, digest: String)]
        if let parsed = job.parsedResults[key], parsed.record == recorded {
            outputs = parsed.outputs
        } else {
            outputs = ResultDigests.parse(recorded)
            job.parsedResults[key] = (recorded, outputs)
        }
        guard let digest = outputs.first(where: { $0.name == name.rawValue })?.digest else {
            throw LedgerError("\(job.ledgerPath): task \(task) has no recorded output '\(name)'")
        }
        return digest
    }

    func ref(_ name: OutputName, of task: TaskID) throws -> Prune_V1_ArtifactRef {
        let digest = try digest(name, of: task)
        // An artifact's size never changes (it is named by its digest): one stat per file
        // while it is there (`collectFinished` forgets what it deletes).
        let size: Int
        if let known = job.artifactSizes[digest] {
            size = known
        } else {
            guard let measured = (try? FileManager.default.attributesOfItem(atPath: job.artifacts.path(for: digest)))?[.size] as? Int else {
                throw MissingOutput(task: task.description, "\(job.artifacts.path(for: digest)): artifact '\(name)' of task \(task) is missing")
            }
            size = measured
            job.artifactSizes[digest] = measured
        }
        var ref = Prune_V1_ArtifactRef()
        ref.sha256 = digest
        ref.size = UInt64(size)
        return ref
    }

    func provide(_ bytes: [UInt8]) throws -> Prune_V1_ArtifactRef {
        // Durable: a resume's tasks name it again. `put` keeps a file already there, so
        // one a crash left damaged is removed first (checked once per coordinator).
        let digest = bytes.withUnsafeBytes { SHA256Stream.hex($0) }
        let path = job.artifacts.path(for: digest)
        if FileManager.default.fileExists(atPath: path), !job.artifacts.verify(digest) { try? FileManager.default.removeItem(atPath: path) }
        try job.artifacts.put(bytes, sha256: digest)
        var ref = Prune_V1_ArtifactRef()
        ref.sha256 = digest
        ref.size = UInt64(bytes.count)
        return ref
    }

    func bytes(_ name: OutputName, of task: TaskID) throws -> [UInt8] {
        let digest = try digest(name, of: task)
        guard let bytes = job.artifacts.get(digest) else {
            throw MissingOutput(task: task.description, "\(job.artifacts.path(for: digest)): artifact '\(name)' of task \(task) is missing or corrupt")
        }
        return bytes
    }
}

/// Transient outputs are deleted once every task that reads them is done, so a job's disk
/// use stays about one decoder block of activations.
extension ClusterJob {
    /// After `task` is done: collects the transient outputs of it and of its
    /// dependencies whose readers are now all done. The ledger records a collection before
    /// the files go: a crash in between leaves files behind, never a task without inputs.
    func collectFinished(after task: TaskID) throws {
        guard let finished = dag.task(task) else { return }
        for candidate in finished.dependencies + [task] where !collected.contains(candidate.description) && done[candidate.description] != nil {
            // Cheap tests first: whether it has transient outputs at all, then its readers,
            // latest first (the ones most likely still running).
            guard let phase = dag.phase(of: candidate), phase.outputNames(of: candidate).contains(where: phase.isTransient),
                  dag.dependents(of: candidate).reversed().allSatisfy({ done[$0.description] != nil }) else { continue }
            let transient = ResultDigests.parse(done[candidate.description]!).filter { phase.isTransient(OutputName($0.name)) }
            guard !transient.isEmpty else { continue }
            collected.insert(candidate.description)
            try ledger.setCollected(candidate.description, true)
            // A digest another output still holds (the same bytes) is spared.
            for output in transient {
                holders[output.digest, default: 1] -= 1
                // Only a well-formed digest names a file: never the store's directory itself.
                if holders[output.digest]! <= 0, SHA256Stream.isHexDigest(output.digest) {
                    holders[output.digest] = nil
                    artifactSizes[output.digest] = nil
                    try? FileManager.default.removeItem(atPath: artifacts.path(for: output.digest))
                }
            }
        }
    }
}
