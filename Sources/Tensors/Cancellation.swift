import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Thrown at a checkpoint of work whose token was cancelled.
public struct CancelledError: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "cancelled" }
}

/// A flag another thread sets to ask long-running work to stop (a worker's I/O thread
/// sets it when the coordinator sends Cancel for the task its compute thread runs).
public final class CancellationToken: Sendable {
    private let flag = Atomic<Bool>(false)

    public init() {}

    public func cancel() { flag.store(true, ordering: .releasing) }

    public var isCancelled: Bool { flag.load(ordering: .acquiring) }
}

/// Cooperative cancellation, after Swift's `Task.checkCancellation()` but for the plain
/// threads a worker computes on: `run(with:)` binds a token to the current thread, and
/// long loops deep in the model and pruning code call `checkpoint()` between their steps
/// (a batch of calibration rows, a block of SparseGPT columns, a pulled chunk) without
/// every signature in between carrying the token. Work outside `run(with:)` (the
/// in-process runner, tests) is never cancelled.
public enum Cancellation {
    /// One pthread key for the process: the token bound to each thread, unretained (the
    /// token outlives the `run(with:)` call that bound it).
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
        return key
    }()

    /// Runs `body` with `token` bound to this thread; restores what was bound before.
    public static func run<T>(with token: CancellationToken, _ body: () throws -> T) rethrows -> T {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, Unmanaged.passUnretained(token).toOpaque())
        defer { pthread_setspecific(key, previous) }
        return try body()
    }

    /// Whether the token bound to this thread (if any) was cancelled.
    public static var isCancelled: Bool {
        guard let raw = pthread_getspecific(key) else { return false }
        return Unmanaged<CancellationToken>.fromOpaque(raw).takeUnretainedValue().isCancelled
    }

    /// Throws `CancelledError` when the token bound to this thread was cancelled.
    public static func checkpoint() throws {
        if isCancelled { throw CancelledError() }
    }
}
