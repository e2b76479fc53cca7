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
void dp_sync_finish(DpSync *s);
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
