// Token embedding on the GPU: the calls of embedding.h on device pointers. table and out are of
// dtype dt; dtable is fp32 (a weight gradient); tokens are device ints in [0, V), which the caller
// checks where they come from (the model, on the host before the upload: framework/model.c), so
// that no call waits for the device. A token outside gets a NaN row in the forward and adds
// nothing in the backward: no memory outside the table is read or written.
#ifndef MOELAB_LAYERS_EMBEDDING_CUDA_H
#define MOELAB_LAYERS_EMBEDDING_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// out (N, D) = table (V, D)[tokens (N)]
void embedding_cuda_forward(CoreDtype dt, void *out, const int *tokens, const void *table, int N,
                            int V, int D);
// dtable (V, D, fp32) += scatter-add of dout (N, D) at rows tokens (N); each row adds its
// contributions in token order, so the result is bit-identical run to run.
void embedding_cuda_backward_weight(CoreDtype dt, float *dtable, const void *dout,
                                    const int *tokens, int N, int V, int D);

#ifdef __cplusplus
}
#endif
#endif
