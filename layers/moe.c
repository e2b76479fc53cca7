// The MoE feed-forward layer (see moe.h): router → dispatcher → SwiGLU experts on their contiguous
// row ranges → combine with the gates, plus the shared experts; backward split into backward_input
// and backward_weight, with the sequence balance loss folded into the router gradient. Every call
// goes through the dispatcher's backend (layers/ops.h), so the same code runs on the CPU and GPU.
#include "layers/moe.h"

#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "framework/core/prof.h"
#include "layers/ops.h"

static const LayerOps *ops_of(const MoeDispatcher *d) { return d->ops ? d->ops : &layer_ops_cpu; }

// n fp32 values zero-filled (for the calls that add into them), and n elements of the backend's
// activation dtype or n fp32 values not filled (ops.h's alloc_uninit) for the buffers that a call
// writes in full first: most of the layer's gigabytes a step.
static float *falloc(const LayerOps *o, long n) { return o->alloc((size_t)n * sizeof(float)); }
static void *xout(const LayerOps *o, long n) { return o->alloc_uninit((size_t)n * o->act_size); }
static float *fout(const LayerOps *o, long n) { return o->alloc_uninit((size_t)n * sizeof(float)); }
// Element n of an activation-dtype tensor (weights' compute copy included).
static const void *at(const LayerOps *o, const void *p, long n) { return (const char *)p + n * (long)o->act_size; }

static void check_shape(const MoeShape *s, const MoeDispatcher *d, int B, int T) {
    CHECK(s->D >= 1 && s->Fe >= 1 && s->S >= 0 && s->E >= 1 && s->K >= 1 && s->K <= s->E,
          "moe: bad shape D = %d, Fe = %d, S = %d, E = %d, K = %d", s->D, s->Fe, s->S, s->E, s->K);
    CHECK(s->rc.E == s->E && s->rc.K == s->K,
          "moe: router config (E = %d, K = %d) disagrees with the layer (E = %d, K = %d)", s->rc.E,
          s->rc.K, s->E, s->K);
    CHECK(s->alpha >= 0.0f, "moe: balance loss weight alpha must be >= 0, got %g", s->alpha);
    CHECK(d->n_local >= 1, "moe: dispatcher has %d local expert slots", d->n_local);
    CHECK(B >= 1 && T >= 1, "moe: need B >= 1 and T >= 1, got B = %d, T = %d", B, T);
}

static void acts_free(const LayerOps *o, SwigluActs *a) {
    o->free(a->a);
    o->free(a->b);
    o->free(a->h);
    o->free(a->da);
    o->free(a->db);
}

// The gate's output h is needed again only by backward_weight's W2 gradient, which recomputes it
// from a and b (ops_swiglu_backward_weight): not keeping it saves a third of the expert activations
// for one elementwise pass, the trade torch.compile makes too.
static void drop_h(const LayerOps *o, SwigluActs *h) {
    o->free(h->h);
    h->h = NULL;
}

// out (N, D) = shared expert j of x (N, D), keeping its activations in a->sh[j] (all but h).
static void shared_forward(const LayerOps *o, void *out, MoeActs *a, int j, const void *x,
                           const MoeShape *s, const MoeParams *p) {
    const int N = a->N, D = s->D, Fe = s->Fe;
    SwigluActs *h = &a->sh[j];
    h->a = xout(o, (long)N * Fe);
    h->b = xout(o, (long)N * Fe);
    h->h = xout(o, (long)N * Fe);
    const long w = (long)j * Fe * D;
    ops_swiglu_forward(o, out, h, x, at(o, p->sw1, w), at(o, p->sw3, w), at(o, p->sw2, w), &a->N, 1, D,
                       Fe);
    drop_h(o, h);
}

void moe_forward(void *y, MoeActs *a, const void *x, const MoeShape *s, const MoeParams *p,
                 MoeDispatcher *d, int B, int T) {
    check_shape(s, d, B, T);
    const LayerOps *o = ops_of(d);
    int N = B * T, D = s->D, E = s->E, K = s->K, Fe = s->Fe, L = d->n_local;
    memset(a, 0, sizeof *a);
    a->B = B;
    a->T = T;
    a->N = N;
    a->S = s->S;
    a->x = x;

    prof_mark(PROF_ROUTER);
    a->logits = fout(o, (long)N * E);
    a->scores = fout(o, (long)N * E);
    a->idx = o->alloc_uninit((size_t)N * K * sizeof(int));
    a->gates = fout(o, (long)N * K);
    o->linear_forward_f32(a->logits, x, p->router, N, D, E);
    o->router_forward(a->scores, a->idx, a->gates, a->logits, p->bias, &s->rc, N);
    a->bal_loss = falloc(o, 1);
    o->balance_loss(a->bal_loss, a->scores, a->idx, B, T, E, K);

    prof_mark(PROF_DISPATCH);
    a->counts = core_alloc((size_t)L * sizeof(int));
    a->plan = d->plan(d, a->idx, N, K, &a->n_rows, a->counts);
    long total = 0;
    for (int e = 0; e < L; e++) total += a->counts[e];
    CHECK(total == a->n_rows, "moe: dispatcher counts sum to %ld rows, plan says %d", total, a->n_rows);

    long R = a->n_rows;
    a->xe = xout(o, R * D);
    a->ye = xout(o, R * D);
    a->ex.a = xout(o, R * Fe);
    a->ex.b = xout(o, R * Fe);
    a->ex.h = xout(o, R * Fe);
    // The shared experts need only x: where the dispatcher can leave the rows in flight, their
    // GEMMs run while the rows travel, into buffers of their own that are added to y in the same
    // order as without the overlap (bit-identical results).
    const int overlap = d->to_experts_start != NULL;
    if (overlap) d->to_experts_start(d, a->plan, x, 0, a->xe, D);
    else d->to_experts(d, a->plan, x, 0, a->xe, D);
    void *shared = NULL;  // (S, N, D) the shared experts' outputs, or (N, D) one at a time
    if (s->S > 0) {
        a->sh = core_alloc((size_t)s->S * sizeof(SwigluActs));
        shared = xout(o, (long)(overlap ? s->S : 1) * N * D);
    }
    if (overlap) {
        prof_mark(PROF_EXPERTS);
        for (int j = 0; j < s->S; j++)
            shared_forward(o, (char *)shared + (size_t)j * N * D * o->act_size, a, j, x, s, p);
        prof_mark(PROF_DISPATCH);
        d->finish(d, a->plan);
    }
    prof_mark(PROF_EXPERTS);
    ops_swiglu_forward(o, a->ye, &a->ex, a->xe, p->w1, p->w3, p->w2, a->counts, L, D, Fe);
    drop_h(o, &a->ex);
    // Rows that never left this process are combined in place; others come home first, in pair
    // order. Either way the combine's input stays in ye for the backward.
    a->map = d->row_map ? d->row_map(d, a->plan) : NULL;
    if (!a->map) {
        prof_mark(PROF_DISPATCH);
        void *home = xout(o, (long)N * K * D);
        d->from_experts(d, a->plan, a->ye, home, D);
        o->free(a->ye);
        a->ye = home;
    }
    prof_mark(PROF_COMBINE);
    o->moe_combine(y, a->ye, a->map, a->gates, N, K, D);

    if (s->S > 0) prof_mark(PROF_EXPERTS);
    for (int j = 0; j < s->S; j++) {
        void *sj = (char *)shared + (size_t)(overlap ? j : 0) * N * D * o->act_size;
        if (!overlap) shared_forward(o, sj, a, j, x, s, p);
        o->add(y, y, sj, (long)N * D);
    }
    o->free(shared);
}

void moe_backward_input(void *dx, MoeActs *a, const void *dy, const MoeShape *s,
                        const MoeParams *p, MoeDispatcher *d) {
    CHECK(a->ye != NULL && a->dy == NULL, "moe_backward_input: needs moe_forward first, and runs once per forward");
    const LayerOps *o = ops_of(d);
    int N = a->N, D = s->D, E = s->E, K = s->K, Fe = s->Fe, L = d->n_local;
    long R = a->n_rows;
    prof_mark(PROF_COMBINE);
    a->dy = xout(o, (long)N * D);
    o->copy(a->dy, dy, (size_t)N * D * o->act_size);

    // y = Σ_k g_k · out_k: ∂L/∂g_k = dy · out_k and ∂L/∂out_k = g_k · dy. With the row map these
    // land in the experts' rows directly; otherwise in pair order at home, and then travel out the
    // way x did.
    float *dgates = fout(o, (long)N * K);  // (N, K)
    a->dye = xout(o, R * D);
    if (a->map) {
        o->moe_combine_backward(dgates, a->dye, dy, a->ye, a->map, a->gates, N, K, D);
    } else {
        void *nk = xout(o, (long)N * K * D);  // (N, K, D) ∂L/∂out_nk
        o->moe_combine_backward(dgates, nk, dy, a->ye, NULL, a->gates, N, K, D);
        prof_mark(PROF_DISPATCH);
        d->to_experts(d, a->plan, nk, 1, a->dye, D);
        o->free(nk);
    }
    o->free(a->ye);
    a->ye = NULL;

    // Routed experts; their input gradient rows are summed over the choices in place, or after
    // coming home the way y did.
    prof_mark(PROF_EXPERTS);
    a->ex.da = xout(o, R * Fe);  // written by ops_swiglu_backward_input, as are dh and dxe
    a->ex.db = xout(o, R * Fe);
    void *dh = xout(o, R * Fe);   // (n_rows, Fe) scratch
    void *dxe = xout(o, R * D);   // (n_rows, D) ∂L/∂xe
    ops_swiglu_backward_input(o, dxe, &a->ex, dh, a->dye, p->w1, p->w3, p->w2, a->counts, L, D, Fe, 0);
    o->free(dh);
    if (!a->map) {
        prof_mark(PROF_DISPATCH);
        void *nk = xout(o, (long)N * K * D);  // (N, K, D) the experts' dx rows at home
        d->from_experts(d, a->plan, dxe, nk, D);
        o->free(dxe);
        dxe = nk;
    }
    prof_mark(PROF_COMBINE);
    o->moe_sum_choices(dx, dxe, a->map, N, K, D);
    o->free(dxe);

    if (s->S > 0) {
        prof_mark(PROF_EXPERTS);
        void *sdh = xout(o, (long)N * Fe);  // (N, Fe) scratch
        for (int j = 0; j < s->S; j++) {
            SwigluActs *h = &a->sh[j];
            h->da = xout(o, (long)N * Fe);
            h->db = xout(o, (long)N * Fe);
            long w = (long)j * Fe * D;
            ops_swiglu_backward_input(o, dx, h, sdh, dy, at(o, p->sw1, w), at(o, p->sw3, w),
                                      at(o, p->sw2, w), &N, 1, D, Fe, 1);
        }
        o->free(sdh);
    }

    // Router: the gates' gradient, plus alpha · ∂L_bal/∂scores when the balance loss is on. The
    // router's logits are fp32; their gradient joins the activations' dtype for the two products.
    prof_mark(PROF_ROUTER);
    float *dscores = NULL;  // (N, E)
    if (s->alpha > 0.0f) {
        dscores = falloc(o, (long)N * E);
        o->balance_loss_backward(dscores, s->alpha, a->scores, a->idx, a->B, a->T, E, K);
    }
    float *dlogits = falloc(o, (long)N * E);  // (N, E) fp32
    o->router_backward_input(dlogits, dgates, dscores, a->scores, a->idx, &s->rc, N);
    a->dlogits = xout(o, (long)N * E);
    o->to_act(a->dlogits, dlogits, (long)N * E);
    o->linear_backward_input(dx, a->dlogits, p->router, N, D, E);
    o->free(dlogits);
    o->free(dscores);
    o->free(dgates);
}

void moe_backward_weight(MoeGrads *g, MoeActs *a, const MoeShape *s, MoeDispatcher *d, int acc) {
    CHECK(a->dlogits != NULL, "moe_backward_weight: needs moe_backward_input first");
    const LayerOps *o = ops_of(d);
    int N = a->N, D = s->D, E = s->E, Fe = s->Fe, L = d->n_local;
    prof_mark(PROF_ROUTER);
    o->linear_backward_weight(g->router, a->dlogits, a->x, N, D, E);
    prof_mark(PROF_EXPERTS);
    ops_swiglu_backward_weight(o, g->w1, g->w3, g->w2, &a->ex, a->xe, a->dye, a->counts, L, D, Fe, acc);
    for (int j = 0; j < s->S; j++) {
        long w = (long)j * Fe * D;
        ops_swiglu_backward_weight(o, g->sw1 + w, g->sw3 + w, g->sw2 + w, &a->sh[j], a->x, a->dy, &N, 1,
                                   D, Fe, acc);
    }
}

void moe_acts_free(MoeActs *a, MoeDispatcher *d) {
    const LayerOps *o = ops_of(d);
    o->free(a->logits);
    o->free(a->scores);
    o->free(a->idx);
    o->free(a->gates);
    o->free(a->bal_loss);
    if (a->plan) d->release(d, a->plan);
    core_free(a->counts);
    o->free(a->xe);
    o->free(a->ye);
    acts_free(o, &a->ex);
    for (int j = 0; a->sh && j < a->S; j++) acts_free(o, &a->sh[j]);
    core_free(a->sh);
    o->free(a->dy);
    o->free(a->dye);
    o->free(a->dlogits);
    memset(a, 0, sizeof *a);
}
