// SwiGLU's gate on the GPU (see swiglu_cuda.h), over rows of F whose a and b are the two halves
// of (rows, 2F) rows. A thread takes W consecutive elements of a row in one 16-byte load per tensor
// where F and the buffers allow (W = 8 in bf16, 4 in fp32), else one: element-wide bf16 accesses
// left the gate at 40 % of the memory bandwidth (kernel_bench). The backward takes a warp per row,
// which also sums the row's dot where asked (the MoE layer's routed experts).
#include "layers/swiglu_cuda.h"

// h = silu(a) · b
__device__ __forceinline__ float gate(float a, float b) { return a / (1.0f + expf(-a)) * b; }

// Thread i: h's elements [i·W, i·W + W), all in one row (W divides F).
template <typename T, int W>
__global__ void swiglu_forward_kernel(T *h, const T *ab, long rows, int F) {
    const long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i >= rows * F) return;
    const T *a = ab + i / F * 2 * F + i % F;
    float x[W], y[W];
    core_ld_vec<W>(x, a);
    core_ld_vec<W>(y, a + F);
#pragma unroll
    for (int j = 0; j < W; j++) x[j] = gate(x[j], y[j]);
    core_st_vec<W>(h + i, x);
}

// A warp per row: da, db (the row's halves of dab) = the gate's gradients (written, not added);
// silu'(a) = s + a·s·(1 − s), s = sigmoid(a). dh is then overwritten with h = silu(a)·b as the
// forward stored it (rounded to T): the W2 weight gradient reads it instead of a pass that would
// recompute it. With s, s[r] = Σ_f dh·h over the row (each lane sums its elements, then the warp
// in a fixed order).
template <typename T, int W>
__global__ void swiglu_backward_kernel(T *dab, float *s, T *dh, const T *ab, long rows, int F) {
    const long r = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;  // the whole warp leaves together
    const T *a = ab + r * 2 * F;
    T *da = dab + r * 2 * F, *g = dh + r * F;
    float dot = 0.0f;
    for (int f = lane * W; f < F; f += 32 * W) {
        float x[W], y[W], dy[W], ga[W], gb[W], hv[W];
        core_ld_vec<W>(x, a + f);
        core_ld_vec<W>(y, a + F + f);
        core_ld_vec<W>(dy, g + f);
#pragma unroll
        for (int j = 0; j < W; j++) {
            const float sg = 1.0f / (1.0f + expf(-x[j]));
            ga[j] = dy[j] * y[j] * sg * (1.0f + x[j] * (1.0f - sg));
            gb[j] = dy[j] * x[j] * sg;
            T h;
            core_st(&h, gate(x[j], y[j]));
            hv[j] = core_ld(&h);
            dot += dy[j] * hv[j];
        }
        core_st_vec<W>(da + f, ga);
        core_st_vec<W>(da + F + f, gb);
        core_st_vec<W>(g + f, hv);
    }
    if (!s) return;
    dot = core_warp_sum(dot);
    if (lane == 0) s[r] = dot;
}

template <typename T>
static void act_forward(void *h, const void *ab, long rows, int F) {
    const void *p[] = {h, ab};
    CORE_VEC_LAUNCH(swiglu_forward_kernel, T, rows * F, F, p, (T *)h, (const T *)ab, rows, F);
}

template <typename T>
static void act_backward(void *dab, float *s, void *dh, const void *ab, long rows, int F) {
    const int W = 16 / sizeof(T);
    const void *p[] = {dab, dh, ab};
    if (core_vec_ok(W, sizeof(T), F, p, 3))
        swiglu_backward_kernel<T, W><<<core_blocks(rows * 32, 256), 256, 0, core_stream()>>>(
            (T *)dab, s, (T *)dh, (const T *)ab, rows, F);
    else
        swiglu_backward_kernel<T, 1><<<core_blocks(rows * 32, 256), 256, 0, core_stream()>>>(
            (T *)dab, s, (T *)dh, (const T *)ab, rows, F);
    CUDA_CHECK_LAUNCH();
}

void swiglu_cuda_act_forward(CoreDtype dt, void *h, const void *ab, long rows, int F) {
    CHECK(rows >= 0 && F >= 1, "swiglu: bad shape %ld rows of %d", rows, F);
    if (rows == 0) return;
    CORE_DTYPE_CALL(dt, act_forward, h, ab, rows, F);
}

void swiglu_cuda_act_backward(CoreDtype dt, void *dab, float *s, void *dh, const void *ab, long rows, int F) {
    CHECK(rows >= 0 && F >= 1, "swiglu: bad shape %ld rows of %d", rows, F);
    if (rows == 0) return;
    CORE_DTYPE_CALL(dt, act_backward, dab, s, dh, ab, rows, F);
}
