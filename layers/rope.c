// Rotary position embedding on the CPU ("rotate half"): element i of a head pairs with i + hd/2 and
// the pair turns by angle t · theta^(−2i/hd). The backward is the inverse rotation of the gradient
// (written, not added; in place allowed). Rows are read and written at strides of their own.
#include "layers/rope.h"

#include <math.h>
#include <stddef.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

// Rotates every pair of inp (N rows of nh·hd at inp_ld) by +angle (sign = 1) or −angle (sign = −1)
// and stores the result into out (N rows at out_ld). In-place use (out == inp, one stride) is
// safe: each pair is read fully before it is written.
void rope_check(int out_ld, int inp_ld, int N, int T, int nh, int hd, float theta) {
    CHECK(N >= 0 && T > 0 && nh > 0 && hd > 0, "rope: bad shape N=%d T=%d nh=%d hd=%d", N, T, nh,
          hd);
    CHECK(hd % 2 == 0, "rope: head size %d must be even (pairs i, i + hd/2)", hd);
    CHECK(theta > 0.0f, "rope: theta must be positive, got %g", (double)theta);
    CHECK(inp_ld >= nh * hd && out_ld >= nh * hd,
          "rope: row strides %d (in) and %d (out) must be at least the row's %d elements", inp_ld,
          out_ld, nh * hd);
}

static void rope_rotate(float *out, int out_ld, const float *inp, int inp_ld, int N, int T, int nh,
                        int hd, float theta, float sign) {
    rope_check(out_ld, inp_ld, N, T, nh, hd, theta);
    const int half = hd / 2, P = N < T ? N : T;  // the positions present: t = n % T
    // Each (position, pair)'s cosine and sine once, not once per sequence (pow and sincos were
    // 3.4 % of the CPU quickstart's step). The angle in double: t · theta^(−2i/hd) reaches
    // thousands of radians for long sequences, where float would lose the phase.
    float *rot = core_alloc((size_t)P * hd * sizeof(float));  // (P, hd): half cosines, half sines
#pragma omp parallel for
    for (int t = 0; t < P; t++)
        for (int i = 0; i < half; i++) {
            const double ang = (double)t * pow((double)theta, -2.0 * i / hd);
            rot[(size_t)t * hd + i] = (float)cos(ang);
            rot[(size_t)t * hd + half + i] = (float)sin(ang);
        }
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *r = rot + (size_t)(n % T) * hd;
        for (int i = 0; i < half; i++) {
            const float c = r[i], s = sign * r[half + i];
            for (int h = 0; h < nh; h++) {
                const size_t e = (size_t)h * hd + i;  // within the row
                const float *x = inp + (size_t)n * inp_ld + e;
                float *y = out + (size_t)n * out_ld + e;
                float x1 = x[0], x2 = x[half];
                y[0] = x1 * c - x2 * s;
                y[half] = x2 * c + x1 * s;
            }
        }
    }
    core_free(rot);
}

void rope_forward(float *out, int out_ld, const float *inp, int inp_ld, int N, int T, int nh, int hd,
                  float theta) {
    rope_rotate(out, out_ld, inp, inp_ld, N, T, nh, hd, theta, 1.0f);
}

void rope_backward_input(float *dinp, int dinp_ld, const float *dout, int dout_ld, int N, int T,
                         int nh, int hd, float theta) {
    rope_rotate(dinp, dinp_ld, dout, dout_ld, N, T, nh, hd, theta, -1.0f);
}
