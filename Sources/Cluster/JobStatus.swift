import Foundation

/// `prune status JOB`: what the ledger says, readable while the job runs, after a crash
/// and after completion.
public struct JobStatus: Codable, Sendable {
    public struct WorkerLine: Codable, Sendable {
        public let name: String
        public let host: String
        public let state: String
        public let tasksDone: Int
        public let busySeconds: Double
        /// Results of this worker the coordinator refused.
        public let refused: Int
        public var tasksPerSecond: Double { busySeconds > 0 ? Double(tasksDone) / busySeconds : 0 }
    }

    public let state: String
    public let totalTasks: Int
    /// phase → state → count
    public let tasks: [String: [String: Int]]
    public let workers: [WorkerLine]
    public let retries: Int
    public let lastError: String?
    public let etaSeconds: Double?
    /// Worker identities barred from the job: principal → reason.
    public let quarantined: [String: String]

    public static func read(directory: String) throws -> JobStatus {
        let ledger = try Ledger(path: (directory as NSString).appendingPathComponent("ledger.sqlite"), create: false, readOnly: true)
        let rows = try ledger.tasks()
        var byPhase: [String: [String: Int]] = [:]
        for r in rows { byPhase[r.phase, default: [:]][r.state, default: 0] += 1 }
        let workers = try ledger.workers().map {
            WorkerLine(name: $0.name, host: $0.host, state: $0.state, tasksDone: $0.tasksDone, busySeconds: $0.busySeconds, refused: $0.refused)
        }
        let done = rows.filter { $0.state == "done" }
        let remaining = rows.count - done.count
        let secondsPerTask = done.isEmpty ? nil : done.compactMap(\.seconds).reduce(0, +) / Double(done.count)
        let active = max(workers.filter { $0.state == "active" }.count, 1)
        let state = try ledger.jobValue("state") ?? "unknown"
        let eta = remaining == 0 ? 0 : secondsPerTask.map { $0 * Double(remaining) / Double(active) }
        let retries = try ledger.events().filter { $0.kind == "retry" || $0.kind == "requeue" }.count
        let quarantined = Dictionary(try ledger.quarantined().map { ($0.principal, $0.reason) }, uniquingKeysWith: { a, _ in a })
        return JobStatus(state: state, totalTasks: rows.count, tasks: byPhase, workers: workers, retries: retries,
                         lastError: (state == "failed" ? try ledger.jobValue("error") : nil) ?? rows.compactMap(\.lastError).last, etaSeconds: state == "running" ? eta : nil, quarantined: quarantined)
    }

    public func render() -> String {
        var lines: [String] = []
        let done = tasks.values.reduce(0) { $0 + ($1["done"] ?? 0) }
        lines.append("job: \(state), \(done)/\(totalTasks) tasks done" + (etaSeconds.map { String(format: ", ETA %.0fs", $0) } ?? ""))
        for phase in tasks.keys.sorted() {
            let states = tasks[phase]!.keys.sorted().map { "\($0) \(tasks[phase]![$0]!)" }.joined(separator: ", ")
            lines.append("  \(phase): \(states)")
        }
        if !workers.isEmpty {
            lines.append("workers:")
            for w in workers {
                lines.append(String(format: "  %@ (%@, %@): %d tasks, %.2f s busy, %.2f tasks/s", w.name, w.host, w.state, w.tasksDone, w.busySeconds, w.tasksPerSecond)
                             + (w.refused > 0 ? ", \(w.refused) results refused" : ""))
            }
        }
        if !quarantined.isEmpty {
            lines.append("quarantined:")
            for principal in quarantined.keys.sorted() { lines.append("  \(principal): \(quarantined[principal]!)") }
        }
        if state == "failed", let lastError { lines.append("error: \(lastError)") }
        if retries > 0 { lines.append("retries: \(retries)" + (state != "failed" ? lastError.map { "; last error: \($0)" } ?? "" : "")) }
        return lines.joined(separator: "\n")
    }
}
