// The MoE layer's data movement on the GPU (see moe_cuda.h). The plan is a stable counting sort
// of the (token, choice) pairs by expert in three launches, deterministic without atomics on row
// positions: the pairs are cut into tiles of PLAN_TILE, (1) each tile counts its pairs per expert,
// (2) one block turns the (expert, tile) counts, expert-major, into each tile's first row of each
// expert (an exclusive prefix sum), (3) each tile numbers its pairs from those first rows in pair
// order. That is exactly the order of the CPU's counting sort (expert, then pair).
#include "layers/moe_cuda.h"

#include <limits.h>
#include <stdint.h>

#include <cub/block/block_load.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/block/block_store.cuh>

// One warp per tile: tiles of 256 pairs keep a few hundred blocks in flight at the bench shapes
// (98,304 pairs) and leave each warp eight steps. The previous plan, a block per expert walking
// all pairs, took 0.10 ms there for 64 experts (kernel_bench), its 64 blocks on 64 of 132 SMs.
#define PLAN_TILE 256
#define PLAN_SCAN_THREADS 512
#define PLAN_SCAN_ITEMS 16

// tile_counts (E, T): the pairs of tile t routed to each expert (ids outside [0, E) count nowhere).
__global__ void moe_plan_count_kernel(int *tile_counts, const int *idx, long n, int E, int T) {
    extern __shared__ int hist[];  // (E)
    for (int e = threadIdx.x; e < E; e += 32) hist[e] = 0;
    __syncwarp();
    const long r0 = (long)blockIdx.x * PLAN_TILE;
    for (long r = r0 + threadIdx.x; r < n && r < r0 + PLAN_TILE; r += 32) {
        int e = idx[r];
        if (e >= 0 && e < E) atomicAdd(&hist[e], 1);  // integer adds: the same count in any order
    }
    __syncwarp();
    for (int e = threadIdx.x; e < E; e += 32) tile_counts[(long)e * T + blockIdx.x] = hist[e];
}

// One block: base (M = E·T, in place of the counts) ← the exclusive prefix sum of the counts in
// expert-major order, and counts (E) the per-expert sums. The block walks M in chunks of
// PLAN_SCAN_THREADS · PLAN_SCAN_ITEMS entries, each loaded and stored coalesced (through shared
// memory) and scanned with the running total of the chunks before as its prefix. (Each thread
// summing a contiguous run straight from global memory took 33.5 µs at the bench shapes, 24 576
// entries: a dependent walk of uncoalesced loads, 0.5 % of a bench step's GPU time.)
struct PlanPrefix {  // the block's running total; CUB calls it from the first warp, once per chunk
    int total;
    __device__ int operator()(int chunk) {
        const int before = total;
        total += chunk;
        return before;
    }
};
__global__ void __launch_bounds__(PLAN_SCAN_THREADS) moe_plan_scan_kernel(int *base, int *counts, int E, int T) {
    using Load = cub::BlockLoad<int, PLAN_SCAN_THREADS, PLAN_SCAN_ITEMS, cub::BLOCK_LOAD_WARP_TRANSPOSE>;
    using Store = cub::BlockStore<int, PLAN_SCAN_THREADS, PLAN_SCAN_ITEMS, cub::BLOCK_STORE_WARP_TRANSPOSE>;
    using Scan = cub::BlockScan<int, PLAN_SCAN_THREADS>;
    __shared__ union {
        typename Load::TempStorage load;
        typename Store::TempStorage store;
        typename Scan::TempStorage scan;
    } tmp;
    __shared__ int total;
    const long M = (long)E * T, chunk = (long)PLAN_SCAN_THREADS * PLAN_SCAN_ITEMS;
    PlanPrefix prefix = {0};
    for (long at = 0; at < M; at += chunk) {
        const int valid = (int)(M - at < chunk ? M - at : chunk);
        int v[PLAN_SCAN_ITEMS];
        Load(tmp.load).Load(base + at, v, valid, 0);
        __syncthreads();
        Scan(tmp.scan).ExclusiveSum(v, v, prefix);
        __syncthreads();
        Store(tmp.store).Store(base + at, v, valid);
        __syncthreads();
    }
    if (threadIdx.x == 0) total = prefix.total;
    __syncthreads();  // every base written (global writes are visible within the block after it)
    for (int e = threadIdx.x; e < E; e += PLAN_SCAN_THREADS)
        counts[e] = (e + 1 < E ? base[(long)(e + 1) * T] : total) - base[(long)e * T];
}

// One warp per tile: row_of of each pair = the tile's next free row of its expert, taken in pair
// order. The lanes of a step that share an expert (__match_any_sync) number themselves by lane
// below the step's leader, which reads and advances that expert's next row.
__global__ void moe_plan_rank_kernel(int *row_of, const int *base, const int *idx, long n, int E, int T) {
    extern __shared__ int next[];  // (E)
    const int lane = threadIdx.x;
    for (int e = lane; e < E; e += 32) next[e] = base[(long)e * T + blockIdx.x];
    __syncwarp();
    const long r0 = (long)blockIdx.x * PLAN_TILE;
    for (long r = r0 + lane; r < r0 + PLAN_TILE; r += 32) {
        const int e = r < n ? idx[r] : -1;
        const bool valid = r < n && e >= 0 && e < E;
        const unsigned peers = __match_any_sync(0xffffffffu, valid ? e : -1);
        const int leader = __ffs(peers) - 1;
        const int first = __shfl_sync(0xffffffffu, valid ? next[e] : 0, leader);
        if (valid) row_of[r] = first + __popc(peers & ((1u << lane) - 1));
        else if (r < n) row_of[r] = 0;  // a bad id's pair: a row that exists (moe_cuda.h)
        __syncwarp();
        if (valid && lane == leader) next[e] = first + __popc(peers);
        __syncwarp();
    }
}

int moe_cuda_max_experts(void) { return 48 * 1024 / (int)sizeof(int); }  // the plan's counts in shared memory

// The three launches of the plan (row_of (n), counts (E)), with the (E, T) table in stream-ordered
// scratch.
static void plan(int *row_of, int *counts, const int *idx, long n, int E) {
    if (n == 0) {
        CUDA_CHECK(cudaMemsetAsync(counts, 0, (size_t)E * sizeof(int), core_stream()));
        return;
    }
    const int T = (int)((n + PLAN_TILE - 1) / PLAN_TILE);
    const size_t smem = (size_t)E * sizeof(int);
    CHECK(E <= moe_cuda_max_experts(), "moe: %d experts (or slots) exceed the plan's shared memory", E);
    int *table = NULL;  // (E, T)
    CUDA_CHECK(cudaMallocAsync((void **)&table, (size_t)E * T * sizeof(int), core_stream()));
    moe_plan_count_kernel<<<T, 32, smem, core_stream()>>>(table, idx, n, E, T);
    CUDA_CHECK_LAUNCH();
    moe_plan_scan_kernel<<<1, PLAN_SCAN_THREADS, 0, core_stream()>>>(table, counts, E, T);
    CUDA_CHECK_LAUNCH();
    moe_plan_rank_kernel<<<T, 32, smem, core_stream()>>>(row_of, table, idx, n, E, T);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaFreeAsync(table, core_stream()));
}

// The rows a pair's move reads and writes: scatter = 1 moves rows[row_of[pair]] ← the pair's src
// row (its token's, or its own with per_choice), scatter = 0 moves dst[pair] ← rows[row_of[pair]].
__device__ __forceinline__ void moe_pair_rows(long pair, int scatter, int per_choice, const int *row_of,
                                              int K, long *from, long *to) {
    *from = scatter ? (per_choice ? pair : pair / K) : row_of[pair];
    *to = scatter ? row_of[pair] : pair;
}

// Block per pair, its threads striding over the row in words of type V (16 bytes where the rows
// and buffers allow, else 4, else one element). Whole rows per block keep every access coalesced
// and need no per-element index arithmetic.
template <typename V>
__global__ void moe_rows_kernel(V *dst, const V *src, int scatter, int per_choice, const int *row_of,
                                int K, long words) {
    long from, to;
    moe_pair_rows(blockIdx.x, scatter, per_choice, row_of, K, &from, &to);
    const V *s = src + from * words;
    V *d = dst + to * words;
    for (long i = threadIdx.x; i < words; i += blockDim.x) d[i] = s[i];
}

// Rows of fewer words than a warp (the MoE layer's row dots are one 4-byte word): a thread per
// (pair, word) of the n pairs, so that the blocks are not mostly idle threads.
template <typename V>
__global__ void moe_narrow_rows_kernel(V *dst, const V *src, int scatter, int per_choice, const int *row_of,
                                       int K, long words, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * words) return;
    long from, to;
    moe_pair_rows(i / words, scatter, per_choice, row_of, K, &from, &to);
    dst[to * words + i % words] = src[from * words + i % words];
}

template <typename V>
static void move_rows_as(void *dst, const void *src, int scatter, int per_choice, const int *row_of,
                         long n_pairs, int K, long words) {
    if (words < 32)
        moe_narrow_rows_kernel<V><<<core_blocks(n_pairs * words, 256), 256, 0, core_stream()>>>(
            (V *)dst, (const V *)src, scatter, per_choice, row_of, K, words, n_pairs);
    else
        moe_rows_kernel<V><<<(unsigned)n_pairs, 128, 0, core_stream()>>>((V *)dst, (const V *)src, scatter,
                                                                         per_choice, row_of, K, words);
}

// The widest word dividing the row bytes and both buffers' alignment.
static void move_rows(void *dst, const void *src, int scatter, int per_choice, const int *row_of,
                      long n_pairs, int K, size_t row_bytes) {
    const size_t align = (size_t)dst | (size_t)src | row_bytes;
    if (align % 16 == 0)
        move_rows_as<uint4>(dst, src, scatter, per_choice, row_of, n_pairs, K, (long)(row_bytes / 16));
    else if (align % 4 == 0)
        move_rows_as<uint32_t>(dst, src, scatter, per_choice, row_of, n_pairs, K, (long)(row_bytes / 4));
    else
        move_rows_as<uint16_t>(dst, src, scatter, per_choice, row_of, n_pairs, K, (long)(row_bytes / 2));
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
    plan(row_of, counts, idx, (long)N * K, E);
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
    plan(row_e, counts_e, idx, n, E);
    moe_ep_slot_kernel<<<core_blocks(n, 256), 256, (size_t)E * sizeof(int), core_stream()>>>(
        slot, idx, row_e, counts_e, log2phy, logcnt, maxcnt, me, n, E);
    CUDA_CHECK_LAUNCH();
    plan(send_pos, counts, slot, n, R);
}

void moe_cuda_ep_recv_pos(int *recv_pos, const int *table, int B, long n) {
    CHECK(B >= 1 && n >= 0 && n <= INT_MAX, "moe: bad EP receive map: %d blocks, %ld rows", B, n);
    if (n == 0) return;
    moe_ep_recv_pos_kernel<<<core_blocks(n, 256), 256, 0, core_stream()>>>(recv_pos, table, B, n);
    CUDA_CHECK_LAUNCH();
}
