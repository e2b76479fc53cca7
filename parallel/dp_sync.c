// Data-parallel gradient sync (see dp_sync.h): the gradients of each group are visited as one
// stream of floats, cut into buckets; each bucket is packed, all-reduced once, scaled and unpacked.
// The copies, the scaling and the sums of squares go through the grid's backend (layers/ops.h), so
// device gradients are synchronized over the grid's NCCL twins without leaving the GPU.
#include "parallel/dp_sync.h"

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/ops.h"

// The backend the gradients live on: the grid's device, or the CPU.
static const LayerOps *ops_of(const Grid *g) { return g->ops ? g->ops : &layer_ops_cpu; }

_Static_assert(sizeof(long) == 8, "dp_sync_sum_counts moves long counts as 64-bit integers");

// A piece of one tensor inside the current bucket.
typedef struct {
    float *g;
    size_t n;
} Piece;

// All-reduces the packed bucket, multiplies it by scale and writes every piece back.
static void flush(const LayerOps *o, Comm *c, float *bucket, size_t *fill, Piece *pieces, int *np,
                  float scale) {
    comm_allreduce(c, bucket, *fill, COMM_F32, COMM_SUM);
    o->grad_scale(bucket, (long)*fill, scale);
    const float *b = bucket;
    for (int p = 0; p < *np; p++) {
        o->copy(pieces[p].g, b, pieces[p].n * sizeof(float));
        b += pieces[p].n;
    }
    *fill = 0;
    *np = 0;
}

// Sums the tensors of one group (expert == 0 or 1) over c and multiplies them by scale, packing
// them in list order into buckets of cap floats (in o's memory).
static void sync_group(const LayerOps *o, Comm *c, const DpGrad *t, int n, int expert, float scale,
                       size_t cap) {
    // A model smaller than one bucket needs a bucket only as large as the model.
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if ((t[i].expert != 0) == expert) total += t[i].n;
    if (total == 0) return;
    if (total < cap) cap = total;
    float *bucket = o->alloc(cap * sizeof(float));                // (cap)
    Piece *pieces = core_alloc((size_t)(n + 1) * sizeof(Piece));  // at most one per tensor
    size_t fill = 0;
    int np = 0;
    for (int i = 0; i < n; i++) {
        if ((t[i].expert != 0) != expert) continue;
        for (size_t done = 0; done < t[i].n;) {
            const size_t k = t[i].n - done < cap - fill ? t[i].n - done : cap - fill;
            o->copy(bucket + fill, t[i].g + done, k * sizeof(float));
            pieces[np++] = (Piece){t[i].g + done, k};
            fill += k;
            done += k;
            if (fill == cap) flush(o, c, bucket, &fill, pieces, &np, scale);
        }
    }
    if (fill > 0) flush(o, c, bucket, &fill, pieces, &np, scale);
    o->free(bucket);
    core_free(pieces);
}

void dp_sync_grads(const Grid *g, const DpGrad *t, int n, size_t bucket_floats) {
    CHECK(bucket_floats > 0, "dp_sync: the bucket size must be positive");
    const float inv_dp = 1.0f / (float)g->dp;
    const int dev = g->ops != NULL;
    sync_group(ops_of(g), dev ? g->dp_dev : g->dp_comm, t, n, 0, inv_dp, bucket_floats);
    sync_group(ops_of(g), dev ? g->edp_dev : g->edp_comm, t, n, 1, inv_dp, bucket_floats);
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
