// layers/swiglu: the gate and the whole FFN against double-precision loops, every backward
// against finite differences, accumulation (dx, dw: +=; acts->dab: =), saturated gates, zero
// rows. W1 and W3 are the halves of one (2F, D) matrix, a and b the halves of each (2F) row.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/swiglu.h"
}

namespace {

const int N = 5, D = 7, F = 9;

double silu(double a) { return a / (1.0 + std::exp(-a)); }

// The activations and scratch of one FFN call, owned by the test.
struct Acts {
    Vec ab, h, dab, dh;
    SwigluActs s;
    explicit Acts(int n) : ab(n * 2 * F), h(n * F), dab(n * 2 * F), dh(n * F) {
        s = SwigluActs{ab.data(), h.data(), dab.data()};
    }
};

struct Weights {
    Vec w13 = rand_vec(2 * F * D, 101), w2 = rand_vec(D * F, 103);
};

// rows rows of [a | b], a of scale sa (to reach the gate's tails), b of scale 1.
Vec rows_ab(long rows, uint32_t seed, float sa) {
    Vec a = rand_vec(rows * F, seed, sa), b = rand_vec(rows * F, seed + 1), ab(rows * 2 * F);
    for (long r = 0; r < rows; r++)
        for (int f = 0; f < F; f++) ab[r * 2 * F + f] = a[r * F + f], ab[r * 2 * F + F + f] = b[r * F + f];
    return ab;
}

TEST(SwiGLU, GateMatchesReference) {
    const long rows = 6;
    Vec ab = rows_ab(rows, 1, 6.0f), h(rows * F);
    swiglu_act_forward(h.data(), ab.data(), rows, F);
    std::vector<double> ref(rows * F);
    for (long r = 0; r < rows; r++)
        for (int f = 0; f < F; f++) ref[r * F + f] = silu(ab[r * 2 * F + f]) * ab[r * 2 * F + F + f];
    expect_close("h", h, ref, 1e-6);
}

// dab against finite differences of both halves, dh left holding the forward's h to the bit (the
// W2 weight gradient reads it), and the row dots s[r] = Σ_f dh·h; without s the same bits.
TEST(SwiGLU, GateBackwardMatchesFiniteDifferencesAndRowDots) {
    const long rows = 5;
    Vec ab = rows_ab(rows, 3, 4.0f), R = rand_vec(rows * F, 5), h(rows * F), dab(rows * 2 * F, NAN);
    auto L = [&] {
        swiglu_act_forward(h.data(), ab.data(), rows, F);
        return objective(h, R);
    };
    Vec dh = R, s(rows, NAN);
    swiglu_act_backward(dab.data(), s.data(), dh.data(), ab.data(), rows, F);
    expect_grad("dab", dab.data(), fd_grad(ab, 1e-3, L), 1e-3);
    swiglu_act_forward(h.data(), ab.data(), rows, F);
    EXPECT_TRUE(bit_equal(dh, h));
    std::vector<double> ref(rows, 0.0);
    for (long r = 0; r < rows; r++)
        for (int f = 0; f < F; f++) ref[r] += (double)R[r * F + f] * silu(ab[r * 2 * F + f]) * ab[r * 2 * F + F + f];
    expect_close("s", s, ref, 1e-6);
    Vec dab2(dab.size(), NAN), dh2 = R;
    swiglu_act_backward(dab2.data(), nullptr, dh2.data(), ab.data(), rows, F);
    EXPECT_TRUE(bit_equal(dab2, dab));
    EXPECT_TRUE(bit_equal(dh2, dh));
}

TEST(SwiGLU, SaturatedGateStaysFinite) {
    const float a[4] = {-200.0f, -80.0f, 80.0f, 200.0f};
    Vec ab(4 * 2 * F, 1.0f), h(4 * F), dab(4 * 2 * F), dh(4 * F, 1.0f);
    for (int r = 0; r < 4; r++)
        for (int f = 0; f < F; f++) ab[r * 2 * F + f] = a[r];
    swiglu_act_forward(h.data(), ab.data(), 4, F);
    swiglu_act_backward(dab.data(), nullptr, dh.data(), ab.data(), 4, F);
    for (int r = 0; r < 4; r++) {
        EXPECT_NEAR(h[r * F], a[r] > 0 ? a[r] : 0.0f, 1e-6f);
        EXPECT_NEAR(dab[r * 2 * F], a[r] > 0 ? 1.0f : 0.0f, 1e-6f);
        EXPECT_NEAR(dab[r * 2 * F + F], a[r] > 0 ? a[r] : 0.0f, 1e-6f);
    }
}

TEST(SwiGLU, ForwardMatchesReference) {
    Weights w;
    Acts acts(N);
    Vec x = rand_vec(N * D, 6), out(N * D);
    swiglu_forward(out.data(), &acts.s, x.data(), w.w13.data(), w.w2.data(), N, D, F);
    std::vector<double> ref(N * D, 0.0);
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            double a = 0.0, b = 0.0;
            for (int d = 0; d < D; d++) {
                a += (double)w.w13[f * D + d] * x[n * D + d];        // W1: the first F rows
                b += (double)w.w13[(F + f) * D + d] * x[n * D + d];  // W3: the last F rows
            }
            for (int d = 0; d < D; d++) ref[n * D + d] += w.w2[d * F + f] * silu(a) * b;
        }
    expect_close("out", out, ref, 1e-5);
}

TEST(SwiGLU, BackwardMatchesFiniteDifferences) {
    Weights w;
    Acts acts(N);
    Vec x = rand_vec(N * D, 7), R = rand_vec(N * D, 8), out(N * D);
    auto L = [&] {
        swiglu_forward(out.data(), &acts.s, x.data(), w.w13.data(), w.w2.data(), N, D, F);
        return objective(out, R);
    };
    L();
    Vec dx(N * D), dw13(2 * F * D), dw2(D * F);
    swiglu_backward_input(dx.data(), &acts.s, acts.dh.data(), R.data(), w.w13.data(), w.w2.data(), N, D, F);
    swiglu_backward_weight(dw13.data(), dw2.data(), &acts.s, x.data(), R.data(), N, D, F);
    expect_grad("dx", dx.data(), fd_grad(x, 1e-2, L), 1e-3);
    expect_grad("dw13", dw13.data(), fd_grad(w.w13, 1e-2, L), 1e-3);
    expect_grad("dw2", dw2.data(), fd_grad(w.w2, 1e-2, L), 1e-3);
}

TEST(SwiGLU, BackwardAccumulatesGradientsButRewritesActs) {
    Weights w;
    Acts acts(N);
    Vec x = rand_vec(N * D, 9), dout = rand_vec(N * D, 10), out(N * D);
    swiglu_forward(out.data(), &acts.s, x.data(), w.w13.data(), w.w2.data(), N, D, F);
    Vec dx1(N * D), dw13(2 * F * D), dw2(D * F);
    swiglu_backward_input(dx1.data(), &acts.s, acts.dh.data(), dout.data(), w.w13.data(), w.w2.data(), N, D, F);
    swiglu_backward_weight(dw13.data(), dw2.data(), &acts.s, x.data(), dout.data(), N, D, F);
    Vec dab1 = acts.dab;
    Vec dx2(N * D), dw13b(2 * F * D), dw2b(D * F);
    for (int r = 0; r < 2; r++) {
        swiglu_backward_input(dx2.data(), &acts.s, acts.dh.data(), dout.data(), w.w13.data(), w.w2.data(), N, D,
                              F);
        swiglu_backward_weight(dw13b.data(), dw2b.data(), &acts.s, x.data(), dout.data(), N, D, F);
    }
    EXPECT_TRUE(bit_equal(acts.dab, dab1));
    for (int i = 0; i < N * D; i++) EXPECT_FLOAT_EQ(dx2[i], 2.0f * dx1[i]);
    for (int i = 0; i < 2 * F * D; i++) EXPECT_FLOAT_EQ(dw13b[i], 2.0f * dw13[i]);
    for (int i = 0; i < D * F; i++) EXPECT_FLOAT_EQ(dw2b[i], 2.0f * dw2[i]);
}

TEST(SwiGLU, ZeroRowsIsANoOp) {
    // An expert that received no tokens: N = 0 and no row buffers at all.
    Weights w;
    SwigluActs none = {nullptr, nullptr, nullptr};
    Vec dw13(2 * F * D, 1.0f), dw2(D * F, 1.0f);
    swiglu_forward(nullptr, &none, nullptr, w.w13.data(), w.w2.data(), 0, D, F);
    swiglu_backward_input(nullptr, &none, nullptr, nullptr, w.w13.data(), w.w2.data(), 0, D, F);
    swiglu_backward_weight(dw13.data(), dw2.data(), &none, nullptr, nullptr, 0, D, F);
    for (float g : dw13) EXPECT_EQ(g, 1.0f);
    for (float g : dw2) EXPECT_EQ(g, 1.0f);
}

}  // namespace
