// SwiGLU's elementwise gate on the GPU (see swiglu_cuda.h). A thread takes W consecutive elements
// in one 16-byte load per tensor where n and the buffers allow (W = 8 in bf16, 4 in fp32), else one:
// element-wide bf16 accesses left the gate at 40 % of the memory bandwidth (kernel_bench). The
// backward's variant with row dots (the MoE layer's routed experts) takes a warp per row instead.
#include "layers/swiglu_cuda.h"

// h = silu(a) · b
struct SwigluGate {
    __device__ float operator()(float a, float b) const { return a / (1.0f + expf(-a)) * b; }
};

template <typename T, int W>
__global__ void swiglu_forward_kernel(T *h, const T *a, const T *b, long n) {
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i < n) core_zip_vec<W>(h, a, b, i, SwigluGate());
}

// da, db = the gate's gradients at W consecutive elements from i (written, not added);
// silu'(a) = s + a·s·(1 − s), s = sigmoid(a). dh is then overwritten with h = silu(a)·b as the
// forward stored it (rounded to T): the W2 weight gradient reads it instead of a pass that would
// recompute it. Returns Σ_j dh·h over them, for the row dots.
template <int W, typename T>
__device__ __forceinline__ float gate_backward_vec(T *da, T *db, T *dh, const T *a, const T *b, long i) {
    float x[W], y[W], g[W], ga[W], gb[W], hv[W], dot = 0.0f;
    core_ld_vec<W>(x, a + i);
    core_ld_vec<W>(y, b + i);
    core_ld_vec<W>(g, dh + i);
#pragma unroll
    for (int j = 0; j < W; j++) {
        float s = 1.0f / (1.0f + expf(-x[j]));
        ga[j] = g[j] * y[j] * s * (1.0f + x[j] * (1.0f - s));
        gb[j] = g[j] * x[j] * s;
        T h;
        core_st(&h, SwigluGate()(x[j], y[j]));
        hv[j] = core_ld(&h);
        dot += g[j] * hv[j];
    }
    core_st_vec<W>(da + i, ga);
    core_st_vec<W>(db + i, gb);
    core_st_vec<W>(dh + i, hv);
    return dot;
}

template <typename T, int W>
__global__ void swiglu_backward_kernel(T *da, T *db, T *dh, const T *a, const T *b, long n) {
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i < n) gate_backward_vec<W>(da, db, dh, a, b, i);  // the unused dot is compiled away
}

// A warp per row of F: the gate's gradients as above, and s[r] = Σ_f dh·h over the row (each lane
// sums its elements, then the warp in a fixed order).
template <typename T, int W>
__global__ void swiglu_backward_dot_kernel(T *da, T *db, float *s, T *dh, const T *a, const T *b, long rows,
                                           int F) {
    long r = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (r >= rows) return;  // the whole warp leaves together
    float dot = 0.0f;
    for (long f = lane * W; f < F; f += 32 * W) dot += gate_backward_vec<W>(da, db, dh, a, b, r * F + f);
    dot = core_warp_sum(dot);
    if (lane == 0) s[r] = dot;
}

template <typename T>
static void act_forward(void *h, const void *a, const void *b, long n) {
    const int W = 16 / sizeof(T);
    const void *p[] = {h, a, b};
    if (core_vec_ok(W, sizeof(T), n, p, 3))
        swiglu_forward_kernel<T, W><<<core_blocks(n / W, 256), 256, 0, core_stream()>>>(
            (T *)h, (const T *)a, (const T *)b, n);
    else
        swiglu_forward_kernel<T, 1><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
            (T *)h, (const T *)a, (const T *)b, n);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void act_backward(void *da, void *db, void *dh, const void *a, const void *b, long n) {
    const int W = 16 / sizeof(T);
    const void *p[] = {da, db, dh, a, b};
    if (core_vec_ok(W, sizeof(T), n, p, 5))
        swiglu_backward_kernel<T, W><<<core_blocks(n / W, 256), 256, 0, core_stream()>>>(
            (T *)da, (T *)db, (T *)dh, (const T *)a, (const T *)b, n);
    else
        swiglu_backward_kernel<T, 1><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
            (T *)da, (T *)db, (T *)dh, (const T *)a, (const T *)b, n);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void act_backward_dot(void *da, void *db, float *s, void *dh, const void *a, const void *b, long rows,
                             int F) {
    const int W = 16 / sizeof(T);
    const void *p[] = {da, db, dh, a, b};
    if (core_vec_ok(W, sizeof(T), F, p, 5))
        swiglu_backward_dot_kernel<T, W><<<core_blocks(rows * 32, 256), 256, 0, core_stream()>>>(
            (T *)da, (T *)db, s, (T *)dh, (const T *)a, (const T *)b, rows, F);
    else
        swiglu_backward_dot_kernel<T, 1><<<core_blocks(rows * 32, 256), 256, 0, core_stream()>>>(
            (T *)da, (T *)db, s, (T *)dh, (const T *)a, (const T *)b, rows, F);
    CUDA_CHECK_LAUNCH();
}

void swiglu_cuda_act_forward(CoreDtype dt, void *h, const void *a, const void *b, long n) {
    CHECK(n >= 0, "swiglu: bad element count %ld", n);
    if (n == 0) return;
    CORE_DTYPE_CALL(dt, act_forward, h, a, b, n);
}

void swiglu_cuda_act_backward(CoreDtype dt, void *da, void *db, void *dh, const void *a, const void *b,
                              long n) {
    CHECK(n >= 0, "swiglu: bad element count %ld", n);
    if (n == 0) return;
    CORE_DTYPE_CALL(dt, act_backward, da, db, dh, a, b, n);
}

void swiglu_cuda_act_backward_dot(CoreDtype dt, void *da, void *db, float *s, void *dh, const void *a,
                                  const void *b, long rows, int F) {
    CHECK(rows >= 0 && F >= 1, "swiglu: bad shape %ld rows of %d", rows, F);
    if (rows == 0) return;
    CORE_DTYPE_CALL(dt, act_backward_dot, da, db, s, dh, a, b, rows, F);
}
