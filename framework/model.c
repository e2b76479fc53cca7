// Model assembly and the micro-batch forward/backward of the MoE transformer (docs/architecture.md §2).
// Each layer's forward and backward sit side by side; backward is split into backward_input (the
// gradient flowing to earlier layers) and backward_weight (parameter gradients), as §3 requires.
#include "framework/model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "framework/core/prof.h"
#include "framework/core/rng.h"
#include "layers/rmsnorm.h"
#include "layers/rope.h"

int model_is_moe_layer(const Model *m, int l) { return l >= m->cfg.n_dense_layers; }

double model_train_flops_per_token(const MoeConfig *c) {
    const double D = c->D, hd = (double)c->D / c->H, qd = c->H * hd, kd = c->Hkv * hd;
    const double attn = qd * D + 2 * kd * D + D * qd + 2 * qd * (c->T + 1) / 2.0;
    const double dense = 3 * D * c->F, moe = c->E * D + (c->K + c->S) * 3 * D * c->Fe;
    const int n_moe = c->L - c->n_dense_layers;
    const double fwd = 2 * (c->L * attn + c->n_dense_layers * dense + n_moe * moe + (double)c->V * D);
    return 3 * fwd;
}

// ---------------------------------------------------------------------------------------------
// Registry: names, shapes and initialization of every tensor.

static int add(Model *m, const char *name, int layer, ParamKind kind, int ndim, int64_t d0,
               int64_t d1, int64_t d2, float std, float value) {
    const int64_t shape[3] = {d0, d1, d2};
    int64_t local = kind == PARAM_EXPERT && strstr(name, ".experts.") ? m->n_local : d0;
    return params_add(&m->reg, name, layer, kind, ndim, shape, local, std, value);
}

// A dense (d0, d1) matrix right after the tensor declared last, with no alignment gap: wk and wv
// follow wq so that the three are the one (qd + 2·kd, D) matrix Wqkv of the attention's products.
static void add_packed(Model *m, const char *name, int layer, int64_t d0, int64_t d1, float std) {
    const int64_t shape[2] = {d0, d1};
    params_add_packed(&m->reg, name, layer, PARAM_DENSE, 2, shape, d0, std, 0);
}

static void declare(Model *m) {
    const MoeConfig *c = &m->cfg;
    const int D = c->D, hd = m->hd;
    // Output projections are scaled by 1/sqrt(2L) (GPT-2 style), as §2 specifies.
    const float s = 0.02f, s_out = 0.02f / sqrtf(2.0f * (float)c->L);
    char n[PARAM_NAME_MAX];
#define NAME(x) (snprintf(n, sizeof n, "layers.%d." x, l), n)
    // The untrained router biases come first: a model whose optimizer keeps the trained fp32 values
    // (ZeRO-1 on a GPU) keeps only them in reg.data (model_keep_untrained).
    for (int l = m->l0; l < m->l1; l++)
        if (model_is_moe_layer(m, l)) add(m, NAME("router_bias"), l, PARAM_BUFFER, 1, c->E, 1, 1, 0, 0);
    if (m->first) add(m, "embed", -1, PARAM_DENSE, 2, c->V, D, 1, s, 0);
    for (int l = m->l0; l < m->l1; l++) {
        add(m, NAME("attn_norm"), l, PARAM_DENSE, 1, D, 1, 1, 0, 1.0f);
        add(m, NAME("wq"), l, PARAM_DENSE, 2, (int64_t)c->H * hd, D, 1, s, 0);
        add_packed(m, NAME("wk"), l, (int64_t)c->Hkv * hd, D, s);
        add_packed(m, NAME("wv"), l, (int64_t)c->Hkv * hd, D, s);
        add(m, NAME("wo"), l, PARAM_DENSE, 2, D, (int64_t)c->H * hd, 1, s_out, 0);
        add(m, NAME("ffn_norm"), l, PARAM_DENSE, 1, D, 1, 1, 0, 1.0f);
        if (!model_is_moe_layer(m, l)) {
            add(m, NAME("w13"), l, PARAM_DENSE, 2, 2 * (int64_t)c->F, D, 1, s, 0);
            add(m, NAME("w2"), l, PARAM_DENSE, 2, D, c->F, 1, s_out, 0);
            continue;
        }
        add(m, NAME("router"), l, PARAM_DENSE, 2, c->E, D, 1, s, 0);
        add(m, NAME("experts.w13"), l, PARAM_EXPERT, 3, c->E, 2 * (int64_t)c->Fe, D, s, 0);
        add(m, NAME("experts.w2"), l, PARAM_EXPERT, 3, c->E, D, c->Fe, s_out, 0);
        if (c->S > 0) {
            add(m, NAME("shared.w13"), l, PARAM_DENSE, 3, c->S, 2 * (int64_t)c->Fe, D, s, 0);
            add(m, NAME("shared.w2"), l, PARAM_DENSE, 3, c->S, D, c->Fe, s_out, 0);
        }
    }
#undef NAME
    if (!m->last) return;
    add(m, "final_norm", -1, PARAM_DENSE, 1, D, 1, 1, 0, 1.0f);
    if (!c->tie_embeddings) add(m, "lm_head", -1, PARAM_DENSE, 2, c->V, D, 1, s, 0);
}

// Layer l's tensor `name` inside base, whose elements are es bytes; NULL where the layer has none.
static void *layer_view(const Model *m, int l, const char *name, void *base, size_t es) {
    char n[PARAM_NAME_MAX];
    snprintf(n, sizeof n, "layers.%d.%s", l, name);
    const int i = params_find(&m->reg, n);
    return i >= 0 ? (char *)base + m->reg.p[i].offset * es : NULL;
}

// The tensors LayerWeights and LayerGrads both view, X(member, name): a layer has either the dense
// FFN or the MoE tensors, and the shared experts only when S > 0 (the others stay NULL). The MoE
// bias is not among them: it has no gradient.
#define LAYER_TENSORS(X)                                                                          \
    X(attn_norm, "attn_norm") X(wq, "wq") X(wk, "wk") X(wv, "wv") X(wo, "wo")                     \
    X(ffn_norm, "ffn_norm") X(w13, "w13") X(w2, "w2") X(moe.router, "router")                     \
    X(moe.w13, "experts.w13") X(moe.w2, "experts.w2") X(moe.sw13, "shared.w13") X(moe.sw2, "shared.w2")

// Layer l's weight views inside the compute copy base (elements of es bytes).
static LayerWeights layer_weights(const Model *m, int l, void *base, size_t es) {
    LayerWeights w;
    memset(&w, 0, sizeof w);
#define X(member, name) w.member = layer_view(m, l, name, base, es);
    LAYER_TENSORS(X)
#undef X
    // The router reads the bias in fp32 and the bias update writes it: a view into the master values.
    w.moe.bias = layer_view(m, l, "router_bias", m->reg.data, sizeof(float));
    return w;
}

// Layer l's gradient views (fp32).
static LayerGrads layer_grads(const Model *m, int l) {
    LayerGrads g;
    memset(&g, 0, sizeof g);
#define X(member, name) g.member = layer_view(m, l, name, m->reg.grad, sizeof(float));
    LAYER_TENSORS(X)
#undef X
    return g;
}

// Points every weight view at the compute copy (m->wlow, or the values themselves) and every
// gradient view at the gradient buffer.
static void set_views(Model *m) {
    const MoeConfig *c = &m->cfg;
    void *wbase = m->wlow ? m->wlow : (void *)m->reg.data;
    const size_t es = m->wlow ? m->ops->act_size : sizeof(float);
    const size_t qd = (size_t)c->H * m->hd, kd = (size_t)c->Hkv * m->hd, D = (size_t)c->D;
    for (int l = m->l0; l < m->l1; l++) {
        m->w[l] = layer_weights(m, l, wbase, es);
        m->g[l] = layer_grads(m, l);
        // The attention's q, k, v products are one GEMM over Wqkv = [Wq; Wk; Wv] (qd + 2·kd, D),
        // in the compute copy and in the gradients alike (attn_forward, attn_backward_*): the
        // registry must hold the three back to back (declare's add_packed).
        const char *wq = m->w[l].wq, *wk = m->w[l].wk, *wv = m->w[l].wv;
        CHECK(wk == wq + qd * D * es && wv == wk + kd * D * es &&
                  m->g[l].wk == m->g[l].wq + qd * D && m->g[l].wv == m->g[l].wk + kd * D,
              "layer %d: wq, wk, wv are not back to back in the parameter buffers (the attention "
              "reads them as one stacked (%zu, %zu) matrix)", l, qd + 2 * kd, D);
    }
#define VALUE(x) ((const char *)wbase + m->reg.p[params_find(&m->reg, x)].offset * es)
    if (m->first) {
        m->embed = VALUE("embed");
        m->d_embed = params_grad(&m->reg, "embed");
    }
    if (m->last) {
        m->final_norm = VALUE("final_norm");
        m->d_final_norm = params_grad(&m->reg, "final_norm");
        m->lm_head = c->tie_embeddings ? m->embed : VALUE("lm_head");
        m->d_lm_head = c->tie_embeddings ? m->d_embed : params_grad(&m->reg, "lm_head");
    }
#undef VALUE
}

// ckpt names the checkpoint whose stored config c is, for the error of a model too large for the
// host (NULL: c is the run's own config, which the user can change); state is what the caller will
// hold per parameter beside the weights and gradients (a trainer's optimizer state).
static Model *create(const MoeConfig *c, int ep_rank, int ep_size, int l0, int l1, const char *ckpt,
                     ModelStateBytes state) {
    config_validate(c);
    CHECK(ep_size >= 1 && c->E % ep_size == 0 && ep_rank >= 0 && ep_rank < ep_size,
          "bad expert-parallel layout: rank %d of %d for %d experts", ep_rank, ep_size, c->E);
    CHECK((c->E + c->eplb_redundant) % ep_size == 0,
          "%d experts + %d redundant slots cannot be split evenly over %d expert-parallel ranks", c->E,
          c->eplb_redundant, ep_size);
    CHECK(0 <= l0 && l0 < l1 && l1 <= c->L, "bad stage: layers [%d, %d) of %d", l0, l1, c->L);
    // A tied head reads the embedding: both must live on one stage.
    if (c->tie_embeddings && (l0 > 0 || l1 < c->L))
        core_usage_error("tie_embeddings = true needs the embedding and the head on one pipeline "
                         "stage: use tie_embeddings = false with --pp > 1 or --schedule dualpipev (both cut "
                         "the model into stages)");
    Model *m = core_alloc(sizeof *m);
    m->cfg = *c;
    m->l0 = l0;
    m->l1 = l1;
    m->first = l0 == 0;
    m->last = l1 == c->L;
    m->hd = c->D / c->H;
    m->ep_rank = ep_rank;
    m->ep_size = ep_size;
    m->R = c->E + c->eplb_redundant;
    m->n_local = m->R / ep_size;
    // Before any rebalance slot p holds expert p mod E: the identity when there are no redundant
    // slots, and replicas of experts 0, 1, ... in the redundant ones.
    m->phy2log = core_alloc((size_t)c->L * m->R * sizeof(int));
    for (int l = 0; l < c->L; l++)
        for (int p = 0; p < m->R; p++)
            m->phy2log[(size_t)l * m->R + p] = model_is_moe_layer(m, l) ? p % c->E : -1;
    declare(m);
    // Weights, gradients and the caller's optimizer state beyond the machine's memory are a config
    // too large for it, not a failed allocation, nor a process the kernel kills while AdamW zeroes
    // its moments (review, 2026-12-06). The activations come on top: pipe_train.c's
    // check_host_memory, which also adds up the ranks of one machine.
    double expert = 0;
    for (int i = 0; i < m->reg.n; i++)
        if (m->reg.p[i].kind == PARAM_EXPERT) expert += (double)m->reg.p[i].numel;
    const double need = (2.0 * sizeof(float) + state.dense) * ((double)m->reg.total - expert) +
                        (2.0 * sizeof(float) + state.expert) * expert,
                 have = core_host_memory_bytes();
    const int stateful = state.dense > 0 || state.expert > 0;
    if (need > have)
        core_usage_error("%s%s: %.1fM parameters need %.1f GiB of host memory for their weights%s alone, "
                         "more than the machine's %.1f GiB%s", ckpt ? "checkpoint " : "config",
                         ckpt ? ckpt : "", (double)m->reg.total / 1e6, need / (1 << 30),
                         stateful ? ", gradients and optimizer state" : " and gradients", have / (1 << 30),
                         ckpt ? ": open it on a machine with more memory"
                              : ": lower d_model, n_layers, d_ff, n_experts, d_expert or vocab_size");
    params_allocate(&m->reg);
    m->ops = &layer_ops_cpu;
    m->w = core_alloc((size_t)c->L * sizeof *m->w);
    m->g = core_alloc((size_t)c->L * sizeof *m->g);
    set_views(m);
    MoeShape *s = &m->moe_shape;
    s->D = c->D; s->E = c->E; s->K = c->K; s->S = c->S; s->Fe = c->Fe;
    s->rc.E = c->E; s->rc.K = c->K;
    s->rc.softmax = strcmp(c->score, "softmax") == 0;
    s->rc.norm_topk = c->norm_topk;
    s->rc.route_scale = c->route_scale;
    s->alpha = c->balance_alpha;
    m->disp = moe_local_dispatcher_create(c->E);
    m->layer_disp = core_alloc((size_t)c->L * sizeof *m->layer_disp);
    m->expert_counts = core_alloc((size_t)c->L * (size_t)c->E * sizeof(long));
    m->ffn_unzeroed = core_alloc((size_t)c->L);
    m->dcounts = m->expert_counts;
    return m;
}

Model *model_create(const MoeConfig *c, int ep_rank, int ep_size) {
    return create(c, ep_rank, ep_size, 0, c->L, NULL, (ModelStateBytes){0, 0});
}

Model *model_create_stage(const MoeConfig *c, int ep_rank, int ep_size, int l0, int l1, ModelStateBytes state) {
    return create(c, ep_rank, ep_size, l0, l1, NULL, state);
}

Model *model_create_stored(const MoeConfig *c, int ep_size, const char *ckpt) {
    return create(c, 0, ep_size, 0, c->L, ckpt, (ModelStateBytes){0, 0});
}

void model_init_weights(Model *m) {
    const ParamRegistry *r = &m->reg;
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *p = &r->p[i];
        float *x = r->data + p->offset;
        // The generator key uses the name inside the layer ("wq", "experts.w13"), so the same tensor
        // of the same layer always gets the same numbers.
        const char *short_name = p->layer >= 0 ? strchr(strchr(p->name, '.') + 1, '.') + 1 : p->name;
        if (p->init_std == 0.0f) {
            for (size_t j = 0; j < p->numel; j++) x[j] = p->init_value;
        } else if (p->kind == PARAM_EXPERT || strstr(p->name, ".shared.")) {
            // One key per expert: a slot gets exactly the numbers the one-process run puts in the
            // row of the logical expert it holds (routed experts), or of its index (shared experts).
            size_t slice = p->numel / (size_t)p->local_rows;
            const int *slots = m->phy2log + (size_t)p->layer * m->R + m->ep_rank * m->n_local;
            for (int64_t e = 0; e < p->local_rows; e++)
                rng_normal_fill(x + (size_t)e * slice, slice, p->init_std, m->cfg.seed, p->layer,
                                short_name, p->kind == PARAM_EXPERT ? slots[e] : (int)e);
        } else {
            rng_normal_fill(x, p->numel, p->init_std, m->cfg.seed, p->layer, short_name, -1);
        }
    }
    // Test knob: a skewed initial balancing bias makes the router prefer low expert ids.
    if (m->cfg.router_skew != 0.0f)
        for (int l = m->l0; l < m->l1; l++)
            if (model_is_moe_layer(m, l))
                for (int e = 0; e < m->cfg.E; e++)
                    m->w[l].moe.bias[e] = m->cfg.router_skew * (float)(m->cfg.E - 1 - e) / (float)m->cfg.E;
}

void model_set_dispatcher(Model *m, MoeDispatcher *d) {
    if (m->disp) m->disp->destroy(m->disp);
    m->disp = d;
}

void model_set_layer_dispatcher(Model *m, int l, MoeDispatcher *d) {
    CHECK(l >= m->l0 && l < m->l1 && model_is_moe_layer(m, l),
          "layer %d is not a MoE layer of stage [%d, %d)", l, m->l0, m->l1);
    if (m->layer_disp[l]) m->layer_disp[l]->destroy(m->layer_disp[l]);
    m->layer_disp[l] = d;
}

// The dispatcher that moves MoE layer l's tokens.
static MoeDispatcher *disp_of(const Model *m, int l) {
    return m->layer_disp[l] ? m->layer_disp[l] : m->disp;
}

void model_keep_counts_on_device(Model *m) {
    for (int l = m->l0; l < m->l1; l++) {
        if (!model_is_moe_layer(m, l)) continue;
        MoeDispatcher *d = disp_of(m, l);
        CHECK(d->dev_counts, "layer %d: its dispatcher cannot keep its counts on the device", l);
        d->device_counts_only = 1;
    }
}

void model_free(Model *m) {
    if (!m) return;
    if (m->disp) m->disp->destroy(m->disp);
    for (int l = 0; l < m->cfg.L; l++)
        if (m->layer_disp[l]) m->layer_disp[l]->destroy(m->layer_disp[l]);
    core_free(m->layer_disp);
    core_free(m->phy2log);
    if (m->ops->dev != CORE_CPU) {  // params_free frees host memory only
        m->ops->free(m->reg.data);
        m->ops->free(m->reg.grad);
        m->reg.data = m->reg.grad = NULL;
    }
    m->ops->free(m->wlow);
    if (m->dcounts != m->expert_counts) m->ops->free(m->dcounts);
    params_free(&m->reg);
    core_free(m->w);
    core_free(m->g);
    core_free(m->expert_counts);
    core_free(m->ffn_unzeroed);
    core_free(m);
}

void model_to_device(Model *m, const LayerOps *ops) {
    CHECK(m->ops == &layer_ops_cpu, "model_to_device: the model is on %s already", m->ops->name);
    if (ops == m->ops) return;
    // An expert-parallel dispatcher cannot be swapped for the device's local one: it must have been
    // moved to the device already (ep_dispatcher_to_device).
    CHECK(m->ep_size == 1 || m->disp->ops == ops,
          "model_to_device: the expert-parallel dispatcher moves rows in %s memory, not %s",
          m->disp->ops ? m->disp->ops->name : "cpu", ops->name);
    for (int l = 0; l < m->cfg.L; l++)
        CHECK(!m->layer_disp[l], "model_to_device: layer %d has a dispatcher of its own", l);
    ParamRegistry *r = &m->reg;
    const size_t bytes = r->total * sizeof(float);
    float *data = ops->alloc(bytes), *grad = ops->alloc(bytes);
    ops->upload(data, r->data, bytes);
    ops->upload(grad, r->grad, bytes);
    core_free(r->data);
    core_free(r->grad);
    r->data = data;
    r->grad = grad;
    m->ops = ops;
    if (ops->dt != CORE_F32) m->wlow = ops->alloc(r->total * ops->act_size);
    model_refresh_low(m);
    set_views(m);
    m->dcounts = ops->alloc((size_t)m->cfg.L * m->cfg.E * sizeof(long));
    ops->upload(m->dcounts, m->expert_counts, (size_t)m->cfg.L * m->cfg.E * sizeof(long));
    if (m->ep_size == 1) {
        m->disp->destroy(m->disp);
        m->disp = ops->local_dispatcher(m->cfg.E);
    }
}

void model_keep_untrained(Model *m) {
    CHECK(m->wlow, "model_keep_untrained: the layers read reg.data itself (no compute copy)");
    if (m->untrained_only) return;
    const size_t bytes = params_untrained_floats(&m->reg) * sizeof(float);
    float *kept = m->ops->alloc_uninit(bytes > 0 ? bytes : sizeof(float));  // the copy writes it all
    m->ops->copy(kept, m->reg.data, bytes);
    m->ops->free(m->reg.data);
    m->reg.data = kept;
    m->untrained_only = 1;
    set_views(m);  // the bias views pointed into the old buffer
}

void model_refresh_low(Model *m) {
    CHECK(!m->untrained_only, "model_refresh_low: reg.data holds the untrained values only (ZeRO-1 "
          "refreshes the compute copy from its own master copy)");
    // AdamW writes wlow with the same rounding (to nearest even), so this equals what a step leaves.
    if (m->wlow) m->ops->to_act(m->wlow, m->reg.data, (long)m->reg.total);
}

// Whether the gradient at g is one of layer l's SwiGLU weight gradients.
static int is_ffn_grad(const LayerGrads *g, const float *p) {
    const float *ffn[] = {g->w13, g->w2, g->moe.w13, g->moe.w2, g->moe.sw13, g->moe.sw2};
    for (size_t i = 0; i < sizeof ffn / sizeof *ffn; i++)
        if (ffn[i] && ffn[i] == p) return 1;
    return 0;
}

void model_zero_grad(Model *m) {
    // The registry lays the tensors out in order: one fill per run of tensors (and the alignment
    // gaps between them) up to the next SwiGLU weight gradient, which is skipped.
    size_t from = 0;  // start of the run not yet filled
    for (int i = 0; i < m->reg.n; i++) {
        const ParamInfo *p = &m->reg.p[i];
        int skip = 0;
        for (int l = m->l0; l < m->l1 && !skip; l++) skip = is_ffn_grad(&m->g[l], m->reg.grad + p->offset);
        if (!skip) continue;
        if (p->offset > from) m->ops->zero(m->reg.grad + from, (p->offset - from) * sizeof(float));
        from = p->offset + p->numel;
    }
    if (m->reg.total > from) m->ops->zero(m->reg.grad + from, (m->reg.total - from) * sizeof(float));
    memset(m->ffn_unzeroed + m->l0, 1, (size_t)(m->l1 - m->l0));
}

void model_router_bias_update(Model *m, long n_tokens) {
    const MoeConfig *c = &m->cfg;
    float **bias = core_alloc((size_t)c->L * sizeof *bias);  // (L) NULL for layers not updated here
    for (int l = m->l0; l < m->l1; l++)
        if (model_is_moe_layer(m, l)) bias[l] = m->w[l].moe.bias;
    m->ops->router_bias_update(bias, m->dcounts, c->L, c->E, c->K, n_tokens, c->bias_rate);
    core_free(bias);
}

static size_t counts_bytes(const Model *m) { return (size_t)m->cfg.L * m->cfg.E * sizeof(long); }

void model_counts_to_host(Model *m) {
    if (m->dcounts != m->expert_counts) m->ops->download(m->expert_counts, m->dcounts, counts_bytes(m));
}

void model_counts_to_device(Model *m) {
    if (m->dcounts != m->expert_counts) m->ops->upload(m->dcounts, m->expert_counts, counts_bytes(m));
}

void model_reset_counts(Model *m) {
    memset(m->expert_counts, 0, counts_bytes(m));
    if (m->dcounts != m->expert_counts) m->ops->zero(m->dcounts, counts_bytes(m));
}

void model_load_imbalance(const Model *m, float *out) {
    const int E = m->cfg.E;
    for (int l = 0; l < m->cfg.L; l++) {
        out[l] = 0;
        if (!model_is_moe_layer(m, l) || l < m->l0 || l >= m->l1) continue;
        const long *c = m->expert_counts + (size_t)l * E;
        long sum = 0, mx = 0;
        for (int e = 0; e < E; e++) { sum += c[e]; if (c[e] > mx) mx = c[e]; }
        out[l] = sum > 0 ? (float)mx * (float)E / (float)sum : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------
// Activation memory: one arena per micro-batch, freed as a whole when the micro-batch is done.

// Takes `bytes` (rounded up to 64) from the arena. A NULL arena only counts: acts_alloc sizes the
// arena with a first pass over the same buffers, so the size is exact whatever the dtype.
static void *arena_take(ModelActs *a, size_t bytes) {
    bytes = (bytes + 63) & ~(size_t)63;
    CHECK(!a->arena || a->arena_used + bytes <= a->arena_cap, "activation arena overflow (%zu + %zu > %zu)",
          a->arena_used, bytes, a->arena_cap);
    void *p = a->arena ? a->arena + a->arena_used : NULL;
    a->arena_used += bytes;
    return p;
}

// n fp32 values (or ints), and n elements of the backend's activation dtype.
static float *arena_f(ModelActs *a, size_t n) { return arena_take(a, n * sizeof(float)); }
static void *arena_x(const Model *m, ModelActs *a, size_t n) { return arena_take(a, n * m->ops->act_size); }

// Layer l's buffers that a recompute writes again: all but its input h_in and the attention's
// results (layer_carve_attn), from a's arena.
static void layer_carve_redo(const Model *m, ModelActs *a, LayerActs *la, int l) {
    const MoeConfig *c = &m->cfg;
    const size_t N = (size_t)a->N, D = c->D, qd = (size_t)c->H * m->hd, kd = (size_t)c->Hkv * m->hd;
    la->a = arena_x(m, a, N * D); la->rstd1 = arena_f(a, N);
    la->v = arena_x(m, a, N * kd);
    la->qr = arena_x(m, a, N * qd); la->kr = arena_x(m, a, N * kd);
    la->m = arena_x(m, a, N * D); la->rstd2 = arena_f(a, N);
    if (!model_is_moe_layer(m, l)) {
        la->ffn.ab = arena_x(m, a, N * 2 * c->F);
        la->ffn.h = arena_x(m, a, N * c->F);
    }
}

// The attention's results: its state, its output and the residual after Wo.
static void layer_carve_attn(const Model *m, ModelActs *a, LayerActs *la) {
    const MoeConfig *c = &m->cfg;
    const size_t N = (size_t)a->N, D = c->D, qd = (size_t)c->H * m->hd;
    la->att = arena_f(a, m->ops->attention_state_floats(a->B, a->T, c->H));
    la->o = arena_x(m, a, N * qd);
    la->h_mid = arena_x(m, a, N * D);
}

// Whether layer l keeps its input only (one of the stage's first a->inputs_only layers).
static int input_only(const Model *m, const ModelActs *a, int l) { return l - m->l0 < a->inputs_only; }

static void acts_carve(const Model *m, ModelActs *a) {
    const MoeConfig *c = &m->cfg;
    const size_t N = (size_t)a->N, D = c->D;
    a->scalars = arena_f(a, 1 + (size_t)c->L);
    a->inputs = (int *)arena_f(a, N);
    a->targets = (int *)arena_f(a, N);
    for (int l = m->l0; l < m->l1; l++) {
        LayerActs *la = &a->layer[l];
        la->h_in = arena_x(m, a, N * D);
        if (l > m->l0 && input_only(m, a, l)) {
            // Every buffer but the input (and with keep_attention the attention's results) is layer l0's.
            void *h_in = la->h_in;
            *la = a->layer[m->l0];
            la->h_in = h_in;
            if (a->keep_attention) layer_carve_attn(m, a, la);
        } else {
            layer_carve_attn(m, a, la);
            layer_carve_redo(m, a, la, l);
        }
    }
    a->ffn_out = arena_x(m, a, N * D);
    a->h_out = arena_x(m, a, N * D);
    if (!m->last) return;
    a->hf = arena_x(m, a, N * D); a->rstdf = arena_f(a, N);
    a->logits = arena_x(m, a, N * c->V);
    a->lse = arena_f(a, N); a->losses = arena_f(a, N);
    a->dlogits = a->logits;  // the cross-entropy backward turns the logits into their gradient in place
    a->pf = arena_f(a, rmsnorm_partial_floats(a->N, c->D));
}

// Sets a's shape and sizes its arena (a first pass that only counts).
static void acts_count(const Model *m, ModelActs *a, int B, int T, const ModelPass *pass) {
    memset(a, 0, sizeof *a);
    a->B = B; a->T = T; a->N = B * T;
    a->inputs_only = pass ? pass->inputs_only : 0;
    a->keep_attention = a->inputs_only && pass->keep_attention;
    a->layer = core_alloc((size_t)m->cfg.L * sizeof *a->layer);
    acts_carve(m, a);
    a->arena_cap = a->arena_used;
}

double model_acts_bytes(const Model *m, int B, int T, const ModelPass *pass, double *bwd) {
    ModelActs a;
    acts_count(m, &a, B, T, pass);
    core_free(a.layer);
    const MoeConfig *c = &m->cfg;
    const double N = (double)B * T, rows = N * c->K, x = m->ops->act_size;
    double bytes = (double)a.arena_cap;
    *bwd = 0;
    int held = 0;  // MoE layers whose rows are held at once: each one kept, and one of those recomputed
    for (int l = m->l0; l < m->l1; l++) {
        const int moe = model_is_moe_layer(m, l);
        // moe_forward's logits, scores, idx and gates; xe and ex.ab.
        if (moe && (!input_only(m, &a, l) || held++ == 0))
            bytes += N * (2.0 * c->E + 2.0 * c->K) * 4 + rows * (c->D + 2.0 * c->Fe) * x;
        const double d = moe ? rows * 3.0 * c->Fe * x : N * 3.0 * c->F * x;  // dab and dh
        if (d > *bwd) *bwd = d;
    }
    return bytes;
}

// The buffers that the layers after l0 that kept their input only share with layer l0, from t's arena.
static void unshared_carve(const Model *m, ModelActs *t, ModelActs *a) {
    for (int l = m->l0 + 1; l < m->l1 && input_only(m, a, l); l++) {
        if (!a->keep_attention) layer_carve_attn(m, t, &a->layer[l]);
        layer_carve_redo(m, t, &a->layer[l], l);
    }
}

// Gives the layers after l0 that kept their input only buffers of their own again (all but h_in
// and with keep_attention the attention's results, which they have), in a second block a->redo, so
// that a backward_input can recompute every such layer and leave them all to a backward_weight that
// runs later (a pipeline's deferred W). Layer l0 keeps the buffers the forward shared.
static void acts_unshare(const Model *m, ModelActs *a) {
    ModelActs t = {.B = a->B, .T = a->T, .N = a->N};  // only its arena: counted, then carved
    unshared_carve(m, &t, a);
    if (t.arena_used == 0) return;
    t.arena_cap = t.arena_used;
    t.arena_used = 0;
    t.arena = m->ops->alloc_uninit(t.arena_cap);
    unshared_carve(m, &t, a);
    a->redo = t.arena;
}

static void acts_alloc(const Model *m, ModelActs *a, int B, int T, const ModelPass *pass) {
    acts_count(m, a, B, T, pass);
    // Every buffer of the arena is written in full before it is read (the accumulating backward
    // calls get their buffers zeroed right before them), so it is not zero-filled: that saved
    // gigabytes of fill a step on the GPU. The scalars are the exception: stages without the head
    // and dense layers leave some of them unwritten, and the host reads all of them.
    a->arena = m->ops->alloc_uninit(a->arena_cap);
    a->arena_used = 0;
    acts_carve(m, a);
    m->ops->zero(a->scalars, (1 + (size_t)m->cfg.L) * sizeof(float));
}

// A layer's backward buffers (LayerActs' d* and ffn.dab), each (N, width) elements of the
// activation dtype, and the norms' partial gain gradients (fp32, a small fraction of that),
// written before they are read.
static void *bwd_alloc(const Model *m, int N, int width) {
    return m->ops->alloc_uninit((size_t)N * width * m->ops->act_size);
}
static float *part_alloc(const Model *m, int N) {
    return m->ops->alloc_uninit(rmsnorm_partial_floats(N, m->cfg.D) * sizeof(float));
}
static void ffn_bwd_free(const Model *m, LayerActs *la) {
    m->ops->free(la->pm);
    m->ops->free(la->ffn.dab);
    la->pm = NULL;
    la->ffn.dab = NULL;
}
static void attn_bwd_free(const Model *m, LayerActs *la) {
    m->ops->free(la->d_h_mid);
    m->ops->free(la->dqkv);
    m->ops->free(la->pa);
    la->d_h_mid = NULL;
    la->dqkv = NULL;
    la->pa = NULL;
}

void model_acts_free(Model *m, ModelActs *a) {
    if (a->layer)
        for (int l = m->l0; l < m->l1; l++) {
            if (model_is_moe_layer(m, l)) moe_acts_free(&a->layer[l].moe, disp_of(m, l));
            ffn_bwd_free(m, &a->layer[l]);  // a backward_input without its backward_weight
            attn_bwd_free(m, &a->layer[l]);
        }
    core_free(a->layer);
    m->ops->free(a->dh);
    m->ops->free(a->arena);
    m->ops->free(a->redo);
    memset(a, 0, sizeof *a);
}

// ---------------------------------------------------------------------------------------------
// Attention block: h_mid = h + Wo · attention(RoPE(Wq a), RoPE(Wk a), Wv a), a = RMSNorm(h)·g,
// the three projections one product [q k v] = a · Wqkvᵀ over the stacked Wqkv = [Wq; Wk; Wv].

// The attention block up to the attention itself: the norm, the projections and RoPE.
static void attn_project(const Model *m, const LayerWeights *w, LayerActs *la, int B, int T) {
    const MoeConfig *c = &m->cfg;
    const LayerOps *o = m->ops;
    const int N = B * T, D = c->D, hd = m->hd, qd = c->H * hd, kd = c->Hkv * hd, W = qd + 2 * kd;
    prof_mark(PROF_NORM);
    o->rmsnorm_forward(la->a, la->rstd1, la->h_in, w->attn_norm, N, D, c->norm_eps);
    prof_mark(PROF_ATTN);
    // One product over the stacked Wqkv = [Wq; Wk; Wv] (W, D) (set_views checks that the registry
    // holds them back to back): three products with N = kd for k and v ran at a poor GEMM rate.
    // RoPE reads q and k out of its (N, W) rows and writes the head-major qr and kr that attention
    // reads (layers/attention.h); only the rotated q and k are kept (the backward needs no
    // others), v is copied out into the same layout.
    void *qkv = o->alloc_uninit((size_t)N * W * o->act_size);
    o->linear_forward(qkv, la->a, w->wq, N, D, W);
    o->rope_forward(la->qr, ROPE_HEADS, qkv, W, N, T, c->H, hd, c->rope_theta);
    o->rope_forward(la->kr, ROPE_HEADS, (char *)qkv + (size_t)qd * o->act_size, W, N, T, c->Hkv, hd,
                    c->rope_theta);
    o->rope_copy(la->v, ROPE_HEADS, (char *)qkv + (size_t)(qd + kd) * o->act_size, W, N, T, c->Hkv, hd);
    o->free(qkv);
}

static void attn_forward(const Model *m, const LayerWeights *w, LayerActs *la, int B, int T) {
    const MoeConfig *c = &m->cfg;
    const LayerOps *o = m->ops;
    const int N = B * T, D = c->D, hd = m->hd, qd = c->H * hd;
    attn_project(m, w, la, B, T);
    o->attention_forward(la->o, la->att, la->qr, la->kr, la->v, B, T, c->H, c->Hkv, hd);
    o->linear_forward(la->h_mid, la->o, w->wo, N, qd, D);
    o->add(la->h_mid, la->h_mid, la->h_in, (long)N * D);
}

// dh_in (N, D) = ∂/∂h_in given d_h_mid (already in la->d_h_mid).
static void attn_backward_input(const Model *m, const LayerWeights *w, LayerActs *la, void *dh_in,
                                int B, int T) {
    const MoeConfig *c = &m->cfg;
    const size_t N = (size_t)B * T;
    const int D = c->D, hd = m->hd, qd = c->H * hd, kd = c->Hkv * hd, W = qd + 2 * kd;
    const LayerOps *o = m->ops;
    const size_t x = o->act_size;
    // d_o, dq, dk, dv and da are temporaries: backward_weight needs only dqkv and the norm's
    // partial gain gradient. Every buffer here is written before it is read (no zero fills).
    prof_mark(PROF_ATTN);
    la->pa = part_alloc(m, (int)N);
    void *d_o = o->alloc_uninit(N * qd * x);
    void *dq = o->alloc_uninit(N * qd * x), *dk = o->alloc_uninit(N * kd * x),
         *dv = o->alloc_uninit(N * kd * x);
    o->linear_backward_input(d_o, la->d_h_mid, w->wo, (int)N, qd, D, 0);
    o->attention_backward_input(dq, dk, dv, d_o, la->qr, la->kr, la->v, la->o, la->att, B, T, c->H,
                                c->Hkv, hd);
    o->free(d_o);
    // The gradients of the rotated q and k turn back into those of the projections, written into
    // the stacked rows dqkv (N, W) = [dq dk dv] of the one product over Wqkv (attn_forward).
    la->dqkv = bwd_alloc(m, (int)N, W);
    o->rope_backward_input(la->dqkv, W, dq, ROPE_HEADS, (int)N, T, c->H, hd, c->rope_theta);
    o->rope_backward_input((char *)la->dqkv + (size_t)qd * x, W, dk, ROPE_HEADS, (int)N, T, c->Hkv,
                           hd, c->rope_theta);
    o->rope_copy((char *)la->dqkv + (size_t)(qd + kd) * x, W, dv, ROPE_HEADS, (int)N, T, c->Hkv, hd);
    o->free(dq);
    o->free(dk);
    o->free(dv);
    void *da = o->alloc_uninit(N * D * x);
    o->linear_backward_input(da, la->dqkv, w->wq, (int)N, D, W, 0);
    prof_mark(PROF_NORM);
    // dh_in = d_h_mid (the residual path) + the norm's input gradient, in the norm's one pass.
    o->rmsnorm_backward_input(dh_in, la->pa, la->d_h_mid, da, la->h_in, w->attn_norm, la->rstd1,
                              (int)N, D);
    o->free(da);
}

static void attn_backward_weight(const Model *m, LayerGrads *g, LayerActs *la, int N) {
    const MoeConfig *c = &m->cfg;
    const int D = c->D, qd = c->H * m->hd, kd = c->Hkv * m->hd;
    const LayerOps *o = m->ops;
    prof_mark(PROF_ATTN);
    o->linear_backward_weight(g->wo, la->d_h_mid, la->o, N, qd, D);
    // The gradients of Wq, Wk and Wv at once: they are back to back in the gradient buffer too.
    o->linear_backward_weight(g->wq, la->dqkv, la->a, N, D, qd + 2 * kd);
    prof_mark(PROF_NORM);
    o->rmsnorm_backward_weight(g->attn_norm, la->pa, N, D);
    attn_bwd_free(m, la);
}

// ---------------------------------------------------------------------------------------------
// Feed-forward block: h_out = h_mid + FFN(RMSNorm(h_mid)·g), FFN dense SwiGLU or MoE.

// ffn_out (N, D) is scratch for the FFN's output. h_out NULL: a recompute, whose output the next
// layer's input already holds: the FFN keeps the activations its backward reads and computes no
// output (ffn_out unused).
static void ffn_forward(Model *m, int l, LayerActs *la, void *ffn_out, void *h_out, int B, int T,
                        int count_routes) {
    const MoeConfig *c = &m->cfg;
    const int N = B * T, D = c->D;
    const LayerWeights *w = &m->w[l];
    const LayerOps *o = m->ops;
    void *y = h_out ? ffn_out : NULL;
    prof_mark(PROF_NORM);
    o->rmsnorm_forward(la->m, la->rstd2, la->h_mid, w->ffn_norm, N, D, c->norm_eps);
    if (model_is_moe_layer(m, l)) {
        MoeDispatcher *d = disp_of(m, l);
        // A dispatcher that fills fewer slots than the tensors hold would pair experts with wrong rows.
        CHECK(d->n_local == m->n_local, "layer %d: the dispatcher runs %d expert slots per rank but the "
              "model holds %d (redundant EPLB slots need the EPLB runtime's dispatchers)", l, d->n_local,
              m->n_local);
        moe_forward(y, &la->moe, la->m, &m->moe_shape, &w->moe, d, B, T,
                    count_routes ? m->dcounts + (size_t)l * c->E : NULL);
    } else {
        prof_mark(PROF_FFN);
        const OpsGroups one = ops_groups_host(&N, 1);
        ops_swiglu_forward(o, y, &la->ffn, la->m, w->w13, w->w2, &one, D, c->F);
    }
    if (h_out) o->add(h_out, la->h_mid, y, (long)N * D);
}

// la->d_h_mid = ∂/∂h_mid given dh_out (N, D).
static void ffn_backward_input(Model *m, int l, LayerActs *la, const void *dh_out, int N,
                               float scale) {
    const MoeConfig *c = &m->cfg;
    const int D = c->D;
    const LayerWeights *w = &m->w[l];
    const LayerOps *o = m->ops;
    // dm (the gradient of the norm's output) is a temporary: backward_weight needs only the
    // norm's partial gain gradient.
    void *dm = bwd_alloc(m, N, D);
    la->pm = part_alloc(m, N);
    la->d_h_mid = bwd_alloc(m, N, D);
    if (model_is_moe_layer(m, l)) {
        // The balance loss enters the objective as scale·alpha·L_bal (dh_out is already scaled).
        MoeShape shape = m->moe_shape;
        shape.alpha *= scale;
        o->zero(dm, (size_t)N * D * o->act_size);  // the MoE layer adds its parts into it
        moe_backward_input(dm, &la->moe, dh_out, &shape, &w->moe, disp_of(m, l));
    } else {
        prof_mark(PROF_FFN);
        la->ffn.dab = bwd_alloc(m, N, 2 * c->F);
        void *dh = o->alloc_uninit((size_t)N * c->F * o->act_size);
        const OpsGroups one = ops_groups_host(&N, 1);
        ops_swiglu_backward_input(o, dm, &la->ffn, dh, NULL, dh_out, w->w13, w->w2, &one, D, c->F, 0);
        o->free(dh);
    }
    prof_mark(PROF_NORM);
    // d_h_mid = dh_out (the residual path) + the norm's input gradient, in the norm's one pass.
    o->rmsnorm_backward_input(la->d_h_mid, la->pm, dh_out, dm, la->h_mid, w->ffn_norm, la->rstd2, N, D);
    o->free(dm);
}

static void ffn_backward_weight(Model *m, int l, LayerActs *la, const void *dh_out, int N) {
    const MoeConfig *c = &m->cfg;
    LayerGrads *g = &m->g[l];
    const int acc = !m->ffn_unzeroed[l];  // the first weight backward since model_zero_grad writes
    m->ffn_unzeroed[l] = 0;
    if (model_is_moe_layer(m, l))
        moe_backward_weight(&g->moe, &la->moe, dh_out, &m->moe_shape, disp_of(m, l), acc);
    else {
        prof_mark(PROF_FFN);
        const OpsGroups one = ops_groups_host(&N, 1);
        ops_swiglu_backward_weight(m->ops, g->w13, g->w2, &la->ffn, la->m, dh_out, &one, c->D, c->F, acc);
    }
    prof_mark(PROF_NORM);
    m->ops->rmsnorm_backward_weight(g->ffn_norm, la->pm, N, c->D);
    ffn_bwd_free(m, la);
}

// ---------------------------------------------------------------------------------------------
// The whole stack.

// ∂L/∂(input of layer l) (N, D); l == l1 is ∂L/∂h_out.
static void *dh_at(const Model *m, const ModelActs *a, int l) {
    const int slot = a->dh_slots == 2 ? (l - m->l0) % 2 : l - m->l0;
    return (char *)a->dh + (size_t)slot * a->N * m->cfg.D * m->ops->act_size;
}

// The backward's dh, written before it is read: `slots` of (N, D).
static void dh_alloc(const Model *m, ModelActs *a, int slots) {
    CHECK(a->dh == NULL, "backward: runs once per forward");
    a->dh_slots = slots;
    a->dh = m->ops->alloc_uninit((size_t)slots * a->N * m->cfg.D * m->ops->act_size);
}

void model_split_tokens(const Model *m, const int *tokens, int B, int T, int with_targets, int *ids) {
    const int V = m->cfg.V, N = B * T, stride = with_targets ? T + 1 : T;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int k = 0; k <= (with_targets != 0); k++) {  // k = 1: the target, the next token
                const int x = tokens[b * stride + t + k];
                if (x < 0 || x >= V) core_usage_error("token id %d outside the vocabulary [0, %d)", x, V);
                ids[k * N + b * T + t] = x;
            }
}

float model_stage_forward(Model *m, ModelActs *a, const int *tokens, const void *h_in, int B, int T,
                          int with_targets, const ModelPass *pass) {
    const ModelPass none = {0};
    if (!pass) pass = &none;
    const MoeConfig *c = &m->cfg;
    CHECK(T >= 1 && T <= c->T, "sequence length %d outside [1, %d]", T, c->T);
    CHECK(m->first || h_in != NULL, "stage [%d, %d) needs the previous stage's output", m->l0, m->l1);
    CHECK(!(m->last && with_targets) || tokens != NULL, "the last stage needs the targets");
    acts_alloc(m, a, B, T, pass);
    const int N = B * T, D = c->D;
    const LayerOps *o = m->ops;
    a->has_targets = with_targets;
    // The first stage reads the inputs (the embedding) and the last the targets (the loss): a stage
    // gets only those, since each upload to a GPU waits for it (a middle stage of a pipeline had two
    // waits a forward for ids it never read).
    const int want_in = m->first, want_tg = m->last && with_targets;
    if (pass->dev_ids) {
        if (want_in) o->copy(a->inputs, pass->dev_ids, (size_t)N * sizeof(int));
        if (want_tg) o->copy(a->targets, pass->dev_ids + N, (size_t)N * sizeof(int));
    } else if (tokens) {
        // Checked on the host, then handed to the backend, whose kernels trust them.
        int *ids = core_alloc(2 * (size_t)N * sizeof(int));  // (2, N) inputs, targets
        model_split_tokens(m, tokens, B, T, with_targets, ids);
        if (want_in) o->upload(a->inputs, ids, (size_t)N * sizeof(int));
        if (want_tg) o->upload(a->targets, ids + N, (size_t)N * sizeof(int));
        core_free(ids);
    }
    prof_mark(PROF_EMBED);
    if (m->first) o->embedding_forward(a->layer[0].h_in, a->inputs, m->embed, N, c->V, D);
    else o->copy(a->layer[m->l0].h_in, h_in, (size_t)N * D * o->act_size);
    for (int l = m->l0; l < m->l1; l++) {
        LayerActs *la = &a->layer[l];
        void *h_out = l + 1 < m->l1 ? a->layer[l + 1].h_in : a->h_out;
        attn_forward(m, &m->w[l], la, B, T);
        ffn_forward(m, l, la, a->ffn_out, h_out, B, T, pass->count_routes);
        if (model_is_moe_layer(m, l)) {
            o->copy(a->scalars + 1 + l, la->moe.bal_loss, sizeof(float));
            if (input_only(m, a, l)) moe_acts_free(&la->moe, disp_of(m, l));  // the backward remakes them
        }
    }
    if (m->last) {
        prof_mark(PROF_HEAD);  // the final norm included
        o->rmsnorm_forward(a->hf, a->rstdf, a->h_out, m->final_norm, N, D, c->norm_eps);
        o->linear_forward(a->logits, a->hf, m->lm_head, N, D, c->V);
        if (with_targets) {
            o->crossentropy_forward(a->losses, a->lse, a->logits, a->targets, N, c->V);
            o->loss_mean(a->scalars, a->losses, N);
        }
    }
    // The scalars come to the host only when the caller waits for the loss (not while sampling,
    // not in a training step, which reads all its micro-batches' scalars at once).
    if (pass->defer_loss || (m->last && !with_targets)) return 0.0f;
    float *s = core_alloc((1 + (size_t)c->L) * sizeof(float));  // (1 + L) on the host
    o->download(s, a->scalars, (1 + (size_t)c->L) * sizeof(float));
    float loss = model_scalars_loss(m, s, with_targets, &a->ce, &a->bal);
    core_free(s);
    return loss;
}

float model_scalars_loss(const Model *m, const float *scalars, int with_targets, float *ce, float *bal) {
    float b = 0;
    for (int l = m->l0; l < m->l1; l++)
        if (model_is_moe_layer(m, l)) b += scalars[1 + l];
    *bal = b;
    if (!m->last) return m->cfg.balance_alpha * b;
    if (!with_targets) return 0.0f;
    *ce = scalars[0];
    return *ce + m->cfg.balance_alpha * b;
}

float model_forward(Model *m, ModelActs *a, const int *tokens, int B, int T, int with_targets) {
    CHECK(m->first && m->last, "model_forward needs the whole model; use model_stage_forward");
    return model_stage_forward(m, a, tokens, NULL, B, T, with_targets, NULL);
}

// The head's part of backward_input: dh (N, D) = ∂(scale · CE)/∂h_out.
static void head_backward_input(Model *m, ModelActs *a, void *dh, float scale) {
    const MoeConfig *c = &m->cfg;
    const int N = a->N, D = c->D;
    const LayerOps *o = m->ops;
    const size_t x = o->act_size;
    prof_mark(PROF_HEAD);
    o->crossentropy_backward_input(a->dlogits, a->logits, a->lse, a->targets, scale / (float)N, N, c->V);
    void *dhf = o->alloc_uninit((size_t)N * D * x);  // (N, D) the final norm's output gradient
    o->linear_backward_input(dhf, a->dlogits, m->lm_head, N, D, c->V, 0);
    o->rmsnorm_backward_input(dh, a->pf, NULL, dhf, a->h_out, m->final_norm, a->rstdf, N, D);
    o->free(dhf);
}

// The head's weight gradients (LM head and final norm).
static void head_backward_weight(Model *m, ModelActs *a) {
    const int N = a->N, D = m->cfg.D;
    prof_mark(PROF_HEAD);
    m->ops->linear_backward_weight(m->d_lm_head, a->dlogits, a->hf, N, D, m->cfg.V);
    m->ops->rmsnorm_backward_weight(m->d_final_norm, a->pf, N, D);
}

// The start of either backward: `slots` dh buffers, and in the last, ∂L/∂h_out: from the loss on
// the last stage, else dh_out (N, D) of the next stage.
static void backward_start(Model *m, ModelActs *a, int slots, const void *dh_out, float scale) {
    CHECK(a->has_targets, "backward needs a forward with targets");
    CHECK(m->last || dh_out != NULL, "stage [%d, %d) needs the next stage's gradient", m->l0, m->l1);
    dh_alloc(m, a, slots);
    void *dh = dh_at(m, a, m->l1);
    if (m->last) head_backward_input(m, a, dh, scale);
    else m->ops->copy(dh, dh_out, (size_t)a->N * m->cfg.D * m->ops->act_size);
}

// Layer l's forward again, from its kept input into its buffers (after a forward that kept its input
// only: those such layers share, or its own after acts_unshare): the same kernels on the same inputs
// give the forward's activations bit for bit. It counts no routes and copies no balance loss out
// (the forward did both), and the FFN computes no output: its W2 products and the MoE combine are
// the part of the forward no backward reads. With keep_attention the layer kept the attention's
// results too (its state, output and h_mid): only the projections that the backward reads run again.
static void layer_recompute(Model *m, ModelActs *a, int l) {
    LayerActs *la = &a->layer[l];
    if (a->keep_attention) attn_project(m, &m->w[l], la, a->B, a->T);
    else attn_forward(m, &m->w[l], la, a->B, a->T);
    ffn_forward(m, l, la, NULL, NULL, a->B, a->T, 0);
}

void model_stage_backward_input(Model *m, ModelActs *a, const void *dh_out, float scale) {
    const int N = a->N;
    // Each layer that kept its input only runs its forward again, into buffers of its own:
    // backward_weight reads them all.
    acts_unshare(m, a);
    backward_start(m, a, m->l1 - m->l0 + 1, dh_out, scale);  // backward_weight reads them all
    for (int l = m->l1 - 1; l >= m->l0; l--) {
        LayerActs *la = &a->layer[l];
        if (input_only(m, a, l)) layer_recompute(m, a, l);
        ffn_backward_input(m, l, la, dh_at(m, a, l + 1), N, scale);
        attn_backward_input(m, &m->w[l], la, dh_at(m, a, l), a->B, a->T);
    }
    a->inputs_only = 0;  // every layer's activations are there again
}

void model_backward_input(Model *m, ModelActs *a, float scale) {
    model_stage_backward_input(m, a, NULL, scale);
}

void model_backward(Model *m, ModelActs *a, const void *dh_out, float scale, const ModelPass *pass) {
    const int N = a->N;
    backward_start(m, a, 2, dh_out, scale);
    if (m->last) head_backward_weight(m, a);
    for (int l = m->l1 - 1; l >= m->l0; l--) {
        LayerActs *la = &a->layer[l];
        if (input_only(m, a, l)) layer_recompute(m, a, l);
        ffn_backward_input(m, l, la, dh_at(m, a, l + 1), N, scale);
        ffn_backward_weight(m, l, la, dh_at(m, a, l + 1), N);
        // The layer's expert rows, gradients and scratch are done with: gone before the next layer's.
        if (model_is_moe_layer(m, l)) moe_acts_free(&la->moe, disp_of(m, l));
        attn_backward_input(m, &m->w[l], la, dh_at(m, a, l), a->B, a->T);
        attn_backward_weight(m, &m->g[l], la, N);
        if (pass && pass->layer_done) pass->layer_done(pass->layer_ctx, l);
    }
    prof_mark(PROF_EMBED);
    if (m->first)
        m->ops->embedding_backward_weight(m->d_embed, dh_at(m, a, m->l0), a->inputs, N, m->cfg.V, m->cfg.D);
    prof_mark(PROF_OTHER);
}

const void *model_stage_dinput(const Model *m, const ModelActs *a) { return dh_at(m, a, m->l0); }

void model_backward_weight(Model *m, ModelActs *a, const ModelPass *pass) {
    const int N = a->N;
    if (m->last) head_backward_weight(m, a);
    for (int l = m->l1 - 1; l >= m->l0; l--) {
        LayerActs *la = &a->layer[l];
        ffn_backward_weight(m, l, la, dh_at(m, a, l + 1), N);
        attn_backward_weight(m, &m->g[l], la, N);
        if (pass && pass->layer_done) pass->layer_done(pass->layer_ctx, l);
    }
    prof_mark(PROF_EMBED);
    if (m->first) m->ops->embedding_backward_weight(m->d_embed, dh_at(m, a, m->l0), a->inputs, N, m->cfg.V, m->cfg.D);
    prof_mark(PROF_OTHER);
}
