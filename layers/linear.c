// Linear layer on the CPU: the three GEMMs of out = inp · Wᵀ (forward, input gradient, weight
// gradient) through OpenBLAS. Row-major throughout; W is (OC, IC) as in PyTorch.
#include "layers/linear.h"

#include <cblas.h>

#include "framework/core/check.h"

// N may be 0 (an expert that received no tokens); the widths may not.
static void linear_check(int N, int IC, int OC) {
    CHECK(N >= 0 && IC > 0 && OC > 0, "linear: bad shape N=%d IC=%d OC=%d", N, IC, OC);
}

void linear_forward(float *out, const float *inp, const float *W, int N, int IC, int OC) {
    linear_check(N, IC, OC);
    if (N == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, W, IC, 0.0f, out,
                OC);
}

void linear_backward_input(float *dinp, const float *dout, const float *W, int N, int IC, int OC) {
    linear_check(N, IC, OC);
    if (N == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, W, IC, 1.0f,
                dinp, IC);
}

void linear_backward_weight(float *dW, const float *dout, const float *inp, int N, int IC, int OC) {
    linear_check(N, IC, OC);
    if (N == 0) return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f,
                dW, IC);
}
