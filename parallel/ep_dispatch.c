// Expert-parallel dispatch and combine (see ep_dispatch.h). The plan: choose each pair's physical
// slot, count rows per (destination rank, local slot), exchange the counts (all-to-all), and order
// the send rows by destination slot (a stable counting sort, so one process reproduces the local
// dispatcher's order exactly). Rows arrive ordered by (source rank, slot); one permutation regroups
// them by (slot, source rank) so each local expert owns one contiguous range. The plan is made on
// the host (counts travel over the host group); on a GPU the rows stay in device memory: the two
// index maps go to the device, the permutes are kernels, and the rows travel over the NCCL twin.
#include "parallel/ep_dispatch.h"

#include <limits.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/ops.h"
#ifdef MOELAB_CUDA
#include "layers/moe_cuda.h"
#endif

typedef struct {
    Comm *ep;        // the EP group (not owned): counts, and the rows of a CPU dispatcher
    Comm *ep_dev;    // its NCCL twin for device rows (not owned; ep_dispatcher_to_device), or NULL
    int E, R;        // logical experts; physical slots over the group (R / ep->size per rank)
    int maxcnt;      // most replicas of one expert
    int *phy2log;    // (R) logical expert of each slot
    int *logcnt;     // (E) replicas of each expert
    int *log2phy;    // (E, maxcnt) slots of each expert's replicas, ascending, -1 padded
} EpDispatcher;

struct MoeDispatchPlan {
    int N, K;
    int n_send, n_recv;   // rows leaving this rank (N·K) and arriving at its experts
    int *send_pos;        // (N·K) send row of pair t·K + k; rows ordered by destination slot
    size_t *send_rows;    // (P) rows to each EP rank
    size_t *recv_rows;    // (P) rows from each EP rank
    int *recv_to_row;     // (n_recv) arrival position (source, slot, pair order) → expert row
    int *d_send_pos, *d_recv_to_row;  // device copies of the two maps (GPU dispatchers), or NULL
};

static EpDispatcher *impl_of(MoeDispatcher *d) { return (EpDispatcher *)d->impl; }
static const LayerOps *ops_of(const MoeDispatcher *d) { return d->ops ? d->ops : &layer_ops_cpu; }

static MoeDispatchPlan *ep_plan(MoeDispatcher *self, const int *idx, int N, int K, int *n_rows,
                                int *counts) {
    EpDispatcher *x = impl_of(self);
    const int P = x->ep->size, Ln = self->n_local, R = x->R, me = x->ep->rank;
    CHECK(N >= 0 && K >= 1, "ep dispatcher: bad routing shape N = %d, K = %d", N, K);
    const long n = (long)N * K;
    CHECK(n <= INT_MAX, "ep dispatcher: %ld routed rows overflow an int", n);
    // A GPU's routing comes to the host, where the plan is made.
    const LayerOps *o = ops_of(self);
    int *host_idx = NULL;  // (N, K)
    if (o->dev != CORE_CPU) {
        host_idx = core_alloc((size_t)(n > 0 ? n : 1) * sizeof(int));
        o->download(host_idx, idx, (size_t)n * sizeof(int));
        idx = host_idx;
    }

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
    p->send_pos = core_alloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    // Stable counting sort of the pairs by slot: destination rank, then local slot, then
    // (token, choice) order.
    int *next = core_alloc((size_t)R * sizeof(int));  // (R) next free send row of each slot
    for (int s = 1; s < R; s++) next[s] = next[s - 1] + send_cnt[s - 1];
    for (long r = 0; r < n; r++) p->send_pos[r] = next[slot[r]]++;
    core_free(next);
    core_free(slot);
    core_free(seen);
    core_free(host_idx);

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
    if (o->dev != CORE_CPU) {
        p->d_send_pos = o->alloc((size_t)n * sizeof(int));
        p->d_recv_to_row = o->alloc((size_t)total * sizeof(int));
        o->upload(p->d_send_pos, p->send_pos, (size_t)n * sizeof(int));
        o->upload(p->d_recv_to_row, p->recv_to_row, (size_t)total * sizeof(int));
    }
    *n_rows = p->n_recv;
    return p;
}

// Rows are D elements of the backend's activation dtype (fp32 on the CPU, fp32 or bf16 on a GPU).
// The all-to-all moves them as 4-byte words: it only copies, so the words' type does not matter.
static size_t row_words(const LayerOps *o, int D) {
    const size_t bytes = (size_t)D * o->act_size;
    CHECK(bytes % 4 == 0, "ep dispatcher: rows of %d %zu-byte elements are not whole 4-byte words "
          "(use an even d_model)", D, o->act_size);
    return bytes / 4;
}

// Moves (rows × D) blocks over the group the rows live on (the NCCL twin for device rows).
static void exchange(MoeDispatcher *self, const void *send, const size_t *send_rows, void *recv,
                     const size_t *recv_rows, int D) {
    EpDispatcher *x = impl_of(self);
    Comm *c = ops_of(self)->dev != CORE_CPU ? x->ep_dev : x->ep;
    const size_t w = row_words(ops_of(self), D);
    const int P = c->size;
    size_t *sc = core_alloc((size_t)2 * P * sizeof(size_t));  // (2, P) send and receive counts
    for (int j = 0; j < P; j++) {
        sc[j] = send_rows[j] * w;
        sc[P + j] = recv_rows[j] * w;
    }
    comm_alltoallv(c, send, sc, recv, sc + P, COMM_F32);
    core_free(sc);
}

static void *rows_alloc(const LayerOps *o, int n, int D) {
    return o->alloc((size_t)(n > 0 ? n : 1) * (size_t)D * o->act_size);
}

// rows[map[i]] ← src[per_choice ? i : i / K] for the N·K entries of map (N, K): a scatter of home
// rows (or of arrival rows, with K = 1) to their places. dmap is map on the device.
static void scatter_rows(const LayerOps *o, void *rows, const void *src, int per_choice, const int *map,
                         const int *dmap, int N, int K, int D) {
#ifdef MOELAB_CUDA
    if (o->dev == CORE_CUDA) {
        moe_cuda_permute(o->dt, rows, src, per_choice, dmap, N, K, D);
        return;
    }
#endif
    (void)dmap;
    const size_t bytes = (size_t)D * o->act_size;
    for (long i = 0; i < (long)N * K; i++)
        memcpy((char *)rows + (size_t)map[i] * bytes,
               (const char *)src + (size_t)(per_choice ? i : i / K) * bytes, bytes);
}

// dst[i] ← rows[map[i]] for the n entries of map: the inverse move of scatter_rows (per choice).
static void gather_rows(const LayerOps *o, void *dst, const void *rows, const int *map, const int *dmap,
                        int n, int D) {
#ifdef MOELAB_CUDA
    if (o->dev == CORE_CUDA) {
        moe_cuda_unpermute(o->dt, dst, rows, dmap, n, 1, D);
        return;
    }
#endif
    (void)dmap;
    const size_t bytes = (size_t)D * o->act_size;
    for (long i = 0; i < n; i++)
        memcpy((char *)dst + (size_t)i * bytes, (const char *)rows + (size_t)map[i] * bytes, bytes);
}

static void ep_to_experts(MoeDispatcher *self, MoeDispatchPlan *p, const float *src, int per_choice,
                          float *rows, int D) {
    const LayerOps *o = ops_of(self);
    void *send = rows_alloc(o, p->n_send, D);  // (n_send, D) in send order
    scatter_rows(o, send, src, per_choice, p->send_pos, p->d_send_pos, p->N, p->K, D);
    void *recv = rows_alloc(o, p->n_recv, D);  // (n_recv, D) in arrival order
    exchange(self, send, p->send_rows, recv, p->recv_rows, D);
    scatter_rows(o, rows, recv, 1, p->recv_to_row, p->d_recv_to_row, p->n_recv, 1, D);
    o->free(send);
    o->free(recv);
}

static void ep_from_experts(MoeDispatcher *self, MoeDispatchPlan *p, const float *rows, float *dst,
                            int D) {
    const LayerOps *o = ops_of(self);
    void *back = rows_alloc(o, p->n_recv, D);  // (n_recv, D) expert rows in arrival order
    gather_rows(o, back, rows, p->recv_to_row, p->d_recv_to_row, p->n_recv, D);
    void *home = rows_alloc(o, p->n_send, D);  // (n_send, D) in send order
    exchange(self, back, p->recv_rows, home, p->send_rows, D);
    gather_rows(o, dst, home, p->send_pos, p->d_send_pos, p->n_send, D);
    o->free(back);
    o->free(home);
}

static void ep_release(MoeDispatcher *self, MoeDispatchPlan *p) {
    if (!p) return;
    ops_of(self)->free(p->d_send_pos);
    ops_of(self)->free(p->d_recv_to_row);
    core_free(p->send_pos);
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

void ep_dispatcher_to_device(MoeDispatcher *d, Comm *ep_dev, const LayerOps *ops) {
    CHECK(d->plan == ep_plan, "ep_dispatcher_to_device: not an expert-parallel dispatcher");
    EpDispatcher *x = impl_of(d);
    CHECK(ep_dev->size == x->ep->size && ep_dev->rank == x->ep->rank,
          "ep_dispatcher_to_device: group %s (rank %d of %d) is not the twin of %s (rank %d of %d)",
          ep_dev->name, ep_dev->rank, ep_dev->size, x->ep->name, x->ep->rank, x->ep->size);
    CHECK(ops->dev != CORE_CPU, "ep_dispatcher_to_device: %s is not a device backend", ops->name);
    x->ep_dev = ep_dev;
    d->ops = ops;
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
