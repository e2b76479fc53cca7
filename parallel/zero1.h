// ZeRO-1 (docs/parallel.md, "ZeRO-1"): AdamW whose state is sharded over the data-parallel ranks.
// The gradient sync reduce-scatters its buckets (dp_sync_shard_create) so that each rank receives
// the averaged gradient of its shard only; each rank keeps the moments and the fp32 master copy of
// that shard only, steps it, writes the new weights into the compute copy the layers read (bf16 on
// a GPU; on fp32 backends the registry's values themselves) and all-gathers that. Dense tensors are
// sharded over DP, expert slices over expert-DP, as their gradients are averaged.
//
// The optimizer is an AdamW (framework/optimizer.h) with o->shard set and m, v, w of the shard's
// size. With a compute copy, nothing reads the registry's trained fp32 values after zero1_init, and
// the model keeps only its untrained ones (model_keep_untrained: the router biases, which lead the
// registry). The checkpoint code still sees whole values and moments, through zero1_gather_state and
// zero1_scatter_state, and an EPLB rebalance moves slot rows of them whole, through
// zero1_state_whole and zero1_state_shard.
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
// For a checkpoint: w, m, v (host, r->total floats each) ← the whole fp32 values and moments,
// gathered from every rank's shard (the untrained values from r->data). Collective.
void zero1_gather_state(AdamW *o, const ParamRegistry *r, float *w, float *m, float *v);
// After a checkpoint load (w, m, v: host, registry layout): this rank's shard of them, the untrained
// values in r->data and the compute copy (r->data itself without one). Local.
void zero1_scatter_state(AdamW *o, ParamRegistry *r, const float *w, const float *m, const float *v);
// For an EPLB rebalance, which moves whole expert slot rows between EP ranks, while which positions
// of a row lie in this rank's shard differs from slot to slot: *w, *m, *v ← new buffers in the
// backend's memory (r->total floats each, registry layout) holding the whole fp32 values and
// moments, as zero1_gather_state gathers them. Collective.
void zero1_state_whole(AdamW *o, const ParamRegistry *r, float **w, float **m, float **v);
// After the rebalance: from w, m, v (from zero1_state_whole, which it frees), as
// zero1_scatter_state takes them. Local.
void zero1_state_shard(AdamW *o, ParamRegistry *r, float *w, float *m, float *v);

#ifdef __cplusplus
}
#endif
#endif
