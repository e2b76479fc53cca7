// The compute backend as a table of functions: every call the engine (framework/model.c), the MoE
// layer (moe.c) and the optimizer make on activations, weights and gradients. The CPU table
// (ops.c) calls the layers' CPU functions; the CUDA table (ops.cu, --config=cuda only) calls their
// *_cuda_* kernels in one dtype. Code written against the table runs unchanged on either device.
#ifndef MOELAB_LAYERS_OPS_H
#define MOELAB_LAYERS_OPS_H

#include <stddef.h>

#include "framework/core/cuda.h"
#include "framework/core/mem.h"
#include "layers/adamw_cuda.h"
#include "layers/moe.h"
#include "layers/router.h"
#include "layers/swiglu.h"

#ifdef __cplusplus
extern "C" {
#endif

// Conventions. Every pointer is memory of `dev`. `void *` tensors hold elements of `dt`:
// activations, their gradients, logits and the compute copy of the weights; the structs and layer
// APIs above the table (SwigluActs, MoeActs, MoeParams, the dispatcher, framework/model.h) declare
// such buffers `void *` too, and step through them in units of act_size. `float *` tensors are
// always fp32: per-row statistics (rstd, lse, losses), the attention state, router logits, scores,
// gates and their gradients, weight gradients, master weights and moments.
// Grouped calls take their groups' row counts as OpsGroups (below). backward_* calls
// accumulate (+=) as the layers do, except where a call says that it writes (=) or takes an `acc`
// flag: a buffer written in full needs no zero fill first. Shapes are those of the layer headers.
// Scalar results (the balance loss, the mean loss, expert counts, Σ g²) stay in dev memory too, so
// that a training step brings them to the host in one download at its end instead of one wait
// each.
// The rows of a grouped call (the experts'): G groups, group e's counts[e] rows right after group
// e−1's, `rows` of them in all. `host` (G) holds the counts on the host. `dev`, where not NULL, holds
// them in dev memory, written by calls queued before: a GPU's dispatcher counts the rows there, and
// `host` may then be NULL, the counts still on their way to the host (layers/moe.h's plan_wait), so
// that the expert GEMMs are queued without waiting for them. A backend that sizes its products on
// the host (cuBLAS) downloads them then; on the CPU dev memory is host memory.
typedef struct OpsGroups {
    int G;
    long rows;
    const int *host;  // (G) or NULL
    const int *dev;   // (G) in dev memory, or NULL
} OpsGroups;

// The groups of host counts (G): rows summed, each count checked (≥ 0).
OpsGroups ops_groups_host(const int *counts, int G);

typedef struct LayerOps {
    const char *name;    // "cpu", "cuda fp32", "cuda bf16"
    CoreDevice dev;
    CoreDtype dt;
    size_t act_size;     // bytes per element of dt

    // Memory. alloc zero-fills and never returns NULL (one clear error instead). alloc_uninit is for
    // a buffer the caller writes in full before reading it: it skips the fill (the MoE layer's
    // buffers are gigabytes a step on a GPU); the CPU table's sanitizer build fills it with 0xFF
    // bytes (NaN, expert id -1) so that a read before the write shows in the CPU tests.
    void *(*alloc)(size_t bytes);
    void *(*alloc_uninit)(size_t bytes);
    void (*free)(void *p);
    void (*zero)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);        // within dev
    void (*upload)(void *dst, const void *host, size_t bytes);    // host → dev
    void (*download)(void *host, const void *src, size_t bytes);  // dev → host, complete on return
    void (*sync)(void);          // waits for every call issued so far
    size_t (*peak_bytes)(void);  // most bytes allocated through alloc at once (0: not tracked)
    // dst (n, dt) ← src (n, fp32), rounded to nearest even; and back.
    void (*to_act)(void *dst, const float *src, long n);
    void (*from_act)(float *dst, const void *src, long n);
    // out (n) = a (n) + b (n); out may be a or b.
    void (*add)(void *out, const void *a, const void *b, long n);

    void (*embedding_forward)(void *out, const int *tokens, const void *table, int N, int V, int D);
    void (*embedding_backward_weight)(float *dtable, const void *dout, const int *tokens, int N, int V,
                                      int D);
    void (*rmsnorm_forward)(void *out, float *rstd, const void *inp, const void *gain, int N, int D,
                            float eps);
    // One pass over the rows (layers/rmsnorm.h): dinp (N, D) = dres + ∂L/∂inp given dout, written
    // (dres (N, D) the residual gradient joining it, or NULL; it may be dinp), and part
    // (rmsnorm_partial_floats(N, D), fp32) = the gain gradient's partial sums, written.
    void (*rmsnorm_backward_input)(void *dinp, float *part, const void *dres, const void *dout,
                                   const void *inp, const void *gain, const float *rstd, int N, int D);
    // dgain (D) += the partial sums of N rows that backward_input wrote.
    void (*rmsnorm_backward_weight)(float *dgain, const float *part, int N, int D);
    void (*linear_forward)(void *out, const void *inp, const void *W, int N, int IC, int OC);
    // The same product with an fp32 output (router logits).
    void (*linear_forward_f32)(float *out, const void *inp, const void *W, int N, int IC, int OC);
    // dinp += dout · W (acc = 1), or = it with dinp's contents unread (acc = 0).
    void (*linear_backward_input)(void *dinp, const void *dout, const void *W, int N, int IC, int OC,
                                  int acc);
    void (*linear_backward_weight)(float *dW, const void *dout, const void *inp, int N, int IC, int OC);
    // The three products over the groups g of rows (experts): rows [o_e, o_e + counts[e]) use W[e]
    // (G, OC, IC); a group without rows is skipped. The backward products add to dinp or dW
    // (acc = 1) or write them without reading them (acc = 0: a fresh buffer, no zero fill); with
    // acc = 0 a group without rows gets a zero dW.
    void (*linear_forward_grouped)(void *out, const void *inp, const void *W, const OpsGroups *g, int IC,
                                   int OC);
    void (*linear_backward_input_grouped)(void *dinp, const void *dout, const void *W, const OpsGroups *g,
                                          int IC, int OC, int acc);
    void (*linear_backward_weight_grouped)(float *dW, const void *dout, const void *inp, const OpsGroups *g,
                                           int IC, int OC, int acc);
    // RoPE on rows in layouts of their own (layers/rope.h: row n at element n·ld, ld ≥ nh·hd, or
    // head-major with ld = ROPE_HEADS), so that q and k are read out of the stacked (N, qd + 2·kd)
    // rows of the attention's one q, k, v product into the head-major tensors attention reads,
    // and their gradients back into such rows.
    void (*rope_forward)(void *out, int out_ld, const void *inp, int inp_ld, int N, int T, int nh,
                         int hd, float theta);
    // dinp = the inverse rotation of dout, written; dinp may be dout (in place, equal layouts).
    void (*rope_backward_input)(void *dinp, int dinp_ld, const void *dout, int dout_ld, int N, int T,
                                int nh, int hd, float theta);
    // The same move without the rotation, exact: v and dv out of and into the stacked rows.
    void (*rope_copy)(void *out, int out_ld, const void *inp, int inp_ld, int N, int T, int nh,
                      int hd);
    // Attention keeps a per-backend fp32 state from forward to backward: the (B, H, T, T)
    // probabilities on the CPU, the (B, H, T) log-sum-exp of each query row on the GPU.
    size_t (*attention_state_floats)(int B, int T, int H);
    void (*attention_forward)(void *out, float *state, const void *q, const void *k, const void *v,
                              int B, int T, int H, int Hkv, int hd);
    // dq, dk, dv = gradients given dout (overwritten); out is the forward's output.
    void (*attention_backward_input)(void *dq, void *dk, void *dv, const void *dout, const void *q,
                                     const void *k, const void *v, const void *out,
                                     const float *state, int B, int T, int H, int Hkv, int hd);
    // The SwiGLU gate over rows of F, a and b the halves of ab's (rows, 2F) rows (layers/swiglu.h):
    // h (rows, F) = silu(a) ⊙ b. The backward writes (=) dab (rows, 2F), the buffers being fresh,
    // and replaces dh by the gate's output h as the forward stored it: the W2 weight gradient's
    // operand, so that a caller that dropped h needs no pass to recompute it. s (rows), where not
    // NULL, = Σ_f dh·h per row (fp32 sums): the routed experts' half of the gates' gradient
    // (moe_gate_grad below, layers/moe.c).
    void (*swiglu_act_forward)(void *h, const void *ab, long rows, int F);
    void (*swiglu_act_backward)(void *dab, float *s, void *dh, const void *ab, long rows, int F);
    void (*crossentropy_forward)(float *losses, float *lse, const void *logits, const int *targets,
                                 int N, int V);
    // dlogits (N, V) = dloss · (softmax − onehot), written; dlogits may be logits (in place).
    void (*crossentropy_backward_input)(void *dlogits, const void *logits, const float *lse,
                                        const int *targets, float dloss, int N, int V);
    // out (1) = (Σ x (n) / n), the sum in double in a fixed order (the mean cross-entropy).
    void (*loss_mean)(float *out, const float *x, int n);

    // Router (all fp32) and the MoE layer's gate-weighted combine. router_forward's counts (E),
    // unless NULL, += the tokens that chose each expert.
    void (*router_forward)(float *scores, int *idx, float *gates, const float *logits,
                           const float *bias, const RouterCfg *c, int N, long *counts);
    void (*router_backward_input)(float *dlogits, const float *dgates, const float *dscores,
                                  const float *scores, const int *idx, const RouterCfg *c, int N);
    // loss (1) = L_bal (overwritten).
    void (*balance_loss)(float *loss, const float *scores, const int *idx, int B, int T, int E, int K);
    void (*balance_loss_backward)(float *dscores, float dloss, const float *scores, const int *idx,
                                  int B, int T, int E, int K);
    // The aux-loss-free bias update (router_bias_update's sign rule) of L layers at once: bias is a
    // host array of L pointers to (E) biases (NULL: the layer is skipped), counts (L, E).
    void (*router_bias_update)(float *const *bias, const long *counts, int L, int E, int K,
                               long n_tokens, float gamma);
    // The combine and its backward read and write the experts' rows where they are: pair t·K + k
    // is row map[t·K + k] of rows (a dispatcher's row map, MoeDispatcher.row_map, in dev memory),
    // or row t·K + k with map NULL (rows moved home in pair order, (N, K, D)).
    // y (N, D) = Σ_k gates (N, K)[t, k] · rows[pair t·K + k], choices added in order, then plus
    // each of the n_add (N, D) tensors of add (n_add, N, D) in order (NULL when n_add is 0), each
    // sum rounded to the activation dtype: the bits of adding them one by one with `add`, in one
    // pass. Overwrites y.
    void (*moe_combine)(void *y, const void *rows, const int *map, const float *gates, int N, int K,
                        int D, const void *add, int n_add);
    // Its backward given dy (N, D): drows[pair] = gates · dy[t] (overwritten; drows is laid out as
    // rows). The gates' gradient dy[t] · rows[pair] needs no rows kept (moe_gate_grad).
    void (*moe_combine_backward)(void *drows, const void *dy, const int *map, const float *gates,
                                 int N, int K, int D);
    // The gates' gradient from the experts' row dots s (rows laid out as above, one fp32 each):
    // dgates (N, K)[t, k] = s[pair] / gates[t, k], 0 where the gate is 0 (overwritten). With
    // drows = g·dy, the expert's dh = drows·W2 and its gate output h, s = dh·h = g·(dy · W2 h) =
    // g·(dy · rows[pair]): the combine's dot without keeping the rows (layers/moe.c says why a
    // zero gate may take 0).
    void (*moe_gate_grad)(float *dgates, const float *s, const int *map, const float *gates, int N,
                          int K);
    // dx (N, D) += Σ_k rows[pair t·K + k], choices in order.
    void (*moe_sum_choices)(void *dx, const void *rows, const int *map, int N, int K, int D);
    // The single-process dispatcher on this device (rows of dt).
    MoeDispatcher *(*local_dispatcher)(int E);
    // The expert-parallel dispatcher's work on this device (parallel/ep_dispatch.c), rows of D
    // elements of dt and int maps in dev memory. scatter_rows: rows[pos[p]] = src[p] (per_choice =
    // 1: src (N·K, D)) or src[p / K] (per_choice = 0: src (N, D)) for the N·K pairs p; gather_rows:
    // dst[p] = rows[pos[p]] for the n pairs p. ep_plan: the slot of each of the n routed pairs idx
    // (n), replica (j + me) mod logcnt[e] of its expert e among log2phy (E, maxcnt) (j: the pair's
    // rank among e's pairs in pair order), and send_pos (n) numbering the pairs by slot, then pair
    // order (a stable sort), with counts (R) per slot; ids outside [0, E) are counted in no slot, so
    // the counts then sum to less than n (the caller checks). ep_recv_pos: arrival row a of rows
    // packed in B blocks at ascending arrival offsets table[b] goes to expert row
    // table[B + b] + a - table[b], b the last block with table[b] <= a; table (2, B), recv_pos (n).
    // layers/moe_cuda.h says the same of the GPU kernels.
    void (*scatter_rows)(void *rows, const void *src, int per_choice, const int *pos, int N, int K, int D);
    void (*gather_rows)(void *dst, const void *rows, const int *pos, long n, int D);
    void (*ep_plan)(int *send_pos, int *counts, const int *idx, long n, int E, const int *log2phy,
                    const int *logcnt, int maxcnt, int me, int R);
    void (*ep_recv_pos)(int *recv_pos, const int *table, int B, long n);

    // Optimizer over a list of tensors (spans of the flat buffers, adamw_cuda.h): AdamW
    // (adamw_cuda.h's arithmetic; p_low, of dt at the spans' p_at, receives the new weights, or NULL)
    // and *sum += Σ g² in double (sum in dev memory), each over all spans at once; and g *= s.
    void (*adamw_step)(float *p, const float *g, float *m, float *v, void *p_low, const AdamwSpan *s,
                       int ns, const AdamwHyper *h);
    void (*grad_sqsum)(double *sum, const float *g, const AdamwSpan *s, int ns);
    void (*grad_scale)(float *g, long n, float s);
} LayerOps;

// The CPU backend (fp32): the functions of layers/*.c.
extern const LayerOps layer_ops_cpu;

// Σ g² over the ns spans s of g (o's memory) on the host: o's grad_sqsum into one double of o's
// memory (a GPU's, where a host address would be an illegal access), then one download. 0 for no
// spans, with no call at all.
double ops_sqsum(const LayerOps *o, const float *g, const AdamwSpan *s, int ns);

// SwiGLU over the groups g of rows (one group of N: one FFN; G experts: one range each), through
// o's calls. out (ΣN, D) = W2 (silu(W1 x) ⊙ W3 x) per group; w13 (G, 2F, D) holds each group's
// [W1; W3] (layers/swiglu.h), w2 (G, D, F). out NULL: only the activations, for a backward that
// reads them and never out (a recomputed forward): no W2 product; acts->h NULL as well: only ab
// (the gate's backward makes h again from ab).
void ops_swiglu_forward(const LayerOps *o, void *out, SwigluActs *acts, const void *x, const void *w13,
                        const void *w2, const OpsGroups *g, int D, int F);
// dx += ∂L/∂x given dout (acc = 1), or dx = ∂L/∂x with dx's contents unread (acc = 0); writes (=)
// acts->dab, and s (ΣN) = Σ_f dh·h per row where s is not NULL (the MoE layer's routed experts).
// scratch_dh (ΣN, F) is left holding h = silu(a) ⊙ b, the same bits as the forward's: a caller that
// dropped acts->h after the forward may keep it as acts->h for backward_weight, which then
// recomputes nothing.
void ops_swiglu_backward_input(const LayerOps *o, void *dx, SwigluActs *acts, void *scratch_dh, float *s,
                               const void *dout, const void *w13, const void *w2, const OpsGroups *g, int D,
                               int F, int acc);
// dw13 (G, 2F, D), dw2 (G, D, F) += weight gradients (acc = 1), or = them with the old contents
// unread (acc = 0).
void ops_swiglu_backward_weight(const LayerOps *o, float *dw13, float *dw2, const SwigluActs *acts,
                                const void *x, const void *dout, const OpsGroups *g, int D, int F, int acc);

#ifdef __cplusplus
}
#endif
#endif
