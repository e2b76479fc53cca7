// The single-process MoE dispatcher (see moe.h): every expert is local (slot s = expert s), and the
// plan is a stable counting sort of the N·K (token, choice) pairs by expert id, so rows come ordered
// by expert, then token, then choice. Dispatch and combine are a gather and a scatter through it;
// the layer's combine reads the rows in place through the inverse map (row_map).
// The sort itself (moe_counting_sort) lives here and serves the EP dispatcher's host plan too.
#include <limits.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/moe.h"

struct MoeDispatchPlan {
    int N, K, n_rows;  // n_rows = N·K: every pair stays in this process
    int *pair;         // (n_rows) row r holds pair t·K + k
    int *row;          // (n_rows) pair t·K + k is at row row[t·K + k] (the inverse of pair)
};

static MoeDispatchPlan *local_plan(MoeDispatcher *self, const int *idx, int N, int K, int *n_rows,
                                   int *counts) {
    int E = self->n_local;
    CHECK(N >= 0 && K >= 1, "local dispatcher: bad routing shape N = %d, K = %d", N, K);
    long n = (long)N * K;
    CHECK(n <= INT_MAX, "local dispatcher: %ld routed rows overflow an int", n);
    for (long r = 0; r < n; r++)
        CHECK(idx[r] >= 0 && idx[r] < E, "local dispatcher: expert id %d out of range [0, %d)", idx[r],
              E);
    MoeDispatchPlan *p = core_alloc(sizeof *p);
    p->N = N;
    p->K = K;
    p->n_rows = (int)n;
    p->pair = core_alloc((size_t)n * sizeof(int));
    p->row = core_alloc((size_t)n * sizeof(int));
    moe_counting_sort(idx, n, E, counts, p->row, p->pair);
    *n_rows = p->n_rows;
    return p;
}

void moe_counting_sort(const int *key, long n, int n_keys, int *counts, int *row, int *item) {
    memset(counts, 0, (size_t)n_keys * sizeof(int));
    for (long r = 0; r < n; r++) counts[key[r]]++;
    // Visiting the items in input order and appending each at its key's next free row is what makes
    // the sort stable.
    int *next = core_alloc((size_t)n_keys * sizeof(int));  // (n_keys) next free row of each key
    for (int k = 1; k < n_keys; k++) next[k] = next[k - 1] + counts[k - 1];
    for (long r = 0; r < n; r++) {
        const int at = next[key[r]]++;
        if (row) row[r] = at;
        if (item) item[at] = (int)r;
    }
    core_free(next);
}

// The CPU backend's dispatcher: its rows are the CPU table's activation dtype, fp32.
static void local_to_experts(MoeDispatcher *self, MoeDispatchPlan *p, const void *src, int per_choice,
                             void *rows, int D) {
    const float *s = src;
    float *r = rows;
    for (int i = 0; i < p->n_rows; i++) {
        long home = per_choice ? p->pair[i] : p->pair[i] / p->K;
        memcpy(r + (long)i * D, s + home * D, (size_t)D * sizeof(float));
    }
}

static void local_from_experts(MoeDispatcher *self, MoeDispatchPlan *p, const void *rows, void *dst,
                               int D) {
    const float *r = rows;
    float *d = dst;
    for (int i = 0; i < p->n_rows; i++)
        memcpy(d + (long)p->pair[i] * D, r + (long)i * D, (size_t)D * sizeof(float));
}

static const int *local_row_map(MoeDispatcher *self, MoeDispatchPlan *p) { return p->row; }

static void local_release(MoeDispatcher *self, MoeDispatchPlan *p) {
    if (!p) return;
    core_free(p->pair);
    core_free(p->row);
    core_free(p);
}

static void local_destroy(MoeDispatcher *self) { core_free(self); }

MoeDispatcher *moe_local_dispatcher_create(int E) {
    CHECK(E >= 1, "local dispatcher: need at least one expert, got E = %d", E);
    MoeDispatcher *d = core_alloc(sizeof *d);
    d->impl = NULL;  // all the state it needs is n_local = E
    d->n_local = E;
    d->plan = local_plan;
    d->to_experts = local_to_experts;
    d->from_experts = local_from_experts;
    d->row_map = local_row_map;
    d->release = local_release;
    d->destroy = local_destroy;
    return d;
}
