import ArgumentParser
import Models
import Cluster
import Engine
import Foundation
import Pruning
import Tensors
import Protocol
import ZeroMQ

// Option groups shared by several commands.

/// CURVE options of a coordinator (`prune coordinator`, `prune resume --bind`).
struct CoordinatorSecurity: ParsableArguments {
    @Option(help: "This coordinator's CURVE secret key file (from prune keygen).")
    var curveSecret: String?

    @Option(help: "File of worker public keys allowed in, one per line.")
    var allow: String?

    @Flag(help: "Allow plaintext tcp:// (loopback addresses only).")
    var insecure = false
}

/// CURVE options of a worker.
struct WorkerSecurity: ParsableArguments {
    @Option(help: "This worker's CURVE secret key file (from prune keygen).")
    var curveSecret: String?

    @Option(help: "The coordinator's public key file.")
    var serverKey: String?

    @Flag(help: "Allow plaintext tcp:// (loopback addresses only).")
    var insecure = false
}


/// Options of every command that coordinates a job.
struct JobOptions: ParsableArguments {
    @Option(help: "A task failing this many times fails the job.")
    var maxAttempts = 3

    @Option(help: "A worker whose results are refused this many times is quarantined (no more work in this job).")
    var maxRefusedResults = 3

    @Option(help: "A worker whose attempts fail or vanish this many times is quarantined.")
    var maxWorkerFailures = 5

    @OptionGroup var tuning: TuningOptions

    @Flag(name: .shortAndLong, help: "No progress output.")
    var quiet = false

    func validate() throws {
        guard maxAttempts >= 1, maxRefusedResults >= 1, maxWorkerFailures >= 1 else {
            throw ValidationError("--max-attempts, --max-refused-results and --max-worker-failures must be 1 or more")
        }
    }

    var settings: Settings {
        var s = tuning.settings
        s.maxAttempts = maxAttempts
        s.maxRefusedResults = maxRefusedResults
        s.maxWorkerFailures = maxWorkerFailures
        return s
    }
}


/// Knobs for tests and benchmarks; hidden from --help.
struct TuningOptions: ParsableArguments {
    @Option(help: .hidden)
    var taskWeights: Int?

    @Option(help: .hidden)
    var maxFrameBytes: Int64?

    @Option(help: .hidden)
    var heartbeatMs: Int?

    /// Worker processes `prune run` may restart over the whole run.
    @Option(help: .hidden)
    var maxRestarts = 64

    var settings: Settings {
        var s = Settings()
        if let taskWeights { s.maxWeightsPerTask = taskWeights }
        if let maxFrameBytes { s.maxFrameBytes = maxFrameBytes }
        if let heartbeatMs { s.heartbeatMs = heartbeatMs }
        return s
    }
}

