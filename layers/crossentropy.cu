// Fused softmax cross-entropy on the GPU (see crossentropy_cuda.h): one block per row. The forward
// reads the row once, keeping a running (max, Σ exp) pair per thread that the block then merges,
// so large logits cannot overflow; the backward recomputes softmax from the saved lse.
#include "layers/crossentropy_cuda.h"

#define THREADS 256

template <typename T>
__global__ void crossentropy_forward_kernel(float *losses, float *lse, const T *logits,
                                            const int *targets, int V) {
    const T *z = logits + (size_t)blockIdx.x * V;
    float m = -INFINITY, s = 0.0f;
    for (int i = threadIdx.x; i < V; i += THREADS) {
        float x = core_ld(z + i);
        if (x > m) {
            s = s * expf(m - x) + 1.0f;
            m = x;
        } else {
            s += expf(x - m);
        }
    }
    float M = core_block_max(m);
    // A thread that saw no element (V < THREADS) holds m = −inf and adds nothing.
    float S = core_block_sum(m == -INFINITY ? 0.0f : s * expf(m - M));
    if (threadIdx.x == 0) {
        float l = M + logf(S);
        lse[blockIdx.x] = l;
        const int t = targets[blockIdx.x];  // outside [0, V): a NaN loss, no read outside the row
        losses[blockIdx.x] = t >= 0 && t < V ? l - core_ld(z + t) : NAN;
    }
}

// W consecutive logits a thread at a time (one 16-byte access per tensor where V and the buffers
// allow, else W = 1).
template <typename T, int W>
__global__ void crossentropy_backward_kernel(T *dlogits, const T *logits, const float *lse,
                                             const int *targets, float dloss, int V) {
    size_t row = (size_t)blockIdx.x * V;
    float l = lse[blockIdx.x];
    int target = targets[blockIdx.x];
    for (int i = threadIdx.x * W; i < V; i += THREADS * W) {
        float z[W], d[W];
        core_ld_vec<W>(z, logits + row + i);  // each element read, then written by this thread: in place works
#pragma unroll
        for (int j = 0; j < W; j++) d[j] = dloss * expf(z[j] - l) - (i + j == target ? dloss : 0.0f);
        core_st_vec<W>(dlogits + row + i, d);
    }
}

template <typename T>
static void forward(float *losses, float *lse, const void *logits, const int *targets, int N,
                    int V) {
    crossentropy_forward_kernel<T><<<N, THREADS, 0, core_stream()>>>(losses, lse,
                                                                     (const T *)logits, targets,
                                                                     V);
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void backward(void *dlogits, const void *logits, const float *lse, const int *targets,
                     float dloss, int N, int V) {
    const void *p[] = {dlogits, logits};
    if (core_vec_ok(16 / sizeof(T), sizeof(T), V, p, 2))
        crossentropy_backward_kernel<T, 16 / sizeof(T)><<<N, THREADS, 0, core_stream()>>>(
            (T *)dlogits, (const T *)logits, lse, targets, dloss, V);
    else
        crossentropy_backward_kernel<T, 1><<<N, THREADS, 0, core_stream()>>>(
            (T *)dlogits, (const T *)logits, lse, targets, dloss, V);
    CUDA_CHECK_LAUNCH();
}

static void crossentropy_check(int N, int V) {
    CHECK(N >= 0 && V > 0, "crossentropy: bad shape N=%d V=%d", N, V);
}

void crossentropy_cuda_forward(CoreDtype dt, float *losses, float *lse, const void *logits,
                               const int *targets, int N, int V) {
    crossentropy_check(N, V);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, forward, losses, lse, logits, targets, N, V);
}

void crossentropy_cuda_backward_input(CoreDtype dt, void *dlogits, const void *logits,
                                      const float *lse, const int *targets, float dloss, int N,
                                      int V) {
    crossentropy_check(N, V);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, backward, dlogits, logits, lse, targets, dloss, N, V);
}

// One block: thread i sums losses i, i + THREADS, ... in double, then the block adds the partial
// sums in a fixed order.
__global__ void crossentropy_mean_kernel(float *out, const float *losses, int N) {
    double s = 0.0;
    for (int i = threadIdx.x; i < N; i += THREADS) s += losses[i];
    s = core_block_sum(s);
    if (threadIdx.x == 0) *out = (float)(s / N);
}

void crossentropy_cuda_mean(float *out, const float *losses, int N) {
    CHECK(N >= 1, "crossentropy mean: need at least one row, got %d", N);
    crossentropy_mean_kernel<<<1, THREADS, 0, core_stream()>>>(out, losses, N);
    CUDA_CHECK_LAUNCH();
}
