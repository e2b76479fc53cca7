// Top-k router: expert scores (sigmoid or softmax of the router logits), the K experts with the
// largest score + balancing bias (ties to the lower expert id), and their gates. Also the two
// balancing mechanisms of docs/architecture.md §2: the sequence balance loss (DeepSeek-V3 eqs. 17–20) and
// the auxiliary-loss-free bias update.
#ifndef MOELAB_LAYERS_ROUTER_H
#define MOELAB_LAYERS_ROUTER_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int E, K;
    int softmax;        // 0: s = sigmoid(logits), 1: s = softmax(logits)
    int norm_topk;      // g_i = s_i / Σ_chosen s_j before route_scale
    float route_scale;  // g_i *= route_scale
} RouterCfg;

// The check of c (1 <= K <= E) that router_forward, router_backward_input and their CUDA kernels'
// entry points make before anything else.
void router_check_cfg(const RouterCfg *c);

// scores (N, E) from logits (N, E); idx (N, K) the chosen experts in descending order of
// score + bias (ties: lower id first); gates (N, K) in the same order. bias (E) may be NULL (zeros).
// counts (E), unless NULL, += the number of tokens that chose each expert (the load that the
// bias update balances), counted where the choice is made instead of in a pass over idx.
void router_forward(float *scores, int *idx, float *gates, const float *logits, const float *bias,
                    const RouterCfg *c, int N, long *counts);
// dlogits (N, E) += ∂L/∂logits given dgates (N, K) and dscores (N, E) (dscores may be NULL).
// The choice of experts is piecewise constant: no gradient flows through it.
void router_backward_input(float *dlogits, const float *dgates, const float *dscores,
                           const float *scores, const int *idx, const RouterCfg *c, int N);

// Sequence balance loss L_bal = Σ_i f_i P_i, averaged over the B sequences of T tokens:
// f_i = E/(K·T) · #{t : i chosen for t}, P_i = (1/T) Σ_t s_{i,t} / Σ_j s_{j,t}.
float router_balance_loss(const float *scores, const int *idx, int B, int T, int E, int K);
// dscores (N, E) += dloss · ∂L_bal/∂scores (through P only; f is a count).
void router_balance_loss_backward(float *dscores, float dloss, const float *scores, const int *idx,
                                  int B, int T, int E, int K);

// Aux-loss-free balancing, after an optimizer step: b_i += gamma · sign(c̄ − c_i), c̄ = K·n_tokens/E,
// where counts (router_forward's) and n_tokens cover the whole step over all data-parallel ranks.
void router_bias_update(float *bias, const long *counts, int E, int K, long n_tokens, float gamma);

#ifdef __cplusplus
}
#endif
#endif
