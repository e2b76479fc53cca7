// Fused softmax cross-entropy on the CPU. Every row subtracts its max before exp() so that large
// logits cannot overflow; the row sum and the log-sum-exp are accumulated in double. Each row's
// loops are vectorized (layers/simd_math.h).
#include "layers/crossentropy.h"

#include <stddef.h>

#include "framework/core/check.h"
#include "layers/simd_math.h"

static void crossentropy_check(const int *targets, int N, int V) {
    CHECK(N >= 0 && V > 0, "crossentropy: bad shape N=%d V=%d", N, V);
    for (int n = 0; n < N; n++)
        CHECK(targets[n] >= 0 && targets[n] < V,
              "crossentropy: target %d at row %d is outside [0, %d)", targets[n], n, V);
}

void crossentropy_forward(float *losses, float *lse, const float *logits, const int *targets, int N,
                          int V) {
    crossentropy_check(targets, N, V);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        float mx = z[0];
#pragma omp simd reduction(max : mx)
        for (int i = 1; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < V; i++) sum += expf(z[i] - mx);
        double l = mx + log(sum);
        lse[n] = (float)l;
        losses[n] = (float)(l - z[targets[n]]);
    }
}

void crossentropy_backward_input(float *dlogits, const float *logits, const float *lse,
                                 const int *targets, float dloss, int N, int V) {
    crossentropy_check(targets, N, V);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        float *dz = dlogits + (size_t)n * V;
        const float l = lse[n];
#pragma omp simd
        for (int i = 0; i < V; i++) dz[i] = dloss * expf(z[i] - l);  // z[i] read before dz[i] is written
        dz[targets[n]] -= dloss;
    }
}
