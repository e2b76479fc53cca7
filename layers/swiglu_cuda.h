// SwiGLU's elementwise gate on the GPU: the calls swiglu_act_* of swiglu.h on device pointers of
// dtype dt. The three GEMMs around it are linear_cuda_* calls (layers/linear_cuda.h).
#ifndef MOELAB_LAYERS_SWIGLU_CUDA_H
#define MOELAB_LAYERS_SWIGLU_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// h (rows, F) = silu(a) ⊙ b, a and b the halves of ab's rows (rows, 2F) (swiglu.h's swiglu_act_forward)
void swiglu_cuda_act_forward(CoreDtype dt, void *h, const void *ab, long rows, int F);
// dab (rows, 2F) = the gate's gradients given dh (rows, F) (written); dh then holds h rounded to dt,
// the forward's bits; s (rows, fp32), where not NULL, = Σ_f dh·h per row with that h (swiglu.h's
// swiglu_act_backward)
void swiglu_cuda_act_backward(CoreDtype dt, void *dab, float *s, void *dh, const void *ab, long rows, int F);

#ifdef __cplusplus
}
#endif
#endif
