#ifndef PRUNE_CKERNELS_H
#define PRUNE_CKERNELS_H

/// Element-wise loops of the forward pass that need an exponential. Every lane is computed
/// with the same operations whatever the CPU (no FMA contraction), so the results are the
/// same bytes on every x86-64 host; AVX2 only makes them faster where it is present.

/// Softmax of row[0..count) in place (maximum subtracted first); row[count..total) = 0.
void pc_causal_softmax(float *row, long count, long total);

/// g[i] = g[i] / (1 + exp(-g[i])) * u[i]  (SiLU(gate) · up).
void pc_swiglu(float *g, const float *u, long count);

/// out[i] = exp(x[i]) for testing the approximation against libm.
void pc_exp(const float *x, float *out, long count);

#include <stdint.h>

/// y[r] = sum over i in [row_start[r], row_start[r+1]) of values[i] * x[cols[i]]: a sparse
/// matrix in CSR form (16-bit column indices) times a vector, eight entries at a time in a
/// fixed lane order, then the row's remainder: the same bytes with and without AVX2.
void pc_csr_matvec(const int32_t *row_start, const uint16_t *cols, const float *values, long rows,
                   const float *x, float *y);

/// yt (rows × tokens) = W · xt for xt (cols × tokens), W in CSR as above: each output
/// element sums its row's entries in order (the same bytes with and without AVX2); a
/// prompt's tokens share every read of W.
void pc_csr_matmat(const int32_t *row_start, const uint16_t *cols, const float *values, long rows,
                   const float *xt, long tokens, float *yt);

#endif
