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
        if let tensor { return "\(file): tensor '\(tensor)': \(message)" }
        return "\(file): \(message)"
    }
}
