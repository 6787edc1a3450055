import Foundation

/// The job's durable record, `JOB/ledger.sqlite` (WAL, synchronous FULL): the job's
/// digests, every task with its state and result digest, the workers seen, and an event
/// log. A result row is committed before its worker is acknowledged; leases are not
/// stored (after a crash every unfinished task is simply pending again).
public final class Ledger {
    public struct TaskRow: Sendable, Equatable {
        public let id: String
        public let sequence: Int
        public let phase: String
        /// The serialized work (prune.v1 Assign body) the task runs.
        public let spec: [UInt8]
        public var state: String
        public var attempts: Int
        public var worker: String?
        public var resultSHA256: String?
        public var lastError: String?
        public var seconds: Double?
        public var finishedAt: Double?
    }

    public struct WorkerRow: Sendable, Equatable {
        public let id: String
        public let name: String
        public let host: String
        /// The worker's identity: its CURVE public key, or "name:NAME" without CURVE.
        public let principal: String
        /// Results of this connection the coordinator refused.
        public var refused: Int
        public var tasksDone: Int
        public var busySeconds: Double
        public var lastSeen: Double
        public var state: String
    }

    public struct Event: Sendable, Equatable {
        public let time: Double
        public let kind: String
        public let task: String?
        public let worker: String?
        public let detail: String
    }

    /// An identity barred from the job, and why.
    public struct QuarantineRow: Sendable, Equatable {
        public let principal: String
        public let reason: String
        public let time: Double
    }

    let db: SQLiteDatabase
    public let path: String
    private var pendingEvents: [Event] = []

    /// The layout this build writes (`PRAGMA user_version`). 0 is the first layout, before
    /// versions were recorded; it is upgraded in place on open.
    public static let schemaVersion: Int64 = 3

    /// Opens (creating if asked) the ledger at `path`.
    public init(path: String, create: Bool = true, readOnly: Bool = false) throws {
        if !create && !FileManager.default.fileExists(atPath: path) {
            throw LedgerError("\(path): no ledger here (not a prune job directory?)")
        }
        self.path = path
        do {
            db = try SQLiteDatabase(path: path, readOnly: readOnly)
            if !readOnly {
                try db.execute("PRAGMA journal_mode=WAL")
                try db.execute("PRAGMA synchronous=FULL")
                try db.execute("""
                    CREATE TABLE IF NOT EXISTS job (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    CREATE TABLE IF NOT EXISTS tasks (
                        id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, phase TEXT NOT NULL, spec BLOB NOT NULL,
                        state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
                        worker TEXT, result_sha256 TEXT, last_error TEXT, seconds REAL, finished_at REAL);
                    CREATE TABLE IF NOT EXISTS workers (
                        id TEXT PRIMARY KEY, name TEXT NOT NULL, host TEXT NOT NULL, joined REAL NOT NULL,
                        last_seen REAL NOT NULL, tasks_done INTEGER NOT NULL DEFAULT 0,
                        busy_seconds REAL NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'active');
                    CREATE TABLE IF NOT EXISTS events (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL,
                        task TEXT, worker TEXT, detail TEXT NOT NULL DEFAULT '');
                    CREATE TABLE IF NOT EXISTS quarantine (principal TEXT PRIMARY KEY, reason TEXT NOT NULL, time REAL NOT NULL);
                    CREATE TABLE IF NOT EXISTS collected (task TEXT PRIMARY KEY);
                    """)
                try upgrade()
            } else {
                try checkVersion()
            }
        } catch let e as SQLiteDatabase.Error {
            throw LedgerError(e.description)
        }
    }

    /// Refuses a ledger written by a newer build (its layout is unknown here).
    private func checkVersion() throws {
        let version = try db.query("PRAGMA user_version").first?.first?.int ?? 0
        guard version <= Ledger.schemaVersion else {
            throw LedgerError("\(path): written by a newer prune (ledger layout \(version), this build reads up to \(Ledger.schemaVersion)); use that version to resume this job")
        }
    }

    /// Brings a ledger of an earlier layout to this one (version 2 added the workers'
    /// principal and refusal count, and the quarantine table; version 3 the collected
    /// table, which replaces the `collected_blocks` watermark of calibration jobs).
    private func upgrade() throws {
        try checkVersion()
        let columns = Set(try db.query("PRAGMA table_info(workers)").compactMap { $0[1].text })
        try db.transaction {
            if !columns.contains("principal") { try db.execute("ALTER TABLE workers ADD COLUMN principal TEXT NOT NULL DEFAULT ''") }
            if !columns.contains("refused") { try db.execute("ALTER TABLE workers ADD COLUMN refused INTEGER NOT NULL DEFAULT 0") }
            if let blocks = try db.query("SELECT value FROM job WHERE key = 'collected_blocks'").first?.first?.text.flatMap(Int.init) {
                for row in try db.query("SELECT id FROM tasks WHERE id LIKE 'calibrate:%'") {
                    guard let id = row[0].text, let b = id.split(separator: ":").dropFirst().first.flatMap({ Int($0) }), b < blocks else { continue }
                    try db.query("INSERT OR IGNORE INTO collected(task) VALUES(?)", [.text(id)])
                }
                try db.query("DELETE FROM job WHERE key = 'collected_blocks'")
            }
            try db.execute("PRAGMA user_version = \(Ledger.schemaVersion)")
        }
    }

    // MARK: job

    public func setJobValue(_ key: String, _ value: String) throws {
        try wrap { try db.query("INSERT INTO job(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [.text(key), .text(value)]) }
    }

    public func jobValue(_ key: String) throws -> String? {
        try wrap { try db.query("SELECT value FROM job WHERE key = ?", [.text(key)]).first?.first?.text }
    }

    public func jobValues() throws -> [String: String] {
        try wrap {
            var out: [String: String] = [:]
            for row in try db.query("SELECT key, value FROM job") { out[row[0].text!] = row[1].text! }
            return out
        }
    }

    /// Empties every table (a ledger whose setup a crash interrupted is set up again).
    public func clear() throws {
        try wrap {
            try db.transaction {
                for table in ["job", "tasks", "workers", "events", "quarantine", "collected"] { try db.execute("DELETE FROM \(table)") }
            }
        }
    }

    // MARK: tasks

    /// Inserts the plan's tasks in one transaction.
    public func insertTasks(_ tasks: [(id: String, phase: String, spec: [UInt8])]) throws {
        try wrap {
            try db.transaction {
                for (i, t) in tasks.enumerated() {
                    try db.query("INSERT INTO tasks(id, seq, phase, spec) VALUES(?, ?, ?, ?)", [.text(t.id), .int(Int64(i)), .text(t.phase), .blob(t.spec)])
                }
            }
        }
    }

    public func tasks() throws -> [TaskRow] {
        try wrap {
            try db.query("SELECT id, seq, phase, spec, state, attempts, worker, result_sha256, last_error, seconds, finished_at FROM tasks ORDER BY seq").map { r in
                TaskRow(id: r[0].text!, sequence: Int(r[1].int!), phase: r[2].text!, spec: r[3].blob ?? [], state: r[4].text!,
                        attempts: Int(r[5].int!), worker: r[6].text, resultSHA256: r[7].text, lastError: r[8].text,
                        seconds: r[9].double, finishedAt: r[10].double)
            }
        }
    }

    /// Records a finished task durably (the caller fsync'd its artifact first), with the
    /// events logged since the last commit. `durable: false` (a task whose outputs are all
    /// volatile, stored without fsync) commits without waiting for the disk (synchronous
    /// NORMAL for this one transaction): a process crash still keeps it (the WAL is in the
    /// OS's hands), the next durable commit syncs it, and a power loss before that can only
    /// lose the row, whose task then reruns, never keep a row whose outputs are gone
    /// unnoticed (a resume verifies every done task's artifacts).
    public func markDone(task: String, worker: String, attempt: Int, resultSHA256: String, seconds: Double, at time: Double,
                         durable: Bool = true) throws {
        try wrap {
            if !durable { try db.execute("PRAGMA synchronous=NORMAL") }
            defer { if !durable { try? db.execute("PRAGMA synchronous=FULL") } }
            try db.transaction {
                try db.query("UPDATE tasks SET state = 'done', attempts = ?, worker = ?, result_sha256 = ?, seconds = ?, finished_at = ? WHERE id = ?",
                             [.int(Int64(attempt)), .text(worker), .text(resultSHA256), .double(seconds), .double(time), .text(task)])
                try db.query("UPDATE workers SET tasks_done = tasks_done + 1, busy_seconds = busy_seconds + ?, last_seen = ? WHERE id = ?",
                             [.double(seconds), .double(time), .text(worker)])
                pendingEvents.append(Event(time: time, kind: "done", task: task, worker: worker, detail: "attempt \(attempt), \(String(format: "%.3f", seconds))s"))
                try writeEvents()
            }
        }
    }

    /// Records a failed attempt (the task goes back to pending).
    public func markAttemptFailed(task: String, attempts: Int, cause: String, at time: Double) throws {
        try wrap {
            try db.transaction {
                try db.query("UPDATE tasks SET state = 'pending', attempts = ?, last_error = ? WHERE id = ?", [.int(Int64(attempts)), .text(cause), .text(task)])
                pendingEvents.append(Event(time: time, kind: "retry", task: task, worker: nil, detail: cause))
                try writeEvents()
            }
        }
    }

    /// Sets a task back to pending (a done task whose artifact is missing or corrupt).
    public func markPending(task: String, cause: String) throws {
        try wrap { try db.query("UPDATE tasks SET state = 'pending', result_sha256 = NULL, last_error = ? WHERE id = ?", [.text(cause), .text(task)]) }
    }

    // MARK: workers

    public func workerJoined(id: String, name: String, host: String, principal: String, at time: Double) throws {
        try wrap {
            try db.query("""
                INSERT INTO workers(id, name, host, principal, joined, last_seen) VALUES(?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen, state = 'active'
                """, [.text(id), .text(name), .text(host), .text(principal), .double(time), .double(time)])
        }
        log(Event(time: time, kind: "worker-joined", task: nil, worker: id, detail: "\(name) on \(host)"))
    }

    public func workerLeft(id: String, reason: String, at time: Double) throws {
        try wrap { try db.query("UPDATE workers SET state = CASE state WHEN 'quarantined' THEN state ELSE 'gone' END, last_seen = ? WHERE id = ?", [.double(time), .text(id)]) }
        log(Event(time: time, kind: "worker-lost", task: nil, worker: id, detail: reason))
    }

    /// A result of this worker was refused.
    public func resultRefused(worker: String, task: String, reason: String, counted: Bool, at time: Double) throws {
        if counted { try wrap { try db.query("UPDATE workers SET refused = refused + 1 WHERE id = ?", [.text(worker)]) } }
        log(Event(time: time, kind: counted ? "refused" : "stale", task: task, worker: worker, detail: reason))
    }

    /// Done tasks whose transient outputs were deleted (their readers were all done).
    public func collectedTasks() throws -> Set<String> {
        try wrap {
            guard try !db.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'collected'").isEmpty else { return [] }
            return Set(try db.query("SELECT task FROM collected").compactMap { $0[0].text })
        }
    }

    /// Records (or, for a task run again, forgets) that a task's transient outputs are gone.
    public func setCollected(_ task: String, _ isCollected: Bool) throws {
        try wrap {
            if isCollected {
                try db.query("INSERT OR IGNORE INTO collected(task) VALUES(?)", [.text(task)])
            } else {
                try db.query("DELETE FROM collected WHERE task = ?", [.text(task)])
            }
        }
    }

    /// Bars an identity from the job (kept across resumes), with the events so far.
    public func quarantine(principal: String, reason: String, at time: Double) throws {
        try wrap {
            try db.transaction {
                try db.query("INSERT INTO quarantine(principal, reason, time) VALUES(?, ?, ?) ON CONFLICT(principal) DO NOTHING",
                             [.text(principal), .text(reason), .double(time)])
                try db.query("UPDATE workers SET state = 'quarantined' WHERE principal = ?", [.text(principal)])
                pendingEvents.append(Event(time: time, kind: "quarantine", task: nil, worker: nil, detail: "\(principal): \(reason)"))
                try writeEvents()
            }
        }
    }

    public func quarantined() throws -> [QuarantineRow] {
        try wrap {
            guard try !db.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'").isEmpty else { return [] }
            return try db.query("SELECT principal, reason, time FROM quarantine ORDER BY time").map { r in
                QuarantineRow(principal: r[0].text!, reason: r[1].text!, time: r[2].double!)
            }
        }
    }

    /// The job ended: workers still active are done.
    public func markWorkersFinished(at time: Double) throws {
        try wrap { try db.query("UPDATE workers SET state = 'finished', last_seen = ? WHERE state = 'active'", [.double(time)]) }
    }

    public func workers() throws -> [WorkerRow] {
        try wrap {
            let columns = Set(try db.query("PRAGMA table_info(workers)").compactMap { $0[1].text })
            // A ledger of the first layout (read-only, not upgraded) has neither column.
            let extra = columns.contains("principal") ? "principal, refused" : "'' AS principal, 0 AS refused"
            return try db.query("SELECT id, name, host, tasks_done, busy_seconds, last_seen, state, \(extra) FROM workers ORDER BY joined").map { r in
                let principal = r[7].text.flatMap { $0.isEmpty ? nil : $0 } ?? "name:\(r[1].text!)"
                return WorkerRow(id: r[0].text!, name: r[1].text!, host: r[2].text!, principal: principal, refused: Int(r[8].int ?? 0),
                                 tasksDone: Int(r[3].int!), busySeconds: r[4].double!, lastSeen: r[5].double!, state: r[6].text!)
            }
        }
    }

    // MARK: events

    /// Queues an event; it is written with the next commit or `flush()`.
    public func log(_ event: Event) {
        pendingEvents.append(event)
    }

    public func flush() throws {
        guard !pendingEvents.isEmpty else { return }
        try wrap { try db.transaction { try writeEvents() } }
    }

    private func writeEvents() throws {
        for e in pendingEvents {
            try db.query("INSERT INTO events(time, kind, task, worker, detail) VALUES(?, ?, ?, ?, ?)",
                         [.double(e.time), .text(e.kind), e.task.map { .text($0) } ?? .null, e.worker.map { .text($0) } ?? .null, .text(e.detail)])
        }
        pendingEvents.removeAll()
    }

    public func events() throws -> [Event] {
        try wrap {
            try db.query("SELECT time, kind, task, worker, detail FROM events ORDER BY seq").map { r in
                Event(time: r[0].double!, kind: r[1].text!, task: r[2].text, worker: r[3].text, detail: r[4].text ?? "")
            }
        }
    }

    @discardableResult
    private func wrap<R>(_ body: () throws -> R) throws -> R {
        do { return try body() } catch let e as SQLiteDatabase.Error { throw LedgerError(e.description) }
    }
}

/// A ledger problem, named by the ledger's path.
public struct LedgerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
