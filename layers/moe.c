// The MoE feed-forward layer (see moe.h): router → dispatcher → SwiGLU experts on their contiguous
// row ranges → combine with the gates, plus the shared experts; backward split into backward_input
// and backward_weight, with the sequence balance loss folded into the router gradient. Every call
// goes through the dispatcher's backend (layers/ops.h), so the same code runs on the CPU and GPU.
#include "layers/moe.h"

#include <limits.h>
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
    CHECK(!d->device_counts_only || d->dev_counts, "moe: device_counts_only without dev_counts");
    CHECK(B >= 1 && T >= 1, "moe: need B >= 1 and T >= 1, got B = %d, T = %d", B, T);
}

static void acts_free(const LayerOps *o, SwigluActs *a) {
    o->free(a->ab);
    o->free(a->h);
    o->free(a->dab);
}

// The gate's output h is needed again only by backward_weight's W2 gradient, and the gate's
// backward writes it anyway, in place of its ∂L/∂h (ops_swiglu_backward_input, the same bits):
// not keeping it from the forward saves a third of the expert activations for nothing.
static void drop_h(const LayerOps *o, SwigluActs *h) {
    o->free(h->h);
    h->h = NULL;
}

// Shared expert j's offsets (in elements) into the stacks sw13 (S, 2·Fe, D) and sw2 (S, D, Fe).
static long shared_w13(const MoeShape *s, int j) { return (long)j * 2 * s->Fe * s->D; }
static long shared_w2(const MoeShape *s, int j) { return (long)j * s->D * s->Fe; }

// out (N, D) = shared expert j of x (N, D), keeping its activations in a->sh[j] (all but h); out
// NULL: the activations only.
static void shared_forward(const LayerOps *o, void *out, MoeActs *a, int j, const void *x,
                           const MoeShape *s, const MoeParams *p) {
    const int N = a->N, D = s->D, Fe = s->Fe;
    SwigluActs *h = &a->sh[j];
    h->ab = xout(o, (long)N * 2 * Fe);
    h->h = out ? xout(o, (long)N * Fe) : NULL;
    const OpsGroups one = ops_groups_host(&a->N, 1);
    ops_swiglu_forward(o, out, h, x, at(o, p->sw13, shared_w13(s, j)), at(o, p->sw2, shared_w2(s, j)), &one, D,
                       Fe);
    drop_h(o, h);
}

// Row r of a (·, n) tensor of the activation dtype, and the view of activations from row r on.
static void *row_at(const LayerOps *o, const void *p, long r, long n) {
    return p ? (char *)p + (size_t)r * n * o->act_size : NULL;
}
static SwigluActs acts_from(const LayerOps *o, const SwigluActs *h, long r, int F) {
    SwigluActs v = {row_at(o, h->ab, r, 2L * F), row_at(o, h->h, r, F), row_at(o, h->dab, r, 2L * F)};
    return v;
}

// Whether d can leave its exchanges in flight (the three hooks of moe.h).
static int async_of(const MoeDispatcher *d) {
    return d->to_experts_start && d->from_experts_start && d->finish;
}

// Splits the micro-batch into its chunks and plans each chunk's exchange (all before any rows
// travel, so the count exchanges never interleave with row exchanges in flight). Sets a->n_rows;
// the counts may still be in flight (plan_chunks_wait).
static void plan_chunks(MoeActs *a, MoeDispatcher *d, int K) {
    const int N = a->N, L = d->n_local;
    // Every rank of an EP group must run the same exchanges, whatever its tokens: with fewer
    // tokens than chunks (a sampling pass of one token) some chunks are empty, never fewer chunks.
    const int C = d->chunks > 1 ? d->chunks : 1;
    CHECK(C == 1 || !d->row_map, "moe: token chunks need a dispatcher whose rows travel (no row map)");
    a->C = C;
    a->ch = core_alloc((size_t)C * sizeof(MoeChunk));
    long rows = 0;
    for (int c = 0; c < C; c++) {
        MoeChunk *h = &a->ch[c];
        h->t0 = (int)((long)c * N / C);
        h->n = (int)((long)(c + 1) * N / C) - h->t0;
        h->counts = core_alloc((size_t)L * sizeof(int));
        h->plan = d->plan(d, a->idx + (long)h->t0 * K, h->n, K, &h->n_rows, h->counts);
        h->r0 = (int)rows;
        rows += h->n_rows;
        CHECK(rows <= INT_MAX, "moe: %ld expert rows overflow an int", rows);
    }
    a->n_rows = (int)rows;
}

// The counts of every chunk's plan, waited for where they travel (plan_wait), and checked.
static void plan_chunks_wait(MoeActs *a, MoeDispatcher *d) {
    if (a->counted) return;
    a->counted = 1;
    for (int c = 0; c < a->C; c++) {
        MoeChunk *h = &a->ch[c];
        if (d->plan_wait) d->plan_wait(d, h->plan);
        long total = 0;
        for (int e = 0; e < d->n_local; e++) total += h->counts[e];
        CHECK(total == h->n_rows, "moe: dispatcher counts sum to %ld rows, plan says %d", total, h->n_rows);
    }
}

MoeDispatchPlan *moe_plan_now(MoeDispatcher *d, const int *idx, int N, int K, int *n_rows, int *counts) {
    CHECK(!d->device_counts_only, "moe_plan_now: the dispatcher keeps its counts on the device");
    MoeDispatchPlan *p = d->plan(d, idx, N, K, n_rows, counts);
    if (d->plan_wait) d->plan_wait(d, p);
    return p;
}

// Chunk h's groups for the expert GEMMs: its host counts once they are there, else the dispatcher's
// counts in the backend's memory (moe.h's dev_counts).
static OpsGroups chunk_groups(const MoeActs *a, MoeDispatcher *d, const MoeChunk *h) {
    if (a->counted) return ops_groups_host(h->counts, d->n_local);
    OpsGroups g = {d->n_local, h->n_rows, NULL, d->dev_counts(d, h->plan)};
    return g;
}

// The routed experts of every chunk between two exchanges: chunk c's home rows src go out to its
// expert rows of `in` (per_choice as in to_experts), experts(c) turns them into its rows of `out`,
// and those come home to (N, K, D) `home` at the chunk's pairs (home NULL: they stay, for the
// dispatcher's row map to combine in place or for a forward without output). Where the dispatcher
// can leave exchanges in flight (async) they are pipelined: chunk c+1's rows travel out while
// chunk c computes, and chunk c's travel home while chunk c+1 computes; `first` (may be NULL) runs
// while chunk 0's rows travel out. Otherwise each exchange runs to its end in turn and `first` is
// not called. home may be src: chunk c's home rows are written only after its own rows went out
// (its dispatch has finished by then).
typedef struct ChunkWork {
    void (*experts)(struct ChunkWork *w, const MoeChunk *h);
    void (*first)(struct ChunkWork *w);
    const LayerOps *o;
    const MoeShape *s;
    const MoeParams *p;
    MoeActs *a;
    MoeDispatcher *d;
    void *in, *out, *scratch;  // (n_rows, D), (n_rows, D), (n_rows, Fe) or NULL
    float *dots;               // (n_rows) the experts' row dots dh·h (backward), or NULL
    void *shared;              // (S, N, D) the shared experts' outputs (forward), or NULL
} ChunkWork;

static void routed_chunks(ChunkWork *w, MoeDispatcher *d, const void *src, int per_choice, void *home) {
    const LayerOps *o = w->o;
    const int C = w->a->C, K = w->s->K, D = w->s->D;
    const int async = async_of(d);
    const size_t tok = (size_t)(per_choice ? K : 1) * D * o->act_size;  // bytes of a token in src
    for (int c = -1; c < C; c++) {
        // Chunk c+1 starts out (chunk 0 before the loop proper, with `first` behind it).
        if (c + 1 < C && src) {
            const MoeChunk *n = &w->a->ch[c + 1];
            const void *sc = (const char *)src + n->t0 * tok;
            prof_mark(PROF_DISPATCH);
            if (async) d->to_experts_start(d, n->plan, sc, per_choice, row_at(o, w->in, n->r0, D), D);
            else d->to_experts(d, n->plan, sc, per_choice, row_at(o, w->in, n->r0, D), D);
            if (c < 0 && async && w->first) w->first(w);
            // Chunk 0 must have arrived before its experts run; chunk c+1 > 0 travels during chunk c's.
            if (c < 0 && async) d->finish(d, n->plan);
        }
        if (c < 0) continue;
        const MoeChunk *h = &w->a->ch[c];
        prof_mark(PROF_EXPERTS);
        w->experts(w, h);
        if (home) {
            void *hc = (char *)home + (size_t)h->t0 * K * D * o->act_size;
            prof_mark(PROF_DISPATCH);
            if (async) d->from_experts_start(d, h->plan, row_at(o, w->out, h->r0, D), hc, D);
            else d->from_experts(d, h->plan, row_at(o, w->out, h->r0, D), hc, D);
        }
        if (async && c + 1 < C && src) {
            prof_mark(PROF_DISPATCH);
            d->finish(d, w->a->ch[c + 1].plan);
        }
    }
    if (async && home) {
        prof_mark(PROF_DISPATCH);
        for (int c = 0; c < C; c++) d->finish(d, w->a->ch[c].plan);
    }
}

// Forward experts of one chunk: out rows ← SwiGLU of in rows, activations kept in a->ex (out NULL:
// the activations only).
static void experts_forward(ChunkWork *w, const MoeChunk *h) {
    const int D = w->s->D, Fe = w->s->Fe;
    SwigluActs v = acts_from(w->o, &w->a->ex, h->r0, Fe);
    const OpsGroups g = chunk_groups(w->a, w->d, h);
    ops_swiglu_forward(w->o, row_at(w->o, w->out, h->r0, D), &v, row_at(w->o, w->in, h->r0, D), w->p->w13,
                       w->p->w2, &g, D, Fe);
}

// The shared experts of the forward (while chunk 0's rows travel, where they can): each into its
// (N, D) of w->shared (S, N, D).
static void shared_all(ChunkWork *w) {
    const long ND = (long)w->a->N * w->s->D;
    for (int j = 0; j < w->s->S; j++)
        shared_forward(w->o, row_at(w->o, w->shared, j, ND), w->a, j, w->a->x, w->s, w->p);
}

// Backward-input experts of one chunk: in (∂L/∂ expert output rows) → out (∂L/∂ expert input rows),
// writing a->ex's dab, and the chunk's row dots (the gates' gradient times the gates).
static void experts_backward(ChunkWork *w, const MoeChunk *h) {
    const int D = w->s->D, Fe = w->s->Fe;
    SwigluActs v = acts_from(w->o, &w->a->ex, h->r0, Fe);
    const OpsGroups g = chunk_groups(w->a, w->d, h);
    ops_swiglu_backward_input(w->o, row_at(w->o, w->out, h->r0, D), &v, row_at(w->o, w->scratch, h->r0, Fe),
                              w->dots + h->r0, row_at(w->o, w->in, h->r0, D), w->p->w13, w->p->w2, &g, D, Fe,
                              0);
}

// The row dots (n_rows) of every chunk home to (N, K) pair order through the dispatcher, as rows of
// 4 bytes (4 / act_size elements: the exchanges only copy bytes), chunk c's from its own rows to
// its own pairs. Where the dispatcher can leave exchanges in flight they are only started here, so
// that the shared experts' backward runs under them; dots_home_finish completes them.
static int dots_width(const LayerOps *o) {
    CHECK(4 % o->act_size == 0, "moe: %zu-byte activations cannot carry fp32 row dots", o->act_size);
    return (int)(4 / o->act_size);
}
static void dots_home_start(MoeActs *a, MoeDispatcher *d, const float *dots, float *home, int K) {
    const int W = dots_width(ops_of(d));
    prof_mark(PROF_DISPATCH);
    for (int c = 0; c < a->C; c++) {
        const MoeChunk *h = &a->ch[c];
        if (async_of(d)) d->from_experts_start(d, h->plan, dots + h->r0, home + (long)h->t0 * K, W);
        else d->from_experts(d, h->plan, dots + h->r0, home + (long)h->t0 * K, W);
    }
}
static void dots_home_finish(MoeActs *a, MoeDispatcher *d) {
    if (!async_of(d)) return;
    prof_mark(PROF_DISPATCH);
    for (int c = 0; c < a->C; c++) d->finish(d, a->ch[c].plan);
}
void moe_forward(void *y, MoeActs *a, const void *x, const MoeShape *s, const MoeParams *p,
                 MoeDispatcher *d, int B, int T, long *counts) {
    check_shape(s, d, B, T);
    const LayerOps *o = ops_of(d);
    int N = B * T, D = s->D, E = s->E, K = s->K, Fe = s->Fe;
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
    o->router_forward(a->scores, a->idx, a->gates, a->logits, p->bias, &s->rc, N, counts);
    a->bal_loss = fout(o, 1);  // written by balance_loss
    o->balance_loss(a->bal_loss, a->scores, a->idx, B, T, E, K);

    prof_mark(PROF_DISPATCH);
    plan_chunks(a, d, K);
    long R = a->n_rows;
    a->xe = xout(o, R * D);
    // Without y (a forward again for the backward, which reads none of the experts' outputs) the
    // experts stop at ab: no gate, no W2 products, no way home and no combine, a third of the
    // experts' FLOPs and the combine's exchange.
    void *ye = y ? xout(o, R * D) : NULL;  // (n_rows, D) the experts' output rows
    a->ex.ab = xout(o, R * 2 * Fe);
    a->ex.h = y ? xout(o, R * Fe) : NULL;
    // The shared experts need only x: where the dispatcher can leave the rows in flight, their
    // GEMMs run while the first chunk's rows travel, else after the routed experts; either way into
    // buffers of their own that the combine adds to y in order (bit-identical results).
    const int overlap = async_of(d);
    void *shared = NULL;  // (S, N, D) the shared experts' outputs
    if (s->S > 0) {
        a->sh = core_alloc((size_t)s->S * sizeof(SwigluActs));
        shared = y ? xout(o, (long)s->S * N * D) : NULL;
    }
    // Rows that never left this process are combined in place; others come home first, in pair
    // order. Either way the combine's input is freed once it has been read: the backward needs
    // only the gates' gradient from it, and gets that without it (moe_backward_input).
    a->map = d->row_map ? d->row_map(d, a->ch[0].plan) : NULL;
    void *home = a->map || !y ? NULL : xout(o, (long)N * K * D);  // (N, K, D)
    ChunkWork w = {.experts = experts_forward, .first = overlap ? shared_all : NULL, .o = o, .s = s,
                   .p = p, .a = a, .d = d, .in = a->xe, .out = ye, .shared = shared};
    // Without a dispatch to run under, the shared experts run before the routed ones: where the
    // counts are still on their way to the host (a GPU's plan without dev_counts), the device
    // computes them meanwhile instead of idling through the round trip. They write buffers of their
    // own that the combine adds in a fixed order, so where they run changes no bits.
    if (s->S > 0 && !overlap) {
        prof_mark(PROF_EXPERTS);
        shared_all(&w);
    }
    // The routed experts' GEMMs need the counts, on the host unless the dispatcher keeps them on
    // the device (dev_counts): then nothing waits here.
    if (!d->dev_counts) {
        prof_mark(PROF_DISPATCH);
        plan_chunks_wait(a, d);
    }
    routed_chunks(&w, d, x, 0, home);
    drop_h(o, &a->ex);
    if (!y) return;
    if (home) {
        o->free(ye);
        ye = home;
    }
    prof_mark(PROF_COMBINE);
    o->moe_combine(y, ye, a->map, a->gates, N, K, D, shared, s->S);
    o->free(ye);
    o->free(shared);
}

void moe_backward_input(void *dx, MoeActs *a, const void *dy, const MoeShape *s,
                        const MoeParams *p, MoeDispatcher *d) {
    CHECK(a->gates != NULL && a->dye == NULL, "moe_backward_input: needs moe_forward first, and runs once per forward");
    const LayerOps *o = ops_of(d);
    int N = a->N, D = s->D, E = s->E, K = s->K, Fe = s->Fe;
    long R = a->n_rows;
    prof_mark(PROF_COMBINE);

    // y = Σ_k g_k · ye_k: ∂L/∂ye_k = g_k · dy. With the row map it lands in the experts' rows
    // directly; otherwise in pair order at home, and then travels out the way x did.
    a->dye = xout(o, R * D);
    void *nk = NULL;  // (N, K, D) ∂L/∂ye at home, without the row map
    if (a->map) {
        o->moe_combine_backward(a->dye, dy, a->map, a->gates, N, K, D);
    } else {
        nk = xout(o, (long)N * K * D);
        o->moe_combine_backward(nk, dy, NULL, a->gates, N, K, D);
    }

    // Routed experts, chunk by chunk between the two exchanges (the combine's backward travels
    // out like the dispatch, the dispatch's comes home like the combine); their input gradient
    // rows are summed over the choices in place, or once home.
    // ∂L/∂g_k = dy · ye_k without ye (the forward did not keep it): an expert's output is
    // ye = W2 h, and its backward forms dh = W2ᵀ(g_k · dy) anyway, so the row dot
    // dh · h = g_k · (dy · ye_k) gives it for the price of one pass over dh, a and b (fused into
    // the gate's backward), in place of (N, K, D) activations kept from the forward.
    a->ex.dab = xout(o, R * 2 * Fe);  // written by ops_swiglu_backward_input, as are dh, dxe and dots
    void *dh = xout(o, R * Fe);   // (n_rows, Fe) ∂L/∂h, then h itself (kept for backward_weight)
    void *dxe = xout(o, R * D);   // (n_rows, D) ∂L/∂xe
    float *dots = fout(o, R);     // (n_rows) dh · h
    // The experts' dx rows come home into nk, chunk by chunk where the chunk's ∂L/∂ye rows left.
    ChunkWork w = {.experts = experts_backward, .o = o, .s = s, .p = p, .a = a, .d = d, .in = a->dye,
                   .out = dxe, .scratch = dh, .dots = dots};
    routed_chunks(&w, d, nk, 1, nk);
    a->ex.h = dh;  // the gate's backward left h there: W2's weight gradient recomputes nothing
    // The row dots read in place through the row map, or brought home (N, K) in pair order.
    float *dots_home = NULL;
    if (!a->map) {
        dots_home = fout(o, (long)N * K);
        dots_home_start(a, d, dots, dots_home, K);
    }
    if (nk) {
        o->free(dxe);
        dxe = nk;
    }
    prof_mark(PROF_COMBINE);
    o->moe_sum_choices(dx, dxe, a->map, N, K, D);
    o->free(dxe);

    if (s->S > 0) {
        prof_mark(PROF_EXPERTS);
        for (int j = 0; j < s->S; j++) {
            SwigluActs *h = &a->sh[j];
            h->dab = xout(o, (long)N * 2 * Fe);
            h->h = xout(o, (long)N * Fe);  // ∂L/∂h, then h, as for the routed experts
            const OpsGroups one = ops_groups_host(&N, 1);
            ops_swiglu_backward_input(o, dx, h, h->h, NULL, dy, at(o, p->sw13, shared_w13(s, j)),
                                      at(o, p->sw2, shared_w2(s, j)), &one, D, Fe, 1);
        }
    }

    // dgates = dots / g. A gate of exactly 0 gets 0 in place of dy · ye_k, which is harmless: the
    // router's backward (router.c, router.cu) uses dg_k only as rs · dg_k / z added to ∂L/∂s_k and
    // as dg_k · s_k in norm_topk's Σ_j dg_j s_j, and ∂L/∂s_k reaches the logits only multiplied by
    // s_k (sigmoid: s_k (1 − s_k); softmax: s_k (ds_k − Σ ds s)). g_k = rs · s_k (/ z) is 0 only where
    // s_k = 0 or route_scale rs = 0, and then every term is 0 whatever dg_k is (sigmoid and softmax,
    // norm_topk on and off); or where rs · s_k / z underflows (|g_k| < 2^-149), and then each term
    // is at most about |g_k · dg_k|, far below anything fp32 adds it to. Tiny gates of fp32's
    // normal range (1e-30) give dy · ye_k to fp32 rounding (tests/layers/moe_test.cc MoeGateGrad);
    // subnormal ones lose digits in g_k · dy, harmless for the same reason.
    if (dots_home) dots_home_finish(a, d);
    prof_mark(PROF_ROUTER);
    float *dgates = fout(o, (long)N * K);  // (N, K)
    o->moe_gate_grad(dgates, dots_home ? dots_home : dots, a->map, a->gates, N, K);
    o->free(dots);
    o->free(dots_home);

    // Router: the gates' gradient, plus alpha · ∂L_bal/∂scores when the balance loss is on. The
    // router's logits are fp32; their gradient joins the activations' dtype for the two products.
    float *dscores = NULL;  // (N, E)
    if (s->alpha > 0.0f) {
        dscores = falloc(o, (long)N * E);
        o->balance_loss_backward(dscores, s->alpha, a->scores, a->idx, a->B, a->T, E, K);
    }
    float *dlogits = falloc(o, (long)N * E);  // (N, E) fp32
    o->router_backward_input(dlogits, dgates, dscores, a->scores, a->idx, &s->rc, N);
    a->dlogits = xout(o, (long)N * E);
    o->to_act(a->dlogits, dlogits, (long)N * E);
    o->linear_backward_input(dx, a->dlogits, p->router, N, D, E, 1);
    o->free(dlogits);
    o->free(dscores);
    o->free(dgates);
}

void moe_backward_weight(MoeGrads *g, MoeActs *a, const void *dy, const MoeShape *s, MoeDispatcher *d,
                         int acc) {
    CHECK(a->dlogits != NULL, "moe_backward_weight: needs moe_backward_input first");
    const LayerOps *o = ops_of(d);
    int N = a->N, D = s->D, E = s->E, Fe = s->Fe;
    prof_mark(PROF_ROUTER);
    o->linear_backward_weight(g->router, a->dlogits, a->x, N, D, E);
    // The weight gradients read the counts on the host (gemm_sm90.cu chooses its grid from them),
    // which by now have long arrived where they travelled from the device; with device_counts_only
    // they take them where they are.
    prof_mark(PROF_DISPATCH);
    if (!d->device_counts_only) plan_chunks_wait(a, d);
    prof_mark(PROF_EXPERTS);
    // Chunk by chunk in a fixed order: with C > 1 each expert's rows add up in C sums, which rounds
    // differently from one sum over all rows (fp32 reassociation, within 1e-6 relative in the tests).
    for (int c = 0; c < a->C; c++) {
        const MoeChunk *h = &a->ch[c];
        SwigluActs v = acts_from(o, &a->ex, h->r0, Fe);
        const OpsGroups gr = chunk_groups(a, d, h);
        ops_swiglu_backward_weight(o, g->w13, g->w2, &v, row_at(o, a->xe, h->r0, D), row_at(o, a->dye, h->r0, D),
                                   &gr, D, Fe, c > 0 || acc);
    }
    const OpsGroups one = ops_groups_host(&N, 1);
    for (int j = 0; j < s->S; j++) {
        ops_swiglu_backward_weight(o, g->sw13 + shared_w13(s, j), g->sw2 + shared_w2(s, j), &a->sh[j], a->x, dy,
                                   &one, D, Fe, acc);
    }
}

void moe_acts_free(MoeActs *a, MoeDispatcher *d) {
    const LayerOps *o = ops_of(d);
    // The plans first: releasing one that still waits checks its routes in idx on a bad count.
    for (int c = 0; a->ch && c < a->C; c++) {
        if (a->ch[c].plan) d->release(d, a->ch[c].plan);
        core_free(a->ch[c].counts);
    }
    core_free(a->ch);
    o->free(a->logits);
    o->free(a->scores);
    o->free(a->idx);
    o->free(a->gates);
    o->free(a->bal_loss);
    o->free(a->xe);
    acts_free(o, &a->ex);
    for (int j = 0; a->sh && j < a->S; j++) acts_free(o, &a->sh[j]);
    core_free(a->sh);
    o->free(a->dye);
    o->free(a->dlogits);
    memset(a, 0, sizeof *a);
}
