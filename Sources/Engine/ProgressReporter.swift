#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Progress of a long pass: a redrawn bar with ETA on a terminal, a plain line per step
/// otherwise (logs, CI), on standard error.
public final class ProgressReporter {
    private let label: String
    private let total: Int
    private let start = Date()
    private var done = 0
    private let isTTY: Bool
    private var lastDraw = Date.distantPast
    private let quiet: Bool

    /// `done` steps may already be complete (a resumed job).
    public init(label: String, total: Int, done: Int = 0, quiet: Bool = false) {
        self.label = label
        self.total = max(total, 1)
        self.done = done
        self.quiet = quiet
        isTTY = isatty(2) == 1 && ProcessInfo.processInfo.environment["TERM"] != "dumb"
    }

    /// Marks one more step done; `item` names it in plain-line mode.
    public func step(_ item: String) {
        done += 1
        guard !quiet else { return }
        let elapsed = Date().timeIntervalSince(start)
        if isTTY {
            let now = Date()
            guard done == total || now.timeIntervalSince(lastDraw) > 0.1 else { return }
            lastDraw = now
            let width = 30
            let filled = width * done / total
            let eta = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            var line = "\r\(label) \(bar) \(done)/\(total) \(100 * done / total)% ETA \(ProgressReporter.clock(eta))"
            if done == total { line = "\r\(label) \(bar) \(done)/\(total) done in \(ProgressReporter.clock(elapsed))\n" }
            FileHandle.standardError.write(line.data(using: .utf8)!)
        } else {
            let line = String(format: "%@ %d/%d %@ (%.2fs)\n", label, done, total, item, elapsed)
            FileHandle.standardError.write(line.data(using: .utf8)!)
        }
    }

    /// A step done earlier must be done again (a reopened task).
    public func unstep() {
        done = max(done - 1, 0)
    }

    static func clock(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return String(format: "%d:%02d", s / 60, s % 60)
    }
}
