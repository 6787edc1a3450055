import Foundation
import Pruning
import Tensors

/// Runs a job in this process: validate everything, compute masks, assemble outputs
/// into a staging directory, publish it as `out/` in one rename.
public struct LocalRunner {
    public let spec: JobSpec
    public var quiet = false

    public init(spec: JobSpec, quiet: Bool = false) {
        self.spec = spec
        self.quiet = quiet
    }

    public struct Summary: Sendable {
        public let manifest: Manifest
        public let outDirectory: String
        public let seconds: Double
    }

    public func run() throws -> Summary {
        let start = Date()
        let checkpoint = try Checkpoint(path: spec.model)
        let plan = try Plan(spec: spec, checkpoint: checkpoint)
        try refuseNonFinite(checkpoint)
        let job = JobDirectory(path: spec.output)
        try job.validate(for: spec)
        let created = try job.claim(for: spec)
        do {
            return try prune(checkpoint: checkpoint, plan: plan, job: job, start: start)
        } catch {
            // A first run that fails leaves no directory behind.
            if created { try? FileManager.default.removeItem(atPath: job.path) }
            throw error
        }
    }

    private func prune(checkpoint: Checkpoint, plan: Plan, job: JobDirectory, start: Date) throws -> Summary {

        let criterion = spec.criterion
        var masks: [String: Mask] = [:]
        let progress = Progress(label: "prune", total: plan.targets.count, quiet: quiet)
        for t in plan.targets {
            let shard = checkpoint.shard(of: t.name)!
            masks[t.name] = try TensorPruner.mask(t.info, bytes: shard.bytes(t.info), criterion: criterion,
                                                  pattern: plan.pattern, sparsity: plan.sparsity)
            shard.release(t.info)
            progress.step(t.name)
        }

        let staging = try job.makeStaging()
        do {
            let assembleProgress = Progress(label: "assemble", total: checkpoint.shards.count, quiet: quiet)
            let manifest = try Assembler(checkpoint: checkpoint, plan: plan, masks: masks, spec: spec)
                .write(to: staging, progress: assembleProgress)
            try job.publish(staging: staging)
            return Summary(manifest: manifest, outDirectory: job.outPath, seconds: Date().timeIntervalSince(start))
        } catch {
            try? FileManager.default.removeItem(atPath: staging)
            throw error
        }
    }

    /// NaN or Inf in any floating tensor ends the job before anything is written, naming
    /// the tensors, unless the spec allows it.
    func refuseNonFinite(_ checkpoint: Checkpoint) throws {
        guard !spec.allowNonFinite else { return }
        var bad: [String] = []
        for (shard, file) in zip(checkpoint.shardNames, checkpoint.shards) {
            for t in file.tensors where t.dtype.isFloat {
                let (nan, inf) = TensorPruner.nonFiniteCounts(t, bytes: file.bytes(t))
                file.release(t)
                if nan + inf > 0 { bad.append("\(shard): tensor '\(t.name)' has \(nan) NaN and \(inf) Inf values") }
            }
        }
        guard bad.isEmpty else {
            let more = bad.count > 3 ? " (and \(bad.count - 3) more tensors)" : ""
            throw SpecError(bad.prefix(3).joined(separator: "; ") + more + "; set allow_nonfinite: true to prune anyway")
        }
    }
}
