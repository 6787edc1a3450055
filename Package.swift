// swift-tools-version:6.0
import PackageDescription

/// prune-cluster: distributed pruning of neural-network checkpoints.
/// Modules, bottom to top (arrows point down only):
///   CZeroMQ, COpenBLAS  system libraries
///   CKernels            vectorized exp loops of the forward pass (C)
///   Tensors             dtypes, safetensors read/write, mmap
///   Pruning             masks, patterns, criteria, selection, sparse format
///   Models              GGUF import, tokenizers, forward passes (Llama family, MLP)
///   Protocol            prune.v1 protobuf messages (generated) and frame layout
///   Engine              job spec, planner, phases + in-process executor, assembler, checker
///   ZeroMQ              sockets, multipart frames, poller, CURVE keys over libzmq
///   Cluster             coordinator core + shell, worker, ledger (SQLite), artifacts
///   PruneCLI (`prune`)  the command line
let package = Package(
    name: "prune-cluster",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "prune", targets: ["PruneCLI"]),
        .library(name: "Tensors", targets: ["Tensors"]),
        .library(name: "Pruning", targets: ["Pruning"]),
        .library(name: "Engine", targets: ["Engine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        // Tests spawn children with it: it closes inherited descriptors and waits on a pidfd.
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CZeroMQ", path: "Sources/CZeroMQ", pkgConfig: "libzmq",
                       providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .target(name: "ZeroMQ", dependencies: ["CZeroMQ"]),
        .target(name: "Protocol", dependencies: [
            "Tensors",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .target(name: "Cluster", dependencies: [
            "Engine", "Pruning", "Tensors", "ZeroMQ", "Protocol", "CSQLite",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "Tensors", dependencies: [
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "Pruning", dependencies: ["Tensors", "COpenBLAS"]),
        // The forward pass's exponential loops, vectorized in C (runtime AVX2 dispatch).
        // No FMA contraction: every CPU path must give the same bytes.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        .target(name: "Models", dependencies: ["Tensors", "COpenBLAS", "CKernels"]),
        .target(name: "Engine", dependencies: [
            "Tensors", "Pruning", "Models", "Protocol", "CZlib",
            .product(name: "Yams", package: "Yams"),
        ]),
        .executableTarget(name: "PruneCLI", dependencies: [
            "Engine", "Tensors", "Pruning", "Cluster", "Protocol", "ZeroMQ", "Models",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "PruneBench", dependencies: ["Pruning", "Tensors", "Protocol", "Models", "Engine"], path: "ops/bench/PruneBench"),
        // Builders of small real checkpoints and helpers to run Python and the `prune` binary.
        .target(name: "TestSupport", dependencies: ["Tensors", .product(name: "Subprocess", package: "swift-subprocess"),
                                                  .product(name: "SystemPackage", package: "swift-system")], path: "Tests/TestSupport"),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors", "TestSupport"]),
        .testTarget(name: "PruningTests", dependencies: ["Pruning", "Tensors"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "Pruning", "Tensors", "Models", "TestSupport"]),
        .testTarget(name: "CLITests", dependencies: ["Tensors", "TestSupport"]),
        .testTarget(name: "ZeroMQTests", dependencies: ["ZeroMQ"]),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "CKernels", "Tensors", "TestSupport"]),
        .testTarget(name: "ClusterTests", dependencies: ["Cluster", "Protocol", "ZeroMQ", "Engine", "Tensors", "TestSupport"]),
    ]
)
