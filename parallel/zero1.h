// ZeRO-1 (docs/parallel.md, "ZeRO-1"): AdamW whose state is sharded over the data-parallel ranks.
// The gradient sync reduce-scatters its buckets (dp_sync_shard_create) so that each rank receives
// the averaged gradient of its shard only; each rank keeps the moments of that shard only, steps it
// (the fp32 values at those positions are its master copy), and all-gathers the updated weights:
// the compute copy (bf16 on a GPU) when the model has one, else the fp32 values. Dense tensors are
// sharded over DP, expert slices over expert-DP, as their gradients are averaged.
//
// The optimizer is an AdamW (framework/optimizer.h) with o->shard set and m, v of the shard's size;
// the checkpoint code still sees whole moments, through zero1_gather_state and zero1_scatter_state,
// and an EPLB rebalance moves slot rows of whole moments, through zero1_state_whole and
// zero1_state_shard.
#ifndef MOELAB_PARALLEL_ZERO1_H
#define MOELAB_PARALLEL_ZERO1_H

#include "framework/optimizer.h"
#include "parallel/dp_sync.h"
#include "parallel/grid.h"

#ifdef __cplusplus
extern "C" {
#endif

// o for the registry r of a model (or pipeline stage) of grid g on backend ops (r's buffers live
// there; p_low as in AdamW), with buckets of bucket_floats floats (DP_SYNC_BUCKET_FLOATS in
// training). Collective over the grid's dp and edp groups. Logs the optimizer memory per rank against the unsharded optimizer's.
void zero1_init(AdamW *o, const ParamRegistry *r, const LayerOps *ops, void *p_low, const Grid *g,
                size_t bucket_floats);
// The optimizer the config asks for: zero1_init when zero is set and g (NULL for one process) has
// more than one data-parallel rank, else adamw_init_on (logging that there is nothing to shard when
// zero is set). Buckets of DP_SYNC_BUCKET_FLOATS. Collective over g.
void zero1_init_if(AdamW *o, const ParamRegistry *r, const LayerOps *ops, void *p_low, const Grid *g,
                   int zero);
// Frees what zero1_init added (a no-op for an unsharded optimizer); adamw_free frees the rest.
void zero1_free(AdamW *o);
// The step after dp_sync_complete(o->shard): the shard's gradients times clip (the global clip
// factor), AdamW on the shard with learning rate lr, then the all-gather of the weights (collective).
void zero1_step(AdamW *o, ParamRegistry *r, const MoeConfig *c, float lr, float clip);
// For a checkpoint: m, v (host, r->total floats each) ← the whole moments, gathered from every rank;
// on a GPU the fp32 values in r->data are made whole too (between steps only the shard of them is
// current there). Collective.
void zero1_gather_state(AdamW *o, ParamRegistry *r, float *m, float *v);
// After a checkpoint load: this rank's shard of the whole moments m, v (host, registry layout).
void zero1_scatter_state(AdamW *o, const float *m, const float *v);
// For an EPLB rebalance, which moves whole expert slot rows between EP ranks, while which positions
// of a row lie in this rank's shard differs from slot to slot: *m, *v ← new buffers in the backend's
// memory (r->total floats each, registry layout) holding the whole moments, and on a GPU the fp32
// values in r->data made whole, as zero1_gather_state does. Collective.
void zero1_state_whole(AdamW *o, ParamRegistry *r, float **m, float **v);
// After the rebalance: this rank's shard of the moments ← m, v (from zero1_state_whole), which it
// frees. Local.
void zero1_state_shard(AdamW *o, float *m, float *v);

#ifdef __cplusplus
}
#endif
#endif
