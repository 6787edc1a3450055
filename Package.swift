// swift-tools-version:6.0
import PackageDescription

/// prune-cluster: distributed pruning of neural-network checkpoints.
/// Modules, bottom to top (arrows point down only):
///   CZeroMQ, COpenBLAS  system libraries
///   Tensors             dtypes, safetensors read/write, mmap
///   Pruning             masks, patterns, criteria, selection, sparse format
///   Engine              job spec, planner, single-process runner, assembler, checker
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
    ],
    targets: [
        .systemLibrary(name: "CZeroMQ", path: "Sources/CZeroMQ", pkgConfig: "libzmq",
                       providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),
        .target(name: "Tensors", dependencies: [
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "Pruning", dependencies: ["Tensors", "COpenBLAS"]),
        .target(name: "Engine", dependencies: [
            "Tensors", "Pruning",
            .product(name: "Yams", package: "Yams"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "PruneCLI", dependencies: [
            "Engine", "Tensors", "Pruning",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "PruneBench", dependencies: ["Pruning", "Tensors"], path: "ops/bench/PruneBench"),
        // Builders of small real checkpoints and helpers to run Python and the `prune` binary.
        .target(name: "TestSupport", dependencies: ["Tensors"], path: "Tests/TestSupport"),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors", "TestSupport"]),
        .testTarget(name: "PruningTests", dependencies: ["Pruning", "Tensors"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "Pruning", "Tensors", "TestSupport"]),
        .testTarget(name: "CLITests", dependencies: ["Tensors", "TestSupport"]),
    ]
)
