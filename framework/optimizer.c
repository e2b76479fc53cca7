// AdamW, the learning-rate schedule and gradient clipping (see optimizer.h).
#include "framework/optimizer.h"

#include <math.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "framework/core/prof.h"

void adamw_init(AdamW *o, const ParamRegistry *r) { adamw_init_on(o, r, &layer_ops_cpu, NULL); }

void adamw_init_on(AdamW *o, const ParamRegistry *r, const LayerOps *ops, void *p_low) {
    o->total = r->total;
    o->ops = ops;
    o->p_low = p_low;
    o->m = ops->alloc(r->total * sizeof(float));
    o->v = ops->alloc(r->total * sizeof(float));
    o->t = 0;
    o->shard = NULL;
    o->w = NULL;
}

void adamw_free(AdamW *o) {
    if (!o->ops) return;  // never initialized (a pipeline trainer's unused optimizer)
    o->ops->free(o->m);
    o->ops->free(o->v);
    o->m = o->v = NULL;
}

float optim_lr(const MoeConfig *c, int step) {
    if (step < c->warmup_steps) return c->lr * (float)(step + 1) / (float)c->warmup_steps;
    int span = c->steps - c->warmup_steps;
    double p = (double)(step - c->warmup_steps) / (double)(span > 1 ? span : 1);
    if (p > 1.0) p = 1.0;
    return (float)(c->min_lr + 0.5 * (c->lr - c->min_lr) * (1.0 + cos(M_PI * p)));
}

// The trained tensors of r (kind < 0: all, else only that kind) as spans of its buffers, in
// registry order: s (r->n) is filled, their count returned.
static int trained_spans(const ParamRegistry *r, int kind, AdamwSpan *s) {
    int n = 0;
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *p = &r->p[i];
        if (p->kind == PARAM_BUFFER || (kind >= 0 && (int)p->kind != kind)) continue;
        s[n++] = (AdamwSpan){(long)p->offset, (long)p->offset, (long)p->numel, p->decay};
    }
    return n;
}

double optim_grad_sqsum_on(const LayerOps *ops, const ParamRegistry *r, int kind) {
    // Every tensor in one pass.
    AdamwSpan *sp = core_alloc((size_t)(r->n > 0 ? r->n : 1) * sizeof(AdamwSpan));
    const double s = ops_sqsum(ops, r->grad, sp, trained_spans(r, kind, sp));
    core_free(sp);
    return s;
}

float optim_clip_factor(float norm, float clip) {
    return clip > 0.0f && norm > clip ? clip / norm : 1.0f;
}

void adamw_step(AdamW *o, ParamRegistry *r, const MoeConfig *c, float lr, float gscale) {
    CHECK(!o->shard, "adamw_step: a ZeRO-1 optimizer steps with zero1_step");
    prof_mark(PROF_OPTIM);
    o->t++;
    const AdamwHyper h = {lr, c->beta1, c->beta2, c->adam_eps, c->weight_decay, o->t, gscale};
    AdamwSpan *sp = core_alloc((size_t)(r->n > 0 ? r->n : 1) * sizeof(AdamwSpan));
    o->ops->adamw_step(r->data, r->grad, o->m, o->v, o->p_low, sp, trained_spans(r, -1, sp), &h);
    core_free(sp);
    prof_mark(PROF_OTHER);
}
