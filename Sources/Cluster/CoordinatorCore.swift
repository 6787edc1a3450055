import Protocol

/// The coordinator's scheduling state as a pure value: tasks, leases, workers, what each
/// worker identity has done wrong, and the verification of results. Events go in (with
/// the time, in milliseconds, from an injected clock); directives come out for the shell
/// to carry out, in order. No sockets, no clocks, no disk: it is tested by feeding events
/// (after apple/swift-cluster-membership's SWIMInstance).
///
/// Trust: a worker is untrusted input even with an allowed key. A result is taken only
/// for the (task, attempt) leased to that very connection; anything else is refused and
/// counted against the worker's identity (its *principal*: the CURVE public key, or the
/// worker's name on connections without CURVE). An identity refused `maxRefusedResults`
/// times, or whose attempts fail or vanish `maxWorkerFailures` times, is quarantined:
/// it gets no more work, its running attempts are requeued without charging the tasks,
/// and every result it produced is reopened. Tasks marked `verify` are run twice, by two
/// identities, and are done only when the digests agree; when they do not, the
/// coordinator recomputes the task itself and quarantines whoever disagrees with it.
public struct CoordinatorCore: Sendable {
    /// A task of the job's DAG: it may start once every task in `dependencies` is done.
    public struct TaskDefinition: Sendable, Equatable {
        public let id: String
        public let dependencies: [String]
        /// Run on two worker identities (or checked by the coordinator) before it is done.
        public let verify: Bool
        /// Tasks with the same key are best run by one worker (it keeps state they share);
        /// the scheduler prefers that worker but never leaves a worker idle for it.
        public let affinity: String?
        /// How many workers idle when it is leased may help it (a training span's group).
        public let helpers: Int
        public init(id: String, dependencies: [String] = [], verify: Bool = false, affinity: String? = nil, helpers: Int = 0) {
            self.id = id
            self.dependencies = dependencies
            self.verify = verify
            self.affinity = affinity
            self.helpers = helpers
        }
    }

    public enum TaskState: Sendable, Equatable {
        case pending
        case leased(worker: String, attempt: Int, deadline: Int64)
        /// The coordinator is computing the task itself to settle a verification.
        case arbitrating
        case done
    }

    /// A task already done when the coordinator starts (a resumed job).
    public struct DoneTask: Sendable, Equatable {
        public let digest: String
        /// The identity whose result was accepted ("" when unknown).
        public let producer: String
        public init(digest: String, producer: String) {
            self.digest = digest
            self.producer = producer
        }
    }

    /// What one identity has done wrong in this job.
    public struct Conduct: Sendable, Equatable {
        /// Results refused: not leased to it, or unusable.
        public var refused = 0
        /// Attempts that failed or vanished (missed heartbeats, expired leases).
        public var failures = 0
        /// Why it was quarantined (nil while it is trusted).
        public var quarantined: String?
        public init(refused: Int = 0, failures: Int = 0, quarantined: String? = nil) {
            self.refused = refused
            self.failures = failures
            self.quarantined = quarantined
        }
    }

    /// A stored result not yet accepted, or the result that was.
    struct Run: Sendable, Equatable {
        let worker: String
        let principal: String
        let attempt: Int
        let digest: String
        let seconds: Double
    }

    struct Task: Sendable {
        let definition: TaskDefinition
        var state: TaskState = .pending
        /// Attempt numbers handed out so far (numbers are never reused).
        var attempts = 0
        /// Failed attempts recorded before this coordinator started.
        var priorFailures = 0
        /// Identities whose attempts failed in this run (charged unless quarantined).
        var failures: [String] = []
        /// Identities that reported the task cannot be done (bad input).
        var refusedAsBadInput: Set<String> = []
        /// The accepted result of a done task.
        var accepted: Run?
        /// The accepted digest before the task was reopened: a different new result means
        /// the tasks that consumed it must be redone.
        var previousDigest: String?
        /// The first run of a verified task, waiting for a second identity's.
        var candidate: Run?
        /// The second run, when it disagreed with the first.
        var disputed: Run?
    }

    struct Worker: Sendable {
        let name: String
        let principal: String
        var lastHeard: Int64
        var lastSent: Int64
        var running: Set<String> = []
        /// Every attempt ever leased to this connection: a result for one of these that is
        /// no longer leased is stale (its lease was revoked), not forged.
        var history: Set<String> = []
        /// The affinity keys of the tasks leased to this connection.
        var affinities: Set<String> = []
        /// The group this connection helps, while its leader's attempt holds the lease.
        var helping: HelpRole?
        /// The OpenBLAS kernel it computes with (its Hello; "" when it did not say): only
        /// workers with the leader's kernel help it, since a share must equal the leader's
        /// own computation to the bit.
        var kernel = ""
    }

    /// A helper's place in a leased task's group (slot 0 is the leader).
    struct HelpRole: Sendable, Equatable {
        let task: String
        let attempt: Int
        let slot: Int
    }

    /// What the shell must do.
    public enum Directive: Sendable, Equatable {
        case welcome(worker: String)
        case reject(worker: String, reason: String)
        case assign(worker: String, task: String, attempt: Int)
        case heartbeat(worker: String)
        /// A worker idle when `task` was leased helps that attempt (a Help) as slot
        /// `slot` of `slots`; the leader's Assign carries `slots` (`slots(of:attempt:)`).
        case help(worker: String, task: String, attempt: Int, slot: Int, slots: Int)
        /// Tell a member of the group of `task`'s attempt that slot `slot`'s worker is gone.
        case peerLeft(worker: String, task: String, attempt: Int, slot: Int)
        /// A leader found a helper's share wrong: that identity helps the leader's no more.
        case helpDistrusted(principal: String, by: String, task: String)
        case ack(worker: String, task: String, attempt: Int, accepted: Bool)
        case cancel(worker: String, task: String, attempt: Int)
        case shutdown(worker: String, reason: String)
        /// A worker stopped answering or left; its tasks went back to the queue.
        case workerLost(worker: String, requeued: [String], reason: String)
        case requeued(task: String, reason: String)
        /// Make this stored result the task's (ledger committed) before the next directive,
        /// which acknowledges it. `worker` is "coordinator" for a result computed here.
        case commit(task: String, worker: String, attempt: Int, digest: String, seconds: Double)
        /// A result was refused; `counted` when it counts against the worker's identity.
        case refused(worker: String, task: String, attempt: Int, reason: String, counted: Bool)
        /// Two runs of a verified task were compared (for the log).
        case verified(task: String, detail: String)
        /// The coordinator must compute the task itself and report `recomputed`.
        case recompute(task: String)
        /// An identity gets no more work in this job.
        case quarantined(principal: String, reason: String)
        /// A done task is pending again: its result is suspect or its output is gone.
        case reopened(task: String, reason: String)
        case jobCompleted
        case jobFailed(reason: String)
    }

    public enum Outcome: Sendable, Equatable {
        case completed
        case failed(String)
    }

    enum Status: UInt8, Sendable { case pending, leased, arbitrating, done }

    /// Whether a result that arrived may be validated and stored.
    public enum ResultAdmission: Sendable, Equatable {
        /// The attempt is leased to this worker: validate, store, then call
        /// `resultStored` or `resultInvalid`.
        case store
        /// Refused; carry out these directives.
        case refuse([Directive])
    }

    /// The identity of the coordinator's own results.
    public static let coordinatorPrincipal = "coordinator"

    public let settings: Settings
    private var tasks: [String: Task] = [:]
    /// Queue order: the order tasks were defined in, so scheduling is reproducible.
    private let order: [String]
    /// The scheduler's view, by queue position: each task's state without its payload,
    /// and its dependencies' positions. Scanning these copies nothing (a scan of `tasks`
    /// would copy each task's record), and no task before `lowestPending` is pending.
    private var status: [Status]
    private let position: [String: Int]
    private let dependencyPositions: [[Int]]
    private var lowestPending = 0
    private var workers: [String: Worker] = [:]
    private var dependents: [String: [String]] = [:]
    private var conduct: [String: Conduct] = [:]
    private var remaining: Int
    /// Verified tasks waiting for a second run (the scheduler looks for them even when
    /// no worker is idle, to hand them to the coordinator when no other identity is left).
    private var waitingForSecondRun = 0
    /// Group sizes (leader + helpers) of the attempts that got helpers, by `key`.
    private var groupSlots: [String: Int] = [:]
    /// A leader's identity and a helper's whose share that leader found wrong: the helper
    /// helps that identity no more. Only the pair: one leader's word bars no one from
    /// helping others (a lying leader could otherwise bar every honest helper), and a
    /// lying helper is caught by each leader in turn.
    private struct Distrust: Hashable {
        let leader: String
        let helper: String
    }
    private var distrusted: Set<Distrust> = []
    public private(set) var outcome: Outcome?

    /// `done` lists tasks already finished (a resumed job) with their accepted results;
    /// `attempts` the attempts a resumed job's tasks already used, so `maxAttempts`
    /// counts across restarts; `quarantined` the identities barred earlier (principal →
    /// reason).
    public init(tasks definitions: [TaskDefinition], done: [String: DoneTask] = [:], attempts: [String: Int] = [:],
                quarantined: [String: String] = [:], settings: Settings = Settings()) {
        self.settings = settings
        order = definitions.map(\.id)
        let position = Dictionary(definitions.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { a, _ in a })
        self.position = position
        dependencyPositions = definitions.map { $0.dependencies.compactMap { position[$0] } }
        status = definitions.map { done[$0.id] != nil ? .done : .pending }
        var remaining = 0
        for d in definitions {
            var t = Task(definition: d)
            t.attempts = attempts[d.id] ?? 0
            t.priorFailures = t.attempts
            if let record = done[d.id] {
                t.state = .done
                t.accepted = Run(worker: "", principal: record.producer, attempt: t.attempts, digest: record.digest, seconds: 0)
            } else {
                remaining += 1
            }
            tasks[d.id] = t
            for dep in d.dependencies { dependents[dep, default: []].append(d.id) }
        }
        for (principal, reason) in quarantined { conduct[principal] = Conduct(quarantined: reason) }
        self.remaining = remaining
        if remaining == 0 { outcome = .completed }
    }

    /// Tasks done before a resume, without recorded digests (tests, benchmarks).
    public init(tasks definitions: [TaskDefinition], done: Set<String>, attempts: [String: Int] = [:], settings: Settings = Settings()) {
        self.init(tasks: definitions, done: Dictionary(uniqueKeysWithValues: done.map { ($0, DoneTask(digest: "", producer: "")) }),
                  attempts: attempts, settings: settings)
    }

    // MARK: Queries

    public func state(of task: String) -> TaskState? { tasks[task]?.state }
    public func attempts(of task: String) -> Int { tasks[task]?.attempts ?? 0 }
    public var workerIDs: [String] { workers.keys.sorted() }
    public func runningTasks(of worker: String) -> Set<String> { workers[worker]?.running ?? [] }
    public var remainingTasks: Int { remaining }
    public func isKnown(worker: String) -> Bool { workers[worker] != nil }
    public func principal(of worker: String) -> String? { workers[worker]?.principal }
    public func conduct(of principal: String) -> Conduct { conduct[principal] ?? Conduct() }
    /// The identity whose result a done task holds.
    public func producer(of task: String) -> String? { tasks[task]?.accepted?.principal }
    /// The size of an attempt's group: 1 + the helpers it got (1: alone).
    public func slots(of task: String, attempt: Int) -> Int { groupSlots[Self.key(task, attempt)] ?? 1 }
    /// The workers helping a task now, by slot.
    public func helpers(of task: String) -> [String] {
        workers.keys.sorted().filter { workers[$0]!.helping.map { $0.task == task && isLive($0) } ?? false }
            .sorted { workers[$0]!.helping!.slot < workers[$1]!.helping!.slot }
    }

    // MARK: Events

    /// A worker said Hello. `principal` is its authenticated identity (the CURVE key);
    /// nil on connections without CURVE, where the name stands for it.
    public mutating func hello(worker: String, name: String, principal: String? = nil, protocolVersion: UInt32, kernel: String = "", now: Int64) -> [Directive] {
        guard protocolVersion == Settings.protocolVersion else {
            return [.reject(worker: worker, reason: "protocol version \(protocolVersion) is not supported; this coordinator speaks version \(Settings.protocolVersion)")]
        }
        if outcome != nil {
            return [.reject(worker: worker, reason: "the job is over")]
        }
        let principal = principal ?? "name:\(name)"
        if let reason = conduct[principal]?.quarantined {
            return [.reject(worker: worker, reason: "quarantined: \(reason)")]
        }
        var out: [Directive] = []
        if workers[worker] != nil {
            // A second Hello on the same connection: forget what it was running.
            out += lose(worker: worker, reason: "said Hello again", now: now)
        }
        workers[worker] = Worker(name: name, principal: principal, lastHeard: now, lastSent: now, kernel: kernel)
        out.append(.welcome(worker: worker))
        return out + schedule(now: now)
    }

    /// A heartbeat from a worker, naming the tasks it runs: renews their leases.
    public mutating func heartbeat(worker: String, running: [String], now: Int64) -> [Directive] {
        guard var w = workers[worker] else { return [] }
        w.lastHeard = now
        workers[worker] = w
        for id in running {
            // A lease held while its result is read (`holdLease`) stays held.
            if case .leased(let holder, let attempt, let deadline)? = tasks[id]?.state, holder == worker, deadline != CoordinatorCore.heldWhileRead {
                setState(id, .leased(worker: worker, attempt: attempt, deadline: now + Int64(settings.leaseMs)))
            }
        }
        return []
    }

    /// A Peer from a worker in the group of `task`'s attempt `attempt`: the sender's slot
    /// and the other members to relay it to, or nil when the sender is no member (its
    /// group is over, or it never was one): the message is dropped.
    public mutating func peerRoute(from worker: String, task: String, attempt: Int, now: Int64) -> (slot: Int, to: [String])? {
        heard(from: worker, now: now)
        let group = members(task, attempt)
        guard let me = group.first(where: { $0.worker == worker }) else { return nil }
        return (me.slot, group.filter { $0.worker != worker }.map(\.worker))
    }

    /// The workers of the group of `task`'s attempt by slot (the leader first) while its
    /// lease holds; nil for a slot no worker holds (any more).
    public func groupMembers(_ task: String, attempt: Int) -> [String?] {
        let group = members(task, attempt)
        return (0..<slots(of: task, attempt: attempt)).map { s in group.first { $0.slot == s }?.worker }
    }

    /// The leader of `task`'s attempt found slot `slot`'s share wrong: it starts its span
    /// over alone, so every helper stops, and the helper's identity helps the leader's no
    /// more.
    public mutating func distrust(from worker: String, task: String, attempt: Int, slot: Int, now: Int64) -> [Directive] {
        heard(from: worker, now: now)
        let group = members(task, attempt)
        guard group.first?.worker == worker, let leader = workers[worker]?.principal,
              let accused = group.first(where: { $0.slot == slot && $0.slot > 0 }),
              let principal = workers[accused.worker]?.principal else { return [] }
        distrusted.insert(Distrust(leader: leader, helper: principal))
        var out: [Directive] = [.helpDistrusted(principal: principal, by: leader, task: task)]
        for member in group.dropFirst() {
            workers[member.worker]!.helping = nil
            out.append(.peerLeft(worker: member.worker, task: task, attempt: attempt, slot: 0))
        }
        return out + schedule(now: now)
    }

    /// Any message from a worker shows it is alive.
    public mutating func heard(from worker: String, now: Int64) {
        workers[worker]?.lastHeard = now
    }

    /// A Result arrived. Only the attempt leased to this very connection may be stored.
    public mutating func resultArrived(task id: String, by worker: String, attempt: Int, now: Int64) -> ResultAdmission {
        heard(from: worker, now: now)
        guard let w = workers[worker] else { return .refuse([]) }
        guard tasks[id] != nil else {
            return .refuse(refuse(worker, task: id, attempt: attempt, reason: "there is no such task", counted: true, now: now))
        }
        if case .leased(let holder, let current, _) = tasks[id]!.state, holder == worker, current == attempt { return .store }
        if w.history.contains(Self.key(id, attempt)) {
            return .refuse(refuse(worker, task: id, attempt: attempt, reason: "its lease was revoked", counted: false, now: now))
        }
        return .refuse(refuse(worker, task: id, attempt: attempt, reason: "attempt \(attempt) of \(id) was not leased to this worker", counted: true, now: now))
    }

    /// The lease deadline of an attempt whose result is being read back off the loop.
    static let heldWhileRead = Int64.max

    /// A result admitted by `resultArrived` is read back and verified off the loop (a
    /// large one): its lease holds until `resultStored`, `resultInvalid` or `resultStale`
    /// (the worker stopped naming the task in its heartbeats when it sent the result), so
    /// a slow read neither expires it nor counts against the worker.
    public mutating func holdLease(task id: String, by worker: String, attempt: Int) {
        guard case .leased(let holder, let current, _)? = tasks[id]?.state, holder == worker, current == attempt else { return }
        setState(id, .leased(worker: worker, attempt: attempt, deadline: CoordinatorCore.heldWhileRead))
    }

    /// Whether this attempt still holds its task's lease (and its worker is connected):
    /// a result read off the loop is checked and stored only then.
    public func holdsLease(task id: String, by worker: String, attempt: Int) -> Bool {
        guard workers[worker] != nil, case .leased(let holder, let current, _)? = tasks[id]?.state else { return false }
        return holder == worker && current == attempt
    }

    /// A result read off the loop whose lease ended meanwhile (its worker was lost): stale,
    /// refused without counting against the worker.
    public mutating func resultStale(task id: String, by worker: String, attempt: Int, now: Int64) -> [Directive] {
        guard workers[worker] != nil else { return [] }
        return refuse(worker, task: id, attempt: attempt, reason: "its lease ended while its result was read", counted: false, now: now)
    }

    /// The leased attempt's result was valid and is stored under `digest`: accept it, or
    /// keep it for comparison with a second run.
    public mutating func resultStored(task id: String, by worker: String, attempt: Int, digest: String, seconds: Double, now: Int64) -> [Directive] {
        guard case .leased(let holder, let current, _)? = tasks[id]?.state, holder == worker, current == attempt,
              let principal = workers[worker]?.principal else {
            return [.ack(worker: worker, task: id, attempt: attempt, accepted: false)]
        }
        workers[worker]!.running.remove(id)
        let run = Run(worker: worker, principal: principal, attempt: attempt, digest: digest, seconds: seconds)
        let ack = Directive.ack(worker: worker, task: id, attempt: attempt, accepted: true)
        guard tasks[id]!.definition.verify else {
            var out = accept(id, run)
            out.insert(ack, at: 1)
            return out + schedule(now: now)
        }
        guard let first = tasks[id]!.candidate else {
            // The first run: kept until an identity other than this one repeats it.
            tasks[id]!.candidate = run
            setState(id, .pending)
            waitingForSecondRun += 1
            return [ack] + schedule(now: now)
        }
        waitingForSecondRun -= 1
        if first.digest == digest {
            var out = accept(id, first)
            out.insert(ack, at: 1)
            out.insert(.verified(task: id, detail: "\(first.principal) and \(principal) agree"), at: 2)
            return out + schedule(now: now)
        }
        tasks[id]!.disputed = run
        setState(id, .arbitrating)
        return [ack, .verified(task: id, detail: "\(first.principal) and \(principal) disagree; the coordinator computes it"),
                .recompute(task: id)] + schedule(now: now)
    }

    /// The leased attempt's result was unusable (wrong payloads, sizes, missing stored
    /// artifact): a failed attempt, and a refusal counted against the worker.
    public mutating func resultInvalid(task id: String, by worker: String, attempt: Int, cause: String, now: Int64) -> [Directive] {
        guard case .leased(let holder, let current, _)? = tasks[id]?.state, holder == worker, current == attempt,
              let principal = workers[worker]?.principal else {
            return refuse(worker, task: id, attempt: attempt, reason: cause, counted: true, now: now)
        }
        workers[worker]!.running.remove(id)
        setState(id, .pending)
        tasks[id]!.failures.append(principal)
        var out = refuse(worker, task: id, attempt: attempt, reason: cause, counted: true, now: now, schedule: false)
        guard outcome == nil else { return out }
        out += chargeOrFail(id, cause: cause)
        guard outcome == nil else { return out }
        return out + [.requeued(task: id, reason: cause)] + schedule(now: now)
    }

    /// The coordinator computed a task it was asked to (`recompute`): the runs that
    /// disagree with it came from identities that are quarantined.
    public mutating func recomputed(task id: String, digest: String, now: Int64) -> [Directive] {
        guard var t = tasks[id], t.state == .arbitrating else { return [] }  // reopened meanwhile
        let runs = [t.candidate, t.disputed].compactMap { $0 }
        t.candidate = nil
        t.disputed = nil
        tasks[id] = t
        var out: [Directive] = []
        for run in runs where run.digest != digest {
            out += quarantine(run.principal, reason: "its result of \(id) differs from the coordinator's own computation", now: now, schedule: false)
        }
        let agreeing = runs.first { $0.digest == digest && conduct[$0.principal]?.quarantined == nil }
        let accepted = agreeing ?? Run(worker: Self.coordinatorPrincipal, principal: Self.coordinatorPrincipal, attempt: t.attempts,
                                        digest: digest, seconds: 0)
        out.append(.verified(task: id, detail: "the coordinator's result agrees with " + (agreeing.map { $0.principal } ?? "no worker")))
        guard outcome == nil, tasks[id]!.state == .arbitrating else { return out }
        return out + accept(id, accepted) + schedule(now: now)
    }

    /// The coordinator could not compute a task it had to check: the job cannot be trusted
    /// to finish, so it fails naming the task.
    public mutating func recomputeFailed(task id: String, cause: String) -> [Directive] {
        fail("the coordinator could not compute \(id) to verify it: \(cause)")
    }

    /// A worker reports a task failed. A failure it calls permanent (bad input) fails the
    /// job only when a second identity confirms it, or when no other identity is there to
    /// ask: one worker must not be able to end a job by saying so.
    public mutating func failed(task id: String, by worker: String, attempt: Int, cause: String, retryable: Bool, now: Int64) -> [Directive] {
        heard(from: worker, now: now)
        guard case .leased(let holder, let current, _)? = tasks[id]?.state, holder == worker, current == attempt,
              let principal = workers[worker]?.principal else { return [] }
        let told = groupEnds(id, attempt)
        workers[worker]!.running.remove(id)
        setState(id, .pending)
        return told + failedNow(id, principal: principal, cause: cause, retryable: retryable, now: now)
    }

    private mutating func failedNow(_ id: String, principal: String, cause: String, retryable: Bool, now: Int64) -> [Directive] {
        if !retryable {
            tasks[id]!.refusedAsBadInput.insert(principal)
            let others = Set(workers.values.map(\.principal)).subtracting(tasks[id]!.refusedAsBadInput)
            if tasks[id]!.refusedAsBadInput.count >= 2 || others.isEmpty {
                return fail("task \(id) failed: \(cause)")
            }
            tasks[id]!.failures.append(principal)
            return [.requeued(task: id, reason: cause)] + schedule(now: now)
        }
        tasks[id]!.failures.append(principal)
        var out = countFailure(principal, cause: cause, now: now)
        guard outcome == nil else { return out }
        out += chargeOrFail(id, cause: cause)
        guard outcome == nil else { return out }
        return out + [.requeued(task: id, reason: cause)] + schedule(now: now)
    }

    /// Building a task's work found the output of `dependency` gone (deleted, or
    /// collected): that task runs again first, and this attempt is released uncharged.
    public mutating func inputMissing(task id: String, by worker: String, attempt: Int, dependency: String, now: Int64) -> [Directive] {
        guard case .leased(let holder, let current, _)? = tasks[id]?.state, holder == worker, current == attempt,
              tasks[id]!.definition.dependencies.contains(dependency), tasks[dependency]?.state == .done else {
            return fail("task \(id) cannot start: the output of \(dependency) is missing")
        }
        workers[worker]?.running.remove(id)
        setState(id, .pending)
        return reset(dependency, reason: "its output is missing (needed by \(id))") + schedule(now: now)
    }

    /// The job cannot go on (the coordinator cannot build a task's work).
    public mutating func abort(_ reason: String) -> [Directive] {
        fail(reason)
    }

    /// A worker said Goodbye (it is stopping), or its process was seen to exit.
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
                let reason = "missed \(settings.liveness) heartbeats"
                out += lose(worker: id, reason: reason, now: now)
                if outcome == nil { out += countFailure(w.principal, cause: "vanished (\(reason))", now: now) }
                if outcome != nil { return out }
            }
        }
        for id in order {
            guard case .leased(let holder, let attempt, let deadline)? = tasks[id]?.state, now > deadline else { continue }
            let principal = workers[holder]?.principal
            out += groupEnds(id, attempt)
            workers[holder]?.running.remove(id)
            setState(id, .pending)
            let cause = "lease expired on worker \(workers[holder]?.name ?? holder)"
            out.append(.cancel(worker: holder, task: id, attempt: attempt))
            if let principal {
                tasks[id]!.failures.append(principal)
                out += countFailure(principal, cause: "vanished (\(cause))", now: now)
            }
            if outcome == nil { out += chargeOrFail(id, cause: cause) }
            if outcome != nil { return out }
            out.append(.requeued(task: id, reason: cause))
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

    /// The coordinator is stopping (job over, or a signal): tell every worker.
    public func shutdownAll(reason: String) -> [Directive] {
        workers.keys.sorted().map { .shutdown(worker: $0, reason: reason) }
    }

    // MARK: Internals

    /// An attempt's key in per-attempt tables.
    static func key(_ task: String, _ attempt: Int) -> String { "\(task)#\(attempt)" }

    private mutating func fail(_ reason: String) -> [Directive] {
        guard outcome == nil else { return [] }
        outcome = .failed(reason)
        return [.jobFailed(reason: reason)]
    }

    /// Failed attempts charged to a task: those before this coordinator started, and
    /// those of identities not quarantined (a liar's failures are not the task's).
    private func charged(_ t: Task) -> Int {
        t.priorFailures + t.failures.filter { conduct[$0]?.quarantined == nil }.count
    }

    private mutating func chargeOrFail(_ id: String, cause: String) -> [Directive] {
        let n = charged(tasks[id]!)
        return n >= settings.maxAttempts ? fail("task \(id) failed \(n) times; last cause: \(cause)") : []
    }

    /// Makes a run the task's result: done, committed, and its consumers redone when the
    /// result differs from the one they used.
    private mutating func accept(_ id: String, _ run: Run) -> [Directive] {
        var t = tasks[id]!
        t.state = .done
        t.accepted = run
        t.candidate = nil
        t.disputed = nil
        let previous = t.previousDigest
        t.previousDigest = nil
        tasks[id] = t
        status[position[id]!] = .done
        remaining -= 1
        var out: [Directive] = [.commit(task: id, worker: run.worker, attempt: run.attempt, digest: run.digest, seconds: run.seconds)]
        if let previous, previous != run.digest {
            for dependent in dependents[id] ?? [] { out += reset(dependent, reason: "its input \(id) changed") }
        }
        if remaining == 0 {
            outcome = .completed
            out.append(.jobCompleted)
        }
        return out
    }

    /// Puts a task back to pending whatever it was doing, without charging it: a done
    /// task's result is suspect (kept to compare with its next one), a running attempt is
    /// cancelled, a verification in progress starts over.
    private mutating func reset(_ id: String, reason: String) -> [Directive] {
        guard var t = tasks[id] else { return [] }
        var out: [Directive] = []
        switch t.state {
        case .done:
            t.previousDigest = t.accepted?.digest
            t.accepted = nil
            remaining += 1
            out.append(.reopened(task: id, reason: reason))
        case .leased(let holder, let attempt, _):
            workers[holder]?.running.remove(id)
            out.append(.cancel(worker: holder, task: id, attempt: attempt))
            out.append(.requeued(task: id, reason: reason))
        case .arbitrating:
            out.append(.requeued(task: id, reason: reason))
        case .pending:
            break
        }
        if t.candidate != nil, t.state != .arbitrating { waitingForSecondRun -= 1 }
        t.candidate = nil
        t.disputed = nil
        t.state = .pending
        tasks[id] = t
        status[position[id]!] = .pending
        lowestPending = min(lowestPending, position[id]!)
        return out
    }

    /// A refused result: logged, acknowledged as refused, and (when `counted`) a strike
    /// against the worker's identity.
    private mutating func refuse(_ worker: String, task: String, attempt: Int, reason: String, counted: Bool, now: Int64,
                                 schedule reschedule: Bool = true) -> [Directive] {
        var out: [Directive] = [.refused(worker: worker, task: task, attempt: attempt, reason: reason, counted: counted),
                                .ack(worker: worker, task: task, attempt: attempt, accepted: false)]
        guard counted, let principal = workers[worker]?.principal else { return out }
        conduct[principal, default: Conduct()].refused += 1
        let n = conduct[principal]!.refused
        if n >= settings.maxRefusedResults {
            out += quarantine(principal, reason: "\(n) results refused (last: \(reason))", now: now, schedule: reschedule)
        }
        return out
    }

    /// An attempt of this identity failed or vanished.
    private mutating func countFailure(_ principal: String, cause: String, now: Int64) -> [Directive] {
        guard conduct[principal]?.quarantined == nil else { return [] }
        conduct[principal, default: Conduct()].failures += 1
        let n = conduct[principal]!.failures
        guard n >= settings.maxWorkerFailures else { return [] }
        return quarantine(principal, reason: "\(n) attempts failed or vanished (last: \(cause))", now: now, schedule: false)
    }

    /// Bars an identity: its connections are rejected (their attempts requeued, uncharged),
    /// its first runs of verified tasks dropped, and every result it produced reopened.
    private mutating func quarantine(_ principal: String, reason: String, now: Int64, schedule reschedule: Bool) -> [Directive] {
        guard conduct[principal]?.quarantined == nil else { return [] }
        conduct[principal, default: Conduct()].quarantined = reason
        var out: [Directive] = [.quarantined(principal: principal, reason: reason)]
        for id in workers.keys.sorted() where workers[id]!.principal == principal {
            out.append(.reject(worker: id, reason: "quarantined: \(reason)"))
            out += lose(worker: id, reason: "quarantined", now: now)
        }
        for id in order {
            guard let t = tasks[id] else { continue }
            if t.state == .done, t.accepted?.principal == principal {
                out += reset(id, reason: "produced by quarantined \(principal)")
            } else if t.candidate?.principal == principal, t.state != .arbitrating {
                // Its first run is worthless: the next run counts as the first.
                tasks[id]!.candidate = nil
                waitingForSecondRun -= 1
            }
        }
        return reschedule ? out + schedule(now: now) : out
    }

    private mutating func lose(worker: String, reason: String, now: Int64) -> [Directive] {
        guard let w = workers[worker] else { return [] }
        // Its groups hear of it first: a leader's helpers stop, a helper's leader computes
        // its shards itself.
        var told: [Directive] = []
        if let role = w.helping, isLive(role) {
            told += members(role.task, role.attempt).filter { $0.worker != worker }
                .map { .peerLeft(worker: $0.worker, task: role.task, attempt: role.attempt, slot: role.slot) }
        }
        for id in w.running.sorted() {
            guard case .leased(_, let attempt, _)? = tasks[id]?.state else { continue }
            told += groupEnds(id, attempt)
        }
        workers[worker] = nil
        var requeued: [String] = []
        var out: [Directive] = []
        let quarantined = conduct[w.principal]?.quarantined != nil
        for id in order where w.running.contains(id) {
            guard case .leased(let holder, _, let deadline)? = tasks[id]?.state, holder == worker else { continue }
            requeued.append(id)
            setState(id, .pending)
            // A task whose result arrived and was being read is not the worker's failure.
            if !quarantined, deadline != CoordinatorCore.heldWhileRead {
                tasks[id]!.failures.append(w.principal)
                out += chargeOrFail(id, cause: "worker \(w.name) \(reason)")
            }
        }
        return told + [.workerLost(worker: worker, requeued: requeued, reason: reason)] + out
    }

    /// The helpers of `task`'s attempt hear that its leader left (its lease is ending).
    private func groupEnds(_ task: String, _ attempt: Int) -> [Directive] {
        members(task, attempt).dropFirst().map { .peerLeft(worker: $0.worker, task: task, attempt: attempt, slot: 0) }
    }

    /// Whether a help role's leader still holds that attempt's lease.
    private func isLive(_ role: HelpRole) -> Bool {
        if case .leased(_, let attempt, _)? = tasks[role.task]?.state { return attempt == role.attempt }
        return false
    }

    /// A worker is idle when it runs nothing and helps no live group.
    private func isIdle(_ w: Worker) -> Bool {
        w.running.isEmpty && !(w.helping.map(isLive) ?? false)
    }

    /// The members of the group of `task`'s attempt while its lease holds: the leader
    /// (slot 0), then its helpers by slot.
    private func members(_ task: String, _ attempt: Int) -> [(worker: String, slot: Int)] {
        guard case .leased(let leader, let current, _)? = tasks[task]?.state, current == attempt else { return [] }
        let helping = workers.keys.sorted().compactMap { id -> (worker: String, slot: Int)? in
            guard let role = workers[id]!.helping, role.task == task, role.attempt == attempt else { return nil }
            return (id, role.slot)
        }
        return [(leader, 0)] + helping.sorted { $0.slot < $1.slot }
    }

    /// Workers still idle after a pass of `schedule` help the attempts it leased that take
    /// helpers (in queue order), as many as each takes: those with the leader's OpenBLAS
    /// kernel whose identity that leader's did not distrust. A verified task gets none:
    /// its two runs must each be one identity's work, or a helper could make them agree.
    private mutating func recruitHelpers(for leased: [(task: String, attempt: Int)], idle: inout [String]) -> [Directive] {
        var out: [Directive] = []
        for (task, attempt) in leased {
            guard !tasks[task]!.definition.verify, case .leased(let leaderID, _, _) = tasks[task]!.state, let leader = workers[leaderID] else { continue }
            let wanted = tasks[task]!.definition.helpers
            let chosen = Array(idle.filter { id in
                let w = workers[id]!
                return w.kernel == leader.kernel && !distrusted.contains(Distrust(leader: leader.principal, helper: w.principal))
            }.prefix(wanted))
            guard !chosen.isEmpty else { continue }
            idle.removeAll { chosen.contains($0) }
            let slots = chosen.count + 1
            groupSlots[Self.key(task, attempt)] = slots
            for (i, w) in chosen.enumerated() {
                workers[w]!.helping = HelpRole(task: task, attempt: attempt, slot: i + 1)
                out.append(.help(worker: w, task: task, attempt: attempt, slot: i + 1, slots: slots))
            }
        }
        return out
    }

    private mutating func setState(_ id: String, _ state: TaskState) {
        tasks[id]!.state = state
        let p = position[id]!
        switch state {
        case .pending:
            status[p] = .pending
            lowestPending = min(lowestPending, p)
        case .leased: status[p] = .leased
        case .arbitrating: status[p] = .arbitrating
        case .done: status[p] = .done
        }
    }

    private func isReady(_ p: Int) -> Bool {
        status[p] == .pending && dependencyPositions[p].allSatisfy { status[$0] == .done }
    }

    /// Gives idle workers ready tasks in queue order. A task goes to an identity that has
    /// not failed it when one is connected; the second run of a verified task only to an
    /// identity other than the first run's, or to the coordinator when none is connected.
    /// A task with an affinity key goes to an idle worker that ran one of its key before;
    /// when a busy worker did, it waits until the other ready tasks are handed out, and
    /// only then goes to whichever worker is still idle.
    private mutating func schedule(now: Int64) -> [Directive] {
        guard outcome == nil else { return [] }
        var out: [Directive] = []
        var idle = workers.keys.filter { isIdle(workers[$0]!) }.sorted()
        guard !idle.isEmpty || waitingForSecondRun > 0 else { return [] }
        let connected = Set(workers.values.map(\.principal))
        var deferred: [Int] = []
        while lowestPending < order.count && status[lowestPending] != .pending { lowestPending += 1 }
        for p in lowestPending..<order.count {
            guard !idle.isEmpty || waitingForSecondRun > 0 else { break }
            guard isReady(p) else { continue }
            let id = order[p]
            let t = tasks[id]!
            if let key = t.definition.affinity, t.candidate == nil, workers.values.contains(where: { $0.affinities.contains(key) }),
               !idle.contains(where: { workers[$0]!.affinities.contains(key) }) {
                deferred.append(p)
                continue
            }
            out += assign(id, idle: &idle, connected: connected, now: now)
        }
        for p in deferred where !idle.isEmpty && status[p] == .pending {
            out += assign(order[p], idle: &idle, connected: connected, now: now)
        }
        let helpable = out.compactMap { d -> (task: String, attempt: Int)? in
            guard case .assign(_, let task, let attempt) = d, tasks[task]!.definition.helpers > 0 else { return nil }
            return (task, attempt)
        }
        return helpable.isEmpty || idle.isEmpty ? out : out + recruitHelpers(for: helpable, idle: &idle)
    }

    /// Leases a ready task to one of the `idle` workers allowed to run it (one that ran
    /// its affinity key first), or to the coordinator when it is the second run of a
    /// verified task and no other identity is connected.
    private mutating func assign(_ id: String, idle: inout [String], connected: Set<String>, now: Int64) -> [Directive] {
        let t = tasks[id]!
        let firstRun = t.candidate?.principal
        if let firstRun, connected.subtracting([firstRun]).isEmpty {
            setState(id, .arbitrating)
            waitingForSecondRun -= 1
            return [.recompute(task: id)]
        }
        guard !idle.isEmpty else { return [] }
        let failedIt = Set(t.failures)
        let fresh = !connected.subtracting(failedIt).subtracting([firstRun].compactMap { $0 }).isEmpty
        let allowed = idle.indices.filter { i in
            let p = workers[idle[i]]!.principal
            return p != firstRun && !(fresh && failedIt.contains(p))
        }
        let key = t.definition.affinity
        guard let i = allowed.first(where: { key != nil && workers[idle[$0]]!.affinities.contains(key!) }) ?? allowed.first else { return [] }
        let worker = idle.remove(at: i)
        if let key { workers[worker]!.affinities.insert(key) }
        let attempt = t.attempts + 1
        tasks[id]!.attempts = attempt
        setState(id, .leased(worker: worker, attempt: attempt, deadline: now + Int64(settings.leaseMs)))
        workers[worker]!.running.insert(id)
        workers[worker]!.history.insert(Self.key(id, attempt))
        workers[worker]!.lastSent = now
        return [.assign(worker: worker, task: id, attempt: attempt)]
    }
}
