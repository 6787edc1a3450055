import Foundation
import TestSupport
import XCTest
@testable import Cluster

/// `Ledger.markDone(durable: false)`, what a task whose outputs are all volatile gets: the
/// row is committed (and there after the ledger is closed and opened again), and the
/// connection goes back to synchronous FULL, so the commits after it wait for the disk and
/// sync it too.
final class LedgerDurabilityTests: XCTestCase {
    func testAVolatileTaskIsCommittedWithoutASyncAndTheNextCommitSyncsAgain() throws {
        let dir = TempDir("prune-ledger")
        defer { dir.cleanup() }
        let path = dir.file("ledger.sqlite")
        do {
            let ledger = try Ledger(path: path)
            try ledger.insertTasks([("train:grad:0:0", "train", []), ("train:ckpt:1", "train", [])])
            try ledger.workerJoined(id: "w", name: "w", host: "h", principal: "", at: 0)
            XCTAssertEqual(try ledger.db.query("PRAGMA synchronous").first?.first?.int, 2, "FULL")
            try ledger.markDone(task: "train:grad:0:0", worker: "w", attempt: 1, resultSHA256: "g", seconds: 0.01, at: 1, durable: false)
            XCTAssertEqual(try ledger.db.query("PRAGMA synchronous").first?.first?.int, 2, "FULL again after the volatile commit")
            try ledger.markDone(task: "train:ckpt:1", worker: "w", attempt: 1, resultSHA256: "c", seconds: 0.01, at: 2)
        }
        let reopened = try Ledger(path: path, create: false, readOnly: true)
        XCTAssertEqual(Set(try reopened.tasks().filter { $0.state == "done" }.map(\.id)), ["train:grad:0:0", "train:ckpt:1"])
        XCTAssertEqual(try reopened.workers().first?.tasksDone, 2)
    }
}
