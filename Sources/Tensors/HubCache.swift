import Foundation

/// Models in the local Hugging Face hub cache, by hub id (`ORG/NAME`): the layout
/// huggingface_hub writes (`models--ORG--NAME/refs/main` naming a snapshot,
/// `snapshots/HASH/` holding the files as links into `../../blobs/`). Read only: nothing
/// is ever downloaded.
public enum HubCache {
    /// The cache directory, as huggingface_hub finds it: `HF_HUB_CACHE`, else
    /// `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    public static func directory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let cache = environment["HF_HUB_CACHE"], !cache.isEmpty { return cache }
        if let home = environment["HF_HOME"], !home.isEmpty { return (home as NSString).appendingPathComponent("hub") }
        let user = environment["HOME"] ?? NSHomeDirectory()
        return (user as NSString).appendingPathComponent(".cache/huggingface/hub")
    }

    /// Whether `text` has the shape of a hub id: `ORG/NAME`, each part of letters, digits
    /// and `-_.`, not `.` or `..`, and NAME not a weights or config file's name.
    public static func isHubID(_ text: String) -> Bool {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return false }
        let fileExtensions = [".safetensors", ".gguf", ".bin", ".pt", ".pth", ".json", ".npy"]
        guard !fileExtensions.contains(where: { parts[1].lowercased().hasSuffix($0) }) else { return false }
        return parts.allSatisfy { part in
            !part.isEmpty && part.count <= 96 && part != "." && part != ".." && part.first != "-"
                && part.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
        }
    }

    /// The snapshot directory of `id` at `revision` (a ref such as `main`, or a commit
    /// hash), or nil when the cache does not hold it.
    public static func snapshot(of id: String, revision: String = "main",
                                environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard isHubID(id) else { return nil }
        let repo = (directory(environment: environment) as NSString)
            .appendingPathComponent("models--" + id.replacingOccurrences(of: "/", with: "--"))
        var hash = revision
        let ref = (repo as NSString).appendingPathComponent("refs/\(revision)")
        if let data = FileManager.default.contents(atPath: ref), data.count <= 256 {
            hash = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard !hash.isEmpty, !hash.contains("/"), hash != ".", hash != ".." else { return nil }
        let snapshot = (repo as NSString).appendingPathComponent("snapshots/\(hash)")
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: snapshot, isDirectory: &isDir) && isDir.boolValue ? snapshot : nil
    }
}
