// Expert-parallel dispatch and combine (see ep_dispatch.h). The plan: choose each pair's physical
// slot, count rows per (destination rank, local slot), exchange the counts (one small all-to-all),
// and order the send rows by destination slot (a stable sort, so one process reproduces the local
// dispatcher's order exactly): rows leave packed by destination rank, expert order inside each
// peer's block. The rows then travel in ONE exchange per direction (comm_ialltoallv: one
// MPI_Ialltoallv, or one NCCL group of one send and one receive per peer) and arrive packed by
// source rank; one permute pass groups them by (local slot, source rank), so each local expert owns
// one contiguous range. A combine runs the inverse permute, the exchange back, and one gather home.
// Where the arrival order is already the expert order (one EP rank, or one slot per rank) the rows
// land in place and there is no permute.
//
// The plan and the row moves are calls of the backend table (layers/ops.h: ep_plan, ep_recv_pos,
// scatter_rows, gather_rows), so the CPU tests run the same code as a GPU. On a GPU the plan stays
// on the device, and so does the count exchange (over the NCCL twin, like the rows); then the slot
// counts sent and received come to the host in one copy (NCCL's receives and the expert rows'
// allocation need them there), the peer counts and the receive permute's block table are host
// arithmetic, and the table goes back in one upload from which the table's ep_recv_pos makes the
// permute's row map.
#include "parallel/ep_dispatch.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/ops.h"

typedef struct {
    Comm *ep;        // the EP group (not owned): the counts and rows of a CPU dispatcher
    Comm *ep_dev;    // its NCCL twin for device counts and rows (not owned; ep_dispatcher_to_device),
                     // or NULL
    int E, R;        // logical experts; physical slots over the group (R / ep->size per rank)
    int maxcnt;      // most replicas of one expert
    int *phy2log;    // (R) logical expert of each slot
    int *logcnt;     // (E) replicas of each expert
    int *log2phy;    // (E, maxcnt) slots of each expert's replicas, ascending, -1 padded
    int *d_logcnt, *d_log2phy;  // copies of the two tables in the rows' memory (what ep_plan reads)
} EpDispatcher;

struct MoeDispatchPlan {
    int N, K;
    int n_send, n_recv;   // rows leaving this rank (N·K) and arriving at its experts
    int *send_pos;        // (N·K) send row of pair t·K + k, rows ordered by destination slot
    size_t *peer;         // (2, P) rows sent to each EP rank, rows received from each (rank order)
    // The receive permute: (n_recv) the expert row of each arrival row, or NULL where the rows
    // arrive in expert order. send_pos and recv_pos are in the rows' memory.
    int *recv_pos;
    // An exchange in flight (to_experts_start or from_experts_start until finish): its request,
    // its direction, its send buffer (a dispatch's, or the combine's arrival-order rows; NULL
    // where the combine sends the expert rows themselves), the buffer it lands in (arrival order,
    // NULL where a dispatch lands in place; a combine's send order), and where the rows go.
    CommRequest *req;
    int out;
    void *send, *arrival;
    void *dst;
    int D;
};

static EpDispatcher *impl_of(MoeDispatcher *d) { return (EpDispatcher *)d->impl; }
static const LayerOps *ops_of(const MoeDispatcher *d) { return d->ops ? d->ops : &layer_ops_cpu; }
// The group that moves buffers of the backend's memory: the NCCL twin for a GPU's.
static Comm *data_comm(MoeDispatcher *d) {
    return ops_of(d)->dev != CORE_CPU ? impl_of(d)->ep_dev : impl_of(d)->ep;
}

// The receive permute of a plan whose received counts are rcnt (P, Ln): block b = j·Ln + s arrives
// at offset Σ_{b' < b} rcnt[b'] (the exchange packs by source rank) and belongs at the expert rows of
// slot s after those of slots before s and of s from ranks before j. Nothing is kept where every
// non-empty block's two offsets agree. The (2, P·Ln) offset table goes to the rows' memory in one
// upload, where the table's ep_recv_pos turns it into recv_pos.
static void plan_receive_permute(MoeDispatcher *self, MoeDispatchPlan *p, const int *rcnt) {
    const int P = impl_of(self)->ep->size, Ln = self->n_local, B = P * Ln;
    int *blk = core_alloc((size_t)2 * B * sizeof(int));  // (2, B): arrival offset, expert offset
    int *aoff = blk, *eoff = blk + B;
    int at = 0;
    for (int b = 0; b < B; b++) {
        aoff[b] = at;
        at += rcnt[b];
    }
    at = 0;
    int direct = 1;
    for (int s = 0; s < Ln; s++)
        for (int j = 0; j < P; j++) {
            const int b = j * Ln + s;
            eoff[b] = at;
            at += rcnt[b];
            if (rcnt[b] > 0 && eoff[b] != aoff[b]) direct = 0;
        }
    if (!direct) {
        const LayerOps *o = ops_of(self);
        int *table = o->alloc((size_t)2 * B * sizeof(int));
        o->upload(table, blk, (size_t)2 * B * sizeof(int));
        p->recv_pos = o->alloc((size_t)(p->n_recv > 0 ? p->n_recv : 1) * sizeof(int));
        o->ep_recv_pos(p->recv_pos, table, B, p->n_recv);
        o->free(table);
    }
    core_free(blk);
}

static MoeDispatchPlan *ep_plan(MoeDispatcher *self, const int *idx, int N, int K, int *n_rows,
                                int *counts) {
    EpDispatcher *x = impl_of(self);
    const int P = x->ep->size, Ln = self->n_local, R = x->R;
    CHECK(N >= 0 && K >= 1, "ep dispatcher: bad routing shape N = %d, K = %d", N, K);
    const long n = (long)N * K;
    CHECK(n <= INT_MAX, "ep dispatcher: %ld routed rows overflow an int", n);
    const LayerOps *o = ops_of(self);
    MoeDispatchPlan *p = core_alloc(sizeof *p);
    p->N = N;
    p->K = K;
    p->n_send = (int)n;
    p->send_pos = o->alloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    // (2, P, Ln) rows sent and received per block (destination or source rank, local slot), in the
    // backend's memory: the counts are exchanged where the plan made them (one small all-to-all),
    // and both halves come to the host in the plan's one device → host copy.
    int *dcnt = o->alloc((size_t)2 * R * sizeof(int));
    o->ep_plan(p->send_pos, dcnt, idx, n, x->E, x->d_log2phy, x->d_logcnt, x->maxcnt, x->ep->rank, R);
    comm_alltoall(data_comm(self), dcnt, dcnt + R, (size_t)Ln, COMM_I32);
    int *cnt = core_alloc((size_t)2 * R * sizeof(int));
    o->download(cnt, dcnt, (size_t)2 * R * sizeof(int));
    o->free(dcnt);
    long sent = 0;
    for (int s = 0; s < R; s++) sent += cnt[s];
    CHECK(sent == n, "ep dispatcher: %ld of %ld routed pairs have an expert id outside [0, %d)", n - sent,
          n, x->E);

    // Rows per peer each way, and the rows each local slot receives.
    p->peer = core_alloc((size_t)2 * P * sizeof(size_t));
    memset(counts, 0, (size_t)Ln * sizeof(int));
    long total = 0;
    for (int j = 0; j < P; j++)
        for (int s = 0; s < Ln; s++) {
            p->peer[j] += (size_t)cnt[j * Ln + s];
            p->peer[P + j] += (size_t)cnt[R + j * Ln + s];
            counts[s] += cnt[R + j * Ln + s];
            total += cnt[R + j * Ln + s];
        }
    CHECK(total <= INT_MAX, "ep dispatcher: %ld rows arrive at this rank's experts", total);
    p->n_recv = (int)total;
    *n_rows = p->n_recv;
    plan_receive_permute(self, p, cnt + R);
    core_free(cnt);
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

// Starts the plan's one row exchange over the group the rows live on (the NCCL twin for device
// rows): home → experts when out (send order to arrival order), experts → home otherwise. The rows
// land in recv; ep_finish takes them on to dst.
static void exchange(MoeDispatcher *self, MoeDispatchPlan *p, int out, const void *send, void *recv, void *dst,
                     int D) {
    EpDispatcher *x = impl_of(self);
    Comm *c = data_comm(self);
    const size_t w = row_words(ops_of(self), D);
    const int P = x->ep->size;
    size_t *n = core_alloc((size_t)2 * P * sizeof(size_t));  // (2, P) the plan's peer counts in words
    for (int i = 0; i < 2 * P; i++) n[i] = p->peer[i] * w;
    p->req = out ? comm_ialltoallv(c, send, n, recv, n + P, COMM_F32)
                 : comm_ialltoallv(c, send, n + P, recv, n, COMM_F32);
    core_free(n);
    p->out = out;
    p->dst = dst;
    p->D = D;
}

static int in_place(const MoeDispatchPlan *p) { return !p->recv_pos; }

// A send or arrival buffer of n rows: uninitialized, since every row is written before any is read
// (a send buffer by its gather or permute, whose map covers each row once; an arrival buffer by the
// exchange, whose counts sum to its rows). The fill was up to four full-size writes per dispatch and
// combine on a GPU (review, 2026-12-06).
static void *rows_alloc(const LayerOps *o, int n, int D) {
    return o->alloc_uninit((size_t)(n > 0 ? n : 1) * (size_t)D * o->act_size);
}

static void ep_to_experts_start(MoeDispatcher *self, MoeDispatchPlan *p, const void *src,
                                int per_choice, void *rows, int D) {
    CHECK(p->req == NULL, "ep dispatcher: an exchange of this plan is already in flight");
    const LayerOps *o = ops_of(self);
    p->send = rows_alloc(o, p->n_send, D);  // (n_send, D) in send order
    o->scatter_rows(p->send, src, per_choice, p->send_pos, p->N, p->K, D);
    p->arrival = in_place(p) ? NULL : rows_alloc(o, p->n_recv, D);  // (n_recv, D) in arrival order
    exchange(self, p, 1, p->send, p->arrival ? p->arrival : rows, rows, D);
}

static void ep_from_experts_start(MoeDispatcher *self, MoeDispatchPlan *p, const void *rows, void *dst,
                                  int D) {
    CHECK(p->req == NULL, "ep dispatcher: an exchange of this plan is already in flight");
    const LayerOps *o = ops_of(self);
    p->send = in_place(p) ? NULL : rows_alloc(o, p->n_recv, D);  // (n_recv, D) in arrival order
    // The receive permute backwards: expert order to arrival order, one pass through recv_pos.
    if (p->send) o->gather_rows(p->send, rows, p->recv_pos, p->n_recv, D);
    p->arrival = rows_alloc(o, p->n_send, D);  // (n_send, D) home, in send order
    exchange(self, p, 0, p->send ? p->send : rows, p->arrival, dst, D);
}

// Completes the exchange in flight: a dispatch's rows go from arrival order to expert order, a
// combine's from send order to (token, choice) order.
static void ep_finish(MoeDispatcher *self, MoeDispatchPlan *p) {
    if (!p->req) return;
    comm_wait(p->req);
    const LayerOps *o = ops_of(self);
    const int D = p->D;
    if (p->out && p->arrival) {
        o->scatter_rows(p->dst, p->arrival, 1, p->recv_pos, p->n_recv, 1, D);  // the receive permute
    } else if (!p->out) {
        o->gather_rows(p->dst, p->arrival, p->send_pos, p->n_send, D);
    }
    if (p->arrival) o->free(p->arrival);
    if (p->send) o->free(p->send);
    p->req = NULL;
    p->send = p->arrival = NULL;
    p->dst = NULL;
}

static void ep_to_experts(MoeDispatcher *self, MoeDispatchPlan *p, const void *src, int per_choice,
                          void *rows, int D) {
    ep_to_experts_start(self, p, src, per_choice, rows, D);
    ep_finish(self, p);
}

static void ep_from_experts(MoeDispatcher *self, MoeDispatchPlan *p, const void *rows, void *dst,
                            int D) {
    ep_from_experts_start(self, p, rows, dst, D);
    ep_finish(self, p);
}

static void ep_release(MoeDispatcher *self, MoeDispatchPlan *p) {
    if (!p) return;
    ep_finish(self, p);
    ops_of(self)->free(p->send_pos);
    if (p->recv_pos) ops_of(self)->free(p->recv_pos);
    core_free(p->peer);
    core_free(p);
}

// The placement tables the plan reads, copied to the rows' memory; and freeing those copies.
static void placement_upload(MoeDispatcher *d) {
    EpDispatcher *x = impl_of(d);
    const LayerOps *ops = ops_of(d);
    const size_t lb = (size_t)x->E * sizeof(int), pb = lb * (size_t)x->maxcnt;
    x->d_logcnt = ops->alloc(lb);
    x->d_log2phy = ops->alloc(pb);
    ops->upload(x->d_logcnt, x->logcnt, lb);
    ops->upload(x->d_log2phy, x->log2phy, pb);
}

static void placement_copies_free(MoeDispatcher *d) {
    EpDispatcher *x = impl_of(d);
    if (!x->d_logcnt) return;
    ops_of(d)->free(x->d_logcnt);
    ops_of(d)->free(x->d_log2phy);
    x->d_logcnt = x->d_log2phy = NULL;
}

static void placement_free(MoeDispatcher *d) {
    EpDispatcher *x = impl_of(d);
    core_free(x->phy2log);
    core_free(x->logcnt);
    core_free(x->log2phy);
    placement_copies_free(d);
}

static void ep_destroy(MoeDispatcher *self) {
    EpDispatcher *x = impl_of(self);
    placement_free(self);
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
    placement_free(d);
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
    placement_upload(d);
    d->n_local = R / P;
}

void ep_dispatcher_to_device(MoeDispatcher *d, Comm *ep_dev, const LayerOps *ops) {
    CHECK(d->plan == ep_plan, "ep_dispatcher_to_device: not an expert-parallel dispatcher");
    EpDispatcher *x = impl_of(d);
    CHECK(ep_dev->size == x->ep->size && ep_dev->rank == x->ep->rank,
          "ep_dispatcher_to_device: group %s (rank %d of %d) is not the twin of %s (rank %d of %d)",
          ep_dev->name, ep_dev->rank, ep_dev->size, x->ep->name, x->ep->rank, x->ep->size);
    CHECK(ops->dev != CORE_CPU, "ep_dispatcher_to_device: %s is not a device backend", ops->name);
    CHECK(d->ops == NULL, "ep_dispatcher_to_device: the dispatcher is on a device already");
    placement_copies_free(d);  // the host's
    x->ep_dev = ep_dev;
    d->ops = ops;
    placement_upload(d);
}

// Without the three hooks the MoE layer exchanges with to_experts and from_experts, which wait for
// the transfer.
void ep_dispatcher_set_overlap(MoeDispatcher *d, int on) {
    CHECK(d->plan == ep_plan, "ep_dispatcher_set_overlap: not an EP dispatcher");
    d->to_experts_start = on ? ep_to_experts_start : NULL;
    d->from_experts_start = on ? ep_from_experts_start : NULL;
    d->finish = on ? ep_finish : NULL;
}

void ep_dispatcher_set_chunks(MoeDispatcher *d, int chunks) {
    CHECK(d->plan == ep_plan, "ep_dispatcher_set_chunks: not an EP dispatcher");
    CHECK(chunks >= 1 && chunks <= EP_CHUNKS_MAX, "ep dispatcher: %d token chunks, need 1..%d", chunks,
          EP_CHUNKS_MAX);
    d->chunks = chunks;
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
    ep_dispatcher_set_overlap(d, 1);
    d->from_experts = ep_from_experts;
    d->row_map = NULL;  // rows travel between ranks: the layer combines them once home
    d->release = ep_release;
    d->destroy = ep_destroy;
    int *identity = core_alloc((size_t)E * sizeof(int));  // (E) slot p holds expert p
    for (int s = 0; s < E; s++) identity[s] = s;
    ep_dispatcher_set_placement(d, identity, E);
    core_free(identity);
    return d;
}
