// The CPU backend table of ops.h (fp32 host memory, the layers' CPU functions), and the SwiGLU
// composition every backend shares. The loops here are the ones the engine ran inline before the
// table existed, in the same order, so CPU results are unchanged to the bit.
#include "layers/ops.h"

#include <math.h>
#include <string.h>

#include "framework/core/check.h"
#include "layers/attention.h"
#include "layers/crossentropy.h"
#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"
#include "layers/rope.h"

static void cpu_zero(void *p, size_t bytes) { if (bytes) memset(p, 0, bytes); }
// A buffer the caller writes in full before reading it. The sanitizer build poisons it: 0xFF
// bytes are a NaN in every float and expert id -1, so that a read before the write fails a test,
// and tools/run_tests.sh runs the whole suite in that build too. The optimized build leaves it
// unfilled: the fill was 7.5 % of the quickstart's CPU step (perf, 2026-12-04).
static void *cpu_alloc_uninit(size_t bytes) {
#ifdef __SANITIZE_ADDRESS__
    return core_alloc_filled(bytes, 0xFF);
#else
    return core_alloc_uninit(bytes);
#endif
}
static void cpu_copy(void *dst, const void *src, size_t bytes) { if (bytes) memcpy(dst, src, bytes); }
static void cpu_sync(void) {}
static size_t cpu_peak_bytes(void) { return 0; }
static void cpu_to_act(void *dst, const float *src, long n) { cpu_copy(dst, src, (size_t)n * sizeof(float)); }
static void cpu_from_act(float *dst, const void *src, long n) { cpu_copy(dst, src, (size_t)n * sizeof(float)); }

static void cpu_add(void *out, const void *a, const void *b, long n) {
    float *o = out;
    const float *x = a, *y = b;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) o[i] = x[i] + y[i];
}

static void cpu_embedding_forward(void *out, const int *tokens, const void *table, int N, int V, int D) {
    embedding_forward(out, tokens, table, N, V, D);
}
static void cpu_embedding_backward_weight(float *dtable, const void *dout, const int *tokens, int N,
                                          int V, int D) {
    embedding_backward_weight(dtable, dout, tokens, N, V, D);
}
static void cpu_rmsnorm_forward(void *out, float *rstd, const void *inp, const void *gain, int N, int D,
                                float eps) {
    rmsnorm_forward(out, rstd, inp, gain, N, D, eps);
}
static void cpu_rmsnorm_backward_input(void *dinp, float *part, const void *dres, const void *dout,
                                       const void *inp, const void *gain, const float *rstd, int N,
                                       int D) {
    rmsnorm_backward_input(dinp, part, dres, dout, inp, gain, rstd, N, D);
}
static void cpu_linear_forward(void *out, const void *inp, const void *W, int N, int IC, int OC) {
    linear_forward(out, inp, W, N, IC, OC);
}
static void cpu_linear_forward_f32(float *out, const void *inp, const void *W, int N, int IC, int OC) {
    linear_forward(out, inp, W, N, IC, OC);
}
static void cpu_linear_backward_input(void *dinp, const void *dout, const void *W, int N, int IC, int OC,
                                      int acc) {
    if (!acc) cpu_zero(dinp, (size_t)N * IC * sizeof(float));
    linear_backward_input(dinp, dout, W, N, IC, OC);
}
static void cpu_linear_backward_weight(float *dW, const void *dout, const void *inp, int N, int IC,
                                       int OC) {
    linear_backward_weight(dW, dout, inp, N, IC, OC);
}

// Group e's rows start at row `off` (advanced by the loop) and its matrix at e·OC·IC; n holds the
// counts.
#define FOR_GROUPS(n, G)                                                                          \
    for (long e = 0, off = 0; e < (G); off += (n)[e], e++)                                        \
        if ((n)[e] > 0)

// The CPU's memory is the host's: device counts are host counts.
static const int *cpu_counts(const OpsGroups *g) {
    CHECK(g->host || g->dev, "cpu: grouped call without counts");
    return g->host ? g->host : g->dev;
}

static void cpu_linear_forward_grouped(void *out, const void *inp, const void *W, const OpsGroups *g, int IC,
                                       int OC) {
    const int *n = cpu_counts(g);
    FOR_GROUPS(n, g->G)
    linear_forward((float *)out + off * OC, (const float *)inp + off * IC, (const float *)W + e * OC * IC, n[e],
                   IC, OC);
}
static void cpu_linear_backward_input_grouped(void *dinp, const void *dout, const void *W, const OpsGroups *g,
                                              int IC, int OC, int acc) {
    const int *n = cpu_counts(g);
    if (!acc) cpu_zero(dinp, (size_t)g->rows * IC * sizeof(float));
    FOR_GROUPS(n, g->G)
    linear_backward_input((float *)dinp + off * IC, (const float *)dout + off * OC,
                          (const float *)W + e * OC * IC, n[e], IC, OC);
}
static void cpu_linear_backward_weight_grouped(float *dW, const void *dout, const void *inp, const OpsGroups *g,
                                               int IC, int OC, int acc) {
    const int *n = cpu_counts(g);
    if (!acc) memset(dW, 0, (size_t)g->G * OC * IC * sizeof(float));
    FOR_GROUPS(n, g->G)
    linear_backward_weight(dW + e * OC * IC, (const float *)dout + off * OC, (const float *)inp + off * IC, n[e],
                           IC, OC);
}

static void cpu_rope_forward(void *out, int out_ld, const void *inp, int inp_ld, int N, int T, int nh,
                             int hd, float theta) {
    rope_forward(out, out_ld, inp, inp_ld, N, T, nh, hd, theta);
}
static void cpu_rope_backward_input(void *dinp, int dinp_ld, const void *dout, int dout_ld, int N, int T,
                                    int nh, int hd, float theta) {
    rope_backward_input(dinp, dinp_ld, dout, dout_ld, N, T, nh, hd, theta);
}
static void cpu_rope_copy(void *out, int out_ld, const void *inp, int inp_ld, int N, int T, int nh,
                          int hd) {
    rope_copy(out, out_ld, inp, inp_ld, N, T, nh, hd);
}
static size_t cpu_attention_state_floats(int B, int T, int H) { return (size_t)B * H * T * T; }
static void cpu_attention_forward(void *out, float *state, const void *q, const void *k, const void *v,
                                  int B, int T, int H, int Hkv, int hd) {
    attention_forward(out, state, q, k, v, B, T, H, Hkv, hd);
}
static void cpu_attention_backward_input(void *dq, void *dk, void *dv, const void *dout, const void *q,
                                         const void *k, const void *v, const void *out,
                                         const float *state, int B, int T, int H, int Hkv, int hd) {
    // The table overwrites (as the GPU kernels do); the layer adds into its outputs.
    memset(dq, 0, (size_t)B * T * H * hd * sizeof(float));
    memset(dk, 0, (size_t)B * T * Hkv * hd * sizeof(float));
    memset(dv, 0, (size_t)B * T * Hkv * hd * sizeof(float));
    attention_backward_input(dq, dk, dv, dout, q, k, v, state, B, T, H, Hkv, hd);
}
static void cpu_swiglu_act_forward(void *h, const void *ab, long rows, int F) {
    swiglu_act_forward(h, ab, rows, F);
}
static void cpu_swiglu_act_backward(void *dab, float *s, void *dh, const void *ab, long rows, int F) {
    swiglu_act_backward(dab, s, dh, ab, rows, F);
}
static void cpu_crossentropy_forward(float *losses, float *lse, const void *logits, const int *targets,
                                     int N, int V) {
    crossentropy_forward(losses, lse, logits, targets, N, V);
}
static void cpu_crossentropy_backward_input(void *dlogits, const void *logits, const float *lse,
                                            const int *targets, float dloss, int N, int V) {
    crossentropy_backward_input(dlogits, logits, lse, targets, dloss, N, V);
}

static void cpu_loss_mean(float *out, const float *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    *out = (float)(s / n);
}

static void cpu_balance_loss(float *loss, const float *scores, const int *idx, int B, int T, int E,
                             int K) {
    *loss = router_balance_loss(scores, idx, B, T, E, K);
}

static void cpu_router_bias_update(float *const *bias, const long *counts, int L, int E, int K,
                                   long n_tokens, float gamma) {
    for (int l = 0; l < L; l++)
        if (bias[l]) router_bias_update(bias[l], counts + (size_t)l * E, E, K, n_tokens, gamma);
}

// Row of pair tk in a combine's rows (see ops.h).
static const float *pair_row(const void *rows, const int *map, long tk, int D) {
    return (const float *)rows + (map ? map[tk] : tk) * (long)D;
}

static void cpu_moe_combine(void *y, const void *rows, const int *map, const float *gates, int N, int K,
                            int D, const void *add, int n_add) {
    for (int t = 0; t < N; t++) {
        float *yt = (float *)y + (long)t * D;
        memset(yt, 0, (size_t)D * sizeof(float));
        for (int k = 0; k < K; k++) {
            float g = gates[(long)t * K + k];
            const float *o = pair_row(rows, map, (long)t * K + k, D);
            for (int i = 0; i < D; i++) yt[i] += g * o[i];
        }
        for (int j = 0; j < n_add; j++) {
            const float *a = (const float *)add + ((long)j * N + t) * D;
            for (int i = 0; i < D; i++) yt[i] += a[i];
        }
    }
}

static void cpu_moe_combine_backward(void *drows, const void *dy, const int *map, const float *gates,
                                     int N, int K, int D) {
    for (int t = 0; t < N; t++) {
        const float *dyt = (const float *)dy + (long)t * D;
        for (int k = 0; k < K; k++) {
            long tk = (long)t * K + k;
            float *dout = (float *)pair_row(drows, map, tk, D);
            for (int i = 0; i < D; i++) dout[i] = gates[tk] * dyt[i];
        }
    }
}

static void cpu_moe_gate_grad(float *dgates, const float *s, const int *map, const float *gates, int N,
                              int K) {
    for (long tk = 0; tk < (long)N * K; tk++) {
        const float g = gates[tk];
        dgates[tk] = g == 0.0f ? 0.0f : s[map ? map[tk] : tk] / g;
    }
}

static void cpu_moe_sum_choices(void *dx, const void *rows, const int *map, int N, int K, int D) {
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            const float *src = pair_row(rows, map, (long)t * K + k, D);
            for (int i = 0; i < D; i++) ((float *)dx)[(long)t * D + i] += src[i];
        }
}

static void cpu_adamw_step(float *p, const float *g, float *m, float *v, void *p_low, const AdamwSpan *s,
                           int ns, const AdamwHyper *h) {
    // The CPU computes in fp32: a compute copy (ZeRO-1's, beside its master shard) is fp32 too.
    const double bc1 = 1.0 - pow(h->beta1, (double)h->t), bc2 = 1.0 - pow(h->beta2, (double)h->t);
    const float b1 = h->beta1, b2 = h->beta2, eps = h->eps, lr = h->lr, gs = h->gscale;
    for (int i = 0; i < ns; i++) {
        const float d = s[i].decay ? 1.0f - lr * h->weight_decay : 1.0f;
        float *pi = p + s[i].g_at, *mi = m + s[i].g_at, *vi = v + s[i].g_at;
        float *low = p_low ? (float *)p_low + s[i].p_at : NULL;
        const float *gi = g + s[i].g_at;
        const long n = s[i].n;
#pragma omp parallel for simd schedule(static)
        for (long j = 0; j < n; j++) {
            const float gj = gi[j] * gs;
            mi[j] = b1 * mi[j] + (1.0f - b1) * gj;
            vi[j] = b2 * vi[j] + (1.0f - b2) * gj * gj;
            float mhat = (float)(mi[j] / bc1), vhat = (float)(vi[j] / bc2);
            pi[j] = pi[j] * d - lr * mhat / (sqrtf(vhat) + eps);
            if (low) low[j] = pi[j];
        }
    }
}

// One thread, in an order fixed by the spans and the vector width: the same bits every run.
static void cpu_grad_sqsum(double *sum, const float *g, const AdamwSpan *s, int ns) {
    double q = *sum;
    for (int i = 0; i < ns; i++) {
        const float *gi = g + s[i].g_at;
#pragma omp simd reduction(+ : q)
        for (long j = 0; j < s[i].n; j++) q += (double)gi[j] * gi[j];
    }
    *sum = q;
}

static void cpu_grad_scale(float *g, long n, float s) {
    for (long j = 0; j < n; j++) g[j] *= s;
}

static void cpu_scatter_rows(void *rows, const void *src, int per_choice, const int *pos, int N, int K, int D) {
    moe_scatter_rows(rows, src, per_choice, pos, N, K, D);
}
static void cpu_gather_rows(void *dst, const void *rows, const int *pos, long n, int D) {
    moe_gather_rows(dst, rows, pos, n, D);
}
// moe_cuda_ep_plan's arithmetic on the host: a pair with an id outside [0, E) gets key R, after
// every slot, and stays out of the counts.
static void cpu_ep_plan(int *send_pos, int *counts, const int *idx, long n, int E, const int *log2phy,
                        const int *logcnt, int maxcnt, int me, int R) {
    CHECK(E >= 1 && R >= E && maxcnt >= 1, "moe: bad EP placement E = %d, R = %d", E, R);
    int *slot = core_alloc((size_t)(n > 0 ? n : 1) * sizeof(int));  // (n)
    int *seen = core_alloc((size_t)E * sizeof(int));                // (E) pairs so far per expert
    int *all = core_alloc((size_t)(R + 1) * sizeof(int));           // (R + 1) counts with the strays
    for (long r = 0; r < n; r++) {
        const int e = idx[r];
        slot[r] = e >= 0 && e < E ? log2phy[(long)e * maxcnt + (seen[e]++ + me) % logcnt[e]] : R;
    }
    moe_counting_sort(slot, n, R + 1, all, send_pos, NULL);
    memcpy(counts, all, (size_t)R * sizeof(int));
    core_free(slot);
    core_free(seen);
    core_free(all);
}
static void cpu_ep_recv_pos(int *recv_pos, const int *table, int B, long n) {
    for (int b = 0; b < B; b++) {
        const long end = b + 1 < B ? table[b + 1] : n;
        for (long a = table[b]; a < end; a++) recv_pos[a] = table[B + b] + (int)(a - table[b]);
    }
}

const LayerOps layer_ops_cpu = {
    .name = "cpu",
    .dev = CORE_CPU,
    .dt = CORE_F32,
    .act_size = sizeof(float),
    .alloc = core_alloc,
    .alloc_uninit = cpu_alloc_uninit,
    .free = core_free,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .peak_bytes = cpu_peak_bytes,
    .to_act = cpu_to_act,
    .from_act = cpu_from_act,
    .add = cpu_add,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward_weight = cpu_embedding_backward_weight,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward_input = cpu_rmsnorm_backward_input,
    .rmsnorm_backward_weight = rmsnorm_backward_weight,
    .linear_forward = cpu_linear_forward,
    .linear_forward_f32 = cpu_linear_forward_f32,
    .linear_backward_input = cpu_linear_backward_input,
    .linear_backward_weight = cpu_linear_backward_weight,
    .linear_forward_grouped = cpu_linear_forward_grouped,
    .linear_backward_input_grouped = cpu_linear_backward_input_grouped,
    .linear_backward_weight_grouped = cpu_linear_backward_weight_grouped,
    .rope_forward = cpu_rope_forward,
    .rope_backward_input = cpu_rope_backward_input,
    .rope_copy = cpu_rope_copy,
    .attention_state_floats = cpu_attention_state_floats,
    .attention_forward = cpu_attention_forward,
    .attention_backward_input = cpu_attention_backward_input,
    .swiglu_act_forward = cpu_swiglu_act_forward,
    .swiglu_act_backward = cpu_swiglu_act_backward,
    .crossentropy_forward = cpu_crossentropy_forward,
    .crossentropy_backward_input = cpu_crossentropy_backward_input,
    .loss_mean = cpu_loss_mean,
    .router_forward = router_forward,
    .router_backward_input = router_backward_input,
    .balance_loss = cpu_balance_loss,
    .balance_loss_backward = router_balance_loss_backward,
    .router_bias_update = cpu_router_bias_update,
    .moe_combine = cpu_moe_combine,
    .moe_combine_backward = cpu_moe_combine_backward,
    .moe_gate_grad = cpu_moe_gate_grad,
    .moe_sum_choices = cpu_moe_sum_choices,
    .local_dispatcher = moe_local_dispatcher_create,
    .scatter_rows = cpu_scatter_rows,
    .gather_rows = cpu_gather_rows,
    .ep_plan = cpu_ep_plan,
    .ep_recv_pos = cpu_ep_recv_pos,
    .adamw_step = cpu_adamw_step,
    .grad_sqsum = cpu_grad_sqsum,
    .grad_scale = cpu_grad_scale,
};

// ---------------------------------------------------------------------------------------------
// SwiGLU through a table: the dense FFN (one group), the shared experts (one group each) and the
// routed experts (one group per expert slot) are this one composition.

OpsGroups ops_groups_host(const int *counts, int G) {
    OpsGroups g = {G, 0, counts, NULL};
    for (int e = 0; e < G; e++) {
        CHECK(counts[e] >= 0, "ops: group %d has %d rows", e, counts[e]);
        g.rows += counts[e];
    }
    return g;
}

double ops_sqsum(const LayerOps *o, const float *g, const AdamwSpan *s, int ns) {
    if (ns <= 0) return 0;
    double *d = o->alloc(sizeof(double)), sum;  // zeroed
    o->grad_sqsum(d, g, s, ns);
    o->download(&sum, d, sizeof sum);
    o->free(d);
    return sum;
}

void ops_swiglu_forward(const LayerOps *o, void *out, SwigluActs *acts, const void *x, const void *w13,
                        const void *w2, const OpsGroups *g, int D, int F) {
    CHECK(out == NULL || acts->h != NULL, "ops_swiglu_forward: an output needs the gate's output h");
    o->linear_forward_grouped(acts->ab, x, w13, g, D, 2 * F);
    if (acts->h) o->swiglu_act_forward(acts->h, acts->ab, g->rows, F);
    if (out) o->linear_forward_grouped(out, acts->h, w2, g, F, D);
}

void ops_swiglu_backward_input(const LayerOps *o, void *dx, SwigluActs *acts, void *scratch_dh, float *s,
                               const void *dout, const void *w13, const void *w2, const OpsGroups *g, int D,
                               int F, int acc) {
    // Groups without rows may come with NULL buffers: nothing to do.
    if (g->rows == 0) return;
    // dh and dab are written, never added to, so they need no zero fill and no read of zeros. The
    // gate's backward leaves h in scratch_dh.
    o->linear_backward_input_grouped(scratch_dh, dout, w2, g, F, D, 0);
    o->swiglu_act_backward(acts->dab, s, scratch_dh, acts->ab, g->rows, F);
    o->linear_backward_input_grouped(dx, acts->dab, w13, g, D, 2 * F, acc);
}

void ops_swiglu_backward_weight(const LayerOps *o, float *dw13, float *dw2, const SwigluActs *acts,
                                const void *x, const void *dout, const OpsGroups *g, int D, int F, int acc) {
    // A caller that dropped h after the forward and did not keep backward_input's (a gigabyte a
    // layer at the bench shapes) gets it recomputed from ab: the same bits.
    void *h = acts->h;
    if (!h && g->rows > 0) {
        h = o->alloc_uninit((size_t)g->rows * F * o->act_size);
        o->swiglu_act_forward(h, acts->ab, g->rows, F);
    }
    o->linear_backward_weight_grouped(dw2, dout, h, g, F, D, acc);
    if (h != acts->h) o->free(h);
    o->linear_backward_weight_grouped(dw13, acts->dab, x, g, D, 2 * F, acc);
}
