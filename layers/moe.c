// The MoE feed-forward layer on the CPU (see moe.h): router → dispatcher → SwiGLU experts on their
// contiguous row ranges → combine with the gates, plus the shared experts; backward split into
// backward_input and backward_weight, with the sequence balance loss folded into the router gradient.
#include "layers/moe.h"

#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/linear.h"

static float *falloc(long n) { return core_alloc((size_t)n * sizeof(float)); }

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

// The rows [off, off + n) of activations over many rows; da and db may not exist yet (NULL).
static SwigluActs acts_rows(const SwigluActs *a, long off) {
    SwigluActs v = {a->a + off, a->b + off, a->h + off, a->da ? a->da + off : NULL,
                    a->db ? a->db + off : NULL};
    return v;
}

static void acts_free(SwigluActs *a) {
    core_free(a->a);
    core_free(a->b);
    core_free(a->h);
    core_free(a->da);
    core_free(a->db);
}

void moe_forward(float *y, MoeActs *a, const float *x, const MoeShape *s, const MoeParams *p,
                 MoeDispatcher *d, int B, int T) {
    check_shape(s, d, B, T);
    int N = B * T, D = s->D, E = s->E, K = s->K, Fe = s->Fe, L = d->n_local;
    memset(a, 0, sizeof *a);
    a->B = B;
    a->T = T;
    a->N = N;
    a->S = s->S;
    a->x = x;

    a->logits = falloc((long)N * E);
    a->scores = falloc((long)N * E);
    a->idx = core_alloc((size_t)N * K * sizeof(int));
    a->gates = falloc((long)N * K);
    linear_forward(a->logits, x, p->router, N, D, E);
    router_forward(a->scores, a->idx, a->gates, a->logits, p->bias, &s->rc, N);
    a->bal_loss = router_balance_loss(a->scores, a->idx, B, T, E, K);

    a->counts = core_alloc((size_t)L * sizeof(int));
    a->plan = d->plan(d, a->idx, N, K, &a->n_rows, a->counts);
    long total = 0;
    for (int e = 0; e < L; e++) total += a->counts[e];
    CHECK(total == a->n_rows, "moe: dispatcher counts sum to %ld rows, plan says %d", total, a->n_rows);

    long R = a->n_rows;
    a->xe = falloc(R * D);
    a->ye = falloc(R * D);
    a->ex.a = falloc(R * Fe);
    a->ex.b = falloc(R * Fe);
    a->ex.h = falloc(R * Fe);
    d->to_experts(d, a->plan, x, 0, a->xe, D);
    long off = 0;
    for (int e = 0; e < L; off += a->counts[e], e++) {
        if (a->counts[e] == 0) continue;
        SwigluActs v = acts_rows(&a->ex, off * Fe);
        long w = (long)e * Fe * D;
        swiglu_forward(a->ye + off * D, &v, a->xe + off * D, p->w1 + w, p->w3 + w, p->w2 + w,
                       a->counts[e], D, Fe);
    }
    a->out_nk = falloc((long)N * K * D);
    d->from_experts(d, a->plan, a->ye, a->out_nk, D);
    // The backward reads the expert outputs from out_nk at home, so the rows can go now.
    core_free(a->ye);
    a->ye = NULL;

    for (int t = 0; t < N; t++) {
        float *yt = y + (long)t * D;
        memset(yt, 0, (size_t)D * sizeof(float));
        for (int k = 0; k < K; k++) {
            float g = a->gates[(long)t * K + k];
            const float *o = a->out_nk + ((long)t * K + k) * D;
            for (int i = 0; i < D; i++) yt[i] += g * o[i];
        }
    }
    if (s->S == 0) return;
    a->sh = core_alloc((size_t)s->S * sizeof(SwigluActs));
    float *tmp = falloc((long)N * D);  // (N, D) one shared expert's output
    for (int j = 0; j < s->S; j++) {
        SwigluActs *h = &a->sh[j];
        h->a = falloc((long)N * Fe);
        h->b = falloc((long)N * Fe);
        h->h = falloc((long)N * Fe);
        long w = (long)j * Fe * D;
        swiglu_forward(tmp, h, x, p->sw1 + w, p->sw3 + w, p->sw2 + w, N, D, Fe);
        for (long i = 0; i < (long)N * D; i++) y[i] += tmp[i];
    }
    core_free(tmp);
}

void moe_backward_input(float *dx, MoeActs *a, const float *dy, const MoeShape *s,
                        const MoeParams *p, MoeDispatcher *d) {
    CHECK(a->out_nk != NULL, "moe_backward_input: needs moe_forward first, and runs once per forward");
    int N = a->N, D = s->D, E = s->E, K = s->K, Fe = s->Fe, L = d->n_local;
    long R = a->n_rows;
    a->dy = falloc((long)N * D);
    memcpy(a->dy, dy, (size_t)N * D * sizeof(float));

    // y = Σ_k g_k · out_k: ∂L/∂g_k = dy · out_k and ∂L/∂out_k = g_k · dy.
    float *dgates = falloc((long)N * K);  // (N, K)
    float *nk = falloc((long)N * K * D);  // (N, K, D) first ∂L/∂out_nk, then the experts' dx
    for (int t = 0; t < N; t++) {
        const float *dyt = dy + (long)t * D;
        for (int k = 0; k < K; k++) {
            long tk = (long)t * K + k;
            const float *o = a->out_nk + tk * D;
            float *dout = nk + tk * D;
            float dot = 0.0f;
            for (int i = 0; i < D; i++) {
                dot += dyt[i] * o[i];
                dout[i] = a->gates[tk] * dyt[i];
            }
            dgates[tk] = dot;
        }
    }
    core_free(a->out_nk);
    a->out_nk = NULL;

    // Routed experts: the gradient rows travel out the way x did, and come home the way y did.
    a->dye = falloc(R * D);
    d->to_experts(d, a->plan, nk, 1, a->dye, D);
    a->ex.da = falloc(R * Fe);
    a->ex.db = falloc(R * Fe);
    float *dh = falloc(R * Fe);   // (n_rows, Fe) scratch
    float *dxe = falloc(R * D);   // (n_rows, D) ∂L/∂xe
    long off = 0;
    for (int e = 0; e < L; off += a->counts[e], e++) {
        if (a->counts[e] == 0) continue;
        SwigluActs v = acts_rows(&a->ex, off * Fe);
        long w = (long)e * Fe * D;
        swiglu_backward_input(dxe + off * D, &v, dh + off * Fe, a->dye + off * D, p->w1 + w,
                              p->w3 + w, p->w2 + w, a->counts[e], D, Fe);
    }
    core_free(dh);
    d->from_experts(d, a->plan, dxe, nk, D);
    core_free(dxe);
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            const float *src = nk + ((long)t * K + k) * D;
            for (int i = 0; i < D; i++) dx[(long)t * D + i] += src[i];
        }
    core_free(nk);

    if (s->S > 0) {
        float *sdh = falloc((long)N * Fe);  // (N, Fe) scratch
        for (int j = 0; j < s->S; j++) {
            SwigluActs *h = &a->sh[j];
            h->da = falloc((long)N * Fe);
            h->db = falloc((long)N * Fe);
            long w = (long)j * Fe * D;
            swiglu_backward_input(dx, h, sdh, dy, p->sw1 + w, p->sw3 + w, p->sw2 + w, N, D, Fe);
        }
        core_free(sdh);
    }

    // Router: the gates' gradient, plus alpha · ∂L_bal/∂scores when the balance loss is on.
    float *dscores = NULL;  // (N, E)
    if (s->alpha > 0.0f) {
        dscores = falloc((long)N * E);
        router_balance_loss_backward(dscores, s->alpha, a->scores, a->idx, a->B, a->T, E, K);
    }
    a->dlogits = falloc((long)N * E);
    router_backward_input(a->dlogits, dgates, dscores, a->scores, a->idx, &s->rc, N);
    linear_backward_input(dx, a->dlogits, p->router, N, D, E);
    core_free(dscores);
    core_free(dgates);
}

void moe_backward_weight(MoeParams *g, MoeActs *a, const MoeShape *s, MoeDispatcher *d) {
    CHECK(a->dlogits != NULL, "moe_backward_weight: needs moe_backward_input first");
    int N = a->N, D = s->D, E = s->E, Fe = s->Fe, L = d->n_local;
    linear_backward_weight(g->router, a->dlogits, a->x, N, D, E);
    long off = 0;
    for (int e = 0; e < L; off += a->counts[e], e++) {
        if (a->counts[e] == 0) continue;
        SwigluActs v = acts_rows(&a->ex, off * Fe);
        long w = (long)e * Fe * D;
        swiglu_backward_weight(g->w1 + w, g->w3 + w, g->w2 + w, &v, a->xe + off * D,
                               a->dye + off * D, a->counts[e], D, Fe);
    }
    for (int j = 0; j < s->S; j++) {
        long w = (long)j * Fe * D;
        swiglu_backward_weight(g->sw1 + w, g->sw3 + w, g->sw2 + w, &a->sh[j], a->x, a->dy, N, D, Fe);
    }
}

void moe_acts_free(MoeActs *a, MoeDispatcher *d) {
    core_free(a->logits);
    core_free(a->scores);
    core_free(a->idx);
    core_free(a->gates);
    if (a->plan) d->release(d, a->plan);
    core_free(a->counts);
    core_free(a->xe);
    core_free(a->ye);
    acts_free(&a->ex);
    core_free(a->out_nk);
    for (int j = 0; a->sh && j < a->S; j++) acts_free(&a->sh[j]);
    core_free(a->sh);
    core_free(a->dy);
    core_free(a->dye);
    core_free(a->dlogits);
    memset(a, 0, sizeof *a);
}
