/// What a calibration-aware method gathers from a Linear layer's inputs, as
/// `ImportanceCriterion` is what a data-free one scores with: added batch by batch on the
/// shards of calibration samples, serialized between tasks, merged across shards in shard
/// order (so the bytes do not depend on how many workers ran), then used to prune the
/// layer. Wanda's column norms and SparseGPT's Hessian conform; a method names its
/// statistic (`JobSpec.Method.statistic`), so no work code switches on the method.
public protocol CalibrationStatistic: Sendable {
    /// An empty statistic of an input with `columns` features.
    init(columns: Int)
    init(serialized bytes: [UInt8]) throws
    var columns: Int { get }
    /// One batch of `tokens` input rows, row-major.
    mutating func add(_ batch: UnsafeBufferPointer<Float>, tokens: Int)
    /// Adds another shard's statistic (the caller merges in shard order).
    mutating func merge(with other: Self) throws
    func serialized() -> [UInt8]
    /// The columns of a serialized statistic, or nil when the bytes are not one: what a
    /// coordinator checks of a result it only stores (as cheaply as the format allows).
    static func columns(ofSerialized bytes: [UInt8]) -> Int?
    /// Why serialized bytes cannot be a shard's statistic over `samples` sequences of
    /// `tokens` tokens (nil when they can): what the coordinator checks beyond the width of a
    /// result it only stores, for a statistic whose counts later steps rely on.
    static func problem(inSerialized bytes: [UInt8], samples: Int, tokens: Int) -> String?
    /// The rule the method's zeros follow for a spec's pattern (Wanda compares
    /// `unstructured` weights within each output row, as the paper does).
    static func comparisonPattern(for pattern: SparsityPattern) -> SparsityPattern
    /// Prunes a layer's weights (rows × columns, row-major) with the merged statistic.
    func prune(weights: [Float], rows: Int, options: LayerPruneOptions, layer: String) throws -> PrunedLayer
}

extension CalibrationStatistic {
    public static func comparisonPattern(for pattern: SparsityPattern) -> SparsityPattern { pattern }

    public static func problem(inSerialized bytes: [UInt8], samples: Int, tokens: Int) -> String? { nil }

    /// By reading the whole statistic (formats without a self-checking header).
    public static func columns(ofSerialized bytes: [UInt8]) -> Int? {
        (try? Self(serialized: bytes))?.columns
    }

    /// Shards' serialized statistics merged in the order given, loading one at a time.
    public static func merged(count: Int, layer: String, _ shard: (Int) throws -> [UInt8]) throws -> Self {
        guard count > 0 else { throw PruningError("\(layer): no calibration statistics") }
        var merged = try Self(serialized: shard(0))
        for i in 1..<count {
            let part = try Self(serialized: shard(i))
            guard part.columns == merged.columns else { throw PruningError("\(layer): statistics of different widths") }
            try merged.merge(with: part)
        }
        return merged
    }
}

/// How a calibrated method prunes one layer.
public struct LayerPruneOptions: Sendable {
    public var pattern: SparsityPattern
    public var sparsity: Double
    /// SparseGPT's column block and dampening (fraction of the mean diagonal).
    public var blockSize: Int
    public var damp: Double

    public init(pattern: SparsityPattern, sparsity: Double, blockSize: Int, damp: Double) {
        self.pattern = pattern
        self.sparsity = sparsity
        self.blockSize = blockSize
        self.damp = damp
    }
}

/// A pruned layer: its mask, and what a method that updates weights gives besides.
public struct PrunedLayer: Sendable {
    public var mask: Mask
    /// SparseGPT's updated weights (rows × cols, pruned ones zero).
    public var updated: [Float]?
    /// ‖WX − ŴX‖² over the calibration tokens (SparseGPT).
    public var error: Double?

    public init(mask: Mask, updated: [Float]?, error: Double?) {
        self.mask = mask
        self.updated = updated
        self.error = error
    }

    /// The weights the pruned layer computes with: the updated ones, or the dense ones
    /// with the pruned entries zeroed.
    public func values(dense: [Float]) -> [Float] {
        if let updated { return updated }
        var w = [Float](repeating: 0, count: dense.count)
        dense.withUnsafeBytes { source in
            w.withUnsafeMutableBytes { MaskApplication.apply(mask, source: source, elementSize: 4, into: $0) }
        }
        return w
    }
}

extension WandaStatistics: CalibrationStatistic {
    public mutating func add(_ batch: UnsafeBufferPointer<Float>, tokens: Int) {
        add(batch: batch, tokens: tokens, columns: batch.count / max(tokens, 1))
    }

    public mutating func merge(with other: WandaStatistics) throws { merge(other) }

    public static func comparisonPattern(for pattern: SparsityPattern) -> SparsityPattern {
        pattern == .unstructured ? .perRow : pattern
    }

    /// Wanda: |w|·‖X_j‖, compared within each output row for unstructured (as the paper).
    public func prune(weights: [Float], rows: Int, options: LayerPruneOptions, layer: String) throws -> PrunedLayer {
        let cols = columns
        guard weights.count == rows * cols else { throw PruningError("\(layer): \(weights.count) weights, expected \(rows)×\(cols)") }
        let pattern = Self.comparisonPattern(for: options.pattern)
        let criterion = WandaCriterion(statistics: self)
        var scores = [Float](repeating: 0, count: rows * cols)
        weights.withUnsafeBufferPointer { w in
            scores.withUnsafeMutableBufferPointer { criterion.scores(WeightBlock(name: layer, values: w, rows: rows, cols: cols), into: $0) }
        }
        let mask = try scores.withUnsafeBufferPointer {
            try MaskSelection.mask(scores: $0, rows: rows, cols: cols, pattern: pattern, sparsity: options.sparsity)
        }
        return PrunedLayer(mask: mask, updated: nil, error: nil)
    }
}

extension SparseGPT: CalibrationStatistic {
    /// The Hessian of an input with `columns` features (the rows come with the layer).
    public init(columns: Int) { self.init(rows: 0, columns: columns) }

    /// From the header, which the length must agree with: a 1536-column Hessian is 9 MB
    /// of F64, and the coordinator checks every shard's on its loop thread.
    public static func columns(ofSerialized bytes: [UInt8]) -> Int? { serializedHeader(bytes)?.columns }

    public mutating func add(_ batch: UnsafeBufferPointer<Float>, tokens: Int) { addBatch(batch, tokens: tokens) }

    public mutating func merge(with other: SparseGPT) throws { merge(other.withRows(rows)) }

    /// SparseGPT's OBS sweep, updating the kept weights.
    public func prune(weights: [Float], rows: Int, options: LayerPruneOptions, layer: String) throws -> PrunedLayer {
        guard weights.count == rows * columns else { throw PruningError("\(layer): \(weights.count) weights, expected \(rows)×\(columns)") }
        var n = 0, m = 0
        if case .nm(let kept, let group) = options.pattern { n = kept; m = group }
        var w = weights
        let (mask, error) = try withRows(rows).prune(weights: &w, sparsity: options.sparsity, n: n, m: m,
                                                     blockSize: options.blockSize, percDamp: options.damp, layer: layer)
        return PrunedLayer(mask: mask, updated: w, error: error)
    }
}
