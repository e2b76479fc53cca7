// SwiGLU feed-forward on the CPU: the elementwise gate h = silu(a) ⊙ b, silu(a) = a · sigmoid(a),
// and the whole FFN as the backend's three-GEMM composition on the CPU table.
#include "layers/swiglu.h"

#include <math.h>

#include "layers/ops.h"

static float sigmoidf(float a) { return 1.0f / (1.0f + expf(-a)); }
static float gate(float a, float b) { return a * sigmoidf(a) * b; }

void swiglu_act_forward(float *h, const float *a, const float *b, long n) {
    CHECK(n >= 0, "swiglu: bad element count %ld", n);
#pragma omp parallel for
    for (long i = 0; i < n; i++) h[i] = gate(a[i], b[i]);
}

// The gate's gradients at one element: silu'(a) = s + a·s·(1 − s) with s = sigmoid(a).
static void gate_backward(float *da, float *db, float dh, float a, float b) {
    float s = sigmoidf(a);
    *da = dh * b * s * (1.0f + a * (1.0f - s));
    *db = dh * a * s;
}

void swiglu_act_backward(float *da, float *db, float *dh, const float *a, const float *b, long n) {
    CHECK(n >= 0, "swiglu: bad element count %ld", n);
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        gate_backward(&da[i], &db[i], dh[i], a[i], b[i]);
        dh[i] = gate(a[i], b[i]);
    }
}

void swiglu_act_backward_dot(float *da, float *db, float *s, float *dh, const float *a, const float *b,
                             long rows, int F) {
    CHECK(rows >= 0 && F >= 1, "swiglu: bad shape %ld rows of %d", rows, F);
    // h is the forward's gate on the same inputs: s is the dot with the h that fed W2, to the bit.
#pragma omp parallel for
    for (long r = 0; r < rows; r++) {
        float dot = 0.0f;
        for (long i = r * F; i < (r + 1) * F; i++) {
            const float h = gate(a[i], b[i]);
            gate_backward(&da[i], &db[i], dh[i], a[i], b[i]);
            dot += dh[i] * h;
            dh[i] = h;
        }
        s[r] = dot;
    }
}

// The one-group case of the backend's SwiGLU composition (layers/ops.c), on the CPU table.
void swiglu_forward(float *out, SwigluActs *acts, const float *x, const float *w1, const float *w3,
                    const float *w2, int N, int D, int F) {
    ops_swiglu_forward(&layer_ops_cpu, out, acts, x, w1, w3, w2, &N, 1, D, F);
}

void swiglu_backward_input(float *dx, SwigluActs *acts, float *scratch_dh, const float *dout,
                           const float *w1, const float *w3, const float *w2, int N, int D, int F) {
    ops_swiglu_backward_input(&layer_ops_cpu, dx, acts, scratch_dh, dout, w1, w3, w2, &N, 1, D, F, 1);
}

void swiglu_backward_weight(float *dw1, float *dw3, float *dw2, const SwigluActs *acts,
                            const float *x, const float *dout, int N, int D, int F) {
    ops_swiglu_backward_weight(&layer_ops_cpu, dw1, dw3, dw2, acts, x, dout, &N, 1, D, F, 1);
}
