// RMSNorm: out = x / sqrt(mean(x²) + eps) * gain, per row of D values.
// The backward is one pass over the rows: backward_input writes the input gradient (plus the
// residual gradient that joins it, so that no separate copy or add runs) and the gain gradient's
// partial sums over fixed chunks of RMSNORM_CHUNK rows; backward_weight adds those up in a fixed
// order (bit-identical reruns, no atomics). The GPU version (rmsnorm_cuda.h) uses the same chunks.
#ifndef MOELAB_LAYERS_RMSNORM_H
#define MOELAB_LAYERS_RMSNORM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Rows summed into one row of the gain gradient's partial sums.
#define RMSNORM_CHUNK 32

// Floats of the partial sums of N rows of D: (ceil(N / RMSNORM_CHUNK), D).
size_t rmsnorm_partial_floats(int N, int D);

// out (N, D), rstd (N) saved for backward = 1 / sqrt(mean(inp²) + eps); inp (N, D), gain (D)
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *gain, int N, int D,
                     float eps);
// dinp (N, D) = dres + ∂L/∂inp given dout (N, D), written: its old contents are not read, except
// where dres is dinp itself (dres (N, D) may be NULL for none). part (chunks, D) = for each chunk c
// of rows [c·RMSNORM_CHUNK, (c + 1)·RMSNORM_CHUNK), Σ_n dout ⊙ inp · rstd over its rows, written.
void rmsnorm_backward_input(float *dinp, float *part, const float *dres, const float *dout,
                            const float *inp, const float *gain, const float *rstd, int N, int D);
// dgain (D) += Σ_c part (chunks, D), chunks in order: the gain gradient of backward_input's N rows.
void rmsnorm_backward_weight(float *dgain, const float *part, int N, int D);

#ifdef __cplusplus
}
#endif
#endif
