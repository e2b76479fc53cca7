// AdamW on the GPU (see adamw_cuda.h): the same arithmetic as
// framework/optimizer.c (bias corrections divided in double), so the CPU and GPU steps agree to
// the last bits up to fused multiply-adds (the kernel fixes its own: see adamw_kernel).
#include "layers/adamw_cuda.h"

#include <math.h>

// A thread per W consecutive parameters: 16-byte loads and stores of p, g, m and v where n and the
// buffers allow (W = 4), one element otherwise. The step is memory-bound (30 bytes a parameter with
// a bf16 copy): one float per access reached 87 % of the device-to-device copy's bandwidth.
template <typename L, int W>
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, long n, float lr,
                             float b1, float b2, float eps, float decay, double bc1, double bc2,
                             float gscale, L *p_low) {
    long j = ((long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (j >= n) return;
    float pj[W], gj[W], mj[W], vj[W];
    core_ld_vec<W>(pj, p + j);
    core_ld_vec<W>(gj, g + j);
    core_ld_vec<W>(mj, m + j);
    core_ld_vec<W>(vj, v + j);
    // Every rounding spelled out: left to the compiler, the unrolled W = 4 body and the W = 1 body
    // contracted v's update into different fused multiply-adds, and a tensor stepped from a
    // misaligned start (a ZeRO-1 shard) took other bits than the same tensor stepped whole.
#pragma unroll
    for (int i = 0; i < W; i++) {
        float gi = __fmul_rn(gj[i], gscale);
        mj[i] = __fmaf_rn(b1, mj[i], __fmul_rn(1.0f - b1, gi));
        vj[i] = __fmaf_rn(b2, vj[i], __fmul_rn(__fmul_rn(1.0f - b2, gi), gi));
        float mhat = (float)(mj[i] / bc1), vhat = (float)(vj[i] / bc2);
        float upd = __fdiv_rn(__fmul_rn(lr, mhat), __fadd_rn(__fsqrt_rn(vhat), eps));
        pj[i] = __fsub_rn(__fmul_rn(pj[i], decay), upd);
    }
    core_st_vec<W>(m + j, mj);
    core_st_vec<W>(v + j, vj);
    core_st_vec<W>(p + j, pj);
    if (p_low) core_st_vec<W>(p_low + j, pj);
}

template <typename L>
static void step(float *p, const float *g, float *m, float *v, long n, const AdamwHyper *h,
                 float decay, void *p_low) {
    double bc1 = 1.0 - pow(h->beta1, (double)h->t), bc2 = 1.0 - pow(h->beta2, (double)h->t);
    const void *ptrs[] = {p, g, m, v};
    const int W = 4;
    if (core_vec_ok(W, sizeof(float), n, ptrs, 4) && (size_t)p_low % (W * sizeof(L)) == 0)
        adamw_kernel<L, W><<<core_blocks(n / W, 256), 256, 0, core_stream()>>>(
            p, g, m, v, n, h->lr, h->beta1, h->beta2, h->eps, decay, bc1, bc2, h->gscale, (L *)p_low);
    else
        adamw_kernel<L, 1><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
            p, g, m, v, n, h->lr, h->beta1, h->beta2, h->eps, decay, bc1, bc2, h->gscale, (L *)p_low);
    CUDA_CHECK_LAUNCH();
}

void adamw_cuda_step(float *p, const float *g, float *m, float *v, long n, const AdamwHyper *h,
                     int decay, void *p_low, CoreDtype low_dt) {
    CHECK(n >= 0 && h->t >= 1, "adamw: bad element count %ld or step %ld", n, h->t);
    if (n == 0) return;
    float d = decay ? 1.0f - h->lr * h->weight_decay : 1.0f;
    CORE_DTYPE_CALL(low_dt, step, p, g, m, v, n, h, d, p_low);
}

#define SQ_THREADS 256
#define SQ_BLOCKS 1024  // at most; the partial sums are added in block order

// part (gridDim.x) = Σ g² over the elements i ≡ this block's threads (mod the grid's size).
__global__ void sqsum_partial_kernel(double *part, const float *g, long n) {
    double s = 0.0;
    for (long i = (long)blockIdx.x * SQ_THREADS + threadIdx.x; i < n;
         i += (long)gridDim.x * SQ_THREADS)
        s += (double)g[i] * g[i];
    s = core_block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// *sum += Σ part (nparts) in a fixed order, in one block (one thread took 28 µs per call: 4 ms
// of a bench step).
__global__ void sqsum_final_kernel(double *sum, const double *part, int nparts) {
    double s = 0.0;
    for (int b = threadIdx.x; b < nparts; b += SQ_THREADS) s += part[b];
    s = core_block_sum(s);
    if (threadIdx.x == 0) *sum += s;
}

void adamw_cuda_sqsum(double *sum, const float *g, long n) {
    CHECK(n >= 0, "adamw_cuda_sqsum: bad element count %ld", n);
    if (n == 0) return;
    long want = (n + SQ_THREADS - 1) / SQ_THREADS;
    int blocks = want < SQ_BLOCKS ? (int)want : SQ_BLOCKS;
    double *part;  // (blocks) the partial sums
    CUDA_CHECK(cudaMallocAsync((void **)&part, blocks * sizeof(double), core_stream()));
    sqsum_partial_kernel<<<blocks, SQ_THREADS, 0, core_stream()>>>(part, g, n);
    CUDA_CHECK_LAUNCH();
    sqsum_final_kernel<<<1, SQ_THREADS, 0, core_stream()>>>(sum, part, blocks);
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
