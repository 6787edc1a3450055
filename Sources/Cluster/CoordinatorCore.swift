import Protocol

/// The coordinator's scheduling state as a pure value: tasks, leases, workers and their
/// liveness. Events go in (with the time, in milliseconds, from an injected clock);
/// directives come out for the shell to carry out. No sockets, no clocks, no disk:
/// it is tested by feeding events (after apple/swift-cluster-membership's SWIMInstance).
public struct CoordinatorCore: Sendable {
    /// A task of the job's DAG: it may start once every task in `dependencies` is done.
    public struct TaskDefinition: Sendable, Equatable {
        public let id: String
        public let dependencies: [String]
        public init(id: String, dependencies: [String] = []) {
            self.id = id
            self.dependencies = dependencies
        }
    }

    public enum TaskState: Sendable, Equatable {
        case pending
        case leased(worker: String, attempt: Int, deadline: Int64)
        case done
    }

    struct Task: Sendable {
        let definition: TaskDefinition
        var state: TaskState = .pending
        var attempts = 0
        var lastCause = ""
    }

    struct Worker: Sendable {
        let name: String
        var lastHeard: Int64
        var lastSent: Int64
        var running: Set<String> = []
        var draining = false
    }

    /// What the shell must do.
    public enum Directive: Sendable, Equatable {
        case welcome(worker: String)
        case reject(worker: String, reason: String)
        case assign(worker: String, task: String, attempt: Int)
        case heartbeat(worker: String)
        case ack(worker: String, task: String, attempt: Int, accepted: Bool)
        case cancel(worker: String, task: String, attempt: Int)
        case shutdown(worker: String, reason: String)
        /// A worker stopped answering or left; its tasks went back to the queue.
        case workerLost(worker: String, requeued: [String], reason: String)
        case requeued(task: String, reason: String)
        case jobCompleted
        case jobFailed(reason: String)
    }

    public enum Outcome: Sendable, Equatable {
        case completed
        case failed(String)
    }

    public let settings: Settings
    private var tasks: [String: Task] = [:]
    /// Queue order: the order tasks were defined in, so scheduling is reproducible.
    private let order: [String]
    private var workers: [String: Worker] = [:]
    private var dependents: [String: [String]] = [:]
    private var remaining: Int
    public private(set) var outcome: Outcome?

    /// `done` lists tasks already finished (a resumed job); `attempts` the attempts a
    /// resumed job's tasks already used, so `maxAttempts` counts across restarts.
    public init(tasks definitions: [TaskDefinition], done: Set<String> = [], attempts: [String: Int] = [:], settings: Settings = Settings()) {
        self.settings = settings
        order = definitions.map(\.id)
        var remaining = 0
        for d in definitions {
            var t = Task(definition: d)
            t.attempts = attempts[d.id] ?? 0
            if done.contains(d.id) { t.state = .done } else { remaining += 1 }
            tasks[d.id] = t
            for dep in d.dependencies { dependents[dep, default: []].append(d.id) }
        }
        self.remaining = remaining
        if remaining == 0 { outcome = .completed }
    }

    // MARK: Queries

    public func state(of task: String) -> TaskState? { tasks[task]?.state }
    public func attempts(of task: String) -> Int { tasks[task]?.attempts ?? 0 }
    public var workerIDs: [String] { workers.keys.sorted() }
    public func runningTasks(of worker: String) -> Set<String> { workers[worker]?.running ?? [] }
    public var remainingTasks: Int { remaining }
    public func isKnown(worker: String) -> Bool { workers[worker] != nil }

    /// Whether a result for this task should be made durable: true unless the task is
    /// already done (results are deterministic, so any attempt's bytes are as good).
    public func wantsResult(task: String) -> Bool {
        guard let t = tasks[task] else { return false }
        return t.state != .done
    }

    // MARK: Events

    /// A worker said Hello.
    public mutating func hello(worker: String, name: String, protocolVersion: UInt32, now: Int64) -> [Directive] {
        guard protocolVersion == Settings.protocolVersion else {
            return [.reject(worker: worker, reason: "protocol version \(protocolVersion) is not supported; this coordinator speaks version \(Settings.protocolVersion)")]
        }
        if outcome != nil {
            return [.reject(worker: worker, reason: "the job is over")]
        }
        var out: [Directive] = []
        if workers[worker] != nil {
            // A second Hello on the same connection: forget what it was running.
            out += lose(worker: worker, reason: "said Hello again", now: now)
        }
        workers[worker] = Worker(name: name, lastHeard: now, lastSent: now)
        out.append(.welcome(worker: worker))
        out += schedule(now: now)
        return out
    }

    /// A heartbeat from a worker, naming the tasks it runs: renews their leases.
    public mutating func heartbeat(worker: String, running: [String], now: Int64) -> [Directive] {
        guard var w = workers[worker] else { return [] }
        w.lastHeard = now
        workers[worker] = w
        for id in running {
            if case .leased(let holder, let attempt, _)? = tasks[id]?.state, holder == worker {
                tasks[id]!.state = .leased(worker: worker, attempt: attempt, deadline: now + Int64(settings.leaseMs))
            }
        }
        return []
    }

    /// Any message from a worker shows it is alive.
    public mutating func heard(from worker: String, now: Int64) {
        workers[worker]?.lastHeard = now
    }

    /// The shell made a task's result durable: mark it done, acknowledge, move on.
    public mutating func completed(task id: String, by worker: String, attempt: Int, now: Int64) -> [Directive] {
        heard(from: worker, now: now)
        guard var t = tasks[id] else { return [.ack(worker: worker, task: id, attempt: attempt, accepted: false)] }
        workers[worker]?.running.remove(id)
        guard t.state != .done else {
            return [.ack(worker: worker, task: id, attempt: attempt, accepted: false)] + schedule(now: now)
        }
        var out: [Directive] = [.ack(worker: worker, task: id, attempt: attempt, accepted: true)]
        if case .leased(let holder, let current, _) = t.state, holder != worker {
            // Another worker holds the lease (this one's had expired): stop it.
            workers[holder]?.running.remove(id)
            out.append(.cancel(worker: holder, task: id, attempt: current))
        }
        t.state = .done
        tasks[id] = t
        remaining -= 1
        if remaining == 0 {
            outcome = .completed
            out.append(.jobCompleted)
            return out
        }
        return out + schedule(now: now)
    }

    /// A worker reports a task failed.
    public mutating func failed(task id: String, by worker: String, attempt: Int, cause: String, retryable: Bool, now: Int64) -> [Directive] {
        heard(from: worker, now: now)
        workers[worker]?.running.remove(id)
        guard var t = tasks[id], case .leased(let holder, let current, _) = t.state, holder == worker, current == attempt else {
            return schedule(now: now)
        }
        t.lastCause = cause
        t.state = .pending
        tasks[id] = t
        if !retryable {
            return fail("task \(id) failed: \(cause)")
        }
        if t.attempts >= settings.maxAttempts {
            return fail("task \(id) failed \(t.attempts) times; last cause: \(cause)")
        }
        return [.requeued(task: id, reason: cause)] + schedule(now: now)
    }

    /// A worker said Goodbye (it is stopping).
    public mutating func goodbye(worker: String, reason: String, now: Int64) -> [Directive] {
        guard workers[worker] != nil else { return [] }
        return lose(worker: worker, reason: "left: \(reason)", now: now) + schedule(now: now)
    }

    /// Time passes: expire dead workers and leases, send heartbeats that are due, and
    /// hand out work.
    public mutating func tick(now: Int64) -> [Directive] {
        var out: [Directive] = []
        for id in workers.keys.sorted() {
            guard let w = workers[id] else { continue }
            if now - w.lastHeard > Int64(settings.deadAfterMs) {
                out += lose(worker: id, reason: "missed \(settings.liveness) heartbeats", now: now)
                if outcome != nil { return out }
            }
        }
        for id in order {
            guard case .leased(let holder, let attempt, let deadline)? = tasks[id]?.state, now > deadline else { continue }
            workers[holder]?.running.remove(id)
            out.append(.cancel(worker: holder, task: id, attempt: attempt))
            out += requeue(id, cause: "lease expired on worker \(holder)")
            if outcome != nil { return out }
        }
        for id in workers.keys.sorted() where now - workers[id]!.lastSent >= Int64(settings.heartbeatMs) {
            workers[id]!.lastSent = now
            out.append(.heartbeat(worker: id))
        }
        return out + schedule(now: now)
    }

    /// The shell sent something to a worker (counts as a heartbeat from us).
    public mutating func sent(to worker: String, now: Int64) {
        workers[worker]?.lastSent = now
    }

    // MARK: Internals

    private mutating func fail(_ reason: String) -> [Directive] {
        guard outcome == nil else { return [] }
        outcome = .failed(reason)
        return [.jobFailed(reason: reason)]
    }

    private mutating func lose(worker: String, reason: String, now: Int64) -> [Directive] {
        guard let w = workers.removeValue(forKey: worker) else { return [] }
        var requeued: [String] = []
        var out: [Directive] = []
        for id in order where w.running.contains(id) {
            guard case .leased(let holder, _, _)? = tasks[id]?.state, holder == worker else { continue }
            requeued.append(id)
            out += requeue(id, cause: "worker \(w.name) \(reason)", announce: false)
        }
        return [.workerLost(worker: worker, requeued: requeued, reason: reason)] + out
    }

    private mutating func requeue(_ id: String, cause: String, announce: Bool = true) -> [Directive] {
        guard var t = tasks[id] else { return [] }
        t.state = .pending
        t.lastCause = cause
        tasks[id] = t
        if t.attempts >= settings.maxAttempts {
            return fail("task \(id) failed \(t.attempts) times; last cause: \(cause)")
        }
        return announce ? [.requeued(task: id, reason: cause)] : []
    }

    private func isReady(_ t: Task) -> Bool {
        t.state == .pending && t.definition.dependencies.allSatisfy { tasks[$0]?.state == .done }
    }

    /// Gives each idle worker the first ready task in queue order.
    private mutating func schedule(now: Int64) -> [Directive] {
        guard outcome == nil else { return [] }
        var out: [Directive] = []
        var idle = workers.keys.filter { workers[$0]!.running.isEmpty && !workers[$0]!.draining }.sorted()
        guard !idle.isEmpty else { return [] }
        for id in order {
            guard !idle.isEmpty else { break }
            guard let t = tasks[id], isReady(t) else { continue }
            let worker = idle.removeFirst()
            let attempt = t.attempts + 1
            tasks[id]!.attempts = attempt
            tasks[id]!.state = .leased(worker: worker, attempt: attempt, deadline: now + Int64(settings.leaseMs))
            workers[worker]!.running.insert(id)
            workers[worker]!.lastSent = now
            out.append(.assign(worker: worker, task: id, attempt: attempt))
        }
        return out
    }
}
