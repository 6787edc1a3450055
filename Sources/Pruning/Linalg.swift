import COpenBLAS
import Foundation

/// F32 and F64, the two precisions the BLAS/LAPACK helpers take: each maps to its
/// s- or d-prefixed routine, so `Linalg` is written once for both.
public protocol LinalgScalar: BinaryFloatingPoint {
    static func blasGemm(_ ta: CBLAS_TRANSPOSE, _ tb: CBLAS_TRANSPOSE, _ m: Int32, _ n: Int32, _ k: Int32, _ alpha: Self,
                         _ a: UnsafePointer<Self>, _ lda: Int32, _ b: UnsafePointer<Self>, _ ldb: Int32,
                         _ beta: Self, _ c: UnsafeMutablePointer<Self>, _ ldc: Int32)
    static func blasSyrk(_ trans: CBLAS_TRANSPOSE, _ n: Int32, _ k: Int32, _ alpha: Self, _ a: UnsafePointer<Self>, _ lda: Int32,
                         _ beta: Self, _ c: UnsafeMutablePointer<Self>, _ ldc: Int32)
    static func blasSymm(_ m: Int32, _ n: Int32, _ alpha: Self, _ a: UnsafePointer<Self>, _ lda: Int32,
                         _ b: UnsafePointer<Self>, _ ldb: Int32, _ beta: Self, _ c: UnsafeMutablePointer<Self>, _ ldc: Int32)
    static func lapackPotrf(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Self>) -> Int32
    static func lapackPotri(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Self>) -> Int32
    static func lapackTrtri(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Self>) -> Int32
    static func lapackPotrs(_ uplo: CChar, _ n: Int32, _ nrhs: Int32, _ a: UnsafePointer<Self>, _ b: UnsafeMutablePointer<Self>, _ ldb: Int32) -> Int32
}

extension Float: LinalgScalar {
    public static func blasGemm(_ ta: CBLAS_TRANSPOSE, _ tb: CBLAS_TRANSPOSE, _ m: Int32, _ n: Int32, _ k: Int32, _ alpha: Float,
                                _ a: UnsafePointer<Float>, _ lda: Int32, _ b: UnsafePointer<Float>, _ ldb: Int32,
                                _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int32) {
        cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }
    public static func blasSyrk(_ trans: CBLAS_TRANSPOSE, _ n: Int32, _ k: Int32, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int32,
                                _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int32) {
        cblas_ssyrk(CblasRowMajor, CblasUpper, trans, n, k, alpha, a, lda, beta, c, ldc)
    }
    public static func blasSymm(_ m: Int32, _ n: Int32, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int32,
                                _ b: UnsafePointer<Float>, _ ldb: Int32, _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int32) {
        cblas_ssymm(CblasRowMajor, CblasRight, CblasUpper, m, n, alpha, a, lda, b, ldb, beta, c, ldc)
    }
    public static func lapackPotrf(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Float>) -> Int32 {
        LAPACKE_spotrf(LAPACK_COL_MAJOR, uplo, n, a, n)
    }
    public static func lapackPotri(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Float>) -> Int32 {
        LAPACKE_spotri(LAPACK_COL_MAJOR, uplo, n, a, n)
    }
    public static func lapackTrtri(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Float>) -> Int32 {
        LAPACKE_strtri(LAPACK_COL_MAJOR, uplo, CChar(UInt8(ascii: "N")), n, a, n)
    }
    public static func lapackPotrs(_ uplo: CChar, _ n: Int32, _ nrhs: Int32, _ a: UnsafePointer<Float>, _ b: UnsafeMutablePointer<Float>, _ ldb: Int32) -> Int32 {
        LAPACKE_spotrs(LAPACK_COL_MAJOR, uplo, n, nrhs, a, n, b, ldb)
    }
}

extension Double: LinalgScalar {
    public static func blasGemm(_ ta: CBLAS_TRANSPOSE, _ tb: CBLAS_TRANSPOSE, _ m: Int32, _ n: Int32, _ k: Int32, _ alpha: Double,
                                _ a: UnsafePointer<Double>, _ lda: Int32, _ b: UnsafePointer<Double>, _ ldb: Int32,
                                _ beta: Double, _ c: UnsafeMutablePointer<Double>, _ ldc: Int32) {
        cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }
    public static func blasSyrk(_ trans: CBLAS_TRANSPOSE, _ n: Int32, _ k: Int32, _ alpha: Double, _ a: UnsafePointer<Double>, _ lda: Int32,
                                _ beta: Double, _ c: UnsafeMutablePointer<Double>, _ ldc: Int32) {
        cblas_dsyrk(CblasRowMajor, CblasUpper, trans, n, k, alpha, a, lda, beta, c, ldc)
    }
    public static func blasSymm(_ m: Int32, _ n: Int32, _ alpha: Double, _ a: UnsafePointer<Double>, _ lda: Int32,
                                _ b: UnsafePointer<Double>, _ ldb: Int32, _ beta: Double, _ c: UnsafeMutablePointer<Double>, _ ldc: Int32) {
        cblas_dsymm(CblasRowMajor, CblasRight, CblasUpper, m, n, alpha, a, lda, b, ldb, beta, c, ldc)
    }
    public static func lapackPotrf(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Double>) -> Int32 {
        LAPACKE_dpotrf(LAPACK_COL_MAJOR, uplo, n, a, n)
    }
    public static func lapackPotri(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Double>) -> Int32 {
        LAPACKE_dpotri(LAPACK_COL_MAJOR, uplo, n, a, n)
    }
    public static func lapackTrtri(_ uplo: CChar, _ n: Int32, _ a: UnsafeMutablePointer<Double>) -> Int32 {
        LAPACKE_dtrtri(LAPACK_COL_MAJOR, uplo, CChar(UInt8(ascii: "N")), n, a, n)
    }
    public static func lapackPotrs(_ uplo: CChar, _ n: Int32, _ nrhs: Int32, _ a: UnsafePointer<Double>, _ b: UnsafeMutablePointer<Double>, _ ldb: Int32) -> Int32 {
        LAPACKE_dpotrs(LAPACK_COL_MAJOR, uplo, n, nrhs, a, n, b, ldb)
    }
}

/// Row-major dense linear algebra over OpenBLAS and LAPACKE, sized for SparseGPT and
/// layer-wise reconstruction. Matrices are row-major with a row stride (`ld*`).
///
/// LAPACK is called in column-major mode on the row-major bytes: a row-major matrix is the
/// column-major view of its transpose, and the matrices factorised here are symmetric, so
/// "row-major lower" is "column-major upper". This avoids the transposed copy LAPACKE's
/// row-major mode makes (n² extra memory for an 11008² Hessian).
public enum Linalg {
    static let upper = CChar(UInt8(ascii: "U")), lower = CChar(UInt8(ascii: "L"))

    /// C = α·op(A)·op(B) + β·C, where op(A) is m×k and op(B) is k×n (op = transpose when asked).
    public static func gemm<T: LinalgScalar>(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: T = 1,
                                             _ a: UnsafePointer<T>, lda: Int, _ b: UnsafePointer<T>, ldb: Int,
                                             beta: T = 0, _ c: UnsafeMutablePointer<T>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        T.blasGemm(transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                   alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Upper triangle of the n×n matrix C = α·XᵀX + β·C, where X is k×n (k tokens of n
    /// features, row stride `ldx`): the Gram matrix of calibration inputs. The strictly
    /// lower triangle of C is left untouched.
    public static func gramUpper<T: LinalgScalar>(n: Int, k: Int, alpha: T, _ x: UnsafePointer<T>, ldx: Int,
                                                  beta: T, _ c: UnsafeMutablePointer<T>) {
        guard n > 0 else { return }
        T.blasSyrk(CblasTrans, Int32(n), Int32(k), alpha, x, Int32(ldx), beta, c, Int32(n))
    }

    /// C (m×n) = α·B·S + β·C for a symmetric n×n S of which only the upper triangle is read.
    public static func symmRight<T: LinalgScalar>(m: Int, n: Int, alpha: T = 1, _ b: UnsafePointer<T>, ldb: Int,
                                                  symmetricUpper s: UnsafePointer<T>, beta: T = 0, _ c: UnsafeMutablePointer<T>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        T.blasSymm(Int32(m), Int32(n), alpha, s, Int32(n), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// In place: the lower Cholesky factor L of a symmetric positive definite n×n A = L·Lᵀ.
    /// Reads A's lower triangle; writes L there and leaves the strictly upper triangle as it was.
    public static func cholesky<T: LinalgScalar>(_ a: UnsafeMutablePointer<T>, n: Int, layer: String) throws {
        try check(T.lapackPotrf(upper, Int32(n), a), "Cholesky factorisation", layer)
    }

    /// In place: solves A·x = b for one right-hand side, given A's lower Cholesky factor L
    /// from `cholesky` (LAPACK potrs); b becomes x.
    public static func choleskySolve<T: LinalgScalar>(_ l: UnsafePointer<T>, n: Int, _ b: UnsafeMutablePointer<T>, layer: String) throws {
        try check(T.lapackPotrs(upper, Int32(n), 1, l, b, Int32(n)), "Cholesky solve", layer)
    }

    /// In place: A⁻¹ from the lower Cholesky factor L of A (LAPACK potri, as
    /// `torch.cholesky_inverse`), written to both triangles.
    public static func choleskyInverse<T: LinalgScalar>(_ l: UnsafeMutablePointer<T>, n: Int, layer: String) throws {
        try check(T.lapackPotri(upper, Int32(n), l), "inverse from the Cholesky factor", layer)
        copyLowerToUpper(l, n: n)
    }

    /// In place: the upper-triangular U with A⁻¹ = Uᵀ·U and a positive diagonal, for a
    /// symmetric positive definite A of which only the upper triangle is read. This is
    /// `cholesky(cholesky_inverse(cholesky(A)), upper=True)` of SparseGPT, computed in
    /// 2n³/3 flops instead of 4n³/3: with J the order-reversing permutation, the Cholesky
    /// factor of J·A·J gives A = R·Rᵀ with R = J·L′·J upper, and U = R⁻¹ (the factor is
    /// unique, so it is the same matrix). Reversing a row-major n×n array end to end is
    /// exactly J·A·J. The strictly lower triangle is set to zero.
    public static func upperCholeskyOfInverse<T: LinalgScalar>(_ a: UnsafeMutablePointer<T>, n: Int, layer: String) throws {
        var all = UnsafeMutableBufferPointer(start: a, count: n * n)
        all.reverse()                        // upper of A → lower of J·A·J
        try cholesky(a, n: n, layer: layer)   // lower L′ with J·A·J = L′·L′ᵀ
        all.reverse()                        // R = J·L′·J, upper
        for i in 0..<n { (a + i * n).update(repeating: 0, count: i) }
        try check(T.lapackTrtri(lower, Int32(n), a), "triangular inverse", layer)
    }

    /// Copies the strictly lower triangle onto the strictly upper one.
    public static func copyLowerToUpper<T>(_ a: UnsafeMutablePointer<T>, n: Int) {
        for i in 0..<n { for j in (i + 1)..<n { a[i * n + j] = a[j * n + i] } }
    }

    /// Copies the strictly upper triangle onto the strictly lower one.
    public static func copyUpperToLower<T>(_ a: UnsafeMutablePointer<T>, n: Int) {
        for i in 0..<n { for j in (i + 1)..<n { a[j * n + i] = a[i * n + j] } }
    }

    static func check(_ info: Int32, _ what: String, _ layer: String) throws {
        if info > 0 {
            throw PruningError("\(layer): \(what) failed: the matrix is not positive definite (leading minor \(info)); "
                               + "raise the dampening or use more calibration data")
        }
        if info < 0 { throw PruningError("\(layer): \(what): LAPACK rejected argument \(-info)") }
    }
}

/// BLAS threading. OpenBLAS may sum in another order with another thread count, so a
/// job's bytes would depend on it; every `prune` process therefore runs one BLAS thread
/// (parallelism comes from worker processes, one per core) unless OPENBLAS_NUM_THREADS
/// says otherwise, and then the bytes are the same for any number of workers that share
/// that setting.
public enum BLASThreads {
    /// One thread unless the environment chose a count.
    public static func useDefault() {
        if ProcessInfo.processInfo.environment["OPENBLAS_NUM_THREADS"] == nil { openblas_set_num_threads(1) }
    }

    // The OpenBLAS kernel family a prune process asks for, unless `OPENBLAS_CORETYPE`
    // says otherwise (`pinnedCore`). OpenBLAS 0.3.21 (Debian 12) does not recognise CPUs a
    // hypervisor names "Intel Xeon Processor" and falls back to its Prescott (SSE3)
    // kernels: a training step of the Fashion-MNIST MLP took 2.8× as long. Pinning by ISA
    // also makes hosts of one class agree to the bit (a mixed cluster sets
    // OPENBLAS_CORETYPE=Haswell everywhere, docs/cluster.md).
    /// The kernel family for this CPU from /proc/cpuinfo's flags: SkylakeX with AVX-512
    /// (F, CD, BW, DQ, VL), Haswell with AVX2 and FMA, else nil (OpenBLAS's own choice).
    public static var pinnedCore: String? {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let flags = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return nil }
        let set = Set(flags.split(separator: " ").map(String.init))
        if ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(set.contains) { return "SkylakeX" }
        return set.contains("avx2") && set.contains("fma") ? "Haswell" : nil
    }

    /// OpenBLAS reads `OPENBLAS_CORETYPE` when it is loaded, before `main`: unless the
    /// environment chose a kernel, a process on a CPU with a `pinnedCore` sets it and runs
    /// itself again, once (processes it starts inherit it). Call first thing in `main`.
    public static func pinKernels() {
        guard ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil, let core = pinnedCore else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        guard coreName != core else { return }
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // Not re-executed (no /proc): carry on with the kernels OpenBLAS picked.
    }

    /// The kernel OpenBLAS chose for this CPU (e.g. "Haswell"; `OPENBLAS_CORETYPE` picks
    /// another). Hosts with different kernels may differ in the last bits of a GEMM.
    public static var coreName: String {
        openblas_get_corename().map { String(cString: $0) } ?? "unknown"
    }
}
