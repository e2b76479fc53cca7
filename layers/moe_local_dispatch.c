// The single-process MoE dispatcher (see moe.h): every expert is local (slot s = expert s), and the
// plan is a stable counting sort of the N·K (token, choice) pairs by expert id, so rows come ordered
// by expert, then token, then choice. Dispatch and combine are a scatter and a gather through the
// map from each pair to its row, which the layer's combine also reads the rows in place through
// (row_map). The sort (moe_counting_sort) and the row moves (moe_scatter_rows, moe_gather_rows) live
// here and serve the EP dispatcher's host plan and the CPU table too.
#include <limits.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/moe.h"

struct MoeDispatchPlan {
    int N, K, n_rows;  // n_rows = N·K: every pair stays in this process
    int *row;          // (n_rows) pair t·K + k is at row row[t·K + k]
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
    p->row = core_alloc((size_t)n * sizeof(int));
    moe_counting_sort(idx, n, E, counts, p->row, NULL);
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

void moe_scatter_rows(float *rows, const float *src, int per_choice, const int *pos, int N, int K, int D) {
    const long n = (long)N * K;
    for (long i = 0; i < n; i++)
        memcpy(rows + (long)pos[i] * D, src + (per_choice ? i : i / K) * D, (size_t)D * sizeof(float));
}

void moe_gather_rows(float *dst, const float *rows, const int *pos, long n, int D) {
    for (long i = 0; i < n; i++) memcpy(dst + i * D, rows + (long)pos[i] * D, (size_t)D * sizeof(float));
}

// The CPU backend's dispatcher: its rows are the CPU table's activation dtype, fp32.
static void local_to_experts(MoeDispatcher *self, MoeDispatchPlan *p, const void *src, int per_choice,
                             void *rows, int D) {
    moe_scatter_rows(rows, src, per_choice, p->row, p->N, p->K, D);
}

static void local_from_experts(MoeDispatcher *self, MoeDispatchPlan *p, const void *rows, void *dst,
                               int D) {
    moe_gather_rows(dst, rows, p->row, p->n_rows, D);
}

static const int *local_row_map(MoeDispatcher *self, MoeDispatchPlan *p) { return p->row; }

static void local_release(MoeDispatcher *self, MoeDispatchPlan *p) {
    if (!p) return;
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
