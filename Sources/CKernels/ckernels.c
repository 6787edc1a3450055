// Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial, 2^n through the
// exponent bits), eight lanes at a time with clang's vector extensions: within 2 ulp of
// libm's expf on [-87, 88], inputs clamped to that range (below it the result is ~1e-38
// instead of 0, which no sum here can tell apart). libm's expf is one call per element;
// these loops run 8 lanes per instruction. Each kernel is compiled twice: for AVX2 (chosen
// at run time when the CPU has it) and for the x86-64 baseline. The build disables FMA
// contraction (-ffp-contract=off in Package.swift) so both give identical bytes.
#include "ckernels.h"
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

#define SPLAT(x) ((v8f){x, x, x, x, x, x, x, x})

// The helpers are macros (GNU statement expressions), not functions: a function taking or
// returning an 8-lane vector would need AVX in its calling convention, and the baseline
// build must not use AVX. Inside one function, 8-lane vectors are just pairs of SSE registers.
#define EXP8(input) ({                                                            \
    v8f x_ = __builtin_elementwise_min(__builtin_elementwise_max((input), SPLAT(-87.3365447504f)), SPLAT(88.3762626647949f)); \
    const v8f magic_ = SPLAT(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */ \
    v8f shifted_ = x_ * SPLAT(1.44269504088896341f) + magic_;                       \
    v8f fx_ = shifted_ - magic_;                                                  \
    v8f r_ = x_ - fx_ * SPLAT(0.693359375f);                                      \
    r_ = r_ - fx_ * SPLAT(-2.12194440e-4f);                                       \
    v8f y_ = SPLAT(1.9875691500e-4f);                                             \
    y_ = y_ * r_ + SPLAT(1.3981999507e-3f);                                       \
    y_ = y_ * r_ + SPLAT(8.3334519073e-3f);                                       \
    y_ = y_ * r_ + SPLAT(4.1665795894e-2f);                                       \
    y_ = y_ * r_ + SPLAT(1.6666665459e-1f);                                       \
    y_ = y_ * r_ + SPLAT(5.0000001201e-1f);                                       \
    y_ = y_ * (r_ * r_) + r_ + SPLAT(1.0f);                                       \
    v8i n_ = (v8i)shifted_ - (v8i)magic_;                                         \
    y_ * (v8f)((n_ + 127) << 23);                                                 \
})

/// Eight floats from p, or the first `count` of them and `fill` in the other lanes.
#define LOAD8(p, count, fill) ({                                                  \
    v8f v_ = SPLAT(fill);                                                         \
    memcpy(&v_, (p), (size_t)((count) >= 8 ? 8 : (count)) * 4);                   \
    v_;                                                                           \
})

#define STORE8(v, p, count) do { v8f s_ = (v); memcpy((p), &s_, (size_t)((count) >= 8 ? 8 : (count)) * 4); } while (0)

#define LANES_MAX(v) ({ v8f m_ = (v); float r_ = m_[0]; for (int i_ = 1; i_ < 8; i_++) r_ = r_ > m_[i_] ? r_ : m_[i_]; r_; })

/* A fixed tree, the same on every path. */
#define LANES_SUM(v) ({ v8f s_ = (v); ((s_[0] + s_[4]) + (s_[2] + s_[6])) + ((s_[1] + s_[5]) + (s_[3] + s_[7])); })

// Lanes past `count` hold -inf: they add nothing to the maximum, and e^-87 to a sum >= 1.
#define SOFTMAX_BODY                                                              \
    v8f m = SPLAT(-__builtin_inff());                                             \
    for (long i = 0; i < count; i += 8)                                           \
        m = __builtin_elementwise_max(m, LOAD8(row + i, count - i, -__builtin_inff())); \
    v8f shift = SPLAT(LANES_MAX(m));                                              \
    v8f sums = SPLAT(0.0f);                                                       \
    for (long i = 0; i < count; i += 8) {                                         \
        v8f e = EXP8(LOAD8(row + i, count - i, -__builtin_inff()) - shift);       \
        STORE8(e, row + i, count - i);                                            \
        sums += e;                                                                \
    }                                                                             \
    v8f inv = SPLAT(1.0f / LANES_SUM(sums));                                      \
    for (long i = 0; i < count; i += 8) STORE8(LOAD8(row + i, count - i, 0) * inv, row + i, count - i); \
    if (count < total) memset(row + count, 0, (size_t)(total - count) * 4);

#define SWIGLU_BODY                                                               \
    for (long i = 0; i < count; i += 8) {                                         \
        v8f x = LOAD8(g + i, count - i, 0);                                       \
        STORE8(x / (SPLAT(1.0f) + EXP8(-x)) * LOAD8(u + i, count - i, 0), g + i, count - i); \
    }

#define EXP_BODY \
    for (long i = 0; i < count; i += 8) STORE8(EXP8(LOAD8(x + i, count - i, 0)), out + i, count - i);

// CSR times a vector. A row's entries go eight at a time into eight lane sums (the
// values' products with x gathered at their columns), summed by LANES_SUM, then the row's
// last (count mod 8) entries one by one. GATHER8 is only loads: AVX2's gather or eight
// scalar loads give the same lanes.
#define CSR_BODY(GATHER8)                                                         \
    for (long r = 0; r < rows; r++) {                                             \
        long i = row_start[r], end = row_start[r + 1];                            \
        v8f acc = SPLAT(0.0f);                                                    \
        for (; i + 8 <= end; i += 8) {                                            \
            v8f v; memcpy(&v, values + i, 32);                                    \
            acc += v * GATHER8(cols + i);                                         \
        }                                                                         \
        float sum = LANES_SUM(acc);                                               \
        for (; i < end; i++) sum += values[i] * x[cols[i]];                       \
        y[r] = sum;                                                               \
    }

#define CSR_MM_BODY                                                               \
    for (long r = 0; r < rows; r++) {                                             \
        float *out = yt + r * tokens;                                             \
        memset(out, 0, (size_t)tokens * 4);                                       \
        for (long i = row_start[r]; i < row_start[r + 1]; i++) {                  \
            v8f v = SPLAT(values[i]);                                             \
            const float *xr = xt + (long)cols[i] * tokens;                        \
            long t = 0;                                                           \
            for (; t + 8 <= tokens; t += 8) {                                     \
                v8f o, x; memcpy(&o, out + t, 32); memcpy(&x, xr + t, 32);        \
                o += v * x; memcpy(out + t, &o, 32);                              \
            }                                                                     \
            for (; t < tokens; t++) out[t] += values[i] * xr[t];                  \
        }                                                                         \
    }

#define GATHER8_SCALAR(c) ((v8f){x[(c)[0]], x[(c)[1]], x[(c)[2]], x[(c)[3]], x[(c)[4]], x[(c)[5]], x[(c)[6]], x[(c)[7]]})

#if defined(__x86_64__)
#include <immintrin.h>
#define GATHER8_AVX2(c) ((v8f)_mm256_i32gather_ps(x, _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(c))), 4))
__attribute__((target("avx2"))) static void csr_avx2(const int32_t *row_start, const uint16_t *cols, const float *values, long rows,
                                                     const float *x, float *y) { CSR_BODY(GATHER8_AVX2) }
__attribute__((target("avx2"))) static void csr_mm_avx2(const int32_t *row_start, const uint16_t *cols, const float *values, long rows,
                                                        const float *xt, long tokens, float *yt) { CSR_MM_BODY }
__attribute__((target("avx2"))) static void softmax_avx2(float *row, long count, long total) { SOFTMAX_BODY }
__attribute__((target("avx2"))) static void swiglu_avx2(float *g, const float *u, long count) { SWIGLU_BODY }
__attribute__((target("avx2"))) static void exp_avx2(const float *x, float *out, long count) { EXP_BODY }
static int has_avx2(void) {
    static int cached = -1;
    if (cached < 0) { __builtin_cpu_init(); cached = __builtin_cpu_supports("avx2") ? 1 : 0; }
    return cached;
}
#endif

static void softmax_base(float *row, long count, long total) { SOFTMAX_BODY }
static void swiglu_base(float *g, const float *u, long count) { SWIGLU_BODY }
static void exp_base(const float *x, float *out, long count) { EXP_BODY }
static void csr_base(const int32_t *row_start, const uint16_t *cols, const float *values, long rows,
                     const float *x, float *y) { CSR_BODY(GATHER8_SCALAR) }

static void csr_mm_base(const int32_t *row_start, const uint16_t *cols, const float *values, long rows,
                        const float *xt, long tokens, float *yt) { CSR_MM_BODY }

void pc_csr_matmat(const int32_t *row_start, const uint16_t *cols, const float *values, long rows,
                   const float *xt, long tokens, float *yt) {
#if defined(__x86_64__)
    if (has_avx2()) { csr_mm_avx2(row_start, cols, values, rows, xt, tokens, yt); return; }
#endif
    csr_mm_base(row_start, cols, values, rows, xt, tokens, yt);
}

void pc_csr_matvec(const int32_t *row_start, const uint16_t *cols, const float *values, long rows,
                   const float *x, float *y) {
#if defined(__x86_64__)
    if (has_avx2()) { csr_avx2(row_start, cols, values, rows, x, y); return; }
#endif
    csr_base(row_start, cols, values, rows, x, y);
}

void pc_causal_softmax(float *row, long count, long total) {
#if defined(__x86_64__)
    if (has_avx2()) { softmax_avx2(row, count, total); return; }
#endif
    softmax_base(row, count, total);
}

void pc_swiglu(float *g, const float *u, long count) {
#if defined(__x86_64__)
    if (has_avx2()) { swiglu_avx2(g, u, count); return; }
#endif
    swiglu_base(g, u, count);
}

void pc_exp(const float *x, float *out, long count) {
#if defined(__x86_64__)
    if (has_avx2()) { exp_avx2(x, out, count); return; }
#endif
    exp_base(x, out, count);
}
