// SwiGLU's elementwise gate on the GPU: the calls swiglu_act_* of swiglu.h on device pointers of
// dtype dt. The three GEMMs around it are linear_cuda_* calls (layers/linear_cuda.h).
#ifndef MOELAB_LAYERS_SWIGLU_CUDA_H
#define MOELAB_LAYERS_SWIGLU_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// h (n) = silu(a) ⊙ b
void swiglu_cuda_act_forward(CoreDtype dt, void *h, const void *a, const void *b, long n);
// da, db (n) = gradients given dh (n) (written); dh then holds h = silu(a) ⊙ b rounded to dt, the
// forward's bits (swiglu.h's swiglu_act_backward)
void swiglu_cuda_act_backward(CoreDtype dt, void *da, void *db, void *dh, const void *a, const void *b,
                              long n);
// The same over `rows` rows of F, and s (rows, fp32) = Σ_f dh·h per row with that h
// (swiglu.h's swiglu_act_backward_dot)
void swiglu_cuda_act_backward_dot(CoreDtype dt, void *da, void *db, float *s, void *dh, const void *a,
                                  const void *b, long rows, int F);

#ifdef __cplusplus
}
#endif
#endif
