import ArgumentParser
import Models
import Cluster
import Engine
import Foundation
import Pruning
import Tensors
import Protocol
import ZeroMQ

/// Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.
enum ExitStatus {
    static let checkFailed: Int32 = 1
    static let badInput: Int32 = 2
    /// 128 + SIGTERM, as shells report a process stopped by SIGTERM (SIGINT: 130).
    static let stoppedBySignal: Int32 = 143
}

/// What the SIGINT handler writes, prepared before it can run.
nonisolated(unsafe) private var interruptMessage: [UInt8] = []

/// Ctrl-C while a job runs in this process (`--workers 0`, or before a coordinator
/// takes over the signal): the progress bar's line is cleared and the process exits 130,
/// as shells report SIGINT. A coordinator handles SIGINT itself (stops, says how to
/// resume) and ends with the same status.
enum Interrupt {
    /// Carriage return and erase-line, when stderr is a terminal (the progress bar's).
    static let clearLine = isatty(2) == 1 ? "\r\u{1B}[K" : ""

    static func install() {
        interruptMessage = Array((clearLine + "prune: interrupted\n").utf8)
        signal(SIGINT) { _ in
            // Only async-signal-safe calls here: write(2) on a prepared buffer, _exit(2).
            interruptMessage.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
            _exit(130)
        }
    }
}

@main
struct Prune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Prune neural-network checkpoints (magnitude, random, Wanda, SparseGPT; unstructured, per-row, N:M or whole rows) on one machine or several.",
        discussion: "Exit codes: 0 ok, 1 a check failed, 2 bad input or usage, 130/143 stopped by SIGINT/SIGTERM (prune resume continues the job).",
        version: Prune.version,
        subcommands: [Inspect.self, Run.self, Check.self, Densify.self, Resume.self, Status.self,
                      CoordinatorCommand.self, WorkerCommand.self, Keygen.self, ImportGGUF.self, InitMLP.self, Bench.self, BenchCoordinator.self, BenchOne.self])

    /// `prune --version`: the release, and the versions of what it exchanges with other
    /// builds (the wire protocol, the ledger's layout).
    static let version = "prune-cluster 0.6.0 (protocol \(Settings.protocolVersion), ledger layout \(Ledger.schemaVersion))"

    /// `prune` alone is a usage error: one line naming the commands, exit 2.
    func run() throws {
        throw ValidationError("no command given (one of \(Prune.commandNames.joined(separator: ", ")))")
    }

    /// The subcommands' names, as typed.
    static var commandNames: [String] {
        configuration.subcommands.filter { $0.configuration.shouldDisplay }.map { $0._commandName }
    }

    /// Runs the command. Every failure ends as one stderr line `prune: error: …` (see
    /// `ErrorLine`) and exit 2, except a failed check (1: its lines are on stdout) and a
    /// stop by SIGTERM (143). `--help` prints the help and exits 0.
    static func main() {
        BLASThreads.pinKernels()
        BLASThreads.useDefault()
        // A job's `speed:` measures each model in a `prune bench-one` of its own.
        GenerationSpeed.childExecutable = EmbeddedCluster.currentExecutable
        var command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            // --help and --version are "errors" that exit 0 after printing.
            if exitCode(for: error) == .success { exit(withError: error) }
            var text = message(for: error)
            // A misspelled command: name the nearest one.
            if let first = CommandLine.arguments.dropFirst().first, !first.hasPrefix("-"), commandNameInArguments == nil {
                text = (text.split(whereSeparator: \.isNewline).first.map(String.init) ?? text) + Suggestion.phrase(first, in: commandNames)
            }
            usageFailure(text, command: commandNameInArguments)
        }
        Interrupt.install()
        do {
            try command.run()
        } catch let e as JobStopped {
            FileHandle.standardError.write(Data((Interrupt.clearLine + ErrorLine.escaped("prune: \(e.description)") + "\n").utf8))
            Foundation.exit(128 + e.signal)
        } catch let e as CheckFailed {
            Foundation.exit(e.code)
        } catch let e as ValidationError {
            usageFailure(e.message, command: type(of: command) == Prune.self ? nil : type(of: command)._commandName)
        } catch {
            // `prune help run` and `--help` come back from run() as the parser's errors.
            if exitCode(for: error) == .success { exit(withError: error) }
            fail(describe(error))
        }
    }

    /// The message of any error: the types of this project describe themselves in one
    /// line already; Foundation's file errors name the file and the reason.
    static func describe(_ error: Error) -> String {
        switch error {
        case let e as JobFailed: return "job failed: \(e.description)"
        case let e as CocoaError: return "\(e.filePath ?? "file"): \(CheckpointError.reason(e))"
        case let e as CustomStringConvertible: return e.description
        default:
            let ns = error as NSError
            return ns.localizedFailureReason ?? ns.localizedDescription
        }
    }

    /// The subcommand named on the command line, if any (to point at its --help).
    static var commandNameInArguments: String? {
        CommandLine.arguments.dropFirst().first { commandNames.contains($0) || $0 == BenchCoordinator._commandName }
    }

    /// A usage error: the parser's first line and where to look, e.g.
    /// `prune: error: Missing expected argument '<spec>'; see 'prune run --help'`.
    static func usageFailure(_ message: String, command: String?) -> Never {
        let first = message.split(whereSeparator: \.isNewline).first.map(String.init) ?? "usage error"
        fail(first + "; see 'prune\(command.map { " " + $0 } ?? "") --help'")
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data((ErrorLine.format(message) + "\n").utf8))
        Foundation.exit(ExitStatus.badInput)
    }
}

/// Thrown to exit with a status after output was already printed.
struct CheckFailed: Error {
    let code: Int32
}

