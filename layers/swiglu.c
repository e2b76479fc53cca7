// SwiGLU feed-forward on the CPU: three linear_* GEMMs around the elementwise gate
// h = silu(a) ⊙ b, silu(a) = a · sigmoid(a).
#include "layers/swiglu.h"

#include <math.h>
#include <string.h>

#include "framework/core/check.h"
#include "layers/linear.h"

static float sigmoidf(float a) { return 1.0f / (1.0f + expf(-a)); }

void swiglu_act_forward(float *h, const float *a, const float *b, long n) {
    CHECK(n >= 0, "swiglu: bad element count %ld", n);
#pragma omp parallel for
    for (long i = 0; i < n; i++) h[i] = a[i] * sigmoidf(a[i]) * b[i];
}

void swiglu_act_backward(float *da, float *db, const float *dh, const float *a, const float *b,
                         long n) {
    CHECK(n >= 0, "swiglu: bad element count %ld", n);
    // silu'(a) = s + a·s·(1 − s) with s = sigmoid(a).
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        float s = sigmoidf(a[i]);
        da[i] += dh[i] * b[i] * s * (1.0f + a[i] * (1.0f - s));
        db[i] += dh[i] * a[i] * s;
    }
}

void swiglu_forward(float *out, SwigluActs *acts, const float *x, const float *w1, const float *w3,
                    const float *w2, int N, int D, int F) {
    linear_forward(acts->a, x, w1, N, D, F);
    linear_forward(acts->b, x, w3, N, D, F);
    swiglu_act_forward(acts->h, acts->a, acts->b, (long)N * F);
    linear_forward(out, acts->h, w2, N, F, D);
}

void swiglu_backward_input(float *dx, SwigluActs *acts, float *scratch_dh, const float *dout,
                           const float *w1, const float *w3, const float *w2, int N, int D, int F) {
    // An expert that received no rows may pass NULL buffers, and memset(NULL, 0, 0) is undefined.
    if (N == 0) return;
    // dh, da and db are fresh per call (the accumulating linear_ and act_ backward calls add into
    // them), so zero them first; only dx accumulates across calls.
    size_t bytes = (size_t)N * F * sizeof(float);
    memset(scratch_dh, 0, bytes);
    memset(acts->da, 0, bytes);
    memset(acts->db, 0, bytes);
    linear_backward_input(scratch_dh, dout, w2, N, F, D);
    swiglu_act_backward(acts->da, acts->db, scratch_dh, acts->a, acts->b, (long)N * F);
    linear_backward_input(dx, acts->da, w1, N, D, F);
    linear_backward_input(dx, acts->db, w3, N, D, F);
}

void swiglu_backward_weight(float *dw1, float *dw3, float *dw2, const SwigluActs *acts,
                            const float *x, const float *dout, int N, int D, int F) {
    linear_backward_weight(dw2, dout, acts->h, N, F, D);
    linear_backward_weight(dw1, acts->da, x, N, D, F);
    linear_backward_weight(dw3, acts->db, x, N, D, F);
}
