// Softmax cross-entropy on the GPU: the calls of crossentropy.h on device pointers. logits and
// dlogits are of dtype dt; losses and lse are fp32; targets are device ints in [0, V), which the
// caller checks where they come from (the model, on the host before the upload:
// framework/model.c), so that no call waits for the device. A target outside gets a NaN loss and
// reads nothing outside its row.
#ifndef MOELAB_LAYERS_CROSSENTROPY_CUDA_H
#define MOELAB_LAYERS_CROSSENTROPY_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// losses (N) = lse − logits[target], lse (N) saved; logits (N, V), targets (N) in [0, V).
void crossentropy_cuda_forward(CoreDtype dt, float *losses, float *lse, const void *logits,
                               const int *targets, int N, int V);
// dlogits (N, V) = dloss · (softmax(logits) − onehot(target)), written; dlogits may be logits.
void crossentropy_cuda_backward_input(CoreDtype dt, void *dlogits, const void *logits,
                                      const float *lse, const int *targets, float dloss, int N,
                                      int V);
// out (1, device) = (float)(Σ losses (N) / N), summed in double in an order fixed by N: the mean
// loss stays on the device until the training step downloads all its scalars at once.
void crossentropy_cuda_mean(float *out, const float *losses, int N);

#ifdef __cplusplus
}
#endif
#endif
