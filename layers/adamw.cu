// AdamW on the GPU (see adamw_cuda.h): the same arithmetic as
// framework/optimizer.c (bias corrections divided in double), so the CPU and GPU steps agree to
// the last bits up to fused multiply-adds (the kernel fixes its own: see adamw_kernel).
#include "layers/adamw_cuda.h"

#include <math.h>
#include <string.h>

#include <vector>

// The spans of one launch, passed by value (under the 4 KB a kernel's parameters may take): each
// span's place in the buffers and its first block, so that a block finds its span by a binary
// search over block0 (every thread of a block searches the same index: a broadcast from the
// constant bank) and the blocks of one span all take the same path.
#define ADAMW_SPANS_PER_LAUNCH 96
struct SpanTable {
    long p_at[ADAMW_SPANS_PER_LAUNCH], g_at[ADAMW_SPANS_PER_LAUNCH], n[ADAMW_SPANS_PER_LAUNCH];
    int block0[ADAMW_SPANS_PER_LAUNCH + 1];  // block0[count] = the grid
    unsigned char vec[ADAMW_SPANS_PER_LAUNCH];  // 16-byte accesses apply (W = 4)
    unsigned char decay[ADAMW_SPANS_PER_LAUNCH];
    int count;
};

// The span of this block: the last one whose first block is at or below it (an empty span's range
// is empty, so the search passes over it).
__device__ __forceinline__ int span_of_block(const SpanTable &t) {
    int lo = 0, hi = t.count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (t.block0[mid] <= (int)blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

struct AdamwArgs {
    float lr, b1, b2, eps, decay, gscale;  // decay: 1 − lr·wd, for the spans with decay set
    double bc1, bc2;
};

// W consecutive parameters at p, g, m, v (and p_low), updated in registers.
template <typename L, int W>
__device__ __forceinline__ void update(float *p, const float *g, float *m, float *v, L *p_low, float decay,
                                       const AdamwArgs &a) {
    float pj[W], gj[W], mj[W], vj[W];
    core_ld_vec<W>(pj, p);
    core_ld_vec<W>(gj, g);
    core_ld_vec<W>(mj, m);
    core_ld_vec<W>(vj, v);
    // Every rounding spelled out: left to the compiler, the unrolled W = 4 body and the W = 1 body
    // contracted v's update into different fused multiply-adds, and a tensor stepped from a
    // misaligned start (a ZeRO-1 shard) took other bits than the same tensor stepped whole.
#pragma unroll
    for (int i = 0; i < W; i++) {
        float gi = __fmul_rn(gj[i], a.gscale);
        mj[i] = __fmaf_rn(a.b1, mj[i], __fmul_rn(1.0f - a.b1, gi));
        vj[i] = __fmaf_rn(a.b2, vj[i], __fmul_rn(__fmul_rn(1.0f - a.b2, gi), gi));
        float mhat = (float)(mj[i] / a.bc1), vhat = (float)(vj[i] / a.bc2);
        float upd = __fdiv_rn(__fmul_rn(a.lr, mhat), __fadd_rn(__fsqrt_rn(vhat), a.eps));
        pj[i] = __fsub_rn(__fmul_rn(pj[i], decay), upd);
    }
    core_st_vec<W>(m, mj);
    core_st_vec<W>(v, vj);
    core_st_vec<W>(p, pj);
    if (p_low) core_st_vec<W>(p_low, pj);
}

// A thread per 4 consecutive parameters of a span where its buffers allow 16-byte accesses (the
// step is memory-bound, 30 bytes a parameter with a bf16 copy: one float per access reached 87 %
// of the device-to-device copy's bandwidth), per parameter otherwise.
template <typename L>
__global__ void adamw_kernel(const __grid_constant__ SpanTable t, float *p, const float *g, float *m, float *v,
                             L *p_low, AdamwArgs a) {
    const int s = span_of_block(t);
    const long i = (long)(blockIdx.x - t.block0[s]) * blockDim.x + threadIdx.x;
    const long pa = t.p_at[s], ga = t.g_at[s];
    const float decay = t.decay[s] ? a.decay : 1.0f;
    L *low = p_low ? p_low + pa : nullptr;
    if (t.vec[s]) {
        const long j = 4 * i;
        if (j < t.n[s]) update<L, 4>(p + ga + j, g + ga + j, m + ga + j, v + ga + j, low ? low + j : nullptr, decay, a);
    } else if (i < t.n[s]) {
        update<L, 1>(p + ga + i, g + ga + i, m + ga + i, v + ga + i, low ? low + i : nullptr, decay, a);
    }
}

#define ADAMW_THREADS 256

// Fills t with the spans s (ns ≤ ADAMW_SPANS_PER_LAUNCH): their places, whether each takes 16-byte
// accesses, and its blocks of `threads` threads, each thread taking `per_thread` elements (4 in a
// 16-byte span); returns the grid.
static int span_table(SpanTable *t, const AdamwSpan *s, int ns, int per_thread_vec, long per_block, float *p,
                      const float *g, const float *m, const float *v, const void *p_low, size_t low_size) {
    memset(t, 0, sizeof *t);
    t->count = ns;
    long blocks = 0;
    for (int i = 0; i < ns; i++) {
        CHECK(s[i].n >= 0 && s[i].p_at >= 0 && s[i].g_at >= 0, "adamw: bad span %d (at %ld/%ld, %ld elements)", i,
              s[i].p_at, s[i].g_at, s[i].n);
        const void *ptrs[] = {p ? p + s[i].g_at : nullptr, g + s[i].g_at, m ? m + s[i].g_at : nullptr,
                              v ? v + s[i].g_at : nullptr};
        const int W = 4;
        t->vec[i] = per_thread_vec > 1 && core_vec_ok(W, sizeof(float), s[i].n, ptrs, 4) &&
                    (!p_low || ((size_t)p_low + (size_t)s[i].p_at * low_size) % (W * low_size) == 0);
        t->p_at[i] = s[i].p_at, t->g_at[i] = s[i].g_at, t->n[i] = s[i].n;
        t->decay[i] = s[i].decay != 0;
        t->block0[i] = (int)blocks;
        const long per = t->vec[i] ? per_block * W : per_block;
        blocks += (s[i].n + per - 1) / per;
        CHECK(blocks < (1L << 31), "adamw: %ld blocks in one launch", blocks);
    }
    t->block0[ns] = (int)blocks;
    return (int)blocks;
}

template <typename L>
static void step(float *p, const float *g, float *m, float *v, void *p_low, const AdamwSpan *s, int ns,
                 const AdamwHyper *h) {
    AdamwArgs a = {h->lr, h->beta1, h->beta2, h->eps, 1.0f - h->lr * h->weight_decay, h->gscale,
                   1.0 - pow(h->beta1, (double)h->t), 1.0 - pow(h->beta2, (double)h->t)};
    for (int k = 0; k < ns; k += ADAMW_SPANS_PER_LAUNCH) {
        const int n = ns - k < ADAMW_SPANS_PER_LAUNCH ? ns - k : ADAMW_SPANS_PER_LAUNCH;
        SpanTable t;
        const int blocks = span_table(&t, s + k, n, 4, ADAMW_THREADS, p, g, m, v, p_low, sizeof(L));
        if (!blocks) continue;
        adamw_kernel<L><<<blocks, ADAMW_THREADS, 0, core_stream()>>>(t, p, g, m, v, (L *)p_low, a);
        CUDA_CHECK_LAUNCH();
    }
}

void adamw_cuda_step(float *p, const float *g, float *m, float *v, void *p_low, CoreDtype low_dt,
                     const AdamwSpan *s, int ns, const AdamwHyper *h) {
    CHECK(ns >= 0 && h->t >= 1, "adamw: bad span count %d or step %ld", ns, h->t);
    CORE_DTYPE_CALL(low_dt, step, p, g, m, v, p_low, s, ns, h);
}

#define SQ_THREADS 256
#define SQ_PER_THREAD 64  // elements a thread adds: a block covers 16 384 of one span

// part (the launch's blocks) = Σ g² over this block's elements of its span: thread i adds elements
// i, i + 256, ... of the block's range in order, and the block sums its threads in a fixed tree.
__global__ void sqsum_partial_kernel(double *part, const __grid_constant__ SpanTable t, const float *g) {
    const int s = span_of_block(t);
    const long b0 = (long)(blockIdx.x - t.block0[s]) * SQ_THREADS * SQ_PER_THREAD;
    const long end = b0 + SQ_THREADS * SQ_PER_THREAD < t.n[s] ? b0 + SQ_THREADS * SQ_PER_THREAD : t.n[s];
    const float *x = g + t.g_at[s];
    double sum = 0.0;
    for (long i = b0 + threadIdx.x; i < end; i += SQ_THREADS) sum += (double)x[i] * x[i];
    sum = core_block_sum(sum);
    if (threadIdx.x == 0) part[blockIdx.x] = sum;
}

// *sum += Σ part (nparts) in a fixed order, in one block of SQ_FINAL_THREADS (one thread took 28
// µs per tensor: 4 ms of a bench step).
#define SQ_FINAL_THREADS 1024
__global__ void sqsum_final_kernel(double *sum, const double *part, long nparts) {
    double s = 0.0;
    for (long b = threadIdx.x; b < nparts; b += SQ_FINAL_THREADS) s += part[b];
    s = core_block_sum(s);
    if (threadIdx.x == 0) *sum += s;
}

void adamw_cuda_sqsum(double *sum, const float *g, const AdamwSpan *s, int ns) {
    CHECK(ns >= 0, "adamw_cuda_sqsum: bad span count %d", ns);
    // Every launch's partial sums go into one array, in span order; one block then adds them all.
    std::vector<SpanTable> tables((ns + ADAMW_SPANS_PER_LAUNCH - 1) / ADAMW_SPANS_PER_LAUNCH);
    std::vector<int> grids(tables.size());
    long nparts = 0;
    for (size_t k = 0; k < tables.size(); k++) {
        const int at = (int)k * ADAMW_SPANS_PER_LAUNCH;
        const int n = ns - at < ADAMW_SPANS_PER_LAUNCH ? ns - at : ADAMW_SPANS_PER_LAUNCH;
        grids[k] = span_table(&tables[k], s + at, n, 1, SQ_THREADS * SQ_PER_THREAD, nullptr, g, nullptr, nullptr,
                              nullptr, sizeof(float));
        nparts += grids[k];
    }
    if (!nparts) return;
    double *part;  // (nparts)
    CUDA_CHECK(cudaMallocAsync((void **)&part, nparts * sizeof(double), core_stream()));
    long at = 0;
    for (size_t k = 0; k < tables.size(); k++) {
        if (!grids[k]) continue;
        sqsum_partial_kernel<<<grids[k], SQ_THREADS, 0, core_stream()>>>(part + at, tables[k], g);
        CUDA_CHECK_LAUNCH();
        at += grids[k];
    }
    sqsum_final_kernel<<<1, SQ_FINAL_THREADS, 0, core_stream()>>>(sum, part, nparts);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaFreeAsync(part, core_stream()));
}

__global__ void scale_kernel(float *g, long n, float s) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) g[i] *= s;
}

void adamw_cuda_scale(float *g, long n, float s) {
    CHECK(n >= 0, "adamw_cuda_scale: bad element count %ld", n);
    if (n == 0) return;
    scale_kernel<<<core_blocks(n, 256), 256, 0, core_stream()>>>(g, n, s);
    CUDA_CHECK_LAUNCH();
}
