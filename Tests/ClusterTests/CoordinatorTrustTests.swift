import Protocol
import XCTest
@testable import Cluster

/// The core's defences against workers that lie: lease-checked results, quarantine,
/// retries on other identities, verification by a second run, reopening what a liar
/// produced. Driven by events, no sockets.
final class CoordinatorTrustTests: XCTestCase {
    typealias Core = CoordinatorCore
    private let v = Settings.protocolVersion

    private func core(_ ids: [String], deps: [String: [String]] = [:], verify: Set<String> = [],
                      done: [String: Core.DoneTask] = [:], maxAttempts: Int = 3) -> Core {
        var s = Settings()
        s.maxAttempts = maxAttempts
        return Core(tasks: ids.map { Core.TaskDefinition(id: $0, dependencies: deps[$0] ?? [], verify: verify.contains($0)) },
                    done: done, settings: s)
    }

    private func assigns(_ d: [Core.Directive]) -> [(worker: String, task: String, attempt: Int)] {
        d.compactMap { if case .assign(let w, let t, let a) = $0 { return (w, t, a) }; return nil }
    }

    private func leased(_ c: Core, _ task: String) -> (worker: String, attempt: Int)? {
        if case .leased(let w, let a, _)? = c.state(of: task) { return (w, a) }
        return nil
    }

    func testAWorkerRefusedKTimesIsQuarantinedAndRejectedWhenItComesBack() {
        var c = core(["a", "b", "c"])
        _ = c.hello(worker: "liar", name: "liar", principal: "KEY-L", protocolVersion: v, now: 0)   // a → liar
        _ = c.hello(worker: "good", name: "good", principal: "KEY-G", protocolVersion: v, now: 0)   // b → good
        // Results for tasks never leased to it: c twice, b once.
        _ = c.resultArrived(task: "c", by: "liar", attempt: 1, now: 1)
        _ = c.resultArrived(task: "c", by: "liar", attempt: 2, now: 2)
        guard case .refuse(let d) = c.resultArrived(task: "b", by: "liar", attempt: 1, now: 3) else { return XCTFail() }
        XCTAssertTrue(d.contains(.quarantined(principal: "KEY-L", reason: "3 results refused (last: attempt 1 of b was not leased to this worker)")), "\(d)")
        XCTAssertTrue(d.contains(.reject(worker: "liar", reason: "quarantined: 3 results refused (last: attempt 1 of b was not leased to this worker)")))
        XCTAssertTrue(d.contains(.workerLost(worker: "liar", requeued: ["a"], reason: "quarantined")))
        XCTAssertFalse(c.isKnown(worker: "liar"))
        XCTAssertEqual(c.conduct(of: "KEY-L").quarantined, "3 results refused (last: attempt 1 of b was not leased to this worker)")
        // The same key on a new connection is turned away; the honest worker is not.
        let back = c.hello(worker: "liar2", name: "other-name", principal: "KEY-L", protocolVersion: v, now: 4)
        guard case .reject(_, let reason)? = back.first else { return XCTFail("\(back)") }
        XCTAssertTrue(reason.hasPrefix("quarantined:"), reason)
        XCTAssertEqual(c.conduct(of: "KEY-G").refused, 0)
        // a was requeued without being charged: it still has every attempt left.
        _ = c.completed(task: "b", by: "good", attempt: 1, now: 5)
        XCTAssertEqual(leased(c, "a")?.worker, "good")
    }

    func testALiarTakingEveryRetryCannotFailTheJob() {
        // Today's bug: a worker whose results are unusable answered in 0.1 s and took every
        // retry of the first task. Now its failures go to others and it is quarantined.
        var c = core(["a", "b", "c", "d"])
        _ = c.hello(worker: "liar", name: "liar", protocolVersion: v, now: 0)
        _ = c.hello(worker: "good", name: "good", protocolVersion: v, now: 0)
        var now: Int64 = 1
        while c.outcome == nil && now < 200 {
            for w in ["liar", "good"] {
                guard c.isKnown(worker: w) else { continue }
                for task in c.runningTasks(of: w) {
                    let attempt = leased(c, task)!.attempt
                    _ = c.resultArrived(task: task, by: w, attempt: attempt, now: now)
                    if w == "liar" {
                        _ = c.resultInvalid(task: task, by: w, attempt: attempt, cause: "not a 4×4 mask", now: now)
                    } else {
                        _ = c.resultStored(task: task, by: w, attempt: attempt, digest: "ok-\(task)", seconds: 0, now: now)
                    }
                }
            }
            now += 1
        }
        XCTAssertEqual(c.outcome, .completed)
        XCTAssertNotNil(c.conduct(of: "name:liar").quarantined)
        for t in ["a", "b", "c", "d"] { XCTAssertEqual(c.producer(of: t), "name:good") }
    }

    func testAFailedTaskGoesToAnotherIdentityWhenOneIsConnected() {
        var c = core(["a", "b"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: v, now: 0)   // a → w1
        _ = c.hello(worker: "w2", name: "2", protocolVersion: v, now: 0)   // b → w2
        let d = c.failed(task: "a", by: "w1", attempt: 1, cause: "out of memory", retryable: true, now: 1)
        XCTAssertTrue(assigns(d).isEmpty, "w1 is idle but failed a, and w2 has not tried it: \(d)")
        let e = c.completed(task: "b", by: "w2", attempt: 1, now: 2)
        XCTAssertEqual(assigns(e).map(\.worker), ["w2"])
        // Alone, a worker may retry what it failed.
        var alone = core(["a"])
        _ = alone.hello(worker: "w1", name: "1", protocolVersion: v, now: 0)
        XCTAssertEqual(assigns(alone.failed(task: "a", by: "w1", attempt: 1, cause: "oom", retryable: true, now: 1)).map(\.attempt), [2])
    }

    func testAPermanentFailureNeedsASecondIdentityToEndTheJob() {
        var c = core(["a", "b"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: v, now: 0)   // a → w1
        _ = c.hello(worker: "w2", name: "2", protocolVersion: v, now: 0)   // b → w2
        let d = c.failed(task: "a", by: "w1", attempt: 1, cause: "bad shape", retryable: false, now: 1)
        XCTAssertNil(c.outcome, "one worker's word does not end the job: \(d)")
        _ = c.completed(task: "b", by: "w2", attempt: 1, now: 2)
        XCTAssertEqual(leased(c, "a")?.worker, "w2")
        let e = c.failed(task: "a", by: "w2", attempt: 2, cause: "bad shape", retryable: false, now: 3)
        XCTAssertEqual(e, [.jobFailed(reason: "task a failed: bad shape")])
    }

    func testWorkersThatKeepVanishingAreQuarantined() {
        var s = Settings()
        s.maxAttempts = 100
        s.maxWorkerFailures = 2
        var c = Core(tasks: (0..<4).map { Core.TaskDefinition(id: "t\($0)") }, settings: s)
        _ = c.hello(worker: "w1", name: "flaky", protocolVersion: v, now: 0)
        _ = c.failed(task: "t0", by: "w1", attempt: 1, cause: "io error", retryable: true, now: 1)
        let task = c.runningTasks(of: "w1").first!
        let d = c.failed(task: task, by: "w1", attempt: leased(c, task)!.attempt, cause: "io error", retryable: true, now: 2)
        XCTAssertTrue(d.contains(.quarantined(principal: "name:flaky", reason: "2 attempts failed or vanished (last: io error)")), "\(d)")
        XCTAssertFalse(c.isKnown(worker: "w1"))
    }

    func testVerifiedTaskIsDoneOnlyWhenTwoIdentitiesAgree() {
        var c = core(["a", "b"], verify: ["a"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: v, now: 0)   // a → w1
        _ = c.hello(worker: "w2", name: "2", protocolVersion: v, now: 0)   // b → w2
        let first = c.completed(task: "a", by: "w1", attempt: 1, digest: "X", now: 1)
        XCTAssertEqual(first, [.ack(worker: "w1", task: "a", attempt: 1, accepted: true)], "kept, not committed; w1 may not repeat it")
        XCTAssertEqual(c.state(of: "a"), .pending)
        let b = c.completed(task: "b", by: "w2", attempt: 1, digest: "Y", now: 2)
        XCTAssertEqual(assigns(b).map { "\($0.worker) \($0.task)" }, ["w2 a"])
        let second = c.completed(task: "a", by: "w2", attempt: 2, digest: "X", now: 3)
        XCTAssertEqual(second, [.commit(task: "a", worker: "w1", attempt: 1, digest: "X", seconds: 0),
                                .ack(worker: "w2", task: "a", attempt: 2, accepted: true),
                                .verified(task: "a", detail: "name:1 and name:2 agree"), .jobCompleted])
    }

    func testADisagreementIsSettledByTheCoordinatorAndTheLiarsWorkIsRedone() {
        // c consumes a; the liar produced b (accepted before it was caught) and lies on a.
        var c = core(["b", "a", "c"], deps: ["c": ["a"]], verify: ["a"])
        _ = c.hello(worker: "liar", name: "liar", principal: "KEY-L", protocolVersion: v, now: 0)  // b → liar
        _ = c.hello(worker: "good", name: "good", principal: "KEY-G", protocolVersion: v, now: 0)  // a → good
        _ = c.completed(task: "b", by: "liar", attempt: 1, digest: "B-lie", now: 1)                 // a's second run → liar
        _ = c.completed(task: "a", by: "good", attempt: 1, digest: "A", now: 2)
        XCTAssertEqual(leased(c, "a")?.worker, "liar")
        let dispute = c.completed(task: "a", by: "liar", attempt: 2, digest: "A-lie", now: 3)
        XCTAssertTrue(dispute.contains(.recompute(task: "a")), "\(dispute)")
        XCTAssertEqual(c.state(of: "a"), .arbitrating)
        let settled = c.recomputed(task: "a", digest: "A", now: 4)
        XCTAssertTrue(settled.contains(.quarantined(principal: "KEY-L", reason: "its result of a differs from the coordinator's own computation")))
        XCTAssertTrue(settled.contains(.reopened(task: "b", reason: "produced by quarantined KEY-L")), "\(settled)")
        XCTAssertTrue(settled.contains(.commit(task: "a", worker: "good", attempt: 1, digest: "A", seconds: 0)), "\(settled)")
        XCTAssertEqual(c.producer(of: "a"), "KEY-G")
        XCTAssertEqual(c.state(of: "b"), .leased(worker: "good", attempt: 2, deadline: 4 + 10_000), "the liar's b is redone by the honest worker")
        _ = c.completed(task: "b", by: "good", attempt: 2, digest: "B", now: 5)
        XCTAssertEqual(c.producer(of: "b"), "KEY-G")
        _ = c.completed(task: "c", by: "good", attempt: 1, digest: "C", now: 6)
        XCTAssertEqual(c.outcome, .completed)
    }

    func testARedoneTaskWithAnotherResultReopensWhatConsumedIt() {
        // b and c consumed a's old result; after a is reopened and gives another digest,
        // they are redone; had it given the same digest, they would stand.
        var fresh = core(["a", "b", "c", "z"], deps: ["b": ["a"], "c": ["b"]],
                         done: ["a": .init(digest: "A-lie", producer: "KEY-L"), "b": .init(digest: "B", producer: "KEY-G"),
                                "c": .init(digest: "C", producer: "KEY-G")])
        _ = fresh.hello(worker: "liar", name: "l", principal: "KEY-L", protocolVersion: v, now: 0)  // z → liar
        _ = fresh.hello(worker: "good", name: "g", principal: "KEY-G", protocolVersion: v, now: 0)
        for attempt in 1...3 { _ = fresh.resultArrived(task: "z", by: "liar", attempt: attempt + 5, now: 1) }  // quarantined
        XCTAssertEqual(fresh.state(of: "a"), .leased(worker: "good", attempt: 1, deadline: 1 + 10_000))
        XCTAssertEqual(fresh.state(of: "b"), .done, "b stands until a's new result is known")
        let redo = fresh.completed(task: "a", by: "good", attempt: 1, digest: "A", now: 2)
        XCTAssertTrue(redo.contains(.reopened(task: "b", reason: "its input a changed")), "\(redo)")
        XCTAssertEqual(fresh.state(of: "c"), .done)
        let b = fresh.completed(task: "b", by: "good", attempt: 1, digest: "B2", now: 3)
        XCTAssertTrue(b.contains(.reopened(task: "c", reason: "its input b changed")), "\(b)")
    }

    func testAVerifiedTaskWithNoOtherIdentityIsCheckedByTheCoordinator() {
        var c = core(["a"], verify: ["a"])
        _ = c.hello(worker: "w1", name: "1", protocolVersion: v, now: 0)
        let d = c.completed(task: "a", by: "w1", attempt: 1, digest: "X", now: 1)
        XCTAssertEqual(d, [.ack(worker: "w1", task: "a", attempt: 1, accepted: true), .recompute(task: "a")])
        let ok = c.recomputed(task: "a", digest: "X", now: 2)
        XCTAssertEqual(ok, [.verified(task: "a", detail: "the coordinator's result agrees with name:1"),
                            .commit(task: "a", worker: "w1", attempt: 1, digest: "X", seconds: 0), .jobCompleted])
        // The same with a lie: quarantined, and the coordinator's result is the task's.
        var l = core(["a"], verify: ["a"])
        _ = l.hello(worker: "w1", name: "1", protocolVersion: v, now: 0)
        _ = l.completed(task: "a", by: "w1", attempt: 1, digest: "LIE", now: 1)
        let caught = l.recomputed(task: "a", digest: "X", now: 2)
        XCTAssertTrue(caught.contains(.commit(task: "a", worker: "coordinator", attempt: 1, digest: "X", seconds: 0)), "\(caught)")
        XCTAssertNotNil(l.conduct(of: "name:1").quarantined)
        XCTAssertEqual(l.outcome, .completed)
    }

    func testAMissingInputRerunsItsProducerFirst() {
        var c = core(["a", "b"], deps: ["b": ["a"]], done: ["a": .init(digest: "A", producer: "x")])
        let d = c.hello(worker: "w1", name: "1", protocolVersion: v, now: 0)
        XCTAssertEqual(assigns(d).map(\.task), ["b"])
        let e = c.inputMissing(task: "b", by: "w1", attempt: 1, dependency: "a", now: 1)
        XCTAssertEqual(e.first, .reopened(task: "a", reason: "its output is missing (needed by b)"))
        XCTAssertEqual(assigns(e).map(\.task), ["a"])
        let f = c.completed(task: "a", by: "w1", attempt: 1, digest: "A", now: 2)
        XCTAssertEqual(assigns(f).map { "\($0.task)#\($0.attempt)" }, ["b#2"], "same digest: nothing else reopened")
        XCTAssertEqual(c.attempts(of: "b"), 2)
        _ = c.completed(task: "b", by: "w1", attempt: 2, now: 3)
        XCTAssertEqual(c.outcome, .completed)
    }
}
