// cuDNN's fused flash attention (scaled dot-product attention through the cuDNN graph API and its
// C++ frontend), the fast path behind attention_cuda.h for bf16 with head size 64 or 128
// (attention_cudnn.cu). The layouts, scale, causal mask and lse are attention_cuda.h's.
//
// libcudnn.so.9 is not linked: it is loaded at run time on the first call, and the process logs
// once which attention path it runs. Where the library is missing, or cannot run a shape (its
// graph does not build, its workspace cannot be had), a call returns 0 and the caller runs its
// own kernels; a call may then have written part of its outputs, which the caller overwrites.
#ifndef MOELAB_LAYERS_ATTENTION_CUDNN_CUDA_H
#define MOELAB_LAYERS_ATTENTION_CUDNN_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

// out and lse (B, H, T, fp32) as attention_cuda_forward (its layouts), all bf16 but lse, every
// pointer 16-byte aligned. 1 when cuDNN ran it, 0 when it could not.
int attention_cudnn_forward(void *out, float *lse, const void *q, const void *k, const void *v,
                            int B, int T, int H, int Hkv, int hd);
// dq, dk and dv = the gradients (overwritten), from the forward's inputs, out and lse, as
// attention_cuda_backward_input. Deterministic (but see attention_cudnn_set_deterministic). A
// batch of B ≥ 2 runs as two halves, the first on a side stream of the calling stream
// (attention_cudnn_set_streams), or as one call where cuDNN cannot build a half's graph. 1 when
// cuDNN ran it.
int attention_cudnn_backward(void *dq, void *dk, void *dv, const void *dout, const void *q,
                             const void *k, const void *v, const void *out, const float *lse,
                             int B, int T, int H, int Hkv, int hd);
// 1 when cuDNN runs this shape on the calling thread's stream: the library is loaded and the
// forward and backward graphs build (they are built and kept here if they were not already).
int attention_cudnn_supports(int B, int T, int H, int Hkv, int hd);
// 0 makes the backward use cuDNN's default algorithm, which adds dQ with atomics (faster, its bits
// vary run to run); 1, the default, the deterministic one. Set from the config key
// deterministic (framework/backend.c); kernel_bench measures both.
void attention_cudnn_set_deterministic(int deterministic);
// 2, the default: the backward of B ≥ 2 sequences as two calls on two streams, which the GPU
// overlaps; 1: one call (what the two streams buy, kernel_bench).
void attention_cudnn_set_streams(int n);
// Test seam: the backward graph of this shape (with the algorithm set now) counts as one cuDNN
// could not build, for the rest of the process (what a failed build leaves). gpu_test checks with
// it that a batch whose half cannot be built runs as one call.
void attention_cudnn_test_refuse_backward(int B, int T, int H, int Hkv, int hd);

#ifdef __cplusplus
}
#endif
#endif
