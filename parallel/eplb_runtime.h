// EPLB during training (docs/architecture.md §6, "Runtime"; docs/eplb.md "Runtime"): keeps the physical
// expert slots of every MoE layer balanced over the EP ranks while the model trains. Every step it sums
// the gradients of each expert's replicas, so that replicas stay identical; every `interval` steps it
// plans a new placement from the tokens each logical expert received, moves expert weights and AdamW
// moments into their new slots point-to-point (only slots whose content changes), and switches the
// layers' dispatchers to it. It knows nothing of the model: the engine lists its expert tensors as
// rows inside buffers that share the parameter registry's layout. The buffers may live on a GPU: the
// runtime then copies and adds through a backend table and moves rows over the EP group's NCCL twin;
// the placement, the loads and the plan stay on the host.
#ifndef MOELAB_PARALLEL_EPLB_RUNTIME_H
#define MOELAB_PARALLEL_EPLB_RUNTIME_H

#include <stdio.h>

#include "framework/core/config.h"
#include "layers/moe.h"
#include "layers/ops.h"
#include "parallel/comm.h"
#include "parallel/eplb.h"

#ifdef __cplusplus
extern "C" {
#endif

// One expert tensor of one MoE layer: this rank's n_local slots are consecutive rows of `row` floats
// starting at `offset` in every buffer of the spec (weights, gradients, moments).
typedef struct {
    int layer;      // MoE layer of the runtime, 0-based
    size_t offset;  // floats into each buffer
    size_t row;     // floats per slot
} EplbTensor;

#define EPLB_STATES 3  // buffers that move with a slot: weights, AdamW m, AdamW v

typedef struct {
    int L, E, R;               // MoE layers; logical experts and physical slots per layer
    int interval;              // optimizer steps between rebalances (>= 1)
    int groups, nodes;         // the planner's Ng expert groups and Nn nodes (1, 1: global policy)
    Comm *ep;                  // the EP group (not owned): slot p lives on its rank p / (R / ep->size)
    int *phy2log;              // (L, R) the placement, the caller's buffer: read at creation and
                               // rewritten by every rebalance
    MoeDispatcher **disp;      // (L) each layer's expert-parallel dispatcher (the array is copied, the
                               // dispatchers are not owned); the runtime installs the placement in them
    const EplbTensor *tensor;  // (n_tensor) every expert tensor of every layer (copied)
    int n_tensor;
    float *state[EPLB_STATES]; // moved with the slots: fp32 weights, AdamW m, AdamW v (a caller may
                               // repoint rt->s.state in move_begin: ZeRO-1 leaves all three NULL
                               // between rebalances and points them at whole copies of its shards
                               // for the moves)
    float *grad;               // gradients: replicas are summed here
    // Where the buffers live (NULL: host memory, layer_ops_cpu): a table whose add sums fp32 (the
    // fp32 table of the buffers' device, backend_ops_f32) for copies, sums and Σ g².
    const struct LayerOps *ops;
    Comm *ep_dev;              // the twin of ep that moves buffer rows (NULL: ep itself)
    // Called by a rebalance around its moves, only when its plan changes some slot (the plan is
    // the same on every rank, so all of them call or none does): before, a caller makes whole what
    // the moves need (ZeRO-1: its sharded weights and moments, into state); after, it refreshes what
    // depends on the moved rows. NULL: nothing. A rebalance that changes no slot moves nothing and
    // calls neither.
    void (*move_begin)(void *ctx), (*move_end)(void *ctx);
    void *move_ctx;
} EplbRuntimeSpec;

typedef struct EplbRuntime {
    EplbRuntimeSpec s;         // tensor and disp point to the runtime's own copies; ops and ep_dev set
    int G, n_local;            // EP ranks; slots per rank (R / G)
    int *logcnt;               // (L, E) replicas of each logical expert in the current placement
    long *load;                // (L, E) tokens per logical expert since the last rebalance (all DP ranks)
    EplbPlan *plan;            // the planner over G ranks: hierarchical with s.groups expert groups on
                               // s.nodes nodes, the global policy when both are 1
    int *work;                 // (E) scratch
    // The step just observed by eplb_runtime_step (placement in force during that step):
    double *step_imbalance;    // (L) max/mean of the EP ranks' loads
    // The last rebalance (for the log and the metrics), on the interval's loads:
    double *before, *after;    // (L) max/mean rank load under the old and the new placement
    double *rank_before, *rank_after;  // (L, G) tokens per EP rank under the old and the new placement
    long changed;              // slots (all layers, whole EP group) whose expert changed
    long sent;                 // of those, slots copied from another rank (the rest were local copies)
} EplbRuntime;

// Usage errors (exit 2, the same message on every rank) for EPLB settings no run can use: redundant
// slots without rebalancing, n_experts + eplb_redundant not a multiple of ep, no MoE layer, or a
// planner rule broken. Does nothing when EPLB is off.
void eplb_runtime_check_config(const MoeConfig *c);
// The placement before the first rebalance: slot p holds logical expert p mod E (R slots).
void eplb_initial_placement(int *phy2log, int R, int E);

// Installs the placement in every dispatcher and allocates everything a rebalance needs.
EplbRuntime *eplb_runtime_create(const EplbRuntimeSpec *s);
void eplb_runtime_free(EplbRuntime *rt);

// Replaces the placement (L, R) (the one a checkpoint saved, say) and installs it in the dispatchers.
// The slots' contents are the caller's business: load them afterwards. Every expert needs a slot.
void eplb_runtime_set_placement(EplbRuntime *rt, const int *phy2log);
// Replaces the interval's accumulated load (L, E) (the one a checkpoint saved), so that a run
// resumed between two rebalances plans its next one from the same tokens as the uninterrupted run.
void eplb_runtime_set_load(EplbRuntime *rt, const long *load);

// After the backward: the gradient of every replica ← the sum over all replicas of its expert in the
// EP group, added in a fixed order (each rank's slots ascending, then the ranks ascending), so every
// replica gets the same bits and applies the same update. Collective over ep; no communication while
// no expert has two replicas.
void eplb_runtime_sum_replica_grads(EplbRuntime *rt);
// Σ g² over the slots that repeat an expert already held by a lower slot, over the EP group: what a
// gradient norm over all slots must subtract to count each logical expert once. Collective over ep.
double eplb_runtime_duplicate_sqsum(EplbRuntime *rt);
// The rows of this rank's slots that repeat an expert already held by a lower slot, as spans of the
// buffers' layout (g_at the row's first float, n its floats): *rows ← a new array (core_free) of
// them, in layer, slot and tensor order; returns their number. A ZeRO-1 trainer, whose averaged
// gradients live in shards, leaves out of its norm the part of these rows in each shard.
int eplb_runtime_duplicate_rows(EplbRuntime *rt, AdamwSpan **rows);
// End of optimizer step `step` (0-based); counts (L, E) are the step's tokens per logical expert over
// all DP ranks (the same on every rank). Records the step's rank imbalance and adds the counts to the
// interval's load; after every interval-th step (step + 1 ≡ 0 mod interval) plans, moves the slots
// whose expert changes, switches the dispatchers and returns 1 (the engine logs the figures). A layer
// whose plan does not balance the interval's loads strictly better than its current placement keeps
// it. Collective over ep.
int eplb_runtime_step(EplbRuntime *rt, const long *counts, int step);
// Tokens on each EP rank for loads (L, E) under the current placement (a replica takes load/logcnt of
// its expert): rank_load (L, G) and, if imbalance != NULL, max/mean per layer (L) (1 when all zero).
void eplb_runtime_rank_load(const EplbRuntime *rt, const long *load, double *rank_load,
                            double *imbalance);
// Appends the EPLB fields of a metrics line: `, "rank_imbalance": [...]` (the last observed step) and,
// when rebalanced, `, "eplb": {"before": [...], "after": [...], "slots_changed": n, "slots_sent": n,
// "rank_load_before": [[...]], "rank_load_after": [[...]]}` (one entry per MoE layer).
void eplb_runtime_write_metrics(const EplbRuntime *rt, FILE *f, int rebalanced);

#ifdef __cplusplus
}
#endif
#endif
