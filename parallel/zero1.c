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
    o->w = ops->alloc(bytes);
    dp_sync_shard_take(o->shard, r->data, o->w);
    // Against the unsharded optimizer: its moments, plus, where the layers read a compute copy, the
    // fp32 values it steps (the only copy of them on a CPU, whose layers read them: the shard's
    // master copy is then an extra 1/DP). The shard's gradient buffer is an extra S floats.
    const size_t whole = (p_low ? 3 : 2) * r->total;
    core_info0("zero-1: optimizer state %.2f MiB per rank instead of %.2f (AdamW moments and fp32 "
               "master copy of 1/%d of the dense and 1/%d of the expert floats%s; a %.2f MiB gradient "
               "shard; gradients stay whole)", mib(3 * S), mib(whole), g->dp, g->edp,
               p_low ? "" : "; the fp32 weights the layers read stay whole beside it", mib(S));
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
    o->ops->free(o->w);
    o->w = NULL;
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
    // The master shard steps; the compute copy (the fp32 values themselves without one) receives
    // the new weights at their registry place.
    o->ops->adamw_step(o->w, g, o->m, o->v, o->p_low ? o->p_low : r->data, span, np, &h);
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

// A new buffer of the backend's memory (registry layout) ← the shard of every rank (collective). The
// floats outside every trained tensor stay zero.
static float *whole_moment(AdamW *o, const float *shard) {
    float *full = o->ops->alloc(o->total * sizeof(float));
    dp_sync_shard_expand(o->shard, shard, full);
    return full;
}

// The same for the fp32 values: every rank's master shard (collective), and the untrained floats
// (the router biases), which every rank holds at the head of r->data.
static float *whole_values(AdamW *o, const ParamRegistry *r) {
    float *full = whole_moment(o, o->w);
    o->ops->copy(full, r->data, params_untrained_floats(r) * sizeof(float));
    return full;
}

// Its inverse, local: the master shard, the untrained floats and the compute copy ← full (registry
// layout). Without a compute copy r->data is the compute copy, whole.
static void take_values(AdamW *o, ParamRegistry *r, const float *full) {
    dp_sync_shard_take(o->shard, full, o->w);
    if (o->p_low) {
        o->ops->copy(r->data, full, params_untrained_floats(r) * sizeof(float));
        o->ops->to_act(o->p_low, full, (long)o->total);
    } else {
        o->ops->copy(r->data, full, o->total * sizeof(float));
    }
}

// Downloads a whole buffer into host memory and frees it.
static void download_free(AdamW *o, float *host, float *full) {
    o->ops->download(host, full, o->total * sizeof(float));
    o->ops->free(full);
}

void zero1_gather_state(AdamW *o, const ParamRegistry *r, float *w, float *m, float *v) {
    CHECK(o->shard, "zero1_gather_state: the optimizer is not sharded (zero1_init)");
    // One whole buffer at a time: a checkpoint needs no more device memory.
    download_free(o, w, whole_values(o, r));
    download_free(o, m, whole_moment(o, o->m));
    download_free(o, v, whole_moment(o, o->v));
}

void zero1_scatter_state(AdamW *o, ParamRegistry *r, const float *w, const float *m, const float *v) {
    CHECK(o->shard, "zero1_scatter_state: the optimizer is not sharded (zero1_init)");
    const size_t bytes = o->total * sizeof(float);
    float *full = o->ops->alloc_uninit(bytes);  // each upload writes it all
    o->ops->upload(full, w, bytes);
    take_values(o, r, full);
    o->ops->upload(full, m, bytes);
    dp_sync_shard_take(o->shard, full, o->m);
    o->ops->upload(full, v, bytes);
    dp_sync_shard_take(o->shard, full, o->v);
    o->ops->free(full);
}

void zero1_state_whole(AdamW *o, const ParamRegistry *r, float **w, float **m, float **v) {
    CHECK(o->shard, "zero1_state_whole: the optimizer is not sharded (zero1_init)");
    *w = whole_values(o, r);
    *m = whole_moment(o, o->m);
    *v = whole_moment(o, o->v);
}

void zero1_state_shard(AdamW *o, ParamRegistry *r, float *w, float *m, float *v) {
    CHECK(o->shard, "zero1_state_shard: the optimizer is not sharded (zero1_init)");
    take_values(o, r, w);
    dp_sync_shard_take(o->shard, m, o->m);
    dp_sync_shard_take(o->shard, v, o->v);
    o->ops->free(w);
    o->ops->free(m);
    o->ops->free(v);
}
