// Top-k router on the GPU: router_forward and router_backward_input of router.h on device
// pointers, each one kernel (one warp per token). Router logits, scores and gates stay fp32 (the
// choice of experts is sensitive to rounding); idx is device ints.
#ifndef MOELAB_LAYERS_ROUTER_CUDA_H
#define MOELAB_LAYERS_ROUTER_CUDA_H

#include "framework/core/cuda.h"
#include "layers/router.h"

#ifdef __cplusplus
extern "C" {
#endif

// scores (N, E) from logits (N, E); idx (N, K) the chosen experts in descending order of
// score + bias (ties: lower id first); gates (N, K) in the same order. bias (E) may be NULL.
// counts (E, device), unless NULL, += the tokens that chose each expert: integer atomics, exact
// and the same in any order.
// The most experts the router kernels take (their keys and histogram in 48 KiB of shared memory).
int router_cuda_max_experts(void);
void router_cuda_forward(float *scores, int *idx, float *gates, const float *logits,
                         const float *bias, const RouterCfg *c, int N, long *counts);
// dlogits (N, E) += ∂L/∂logits given dgates (N, K) and dscores (N, E) (dscores may be NULL).
void router_cuda_backward_input(float *dlogits, const float *dgates, const float *dscores,
                                const float *scores, const int *idx, const RouterCfg *c, int N);

// Sequence balance loss of router.h on the GPU: *loss (one device float) = L_bal averaged over the
// B sequences of T tokens; scores (N, E), idx (N, K), N = B·T. Sums run in a fixed order. Neither
// call checks the ids (no host round trip): an id outside [0, E) counts for no expert.
void router_cuda_balance_loss(float *loss, const float *scores, const int *idx, int B, int T, int E,
                              int K);
// dscores (N, E) += dloss · ∂L_bal/∂scores (through P only).
void router_cuda_balance_loss_backward(float *dscores, float dloss, const float *scores,
                                       const int *idx, int B, int T, int E, int K);

// router_bias_update of router.h on L layers in one launch: bias is a host array of L device
// pointers to (E) biases (NULL: skipped), counts (L, E) on the device; same arithmetic.
void router_cuda_bias_update(float *const *bias, const long *counts, int L, int E, int K,
                             long n_tokens, float gamma);

#ifdef __cplusplus
}
#endif
#endif
