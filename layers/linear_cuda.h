// Linear layer on the GPU through cuBLAS (cublasGemmEx): the calls of linear.h on device pointers.
// Operands (inp, W, dout, dinp) are of dtype dt; every product accumulates in fp32. The forward
// may write fp32 from bf16 operands (out_dt = CORE_F32: router logits, LM-head logits); weight
// gradients are always fp32.
#ifndef MOELAB_LAYERS_LINEAR_CUDA_H
#define MOELAB_LAYERS_LINEAR_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// out (N, OC) of dtype out_dt (dt or CORE_F32) = inp (N, IC) · W (OC, IC)ᵀ
void linear_cuda_forward(CoreDtype dt, CoreDtype out_dt, void *out, const void *inp, const void *W,
                         int N, int IC, int OC);
// dinp (N, IC) += dout (N, OC) · W (OC, IC) (acc = 1), or = it with dinp's contents unread
// (acc = 0: a fresh buffer needs no zero fill)
void linear_cuda_backward_input(CoreDtype dt, void *dinp, const void *dout, const void *W, int N,
                                int IC, int OC, int acc);
// dW (OC, IC, fp32) += dout (N, OC)ᵀ · inp (N, IC)
void linear_cuda_backward_weight(CoreDtype dt, float *dW, const void *dout, const void *inp, int N,
                                 int IC, int OC);

// The same three products for G experts at once, on contiguous per-expert row ranges: rows
// [o_e, o_e + counts[e]) of inp, out, dout and dinp belong to expert e, o_e = Σ_{j<e} counts[j];
// W and dW are (G, OC, IC). counts (G) is on the host, or NULL where dcounts (G, on the device,
// written by work queued before) holds them and the host has not got them yet (layers/ops.h's
// OpsGroups): the Hopper kernels read them there (up to GEMM_SM90_MAX_GROUPS groups), and every
// other path downloads them first (a wait). linear_cuda_grouped_mode() says how they run. The backward
// products add to dinp or dW with acc = 1 and write them without reading them with acc = 0 (a
// fresh buffer needs no zero fill, and the product no read of zeros); an expert with no rows has
// its dW left as it is (acc = 1) or zeroed (acc = 0).
void linear_cuda_forward_grouped(CoreDtype dt, CoreDtype out_dt, void *out, const void *inp, const void *W,
                                 const int *counts, const int *dcounts, int G, int IC, int OC);
void linear_cuda_backward_input_grouped(CoreDtype dt, void *dinp, const void *dout, const void *W,
                                        const int *counts, const int *dcounts, int G, int IC, int OC, int acc);
void linear_cuda_backward_weight_grouped(CoreDtype dt, float *dW, const void *dout, const void *inp,
                                         const int *counts, const int *dcounts, int G, int IC, int OC, int acc);

// How the grouped products run. LINEAR_GROUPED_CUTLASS (the default) runs them as one CUTLASS
// Hopper grouped GEMM (layers/gemm_sm90.cu) where linear_cuda_cutlass_applies, and as
// LINEAR_GROUPED_CUBLAS elsewhere. LINEAR_GROUPED_CUBLAS makes one cublasGemmGroupedBatchedEx
// for all of them.
// LINEAR_GROUPED_STREAMS issues one cublasGemmEx per non-empty expert, spread over linear_cuda_gemm_streams() side streams that run concurrently
// (each with its own cuBLAS handle and workspace), forked from and joined back into the compute
// stream within the call; LINEAR_GROUPED_LOOP is the same with one side stream (one GEMM after
// another). The three give
// the same results, and loop and streams bit-identical ones. The mode starts as
// LINEAR_GROUPED_CUTLASS and the stream count as LINEAR_DEFAULT_STREAMS; the setters change them
// (the framework from the config keys expert_gemm and gemm_streams, backend_configure; tests and
// benchmarks directly). layers/ reads no configuration of its own.
enum { LINEAR_GROUPED_LOOP = 0, LINEAR_GROUPED_CUBLAS = 1, LINEAR_GROUPED_STREAMS = 2, LINEAR_GROUPED_CUTLASS = 3 };
enum { LINEAR_DEFAULT_STREAMS = 4, LINEAR_MAX_STREAMS = 8 };
int linear_cuda_grouped_mode(void);
// 1 when the CUTLASS kernels run the grouped products of these operands: bf16 in and out (the
// weight gradient is fp32 from bf16), a GPU of compute capability 9.0, IC and OC multiples of 8.
int linear_cuda_cutlass_applies(CoreDtype dt, CoreDtype out_dt, int IC, int OC);
void linear_cuda_set_grouped_mode(int mode);
int linear_cuda_gemm_streams(void);
void linear_cuda_set_gemm_streams(int n);
// 1 once cuBLAS's grouped GEMM has refused operands of dtype dt with a C of dtype c_dt
// (CUBLAS_STATUS_NOT_SUPPORTED): those products then run as streams whatever the mode.
int linear_cuda_grouped_unsupported(CoreDtype dt, CoreDtype c_dt);

#ifdef __cplusplus
}
#endif
#endif
