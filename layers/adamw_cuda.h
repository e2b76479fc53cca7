// AdamW on the GPU: the update of framework/optimizer.c (PyTorch's AdamW) over one tensor's fp32
// master weights with fp32 moments, optionally refreshing the low-precision compute copy of the
// weights in the same pass; and the two gradient passes of global-norm clipping. The optimizer is
// no layer, but its kernels live with the others.
#ifndef MOELAB_LAYERS_ADAMW_CUDA_H
#define MOELAB_LAYERS_ADAMW_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float lr, beta1, beta2, eps;
    float weight_decay;  // applied only when adamw_cuda_step's `decay` is set (matrices)
    long t;              // the step being taken, 1-based (bias corrections 1 − beta^t)
    float gscale;        // every gradient's factor (the clip factor), applied as it is read: clipping
                         // needs no pass over the gradients of its own (3.8 ms a bench step)
} AdamwHyper;

// m = β1 m + (1 − β1) g, v = β2 v + (1 − β2) g²,
// p = p (1 − lr·wd) − lr · m̂ / (sqrt(v̂) + eps), m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t);
// p, m, v (n) in place, g (n); all fp32.
// p_low (n) of dtype low_dt receives the updated p (NULL: no compute copy).
void adamw_cuda_step(float *p, const float *g, float *m, float *v, long n, const AdamwHyper *h,
                     int decay, void *p_low, CoreDtype low_dt);

// *sum (one device double) += Σ g² over g (n, fp32), accumulated in double in an order fixed by n
// alone (bit-identical runs). Asynchronous: the caller downloads the sum of all tensors once.
void adamw_cuda_sqsum(double *sum, const float *g, long n);
// g (n) *= s (the clip factor).
void adamw_cuda_scale(float *g, long n, float s);

#ifdef __cplusplus
}
#endif
#endif
