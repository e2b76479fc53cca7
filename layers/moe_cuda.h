// The MoE layer's data movement on the GPU: the local dispatcher's plan (a stable sort of the
// N·K (token, choice) pairs by expert, as moe_local_dispatch.c), the permute into contiguous
// per-expert rows and the un-permute back (the gate-weighted combine is the ops table's
// moe_combine, layers/ops.h). Row data is of dtype dt; idx, row_of and counts are device ints.
#ifndef MOELAB_LAYERS_MOE_CUDA_H
#define MOELAB_LAYERS_MOE_CUDA_H

#include "framework/core/cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

// counts (E) = pairs routed to each expert; row_of (N, K) = the expert-side row of each pair, rows
// ordered by expert, then token, then choice. idx (N, K) is checked against [0, E) first (a
// synchronizing check).
// The most experts (or EPLB slots) a plan takes (its counts in 48 KiB of shared memory).
int moe_cuda_max_experts(void);
void moe_cuda_plan(int *row_of, int *counts, const int *idx, int N, int K, int E);
// The same without the check's host round trip: ids outside [0, E) are left out of counts, so a
// caller that downloads counts anyway checks Σ counts = N·K there (and calls
// core_cuda_check_indices for the message when it fails). Their pairs' row_of is 0: the moves and
// GEMMs queued before that check stay inside the buffers, and what they compute is thrown away
// when the check ends the job.
void moe_cuda_plan_unchecked(int *row_of, int *counts, const int *idx, int N, int K, int E);
// rows (N·K, D) ← home rows. per_choice = 0: src is (N, D), each pair's row is its token's;
// per_choice = 1: src is (N, K, D), one row per pair.
void moe_cuda_permute(CoreDtype dt, void *rows, const void *src, int per_choice,
                      const int *row_of, int N, int K, int D);
// dst (N, K, D) ← rows (N·K, D): each pair gets its expert-side row back.
void moe_cuda_unpermute(CoreDtype dt, void *dst, const void *rows, const int *row_of, int N,
                        int K, int D);
// The expert-parallel dispatcher's plan (parallel/ep_dispatch.c) without leaving the GPU: pair r of
// the n routed pairs idx (n) goes to physical slot log2phy[e·maxcnt + (j + me) mod logcnt[e]]
// (e = idx[r], j = its rank among e's pairs in pair order; log2phy (E, maxcnt), logcnt (E)), and
// send_pos (n) numbers the pairs by slot, then pair order (a stable sort), with counts (R) per slot.
// scratch holds 2·n + E ints. Ids outside [0, E) are counted in no slot: the counts then sum to
// less than n, which the caller checks once they are on the host (no synchronizing check here).
void moe_cuda_ep_plan(int *send_pos, int *counts, int *scratch, const int *idx, long n, int E,
                      const int *log2phy, const int *logcnt, int maxcnt, int me, int R);

// The expert-parallel receive permute's map: rows arrive from an all-to-all-v packed by source rank
// in B blocks (block b = j·n_local + s: source j's rows for local slot s, at arrival offsets
// table[b], ascending), and recv_pos (n) gives arrival row a its row among the expert rows:
// table[B + b] + a - table[b] for the last block b with table[b] <= a (empty blocks share the next
// block's offset and never match). table (2, B) is device ints. moe_cuda_permute (per_choice = 1,
// K = 1) then groups the rows by slot, and moe_cuda_unpermute brings them back to arrival order.
void moe_cuda_ep_recv_pos(int *recv_pos, const int *table, int B, long n);

#ifdef __cplusplus
}
#endif
#endif
