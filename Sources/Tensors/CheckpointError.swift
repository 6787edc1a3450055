import Foundation

/// A problem with a checkpoint file, named by file and, where there is one, tensor.
///
/// Its description is the one line the CLI prints: `FILE: tensor 'NAME': what is wrong`.
public struct CheckpointError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let tensor: String?
    public let message: String

    public init(file: String, tensor: String? = nil, _ message: String) {
        self.file = file
        self.tensor = tensor
        self.message = message
    }

    public var description: String {
        if let tensor { return "\(file): tensor '\(CheckpointError.printable(tensor))': \(message)" }
        return "\(file): \(message)"
    }

    /// The short reason of a Foundation file error ("Permission denied", "Not a directory").
    public static func reason(_ error: Error) -> String {
        let ns = error as NSError
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
        return ns.localizedFailureReason ?? ns.localizedDescription
    }

    /// A name from a (possibly hostile) file, with control characters escaped so an
    /// error stays one line.
    public static func printable(_ name: String) -> String {
        guard name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return name }
        return String(SafeTensorsWriter.jsonString(name).dropFirst().dropLast())
    }
}
