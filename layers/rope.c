// Rotary position embedding on the CPU ("rotate half"): element i of a head pairs with i + hd/2 and
// the pair turns by angle t · theta^(−2i/hd). The backward is the inverse rotation of the gradient
// (written, not added; in place allowed).
#include "layers/rope.h"

#include <math.h>
#include <stddef.h>

#include "framework/core/check.h"

// Rotates every pair of inp (N, nh, hd) by +angle (sign = 1) or −angle (sign = −1) and stores
// the result into out (N, nh, hd). In-place use (out == inp) is safe: each pair is read fully
// before it is written.
static void rope_rotate(float *out, const float *inp, int N, int T, int nh, int hd, float theta,
                        float sign) {
    CHECK(N >= 0 && T > 0 && nh > 0 && hd > 0, "rope: bad shape N=%d T=%d nh=%d hd=%d", N, T, nh,
          hd);
    CHECK(hd % 2 == 0, "rope: head size %d must be even (pairs i, i + hd/2)", hd);
    CHECK(theta > 0.0f, "rope: theta must be positive, got %g", (double)theta);
    int half = hd / 2;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        int t = n % T;
        for (int i = 0; i < half; i++) {
            // The angle in double: t · theta^(−2i/hd) reaches thousands of radians for long
            // sequences, where float would lose the phase.
            double ang = (double)t * pow((double)theta, -2.0 * i / hd);
            float c = (float)cos(ang), s = sign * (float)sin(ang);
            for (int h = 0; h < nh; h++) {
                size_t o = ((size_t)n * nh + h) * hd + i;
                float x1 = inp[o], x2 = inp[o + half];
                out[o] = x1 * c - x2 * s;
                out[o + half] = x2 * c + x1 * s;
            }
        }
    }
}

void rope_forward(float *out, const float *inp, int N, int T, int nh, int hd, float theta) {
    rope_rotate(out, inp, N, T, nh, hd, theta, 1.0f);
}

void rope_backward_input(float *dinp, const float *dout, int N, int T, int nh, int hd,
                         float theta) {
    rope_rotate(dinp, dout, N, T, nh, hd, theta, -1.0f);
}
