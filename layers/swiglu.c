// SwiGLU feed-forward on the CPU: the elementwise gate h = silu(a) ⊙ b, silu(a) = a · sigmoid(a),
// and the whole FFN as the backend's three-GEMM composition on the CPU table.
#include "layers/swiglu.h"

#include "layers/ops.h"
#include "layers/simd_math.h"

// Row by row, each row's loop vectorized (simd_math.h): an element's bits depend on its column
// alone, so the backward's h is the forward's to the bit.
static inline float sigmoidf(float a) { return 1.0f / (1.0f + expf(-a)); }

void swiglu_act_forward(float *h, const float *ab, long rows, int F) {
    CHECK(rows >= 0 && F >= 1, "swiglu: bad shape %ld rows of %d", rows, F);
#pragma omp parallel for
    for (long r = 0; r < rows; r++) {
        const float *a = ab + r * 2 * F, *b = a + F;
        float *y = h + r * F;
#pragma omp simd
        for (int f = 0; f < F; f++) y[f] = a[f] * sigmoidf(a[f]) * b[f];
    }
}

// The gate's gradients: silu'(a) = s + a·s·(1 − s) with s = sigmoid(a).
void swiglu_act_backward(float *dab, float *s, float *dh, const float *ab, long rows, int F) {
    CHECK(rows >= 0 && F >= 1, "swiglu: bad shape %ld rows of %d", rows, F);
    // h is the forward's gate on the same inputs: s is the dot with the h that fed W2, to the bit.
#pragma omp parallel for
    for (long r = 0; r < rows; r++) {
        const float *a = ab + r * 2 * F, *b = a + F;
        float *da = dab + r * 2 * F, *db = da + F, *g = dh + r * F;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int f = 0; f < F; f++) {
            const float sg = sigmoidf(a[f]), h = a[f] * sg * b[f];
            da[f] = g[f] * b[f] * sg * (1.0f + a[f] * (1.0f - sg));
            db[f] = g[f] * a[f] * sg;
            dot += g[f] * h;
            g[f] = h;
        }
        if (s) s[r] = dot;
    }
}

// The one-group case of the backend's SwiGLU composition (layers/ops.c), on the CPU table.
void swiglu_forward(float *out, SwigluActs *acts, const float *x, const float *w13, const float *w2, int N,
                    int D, int F) {
    const OpsGroups g = ops_groups_host(&N, 1);
    ops_swiglu_forward(&layer_ops_cpu, out, acts, x, w13, w2, &g, D, F);
}

void swiglu_backward_input(float *dx, SwigluActs *acts, float *scratch_dh, const float *dout,
                           const float *w13, const float *w2, int N, int D, int F) {
    const OpsGroups g = ops_groups_host(&N, 1);
    ops_swiglu_backward_input(&layer_ops_cpu, dx, acts, scratch_dh, NULL, dout, w13, w2, &g, D, F, 1);
}

void swiglu_backward_weight(float *dw13, float *dw2, const SwigluActs *acts, const float *x,
                            const float *dout, int N, int D, int F) {
    const OpsGroups g = ops_groups_host(&N, 1);
    ops_swiglu_backward_weight(&layer_ops_cpu, dw13, dw2, acts, x, dout, &g, D, F, 1);
}
