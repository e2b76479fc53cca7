// AdamW, the learning-rate schedule and gradient clipping (see optimizer.h).
#include "framework/optimizer.h"

#include <math.h>

#include "framework/core/mem.h"

void adamw_init(AdamW *o, const ParamRegistry *r) {
    o->total = r->total;
    o->m = core_alloc(r->total * sizeof(float));
    o->v = core_alloc(r->total * sizeof(float));
    o->t = 0;
}

void adamw_free(AdamW *o) {
    core_free(o->m);
    core_free(o->v);
    o->m = o->v = NULL;
}

float optim_lr(const MoeConfig *c, int step) {
    if (step < c->warmup_steps) return c->lr * (float)(step + 1) / (float)c->warmup_steps;
    int span = c->steps - c->warmup_steps;
    double p = (double)(step - c->warmup_steps) / (double)(span > 1 ? span : 1);
    if (p > 1.0) p = 1.0;
    return (float)(c->min_lr + 0.5 * (c->lr - c->min_lr) * (1.0 + cos(M_PI * p)));
}

double optim_grad_sqsum(const ParamRegistry *r, int kind) {
    double s = 0;
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *p = &r->p[i];
        if (p->kind == PARAM_BUFFER || (kind >= 0 && (int)p->kind != kind)) continue;
        const float *g = r->grad + p->offset;
        for (size_t j = 0; j < p->numel; j++) s += (double)g[j] * g[j];
    }
    return s;
}

void optim_scale_grads(ParamRegistry *r, float s) {
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *p = &r->p[i];
        if (p->kind == PARAM_BUFFER) continue;
        float *g = r->grad + p->offset;
        for (size_t j = 0; j < p->numel; j++) g[j] *= s;
    }
}

float optim_clip_factor(float norm, float clip) {
    return clip > 0.0f && norm > clip ? clip / norm : 1.0f;
}

void adamw_step(AdamW *o, ParamRegistry *r, const MoeConfig *c, float lr) {
    o->t++;
    const double bc1 = 1.0 - pow(c->beta1, (double)o->t), bc2 = 1.0 - pow(c->beta2, (double)o->t);
    const float b1 = c->beta1, b2 = c->beta2, eps = c->adam_eps;
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *pi = &r->p[i];
        if (pi->kind == PARAM_BUFFER) continue;
        float *p = r->data + pi->offset, *g = r->grad + pi->offset;
        float *m = o->m + pi->offset, *v = o->v + pi->offset;
        const float decay = pi->decay ? 1.0f - lr * c->weight_decay : 1.0f;
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < pi->numel; j++) {
            m[j] = b1 * m[j] + (1.0f - b1) * g[j];
            v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
            float mhat = (float)(m[j] / bc1), vhat = (float)(v[j] / bc2);
            p[j] = p[j] * decay - lr * mhat / (sqrtf(vhat) + eps);
        }
    }
}
