// The MoE transformer of docs/architecture.md §2, assembled from a config: the parameter registry and its
// per-layer views, weight initialization, and one micro-batch's forward, backward_input and
// backward_weight. A Model is one pipeline stage (the stage interface of §3): layers [l0, l1), with
// the embedding when l0 == 0 and the final norm, head and loss when l1 == L; the whole model is the
// stage [0, L).
#ifndef MOELAB_FRAMEWORK_MODEL_H
#define MOELAB_FRAMEWORK_MODEL_H

#include "framework/core/config.h"
#include "framework/core/params.h"
#include "layers/moe.h"
#include "layers/ops.h"
#include "layers/swiglu.h"

#ifdef __cplusplus
extern "C" {
#endif

// Views of one layer's weights into the compute copy the layers read: elements of ops->dt (Model.wlow,
// or the fp32 values themselves when ops->dt is fp32).
typedef struct {
    const void *attn_norm;  // (D)
    const void *wq;         // (H·hd, D); with wk and wv right after it, Wqkv (H·hd + 2·Hkv·hd, D)
    const void *wk, *wv;    // (Hkv·hd, D)
    const void *wo;         // (D, H·hd)
    const void *ffn_norm;   // (D)
    const void *w13;        // (2F, D) dense layers only: [W1; W3] (layers/swiglu.h)
    const void *w2;         // (D, F)
    MoeParams moe;          // MoE layers only
} LayerWeights;

// Views of one layer's weight gradients (fp32) into the registry's gradient buffer: the same tensors
// (wq, wk, wv back to back here too).
typedef struct {
    float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm;
    float *w13, *w2;        // dense layers only
    MoeGrads moe;           // MoE layers only
} LayerGrads;

typedef struct {
    MoeConfig cfg;
    int hd;                  // head size D / H
    ParamRegistry reg;
    LayerWeights *w;         // [L] weight views (zero outside [l0, l1))
    LayerGrads *g;           // [L] gradient views (likewise)
    int l0, l1;              // this stage's layers [l0, l1)
    int first, last;         // holds the embedding (l0 == 0) / the final norm, head and loss (l1 == L)
    // The weights outside the layers: views into the compute copy (ops->dt) like LayerWeights, and
    // their fp32 gradients.
    const void *embed;                 // (V, D) first stage only
    float *d_embed;
    const void *final_norm;            // (D) last stage only
    float *d_final_norm;
    const void *lm_head;               // (V, D) last stage only; the embedding when tied
    float *d_lm_head;
    MoeShape moe_shape;
    MoeDispatcher *disp;     // owned: moves the tokens of every MoE layer without a dispatcher of its own
    MoeDispatcher **layer_disp;  // [L] owned, NULL: use disp. EPLB gives each MoE layer its own,
                                 // because each layer has its own placement of experts in slots
    int R;                   // physical expert slots per MoE layer over the EP group: E + eplb_redundant
    int *phy2log;            // (L, R) logical expert held by each slot (MoE layers; -1 on dense layers);
                             // slot p lives on EP rank p / n_local. Starts as p mod E; EPLB rewrites it
    int ep_rank, ep_size, n_local;     // expert slots held here: n_local = R / ep
    long *expert_counts;     // (L, E) tokens routed to each logical expert since the last reset, on
                             // the host: up to date after model_counts_to_host
    long *dcounts;           // (L, E) where the forward counts, in ops' memory (expert_counts itself
                             // on the CPU), so that a GPU step downloads the counts once
    const LayerOps *ops;     // the backend every call goes through (layers/ops.h): the CPU until
                             // model_to_device; reg.data, reg.grad and the activations live on it
    void *wlow;              // (reg.total) compute copy of the weights in ops->dt that the weight
                             // views point into (refreshed by every AdamW step); NULL when ops->dt is
                             // fp32 and the views point into reg.data
    int untrained_only;      // 1 after model_keep_untrained: reg.data holds the untrained floats only
    unsigned char *ffn_unzeroed;  // [L] 1 from model_zero_grad, which leaves layer l's SwiGLU weight
                                  // gradients (experts, shared experts or dense FFN) as they are, to
                                  // the layer's next weight backward, which writes them instead of
                                  // adding to them
} Model;

// What a forward or backward does besides the math: the caller's choices for one call (NULL: none of
// them, as evaluation and sampling want).
typedef struct {
    int count_routes;   // forward: add the micro-batch's routed tokens to dcounts (training only)
    int defer_loss;     // forward: return 0 and leave the loss in a->scalars (a training step
                        // downloads every micro-batch's scalars at once, see model_scalars_loss)
    // backward_weight: called once layer l's weight gradients are final (the DP sync starts their
    // all-reduce then), with layer_ctx; NULL: nobody asks.
    void (*layer_done)(void *layer_ctx, int l);
    void *layer_ctx;
    // forward: the micro-batch's inputs (N) then targets (N), checked and split by
    // model_split_tokens and already in the model's memory, read in place of tokens: nothing is
    // uploaded (a step captured in a CUDA graph). NULL: from tokens.
    const int *dev_ids;
    // forward: the stage's first inputs_only layers (all at l1 − l0 or more; 0: none) keep their input
    // only (h_in), the rest of their activations in buffers that they share, and no MoE layer's
    // rows: what an evaluation needs, and all that a backward needs to recompute those layers'
    // forwards before their backwards (the same bits: config recompute and recompute_layers).
    int inputs_only;
    // forward, with inputs_only: those layers keep the attention's results too (att, o, h_mid),
    // so that the recompute runs only the norms, the q, k, v product and the FFN again (config
    // recompute_keep_attention).
    int keep_attention;
} ModelPass;

// Per-layer activations of one micro-batch (and the gradients backward_weight needs). `void *`
// buffers hold elements of ops->dt, `float *` ones fp32 (layers/ops.h's conventions).
typedef struct {
    void *h_in;         // (N, D) residual stream entering the layer
    void *a;            // (N, D) attention RMSNorm output
    float *rstd1;       // (N) its 1/rms
    void *v;            // (B, Hkv, T, hd) value projection, head-major (layers/attention.h)
    void *qr, *kr;      // (B, H, T, hd), (B, Hkv, T, hd) query and key projections after RoPE
    float *att;         // the attention state (ops->attention_state_floats)
    void *o;            // (N, H·hd) attention output before Wo
    void *h_mid;        // (N, D) residual after attention
    void *m;            // (N, D) FFN RMSNorm output
    float *rstd2;       // (N) its 1/rms
    SwigluActs ffn;     // N rows of dense FFN activations
    MoeActs moe;        // MoE layer activations
    // Allocated and written by backward_input, read and freed by backward_weight (outside the
    // arena, so that model_backward holds one layer's at a time); ffn.dab likewise:
    void *d_h_mid;      // (N, D)
    void *dqkv;         // (N, H·hd + 2·Hkv·hd) gradient of the stacked projections (before RoPE)
    float *pa, *pm;     // (rmsnorm_partial_floats(N, D)) the two RMSNorm gains' partial gradients
} LayerActs;

typedef struct {
    int B, T, N;
    int *inputs, *targets;  // (N) each; targets NULL-equivalent when has_targets == 0
    int has_targets;
    int inputs_only;        // from the forward's ModelPass: layer[l] for l0 < l < l0 + inputs_only
                            // shares every buffer but h_in with layer[l0], and those of them that
                            // are MoE layers, layer l0 included, keep no rows
    int keep_attention;     // from the forward's ModelPass: those layers keep att, o and h_mid too
    LayerActs *layer;       // [L], used in [l0, l1)
    void *h_out;            // (N, D) residual stream after the stage's last layer (sent onwards)
    void *hf;               // (N, D) final RMSNorm output
    float *rstdf;           // (N) its 1/rms
    void *logits;           // (N, V); after the backward, their gradient (dlogits is the same buffer)
    float *lse, *losses;    // (N), (N)
    float ce, bal;          // mean cross-entropy (last stage); Σ over the stage's MoE layers of L_bal
    float *scalars;         // (1 + L) in ops' memory: [0] the mean cross-entropy, [1 + l] L_bal of
                            // MoE layer l; ce and bal are read from them (model_scalars_loss)
    void *ffn_out;          // (N, D) the output of the FFN being computed, added to the residual
                            // at once: one buffer for every layer
    void *dh;               // (dh_slots, N, D) ∂L/∂(input of layer l), allocated by the backward.
                            // model_stage_backward_input keeps every one for backward_weight:
                            // slot l − l0, and the last = ∂L/∂h_out. model_backward, which is done
                            // with a layer before the next, has two that take turns (slot l − l0 mod 2)
    int dh_slots;
    void *dlogits;          // (N, V) = logits (written in place by the backward)
    float *pf;              // (rmsnorm_partial_floats(N, D)) the final norm gain's partial gradient
    char *arena;            // one block holding every buffer above
    size_t arena_used, arena_cap;
    void *redo;             // after model_stage_backward_input of a forward with inputs_only: the
                            // buffers of the layers after l0 that shared them (h_in aside),
                            // recomputed for backward_weight
} ModelActs;

// The whole model (stage [0, L)). Each MoE layer has R = E + c->eplb_redundant physical expert slots,
// R / ep_size of them on this EP rank (R % ep_size == 0).
Model *model_create(const MoeConfig *c, int ep_rank, int ep_size);
// Host bytes a trainer holds per parameter beside the weights and gradients (its optimizer's
// state), for dense and for expert parameters (ZeRO-1 shards them over different groups).
typedef struct {
    double dense, expert;
} ModelStateBytes;
// One pipeline stage: layers [l0, l1) of the model c describes. A model whose weights and gradients,
// with the state per parameter the caller will add, exceed the machine's memory is a usage error
// before anything is allocated.
Model *model_create_stage(const MoeConfig *c, int ep_rank, int ep_size, int l0, int l1, ModelStateBytes state);
// The whole model of checkpoint ckpt's stored config c, as EP rank 0 of ep_size (the commands that
// read a checkpoint without training: sample, export, ckpt inspect and verify); a model too large
// for this host is an error that names the checkpoint.
Model *model_create_stored(const MoeConfig *c, int ep_size, const char *ckpt);
// Fills every tensor from its parameter identity (seed, layer, name, expert): identical whatever
// the layout; a slot gets the numbers of the logical expert it holds, so replicas start identical.
void model_init_weights(Model *m);
// Moves an initialized model (EPLB attaches afterwards) onto the backend ops: values and gradients
// to its memory, a compute copy in ops->dt when that is not fp32, and ops' local dispatcher (with
// expert parallelism the model's dispatcher must be on ops already: ep_dispatcher_to_device). From
// then on token ids stay host arrays, while h_in, dh_out, the activations and reg.data/reg.grad are
// memory of ops->dev (read them with ops->download).
void model_to_device(Model *m, const LayerOps *ops);
// Re-derives the compute copy (wlow) from the fp32 values after something other than AdamW rewrote
// them (an EPLB rebalance, a checkpoint load); nothing to do without one.
void model_refresh_low(Model *m);
// For an optimizer that keeps the fp32 master copy of the trained tensors itself (ZeRO-1's shard):
// frees reg.data but for the untrained floats that lead the registry (the router biases, which the
// router reads in fp32 and the bias update writes), the only values the layers then read outside
// the compute copy; reg.data then holds params_untrained_floats floats, and model_refresh_low is
// refused. Needs a compute copy (wlow).
void model_keep_untrained(Model *m);
// Every gradient is zero, as far as any reader can tell: the SwiGLU weight gradients (most of the
// model: gigabytes a step) are not filled but marked, and each layer's next weight backward writes
// them (Model.ffn_unzeroed). Every layer of the stage must run its weight backward before the
// gradients are read, as every training step does.
void model_zero_grad(Model *m);
// The aux-loss-free bias update of every MoE layer from dcounts, n_tokens the step's tokens over
// all data-parallel ranks (router_bias_update's rule, on the model's device, one call).
void model_router_bias_update(Model *m, long n_tokens);
// dcounts → expert_counts (one download; nothing on the CPU), and back after the host changed them
// (the data-parallel sum).
void model_counts_to_host(Model *m);
void model_counts_to_device(Model *m);
// Every MoE layer's dispatcher keeps its counts on the device (layers/moe.h's device_counts_only),
// for good: no forward or backward of the model waits for the device any more. Exits if one cannot
// (it has no dev_counts: the CPU's, the EP dispatcher).
void model_keep_counts_on_device(Model *m);
// Replaces the dispatcher (the model owns it from now on).
void model_set_dispatcher(Model *m, MoeDispatcher *d);
// Gives MoE layer l a dispatcher of its own, replacing any earlier one (the model owns it).
void model_set_layer_dispatcher(Model *m, int l, MoeDispatcher *d);
void model_free(Model *m);

// Forward of one micro-batch through the whole model. tokens (B, T+1) gives inputs [:, :T] and
// targets [:, 1:]; with with_targets == 0 only inputs (B, T) are read and no loss is computed.
// Returns the micro-batch loss CE + α·Σ L_bal (0 without targets), and sets a->ce and a->bal. Counts
// no routes (evaluation, sampling): a training step runs the stage calls with a ModelPass.
float model_forward(Model *m, ModelActs *a, const int *tokens, int B, int T, int with_targets);
// ∂(scale · loss)/∂(everything) except weights; keeps what backward_weight needs.
void model_backward_input(Model *m, ModelActs *a, float scale);

// tokens (B, T+1) (with_targets) or (B, T) → ids: the inputs (B·T), then with_targets the targets
// (B·T), each checked against the vocabulary (exit 2 naming the first bad one).
void model_split_tokens(const Model *m, const int *tokens, int B, int T, int with_targets, int *ids);

// The same for one stage. The first stage reads its inputs from tokens, a later one takes h_in
// (N, D), the previous stage's h_out. The last stage reads the targets from tokens (B, T+1) and
// returns CE + α·Σ L_bal of its layers; an earlier stage returns α·Σ L_bal of its layers. The
// stage's output is a->h_out. pass (or NULL) as ModelPass says.
float model_stage_forward(Model *m, ModelActs *a, const int *tokens, const void *h_in, int B, int T,
                          int with_targets, const ModelPass *pass);
// dh_out (N, D) is ∂L/∂h_out from the next stage (NULL on the last stage, which starts from its
// loss). Afterwards model_stage_dinput gives ∂L/∂h_in (N, D) for the previous stage. Each layer
// that kept its input only (ModelPass.inputs_only) runs its forward again first, into buffers of its
// own that backward_weight reads (the micro-batch then holds every layer's activations until it is
// freed).
void model_stage_backward_input(Model *m, ModelActs *a, const void *dh_out, float scale);
const void *model_stage_dinput(const Model *m, const ModelActs *a);
// Accumulates (+=) the weight gradients of the micro-batch into m->reg.grad; pass (or NULL) as
// ModelPass says.
void model_backward_weight(Model *m, ModelActs *a, const ModelPass *pass);
// model_stage_backward_input then model_backward_weight with the same results, bit for bit, but
// layer by layer (input, then weight, from the last layer down), freeing each MoE layer's rows as
// soon as its weight gradients are done: the peak holds one layer's backward buffers instead of all
// of them. Each layer that kept its input only runs its forward again first. dh_out as for
// model_stage_backward_input, and model_stage_dinput gives ∂L/∂h_in afterwards; pass (or NULL) as
// ModelPass says.
void model_backward(Model *m, ModelActs *a, const void *dh_out, float scale, const ModelPass *pass);
void model_acts_free(Model *m, ModelActs *a);
// Bytes one micro-batch of (B, T) holds from its forward to its backward: the activation arena
// (exact) and what each MoE layer keeps (its router's scores and, for an even spread of the rows,
// its experts' input rows and SwiGLU products; of the first inputs_only layers, which keep their
// input only, one MoE layer's at a time), for a forward with pass (NULL: keeping every layer's).
// *bwd: what the backward of its widest FFN adds while it runs (the SwiGLU products' gradients).
// Lower bounds of the step's need.
double model_acts_bytes(const Model *m, int B, int T, const ModelPass *pass, double *bwd);
// The loss model_stage_forward returns, from a copy of a->scalars on the host (1 + L); sets *ce
// and *bal as it sets a->ce and a->bal. with_targets as given to the forward.
float model_scalars_loss(const Model *m, const float *scalars, int with_targets, float *ce, float *bal);

// Per-layer load imbalance of expert_counts: max / mean tokens per expert (0 for dense layers).
void model_load_imbalance(const Model *m, float *out /* (L) */);
void model_reset_counts(Model *m);
int model_is_moe_layer(const Model *m, int l);
// Model FLOPs of one training token (forward + backward = 3 × forward): 2 per multiply-add of every
// matrix a token passes through (attention projections, the dense FFN or the router plus K routed and
// S shared experts, the LM head) plus causal attention's q·k and p·v (average window (T+1)/2).
double model_train_flops_per_token(const MoeConfig *c);

#ifdef __cplusplus
}
#endif
#endif
