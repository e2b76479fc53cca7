// RMSNorm on the CPU: forward, input gradient and gain gradient, one row of D values at a time.
// Row reductions accumulate in double; the result is stored in float.
#include "layers/rmsnorm.h"

#include <math.h>
#include <stddef.h>

#include "framework/core/check.h"

// Columns of dgain that one task owns in rmsnorm_backward_weight.
#define RMSNORM_COLS 64

static void rmsnorm_check(int N, int D) {
    CHECK(N >= 0 && D > 0, "rmsnorm: bad shape N=%d D=%d", N, D);
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *gain, int N, int D,
                     float eps) {
    rmsnorm_check(N, D);
    CHECK(eps > 0.0f, "rmsnorm: eps must be positive, got %g", (double)eps);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * D;
        float *y = out + (size_t)n * D;
        double ss = 0.0;
        for (int d = 0; d < D; d++) ss += (double)x[d] * x[d];
        float r = (float)(1.0 / sqrt(ss / D + eps));
        for (int d = 0; d < D; d++) y[d] = x[d] * r * gain[d];
        rstd[n] = r;
    }
}

void rmsnorm_backward_input(float *dinp, const float *dout, const float *inp, const float *gain,
                            const float *rstd, int N, int D) {
    rmsnorm_check(N, D);
    // With y = g ⊙ x · r and r = (mean(x²) + eps)^(-1/2), ∂r/∂x_k = −r³ x_k / D, so
    // ∂L/∂x_k = r g_k dy_k − (r³ / D) x_k Σ_d g_d dy_d x_d.
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * D;
        const float *dy = dout + (size_t)n * D;
        float *dx = dinp + (size_t)n * D;
        double s = 0.0;
        for (int d = 0; d < D; d++) s += (double)gain[d] * dy[d] * x[d];
        float r = rstd[n];
        float c = (float)((double)r * r * r * s / D);
        for (int d = 0; d < D; d++) dx[d] += r * gain[d] * dy[d] - c * x[d];
    }
}

void rmsnorm_backward_weight(float *dgain, const float *dout, const float *inp, const float *rstd,
                             int N, int D) {
    rmsnorm_check(N, D);
    // A sum over rows: each task owns a block of columns and walks the rows in order, so the sum
    // has one fixed order whatever the thread count (bit-identical runs, no atomics).
    int nblk = (D + RMSNORM_COLS - 1) / RMSNORM_COLS;
#pragma omp parallel for
    for (int blk = 0; blk < nblk; blk++) {
        int d0 = blk * RMSNORM_COLS;
        int nd = D - d0 < RMSNORM_COLS ? D - d0 : RMSNORM_COLS;
        double acc[RMSNORM_COLS] = {0};
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * D + d0;
            const float *dy = dout + (size_t)n * D + d0;
            for (int j = 0; j < nd; j++) acc[j] += (double)dy[j] * x[j] * rstd[n];
        }
        for (int j = 0; j < nd; j++) dgain[d0 + j] += (float)acc[j];
    }
}
