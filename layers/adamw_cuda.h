// AdamW on the GPU: the update of framework/optimizer.c (PyTorch's AdamW) over a list of tensors'
// fp32 master weights with fp32 moments, optionally refreshing the low-precision compute copy of
// the weights in the same pass; and the two gradient passes of global-norm clipping. The optimizer is
// no layer, but its kernels live with the others.
#ifndef MOELAB_LAYERS_ADAMW_CUDA_H
#define MOELAB_LAYERS_ADAMW_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float lr, beta1, beta2, eps;
    float weight_decay;  // applied only to spans whose `decay` is set (matrices)
    long t;              // the step being taken, 1-based (bias corrections 1 − beta^t)
    float gscale;        // every gradient's factor (the clip factor), applied as it is read: clipping
                         // needs no pass over the gradients of its own (3.8 ms a bench step)
} AdamwHyper;

// One tensor of the optimizer's flat buffers: its fp32 weights, gradient and moments start at
// element g_at, its compute copy at p_at (the same place, except for a ZeRO-1 shard, whose fp32
// master copy, gradient and moments are packed in the shard's layout while the compute copy is the
// model's), n elements; decay: weight decay applies.
typedef struct {
    long p_at, g_at, n;
    int decay;
} AdamwSpan;

// Over the ns spans s of the buffers p, m, v (in place) and g, all fp32:
// m = β1 m + (1 − β1) g, v = β2 v + (1 − β2) g²,
// p = p (1 − lr·wd) − lr · m̂ / (sqrt(v̂) + eps), m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t).
// p_low, of dtype low_dt (fp32 included), receives the updated p at p_at (NULL: no compute copy). One pass
// over every span together (a launch per ADAMW_SPANS_PER_LAUNCH spans), not a launch per tensor:
// a model has a hundred or more, most of them small.
void adamw_cuda_step(float *p, const float *g, float *m, float *v, void *p_low, CoreDtype low_dt,
                     const AdamwSpan *s, int ns, const AdamwHyper *h);

// *sum (one device double) += Σ g² over the spans' gradients (g + s[i].g_at, s[i].n elements),
// accumulated in double in an order fixed by the spans alone (bit-identical runs). Asynchronous:
// the caller downloads the sum once.
void adamw_cuda_sqsum(double *sum, const float *g, const AdamwSpan *s, int ns);
// g (n) *= s (the clip factor).
void adamw_cuda_scale(float *g, long n, float s);

#ifdef __cplusplus
}
#endif
#endif
