// Token embedding on the GPU (see embedding_cuda.h): a row gather forward, and a scatter-add
// backward made deterministic by grouping the positions of each token first (a stable counting
// sort on the host: the tokens are few, and atomics would add in a different order every run).
#include "layers/embedding_cuda.h"

#include <stdlib.h>

#include "framework/core/mem.h"

template <typename T>
__global__ void embedding_forward_kernel(T *out, const int *tokens, const T *table, int N, int D) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * D) return;
    int n = (int)(i / D), d = (int)(i % D);
    out[i] = table[(size_t)tokens[n] * D + d];
}

template <typename T>
static void forward(void *out, const int *tokens, const void *table, int N, int D) {
    long n = (long)N * D;
    embedding_forward_kernel<T><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
        (T *)out, tokens, (const T *)table, N, D);
    CUDA_CHECK_LAUNCH();
}

// Block (x = group of equal tokens, y = column block): dtable[token] += the rows of dout at the
// group's positions, in position order. order (N) lists positions grouped by token; group u spans
// order[start[u] .. start[u + 1]) and its token is group_tok[u].
template <typename T>
__global__ void embedding_backward_kernel(float *dtable, const T *dout, const int *order,
                                          const int *start, const int *group_tok, int D) {
    int u = blockIdx.x, d = blockIdx.y * blockDim.x + threadIdx.x;
    if (d >= D) return;
    float s = 0.0f;
    for (int j = start[u]; j < start[u + 1]; j++) s += core_ld(dout + (size_t)order[j] * D + d);
    dtable[(size_t)group_tok[u] * D + d] += s;
}

template <typename T>
static void backward(float *dtable, const void *dout, const int *plan, int groups, int N, int D) {
    const int *order = plan, *start = plan + N, *group_tok = plan + N + groups + 1;
    dim3 grid(groups, core_blocks(D, 128));
    embedding_backward_kernel<T><<<grid, 128, 0, core_stream()>>>(dtable, (const T *)dout, order,
                                                                  start, group_tok, D);
    CUDA_CHECK_LAUNCH();
}

static void embedding_check(const int *tokens, int N, int V, int D) {
    CHECK(N >= 0 && V > 0 && D > 0, "embedding: bad shape N=%d V=%d D=%d", N, V, D);
    core_cuda_check_indices(tokens, N, V, "embedding: token");
}

void embedding_cuda_forward(CoreDtype dt, void *out, const int *tokens, const void *table, int N,
                            int V, int D) {
    embedding_check(tokens, N, V, D);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, forward, out, tokens, table, N, D);
}

void embedding_cuda_backward_weight(CoreDtype dt, float *dtable, const void *dout,
                                    const int *tokens, int N, int V, int D) {
    embedding_check(tokens, N, V, D);
    if (N == 0) return;
    // The plan, one host buffer: order (N), start (groups + 1), group_tok (groups); groups <= N.
    int *tok = (int *)core_alloc((size_t)N * sizeof(int));
    int *count = (int *)core_alloc((size_t)V * sizeof(int));  // (V) positions per token
    int *plan = (int *)core_alloc((size_t)(3 * N + 1) * sizeof(int));
    core_copy(tok, CORE_CPU, tokens, CORE_CUDA, (size_t)N * sizeof(int));
    for (int n = 0; n < N; n++) count[tok[n]]++;
    int groups = 0;
    for (int v = 0; v < V; v++) groups += count[v] > 0;
    int *order = plan, *start = plan + N, *group_tok = plan + N + groups + 1;
    // Groups in token order; count[v] becomes the next free slot of token v in order[].
    int at = 0, u = 0;
    for (int v = 0; v < V; v++) {
        if (!count[v]) continue;
        start[u] = at;
        group_tok[u++] = v;
        int c = count[v];
        count[v] = at;
        at += c;
    }
    start[groups] = N;
    for (int n = 0; n < N; n++) order[count[tok[n]]++] = n;
    size_t bytes = (size_t)(N + 2 * groups + 1) * sizeof(int);
    // Stream-ordered memory (cudaFree would wait for the whole device, kernel included); the upload
    // is waited for because the host plan is freed below.
    int *d_plan;
    CUDA_CHECK(cudaMallocAsync((void **)&d_plan, bytes, core_stream()));
    CUDA_CHECK(cudaMemcpyAsync(d_plan, plan, bytes, cudaMemcpyHostToDevice, core_stream()));
    core_cuda_sync();
    CORE_DTYPE_CALL(dt, backward, dtable, dout, d_plan, groups, N, D);
    CUDA_CHECK(cudaFreeAsync(d_plan, core_stream()));
    core_free(plan);
    core_free(count);
    core_free(tok);
}
