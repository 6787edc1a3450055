#if canImport(Glibc)
import Glibc
#endif

/// SIGTERM and SIGINT as a request to stop cleanly, for the coordinator's and the worker's
/// loops, which check `received` between polls. Written once for both; `install` returns
/// what was there before, so the caller can put it back.
public enum StopSignal {
    nonisolated(unsafe) private static var signalNumber: sig_atomic_t = 0

    /// The signal that asked to stop (SIGTERM or SIGINT), 0 while none did.
    public static var received: Int32 { signalNumber }

    public struct Previous {
        let term: sighandler_t?
        let int: sighandler_t?
    }

    /// Catches SIGTERM and SIGINT from now on.
    @discardableResult
    public static func install() -> Previous {
        signalNumber = 0
        let term = signal(SIGTERM) { StopSignal.signalNumber = $0 }
        let int = signal(SIGINT) { StopSignal.signalNumber = $0 }
        return Previous(term: term, int: int)
    }

    /// Puts back the handlers `install` replaced.
    public static func restore(_ previous: Previous) {
        signal(SIGTERM, previous.term)
        signal(SIGINT, previous.int)
    }
}
