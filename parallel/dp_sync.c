// Data-parallel gradient sync (see dp_sync.h): the gradients of each group are visited as one
// stream of floats, cut into buckets; each bucket is packed, all-reduced once, scaled and unpacked
// (ZeRO-1: packed, reduce-scattered into this rank's shard and scaled there; the weight and moment
// gathers run the other way, bucket by bucket); a bucket over a group of one rank only scales. The
// buckets are fixed by the list alone, whatever the order they start in, so every element is summed
// in one collective of the same size and place (or in none) with or without the overlap.
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
    size_t pos;     // first float of the piece in the bucket's stream
} Piece;

// One all-reduce (or reduce-scatter): pieces packed in list order, over the dense or the expert group.
typedef struct {
    Comm *c;
    Piece *pieces;
    int np;
    size_t fill;       // floats
    size_t chunk, at;  // sharded: floats per rank (fill padded to c->size · chunk), offset in the shard
    int sp0, nsp;      // sharded: this rank's shard pieces [sp0, sp0 + nsp)
    float *buf;        // (fill, or c->size · chunk) packed, in the backend's memory, while in flight
    void *send;        // a gather's packed chunk (weights), while in flight
    CommRequest *req;  // while in flight
    int started;       // this step
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
    // Sharded syncs only (shard != NULL).
    size_t *off;        // (n) tensors' element offsets in the registry layout
    float *shard;       // (shard_n) this rank's averaged gradient chunks, backend memory
    size_t shard_n;
    DpShardPiece *sp;   // (nsp) this rank's pieces, in shard order
    int nsp;
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
            cur->pieces[cur->np++] = (Piece){i, done, k, cur->fill};
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

DpSync *dp_sync_shard_create(const Grid *g, const DpGrad *t, const size_t *off, int n, size_t bucket_floats) {
    DpSync *s = dp_sync_start(g, t, n, bucket_floats);
    s->off = core_alloc((size_t)(n > 0 ? n : 1) * sizeof(size_t));
    memcpy(s->off, off, (size_t)n * sizeof(size_t));
    // This rank's chunk of each bucket, and the pieces of tensors it covers.
    int max_sp = 0;
    for (int i = 0; i < s->nb; i++) max_sp += s->b[i].np;
    s->sp = core_alloc((size_t)(max_sp > 0 ? max_sp : 1) * sizeof(DpShardPiece));
    for (int i = 0; i < s->nb; i++) {
        Bucket *b = &s->b[i];
        const size_t P = (size_t)b->c->size;
        b->chunk = (b->fill + P - 1) / P;
        b->at = s->shard_n;
        b->sp0 = s->nsp;
        const size_t lo = (size_t)b->c->rank * b->chunk;
        const size_t hi = lo + b->chunk < b->fill ? lo + b->chunk : b->fill;
        for (int p = 0; p < b->np; p++) {
            const Piece *q = &b->pieces[p];
            const size_t a = q->pos > lo ? q->pos : lo, z = q->pos + q->n < hi ? q->pos + q->n : hi;
            if (a < z) s->sp[s->nsp++] = (DpShardPiece){q->tensor, q->start + (a - q->pos), z - a, b->at + (a - lo)};
        }
        b->nsp = s->nsp - b->sp0;
        s->shard_n += b->chunk;
    }
    s->shard = s->o->alloc((s->shard_n > 0 ? s->shard_n : 1) * sizeof(float));
    return s;
}

// A bucket over a group of one rank (the expert buckets where EP = DP) has nothing to sum: its
// gradients are scaled where they lie, or packed straight into the shard (chunk = fill), with no
// buffer and no collective; a collective of one rank would return the same bits after two copies
// of the bucket and a launch.
static int alone(const Bucket *b) { return b->c->size == 1; }

// Packs bucket i and starts its all-reduce (sharded: its reduce-scatter into the shard).
static void start(DpSync *s, int i) {
    Bucket *b = &s->b[i];
    b->started = 1;
    s->order[s->n_started++] = i;
    if (alone(b) && !s->shard) return;
    float *dst = s->shard ? s->shard + b->at : NULL;
    if (!alone(b)) {
        const size_t len = s->shard ? (size_t)b->c->size * b->chunk : b->fill;
        // The pieces fill [0, b->fill) back to back; the padding adds zeros to the last rank's chunk.
        dst = b->buf = s->o->alloc_uninit(len * sizeof(float));
        if (len > b->fill) s->o->zero(b->buf + b->fill, (len - b->fill) * sizeof(float));
    }
    for (int p = 0; p < b->np; p++) {
        const Piece *q = &b->pieces[p];
        s->o->copy(dst + q->pos, s->t[q->tensor].g + q->start, q->n * sizeof(float));
    }
    if (alone(b)) return;
    b->req = s->shard ? comm_ireduce_scatter(b->c, b->buf, s->shard + b->at, b->chunk, COMM_F32, COMM_SUM)
                      : comm_iallreduce(b->c, b->buf, b->fill, COMM_F32, COMM_SUM);
}

// Completes bucket i's collective and scales the sums: in the shard, or written back to every piece.
static void complete(DpSync *s, int i) {
    Bucket *b = &s->b[i];
    if (!alone(b)) comm_wait(b->req);
    b->req = NULL;
    if (s->shard) {
        s->o->grad_scale(s->shard + b->at, (long)b->chunk, s->scale);
    } else if (alone(b)) {
        for (int p = 0; p < b->np; p++) {
            const Piece *q = &b->pieces[p];
            s->o->grad_scale(s->t[q->tensor].g + q->start, (long)q->n, s->scale);
        }
    } else {
        s->o->grad_scale(b->buf, (long)b->fill, s->scale);
        for (int p = 0; p < b->np; p++) {
            const Piece *q = &b->pieces[p];
            s->o->copy(s->t[q->tensor].g + q->start, b->buf + q->pos, q->n * sizeof(float));
        }
    }
    s->o->free(b->buf);
    b->buf = NULL;
}

void dp_sync_ready(DpSync *s, int tensor) {
    CHECK(tensor >= 0 && tensor < s->n, "dp_sync_ready: tensor %d outside [0, %d)", tensor, s->n);
    s->ready[tensor] = 1;
    for (int i = 0; i < s->nb; i++) {
        if (s->b[i].started) continue;
        int all = 1;
        for (int p = 0; p < s->b[i].np && all; p++) all = s->ready[s->b[i].pieces[p].tensor];
        if (all) start(s, i);
    }
}

void dp_sync_complete(DpSync *s) {
    // The started buckets, then the rest one at a time, so that a sync without overlap holds one
    // bucket. A completed bucket has no buffer, so none starts twice.
    for (int k = 0; k < s->n_started; k++) complete(s, s->order[k]);
    for (int i = 0; i < s->nb; i++) {
        if (s->b[i].started) continue;
        start(s, i);
        complete(s, i);
    }
    for (int i = 0; i < s->nb; i++) s->b[i].started = 0;
    s->n_started = 0;
    memset(s->ready, 0, (size_t)(s->n > 0 ? s->n : 1) * sizeof(int));
}

void dp_sync_free(DpSync *s) {
    if (!s) return;
    for (int i = 0; i < s->nb; i++) core_free(s->b[i].pieces);
    if (s->shard) s->o->free(s->shard);
    core_free(s->sp);
    core_free(s->off);
    core_free(s->b);
    core_free(s->order);
    core_free(s->ready);
    core_free(s->t);
    core_free(s);
}

void dp_sync_finish(DpSync *s) {
    dp_sync_complete(s);
    dp_sync_free(s);
}

void dp_sync_grads(const Grid *g, const DpGrad *t, int n, size_t bucket_floats) {
    dp_sync_finish(dp_sync_start(g, t, n, bucket_floats));
}

const DpShardPiece *dp_sync_shard_pieces(const DpSync *s, int *n) {
    *n = s->nsp;
    return s->sp;
}

size_t dp_sync_shard_floats(const DpSync *s) { return s->shard_n; }

float *dp_sync_shard_grads(DpSync *s) { return s->shard; }

double dp_sync_shard_sqsum(const Grid *g, DpSync *const *s, int n, double less) {
    // The padding is zero (reduce-scatter of zeros), so each whole shard can be summed at once, into
    // one double of the backend's memory.
    const LayerOps *o = ops_of(g);
    double *d = o->alloc(sizeof(double)), sq = 0;
    o->zero(d, sizeof(double));
    for (int k = 0; k < n; k++)
        o->grad_sqsum(d, s[k]->shard, &(AdamwSpan){0, 0, (long)s[k]->shard_n, 0}, 1);
    o->download(&sq, d, sizeof sq);
    o->free(d);
    sq -= less;
    comm_allreduce(g->dp_comm, &sq, 1, COMM_F64, COMM_SUM);
    comm_allreduce(g->pp_comm, &sq, 1, COMM_F64, COMM_SUM);
    return sq;
}

// The spans of the shard (g_at in the shard) that hold floats of the rows (registry layout): out
// gets them when not NULL; returns their number.
static int rows_in_shard(const DpSync *s, const AdamwSpan *rows, int n, AdamwSpan *out) {
    int ns = 0;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < s->nsp; k++) {
            const DpShardPiece *q = &s->sp[k];
            const size_t p0 = s->off[q->tensor] + q->start, r0 = (size_t)rows[i].g_at;
            const size_t a = p0 > r0 ? p0 : r0;
            const size_t z = p0 + q->n < r0 + (size_t)rows[i].n ? p0 + q->n : r0 + (size_t)rows[i].n;
            if (a >= z) continue;
            if (out) out[ns] = (AdamwSpan){0, (long)(q->at + (a - p0)), (long)(z - a), 0};
            ns++;
        }
    return ns;
}

double dp_sync_shard_rows_sqsum(const DpSync *s, const AdamwSpan *rows, int n) {
    const int ns = rows_in_shard(s, rows, n, NULL);
    AdamwSpan *span = core_alloc((size_t)(ns > 0 ? ns : 1) * sizeof *span);
    rows_in_shard(s, rows, n, span);
    const double sq = ops_sqsum(s->o, s->shard, span, ns);
    core_free(span);
    return sq;
}

// Starts bucket i's all-gather into a new buffer (c->size · chunk elements of es bytes): this
// rank's chunk is shard + at (shard layout) or, without a shard, packed from its pieces of w.
static void gather_start(DpSync *s, int i, const void *shard, const void *w, size_t es, CommType t) {
    Bucket *b = &s->b[i];
    if (alone(b)) return;
    b->buf = s->o->alloc_uninit((size_t)b->c->size * b->chunk * es);  // the all-gather writes it all
    const void *send = shard ? (const char *)shard + b->at * es : NULL;
    if (!shard) {
        // Padding (the last rank's chunk past the bucket's end) travels as zeros and is never read.
        b->send = s->o->alloc(b->chunk * es);
        for (int k = b->sp0; k < b->sp0 + b->nsp; k++) {
            const DpShardPiece *q = &s->sp[k];
            s->o->copy((char *)b->send + (q->at - b->at) * es,
                       (const char *)w + (s->off[q->tensor] + q->start) * es, q->n * es);
        }
        send = b->send;
    }
    b->req = comm_iallgather(b->c, send, b->buf, b->chunk, t);
}

// Completes bucket i's all-gather and writes every piece of the bucket into w. Alone, this rank's
// chunk is the bucket: w holds it already, or it comes from the shard.
static void gather_complete(DpSync *s, int i, const void *shard, void *w, size_t es) {
    Bucket *b = &s->b[i];
    if (alone(b) && !shard) return;
    const char *from = alone(b) ? (const char *)shard + b->at * es : (const char *)b->buf;
    if (!alone(b)) comm_wait(b->req);
    b->req = NULL;
    for (int p = 0; p < b->np; p++) {
        const Piece *q = &b->pieces[p];
        s->o->copy((char *)w + (s->off[q->tensor] + q->start) * es, from + q->pos * es, q->n * es);
    }
    s->o->free(b->buf);
    if (b->send) s->o->free(b->send);
    b->buf = b->send = NULL;
}

// Both gathers: bucket i + 1's transfer runs while bucket i is unpacked.
static void gather(DpSync *s, const void *shard, void *w, size_t es, CommType t) {
    CHECK(s->shard, "dp_sync: a gather needs a sharded sync (dp_sync_shard_create)");
    if (s->nb > 0) gather_start(s, 0, shard, w, es, t);
    for (int i = 0; i < s->nb; i++) {
        if (i + 1 < s->nb) gather_start(s, i + 1, shard, w, es, t);
        gather_complete(s, i, shard, w, es);
    }
}

void dp_sync_shard_allgather(DpSync *s, void *w, size_t es, CommType t) { gather(s, NULL, w, es, t); }

void dp_sync_shard_expand(DpSync *s, const float *shard, float *full) {
    gather(s, shard, full, sizeof(float), COMM_F32);
}

void dp_sync_shard_take(const DpSync *s, const float *full, float *shard) {
    for (int k = 0; k < s->nsp; k++) {
        const DpShardPiece *q = &s->sp[k];
        s->o->copy(shard + q->at, full + s->off[q->tensor] + q->start, q->n * sizeof(float));
    }
}

double dp_sync_grad_sqsum(const Grid *g, const DpGrad *t, int n) {
    // One double per tensor in the backend's memory, downloaded at once (not one wait per tensor).
    const LayerOps *o = ops_of(g);
    double sq[2] = {0, 0};  // dense, expert
    double *d = o->alloc((size_t)n * sizeof(double)), *s = core_alloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) o->grad_sqsum(d + i, t[i].g, &(AdamwSpan){0, 0, (long)t[i].n, 0}, 1);
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
