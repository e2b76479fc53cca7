// Data-parallel gradient sync (see dp_sync.h): the gradients of each group are visited as one
// stream of floats, cut into buckets; each bucket is packed, all-reduced once, scaled and unpacked.
// The buckets are fixed by the list alone, whatever the order they start in, so every element is
// summed in one all-reduce of the same size and place with or without the overlap.
// The copies, the scaling and the sums of squares go through the grid's backend (layers/ops.h), so
// device gradients are synchronized over the grid's NCCL twins without leaving the GPU.
#include "parallel/dp_sync.h"

#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/ops.h"

// The backend the gradients live on: the grid's device, or the CPU.
static const LayerOps *ops_of(const Grid *g) { return g->ops ? g->ops : &layer_ops_cpu; }

_Static_assert(sizeof(long) == 8, "dp_sync_sum_counts moves long counts as 64-bit integers");

// A piece of one tensor inside a bucket.
typedef struct {
    int tensor;     // index into the list
    size_t start;   // first float of the tensor in the piece
    size_t n;
} Piece;

// One all-reduce: pieces packed in list order, over the dense or the expert group.
typedef struct {
    Comm *c;
    Piece *pieces;
    int np;
    size_t fill;       // floats
    float *buf;        // (fill) packed, in the backend's memory, while in flight
    CommRequest *req;  // NULL until started
} Bucket;

struct DpSync {
    const LayerOps *o;
    float scale;
    DpGrad *t;        // (n) the list (copied)
    int n;
    int *ready;       // (n) dp_sync_ready seen
    Bucket *b;        // (nb) dense buckets, then expert buckets, each group in list order
    int nb;
    int *order;       // (nb) started buckets in start order
    int n_started;
};

// Cuts group `expert` of the list into buckets of at most cap floats (a model smaller than one
// bucket needs only one, as large as the model) and appends them to s->b.
static void plan_group(DpSync *s, Comm *c, int expert, size_t cap) {
    size_t total = 0;
    for (int i = 0; i < s->n; i++)
        if ((s->t[i].expert != 0) == expert) total += s->t[i].n;
    if (total == 0) return;
    if (total < cap) cap = total;
    Bucket *cur = NULL;
    for (int i = 0; i < s->n; i++) {
        if ((s->t[i].expert != 0) != expert) continue;
        for (size_t done = 0; done < s->t[i].n;) {
            if (!cur || cur->fill == cap) {
                cur = &s->b[s->nb++];
                cur->c = c;
                cur->pieces = core_alloc((size_t)(s->n + 1) * sizeof(Piece));
            }
            const size_t k = s->t[i].n - done < cap - cur->fill ? s->t[i].n - done : cap - cur->fill;
            cur->pieces[cur->np++] = (Piece){i, done, k};
            cur->fill += k;
            done += k;
        }
    }
}

DpSync *dp_sync_start(const Grid *g, const DpGrad *t, int n, size_t bucket_floats) {
    CHECK(bucket_floats > 0, "dp_sync: the bucket size must be positive");
    DpSync *s = core_alloc(sizeof *s);
    s->o = ops_of(g);
    s->scale = 1.0f / (float)g->dp;
    s->n = n;
    s->t = core_alloc((size_t)(n > 0 ? n : 1) * sizeof(DpGrad));
    memcpy(s->t, t, (size_t)n * sizeof(DpGrad));
    s->ready = core_alloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    // At most one bucket per tensor plus one per bucket_floats of the whole list, per group.
    size_t all = 0;
    for (int i = 0; i < n; i++) all += t[i].n;
    const size_t max_b = (size_t)n + all / bucket_floats + 2;
    s->b = core_alloc(max_b * sizeof(Bucket));
    s->order = core_alloc(max_b * sizeof(int));
    const int dev = g->ops != NULL;
    plan_group(s, dev ? g->dp_dev : g->dp_comm, 0, bucket_floats);
    plan_group(s, dev ? g->edp_dev : g->edp_comm, 1, bucket_floats);
    return s;
}

// Packs bucket i and starts its all-reduce.
static void start(DpSync *s, int i) {
    Bucket *b = &s->b[i];
    b->buf = s->o->alloc(b->fill * sizeof(float));
    float *at = b->buf;
    for (int p = 0; p < b->np; p++) {
        const Piece *q = &b->pieces[p];
        s->o->copy(at, s->t[q->tensor].g + q->start, q->n * sizeof(float));
        at += q->n;
    }
    b->req = comm_iallreduce(b->c, b->buf, b->fill, COMM_F32, COMM_SUM);
    s->order[s->n_started++] = i;
}

// Completes bucket i's all-reduce, scales the sums and writes every piece back.
static void complete(DpSync *s, int i) {
    Bucket *b = &s->b[i];
    comm_wait(b->req);
    s->o->grad_scale(b->buf, (long)b->fill, s->scale);
    const float *at = b->buf;
    for (int p = 0; p < b->np; p++) {
        const Piece *q = &b->pieces[p];
        s->o->copy(s->t[q->tensor].g + q->start, at, q->n * sizeof(float));
        at += q->n;
    }
    s->o->free(b->buf);
}

void dp_sync_ready(DpSync *s, int tensor) {
    CHECK(tensor >= 0 && tensor < s->n, "dp_sync_ready: tensor %d outside [0, %d)", tensor, s->n);
    s->ready[tensor] = 1;
    for (int i = 0; i < s->nb; i++) {
        if (s->b[i].req) continue;
        int all = 1;
        for (int p = 0; p < s->b[i].np && all; p++) all = s->ready[s->b[i].pieces[p].tensor];
        if (all) start(s, i);
    }
}

void dp_sync_finish(DpSync *s) {
    for (int k = 0; k < s->n_started; k++) complete(s, s->order[k]);
    // The rest one at a time, so that a sync without overlap holds one bucket.
    for (int i = 0; i < s->nb; i++) {
        if (s->b[i].req) continue;
        start(s, i);
        complete(s, i);
    }
    for (int i = 0; i < s->nb; i++) core_free(s->b[i].pieces);
    core_free(s->b);
    core_free(s->order);
    core_free(s->ready);
    core_free(s->t);
    core_free(s);
}

void dp_sync_grads(const Grid *g, const DpGrad *t, int n, size_t bucket_floats) {
    dp_sync_finish(dp_sync_start(g, t, n, bucket_floats));
}

double dp_sync_grad_sqsum(const Grid *g, const DpGrad *t, int n) {
    // One double per tensor in the backend's memory, downloaded at once (not one wait per tensor).
    const LayerOps *o = ops_of(g);
    double sq[2] = {0, 0};  // dense, expert
    double *d = o->alloc((size_t)n * sizeof(double)), *s = core_alloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) o->grad_sqsum(d + i, t[i].g, (long)t[i].n);
    o->download(s, d, (size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) sq[t[i].expert != 0] += s[i];
    o->free(d);
    core_free(s);
    comm_allreduce(g->ep_comm, &sq[1], 1, COMM_F64, COMM_SUM);
    double total = sq[0] + sq[1];
    comm_allreduce(g->pp_comm, &total, 1, COMM_F64, COMM_SUM);
    return total;
}

void dp_sync_sum_counts(const Grid *g, long *counts, size_t n) {
    comm_allreduce(g->dp_comm, counts, n, COMM_I64, COMM_SUM);
}

void dp_sync_mean(const Grid *g, double *x, size_t n) {
    comm_allreduce(g->dp_comm, x, n, COMM_F64, COMM_SUM);
    for (size_t i = 0; i < n; i++) x[i] /= g->dp;
}
