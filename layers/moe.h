// Mixture-of-experts feed-forward layer: router → dispatch → routed experts (SwiGLU on contiguous
// per-expert row ranges) → combine, plus always-on shared experts:
//     y = Σ_{shared j} FFN_j(x) + Σ_{chosen i} g_i · FFN_i(x)
// The layer never knows how it is parallelized: moving token rows between their home and the ranks
// that hold their experts is the dispatcher's job (MoeDispatcher below). The local dispatcher here
// keeps everything in one process; parallel/ provides the expert-parallel one (all-to-all).
#ifndef MOELAB_LAYERS_MOE_H
#define MOELAB_LAYERS_MOE_H

#include "layers/router.h"
#include "layers/swiglu.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// The dispatcher interface.
//
// A routing of N home tokens × K choices (idx (N, K), logical expert ids) becomes `n_rows` rows at
// the experts of this rank, grouped contiguously by local expert slot (counts[s] rows for slot s,
// slot order), so each expert runs one GEMM over its range. The same plan serves the forward
// dispatch (x rows out), the forward combine (expert outputs back), and the backward, which is the
// mirror image: combine-backward moves (N, K, D) gradients out the way dispatch moved x, and
// dispatch-backward brings expert-input gradients home the way combine did.
typedef struct MoeDispatchPlan MoeDispatchPlan;  // opaque, one per micro-batch in flight

struct LayerOps;

typedef struct MoeDispatcher {
    void *impl;
    int n_local;  // expert slots computed on this rank
    // The backend (layers/ops.h) whose memory the rows live in; the layer computes through it too.
    // NULL: the CPU.
    const struct LayerOps *ops;
    // Plans the exchange for idx (N, K). Writes counts (n_local) and returns the plan; *n_rows is the
    // total number of rows this rank's experts receive. Where plan_wait is set, the counts may still
    // be on their way when plan returns (n_rows is not) and are there once plan_wait returns.
    MoeDispatchPlan *(*plan)(struct MoeDispatcher *self, const int *idx, int N, int K, int *n_rows,
                             int *counts);
    // Optional (NULL: plan's counts are ready when it returns): waits for the counts of p. The GPU's
    // dispatcher computes them on the device; between plan and plan_wait the layer queues work that
    // needs no counts (the shared experts), which the device runs while the host waits.
    void (*plan_wait)(struct MoeDispatcher *self, MoeDispatchPlan *p);
    // Optional (NULL: none): p's counts (n_local) in the backend's memory, written by the calls
    // plan queued, valid until release. With it the layer queues the forward's and backward_input's
    // expert GEMMs without waiting for the host's copy (layers/ops.h's OpsGroups), and waits only
    // before the weight gradients, by when the copy has long arrived.
    const int *(*dev_counts)(struct MoeDispatcher *self, MoeDispatchPlan *p);
    // rows (n_rows, D) ← home rows. per_choice = 0: src is (N, D) and token t's row goes to each of
    // its K experts; per_choice = 1: src is (N, K, D), one row per (token, choice). Rows are elements
    // of the backend's activation dtype (ops->act_size bytes each).
    void (*to_experts)(struct MoeDispatcher *self, MoeDispatchPlan *p, const void *src,
                       int per_choice, void *rows, int D);
    // Optional (NULL: the layer calls to_experts): to_experts started but perhaps still in flight
    // until finish(self, p), so that independent work queued in between (the shared experts)
    // overlaps the transfer. Neither src nor rows may be touched before finish.
    void (*to_experts_start)(struct MoeDispatcher *self, MoeDispatchPlan *p, const void *src,
                             int per_choice, void *rows, int D);
    void (*finish)(struct MoeDispatcher *self, MoeDispatchPlan *p);
    // dst (N, K, D) ← rows (n_rows, D): each (token, choice) gets its expert's row back.
    void (*from_experts)(struct MoeDispatcher *self, MoeDispatchPlan *p, const void *rows,
                         void *dst, int D);
    // Optional, with to_experts_start (NULL: the layer calls from_experts): from_experts started,
    // completed by finish(self, p). Neither rows nor dst may be touched before finish.
    void (*from_experts_start)(struct MoeDispatcher *self, MoeDispatchPlan *p, const void *rows,
                               void *dst, int D);
    // Optional (NULL where rows travel to other ranks): the row of rows (n_rows, D) that holds pair
    // t·K + k, (N·K) ints in the backend's memory, valid until release. With it the layer moves no
    // rows home: the combine, its backward and the sum of choices read and write the experts' rows
    // in place (layers/ops.h), which saves two passes over (N, K, D) each way.
    const int *(*row_map)(struct MoeDispatcher *self, MoeDispatchPlan *p);
    void (*release)(struct MoeDispatcher *self, MoeDispatchPlan *p);
    void (*destroy)(struct MoeDispatcher *self);
    // Token chunks the layer splits each micro-batch into (0 or 1: one; config key ep_chunks), for
    // a dispatcher without row_map: each chunk has a plan of its own, and with the start hooks
    // chunk c+1's dispatch travels while chunk c's experts compute, chunk c's combine while chunk
    // c+1's experts compute (the backward likewise). Per token the math is the same; only the
    // routed experts' weight gradients add up their rows chunk by chunk.
    int chunks;
    // Set by the owner where dev_counts is (0: off): plan leaves counts unwritten and sends nothing
    // to the host, and the layer sizes every expert GEMM, the weight gradients' too, from
    // dev_counts, so that no call of the layer waits for the device (a step captured in a CUDA
    // graph). The dispatcher's check of the expert ids, which reads the host's counts, is left out
    // then: the router's top-k gives ids in range whatever its logits (NaN included).
    int device_counts_only;
} MoeDispatcher;

// The single-process dispatcher: all E experts local, slot s = expert s. Rows are ordered by expert,
// then by token, then by choice (a stable counting sort).
MoeDispatcher *moe_local_dispatcher_create(int E);

// The stable counting sort of every host dispatch plan (the local dispatcher here, the EP one in
// parallel/): orders n items by key (each in [0, n_keys), checked by the caller) keeping the input
// order within a key. Writes counts (n_keys) items per key, and where not NULL row (n) the sorted
// row of item r and item (n) its inverse, the item at each row. (The GPU plans are moe_cuda.h's.)
void moe_counting_sort(const int *key, long n, int n_keys, int *counts, int *row, int *item);

// The dispatchers' host row moves (rows of D fp32 values; the CPU table's scatter_rows and
// gather_rows, layers/ops.h): rows[pos[p]] = src[p] (per_choice = 1: src (N·K, D), one row per
// pair) or src[p / K] (per_choice = 0: src (N, D), each pair's token row) for the N·K pairs p; and
// dst[p] = rows[pos[p]] for the n pairs p.
void moe_scatter_rows(float *rows, const float *src, int per_choice, const int *pos, int N, int K, int D);
void moe_gather_rows(float *dst, const float *rows, const int *pos, long n, int D);

// plan, then plan_wait where d has it: for a caller that needs the counts at once (not with
// device_counts_only).
MoeDispatchPlan *moe_plan_now(MoeDispatcher *d, const int *idx, int N, int K, int *n_rows, int *counts);

// ---------------------------------------------------------------------------------------------
// The layer.

typedef struct {
    int D, E, K, S, Fe;
    RouterCfg rc;
    float alpha;        // sequence balance loss weight (0: off)
} MoeShape;

// Views into the model's parameter buffers. n_local = dispatcher->n_local slots. The weights are
// the compute copy the layer reads, elements of the backend's activation dtype; the bias is read
// and updated in fp32, so it points into the fp32 master values.
typedef struct {
    const void *router;     // (E, D)
    float *bias;            // (E) balancing bias (fp32, no gradient)
    const void *w13;        // (n_local, 2·Fe, D) routed experts' [W1; W3] (layers/swiglu.h)
    const void *w2;         // (n_local, D, Fe)
    const void *sw13;       // (S, 2·Fe, D) shared experts
    const void *sw2;        // (S, D, Fe)
} MoeParams;

// Views into the model's gradient buffers (fp32), the same shapes as MoeParams (the bias has none).
typedef struct {
    float *router;
    float *w13, *w2;
    float *sw13, *sw2;
} MoeGrads;

// One token chunk of a micro-batch: chunk c of C holds the tokens [⌊c·N/C⌋, ⌊(c+1)·N/C⌋), sizes
// within one token of each other (empty ones only where N < C). Its expert
// rows are a contiguous range of the micro-batch's xe, ex and dye, grouped by local slot.
typedef struct {
    int t0, n;              // home tokens [t0, t0 + n)
    int r0, n_rows;         // expert rows [r0, r0 + n_rows)
    MoeDispatchPlan *plan;  // the chunk's exchange
    int *counts;            // (n_local) rows per local slot
} MoeChunk;

// Everything one micro-batch keeps between forward, backward_input and backward_weight.
// Buffers are allocated by moe_forward (sized by the rows actually received) and freed by
// moe_acts_free as soon as backward_weight has consumed them. `void *` buffers hold elements of the
// backend's activation dtype, `float *` ones fp32 (layers/ops.h's conventions).
typedef struct {
    int B, T, N, n_rows;
    int S;                  // shared experts (the length of sh, for moe_acts_free)
    const void *x;          // (N, D) input, owned by the caller, must live until backward_weight
    float *logits;          // (N, E)
    float *scores;          // (N, E)
    int *idx;               // (N, K)
    float *gates;           // (N, K)
    float *bal_loss;        // (1) L_bal of this micro-batch (before alpha), in the backend's memory
    int C;                  // token chunks (dispatcher->chunks, at least 1)
    MoeChunk *ch;           // [C]
    int counted;            // the chunks' counts are on the host (plan_wait has returned for each)
    void *xe;               // (n_rows, D) expert input rows, chunk by chunk
    SwigluActs ex;          // n_rows rows of routed-expert activations
    // The experts' output rows are not kept: the combine's backward needs them only for the gates'
    // gradient dy·ye, which the experts' backward gets from its own dh and h (moe.c).
    const int *map;         // (N·K) the dispatcher's row map (pair t·K + k at row map[t·K + k]), or NULL
    SwigluActs *sh;         // [S] of N rows of shared-expert activations
    // written by backward_input for backward_weight:
    void *dye;              // (n_rows, D) gradient of the expert output rows
    void *dlogits;          // (N, E) the router logits' gradient in the activation dtype (the
                            // linear products' operand; the fp32 one is scratch)
} MoeActs;

// y (N, D) = MoE(x (N, D)) for B sequences of T tokens (N = B·T). Overwrites y. y NULL: only the
// activations the backward reads (a forward run again for the backward: activation recomputation),
// which skips the experts' W2 products and the combine, with its exchange.
// y and x are elements of the dispatcher's backend's activation dtype, like every (·, D) tensor below.
// counts (E, the backend's memory), unless NULL, += the tokens routed to each expert (training's
// load for the bias update; the router counts them as it chooses).
void moe_forward(void *y, MoeActs *a, const void *x, const MoeShape *s, const MoeParams *p,
                 MoeDispatcher *d, int B, int T, long *counts);
// dx (N, D) += ∂(L + alpha·L_bal)/∂x given dy (N, D).
void moe_backward_input(void *dx, MoeActs *a, const void *dy, const MoeShape *s,
                        const MoeParams *p, MoeDispatcher *d);
// g (gradient views, the layout of the forward's p) += ∂L/∂weights. Needs backward_input first.
// acc = 0: the experts' gradients (routed and shared) are written, their old contents unread; the
// router's is always added to.
// dy is the (N, D) gradient backward_input was given (the shared experts' weight gradients read it:
// the caller keeps it until then, as the model's dh does).
void moe_backward_weight(MoeGrads *g, MoeActs *a, const void *dy, const MoeShape *s, MoeDispatcher *d,
                         int acc);
// Frees a micro-batch's buffers and releases its dispatch plan.
void moe_acts_free(MoeActs *a, MoeDispatcher *d);

#ifdef __cplusplus
}
#endif
#endif
