// Data-parallel gradient sync (docs/architecture.md §4): averaging of dense gradients over DP and of
// expert gradients over expert-DP, bucketed (tensors packed into fixed-size buckets, one all-reduce
// per bucket); the global gradient norm; and the global sums the engine needs (expert counts for the
// bias update, losses for logging).
//
// The rule both groups follow: the step's objective is the mean of the DP ranks' objectives, so
// every gradient is (sum of the contributions of all DP ranks) / DP. A dense tensor's contributions
// sit on the DP ranks; an expert's sit on its EP rank of every EP group (the all-to-all already
// summed the contributions of that group's tokens), so expert gradients are summed over expert-DP
// and divided by DP, not by the expert-DP size.
#ifndef MOELAB_PARALLEL_DP_SYNC_H
#define MOELAB_PARALLEL_DP_SYNC_H

#include <stddef.h>

#include "layers/ops.h"
#include "parallel/grid.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DP_SYNC_BUCKET_FLOATS ((size_t)1 << 22)  // 16 MB buckets by default

// One gradient tensor to synchronize (the engine lists its trained parameters).
typedef struct {
    float *g;      // (n) the gradient, synchronized in place; device memory after grid_to_device
    size_t n;
    int expert;    // 0: replicated over DP (dense); 1: an expert slice, replicated over expert-DP
} DpGrad;

// Averages the gradients as above, in buckets of at most bucket_floats floats (> 0); a tensor larger
// than a bucket spans several. Collective over the grid's dp and edp communicators.
void dp_sync_grads(const Grid *g, const DpGrad *t, int n, size_t bucket_floats);
// The same sync overlapped with the backward pass: dp_sync_start fixes the buckets (exactly
// dp_sync_grads' buckets, so the results are bit-identical) and copies the list; dp_sync_ready says
// tensor i's gradient is final, which starts the all-reduce of every bucket whose tensors are all
// final (comm_iallreduce); dp_sync_finish starts the rest and completes everything (collective).
// Every rank must report the tensors in the same order (the backward's order is).
typedef struct DpSync DpSync;
DpSync *dp_sync_start(const Grid *g, const DpGrad *t, int n, size_t bucket_floats);
void dp_sync_ready(DpSync *s, int tensor);
void dp_sync_finish(DpSync *s);  // dp_sync_complete, then dp_sync_free

// ZeRO-1 (docs/parallel.md): the same buckets, reduce-scattered instead of all-reduced, so that each
// rank of a bucket's group (dp for dense tensors, edp for experts) receives one chunk of its average.
// A bucket of f floats is padded with zeros to P·c floats, c = ⌈f/P⌉ for a group of P ranks; rank r
// owns floats [r·c, min(f, (r+1)·c)) of its stream, at offset `at` of its shard, which holds its
// chunks of every bucket in bucket order (Σ c floats). The layout depends on the list, the bucket
// size and the group sizes alone. The sync lives across steps: dp_sync_ready as above during the
// backward, then dp_sync_complete each step. off (n): each tensor's element offset in the buffers
// that dp_sync_shard_allgather and dp_sync_shard_expand fill (the parameter registry's layout).
DpSync *dp_sync_shard_create(const Grid *g, const DpGrad *t, const size_t *off, int n, size_t bucket_floats);
// Starts what dp_sync_ready has not, completes every bucket (collective), and makes the sync ready
// for the next step. Sharded: the shard (dp_sync_shard_grads) holds the averages of this rank's chunks.
void dp_sync_complete(DpSync *s);
void dp_sync_free(DpSync *s);
// One piece of this rank's shard: floats [start, start + n) of tensor `tensor` at shard offset `at`.
typedef struct {
    int tensor;
    size_t start, n, at;
} DpShardPiece;
// This rank's pieces in shard order (*n of them); floats of the shard outside them are padding.
const DpShardPiece *dp_sync_shard_pieces(const DpSync *s, int *n);
size_t dp_sync_shard_floats(const DpSync *s);
float *dp_sync_shard_grads(DpSync *s);  // (shard floats) in the grid's backend memory
// Σ g² over the whole model from the shards of the n syncs s (one per model stage this rank owns)
// after dp_sync_complete: this rank's partial sum less `less` (its part of what the norm leaves out,
// dp_sync_shard_rows_sqsum), then one all-reduce over dp (every dense float and every expert float
// lies in exactly one shard of the DP ranks, since DP = EP · EDP) and one over the pipeline stages.
double dp_sync_shard_sqsum(const Grid *g, DpSync *const *s, int n, double less);
// Σ g² over the parts of the rows (n spans of the registry layout: g_at the first float, n the
// floats) that lie in this rank's shard, after dp_sync_complete; local. EPLB's duplicate slots.
double dp_sync_shard_rows_sqsum(const DpSync *s, const AdamwSpan *rows, int n);
// w (registry layout, elements of es bytes, moved as type t) ← every rank's shard of it: each rank
// sends its own pieces of w (collective; at most two buckets in flight).
void dp_sync_shard_allgather(DpSync *s, void *w, size_t es, CommType t);
// full (registry layout, fp32) ← the shards (shard layout, fp32) of every rank (collective).
void dp_sync_shard_expand(DpSync *s, const float *shard, float *full);
// shard ← this rank's pieces of full (registry layout); local.
void dp_sync_shard_take(const DpSync *s, const float *full, float *shard);

// Σ g² over the whole model after dp_sync_grads: dense tensors counted once (they are equal on every
// DP rank), expert slices summed over EP, everything summed over the pipeline stages.
double dp_sync_grad_sqsum(const Grid *g, const DpGrad *t, int n);
// counts (n) ← their sum over DP (per-expert token counts of the step, for the bias update).
void dp_sync_sum_counts(const Grid *g, long *counts, size_t n);
// x (n) ← the mean over DP (losses for logging).
void dp_sync_mean(const Grid *g, double *x, size_t n);

#ifdef __cplusplus
}
#endif
#endif
