import Protocol
import XCTest
@testable import Cluster

/// The worker's protocol decisions, event by event with an injected clock: whole
/// directive arrays compared, as CoordinatorCoreTests does.
final class WorkerCoreTests: XCTestCase {
    typealias Core = WorkerCore
    private var settings: Settings {
        var s = Settings()
        s.heartbeatMs = 1000
        s.liveness = 3
        s.reconnectMs = 1000
        s.reconnectMaxMs = 4000
        return s
    }

    private func assign(_ task: String, _ attempt: UInt32) -> Prune_V1_Envelope.OneOf_Body {
        var a = Prune_V1_Assign()
        a.taskID = task
        a.attempt = attempt
        return .assign(a)
    }

    private func result(_ task: String, _ attempt: UInt32) -> Prune_V1_Envelope.OneOf_Body {
        var r = Prune_V1_Result()
        r.taskID = task
        r.attempt = attempt
        return .result(r)
    }

    private func heartbeat(_ tasks: [String]) -> Core.Directive {
        var hb = Prune_V1_Heartbeat()
        hb.taskIds = tasks
        return .send(.with(.heartbeat(hb)))
    }

    func testWelcomeAdoptsTheCoordinatorsLivenessAndAssignsGoToCompute() {
        var c = Core(settings: settings, curve: false, now: 0)
        var w = Prune_V1_Welcome()
        w.jobID = "job"
        w.heartbeatMs = 500
        w.liveness = 4
        XCTAssertEqual(c.fromCoordinator(.welcome(w), now: 10), [.log("welcomed into job job"), .forwardToCompute])
        XCTAssertEqual(c.settings.heartbeatMs, 500)
        XCTAssertEqual(c.fromCoordinator(assign("a", 1), now: 20), [.forwardToCompute])
        XCTAssertEqual(c.running, [.init(task: "a", attempt: 1)])
        XCTAssertEqual(c.tick(now: 999), [])
        XCTAssertEqual(c.tick(now: 1000), [heartbeat(["a"])], "the first heartbeat as scheduled, naming the task")
        XCTAssertEqual(c.tick(now: 1499), [])
        XCTAssertEqual(c.tick(now: 1500), [heartbeat(["a"])], "then every 500 ms")
    }

    func testAnAnswerGoesOutOnlyForAnAttemptLeasedOnThisConnection() {
        var c = Core(settings: settings, curve: false, now: 0)
        _ = c.fromCoordinator(assign("a", 2), now: 1)
        XCTAssertEqual(c.fromCompute(result("a", 1)), [.log("dropped the answer to task a attempt 1: not leased on this connection")])
        XCTAssertEqual(c.fromCompute(result("a", 2)), [.forwardToCoordinator])
        XCTAssertEqual(c.fromCompute(result("a", 2)), [.log("dropped the answer to task a attempt 2: not leased on this connection")], "answered once")
        XCTAssertEqual(c.fromCompute(.chunkRequest(Prune_V1_ChunkRequest())), [.forwardToCoordinator], "chunk requests always go")
        XCTAssertEqual(c.running, [])
    }

    func testCancelRevokesOnlyWhatThisWorkerRuns() {
        var c = Core(settings: settings, curve: false, now: 0)
        _ = c.fromCoordinator(assign("a", 1), now: 1)
        var cancel = Prune_V1_Cancel()
        cancel.taskID = "b"
        cancel.attempt = 1
        XCTAssertEqual(c.fromCoordinator(.cancel(cancel), now: 2), [], "not running b")
        cancel.taskID = "a"
        XCTAssertEqual(c.fromCoordinator(.cancel(cancel), now: 3),
                       [.cancelAttempt(task: "a", attempt: 1), .log("coordinator cancelled task a attempt 1")])
        XCTAssertEqual(c.running, [])
        XCTAssertEqual(c.fromCompute(result("a", 1)), [.log("dropped the answer to task a attempt 1: not leased on this connection")])
    }

    func testASilentCoordinatorMeansReconnectingWithBackoffAndDroppingItsLeases() {
        var c = Core(settings: settings, curve: true, now: 0)
        _ = c.fromCoordinator(assign("a", 1), now: 0)
        XCTAssertFalse(c.tick(now: 3000).contains { if case .reconnect = $0 { return true }; return false }, "3 heartbeats of silence is the limit")
        let hint = " (if this repeats: is this worker's public key on the coordinator's allow-list, and the server key right?)"
        XCTAssertEqual(c.tick(now: 3001), [.log("coordinator silent for 3001 ms; reconnecting in 1000 ms" + hint),
                                           .cancelAttempt(task: "a", attempt: 1), .reconnect(afterMs: 1000)])
        c.reconnected(now: 4001)
        XCTAssertEqual(c.running, [])
        let again = c.tick(now: 7002)
        XCTAssertEqual(again.last, .reconnect(afterMs: 2000), "doubled")
        c.reconnected(now: 9002)
        XCTAssertEqual(c.tick(now: 12003).last, .reconnect(afterMs: 4000))
        c.reconnected(now: 16003)
        XCTAssertEqual(c.tick(now: 19004).last, .reconnect(afterMs: 4000), "capped at reconnectMaxMs")
        c.reconnected(now: 23004)
        _ = c.fromCoordinator(.heartbeat(Prune_V1_Heartbeat()), now: 23005)
        XCTAssertEqual(c.tick(now: 26006).last, .reconnect(afterMs: 1000), "an answer resets the backoff")
    }

    func testRejectShutdownAndSignalsEndTheLoop() {
        var c = Core(settings: settings, curve: false, now: 0)
        var r = Prune_V1_Reject()
        r.reason = "quarantined: 3 results refused"
        XCTAssertEqual(c.fromCoordinator(.reject(r), now: 1), [.log("rejected by the coordinator: quarantined: 3 results refused"),
                                                               .warn("rejected by the coordinator: quarantined: 3 results refused"), .exit(code: 2)])
        var s = Prune_V1_Shutdown()
        s.reason = "job complete"
        XCTAssertEqual(c.fromCoordinator(.shutdown(s), now: 2), [.log("coordinator says shut down: job complete"), .exit(code: 0)])
        _ = c.fromCoordinator(assign("x", 3), now: 3)
        var bye = Prune_V1_Goodbye()
        bye.reason = "SIGTERM"
        bye.taskIds = ["x"]
        XCTAssertEqual(c.stop(), [.send(.with(.goodbye(bye))), .log("stopping on signal; told the coordinator"), .exit(code: 0)])
    }
}
