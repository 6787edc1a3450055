import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A per-host cache of file digests, so a checkpoint is hashed once per host and not once
/// per process: the coordinator, each worker and the assembler all ask for the same shards.
///
/// An entry is keyed by what `stat` says of a regular file: device, inode, size, mtime and
/// ctime, both with nanoseconds. Any write to the file, `touch`, `chmod`, a rename over it
/// or a copy in its place changes at least the ctime (which no user can set back), so the
/// entry no longer matches and the file is hashed again.
///
/// The cache is one line file, by default `$XDG_CACHE_HOME/prune-cluster/digests`
/// (`~/.cache/prune-cluster/digests`); `PRUNE_DIGEST_CACHE=PATH` moves it and
/// `PRUNE_DIGEST_CACHE=off` turns caching off (every call hashes). Updates take an
/// exclusive `flock` on `PATH.lock`, re-read the file, merge, and replace it atomically
/// (temporary file, fsync, rename), so concurrent writers in several processes lose no
/// entries and readers never see a half-written file. Lines that do not parse or whose
/// checksum does not match are ignored; the cache never makes a call fail: when it cannot
/// be read or written the file is simply hashed.
///
/// A file whose mtime or ctime is not clearly older than the start of hashing (50 ms; 2 s
/// on a file system without sub-second timestamps) is hashed but not recorded ("racy", as
/// git calls it): a write landing in the same timestamp tick as the stat could otherwise
/// leave a stale entry behind. Nor is a file whose stat changed while it was hashed.
public final class DigestCache: @unchecked Sendable {
    /// The cache every caller uses, configured from the environment.
    public static let shared = DigestCache(environment: ProcessInfo.processInfo.environment)

    /// The cache file, or nil when caching is off.
    public let path: String?
    /// At most this many entries are kept; the least recently recorded go first.
    public let capacity: Int
    /// How much older than the start of hashing a file's timestamps must be for it to be
    /// recorded (timestamps come from a clock that may lag by a tick).
    public var racyWindow: TimeInterval = 0.05

    private let mutex = NSLock()
    /// Entries this process has read or written, by key.
    private var memo: [Key: String] = [:]

    public init(path: String?, capacity: Int = 1024) {
        self.path = path
        self.capacity = max(1, capacity)
    }

    public convenience init(environment: [String: String]) {
        self.init(path: DigestCache.path(environment: environment))
    }

    /// Where the cache lives for this environment, or nil when it is off.
    public static func path(environment env: [String: String]) -> String? {
        if let explicit = env["PRUNE_DIGEST_CACHE"], !explicit.isEmpty {
            return explicit.lowercased() == "off" ? nil : explicit
        }
        var base = env["XDG_CACHE_HOME"] ?? ""
        if !base.hasPrefix("/") {  // the XDG spec says relative values are to be ignored
            guard let home = env["HOME"], home.hasPrefix("/") else { return nil }
            base = (home as NSString).appendingPathComponent(".cache")
        }
        return ((base as NSString).appendingPathComponent("prune-cluster") as NSString).appendingPathComponent("digests")
    }

    /// The identity of one version of a regular file.
    public struct Key: Hashable, Sendable {
        public var device: UInt64
        public var inode: UInt64
        public var size: Int64
        public var mtimeSeconds: Int64
        public var mtimeNanoseconds: Int64
        public var ctimeSeconds: Int64
        public var ctimeNanoseconds: Int64

        init(_ st: stat) {
            device = UInt64(st.st_dev)
            inode = UInt64(st.st_ino)
            size = Int64(st.st_size)
            #if canImport(Darwin)
            mtimeSeconds = Int64(st.st_mtimespec.tv_sec); mtimeNanoseconds = Int64(st.st_mtimespec.tv_nsec)
            ctimeSeconds = Int64(st.st_ctimespec.tv_sec); ctimeNanoseconds = Int64(st.st_ctimespec.tv_nsec)
            #else
            mtimeSeconds = Int64(st.st_mtim.tv_sec); mtimeNanoseconds = Int64(st.st_mtim.tv_nsec)
            ctimeSeconds = Int64(st.st_ctim.tv_sec); ctimeNanoseconds = Int64(st.st_ctim.tv_nsec)
            #endif
        }

        init(fields: [Substring]) throws {
            guard fields.count == 7, let d = UInt64(fields[0]), let i = UInt64(fields[1]), let s = Int64(fields[2]),
                  let ms = Int64(fields[3]), let mn = Int64(fields[4]), let cs = Int64(fields[5]), let cn = Int64(fields[6]),
                  s >= 0, (0..<1_000_000_000).contains(mn), (0..<1_000_000_000).contains(cn) else { throw ParseError() }
            device = d; inode = i; size = s
            mtimeSeconds = ms; mtimeNanoseconds = mn; ctimeSeconds = cs; ctimeNanoseconds = cn
        }

        var fields: String {
            "\(device) \(inode) \(size) \(mtimeSeconds) \(mtimeNanoseconds) \(ctimeSeconds) \(ctimeNanoseconds)"
        }

        /// How much older than the start of hashing the file must be to be recorded: a file
        /// system that keeps whole seconds only (both nanosecond fields 0) gets 2 s, as a
        /// write within the same second would not change its timestamps.
        func racyWindow(_ fine: TimeInterval) -> TimeInterval {
            mtimeNanoseconds == 0 && ctimeNanoseconds == 0 ? max(fine, 2) : fine
        }

        /// The later of mtime and ctime, in seconds since the epoch.
        var newestTimestamp: Double {
            max(Double(mtimeSeconds) + Double(mtimeNanoseconds) * 1e-9, Double(ctimeSeconds) + Double(ctimeNanoseconds) * 1e-9)
        }
    }

    private struct ParseError: Error {}

    /// One line of the cache file.
    struct Entry {
        var key: Key
        var sha256: String
        /// The path the file had when it was hashed: for people reading the file, not part of the key.
        var path: String
    }

    static let header = "# prune-cluster digest cache v1: dev ino size mtime_s mtime_ns ctime_s ctime_ns sha256 check path"

    // MARK: - Use

    /// The sha256 of the file at `path`, from the cache when its stat matches an entry,
    /// else computed (and recorded when the file is a settled regular file).
    public func sha256(file path: String) throws -> String {
        let started = Date().timeIntervalSince1970
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CheckpointError(file: path, "cannot open for reading: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard self.path != nil, fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            return try SHA256Stream.hex(fileDescriptor: fd, path: path)
        }
        let key = Key(st)
        if let hit = cached(key) { return hit }
        let digest = try SHA256Stream.hex(fileDescriptor: fd, path: path)
        var after = stat()
        if fstat(fd, &after) == 0, Key(after) == key, key.newestTimestamp < started - key.racyWindow(racyWindow) {
            record(Entry(key: key, sha256: digest, path: absolute(path)))
        }
        return digest
    }

    /// The cached digest of the file at `path` as it is now, or nil (never hashes).
    public func cachedSHA256(file path: String) -> String? {
        var st = stat()
        guard self.path != nil, stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return cached(Key(st))
    }

    private func cached(_ key: Key) -> String? {
        mutex.lock()
        defer { mutex.unlock() }
        if let hit = memo[key] { return hit }
        guard let file = path else { return nil }
        for e in DigestCache.parse(DigestCache.read(file)) { memo[e.key] = e.sha256 }
        return memo[key]
    }

    /// Adds an entry under the lock: re-reads the file so entries other processes wrote
    /// meanwhile are kept, drops older versions of the same inode, writes it back atomically.
    private func record(_ entry: Entry) {
        mutex.lock()
        defer { mutex.unlock() }
        memo[entry.key] = entry.sha256
        guard let file = path else { return }
        let dir = (file as NSString).deletingLastPathComponent
        if !dir.isEmpty, !FileManager.default.fileExists(atPath: dir) {
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let lockFD = open(file + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else { return }
        defer { close(lockFD) }
        while flock(lockFD, LOCK_EX) != 0 {
            guard errno == EINTR else { return }
        }
        defer { _ = flock(lockFD, LOCK_UN) }
        var entries = DigestCache.parse(DigestCache.read(file)).filter {
            !($0.key.device == entry.key.device && $0.key.inode == entry.key.inode)
        }
        entries.append(entry)
        if entries.count > capacity { entries.removeFirst(entries.count - capacity) }
        try? AtomicFileWriter.write(Array(DigestCache.render(entries).utf8), to: file)
    }

    private func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : (FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(path)
    }

    // MARK: - The file

    /// The whole cache file, or "" when it is missing, unreadable or absurdly large.
    static func read(_ path: String) -> String {
        guard let data = FileManager.default.contents(atPath: path), data.count < 64 << 20 else { return "" }
        return String(decoding: data, as: UTF8.self)
    }

    /// Valid entries, in file order; anything malformed is skipped.
    static func parse(_ text: String) -> [Entry] {
        var entries: [Entry] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) where !line.hasPrefix("#") {
            let parts = line.split(separator: " ", maxSplits: 9, omittingEmptySubsequences: false)
            guard parts.count == 10, let key = try? Key(fields: Array(parts[0..<7])) else { continue }
            let digest = String(parts[7]), check = String(parts[8]), path = String(parts[9])
            guard isHex(digest, count: 64), check == checksum(key: key, sha256: digest, path: path) else { continue }
            entries.append(Entry(key: key, sha256: digest, path: path))
        }
        return entries
    }

    static func render(_ entries: [Entry]) -> String {
        var text = header + "\n"
        for e in entries {
            let path = String(e.path.map { $0 == "\n" || $0 == "\r" ? "?" : $0 })
            text += "\(e.key.fields) \(e.sha256) \(checksum(key: e.key, sha256: e.sha256, path: path)) \(path)\n"
        }
        return text
    }

    /// 16 hex digits of the sha256 of a line's other fields: a torn or bit-flipped line is
    /// dropped instead of vouching for the wrong file.
    static func checksum(key: Key, sha256: String, path: String) -> String {
        let line = Array("\(key.fields) \(sha256) \(path)".utf8)
        return String(line.withUnsafeBytes { SHA256Stream.hex($0) }.prefix(16))
    }

    private static func isHex(_ s: String, count: Int) -> Bool {
        s.utf8.count == count && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }
}
