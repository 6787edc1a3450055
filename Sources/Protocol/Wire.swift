import Foundation
import SwiftProtobuf
import Tensors

/// A decoded message: the envelope and its payload frames, already checked against
/// the sizes and digests the envelope declares. `payloads` holds the frames only: a
/// payload the envelope marks `stored` has none (its bytes are in the artifact directory).
public struct WireMessage {
    public var envelope: Prune_V1_Envelope
    public var payloads: [[UInt8]]

    public init(_ envelope: Prune_V1_Envelope, payloads: [[UInt8]] = []) {
        self.envelope = envelope
        self.payloads = payloads
    }

    /// A payload ready to send: its frame and the description the envelope carries.
    public struct Outgoing {
        public let info: Prune_V1_PayloadInfo
        public let frame: [UInt8]

        /// The bytes as they are.
        public init(name: String, bytes: [UInt8]) {
            var info = Prune_V1_PayloadInfo()
            info.name = name
            info.size = UInt64(bytes.count)
            info.sha256 = bytes.withUnsafeBytes { SHA256Stream.hex($0) }
            self.info = info
            frame = bytes
        }

        /// The bytes as they are, with no digest: only for a Peer's share, a transient
        /// gradient that lives for one training step. Hashing it at both ends would cost
        /// about a fifth of the step it speeds up; the transport (TCP, CURVE's MAC) already
        /// guards it in flight, and its content is checked by the leader's recomputation.
        public init(transient name: String, bytes: [UInt8]) {
            var info = Prune_V1_PayloadInfo()
            info.name = name
            info.size = UInt64(bytes.count)
            self.info = info
            frame = bytes
        }

        /// Packed mask bits, coded in the first of `codings` that applies: `NMMaskCoding`
        /// for a mask whose every group of M keeps N (`nm`), `MaskCoding` (range coding)
        /// where it saves at least 1/32. `sha256` names the mask bits either way, so the
        /// receiver stores the same artifact.
        public init(name: String, maskBits: [UInt8], rows: Int, cols: Int, nm: (n: Int, m: Int)?, codings: [String]) {
            for coding in codings {
                var frame: [UInt8]?
                switch coding {
                case NMMaskCoding.name:
                    if let nm { frame = NMMaskCoding.encode(bits: maskBits, rows: rows, cols: cols, n: nm.n, m: nm.m) }
                case MaskCoding.name:
                    // A mask near 1 bit per weight of entropy (50% unstructured) gains
                    // nothing from coding and costs both ends a pass over its bits.
                    if MaskCoding.mayPay(bits: maskBits, rows: rows, cols: cols, group: nm?.m ?? 0),
                       let coded = MaskCoding.encode(bits: maskBits, rows: rows, cols: cols, group: nm?.m ?? 0),
                       coded.count < maskBits.count - maskBits.count / 32 {
                        frame = coded
                    }
                default:
                    break
                }
                if let frame {
                    var info = Prune_V1_PayloadInfo()
                    info.name = name
                    info.size = UInt64(frame.count)
                    info.sha256 = maskBits.withUnsafeBytes { SHA256Stream.hex($0) }
                    info.coding = coding
                    self.info = info
                    self.frame = frame
                    return
                }
            }
            self = Outgoing(name: name, bytes: maskBits)
        }
    }

    /// The frames to send: the envelope (with payload descriptions filled in) and the
    /// payloads. `names` label the payload frames ("mask", "chunk", ...).
    public static func frames(_ envelope: Prune_V1_Envelope, payloads: [(name: String, bytes: [UInt8])] = []) throws -> [[UInt8]] {
        try frames(envelope, outgoing: payloads.map { Outgoing(name: $0.name, bytes: $0.bytes) })
    }

    /// The frames to send for payloads that may be coded.
    public static func frames(_ envelope: Prune_V1_Envelope, outgoing: [Outgoing]) throws -> [[UInt8]] {
        var e = envelope
        e.protocolVersion = Settings.protocolVersion
        e.payloads = outgoing.map(\.info)
        let head: [UInt8] = try e.serializedBytes()
        return [head] + outgoing.map(\.frame)
    }

    /// The frames of a message whose payloads the sender already stored in the
    /// coordinator's artifact directory: the envelope alone, each payload described by
    /// name, size and sha256 with `stored` set.
    public static func frames(_ envelope: Prune_V1_Envelope, stored: [(name: String, sha256: String, size: Int)]) throws -> [[UInt8]] {
        var e = envelope
        e.protocolVersion = Settings.protocolVersion
        e.payloads = stored.map { p in
            var info = Prune_V1_PayloadInfo()
            info.name = p.name
            info.size = UInt64(p.size)
            info.sha256 = p.sha256
            info.stored = true
            return info
        }
        return [try e.serializedBytes()]
    }

    /// Why a message was dropped.
    public struct DecodeError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Decodes frames (without any routing id). Throws for anything malformed: no
    /// frames, an envelope that does not parse or is too large, an unknown body, payload
    /// frames that do not match their declared count, size or sha256, a coding this
    /// build does not know or a coded frame that does not decode. Coded payloads are
    /// returned decoded.
    public static func decode(_ frames: [[UInt8]], settings: Settings = Settings()) throws -> WireMessage {
        guard let head = frames.first else { throw DecodeError(description: "empty message") }
        guard head.count <= settings.maxEnvelopeBytes else {
            throw DecodeError(description: "envelope of \(head.count) bytes exceeds \(settings.maxEnvelopeBytes)")
        }
        let envelope: Prune_V1_Envelope
        do {
            envelope = try Prune_V1_Envelope(serializedBytes: head)
        } catch {
            throw DecodeError(description: "envelope is not a prune.v1.Envelope")
        }
        guard envelope.body != nil else { throw DecodeError(description: "envelope has no body") }
        let payloads = Array(frames.dropFirst())
        // Stored payloads (in the artifact directory) have no frame; the others do, in order.
        let inFrames = envelope.payloads.filter { !$0.stored }
        guard payloads.count == inFrames.count else {
            throw DecodeError(description: "\(payloads.count) payload frames, envelope declares \(inFrames.count)")
        }
        for info in envelope.payloads where info.stored {
            guard SHA256Stream.isHexDigest(info.sha256) else {
                throw DecodeError(description: "stored payload '\(info.name)' names no sha256")
            }
        }
        var decoded: [[UInt8]] = []
        decoded.reserveCapacity(payloads.count)
        // What coded payloads may expand to, together: one frame's worth.
        var decodeBudget = settings.maxFrameBytes > 0 ? Int(clamping: settings.maxFrameBytes) : 1 << 30
        for (frame, info) in zip(payloads, inFrames) {
            guard UInt64(frame.count) == info.size else {
                throw DecodeError(description: "payload '\(info.name)' has \(frame.count) bytes, declared \(info.size)")
            }
            var bytes = frame
            switch info.coding {
            case "": break
            case MaskCoding.name, NMMaskCoding.name:
                guard info.name == "mask" else {
                    throw DecodeError(description: "payload '\(info.name)' has coding '\(info.coding)', which only a mask may have")
                }
                do {
                    bytes = info.coding == MaskCoding.name ? try MaskCoding.decode(frame, maxBytes: decodeBudget)
                                                           : try NMMaskCoding.decode(frame, maxBytes: decodeBudget)
                } catch {
                    throw DecodeError(description: "payload '\(info.name)': \(error)")
                }
                decodeBudget -= bytes.count
            default:
                throw DecodeError(description: "payload '\(info.name)' has unknown coding '\(info.coding)'")
            }
            // A Peer's share may travel without a digest (`Outgoing(transient:)`).
            if info.sha256.isEmpty, info.coding.isEmpty, envelope.allowsTransientPayloads {
                decoded.append(bytes)
                continue
            }
            let digest = bytes.withUnsafeBytes { SHA256Stream.hex($0) }
            guard digest == info.sha256 else { throw DecodeError(description: "payload '\(info.name)' fails its sha256") }
            decoded.append(bytes)
        }
        return WireMessage(envelope, payloads: decoded)
    }

    /// The body's name, for logs.
    public var kind: String {
        switch envelope.body {
        case .hello: return "Hello"
        case .welcome: return "Welcome"
        case .reject: return "Reject"
        case .heartbeat: return "Heartbeat"
        case .assign: return "Assign"
        case .result: return "Result"
        case .fail: return "Fail"
        case .cancel: return "Cancel"
        case .shutdown: return "Shutdown"
        case .chunkRequest: return "ChunkRequest"
        case .chunk: return "Chunk"
        case .ack: return "Ack"
        case .goodbye: return "Goodbye"
        case .help: return "Help"
        case .peer: return "Peer"
        case .none: return "empty"
        }
    }
}

extension Prune_V1_Envelope {
    /// Whether payloads may travel without a digest: a span group's shares.
    public var allowsTransientPayloads: Bool {
        switch body {
        case .peer: return true
        default: return false
        }
    }

    /// An envelope with the current protocol version and the given body.
    public static func with(_ body: Prune_V1_Envelope.OneOf_Body) -> Prune_V1_Envelope {
        var e = Prune_V1_Envelope()
        e.protocolVersion = Settings.protocolVersion
        e.body = body
        return e
    }
}
