// Expert-parallel dispatch and combine (see ep_dispatch.h). The plan: choose each pair's physical
// slot, count rows per (destination rank, local slot), exchange the counts (all-to-all), and order
// the send rows by destination slot (a stable counting sort, so one process reproduces the local
// dispatcher's order exactly). Rows arrive ordered by (source rank, slot); one permutation regroups
// them by (slot, source rank) so each local expert owns one contiguous range.
#include "parallel/ep_dispatch.h"

#include <limits.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

typedef struct {
    Comm *ep;        // the EP group (not owned)
    int E, R;        // logical experts; physical slots over the group (R / ep->size per rank)
    int maxcnt;      // most replicas of one expert
    int *phy2log;    // (R) logical expert of each slot
    int *logcnt;     // (E) replicas of each expert
    int *log2phy;    // (E, maxcnt) slots of each expert's replicas, ascending, -1 padded
} EpDispatcher;

struct MoeDispatchPlan {
    int N, K;
    int n_send, n_recv;   // rows leaving this rank (N·K) and arriving at its experts
    int *pair;            // (n_send) send row i carries pair t·K + k; rows ordered by destination slot
    size_t *send_rows;    // (P) rows to each EP rank
    size_t *recv_rows;    // (P) rows from each EP rank
    int *recv_to_row;     // (n_recv) arrival position (source, slot, pair order) → expert row
};

static EpDispatcher *impl_of(MoeDispatcher *d) { return (EpDispatcher *)d->impl; }

static MoeDispatchPlan *ep_plan(MoeDispatcher *self, const int *idx, int N, int K, int *n_rows,
                                int *counts) {
    EpDispatcher *x = impl_of(self);
    const int P = x->ep->size, Ln = self->n_local, R = x->R, me = x->ep->rank;
    CHECK(N >= 0 && K >= 1, "ep dispatcher: bad routing shape N = %d, K = %d", N, K);
    const long n = (long)N * K;
    CHECK(n <= INT_MAX, "ep dispatcher: %ld routed rows overflow an int", n);

    // Physical slot of every pair; replicas are taken round-robin per expert, starting at this
    // rank's offset, so that small batches on many ranks still spread over the replicas.
    int *slot = core_alloc((size_t)(n > 0 ? n : 1) * sizeof(int));  // (N·K)
    int *seen = core_alloc((size_t)x->E * sizeof(int));              // (E) pairs so far per expert
    int *send_cnt = core_alloc((size_t)R * sizeof(int));             // (P, Ln) rows per dest slot
    for (long r = 0; r < n; r++) {
        const int e = idx[r];
        CHECK(e >= 0 && e < x->E, "ep dispatcher: expert id %d out of range [0, %d)", e, x->E);
        const int c = x->logcnt[e];
        slot[r] = x->log2phy[(long)e * x->maxcnt + (seen[e]++ + me) % c];
        send_cnt[slot[r]]++;
    }

    MoeDispatchPlan *p = core_alloc(sizeof *p);
    p->N = N;
    p->K = K;
    p->n_send = (int)n;
    p->pair = core_alloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    // Stable counting sort of the pairs by slot: destination rank, then local slot, then
    // (token, choice) order.
    int *next = core_alloc((size_t)R * sizeof(int));  // (R) next free send row of each slot
    for (int s = 1; s < R; s++) next[s] = next[s - 1] + send_cnt[s - 1];
    for (long r = 0; r < n; r++) p->pair[next[slot[r]]++] = (int)r;
    core_free(next);
    core_free(slot);
    core_free(seen);

    int *recv_cnt = core_alloc((size_t)R * sizeof(int));  // (P, Ln) rows from each source per slot
    comm_alltoall(x->ep, send_cnt, recv_cnt, (size_t)Ln, COMM_I32);

    p->send_rows = core_alloc((size_t)P * sizeof(size_t));
    p->recv_rows = core_alloc((size_t)P * sizeof(size_t));
    memset(counts, 0, (size_t)Ln * sizeof(int));
    long total = 0;
    for (int j = 0; j < P; j++)
        for (int s = 0; s < Ln; s++) {
            p->send_rows[j] += (size_t)send_cnt[j * Ln + s];
            p->recv_rows[j] += (size_t)recv_cnt[j * Ln + s];
            counts[s] += recv_cnt[j * Ln + s];
            total += recv_cnt[j * Ln + s];
        }
    CHECK(total <= INT_MAX, "ep dispatcher: %ld rows arrive at this rank's experts", total);
    p->n_recv = (int)total;

    // Expert rows are grouped by slot, and within a slot by source rank: the first row of
    // (slot s, source j) is the rows of slots before s plus those of s from sources before j.
    p->recv_to_row = core_alloc((size_t)(total > 0 ? total : 1) * sizeof(int));
    int *start = core_alloc((size_t)R * sizeof(int));  // (P, Ln) first expert row of (source, slot)
    int row = 0;
    for (int s = 0; s < Ln; s++)
        for (int j = 0; j < P; j++) {
            start[j * Ln + s] = row;
            row += recv_cnt[j * Ln + s];
        }
    int pos = 0;
    for (int j = 0; j < P; j++)
        for (int s = 0; s < Ln; s++)
            for (int i = 0; i < recv_cnt[j * Ln + s]; i++) p->recv_to_row[pos++] = start[j * Ln + s] + i;
    core_free(start);
    core_free(send_cnt);
    core_free(recv_cnt);
    *n_rows = p->n_recv;
    return p;
}

// Moves (rows × D) blocks: counts in rows become counts in floats.
static void exchange(Comm *ep, const float *send, const size_t *send_rows, float *recv,
                     const size_t *recv_rows, int D) {
    const int P = ep->size;
    size_t *sc = core_alloc((size_t)2 * P * sizeof(size_t));  // (2, P) send and receive counts
    for (int j = 0; j < P; j++) {
        sc[j] = send_rows[j] * (size_t)D;
        sc[P + j] = recv_rows[j] * (size_t)D;
    }
    comm_alltoallv(ep, send, sc, recv, sc + P, COMM_F32);
    core_free(sc);
}

static float *rows_alloc(int n, int D) {
    return core_alloc((size_t)(n > 0 ? n : 1) * (size_t)D * sizeof(float));
}

static void ep_to_experts(MoeDispatcher *self, MoeDispatchPlan *p, const float *src, int per_choice,
                          float *rows, int D) {
    const size_t bytes = (size_t)D * sizeof(float);
    float *send = rows_alloc(p->n_send, D);  // (n_send, D) in send order
    for (int i = 0; i < p->n_send; i++) {
        const long home = per_choice ? p->pair[i] : p->pair[i] / p->K;
        memcpy(send + (size_t)i * D, src + home * D, bytes);
    }
    float *recv = rows_alloc(p->n_recv, D);  // (n_recv, D) in arrival order
    exchange(impl_of(self)->ep, send, p->send_rows, recv, p->recv_rows, D);
    for (int j = 0; j < p->n_recv; j++)
        memcpy(rows + (size_t)p->recv_to_row[j] * D, recv + (size_t)j * D, bytes);
    core_free(send);
    core_free(recv);
}

static void ep_from_experts(MoeDispatcher *self, MoeDispatchPlan *p, const float *rows, float *dst,
                            int D) {
    const size_t bytes = (size_t)D * sizeof(float);
    float *back = rows_alloc(p->n_recv, D);  // (n_recv, D) expert rows in arrival order
    for (int j = 0; j < p->n_recv; j++)
        memcpy(back + (size_t)j * D, rows + (size_t)p->recv_to_row[j] * D, bytes);
    float *home = rows_alloc(p->n_send, D);  // (n_send, D) in send order
    exchange(impl_of(self)->ep, back, p->recv_rows, home, p->send_rows, D);
    for (int i = 0; i < p->n_send; i++)
        memcpy(dst + (size_t)p->pair[i] * D, home + (size_t)i * D, bytes);
    core_free(back);
    core_free(home);
}

static void ep_release(MoeDispatcher *self, MoeDispatchPlan *p) {
    if (!p) return;
    core_free(p->pair);
    core_free(p->send_rows);
    core_free(p->recv_rows);
    core_free(p->recv_to_row);
    core_free(p);
}

static void placement_free(EpDispatcher *x) {
    core_free(x->phy2log);
    core_free(x->logcnt);
    core_free(x->log2phy);
}

static void ep_destroy(MoeDispatcher *self) {
    EpDispatcher *x = impl_of(self);
    placement_free(x);
    core_free(x);
    core_free(self);
}

void ep_dispatcher_set_placement(MoeDispatcher *d, const int *phy2log, int R) {
    CHECK(d->plan == ep_plan, "ep_dispatcher_set_placement: not an expert-parallel dispatcher");
    EpDispatcher *x = impl_of(d);
    const int P = x->ep->size, E = x->E;
    CHECK(R >= E && R % P == 0,
          "ep dispatcher: %d physical slots for %d experts on %d ranks (need R >= E and R %% ranks == 0)",
          R, E, P);
    int *cnt = core_alloc((size_t)E * sizeof(int));  // (E)
    for (int s = 0; s < R; s++) {
        CHECK(phy2log[s] >= 0 && phy2log[s] < E, "ep dispatcher: slot %d holds expert %d, outside [0, %d)",
              s, phy2log[s], E);
        cnt[phy2log[s]]++;
    }
    int maxcnt = 0;
    for (int e = 0; e < E; e++) {
        CHECK(cnt[e] >= 1, "ep dispatcher: expert %d has no physical slot", e);
        if (cnt[e] > maxcnt) maxcnt = cnt[e];
    }
    placement_free(x);
    x->R = R;
    x->maxcnt = maxcnt;
    x->phy2log = core_alloc((size_t)R * sizeof(int));
    memcpy(x->phy2log, phy2log, (size_t)R * sizeof(int));
    x->logcnt = cnt;
    x->log2phy = core_alloc((size_t)E * maxcnt * sizeof(int));
    for (long i = 0; i < (long)E * maxcnt; i++) x->log2phy[i] = -1;
    int *fill = core_alloc((size_t)E * sizeof(int));  // (E) replicas listed so far
    for (int s = 0; s < R; s++) x->log2phy[(long)phy2log[s] * maxcnt + fill[phy2log[s]]++] = s;
    core_free(fill);
    d->n_local = R / P;
}

MoeDispatcher *ep_dispatcher_create(Comm *ep, int E) {
    CHECK(E >= 1 && E % ep->size == 0, "ep dispatcher: %d experts cannot be split over %d ranks", E,
          ep->size);
    EpDispatcher *x = core_alloc(sizeof *x);
    x->ep = ep;
    x->E = E;
    MoeDispatcher *d = core_alloc(sizeof *d);
    d->impl = x;
    d->plan = ep_plan;
    d->to_experts = ep_to_experts;
    d->from_experts = ep_from_experts;
    d->release = ep_release;
    d->destroy = ep_destroy;
    int *identity = core_alloc((size_t)E * sizeof(int));  // (E) slot p holds expert p
    for (int s = 0; s < E; s++) identity[s] = s;
    ep_dispatcher_set_placement(d, identity, E);
    core_free(identity);
    return d;
}
