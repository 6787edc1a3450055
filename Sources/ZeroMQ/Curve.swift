import CZeroMQ

/// CurveZMQ keys and the Z85 text encoding they are exchanged in.
///
/// Keys are 32 bytes, written as 40 Z85 characters.
public enum Curve {
    /// `true` when the linked libzmq was built with CURVE support (`zmq_has("curve")`).
    public static var isAvailable: Bool { zmq_has("curve") != 0 }

    /// A new random key pair (`zmq_curve_keypair`), both keys Z85 (40 characters).
    /// - Throws: ``ZMQError`` (`ENOTSUP` when libzmq has no CURVE support).
    public static func keyPair() throws -> (publicKey: String, secretKey: String) {
        var pub = [CChar](repeating: 0, count: 41)
        var sec = [CChar](repeating: 0, count: 41)
        try zmqRequire("zmq_curve_keypair") { zmq_curve_keypair(&pub, &sec) }
        return (string(pub), string(sec))
    }

    /// The public key that belongs to a Z85 secret key (`zmq_curve_public`).
    /// - Throws: ``ZMQError`` with `EINVAL` when `secret` is not a valid Z85 key.
    public static func publicKey(fromSecret secret: String) throws -> String {
        guard isValidKey(secret) else {
            throw ZMQError(code: errnoEINVAL, call: "zmq_curve_public")
        }
        var pub = [CChar](repeating: 0, count: 41)
        try zmqRequire("zmq_curve_public") { zmq_curve_public(&pub, secret) }
        return string(pub)
    }

    /// Z85-encodes `bytes` (`zmq_z85_encode`); `nil` unless the count is a multiple of 4.
    public static func z85Encode(_ bytes: [UInt8]) -> String? {
        guard bytes.count % 4 == 0 else { return nil }
        if bytes.isEmpty { return "" }
        var out = [CChar](repeating: 0, count: bytes.count / 4 * 5 + 1)
        guard zmq_z85_encode(&out, bytes, bytes.count) != nil else { return nil }
        return string(out)
    }

    /// Decodes Z85 text (`zmq_z85_decode`); `nil` unless the length is a multiple of 5 and
    /// every character is in the Z85 alphabet (and each group fits in 32 bits).
    public static func z85Decode(_ text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 5 == 0 else { return nil }
        if utf8.isEmpty { return [] }
        // Printable ASCII only: no NUL that would end the C string early.
        guard utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { return nil }
        var out = [UInt8](repeating: 0, count: utf8.count / 5 * 4)
        guard zmq_z85_decode(&out, text) != nil else { return nil }
        return out
    }

    /// `true` when `z85` is a 40-character Z85 string, i.e. a well-formed 32-byte key.
    public static func isValidKey(_ z85: String) -> Bool {
        z85.utf8.count == 40 && z85Decode(z85)?.count == 32
    }

    private static func string(_ chars: [CChar]) -> String {
        chars.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}
