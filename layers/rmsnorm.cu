// RMSNorm on the GPU (see rmsnorm_cuda.h): one warp per row for the forward and the input
// gradient, with 16-byte loads where the shapes allow; the gain gradient sums over rows in two
// fixed-order passes (no atomics).
#include "layers/rmsnorm_cuda.h"

#define ROWS_PER_BLOCK 8   // warps per block in the row kernels
#define COLS 32            // columns per block in the gain gradient
#define CHUNK 256          // rows summed by one block of the gain gradient's first pass

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

// Launches kernel<T, W> over N rows with 16-byte accesses where they fit, else kernel<T, 1>.
#define ROW_LAUNCH(kernel, T, ptrs, N, D, ...)                                                    \
    do {                                                                                          \
        constexpr int W_ = 16 / sizeof(T);                                                        \
        unsigned blocks_ = core_blocks(N, ROWS_PER_BLOCK);                                        \
        if (core_vec_ok(W_, sizeof(T), D, ptrs, (int)(sizeof ptrs / sizeof *ptrs)))              \
            kernel<T, W_><<<blocks_, ROWS_PER_BLOCK * 32, 0, core_stream()>>>(__VA_ARGS__);       \
        else                                                                                      \
            kernel<T, 1><<<blocks_, ROWS_PER_BLOCK * 32, 0, core_stream()>>>(__VA_ARGS__);        \
        CUDA_CHECK_LAUNCH();                                                                      \
    } while (0)

template <typename T>
static void forward(void *out, float *rstd, const void *inp, const void *gain, int N, int D,
                    float eps) {
    const void *ptrs[] = {out, inp, gain};
    ROW_LAUNCH(rmsnorm_forward_kernel, T, ptrs, N, D, (T *)out, rstd, (const T *)inp,
               (const T *)gain, N, D, eps);
}

void rmsnorm_cuda_forward(CoreDtype dt, void *out, float *rstd, const void *inp, const void *gain,
                          int N, int D, float eps) {
    rmsnorm_check(N, D);
    CHECK(eps > 0.0f, "rmsnorm: eps must be positive, got %g", (double)eps);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, forward, out, rstd, inp, gain, N, D, eps);
}

// ∂L/∂x_k = r g_k dy_k − (r³ / D) x_k Σ_d g_d dy_d x_d (see rmsnorm.c). A warp per row, W-wide
// accesses as in the forward: every load of a pass is issued before the arithmetic that needs it,
// and the row's dot product is reduced in registers, then across the warp (a fixed order).
template <typename T, int W>
__global__ void rmsnorm_backward_input_kernel(T *dinp, const T *dout, const T *inp, const T *gain,
                                              const float *rstd, int N, int D) {
    int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const T *x = inp + (size_t)n * D, *dy = dout + (size_t)n * D;
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
    float r = rstd[n];
    float c = r * r * r * core_warp_sum(s) / D;
    for (int d = lane * W; d < D; d += 32 * W) {
        float xv[W], dyv[W], g[W], acc[W];
        core_ld_vec<W>(xv, x + d);
        core_ld_vec<W>(dyv, dy + d);
        core_ld_vec<W>(g, gain + d);
        core_ld_vec<W>(acc, dx + d);
#pragma unroll
        for (int i = 0; i < W; i++) acc[i] += r * g[i] * dyv[i] - c * xv[i];
        core_st_vec<W>(dx + d, acc);
    }
}

template <typename T>
static void backward_input(void *dinp, const void *dout, const void *inp, const void *gain,
                           const float *rstd, int N, int D) {
    const void *ptrs[] = {dinp, dout, inp, gain};
    ROW_LAUNCH(rmsnorm_backward_input_kernel, T, ptrs, N, D, (T *)dinp, (const T *)dout,
               (const T *)inp, (const T *)gain, rstd, N, D);
}

void rmsnorm_cuda_backward_input(CoreDtype dt, void *dinp, const void *dout, const void *inp,
                                 const void *gain, const float *rstd, int N, int D) {
    rmsnorm_check(N, D);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, backward_input, dinp, dout, inp, gain, rstd, N, D);
}

// First pass: part (chunks, D) = Σ over the CHUNK rows of block y of dout ⊙ inp · rstd. A block is
// COLS columns × 8 row lanes; each lane walks its rows in order, then the 8 lanes add in order.
template <typename T>
__global__ void rmsnorm_dgain_partial_kernel(float *part, const T *dout, const T *inp,
                                             const float *rstd, int N, int D) {
    __shared__ float acc[8][COLS];
    int d = blockIdx.x * COLS + threadIdx.x, lane = threadIdx.y;
    int n0 = blockIdx.y * CHUNK, n1 = min(N, n0 + CHUNK);
    float s = 0.0f;
    if (d < D)
        for (int n = n0 + lane; n < n1; n += 8)
            s += core_ld(dout + (size_t)n * D + d) * core_ld(inp + (size_t)n * D + d) * rstd[n];
    acc[lane][threadIdx.x] = s;
    __syncthreads();
    if (lane == 0 && d < D) {
        float t = 0.0f;
        for (int j = 0; j < 8; j++) t += acc[j][threadIdx.x];
        part[(size_t)blockIdx.y * D + d] = t;
    }
}

// Second pass: dgain (D) += Σ_chunks part (chunks, D), chunks in order.
__global__ void rmsnorm_dgain_sum_kernel(float *dgain, const float *part, int chunks, int D) {
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    float t = 0.0f;
    for (int c = 0; c < chunks; c++) t += part[(size_t)c * D + d];
    dgain[d] += t;
}

template <typename T>
static void backward_weight(float *dgain, const void *dout, const void *inp, const float *rstd,
                            int N, int D) {
    int chunks = (N + CHUNK - 1) / CHUNK;
    float *part;  // (chunks, D)
    CUDA_CHECK(cudaMallocAsync((void **)&part, (size_t)chunks * D * sizeof(float), core_stream()));
    dim3 grid(core_blocks(D, COLS), chunks), block(COLS, 8);
    rmsnorm_dgain_partial_kernel<T><<<grid, block, 0, core_stream()>>>(
        part, (const T *)dout, (const T *)inp, rstd, N, D);
    CUDA_CHECK_LAUNCH();
    rmsnorm_dgain_sum_kernel<<<core_blocks(D, 256), 256, 0, core_stream()>>>(dgain, part, chunks,
                                                                             D);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaFreeAsync(part, core_stream()));
}

void rmsnorm_cuda_backward_weight(CoreDtype dt, float *dgain, const void *dout, const void *inp,
                                  const float *rstd, int N, int D) {
    rmsnorm_check(N, D);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, backward_weight, dgain, dout, inp, rstd, N, D);
}
