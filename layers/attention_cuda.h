// Causal grouped-query attention on the GPU, flash-attention style: the forward keeps one fp32
// log-sum-exp per query row instead of the (B, H, T, T) probabilities of attention.h, and the
// backward recomputes them tile by tile. q, k, v, out and the gradients are of dtype dt; the head
// size hd must be 16, 32, 64 or 128. bf16 with hd 64 or 128 runs on tensor cores, the rest on
// CUDA cores (attention.cu).
#ifndef MOELAB_LAYERS_ATTENTION_CUDA_H
#define MOELAB_LAYERS_ATTENTION_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// out (B, T, H, hd) = softmax(q kᵀ / sqrt(hd) + causal mask) v; q (B, T, H, hd), k and v
// (B, T, Hkv, hd); query head j reads kv head j / (H / Hkv). lse (B, H, T, fp32) receives
// log Σ_t2 exp(q·k_t2 / sqrt(hd)) of each query row.
void attention_cuda_forward(CoreDtype dt, void *out, float *lse, const void *q, const void *k,
                            const void *v, int B, int T, int H, int Hkv, int hd);
// dq (B, T, H, hd), dk and dv (B, T, Hkv, hd) += gradients given dout (B, T, H, hd), from the
// forward's inputs, out and lse. delta (B, H, T, fp32) is scratch. Deterministic (no atomics).
void attention_cuda_backward_input(CoreDtype dt, void *dq, void *dk, void *dv, const void *dout,
                                   const void *q, const void *k, const void *v, const void *out,
                                   const float *lse, float *delta, int B, int T, int H, int Hkv,
                                   int hd);

// on = 0 sends every shape to the CUDA-core kernels, so that kernel_bench can time both kernel
// sets at the same shapes; on (the default) = 1. Not for the trainer.
void attention_cuda_set_tensor_cores(int on);

#ifdef __cplusplus
}
#endif
#endif
