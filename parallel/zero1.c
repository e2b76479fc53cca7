// ZeRO-1 (see zero1.h): the sharded AdamW on top of dp_sync's reduce-scatter layout.
#include "parallel/zero1.h"

#include "framework/core/check.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/prof.h"

// The trained tensors of r in registry order, the list both the optimizer and the trainer's
// gradient sync use: t (r->n) gets them, off their offsets, param their registry indices (each may
// be NULL). Returns their number.
static int trained_list(const ParamRegistry *r, DpGrad *t, size_t *off, int *param) {
    int n = 0;
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *p = &r->p[i];
        if (p->kind == PARAM_BUFFER) continue;
        if (t) t[n] = (DpGrad){r->grad + p->offset, p->numel, p->kind == PARAM_EXPERT};
        if (off) off[n] = p->offset;
        if (param) param[n] = i;
        n++;
    }
    return n;
}

static double mib(size_t floats) { return (double)floats * sizeof(float) / (1024.0 * 1024.0); }

void zero1_init(AdamW *o, const ParamRegistry *r, const LayerOps *ops, void *p_low, const Grid *g,
                size_t bucket_floats) {
    CHECK(g->ops == NULL || g->ops == ops, "zero-1: the registry and the grid are on different backends");
    DpGrad *t = core_alloc((size_t)(r->n > 0 ? r->n : 1) * sizeof *t);
    size_t *off = core_alloc((size_t)(r->n > 0 ? r->n : 1) * sizeof *off);
    const int n = trained_list(r, t, off, NULL);
    o->total = r->total;
    o->ops = ops;
    o->p_low = p_low;
    o->t = 0;
    o->shard = dp_sync_shard_create(g, t, off, n, bucket_floats);
    core_free(t);
    core_free(off);
    const size_t S = dp_sync_shard_floats(o->shard);
    const size_t bytes = (S > 0 ? S : 1) * sizeof(float);
    o->m = ops->alloc(bytes);
    o->v = ops->alloc(bytes);
    // The moments against the unsharded optimizer's (two buffers of the registry's size); the
    // shard's gradient buffer is an extra S floats, the weights and their gradients stay whole.
    core_info0("zero-1: optimizer state %.2f MiB per rank instead of %.2f (AdamW moments of 1/%d of the "
               "dense and 1/%d of the expert floats; a %.2f MiB gradient shard; weights and gradients "
               "stay whole)", mib(2 * S), mib(2 * r->total), g->dp, g->edp, mib(S));
}

void zero1_init_if(AdamW *o, const ParamRegistry *r, const LayerOps *ops, void *p_low, const Grid *g,
                   int zero) {
    if (zero && g && g->dp > 1) {
        zero1_init(o, r, ops, p_low, g, DP_SYNC_BUCKET_FLOATS);
        return;
    }
    adamw_init_on(o, r, ops, p_low);
    if (zero) core_info0("zero-1: one data-parallel rank, nothing to shard");
}

void zero1_free(AdamW *o) {
    if (!o->shard) return;
    dp_sync_free(o->shard);
    o->shard = NULL;
}

void zero1_step(AdamW *o, ParamRegistry *r, const MoeConfig *c, float lr, float clip) {
    CHECK(o->shard, "zero1_step: the optimizer is not sharded (zero1_init)");
    float *g = dp_sync_shard_grads(o->shard);
    prof_mark(PROF_OPTIM);
    o->t++;
    const AdamwHyper h = {lr, c->beta1, c->beta2, c->adam_eps, c->weight_decay, o->t, clip};
    int *param = core_alloc((size_t)(r->n > 0 ? r->n : 1) * sizeof(int));  // list index → registry
    trained_list(r, NULL, NULL, param);
    int np;
    const DpShardPiece *sp = dp_sync_shard_pieces(o->shard, &np);
    // The shard's pieces as spans: weights at their registry place, gradient and moments at the
    // shard's; one pass over all of them.
    AdamwSpan *span = core_alloc((size_t)(np > 0 ? np : 1) * sizeof(AdamwSpan));
    for (int k = 0; k < np; k++) {
        const ParamInfo *pi = &r->p[param[sp[k].tensor]];
        span[k] = (AdamwSpan){(long)(pi->offset + sp[k].start), (long)sp[k].at, (long)sp[k].n, pi->decay};
    }
    o->ops->adamw_step(r->data, g, o->m, o->v, o->p_low, span, np, &h);
    core_free(span);
    core_free(param);
    prof_mark(PROF_OTHER);
    // Every rank now holds its shard of the new weights: the compute copy travels, in its dtype.
    if (o->p_low)
        dp_sync_shard_allgather(o->shard, o->p_low, o->ops->act_size,
                                o->ops->act_size == sizeof(float) ? COMM_F32 : COMM_B16);
    else
        dp_sync_shard_allgather(o->shard, r->data, sizeof(float), COMM_F32);
}

// On a GPU only the shard of the fp32 weights is current between steps (the step all-gathers the
// compute copy): the rest is gathered from the other ranks.
static void whole_weights(AdamW *o, ParamRegistry *r) {
    if (o->p_low) dp_sync_shard_allgather(o->shard, r->data, sizeof(float), COMM_F32);
}

// A new buffer of the backend's memory (registry layout) ← the shard of every rank (collective). The
// floats outside every trained tensor (the router biases' places) stay zero.
static float *whole_moment(AdamW *o, const float *shard) {
    const size_t bytes = o->total * sizeof(float);
    float *full = o->ops->alloc(bytes);
    dp_sync_shard_expand(o->shard, shard, full);
    return full;
}

void zero1_gather_state(AdamW *o, ParamRegistry *r, float *m, float *v) {
    CHECK(o->shard, "zero1_gather_state: the optimizer is not sharded (zero1_init)");
    whole_weights(o, r);
    // One whole buffer at a time: a checkpoint needs no more device memory.
    float *full = whole_moment(o, o->m);
    o->ops->download(m, full, o->total * sizeof(float));
    o->ops->free(full);
    full = whole_moment(o, o->v);
    o->ops->download(v, full, o->total * sizeof(float));
    o->ops->free(full);
}

void zero1_scatter_state(AdamW *o, const float *m, const float *v) {
    CHECK(o->shard, "zero1_scatter_state: the optimizer is not sharded (zero1_init)");
    const size_t bytes = o->total * sizeof(float);
    float *full = o->ops->alloc_uninit(bytes);  // each upload writes it all
    o->ops->upload(full, m, bytes);
    dp_sync_shard_take(o->shard, full, o->m);
    o->ops->upload(full, v, bytes);
    dp_sync_shard_take(o->shard, full, o->v);
    o->ops->free(full);
}

void zero1_state_whole(AdamW *o, ParamRegistry *r, float **m, float **v) {
    CHECK(o->shard, "zero1_state_whole: the optimizer is not sharded (zero1_init)");
    whole_weights(o, r);
    *m = whole_moment(o, o->m);
    *v = whole_moment(o, o->v);
}

void zero1_state_shard(AdamW *o, float *m, float *v) {
    CHECK(o->shard, "zero1_state_shard: the optimizer is not sharded (zero1_init)");
    dp_sync_shard_take(o->shard, m, o->m);
    dp_sync_shard_take(o->shard, v, o->v);
    o->ops->free(m);
    o->ops->free(v);
}
