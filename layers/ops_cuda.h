// The CUDA backend tables of ops.h (layers/ops.cu, compiled under --config=cuda only): the
// *_cuda_* kernels in one activation dtype, memory from the stream-ordered pool of core_cuda's
// stream, and the single-process MoE dispatcher on the GPU (moe_cuda.h's plan and permutes).
#ifndef MOELAB_LAYERS_OPS_CUDA_H
#define MOELAB_LAYERS_OPS_CUDA_H

#include "layers/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

// The table computing in dt (CORE_F32 or CORE_BF16) on the GPU that core_cuda_init made current
// (a CHECK names the missing init). The first call keeps freed memory in the pool for reuse.
const LayerOps *layer_ops_cuda(CoreDtype dt);

#ifdef __cplusplus
}
#endif
#endif
