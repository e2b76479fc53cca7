// The MoE layer's data movement on the GPU (see moe_cuda.h). The plan is deterministic without
// atomics on row positions: one block per expert walks all pairs in (token, choice) order and
// numbers the ones routed to it with a block-wide prefix count, which is exactly the stable order
// of the CPU's counting sort.
#include "layers/moe_cuda.h"

#include <limits.h>

#define PLAN_THREADS 256

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

// Thread per element of the N·K·D pair rows: rows[row_of[pair]] ← src row of the pair (forward),
// or dst[pair] ← rows[row_of[pair]] (backward = un-permute).
template <typename T>
__global__ void moe_permute_kernel(T *rows, const T *src, int per_choice, const int *row_of,
                                   long n_pairs, int K, int D) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_pairs * D) return;
    long pair = i / D;
    int d = (int)(i % D);
    long home = per_choice ? pair : pair / K;
    rows[(size_t)row_of[pair] * D + d] = src[home * D + d];
}

template <typename T>
__global__ void moe_unpermute_kernel(T *dst, const T *rows, const int *row_of, long n_pairs,
                                     int D) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_pairs * D) return;
    long pair = i / D;
    dst[i] = rows[(size_t)row_of[pair] * D + i % D];
}

template <typename T>
__global__ void moe_combine_kernel(T *y, const T *rows, const float *gates, const int *row_of,
                                   int N, int K, int D) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * D) return;
    long t = i / D;
    int d = (int)(i % D);
    float s = 0.0f;
    for (int k = 0; k < K; k++)
        s += gates[t * K + k] * core_ld(rows + (size_t)row_of[t * K + k] * D + d);
    core_st(y + i, s);
}

template <typename T>
static void permute(void *rows, const void *src, int per_choice, const int *row_of, long n, int K,
                    int D) {
    moe_permute_kernel<T><<<core_blocks(n * D, 256), 256, 0, core_stream()>>>(
        (T *)rows, (const T *)src, per_choice, row_of, n, K, D);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void unpermute(void *dst, const void *rows, const int *row_of, long n, int D) {
    moe_unpermute_kernel<T><<<core_blocks(n * D, 256), 256, 0, core_stream()>>>(
        (T *)dst, (const T *)rows, row_of, n, D);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void combine(void *y, const void *rows, const float *gates, const int *row_of, int N, int K,
                    int D) {
    moe_combine_kernel<T><<<core_blocks((long)N * D, 256), 256, 0, core_stream()>>>(
        (T *)y, (const T *)rows, gates, row_of, N, K, D);
    CUDA_CHECK_LAUNCH();
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
    CORE_DTYPE_CALL(dt, permute, rows, src, per_choice, row_of, (long)N * K, K, D);
}

void moe_cuda_unpermute(CoreDtype dt, void *dst, const void *rows, const int *row_of, int N,
                        int K, int D) {
    moe_check(N, K, D);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, unpermute, dst, rows, row_of, (long)N * K, D);
}

void moe_cuda_combine(CoreDtype dt, void *y, const void *rows, const float *gates,
                      const int *row_of, int N, int K, int D) {
    moe_check(N, K, D);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, combine, y, rows, gates, row_of, N, K, D);
}
