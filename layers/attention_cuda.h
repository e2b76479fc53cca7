// Causal grouped-query attention on the GPU, flash-attention style: the forward keeps one fp32
// log-sum-exp per query row instead of the (B, H, T, T) probabilities of attention.h, and the
// backward recomputes them tile by tile. q, k, v, out and the gradients are of dtype dt; the head
// size hd must be 16, 32, 64 or 128. bf16 with hd 64 or 128 runs cuDNN's fused attention where
// libcudnn.so.9 can be loaded and runs the shape (attention_cudnn.cu), else our tensor-core
// kernels; the rest runs on CUDA cores (attention.cu). Every path is deterministic.
#ifndef MOELAB_LAYERS_ATTENTION_CUDA_H
#define MOELAB_LAYERS_ATTENTION_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// The layouts of attention.h: q (B, H, T, hd), k and v (B, Hkv, T, hd) and their gradients
// head-major, out and dout (B, T, H, hd) token-major.
// out = softmax(q kᵀ / sqrt(hd) + causal mask) v; query head j reads kv head j / (H / Hkv). lse
// (B, H, T, fp32) receives log Σ_t2 exp(q·k_t2 / sqrt(hd)) of each query row.
void attention_cuda_forward(CoreDtype dt, void *out, float *lse, const void *q, const void *k,
                            const void *v, int B, int T, int H, int Hkv, int hd);
// dq, dk and dv = the gradients given dout, from the forward's inputs, out and lse: overwritten,
// their old contents never read. delta (B, H, T, fp32) is scratch (unused by cuDNN).
// Deterministic: bit-identical run to run.
void attention_cuda_backward_input(CoreDtype dt, void *dq, void *dk, void *dv, const void *dout,
                                   const void *q, const void *k, const void *v, const void *out,
                                   const float *lse, float *delta, int B, int T, int H, int Hkv,
                                   int hd);

// Which kernels run the calls, so that the tests and kernel_bench can check and time each path at
// the same shapes. Not for the trainer, which keeps AUTO.
typedef enum {
    ATTENTION_CUDA_AUTO = 0,      // cuDNN, else the tensor-core kernels, else CUDA cores
    ATTENTION_CUDA_CUDNN,         // cuDNN; a call it does not run ends the process
    ATTENTION_CUDA_TENSOR_CORES,  // the tensor-core kernels where they apply, else CUDA cores
    ATTENTION_CUDA_CUDA_CORES,    // the CUDA-core kernels for every call
} AttentionCudaPath;
void attention_cuda_set_path(AttentionCudaPath path);
// 1 when the cuDNN path runs calls of this dtype and shape on the calling thread's stream
// (libcudnn.so.9 loaded, both graphs built), else 0: what a test asks before forcing the path.
int attention_cuda_cudnn_applies(CoreDtype dt, int B, int T, int H, int Hkv, int hd);

#ifdef __cplusplus
}
#endif
#endif
