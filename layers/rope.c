// Rotary position embedding on the CPU ("rotate half"): element i of a head pairs with i + hd/2 and
// the pair turns by angle t · theta^(−2i/hd). The backward is the inverse rotation of the gradient
// (written, not added; in place allowed). Rows are read and written in layouts of their own: at a
// stride, or head-major (rope.h).
#include "layers/rope.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

void rope_check(int out_ld, int inp_ld, int N, int T, int nh, int hd, float theta) {
    CHECK(N >= 0 && T > 0 && nh > 0 && hd > 0, "rope: bad shape N=%d T=%d nh=%d hd=%d", N, T, nh,
          hd);
    CHECK(hd % 2 == 0, "rope: head size %d must be even (pairs i, i + hd/2)", hd);
    CHECK(theta > 0.0f, "rope: theta must be positive, got %g", (double)theta);
    CHECK((inp_ld == ROPE_HEADS || inp_ld >= nh * hd) && (out_ld == ROPE_HEADS || out_ld >= nh * hd),
          "rope: row strides %d (in) and %d (out) must each be at least the row's %d elements, or "
          "ROPE_HEADS (0, head-major)", inp_ld, out_ld, nh * hd);
    CHECK((inp_ld != ROPE_HEADS && out_ld != ROPE_HEADS) || N % T == 0,
          "rope: head-major rows must be whole sequences: N=%d is not a multiple of T=%d", N, T);
}

RopeLayout rope_layout(int ld, int T, int nh, int hd) {
    if (ld != ROPE_HEADS) return (RopeLayout){(long)T * ld, ld, hd};
    return (RopeLayout){(long)nh * T * hd, hd, (long)T * hd};
}

// (P, hd): for each position t < P and pair i, cos(t · theta^(−2i/hd)) at column i and the sine at
// column hd/2 + i. Once per position, not once per sequence (pow and sincos were 3.4 % of the CPU
// quickstart's step). The angle in double: it reaches thousands of radians for long sequences,
// where float would lose the phase.
static float *rope_table(int P, int hd, float theta) {
    const int half = hd / 2;
    float *rot = core_alloc((size_t)P * hd * sizeof(float));
#pragma omp parallel for
    for (int t = 0; t < P; t++)
        for (int i = 0; i < half; i++) {
            const double ang = (double)t * pow((double)theta, -2.0 * i / hd);
            rot[(size_t)t * hd + i] = (float)cos(ang);
            rot[(size_t)t * hd + half + i] = (float)sin(ang);
        }
    return rot;
}

// Turns every pair of inp (N rows of nh heads) by +angle (sign = 1) or −angle (sign = −1), or
// copies it (sign = 0), into out, each in its layout (rope.h). In-place use (out == inp, one
// layout) is safe: each pair is read fully before it is written.
static void rope_rotate(float *out, int out_ld, const float *inp, int inp_ld, int N, int T, int nh,
                        int hd, float theta, float sign) {
    rope_check(out_ld, inp_ld, N, T, nh, hd, theta);
    const RopeLayout lo = rope_layout(out_ld, T, nh, hd), li = rope_layout(inp_ld, T, nh, hd);
    const int half = hd / 2;
    float *rot = sign != 0.0f ? rope_table(N < T ? N : T, hd, theta) : NULL;  // t = n % T < P
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const long xo = n / T * li.seq + n % T * li.row, yo = n / T * lo.seq + n % T * lo.row;
        for (int h = 0; h < nh; h++) {
            const float *x = inp + xo + h * li.head;
            float *y = out + yo + h * lo.head;
            if (!rot) {  // a copy: the bits as they are
                memmove(y, x, (size_t)hd * sizeof(float));
                continue;
            }
            const float *r = rot + (size_t)(n % T) * hd;
            for (int i = 0; i < half; i++) {
                const float c = r[i], s = sign * r[half + i], x1 = x[i], x2 = x[i + half];
                y[i] = x1 * c - x2 * s;
                y[i + half] = x2 * c + x1 * s;
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

void rope_copy(float *out, int out_ld, const float *inp, int inp_ld, int N, int T, int nh, int hd) {
    rope_rotate(out, out_ld, inp, inp_ld, N, T, nh, hd, 1.0f, 0.0f);
}
