// Linear layer on the GPU (see linear_cuda.h): each product is one cublasGemmEx with fp32 compute;
// the grouped (per-expert) calls issue one per non-empty expert on the same stream. That loop is
// the baseline that cuBLAS's grouped GEMM or a custom kernel would have to beat.
// cuBLAS is column-major: a row-major (r, c) matrix is its column-major (c, r) transpose, so
// out = inp · Wᵀ (row-major) is outᵀ = W · inpᵀ (column-major), and likewise for the backward.
#include "layers/linear_cuda.h"

#include <cublas_v2.h>

static cudaDataType_t cuda_type(CoreDtype dt) {
    return core_dtype_size(dt) == 2 ? CUDA_R_16BF : CUDA_R_32F;
}

// C (m × n, column-major, type ct) = alpha · op(A) · op(B) + beta · C, operands of type ab.
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A,
                 int lda, const void *B, int ldb, float beta, void *C, cudaDataType_t ct, int ldc,
                 cudaDataType_t ab) {
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx((cublasHandle_t)core_cuda_cublas(), ta, tb, m, n, k, &alpha, A, ab,
                              lda, B, ab, ldb, &beta, C, ct, ldc, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

static void linear_check(int N, int IC, int OC) {
    CHECK(N >= 0 && IC > 0 && OC > 0, "linear: bad shape N=%d IC=%d OC=%d", N, IC, OC);
}

void linear_cuda_forward(CoreDtype dt, CoreDtype out_dt, void *out, const void *inp, const void *W,
                         int N, int IC, int OC) {
    linear_check(N, IC, OC);
    CHECK(out_dt == dt || out_dt == CORE_F32,
          "linear: output dtype %d must be the operands' (%d) or fp32", (int)out_dt, (int)dt);
    if (N == 0) return;
    // outᵀ (OC × N) = W (col-major IC × OC)ᵀ · inpᵀ (IC × N)
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, W, IC, inp, IC, 0.0f, out, cuda_type(out_dt), OC,
         cuda_type(dt));
}

void linear_cuda_backward_input(CoreDtype dt, void *dinp, const void *dout, const void *W, int N,
                                int IC, int OC) {
    linear_check(N, IC, OC);
    if (N == 0) return;
    // dinpᵀ (IC × N) += W (col-major IC × OC) · doutᵀ (OC × N)
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, W, IC, dout, OC, 1.0f, dinp, cuda_type(dt), IC,
         cuda_type(dt));
}

void linear_cuda_backward_weight(CoreDtype dt, float *dW, const void *dout, const void *inp, int N,
                                 int IC, int OC) {
    linear_check(N, IC, OC);
    if (N == 0) return;
    // dWᵀ (IC × OC) += inpᵀ (IC × N) · dout (col-major OC × N)ᵀ
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, inp, IC, dout, OC, 1.0f, dW, CUDA_R_32F, IC,
         cuda_type(dt));
}

// Calls fn(ctx, e, rows, row0) for every expert e that has rows, row0 being its first row.
typedef void (*GroupFn)(const void *ctx, int e, int rows, size_t row0);

static void for_each_group(const int *counts, int G, const void *ctx, GroupFn fn) {
    CHECK(G >= 1, "linear: need at least one group, got G = %d", G);
    size_t row0 = 0;
    for (int e = 0; e < G; e++) {
        CHECK(counts[e] >= 0, "linear: group %d has %d rows", e, counts[e]);
        if (counts[e] > 0) fn(ctx, e, counts[e], row0);
        row0 += (size_t)counts[e];
    }
}

typedef struct {
    CoreDtype dt, out_dt;
    void *y;              // out (forward), dinp (backward_input) or dW (backward_weight)
    const void *a, *b;    // inp, W (forward); dout, W (backward_input); dout, inp (weight)
    int IC, OC;
} GroupArgs;

static const char *at(const void *p, size_t elems, CoreDtype dt) {
    return (const char *)p + elems * core_dtype_size(dt);
}

static void forward_group(const void *ctx, int e, int rows, size_t row0) {
    const GroupArgs *g = (const GroupArgs *)ctx;
    linear_cuda_forward(g->dt, g->out_dt, (void *)at(g->y, row0 * g->OC, g->out_dt),
                        at(g->a, row0 * g->IC, g->dt), at(g->b, (size_t)e * g->OC * g->IC, g->dt),
                        rows, g->IC, g->OC);
}

static void backward_input_group(const void *ctx, int e, int rows, size_t row0) {
    const GroupArgs *g = (const GroupArgs *)ctx;
    linear_cuda_backward_input(g->dt, (void *)at(g->y, row0 * g->IC, g->dt),
                               at(g->a, row0 * g->OC, g->dt),
                               at(g->b, (size_t)e * g->OC * g->IC, g->dt), rows, g->IC, g->OC);
}

static void backward_weight_group(const void *ctx, int e, int rows, size_t row0) {
    const GroupArgs *g = (const GroupArgs *)ctx;
    linear_cuda_backward_weight(g->dt, (float *)g->y + (size_t)e * g->OC * g->IC,
                                at(g->a, row0 * g->OC, g->dt), at(g->b, row0 * g->IC, g->dt),
                                rows, g->IC, g->OC);
}

void linear_cuda_forward_grouped(CoreDtype dt, CoreDtype out_dt, void *out, const void *inp,
                                 const void *W, const int *counts, int G, int IC, int OC) {
    GroupArgs g = {dt, out_dt, out, inp, W, IC, OC};
    for_each_group(counts, G, &g, forward_group);
}

void linear_cuda_backward_input_grouped(CoreDtype dt, void *dinp, const void *dout, const void *W,
                                        const int *counts, int G, int IC, int OC) {
    GroupArgs g = {dt, dt, dinp, dout, W, IC, OC};
    for_each_group(counts, G, &g, backward_input_group);
}

void linear_cuda_backward_weight_grouped(CoreDtype dt, float *dW, const void *dout,
                                         const void *inp, const int *counts, int G, int IC,
                                         int OC) {
    GroupArgs g = {dt, CORE_F32, dW, dout, inp, IC, OC};
    for_each_group(counts, G, &g, backward_weight_group);
}
