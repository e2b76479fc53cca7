// RMSNorm on the GPU (see rmsnorm_cuda.h): one warp per row for the forward and the input
// gradient, with 16-byte loads where the shapes allow. The backward is one pass over the rows: a
// block takes a chunk of RMSNORM_CHUNK rows, writes their input gradient (residual included) and
// sums their gain gradient in shared memory into one row of partial sums; backward_weight adds
// the chunks' rows in a fixed order (bit-identical runs, no atomics).
#include "layers/rmsnorm_cuda.h"

#include "layers/rmsnorm.h"

#define ROWS_PER_BLOCK 8   // warps per block in the forward
#define BWD_WARPS 8        // warps per block (chunk) of the backward, fewer for a very wide D
#define SUM_LANES 32       // threads per column summing the chunks in backward_weight

static void rmsnorm_check(int N, int D) {
    CHECK(N >= 0 && D > 0, "rmsnorm: bad shape N=%d D=%d", N, D);
}

// Each lane reads W consecutive elements at a time: W = 16 bytes of T (8 bf16, 4 fp32) when the
// pointers and D allow, else 1. Lane j takes elements [j·W, j·W + W) of every 32·W.
template <typename T, int W>
__global__ void rmsnorm_forward_kernel(T *out, float *rstd, const T *inp, const T *gain, int N,
                                       int D, float eps) {
    int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const T *x = inp + (size_t)n * D;
    float ss = 0.0f;
    for (int d = lane * W; d < D; d += 32 * W) {
        float v[W];
        core_ld_vec<W>(v, x + d);
#pragma unroll
        for (int i = 0; i < W; i++) ss += v[i] * v[i];
    }
    float r = 1.0f / sqrtf(core_warp_sum(ss) / D + eps);
    T *y = out + (size_t)n * D;
    for (int d = lane * W; d < D; d += 32 * W) {
        float v[W], g[W];
        core_ld_vec<W>(v, x + d);
        core_ld_vec<W>(g, gain + d);
#pragma unroll
        for (int i = 0; i < W; i++) v[i] = v[i] * r * g[i];
        core_st_vec<W>(y + d, v);
    }
    if (lane == 0) rstd[n] = r;
}

// 16-byte accesses where they fit, else one element at a time.
template <typename T>
static void forward(void *out, float *rstd, const void *inp, const void *gain, int N, int D,
                    float eps) {
    constexpr int W = 16 / sizeof(T);
    const void *ptrs[] = {out, inp, gain};
    unsigned blocks = core_blocks(N, ROWS_PER_BLOCK);
    if (core_vec_ok(W, sizeof(T), D, ptrs, 3))
        rmsnorm_forward_kernel<T, W><<<blocks, ROWS_PER_BLOCK * 32, 0, core_stream()>>>(
            (T *)out, rstd, (const T *)inp, (const T *)gain, N, D, eps);
    else
        rmsnorm_forward_kernel<T, 1><<<blocks, ROWS_PER_BLOCK * 32, 0, core_stream()>>>(
            (T *)out, rstd, (const T *)inp, (const T *)gain, N, D, eps);
    CUDA_CHECK_LAUNCH();
}

void rmsnorm_cuda_forward(CoreDtype dt, void *out, float *rstd, const void *inp, const void *gain,
                          int N, int D, float eps) {
    rmsnorm_check(N, D);
    CHECK(eps > 0.0f, "rmsnorm: eps must be positive, got %g", (double)eps);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, forward, out, rstd, inp, gain, N, D, eps);
}

// The shared-memory place of column d in a warp's row of gain-gradient sums. Lane j adds W
// columns at a time, d = k·32·W + j·W + i; with W = 8 (bf16) the i-th four of every lane lie
// together, at k·32·W + (i / 4)·128 + j·4 + i % 4, so that each 16-byte shared access of the warp
// is contiguous (no bank conflicts). With W ≤ 4 it is d itself.
template <int W>
__device__ __forceinline__ int acc_slot(int d) {
    if (W <= 4) return d;
    const int r = d % (32 * W);
    return d - r + (r % W) / 4 * 128 + r / W * 4 + r % 4;
}

// row[acc_slot(d + i)] += v[i] for the W columns of a lane, d = its first.
template <int W>
__device__ __forceinline__ void acc_add(float *row, int d, const float *v) {
    float *p = row + acc_slot<W>(d);
    if constexpr (W < 4) {
#pragma unroll
        for (int i = 0; i < W; i++) p[i] += v[i];
    } else {
#pragma unroll
        for (int h = 0; h < W / 4; h++) {
            float4 *q = reinterpret_cast<float4 *>(p + h * 128);
            float4 a = *q;
            a.x += v[4 * h];
            a.y += v[4 * h + 1];
            a.z += v[4 * h + 2];
            a.w += v[4 * h + 3];
            *q = a;
        }
    }
}

// Block c takes rows [c·RMSNORM_CHUNK, (c + 1)·RMSNORM_CHUNK), warp w of its `warps` rows w,
// w + warps, ...: a warp per row with W-wide accesses as in the forward. With
// ∂L/∂x_k = r g_k dy_k − (r³ / D) x_k Σ_d g_d dy_d x_d (see rmsnorm.c), a first pass reduces the
// row's dot product in registers, then across the warp (a fixed order); the second pass (the row
// again, now from cache) writes dx = dres + ∂L/∂x and adds dy ⊙ x · r into the warp's own row of
// shared memory (warps × Dp fp32, Dp = D rounded up to 32·W). At the end the block adds its
// warps' rows in order into part[c].
template <typename T, int W>
__global__ void rmsnorm_backward_input_kernel(T *dinp, float *part, const T *dres, const T *dout,
                                              const T *inp, const T *gain, const float *rstd,
                                              int N, int D, int Dp) {
    extern __shared__ float4 smem[];
    float *acc = reinterpret_cast<float *>(smem);
    const int warps = blockDim.x / 32, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = threadIdx.x; i < warps * Dp; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    float *mine = acc + (size_t)w * Dp;
    const int n0 = (int)blockIdx.x * RMSNORM_CHUNK, n1 = min(N, n0 + RMSNORM_CHUNK);
    for (int n = n0 + w; n < n1; n += warps) {
        const T *x = inp + (size_t)n * D, *dy = dout + (size_t)n * D;
        const T *res = dres ? dres + (size_t)n * D : nullptr;
        T *dx = dinp + (size_t)n * D;
        float s = 0.0f;
        for (int d = lane * W; d < D; d += 32 * W) {
            float xv[W], dyv[W], g[W];
            core_ld_vec<W>(xv, x + d);
            core_ld_vec<W>(dyv, dy + d);
            core_ld_vec<W>(g, gain + d);
#pragma unroll
            for (int i = 0; i < W; i++) s += g[i] * dyv[i] * xv[i];
        }
        const float r = rstd[n];
        const float c = r * r * r * core_warp_sum(s) / D;
        for (int d = lane * W; d < D; d += 32 * W) {
            float xv[W], dyv[W], g[W], out[W] = {}, dg[W];
            core_ld_vec<W>(xv, x + d);
            core_ld_vec<W>(dyv, dy + d);
            core_ld_vec<W>(g, gain + d);
            if (res) core_ld_vec<W>(out, res + d);  // before dx is written: res may be dx
#pragma unroll
            for (int i = 0; i < W; i++) {
                out[i] += r * g[i] * dyv[i] - c * xv[i];
                dg[i] = dyv[i] * xv[i] * r;
            }
            core_st_vec<W>(dx + d, out);
            acc_add<W>(mine, d, dg);
        }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const int sl = acc_slot<W>(d);
        float t = 0.0f;
        for (int j = 0; j < warps; j++) t += acc[(size_t)j * Dp + sl];
        part[(size_t)blockIdx.x * D + d] = t;
    }
}

// The opt-in shared memory of one block on the current GPU, in bytes.
static int smem_limit(void) {
    int dev, limit;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return limit;
}

// One warp's row, rounded up to 32·W elements as the widest W (bf16's 8) rounds it.
int rmsnorm_cuda_max_d(void) { return smem_limit() / (int)sizeof(float) / 256 * 256; }

// Launches the backward over ceil(N / RMSNORM_CHUNK) blocks of BWD_WARPS warps, or of as many
// warps as there is shared memory for (a D of thousands fits 8 on a GPU of 100 KB or more).
template <typename T, int W>
static void backward_launch(T *dinp, float *part, const T *dres, const T *dout, const T *inp,
                            const T *gain, const float *rstd, int N, int D) {
    const int Dp = (D + 32 * W - 1) / (32 * W) * (32 * W), limit = smem_limit();
    const long fit = limit / ((long)Dp * (long)sizeof(float));
    CHECK(fit >= 1, "rmsnorm: D = %d is too wide for the backward's %d bytes of shared memory", D,
          limit);
    const int warps = fit < BWD_WARPS ? (int)fit : BWD_WARPS;
    const size_t smem = (size_t)warps * Dp * sizeof(float);
    CUDA_CHECK(cudaFuncSetAttribute(rmsnorm_backward_input_kernel<T, W>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    rmsnorm_backward_input_kernel<T, W>
        <<<core_blocks(N, RMSNORM_CHUNK), warps * 32, smem, core_stream()>>>(
            dinp, part, dres, dout, inp, gain, rstd, N, D, Dp);
    CUDA_CHECK_LAUNCH();
}

// 16-byte accesses where they fit, else one element at a time.
template <typename T>
static void backward_input(void *dinp, float *part, const void *dres, const void *dout,
                           const void *inp, const void *gain, const float *rstd, int N, int D) {
    constexpr int W = 16 / sizeof(T);
    const void *ptrs[] = {dinp, dres, dout, inp, gain};  // core_vec_ok skips a NULL dres
    if (core_vec_ok(W, sizeof(T), D, ptrs, 5))
        backward_launch<T, W>((T *)dinp, part, (const T *)dres, (const T *)dout, (const T *)inp,
                              (const T *)gain, rstd, N, D);
    else
        backward_launch<T, 1>((T *)dinp, part, (const T *)dres, (const T *)dout, (const T *)inp,
                              (const T *)gain, rstd, N, D);
}

void rmsnorm_cuda_backward_input(CoreDtype dt, void *dinp, float *part, const void *dres,
                                 const void *dout, const void *inp, const void *gain,
                                 const float *rstd, int N, int D) {
    rmsnorm_check(N, D);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, backward_input, dinp, part, dres, dout, inp, gain, rstd, N, D);
}

// dgain (D) += Σ_c part (chunks, D). Block x takes 32 columns; thread (j, lane) sums the chunks
// lane, lane + SUM_LANES, ... of column j in order, then lane 0 adds the lanes in order: a fixed
// order, with every chunk's load in flight at once rather than one column's chunks in a row.
__global__ void rmsnorm_dgain_kernel(float *dgain, const float *part, int chunks, int D) {
    __shared__ float acc[SUM_LANES][32];
    const int d = blockIdx.x * 32 + threadIdx.x, lane = threadIdx.y;
    float s = 0.0f;
    if (d < D)
        for (int c = lane; c < chunks; c += SUM_LANES) s += part[(size_t)c * D + d];
    acc[lane][threadIdx.x] = s;
    __syncthreads();
    if (lane == 0 && d < D) {
        float t = 0.0f;
        for (int j = 0; j < SUM_LANES; j++) t += acc[j][threadIdx.x];
        dgain[d] += t;
    }
}

void rmsnorm_cuda_backward_weight(float *dgain, const float *part, int N, int D) {
    rmsnorm_check(N, D);
    if (N == 0) return;
    const int chunks = (int)(rmsnorm_partial_floats(N, D) / (size_t)D);
    rmsnorm_dgain_kernel<<<core_blocks(D, 32), dim3(32, SUM_LANES), 0, core_stream()>>>(
        dgain, part, chunks, D);
    CUDA_CHECK_LAUNCH();
}
