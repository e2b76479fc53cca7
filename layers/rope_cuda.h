// Rotary position embedding on the GPU: the calls of rope.h on device pointers of dtype dt.
#ifndef MOELAB_LAYERS_ROPE_CUDA_H
#define MOELAB_LAYERS_ROPE_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// Rows as in rope.h: row n at element n·ld, ld ≥ nh·hd, or head-major (ld = ROPE_HEADS). 16-byte
// accesses where the pointers, hd/2 and both strides allow them, one element a thread otherwise
// (the same bits).
// out (N rows at out_ld) = rotation of inp (N rows at inp_ld); row n sits at position n % T.
// out may equal inp when the strides are equal.
void rope_cuda_forward(CoreDtype dt, void *out, int out_ld, const void *inp, int inp_ld, int N,
                       int T, int nh, int hd, float theta);
// dinp (N rows at dinp_ld) = inverse rotation of dout (N rows at dout_ld), written (not added);
// dinp may equal dout as above.
void rope_cuda_backward_input(CoreDtype dt, void *dinp, int dinp_ld, const void *dout, int dout_ld,
                              int N, int T, int nh, int hd, float theta);
// out (N rows at out_ld) = inp (N rows at inp_ld), unrotated (v; rope.h's rope_copy), exact.
void rope_cuda_copy(CoreDtype dt, void *out, int out_ld, const void *inp, int inp_ld, int N, int T,
                    int nh, int hd);

#ifdef __cplusplus
}
#endif
#endif
