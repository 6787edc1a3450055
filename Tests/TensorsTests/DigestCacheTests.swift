import Foundation
import TestSupport
import XCTest
@testable import Tensors
#if canImport(Glibc)
import Glibc
#endif

final class DigestCacheTests: XCTestCase {
    /// Writes `bytes` to a new file and waits until its timestamps are older than the
    /// cache's racy window, so the first hash of it is recorded.
    private func settledFile(_ path: String, _ bytes: [UInt8]) {
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        usleep(120_000)
    }

    private func plainDigest(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { SHA256Stream.hex($0) } }

    private func bytes(_ n: Int, seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }

    private func statOf(_ path: String) -> stat {
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        return st
    }

    func testHashOfAFileMatchesCryptoAcrossChunkBoundaries() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        for n in [0, 1, SHA256Stream.fileChunk - 1, SHA256Stream.fileChunk, 2 * SHA256Stream.fileChunk + 17] {
            let data = bytes(n, seed: 7)
            let path = dir.file("f\(n)")
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(data)))
            XCTAssertEqual(try SHA256Stream.hex(file: path), plainDigest(data), "\(n) bytes")
        }
        XCTAssertEqual(try SHA256Stream.hex(file: dir.file("f0")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertThrowsError(try SHA256Stream.hex(file: dir.file("missing")))
    }

    func testHitComesFromTheCacheFileNotFromHashing() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cachePath = dir.file("cache/sub/digests")
        let file = dir.file("model.safetensors")
        let data = bytes(300_000, seed: 1)
        settledFile(file, data)

        let first = DigestCache(path: cachePath)
        XCTAssertNil(first.cachedSHA256(file: file))
        XCTAssertEqual(try first.sha256(file: file), plainDigest(data))
        XCTAssertTrue(FileManager.default.fileExists(atPath: cachePath), "the cache file (and its directories) are created")

        // Another instance (as another process would) finds it without hashing.
        let second = DigestCache(path: cachePath)
        XCTAssertEqual(second.cachedSHA256(file: file), plainDigest(data))
        XCTAssertEqual(DigestCache.parse(DigestCache.read(cachePath)).count, 1)

        // Proof that a hit does not read the file: plant a different (well-formed) digest
        // for the same stat and it is what comes back.
        let planted = String(repeating: "ab", count: 32)
        var entries = DigestCache.parse(DigestCache.read(cachePath))
        entries[0].sha256 = planted
        try DigestCache.render(entries).write(toFile: cachePath, atomically: false, encoding: .utf8)
        XCTAssertEqual(try DigestCache(path: cachePath).sha256(file: file), planted)
        // A relative path names the same file and the same entry.
        let cwd = FileManager.default.currentDirectoryPath
        FileManager.default.changeCurrentDirectoryPath(dir.path)
        defer { FileManager.default.changeCurrentDirectoryPath(cwd) }
        XCTAssertEqual(try DigestCache(path: cachePath).sha256(file: "model.safetensors"), planted)
    }

    func testSameSizeRewriteWithMtimeSetBackIsAMiss() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cachePath = dir.file("digests")
        let file = dir.file("w.bin")
        let original = bytes(100_000, seed: 2)
        settledFile(file, original)
        XCTAssertEqual(try DigestCache(path: cachePath).sha256(file: file), plainDigest(original))
        let before = statOf(file)

        // Same inode, same size, other bytes; then the old mtime is put back, as a careless
        // copy tool might. Only the ctime still tells.
        var changed = original
        changed[50_000] ^= 0xFF
        let fd = open(file, O_WRONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(changed.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }, changed.count)
        var times = [before.st_atim, before.st_mtim]
        XCTAssertEqual(futimens(fd, &times), 0)
        close(fd)
        let after = statOf(file)
        XCTAssertEqual(after.st_ino, before.st_ino)
        XCTAssertEqual(after.st_size, before.st_size)
        XCTAssertEqual(after.st_mtim.tv_sec, before.st_mtim.tv_sec)
        XCTAssertEqual(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec)

        let cache = DigestCache(path: cachePath)
        XCTAssertNil(cache.cachedSHA256(file: file))
        usleep(120_000)
        XCTAssertEqual(try cache.sha256(file: file), plainDigest(changed))
        // The stale entry of that inode was replaced, not kept beside the new one.
        let entries = DigestCache.parse(DigestCache.read(cachePath))
        XCTAssertEqual(entries.map(\.sha256), [plainDigest(changed)])
    }

    func testTouchIsAMissAndTheSameInstanceSeesIt() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let file = dir.file("t.bin")
        let data = bytes(4096, seed: 3)
        settledFile(file, data)
        let cache = DigestCache(path: dir.file("digests"))
        XCTAssertEqual(try cache.sha256(file: file), plainDigest(data))
        XCTAssertEqual(cache.cachedSHA256(file: file), plainDigest(data))
        // touch -d '2001-01-01': new mtime (and ctime); the in-process memo must not answer.
        var times = [timespec(tv_sec: 978_307_200, tv_nsec: 0), timespec(tv_sec: 978_307_200, tv_nsec: 0)]
        XCTAssertEqual(utimensat(AT_FDCWD, file, &times, 0), 0)
        XCTAssertNil(cache.cachedSHA256(file: file))
        // Replacing the file by rename (new inode) is a miss too.
        let other = bytes(4096, seed: 4)
        settledFile(dir.file("t.new"), other)
        XCTAssertEqual(rename(dir.file("t.new"), file), 0)
        XCTAssertNil(cache.cachedSHA256(file: file))
        XCTAssertEqual(try cache.sha256(file: file), plainDigest(other))
    }

    func testAFreshlyWrittenFileIsHashedButNotRecorded() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let file = dir.file("racy.bin")
        let data = bytes(1000, seed: 5)
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data(data)))
        let cache = DigestCache(path: dir.file("digests"))
        cache.racyWindow = 5  // anything written in the last 5 s counts as racy
        XCTAssertEqual(try cache.sha256(file: file), plainDigest(data))
        XCTAssertNil(cache.cachedSHA256(file: file))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("digests")))
    }

    func testCorruptCacheFileIsIgnoredAndRepaired() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cachePath = dir.file("digests")
        let file = dir.file("c.bin")
        let data = bytes(70_000, seed: 6)
        settledFile(file, data)
        let key = DigestCache.Key(statOf(file))
        let wrong = String(repeating: "0", count: 64)
        // A line for this very file with a wrong digest but no valid checksum, a torn line,
        // binary garbage, a non-hex digest with a "valid" looking layout.
        var garbage = Array("\(key.fields) \(wrong) 0123456789abcdef \(file)\n".utf8)
        garbage += Array("\(key.fields) \(wrong.prefix(20))".utf8) + [0x0A]
        garbage += (0..<4000).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
        garbage += Array("\n1 2 3 4 5 6 7 ZZZZ \(DigestCache.checksum(key: key, sha256: "ZZZZ", path: "p")) p\n".utf8)
        XCTAssertTrue(FileManager.default.createFile(atPath: cachePath, contents: Data(garbage)))
        XCTAssertTrue(DigestCache.parse(DigestCache.read(cachePath)).isEmpty)

        let cache = DigestCache(path: cachePath)
        XCTAssertNil(cache.cachedSHA256(file: file))
        XCTAssertEqual(try cache.sha256(file: file), plainDigest(data))
        // Rewritten whole and valid: the next reader gets the right digest.
        let entries = DigestCache.parse(DigestCache.read(cachePath))
        XCTAssertEqual(entries.count, 1)
        XCTAssertEqual(DigestCache(path: cachePath).cachedSHA256(file: file), plainDigest(data))
        XCTAssertTrue(DigestCache.read(cachePath).hasPrefix("# prune-cluster digest cache v1"))

        // A bit flipped in a recorded digest: the line's checksum no longer matches, so
        // it is dropped instead of vouching for the wrong bytes.
        var text = Array(DigestCache.read(cachePath).utf8)
        let at = text.count - 1 - (file.utf8.count + 1 + 16 + 1 + 10)
        text[at] = text[at] == UInt8(ascii: "a") ? UInt8(ascii: "b") : UInt8(ascii: "a")
        XCTAssertTrue(FileManager.default.createFile(atPath: cachePath, contents: Data(text)))
        XCTAssertNil(DigestCache(path: cachePath).cachedSHA256(file: file))

        // A cache path that is a directory, or under a file: hashing still works.
        try FileManager.default.createDirectory(atPath: dir.file("isdir"), withIntermediateDirectories: true)
        XCTAssertEqual(try DigestCache(path: dir.file("isdir")).sha256(file: file), plainDigest(data))
        XCTAssertEqual(try DigestCache(path: file + "/under-a-file").sha256(file: file), plainDigest(data))
    }

    func testEnvironmentChoosesThePathOrTurnsItOff() throws {
        XCTAssertEqual(DigestCache.path(environment: ["HOME": "/home/u"]), "/home/u/.cache/prune-cluster/digests")
        XCTAssertEqual(DigestCache.path(environment: ["HOME": "/home/u", "XDG_CACHE_HOME": "/var/c"]), "/var/c/prune-cluster/digests")
        XCTAssertEqual(DigestCache.path(environment: ["HOME": "/home/u", "XDG_CACHE_HOME": "rel"]), "/home/u/.cache/prune-cluster/digests")
        XCTAssertEqual(DigestCache.path(environment: ["HOME": "/home/u", "PRUNE_DIGEST_CACHE": "/x/d"]), "/x/d")
        XCTAssertNil(DigestCache.path(environment: ["HOME": "/home/u", "PRUNE_DIGEST_CACHE": "off"]))
        XCTAssertNil(DigestCache.path(environment: ["HOME": "/home/u", "PRUNE_DIGEST_CACHE": "OFF"]))
        XCTAssertNil(DigestCache.path(environment: [:]))

        let dir = TempDir(); defer { dir.cleanup() }
        let file = dir.file("e.bin")
        let data = bytes(5000, seed: 8)
        settledFile(file, data)
        let env = ["HOME": dir.path, "XDG_CACHE_HOME": dir.file("xdg")]
        let on = DigestCache(environment: env)
        XCTAssertEqual(try on.sha256(file: file), plainDigest(data))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.file("xdg/prune-cluster/digests")))

        // Off: the right digest, nothing cached, nothing written; a planted entry is not read.
        var off = env
        off["PRUNE_DIGEST_CACHE"] = "off"
        let disabled = DigestCache(environment: off)
        XCTAssertNil(disabled.path)
        var entries = DigestCache.parse(DigestCache.read(dir.file("xdg/prune-cluster/digests")))
        entries[0].sha256 = String(repeating: "cd", count: 32)
        try DigestCache.render(entries).write(toFile: dir.file("xdg/prune-cluster/digests"), atomically: false, encoding: .utf8)
        XCTAssertEqual(try disabled.sha256(file: file), plainDigest(data))
        XCTAssertNil(disabled.cachedSHA256(file: file))
        let listing = try FileManager.default.subpathsOfDirectory(atPath: dir.path).sorted()
        XCTAssertEqual(listing, ["e.bin", "xdg", "xdg/prune-cluster", "xdg/prune-cluster/digests", "xdg/prune-cluster/digests.lock"])
    }

    func testCapacityDropsTheOldestEntries() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let files = (0..<5).map { dir.file("f\($0)") }
        for (i, f) in files.enumerated() { XCTAssertTrue(FileManager.default.createFile(atPath: f, contents: Data(bytes(100, seed: UInt8(i))))) }
        usleep(120_000)
        let cache = DigestCache(path: dir.file("digests"), capacity: 3)
        for f in files { _ = try cache.sha256(file: f) }
        XCTAssertEqual(DigestCache.parse(DigestCache.read(dir.file("digests"))).map(\.path), Array(files.suffix(3)))
    }

    /// Several threads, each with its own cache object (as separate processes would have)
    /// on one cache file, record different files at once: no entry may be lost.
    func testConcurrentWritersInThreadsLoseNothing() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let cachePath = dir.file("digests")
        let threads = 8, perThread = 12
        var expected: [String: String] = [:]
        for t in 0..<threads {
            for i in 0..<perThread {
                let data = bytes(2000 + i, seed: UInt8(t * perThread + i))
                let f = dir.file("t\(t)-\(i)")
                XCTAssertTrue(FileManager.default.createFile(atPath: f, contents: Data(data)))
                expected[f] = plainDigest(data)
            }
        }
        usleep(120_000)
        final class Counter: @unchecked Sendable {
            let lock = NSLock()
            var value = 0
            func increment() { lock.lock(); value += 1; lock.unlock() }
        }
        let wrong = Counter()
        let root = dir.path, want = expected
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let cache = DigestCache(path: cachePath)
            for i in 0..<perThread {
                let f = (root as NSString).appendingPathComponent("t\(t)-\(i)")
                if (try? cache.sha256(file: f)) != want[f] { wrong.increment() }
            }
        }
        XCTAssertEqual(wrong.value, 0)
        let entries = DigestCache.parse(DigestCache.read(cachePath))
        XCTAssertEqual(entries.count, threads * perThread)
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: entries.map { ($0.path, $0.sha256) }), expected)
        // No leftover temporary files beside the cache.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }, [])
    }

    /// The same with real processes: this test binary re-run as children, each in the
    /// mode of `testChildWriterHelper`.
    func testConcurrentWritersInProcessesLoseNothing() throws {
        // In a child that ran more than its helper, never start grandchildren.
        if ProcessInfo.processInfo.environment["PRUNE_DIGEST_TEST_CHILD"] != nil { return }
        let dir = TempDir(); defer { dir.cleanup() }
        let cachePath = dir.file("digests")
        let children = 4, perChild = 15
        var expected: [String: String] = [:]
        for c in 0..<children {
            for i in 0..<perChild {
                let data = bytes(3000 + i, seed: UInt8(c * perChild + i))
                let f = dir.file("p\(c)-\(i)")
                XCTAssertTrue(FileManager.default.createFile(atPath: f, contents: Data(data)))
                expected[f] = plainDigest(data)
            }
        }
        usleep(120_000)
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        var processes: [Background] = []
        for c in 0..<children {
            let job: String = "\(cachePath)|\(dir.path)/p\(c)-|\(perChild)"
            processes.append(try Background(exe, ["TensorsTests.DigestCacheTests/testChildWriterHelper"], environment: ["PRUNE_DIGEST_TEST_CHILD": job]))
        }
        for p in processes {
            XCTAssertEqual(p.wait(seconds: 120), 0, p.stderr)
        }
        let entries = DigestCache.parse(DigestCache.read(cachePath))
        XCTAssertEqual(entries.count, children * perChild)
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: entries.map { ($0.path, $0.sha256) }), expected)
    }

    /// Not a test by itself: the body of a child process of the test above.
    func testChildWriterHelper() throws {
        guard let spec = ProcessInfo.processInfo.environment["PRUNE_DIGEST_TEST_CHILD"] else { return }
        let parts = spec.split(separator: "|").map(String.init)
        let cache = DigestCache(path: parts[0])
        for i in 0..<Int(parts[2])! {
            let f = parts[1] + "\(i)"
            guard let data = FileManager.default.contents(atPath: f) else { exit(3) }
            guard try cache.sha256(file: f) == plainDigest([UInt8](data)) else { exit(4) }
        }
        exit(0)
    }
}
