// Rotary position embedding on the GPU: the calls of rope.h on device pointers of dtype dt.
#ifndef MOELAB_LAYERS_ROPE_CUDA_H
#define MOELAB_LAYERS_ROPE_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// out (N, nh, hd) = rotation of inp (N, nh, hd); row n sits at position n % T. out may equal inp.
void rope_cuda_forward(CoreDtype dt, void *out, const void *inp, int N, int T, int nh, int hd,
                       float theta);
// dinp (N, nh, hd) = inverse rotation of dout (N, nh, hd), written (not added); dinp may equal dout.
void rope_cuda_backward_input(CoreDtype dt, void *dinp, const void *dout, int N, int T, int nh,
                              int hd, float theta);

#ifdef __cplusplus
}
#endif
#endif
