// The MoE layer's data movement on the GPU (see moe_cuda.h). The plan is deterministic without
// atomics on row positions: one block per expert walks all pairs in (token, choice) order and
// numbers the ones routed to it with a block-wide prefix count, which is exactly the stable order
// of the CPU's counting sort.
#include "layers/moe_cuda.h"

#include <limits.h>
#include <stdint.h>

// A block walks all pairs in steps of PLAN_THREADS with two barriers a step, so the step count
// bounds the kernel: 1024 threads take a quarter of the steps of 256 (0.25 ms at the bench shapes
// with 256 threads, kernel_bench).
#define PLAN_THREADS 1024

// Block e: counts[e] and the rows of expert e's pairs. The expert's first row is the sum of the
// counts of the experts before it, which this block counts itself (E·N·K flag tests in all: cheap
// next to the expert GEMMs, and no second launch or device-wide sync).
__global__ void moe_plan_kernel(int *row_of, int *counts, const int *idx, long n, int E) {
    __shared__ int warp_tot[PLAN_THREADS / 32], total_before;
    int e = blockIdx.x, lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int mine_before = 0;
    for (long r = threadIdx.x; r < n; r += PLAN_THREADS) mine_before += idx[r] < e;
    if (threadIdx.x == 0) total_before = 0;
    __syncthreads();
    atomicAdd(&total_before, mine_before);  // integer adds: the same total in any order
    __syncthreads();
    int before = total_before, next = before;  // next: the next free row of expert e
    for (long base = 0; base < n; base += PLAN_THREADS) {
        long r = base + threadIdx.x;
        bool mine = r < n && idx[r] == e;
        unsigned ballot = __ballot_sync(0xffffffffu, mine);
        __syncthreads();  // warp_tot of the previous chunk has been read
        if (lane == 0) warp_tot[w] = __popc(ballot);
        __syncthreads();
        int off = next;
        for (int j = 0; j < w; j++) off += warp_tot[j];
        if (mine) row_of[r] = off + __popc(ballot & ((1u << lane) - 1));
        for (int j = 0; j < PLAN_THREADS / 32; j++) next += warp_tot[j];
    }
    if (threadIdx.x == 0) counts[e] = next - before;
}

// Block per pair, its threads striding over the row in words of type V (16 bytes where the rows
// and buffers allow, else 4, else one element): scatter = 1 moves rows[row_of[pair]] ← the pair's
// src row (its token's, or its own with per_choice), scatter = 0 moves dst[pair] ← rows[row_of[pair]].
// Whole rows per block keep every access coalesced and need no per-element index arithmetic.
template <typename V>
__global__ void moe_rows_kernel(V *dst, const V *src, int scatter, int per_choice, const int *row_of,
                                int K, long words) {
    long pair = blockIdx.x;
    long from = scatter ? (per_choice ? pair : pair / K) : row_of[pair];
    long to = scatter ? row_of[pair] : pair;
    const V *s = src + from * words;
    V *d = dst + to * words;
    for (long i = threadIdx.x; i < words; i += blockDim.x) d[i] = s[i];
}

// The widest word dividing the row bytes and both buffers' alignment.
static void move_rows(void *dst, const void *src, int scatter, int per_choice, const int *row_of,
                      long n_pairs, int K, size_t row_bytes) {
    const size_t align = (size_t)dst | (size_t)src | row_bytes;
    const unsigned grid = (unsigned)n_pairs;
    if (align % 16 == 0)
        moe_rows_kernel<uint4><<<grid, 128, 0, core_stream()>>>((uint4 *)dst, (const uint4 *)src, scatter,
                                                                 per_choice, row_of, K, row_bytes / 16);
    else if (align % 4 == 0)
        moe_rows_kernel<uint32_t><<<grid, 128, 0, core_stream()>>>(
            (uint32_t *)dst, (const uint32_t *)src, scatter, per_choice, row_of, K, row_bytes / 4);
    else
        moe_rows_kernel<uint16_t><<<grid, 128, 0, core_stream()>>>(
            (uint16_t *)dst, (const uint16_t *)src, scatter, per_choice, row_of, K, row_bytes / 2);
    CUDA_CHECK_LAUNCH();
}

// Thread per pair: the EP slot of pair r routed to expert e = idx[r], replica (j + me) mod logcnt[e]
// of e where j = row_e[r] - (first row of e) numbers e's pairs in pair order (row_e, counts_e: the
// plan by expert). An id outside [0, E) gets slot -1 (no slot counts it: the host sees the sum short).
__global__ void moe_ep_slot_kernel(int *slot, const int *idx, const int *row_e, const int *counts_e,
                                   const int *log2phy, const int *logcnt, int maxcnt, int me, long n,
                                   int E) {
    extern __shared__ int first[];  // (E) first row of each expert
    if (threadIdx.x == 0) {
        int acc = 0;
        for (int e = 0; e < E; e++) {
            first[e] = acc;
            acc += counts_e[e];
        }
    }
    __syncthreads();
    long r = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    int e = idx[r];
    if (e < 0 || e >= E) {
        slot[r] = -1;
        return;
    }
    int j = row_e[r] - first[e];
    slot[r] = log2phy[(long)e * maxcnt + (j + me) % logcnt[e]];
}

// Thread per arrival row a: a binary search over the B arrival offsets (table[0..B), ascending) for
// the last block starting at or before a, then its offset among the expert rows.
__global__ void moe_ep_recv_pos_kernel(int *recv_pos, const int *table, int B, long n) {
    long a = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n) return;
    int lo = 0, hi = B - 1;  // table[lo] <= a always (table[0] = 0)
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (table[mid] <= a) lo = mid;
        else hi = mid - 1;
    }
    recv_pos[a] = table[B + lo] + (int)(a - table[lo]);
}

static void moe_check(int N, int K, int D) {
    CHECK(N >= 0 && K >= 1 && D >= 1, "moe: bad shape N=%d K=%d D=%d", N, K, D);
}

void moe_cuda_plan_unchecked(int *row_of, int *counts, const int *idx, int N, int K, int E) {
    moe_check(N, K, 1);
    CHECK(E >= 1, "moe: need at least one expert, got E = %d", E);
    CHECK((long)N * K <= INT_MAX, "moe: %ld routed pairs overflow an int row index", (long)N * K);
    moe_plan_kernel<<<E, PLAN_THREADS, 0, core_stream()>>>(row_of, counts, idx, (long)N * K, E);
    CUDA_CHECK_LAUNCH();
}

// The plan kernel never writes outside its outputs whatever the ids, so the check may follow it.
void moe_cuda_plan(int *row_of, int *counts, const int *idx, int N, int K, int E) {
    moe_cuda_plan_unchecked(row_of, counts, idx, N, K, E);
    core_cuda_check_indices(idx, (long)N * K, E, "moe: expert id");
}

void moe_cuda_permute(CoreDtype dt, void *rows, const void *src, int per_choice,
                      const int *row_of, int N, int K, int D) {
    moe_check(N, K, D);
    if (N == 0) return;
    move_rows(rows, src, 1, per_choice, row_of, (long)N * K, K, (size_t)D * core_dtype_size(dt));
}

void moe_cuda_unpermute(CoreDtype dt, void *dst, const void *rows, const int *row_of, int N,
                        int K, int D) {
    moe_check(N, K, D);
    if (N == 0) return;
    move_rows(dst, rows, 0, 0, row_of, (long)N * K, K, (size_t)D * core_dtype_size(dt));
}

void moe_cuda_ep_plan(int *send_pos, int *counts, int *scratch, const int *idx, long n, int E,
                      const int *log2phy, const int *logcnt, int maxcnt, int me, int R) {
    CHECK(n >= 0 && n <= INT_MAX, "moe: %ld routed pairs overflow an int row index", n);
    CHECK(E >= 1 && R >= E && maxcnt >= 1, "moe: bad EP placement E = %d, R = %d", E, R);
    int *row_e = scratch, *counts_e = scratch + n, *slot = scratch + n + E;
    moe_plan_kernel<<<E, PLAN_THREADS, 0, core_stream()>>>(row_e, counts_e, idx, n, E);
    CUDA_CHECK_LAUNCH();
    moe_ep_slot_kernel<<<core_blocks(n, 256), 256, (size_t)E * sizeof(int), core_stream()>>>(
        slot, idx, row_e, counts_e, log2phy, logcnt, maxcnt, me, n, E);
    CUDA_CHECK_LAUNCH();
    moe_plan_kernel<<<R, PLAN_THREADS, 0, core_stream()>>>(send_pos, counts, slot, n, R);
    CUDA_CHECK_LAUNCH();
}

void moe_cuda_ep_recv_pos(int *recv_pos, const int *table, int B, long n) {
    CHECK(B >= 1 && n >= 0 && n <= INT_MAX, "moe: bad EP receive map: %d blocks, %ld rows", B, n);
    if (n == 0) return;
    moe_ep_recv_pos_kernel<<<core_blocks(n, 256), 256, 0, core_stream()>>>(recv_pos, table, B, n);
    CUDA_CHECK_LAUNCH();
}
