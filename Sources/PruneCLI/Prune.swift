import ArgumentParser
import Engine
import Foundation
import Pruning
import Tensors

/// Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.
enum ExitStatus {
    static let checkFailed: Int32 = 1
    static let badInput: Int32 = 2
}

@main
struct Prune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Prune neural-network checkpoints: magnitude or random, unstructured, per-row, N:M or whole rows.",
        discussion: "Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.",
        subcommands: [Inspect.self, Run.self, Check.self, Densify.self])

    /// `prune` alone is a usage error: print the help and exit 2.
    func run() throws {
        FileHandle.standardError.write(Data(Prune.helpMessage().utf8))
        throw CheckFailed(code: ExitStatus.badInput)
    }

    /// Runs the command, turning every error into one line on stderr and the exit code.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as CheckpointError {
            fail(e.description)
        } catch let e as SpecError {
            fail(e.description)
        } catch let e as PruningError {
            fail(e.description)
        } catch let e as CheckFailed {
            Foundation.exit(e.code)
        } catch let e as CocoaError {
            fail("\(e.filePath ?? "file"): \(CheckpointError.reason(e))")
        } catch {
            let code = exitCode(for: error)
            if code == .success || code.rawValue == 0 {
                exit(withError: error)
            }
            let message = fullMessage(for: error)
            FileHandle.standardError.write(Data((message + "\n").utf8))
            // Usage errors from the parser exit 2 like any other bad input.
            Foundation.exit(ExitStatus.badInput)
        }
    }

    static func fail(_ line: String) -> Never {
        let oneLine = line.split(whereSeparator: \.isNewline).joined(separator: " ")
        FileHandle.standardError.write(Data("prune: error: \(oneLine)\n".utf8))
        Foundation.exit(ExitStatus.badInput)
    }
}

/// Thrown to exit with a status after output was already printed.
struct CheckFailed: Error {
    let code: Int32
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a checkpoint's tensors: dtype, shape, parameters, bytes, current sparsity.")

    @Argument(help: "Checkpoint directory or .safetensors file.")
    var model: String

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() throws {
        let checkpoint = try Checkpoint(path: model)
        var rows: [[String: Any]] = []
        var totalZeros = 0
        for t in checkpoint.tensors {
            let bytes = checkpoint.bytes(t)
            let zeros = t.dtype.isFloat ? TensorPruner.zeroCount(bytes, elementSize: t.dtype.size) : 0
            totalZeros += zeros
            rows.append(["name": t.name, "dtype": t.dtype.rawValue, "shape": t.shape, "parameters": t.elementCount,
                         "bytes": t.byteCount, "sparsity": t.elementCount == 0 ? 0.0 : Double(zeros) / Double(t.elementCount),
                         "file": checkpoint.shardName(of: t.name)!])
        }
        if json {
            let doc: [String: Any] = ["tensors": rows, "parameters": checkpoint.parameterCount, "bytes": checkpoint.byteCount,
                                      "files": checkpoint.shardNames]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let nameWidth = min(max(checkpoint.tensors.map(\.name.count).max() ?? 4, 4), 70)
        print("\("tensor".padding(toLength: nameWidth, withPad: " ", startingAt: 0))  dtype  shape                 parameters        bytes  sparsity")
        for r in rows {
            let name = (r["name"] as! String).padding(toLength: nameWidth, withPad: " ", startingAt: 0)
            let shape = "[" + (r["shape"] as! [Int]).map(String.init).joined(separator: ", ") + "]"
            let dtype = (r["dtype"] as! String).padding(toLength: 5, withPad: " ", startingAt: 0)
            let shapeColumn = shape.padding(toLength: max(20, shape.count), withPad: " ", startingAt: 0)
            print(String(format: "%@  %@  %@ %11ld %12ld  %7.2f%%", name, dtype, shapeColumn,
                         r["parameters"] as! Int, r["bytes"] as! Int, 100 * (r["sparsity"] as! Double)))
        }
        print(String(format: "%ld tensors in %ld file(s), %ld parameters, %ld bytes, %.2f%% zeros",
                     checkpoint.tensors.count, checkpoint.shards.count, checkpoint.parameterCount, checkpoint.byteCount,
                     100 * Double(totalZeros) / Double(max(checkpoint.parameterCount, 1))))
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a pruning job described by a YAML spec (see docs/job-spec.md).")

    @Argument(help: "The job spec, e.g. job.yaml.")
    var spec: String

    @Flag(name: .shortAndLong, help: "No progress output.")
    var quiet = false

    func run() throws {
        let job = try JobSpec.load(path: spec)
        let summary = try LocalRunner(spec: job, quiet: quiet).run()
        let t = summary.manifest.totals
        print("wrote \(summary.outDirectory): \(summary.manifest.tensors.values.filter(\.pruned).count) tensors pruned, "
              + String(format: "%.2f%% of their weights zero; sparse/ is %.3f× the size of dense/ (pruned tensors alone %.3f×); %.2fs",
                       100 * Double(t.zeros) / Double(max(t.prunedParameters, 1)), t.sparseToDenseRatio, t.prunedSparseToDenseRatio, summary.seconds))
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify a pruned output against its input: names, shapes, dtypes, zeros, patterns, digests, sparse/ rebuilds dense/.",
        discussion: "Exit 0 when every check passes, 1 when one fails (one line per problem), 2 when an input cannot be read.")

    @Argument(help: "The original checkpoint (directory or .safetensors file).")
    var original: String

    @Argument(help: "The job directory, or its out/ directory.")
    var output: String

    func run() throws {
        let report = try Checker.check(original: original, output: output)
        for f in report.failures { print("FAIL \(f)") }
        if report.passed {
            print("check passed: \(report.tensorsChecked) tensors, \(report.prunedTensors) pruned, \(report.zeros) zeros verified; sparse/ rebuilds dense/ bit-exactly")
        } else {
            print("check failed: \(report.failures.count) problem(s)")
            throw CheckFailed(code: ExitStatus.checkFailed)
        }
    }
}

struct Densify: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Rebuild a dense checkpoint from a sparse/ directory, bit-exact with dense/.")

    @Argument(help: "The sparse/ directory of a job's output.")
    var sparse: String

    @Argument(help: "Where to write the dense checkpoint (new or empty directory).")
    var output: String

    func run() throws {
        try Densifier.densify(sparseDirectory: sparse, to: output)
        print("wrote \(output)")
    }
}
