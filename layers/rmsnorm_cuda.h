// RMSNorm on the GPU: the calls of rmsnorm.h on device pointers (see docs/gpu.md for the scheme).
// x, out, gain, dres, dout and dinp are of dtype dt (fp32 or bf16); rstd, part and dgain are
// always fp32. The partial sums have rmsnorm.h's layout and chunks (rmsnorm_partial_floats).
#ifndef MOELAB_LAYERS_RMSNORM_CUDA_H
#define MOELAB_LAYERS_RMSNORM_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// out (N, D) = inp (N, D) · rstd · gain (D); rstd (N) = 1 / sqrt(mean(inp²) + eps), fp32.
void rmsnorm_cuda_forward(CoreDtype dt, void *out, float *rstd, const void *inp, const void *gain,
                          int N, int D, float eps);
// dinp (N, D) = dres + ∂L/∂inp given dout (N, D), written (dres may be NULL, or dinp itself);
// part (chunks, D) = each chunk's Σ_n dout ⊙ inp · rstd, written, in one pass over the rows.
void rmsnorm_cuda_backward_input(CoreDtype dt, void *dinp, float *part, const void *dres,
                                 const void *dout, const void *inp, const void *gain,
                                 const float *rstd, int N, int D);
// dgain (D, fp32) += Σ_c part (chunks, D), summed in a fixed order (bit-identical runs).
void rmsnorm_cuda_backward_weight(float *dgain, const float *part, int N, int D);
// The widest D the backward takes on this GPU: a warp keeps a row of D floats in shared memory.
int rmsnorm_cuda_max_d(void);

#ifdef __cplusplus
}
#endif
#endif
