// Pipeline stage partitioning (see stage_partition.h): the FLOP cost model and an exact min-max
// contiguous split by dynamic programming over (stages left, first layer), with a greedy walk that
// gives each stage from the first as many layers as the optimum allows.
#include "parallel/stage_partition.h"

#include "framework/core/check.h"
#include "framework/core/mem.h"

void stage_costs(const MoeConfig *c, double *layer, double *embed, double *head) {
    const double D = c->D, hd = (double)c->D / c->H, qd = c->H * hd, kd = c->Hkv * hd;
    const double attn = 2 * (qd * D + 2 * kd * D + D * qd) + 2 * 2 * qd * (c->T + 1) / 2.0;
    const double dense = 2 * 3 * D * c->F;
    const double moe = 2 * (c->E * D + (c->K + c->S) * 3 * D * c->Fe);
    for (int l = 0; l < c->L; l++) layer[l] = attn + (l < c->n_dense_layers ? dense : moe);
    *embed = D;
    *head = 2 * (double)c->V * D + 4 * (double)c->V;
}

// Cost of a stage holding layers [a, b) given prefix sums pre (L + 1).
static double span(const double *pre, int L, double embed, double head, int a, int b) {
    return pre[b] - pre[a] + (a == 0 ? embed : 0) + (b == L ? head : 0);
}

void stage_partition(const double *layer, int L, double embed, double head, int S, int *bounds) {
    CHECK(S >= 1 && L >= S, "stage_partition: %d layers cannot form %d stages of at least one layer",
          L, S);
    double *pre = core_alloc((size_t)(L + 1) * sizeof(double));  // (L + 1) prefix sums of layer
    for (int l = 0; l < L; l++) pre[l + 1] = pre[l] + layer[l];
    // suf[s·(L+1) + i]: the smallest possible largest stage cost when layers [i, L) form s stages.
    double *suf = core_alloc((size_t)(S + 1) * (L + 1) * sizeof(double));  // (S + 1, L + 1)
#define SUF(s, i) suf[(size_t)(s) * (L + 1) + (i)]
    for (int i = 0; i < L; i++) SUF(1, i) = span(pre, L, embed, head, i, L);
    for (int s = 2; s <= S; s++)
        for (int i = 0; i + s <= L; i++) {
            double best = -1;
            for (int b = i + 1; b + s - 1 <= L; b++) {
                double v = span(pre, L, embed, head, i, b);
                if (SUF(s - 1, b) > v) v = SUF(s - 1, b);
                if (best < 0 || v < best) best = v;
            }
            SUF(s, i) = best;
        }
    const double opt = SUF(S, 0);
    // Walk from the first stage: the largest end that keeps the rest within the optimum. The same
    // expressions as above give the same doubles, so the comparisons with opt are exact.
    bounds[0] = 0;
    for (int k = 0; k < S - 1; k++) {
        const int a = bounds[k], left = S - k - 1;
        int end = -1;
        for (int b = a + 1; b + left <= L; b++)
            if (span(pre, L, embed, head, a, b) <= opt && SUF(left, b) <= opt) end = b;
        CHECK(end > a, "stage_partition: no split reaches the optimum (internal error)");
        bounds[k + 1] = end;
    }
    bounds[S] = L;
#undef SUF
    core_free(suf);
    core_free(pre);
}
