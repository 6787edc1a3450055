import Foundation
import Protocol
import ZeroMQ
import XCTest
@testable import Cluster

/// The scheduling core, driven by events and an injected clock: no sockets, no sleeps.
final class CoordinatorCoreTests: XCTestCase {
    typealias Core = CoordinatorCore
    private var settings: Settings {
        var s = Settings()
        s.heartbeatMs = 1000
        s.liveness = 3
        s.leaseMs = 10_000
        s.maxAttempts = 3
        return s
    }

    private func core(_ ids: [String], deps: [String: [String]] = [:], done: Set<String> = [], settings: Settings? = nil) -> Core {
        Core(tasks: ids.map { Core.TaskDefinition(id: $0, dependencies: deps[$0] ?? []) }, done: done, settings: settings ?? self.settings)
    }

    private func assigns(_ d: [Core.Directive]) -> [String] {
        d.compactMap { if case .assign(_, let task, _) = $0 { return task }; return nil }
    }

    func testHelloWelcomesAndAssignsInQueueOrder() {
        var c = core(["a", "b", "c"])
        let d1 = c.hello(worker: "w1", name: "one", protocolVersion: Settings.protocolVersion, now: 0)
        XCTAssertEqual(d1, [.welcome(worker: "w1"), .assign(worker: "w1", task: "a", attempt: 1)])
        let d2 = c.hello(worker: "w2", name: "two", protocolVersion: Settings.protocolVersion, now: 5)
        XCTAssertEqual(assigns(d2), ["b"], "a late worker gets the next task")
        let d3 = c.completed(task: "a", by: "w1", attempt: 1, now: 10)
        XCTAssertEqual(d3, [.commit(task: "a", worker: "w1", attempt: 1, digest: "d", seconds: 0),
                            .ack(worker: "w1", task: "a", attempt: 1, accepted: true), .assign(worker: "w1", task: "c", attempt: 1)])
        _ = c.completed(task: "b", by: "w2", attempt: 1, now: 11)
        let last = c.completed(task: "c", by: "w1", attempt: 1, now: 12)
        XCTAssertTrue(last.contains(.jobCompleted))
        XCTAssertEqual(c.outcome, .completed)
    }

    /// A task that takes helpers (a training span) gets the workers still idle after the
    /// ready tasks are handed out; they are busy while its lease holds and idle the moment
    /// it ends; a lost helper or leader is told to the rest of the group; a distrusted
    /// identity helps no more.
    func testIdleWorkersHelpATaskThatTakesHelpersWhileItsLeaseHolds() {
        var c = Core(tasks: [Core.TaskDefinition(id: "s1", helpers: 2), Core.TaskDefinition(id: "s2", dependencies: ["s1"], helpers: 2),
                             Core.TaskDefinition(id: "s3", dependencies: ["s2"], helpers: 1)], settings: settings)
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        XCTAssertEqual(c.slots(of: "s1", attempt: 1), 1, "alone when it was leased")
        // A worker arriving later does not join a running group.
        XCTAssertTrue(c.hello(worker: "w2", name: "2", protocolVersion: Settings.protocolVersion, now: 1).allSatisfy { if case .help = $0 { return false }; return true })
        _ = c.hello(worker: "w3", name: "3", protocolVersion: Settings.protocolVersion, now: 1)
        let d = c.completed(task: "s1", by: "w1", attempt: 1, now: 2)
        XCTAssertEqual(Array(d.suffix(3)), [.assign(worker: "w1", task: "s2", attempt: 1),
                                            .help(worker: "w2", task: "s2", attempt: 1, slot: 1, slots: 3),
                                            .help(worker: "w3", task: "s2", attempt: 1, slot: 2, slots: 3)])
        XCTAssertEqual(c.slots(of: "s2", attempt: 1), 3)
        XCTAssertEqual(c.helpers(of: "s2"), ["w2", "w3"])
        // Members' messages go to the others; a stranger's go nowhere.
        XCTAssertEqual(c.peerRoute(from: "w2", task: "s2", attempt: 1, now: 3)?.slot, 1)
        XCTAssertEqual(c.peerRoute(from: "w2", task: "s2", attempt: 1, now: 3)?.to, ["w1", "w3"])
        XCTAssertNil(c.peerRoute(from: "w2", task: "s2", attempt: 2, now: 3))
        XCTAssertNil(c.peerRoute(from: "w2", task: "s1", attempt: 1, now: 3))
        // A helper lost: the leader and the other helper hear of it.
        let lost = c.goodbye(worker: "w3", reason: "gone", now: 4)
        XCTAssertEqual(Array(lost.prefix(2)), [.peerLeft(worker: "w1", task: "s2", attempt: 1, slot: 2),
                                               .peerLeft(worker: "w2", task: "s2", attempt: 1, slot: 2)])
        // The leader says helper 1 lied: it stops, helps no more, and is idle for the next task.
        XCTAssertEqual(c.distrust(from: "w2", task: "s2", attempt: 1, slot: 1, now: 5), [], "only the leader may")
        let distrust = c.distrust(from: "w1", task: "s2", attempt: 1, slot: 1, now: 5)
        XCTAssertEqual(distrust, [.helpDistrusted(principal: "name:2", by: "name:1", task: "s2"), .peerLeft(worker: "w2", task: "s2", attempt: 1, slot: 0)])
        XCTAssertEqual(c.helpers(of: "s2"), [])
        // The lease ends; the next span's leader gets no help from the distrusted identity.
        let next = c.completed(task: "s2", by: "w1", attempt: 1, now: 6)
        XCTAssertFalse(next.contains { if case .help = $0 { return true }; return false })
        XCTAssertEqual(assigns(next), ["s3"])
        // Idle as soon as the lease ends, without a word from the helper.
        XCTAssertEqual(c.runningTasks(of: "w2"), [])
    }

    /// Only a worker computing with the leader's OpenBLAS kernel helps it; the helpers hear
    /// when the leader's attempt fails; a verified task gets no helpers (its two runs must
    /// each be one identity's work).
    func testHelpersShareTheLeadersKernelHearItFailAndNeverHelpAVerifiedTask() {
        var c = Core(tasks: [Core.TaskDefinition(id: "s1", helpers: 2), Core.TaskDefinition(id: "s2", dependencies: ["s1"], helpers: 2),
                             Core.TaskDefinition(id: "v", dependencies: ["s2"], verify: true, helpers: 2)], settings: settings)
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, kernel: "Haswell", now: 0)
        _ = c.hello(worker: "w2", name: "2", protocolVersion: Settings.protocolVersion, kernel: "Haswell", now: 1)
        _ = c.hello(worker: "w3", name: "3", protocolVersion: Settings.protocolVersion, kernel: "SkylakeX", now: 1)
        let d = c.completed(task: "s1", by: "w1", attempt: 1, now: 2)
        XCTAssertEqual(Array(d.suffix(2)), [.assign(worker: "w1", task: "s2", attempt: 1),
                                            .help(worker: "w2", task: "s2", attempt: 1, slot: 1, slots: 2)], "w3's kernel differs")
        // w1 fails the attempt: its helper hears the leader leave.
        let failed = c.failed(task: "s2", by: "w1", attempt: 1, cause: "out of memory", retryable: true, now: 3)
        XCTAssertEqual(failed.first, .peerLeft(worker: "w2", task: "s2", attempt: 1, slot: 0))
        // Attempt 2 goes to an idle worker, helped by the other Haswell one, never by w3.
        guard let again = failed.compactMap({ d -> String? in if case .assign(let w, "s2", 2) = d { return w }; return nil }).first else {
            return XCTFail("s2 was not leased again: \(failed)")
        }
        let helpers = failed.compactMap { d -> String? in if case .help(let w, "s2", 2, _, _) = d { return w }; return nil }
        XCTAssertFalse(helpers.contains("w3"))
        XCTAssertFalse(helpers.contains(again))
        let next = c.completed(task: "s2", by: again, attempt: 2, now: 5)
        XCTAssertTrue(assigns(next).contains("v"))
        XCTAssertFalse(next.contains { if case .help = $0 { return true }; return false }, "a verified task gets no helpers")
    }

    /// The evolutionary search's queue (candidate-major, two shards): a worker keeps the
    /// shard it started, even when it finishes out of turn, and an idle worker is never
    /// kept waiting for a busy one's shard.
    func testTasksGoToTheWorkerThatHoldsTheirAffinityKey() {
        let ids = ["c0k0", "c0k1", "c1k0", "c1k1", "c2k0", "c2k1", "d0k0", "d1k0"]
        var c = Core(tasks: ids.map { Core.TaskDefinition(id: $0, affinity: $0.hasPrefix("c") ? "k" + $0.suffix(1) : "d") }, settings: settings)
        XCTAssertEqual(assigns(c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)), ["c0k0"])
        XCTAssertEqual(assigns(c.hello(worker: "w2", name: "2", protocolVersion: Settings.protocolVersion, now: 0)), ["c0k1"])
        // w2 finishes first: the next task in the queue (c1k0) is w1's shard, so w2 takes its own.
        XCTAssertEqual(assigns(c.completed(task: "c0k1", by: "w2", attempt: 1, now: 1)), ["c1k1"])
        XCTAssertEqual(assigns(c.completed(task: "c0k0", by: "w1", attempt: 1, now: 2)), ["c1k0"])
        XCTAssertEqual(assigns(c.completed(task: "c1k0", by: "w1", attempt: 1, now: 3)), ["c2k0"])
        // Nothing of its own is left for w2: it takes the first task nobody holds.
        XCTAssertEqual(assigns(c.completed(task: "c1k1", by: "w2", attempt: 1, now: 4)), ["c2k1"])
        XCTAssertEqual(assigns(c.completed(task: "c2k1", by: "w2", attempt: 1, now: 5)), ["d0k0"])
        // w2 holds "d" and is busy; w1 is idle and d1k0 is the only ready task: w1 runs it.
        XCTAssertEqual(assigns(c.completed(task: "c2k0", by: "w1", attempt: 1, now: 6)), ["d1k0"])
    }

    func testProtocolMismatchIsRejectedWithBothVersions() {
        var c = core(["a"])
        let d = c.hello(worker: "old", name: "old", protocolVersion: 99, now: 0)
        guard case .reject(_, let reason)? = d.first else { return XCTFail("\(d)") }
        XCTAssertTrue(reason.contains("99") && reason.contains("\(Settings.protocolVersion)"), reason)
        XCTAssertFalse(c.isKnown(worker: "old"))
    }

    func testDependenciesHoldTasksBack() {
        var c = core(["stats", "prune"], deps: ["prune": ["stats"]])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        let d = c.hello(worker: "w2", name: "2", protocolVersion: Settings.protocolVersion, now: 0)
        XCTAssertEqual(assigns(d), [], "prune waits for stats")
        let after = c.completed(task: "stats", by: "w1", attempt: 1, now: 1)
        XCTAssertEqual(assigns(after), ["prune"])
    }

    func testSilentWorkerIsDeclaredDeadAndItsTaskMoves() {
        var c = core(["a", "b"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        _ = c.hello(worker: "w2", name: "2", protocolVersion: Settings.protocolVersion, now: 0)
        // w2 keeps heartbeating; w1 goes silent.
        for t in stride(from: Int64(1000), through: 3000, by: 1000) {
            _ = c.heartbeat(worker: "w2", running: ["b"], now: t)
            let d = c.tick(now: t)
            XCTAssertFalse(d.contains { if case .workerLost = $0 { return true }; return false }, "alive at \(t)")
        }
        _ = c.heartbeat(worker: "w2", running: ["b"], now: 3001)
        let d = c.tick(now: 3001)
        XCTAssertTrue(d.contains(.workerLost(worker: "w1", requeued: ["a"], reason: "missed 3 heartbeats")), "\(d)")
        XCTAssertEqual(c.state(of: "a"), .pending)
        _ = c.completed(task: "b", by: "w2", attempt: 1, now: 3002)
        XCTAssertEqual(c.state(of: "a"), .leased(worker: "w2", attempt: 2, deadline: 3002 + 10_000))
    }

    func testHeartbeatsRenewLeasesAndExpiredLeasesRequeue() {
        var c = core(["a"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        // The worker heartbeats without naming the task: the lease is not renewed.
        for t in stride(from: Int64(500), through: 10_000, by: 500) { _ = c.heartbeat(worker: "w1", running: [], now: t) }
        let d = c.tick(now: 10_001)
        XCTAssertTrue(d.contains(.cancel(worker: "w1", task: "a", attempt: 1)), "\(d)")
        XCTAssertEqual(assigns(d), ["a"], "requeued and handed out again")
        // Naming it renews.
        var r = core(["a"])
        _ = r.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        for t in stride(from: Int64(500), through: 20_000, by: 500) {
            _ = r.heartbeat(worker: "w1", running: ["a"], now: t)
            XCTAssertFalse(r.tick(now: t).contains { if case .cancel = $0 { return true } else { return false } })
        }
    }

    func testFailuresRetryThenFailTheJobNamingTaskAndCause() {
        var c = core(["a"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        var d = c.failed(task: "a", by: "w1", attempt: 1, cause: "disk hiccup", retryable: true, now: 1)
        XCTAssertEqual(assigns(d), ["a"])
        d = c.failed(task: "a", by: "w1", attempt: 2, cause: "disk hiccup", retryable: true, now: 2)
        XCTAssertEqual(assigns(d), ["a"])
        d = c.failed(task: "a", by: "w1", attempt: 3, cause: "out of memory", retryable: true, now: 3)
        XCTAssertEqual(d, [.jobFailed(reason: "task a failed 3 times; last cause: out of memory")])
        XCTAssertEqual(c.outcome, .failed("task a failed 3 times; last cause: out of memory"))

        var bad = core(["x"])
        _ = bad.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        let e = bad.failed(task: "x", by: "w1", attempt: 1, cause: "N:M needs cols divisible by 4", retryable: false, now: 1)
        XCTAssertEqual(e, [.jobFailed(reason: "task x failed: N:M needs cols divisible by 4")])
    }

    func testOnlyTheLeaseHolderMayCompleteATask() {
        var c = core(["a", "b"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)   // a → w1
        _ = c.hello(worker: "w2", name: "2", protocolVersion: Settings.protocolVersion, now: 0)   // b → w2
        // w2 sends a result for a, which is leased to w1: refused, counted against w2.
        XCTAssertEqual(c.resultArrived(task: "a", by: "w2", attempt: 1, now: 1),
                       .refuse([.refused(worker: "w2", task: "a", attempt: 1, reason: "attempt 1 of a was not leased to this worker", counted: true),
                                .ack(worker: "w2", task: "a", attempt: 1, accepted: false)]))
        XCTAssertEqual(c.conduct(of: "name:2").refused, 1)
        XCTAssertEqual(c.state(of: "a"), .leased(worker: "w1", attempt: 1, deadline: 10_000))
        // The right worker with the wrong attempt number, and a task that does not exist.
        guard case .refuse = c.resultArrived(task: "a", by: "w1", attempt: 2, now: 2) else { return XCTFail("wrong attempt taken") }
        guard case .refuse = c.resultArrived(task: "zzz", by: "w1", attempt: 1, now: 2) else { return XCTFail("unknown task taken") }
        XCTAssertEqual(c.conduct(of: "name:1").refused, 2)
        XCTAssertEqual(c.resultArrived(task: "a", by: "w1", attempt: 1, now: 3), .store)
    }

    func testAResultOfARevokedLeaseIsStaleNotForged() {
        var c = core(["a"])
        _ = c.hello(worker: "w2", name: "2", protocolVersion: Settings.protocolVersion, now: 0)  // a → w2, attempt 1
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 1)
        for t in stride(from: Int64(500), through: 10_000, by: 500) {
            _ = c.heartbeat(worker: "w1", running: [], now: t)
            _ = c.heartbeat(worker: "w2", running: [], now: t)  // not naming a: its lease runs out
        }
        let expired = c.tick(now: 10_001)
        XCTAssertTrue(expired.contains(.cancel(worker: "w2", task: "a", attempt: 1)), "\(expired)")
        XCTAssertTrue(expired.contains(.assign(worker: "w1", task: "a", attempt: 2)), "\(expired)")
        // w2's attempt finished before the Cancel reached it: refused as stale, not counted.
        XCTAssertEqual(c.resultArrived(task: "a", by: "w2", attempt: 1, now: 10_002),
                       .refuse([.refused(worker: "w2", task: "a", attempt: 1, reason: "its lease was revoked", counted: false),
                                .ack(worker: "w2", task: "a", attempt: 1, accepted: false)]))
        XCTAssertEqual(c.conduct(of: "name:2").refused, 0)
        XCTAssertEqual(c.conduct(of: "name:2").failures, 1, "the expired lease counts as a vanished attempt")
        let done = c.completed(task: "a", by: "w1", attempt: 2, now: 10_003)
        XCTAssertEqual(done, [.commit(task: "a", worker: "w1", attempt: 2, digest: "d", seconds: 0),
                              .ack(worker: "w1", task: "a", attempt: 2, accepted: true), .jobCompleted])
    }

    /// A large result is read back off the loop: its lease holds however long that takes
    /// (the worker no longer names the task), and when the worker is lost meanwhile the
    /// task is requeued without counting against it and the late result is stale.
    func testALeaseHeldWhileItsResultIsReadNeitherExpiresNorCounts() {
        var c = core(["a"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        XCTAssertEqual(c.resultArrived(task: "a", by: "w1", attempt: 1, now: 1), .store)
        c.holdLease(task: "a", by: "w1", attempt: 1)
        for t in stride(from: Int64(500), through: 60_000, by: 500) {
            _ = c.heartbeat(worker: "w1", running: [], now: t)
            XCTAssertFalse(c.tick(now: t).contains { if case .cancel = $0 { return true } else { return false } }, "held at \(t) ms")
        }
        XCTAssertTrue(c.holdsLease(task: "a", by: "w1", attempt: 1))
        XCTAssertEqual(c.resultStored(task: "a", by: "w1", attempt: 1, digest: "d", seconds: 0, now: 60_001),
                       [.commit(task: "a", worker: "w1", attempt: 1, digest: "d", seconds: 0), .ack(worker: "w1", task: "a", attempt: 1, accepted: true), .jobCompleted])

        var once = settings
        once.maxAttempts = 1  // a charged failure would fail the job
        var lost = core(["a"], settings: once)
        _ = lost.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        XCTAssertEqual(lost.resultArrived(task: "a", by: "w1", attempt: 1, now: 1), .store)
        lost.holdLease(task: "a", by: "w1", attempt: 1)
        let gone = lost.tick(now: 5_000)  // silent for 3 heartbeats: dead
        XCTAssertTrue(gone.contains { if case .workerLost(_, let requeued, _) = $0 { return requeued == ["a"] } else { return false } }, "\(gone)")
        XCTAssertEqual(lost.state(of: "a"), .pending)
        XCTAssertFalse(lost.holdsLease(task: "a", by: "w1", attempt: 1))
        XCTAssertEqual(lost.resultStale(task: "a", by: "w1", attempt: 1, now: 5_001), [], "nobody to tell")
        XCTAssertNil(lost.outcome, "the read result's task is not charged: \(gone)")

        var moved = core(["a"])
        _ = moved.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        _ = moved.resultArrived(task: "a", by: "w1", attempt: 1, now: 1)
        moved.holdLease(task: "a", by: "w1", attempt: 1)
        _ = moved.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 2)  // reconnects: its lease goes
        XCTAssertFalse(moved.holdsLease(task: "a", by: "w1", attempt: 1))
        XCTAssertEqual(moved.resultStale(task: "a", by: "w1", attempt: 1, now: 3),
                       [.refused(worker: "w1", task: "a", attempt: 1, reason: "its lease ended while its result was read", counted: false),
                        .ack(worker: "w1", task: "a", attempt: 1, accepted: false)])
        XCTAssertEqual(moved.conduct(of: "name:1").refused, 0)
    }

    func testResumedJobNeverReassignsDoneTasks() {
        var c = core(["a", "b", "c"], done: ["a", "c"])
        XCTAssertEqual(c.remainingTasks, 1)
        let d = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        XCTAssertEqual(assigns(d), ["b"])
        let fin = c.completed(task: "b", by: "w1", attempt: 1, now: 1)
        XCTAssertTrue(fin.contains(.jobCompleted))
        let all = core(["a"], done: ["a"])
        XCTAssertEqual(all.outcome, .completed)
    }

    func testAttemptsUsedBeforeAResumeStillCount() {
        var c = Core(tasks: [Core.TaskDefinition(id: "a")], attempts: ["a": 2], settings: settings)
        let d = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        XCTAssertEqual(d.compactMap { if case .assign(_, "a", let attempt) = $0 { return attempt }; return nil }, [3])
        let e = c.failed(task: "a", by: "w1", attempt: 3, cause: "out of memory", retryable: true, now: 1)
        XCTAssertEqual(e, [.jobFailed(reason: "task a failed 3 times; last cause: out of memory")])
    }

    func testHeartbeatsGoOutEveryInterval() {
        var c = core(["a"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        XCTAssertFalse(c.tick(now: 999).contains(.heartbeat(worker: "w1")))
        XCTAssertTrue(c.tick(now: 1000).contains(.heartbeat(worker: "w1")))
        XCTAssertFalse(c.tick(now: 1500).contains(.heartbeat(worker: "w1")))
        _ = c.heartbeat(worker: "w1", running: ["a"], now: 1900)
        XCTAssertTrue(c.tick(now: 2000).contains(.heartbeat(worker: "w1")))
    }

    func testGoodbyeRequeuesAtOnce() {
        var c = core(["a"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: Settings.protocolVersion, now: 0)
        _ = c.hello(worker: "w2", name: "2", protocolVersion: Settings.protocolVersion, now: 0)
        let d = c.goodbye(worker: "w1", reason: "SIGTERM", now: 5)
        XCTAssertEqual(d.first, .workerLost(worker: "w1", requeued: ["a"], reason: "left: SIGTERM"))
        XCTAssertEqual(assigns(d), ["a"])
    }
}

/// The shell's two steps for a valid result: admitted, then stored under `digest`.
extension CoordinatorCore {
    mutating func completed(task: String, by worker: String, attempt: Int, digest: String = "d", now: Int64) -> [Directive] {
        switch resultArrived(task: task, by: worker, attempt: attempt, now: now) {
        case .refuse(let directives): return directives
        case .store: return resultStored(task: task, by: worker, attempt: attempt, digest: digest, seconds: 0, now: now)
        }
    }
}

final class KeyFileTests: XCTestCase {
    func testAllowListAcceptsKeysContainingHashAndNotes() throws {
        let dir = NSTemporaryDirectory() + "prune-keys-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Z85 uses '#': a key may contain it, so only a leading '#' starts a comment.
        let withHash = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
        var keys: [String] = []
        for _ in 0..<3 { keys.append(try Curve.keyPair().publicKey) }
        let text = "# workers\n\(withHash)\n  \(keys[0])   host-a\n\n\(keys[1])\t# host-b\n"
        try text.write(toFile: dir + "/allow.txt", atomically: false, encoding: .utf8)
        XCTAssertEqual(try KeyFiles.readAllowList(dir + "/allow.txt"), Set([withHash, keys[0], keys[1]]))
        try "not-a-key\n".write(toFile: dir + "/bad.txt", atomically: false, encoding: .utf8)
        XCTAssertThrowsError(try KeyFiles.readAllowList(dir + "/bad.txt")) { XCTAssertTrue("\($0)".contains("bad.txt:1")) }
        let (pub, sec) = try KeyFiles.write(name: "node", directory: dir)
        XCTAssertEqual(try Curve.publicKey(fromSecret: try KeyFiles.readKey(sec)), try KeyFiles.readKey(pub))
        XCTAssertThrowsError(try KeyFiles.write(name: "node", directory: dir), "never overwrites keys")
        var st = stat()
        XCTAssertEqual(stat(sec, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }
}
