import CZlib

/// gzip decompression through zlib, for data sets shipped as `.gz` (Debian's
/// dataset-fashion-mnist). Every member is decoded and checked against its CRC-32 and
/// length (zlib does both); anything malformed is a `Gzip.Failure` saying what.
public enum Gzip {
    /// What is wrong with the compressed bytes (the caller adds the file name).
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// True when the bytes start with the gzip magic number.
    public static func isGzip(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B
    }

    /// The decompressed bytes of all members (concatenated members decode as their
    /// concatenation; zero padding after the last is allowed); refuses output beyond
    /// `limit` bytes.
    public static func decompress(_ bytes: [UInt8], limit: Int = 1 << 32) throws -> [UInt8] {
        guard isGzip(bytes) else { throw Failure("not gzip data (bad magic number)") }
        var stream = z_stream()
        // 16 + MAX_WBITS: gzip wrapper only, with its CRC-32 and length checked.
        guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw Failure("zlib cannot start inflating")
        }
        defer { inflateEnd(&stream) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var input = bytes
        return try input.withUnsafeMutableBufferPointer { inBuf -> [UInt8] in
            stream.next_in = inBuf.baseAddress
            stream.avail_in = UInt32(inBuf.count)
            while true {
                let status = chunk.withUnsafeMutableBufferPointer { c -> Int32 in
                    stream.next_out = c.baseAddress
                    stream.avail_out = UInt32(c.count)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                let produced = chunk.count - Int(stream.avail_out)
                guard out.count + produced <= limit else { throw Failure("decompressed data exceeds \(limit) bytes") }
                out += chunk[0..<produced]
                switch status {
                case Z_OK:
                    continue
                case Z_STREAM_END:
                    let rest = UnsafeBufferPointer(start: stream.next_in, count: Int(stream.avail_in))
                    if rest.allSatisfy({ $0 == 0 }) { return out }
                    guard rest.count >= 2, rest[0] == 0x1F, rest[1] == 0x8B else {
                        throw Failure("not gzip data after member end (\(rest.count) trailing bytes)")
                    }
                    guard inflateReset(&stream) == Z_OK else { throw Failure("zlib cannot start the next member") }
                case Z_BUF_ERROR where stream.avail_in == 0:
                    throw Failure("gzip data is truncated")
                default:
                    throw Failure(describe(stream.msg.map { String(cString: $0) } ?? "zlib error \(status)"))
                }
            }
        }
    }

    /// zlib's message in the words of the rest of this project's errors.
    private static func describe(_ zlibMessage: String) -> String {
        switch zlibMessage {
        case "incorrect data check": return "gzip CRC-32 mismatch: the data is corrupt"
        case "incorrect length check": return "gzip member length disagrees with its trailer"
        case "unknown compression method": return "gzip compression method is not deflate"
        default: return "gzip data is corrupt (\(zlibMessage))"
        }
    }
}
