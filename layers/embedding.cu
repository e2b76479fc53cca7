// Token embedding on the GPU (see embedding_cuda.h): a row gather forward, and a scatter-add
// backward made deterministic by grouping the positions of each token first (a stable radix sort
// of the positions by token on the device, CUB's: atomics would add in a different order every
// run, and a plan made on the host cost the step two round trips).
#include "layers/embedding_cuda.h"

#include <cub/device/device_radix_sort.cuh>

// A token outside [0, V) (which the caller should have refused) reads no memory outside the table:
// its row is NaN.
template <typename T>
__global__ void embedding_forward_kernel(T *out, const int *tokens, const T *table, int N, int V, int D) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * D) return;
    int n = (int)(i / D), d = (int)(i % D), v = tokens[n];
    if (v >= 0 && v < V) out[i] = table[(size_t)v * D + d];
    else core_st(out + i, NAN);
}

template <typename T>
static void forward(void *out, const int *tokens, const void *table, int N, int V, int D) {
    long n = (long)N * D;
    embedding_forward_kernel<T><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
        (T *)out, tokens, (const T *)table, N, V, D);
    CUDA_CHECK_LAUNCH();
}

// Block (x = sorted position i, y = column block): where i starts a run of equal tokens in
// sorted (N), dtable[token] += the rows of dout at the run's positions (order, increasing: the sort
// is stable); the other blocks have nothing to do, nor those of a token outside [0, V).
template <typename T>
__global__ void embedding_backward_kernel(float *dtable, const T *dout, const int *sorted, const int *order, int N,
                                          int V, int D) {
    const int i = blockIdx.x, d = blockIdx.y * blockDim.x + threadIdx.x;
    const int v = sorted[i];
    if (d >= D || v < 0 || v >= V || (i > 0 && sorted[i - 1] == v)) return;
    float s = 0.0f;
    for (int j = i; j < N && sorted[j] == v; j++) s += core_ld(dout + (size_t)order[j] * D + d);
    dtable[(size_t)v * D + d] += s;
}

__global__ void iota_kernel(int *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = i;
}

template <typename T>
static void backward(float *dtable, const void *dout, const int *sorted, const int *order, int N, int V, int D) {
    dim3 grid(N, core_blocks(D, 128));
    embedding_backward_kernel<T><<<grid, 128, 0, core_stream()>>>(dtable, (const T *)dout, sorted, order, N, V, D);
    CUDA_CHECK_LAUNCH();
}

static void embedding_check(int N, int V, int D) {
    CHECK(N >= 0 && V > 0 && D > 0, "embedding: bad shape N=%d V=%d D=%d", N, V, D);
}

void embedding_cuda_forward(CoreDtype dt, void *out, const int *tokens, const void *table, int N,
                            int V, int D) {
    embedding_check(N, V, D);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, forward, out, tokens, table, N, V, D);
}

void embedding_cuda_backward_weight(CoreDtype dt, float *dtable, const void *dout,
                                    const int *tokens, int N, int V, int D) {
    embedding_check(N, V, D);
    if (N == 0) return;
    // The positions sorted by token (stable), in stream-ordered memory: sorted (N) the tokens,
    // order (N) their positions.
    cudaStream_t st = core_stream();
    int bits = 1;
    while (bits < 31 && (1L << bits) < V) bits++;
    int *pos, *sorted, *order;
    CUDA_CHECK(cudaMallocAsync((void **)&pos, 3 * (size_t)N * sizeof(int), st));
    sorted = pos + N, order = pos + 2 * N;
    iota_kernel<<<core_blocks(N, 256), 256, 0, st>>>(pos, N);
    CUDA_CHECK_LAUNCH();
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, tokens, sorted, pos, order, N, 0, bits, st));
    void *temp;
    CUDA_CHECK(cudaMallocAsync(&temp, temp_bytes, st));
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, sorted, pos, order, N, 0, bits, st));
    CUDA_CHECK(cudaFreeAsync(temp, st));
    CORE_DTYPE_CALL(dt, backward, dtable, dout, sorted, order, N, V, D);
    CUDA_CHECK(cudaFreeAsync(pos, st));
}
