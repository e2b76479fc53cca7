// SwiGLU's elementwise gate on the GPU (see swiglu_cuda.h), one thread per element.
#include "layers/swiglu_cuda.h"

template <typename T>
__global__ void swiglu_forward_kernel(T *h, const T *a, const T *b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = core_ld(a + i);
    core_st(h + i, x / (1.0f + expf(-x)) * core_ld(b + i));
}

// silu'(a) = s + a·s·(1 − s) with s = sigmoid(a).
template <typename T>
__global__ void swiglu_backward_kernel(T *da, T *db, const T *dh, const T *a, const T *b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = core_ld(a + i), y = core_ld(b + i), g = core_ld(dh + i);
    float s = 1.0f / (1.0f + expf(-x));
    core_st(da + i, core_ld(da + i) + g * y * s * (1.0f + x * (1.0f - s)));
    core_st(db + i, core_ld(db + i) + g * x * s);
}

template <typename T>
static void act_forward(void *h, const void *a, const void *b, long n) {
    swiglu_forward_kernel<T><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
        (T *)h, (const T *)a, (const T *)b, n);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void act_backward(void *da, void *db, const void *dh, const void *a, const void *b,
                         long n) {
    swiglu_backward_kernel<T><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
        (T *)da, (T *)db, (const T *)dh, (const T *)a, (const T *)b, n);
    CUDA_CHECK_LAUNCH();
}

void swiglu_cuda_act_forward(CoreDtype dt, void *h, const void *a, const void *b, long n) {
    CHECK(n >= 0, "swiglu: bad element count %ld", n);
    if (n == 0) return;
    CORE_DTYPE_CALL(dt, act_forward, h, a, b, n);
}

void swiglu_cuda_act_backward(CoreDtype dt, void *da, void *db, const void *dh, const void *a,
                              const void *b, long n) {
    CHECK(n >= 0, "swiglu: bad element count %ld", n);
    if (n == 0) return;
    CORE_DTYPE_CALL(dt, act_backward, da, db, dh, a, b, n);
}
