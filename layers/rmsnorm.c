// RMSNorm on the CPU: forward, input gradient and gain gradient, one row of D values at a time.
// Row reductions accumulate in double; the result is stored in float.
#include "layers/rmsnorm.h"

#include <math.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

static void rmsnorm_check(int N, int D) {
    CHECK(N >= 0 && D > 0, "rmsnorm: bad shape N=%d D=%d", N, D);
}

static int rmsnorm_chunks(int N) { return (N + RMSNORM_CHUNK - 1) / RMSNORM_CHUNK; }

size_t rmsnorm_partial_floats(int N, int D) {
    rmsnorm_check(N, D);
    return (size_t)rmsnorm_chunks(N) * (size_t)D;
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

void rmsnorm_backward_input(float *dinp, float *part, const float *dres, const float *dout,
                            const float *inp, const float *gain, const float *rstd, int N, int D) {
    rmsnorm_check(N, D);
    // With y = g ⊙ x · r and r = (mean(x²) + eps)^(-1/2), ∂r/∂x_k = −r³ x_k / D, so
    // ∂L/∂x_k = r g_k dy_k − (r³ / D) x_k Σ_d g_d dy_d x_d; and ∂L/∂g_k = Σ_n dy_k x_k r.
    // A task owns a chunk of rows and walks them in order, so each partial sum has one fixed order
    // whatever the thread count (bit-identical runs).
    const int chunks = rmsnorm_chunks(N);
#pragma omp parallel
    {
        double *acc = core_alloc((size_t)D * sizeof(double));  // (D) this chunk's gain gradient
#pragma omp for
        for (int ch = 0; ch < chunks; ch++) {
            memset(acc, 0, (size_t)D * sizeof(double));
            const int n1 = N < (ch + 1) * RMSNORM_CHUNK ? N : (ch + 1) * RMSNORM_CHUNK;
            for (int n = ch * RMSNORM_CHUNK; n < n1; n++) {
                const float *x = inp + (size_t)n * D;
                const float *dy = dout + (size_t)n * D;
                const float *res = dres ? dres + (size_t)n * D : NULL;
                float *dx = dinp + (size_t)n * D;
                double s = 0.0;
                for (int d = 0; d < D; d++) s += (double)gain[d] * dy[d] * x[d];
                float r = rstd[n];
                float c = (float)((double)r * r * r * s / D);
                for (int d = 0; d < D; d++) {
                    acc[d] += (double)dy[d] * x[d] * r;
                    // res[d] is read before dx[d] is written: res may be dx.
                    float v = r * gain[d] * dy[d] - c * x[d];
                    dx[d] = res ? res[d] + v : v;
                }
            }
            for (int d = 0; d < D; d++) part[(size_t)ch * D + d] = (float)acc[d];
        }
        core_free(acc);
    }
}

void rmsnorm_backward_weight(float *dgain, const float *part, int N, int D) {
    rmsnorm_check(N, D);
    const int chunks = rmsnorm_chunks(N);
#pragma omp parallel for
    for (int d = 0; d < D; d++) {
        double t = 0.0;
        for (int ch = 0; ch < chunks; ch++) t += part[(size_t)ch * D + d];
        dgain[d] += (float)t;
    }
}
