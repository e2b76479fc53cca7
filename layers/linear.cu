// Linear layer on the GPU (see linear_cuda.h): each call is one cublasGemmEx with fp32 compute.
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
