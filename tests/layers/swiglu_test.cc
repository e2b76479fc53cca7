// layers/swiglu: the gate and the whole FFN against double-precision loops, every backward
// against finite differences, accumulation (dx, dw: +=; acts->da, db: =), saturated gates, zero
// rows.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/swiglu.h"
}

namespace {

const int N = 5, D = 7, F = 9;

double silu(double a) { return a / (1.0 + std::exp(-a)); }

// The activations and scratch of one FFN call, owned by the test.
struct Acts {
    Vec a, b, h, da, db, dh;
    SwigluActs s;
    explicit Acts(int n) : a(n * F), b(n * F), h(n * F), da(n * F), db(n * F), dh(n * F) {
        s = SwigluActs{a.data(), b.data(), h.data(), da.data(), db.data()};
    }
};

struct Weights {
    Vec w1 = rand_vec(F * D, 101), w3 = rand_vec(F * D, 102), w2 = rand_vec(D * F, 103);
};

TEST(SwiGLU, GateMatchesReference) {
    const long n = 50;
    Vec a = rand_vec(n, 1, 6.0f), b = rand_vec(n, 2), h(n);
    swiglu_act_forward(h.data(), a.data(), b.data(), n);
    std::vector<double> ref(n);
    for (long i = 0; i < n; i++) ref[i] = silu(a[i]) * b[i];
    expect_close("h", h, ref, 1e-6);
}

TEST(SwiGLU, GateBackwardMatchesFiniteDifferences) {
    const long n = 40;
    Vec a = rand_vec(n, 3, 4.0f), b = rand_vec(n, 4), R = rand_vec(n, 5), h(n), da(n), db(n);
    auto L = [&] {
        swiglu_act_forward(h.data(), a.data(), b.data(), n);
        return objective(h, R);
    };
    Vec dh = R;  // the backward leaves h in it
    swiglu_act_backward(da.data(), db.data(), dh.data(), a.data(), b.data(), n);
    expect_grad("da", da.data(), fd_grad(a, 1e-3, L), 1e-3);
    expect_grad("db", db.data(), fd_grad(b, 1e-2, L), 1e-3);
    // dh now holds the forward's h, to the bit (the W2 weight gradient reads it).
    swiglu_act_forward(h.data(), a.data(), b.data(), n);
    EXPECT_TRUE(bit_equal(dh, h));
}

// The row-dot variant (the MoE layer's routed experts): the same da and db to the bit, and s[r] =
// Σ_f dh·h over each row of F.
TEST(SwiGLU, GateBackwardDotMatchesGateBackwardAndRowDots) {
    const long rows = 6;
    const long n = rows * F;
    Vec a = rand_vec(n, 11, 4.0f), b = rand_vec(n, 12), dh = rand_vec(n, 13), da(n), db(n);
    Vec da2(n, NAN), db2(n, NAN), s(rows, NAN), h1 = dh, h2 = dh;  // each call leaves h in its dh
    swiglu_act_backward(da.data(), db.data(), h1.data(), a.data(), b.data(), n);
    swiglu_act_backward_dot(da2.data(), db2.data(), s.data(), h2.data(), a.data(), b.data(), rows, F);
    EXPECT_TRUE(bit_equal(da2, da));
    EXPECT_TRUE(bit_equal(db2, db));
    EXPECT_TRUE(bit_equal(h2, h1));
    std::vector<double> ref(rows, 0.0);
    for (long i = 0; i < n; i++) ref[i / F] += (double)dh[i] * silu(a[i]) * b[i];
    expect_close("s", s, ref, 1e-6);
}

TEST(SwiGLU, SaturatedGateStaysFinite) {
    Vec a = {-200.0f, -80.0f, 80.0f, 200.0f}, b(4, 1.0f), h(4), da(4), db(4), dh(4, 1.0f);
    swiglu_act_forward(h.data(), a.data(), b.data(), 4);
    swiglu_act_backward(da.data(), db.data(), dh.data(), a.data(), b.data(), 4);
    for (int i = 0; i < 4; i++) {
        EXPECT_NEAR(h[i], a[i] > 0 ? a[i] : 0.0f, 1e-6f);
        EXPECT_NEAR(da[i], a[i] > 0 ? 1.0f : 0.0f, 1e-6f);
        EXPECT_NEAR(db[i], a[i] > 0 ? a[i] : 0.0f, 1e-6f);
    }
}

TEST(SwiGLU, ForwardMatchesReference) {
    Weights w;
    Acts acts(N);
    Vec x = rand_vec(N * D, 6), out(N * D);
    swiglu_forward(out.data(), &acts.s, x.data(), w.w1.data(), w.w3.data(), w.w2.data(), N, D, F);
    std::vector<double> ref(N * D, 0.0);
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            double a = 0.0, b = 0.0;
            for (int d = 0; d < D; d++) {
                a += (double)w.w1[f * D + d] * x[n * D + d];
                b += (double)w.w3[f * D + d] * x[n * D + d];
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
        swiglu_forward(out.data(), &acts.s, x.data(), w.w1.data(), w.w3.data(), w.w2.data(), N, D,
                       F);
        return objective(out, R);
    };
    L();
    Vec dx(N * D), dw1(F * D), dw3(F * D), dw2(D * F);
    swiglu_backward_input(dx.data(), &acts.s, acts.dh.data(), R.data(), w.w1.data(), w.w3.data(),
                          w.w2.data(), N, D, F);
    swiglu_backward_weight(dw1.data(), dw3.data(), dw2.data(), &acts.s, x.data(), R.data(), N, D,
                           F);
    expect_grad("dx", dx.data(), fd_grad(x, 1e-2, L), 1e-3);
    expect_grad("dw1", dw1.data(), fd_grad(w.w1, 1e-2, L), 1e-3);
    expect_grad("dw3", dw3.data(), fd_grad(w.w3, 1e-2, L), 1e-3);
    expect_grad("dw2", dw2.data(), fd_grad(w.w2, 1e-2, L), 1e-3);
}

TEST(SwiGLU, BackwardAccumulatesGradientsButRewritesActs) {
    Weights w;
    Acts acts(N);
    Vec x = rand_vec(N * D, 9), dout = rand_vec(N * D, 10), out(N * D);
    swiglu_forward(out.data(), &acts.s, x.data(), w.w1.data(), w.w3.data(), w.w2.data(), N, D, F);
    Vec dx1(N * D), dw1(F * D), dw3(F * D), dw2(D * F);
    swiglu_backward_input(dx1.data(), &acts.s, acts.dh.data(), dout.data(), w.w1.data(),
                          w.w3.data(), w.w2.data(), N, D, F);
    swiglu_backward_weight(dw1.data(), dw3.data(), dw2.data(), &acts.s, x.data(), dout.data(), N, D,
                           F);
    Vec da1 = acts.da, db1 = acts.db;
    Vec dx2(N * D), dw1b(F * D), dw3b(F * D), dw2b(D * F);
    for (int r = 0; r < 2; r++) {
        swiglu_backward_input(dx2.data(), &acts.s, acts.dh.data(), dout.data(), w.w1.data(),
                              w.w3.data(), w.w2.data(), N, D, F);
        swiglu_backward_weight(dw1b.data(), dw3b.data(), dw2b.data(), &acts.s, x.data(),
                               dout.data(), N, D, F);
    }
    EXPECT_TRUE(bit_equal(acts.da, da1));
    EXPECT_TRUE(bit_equal(acts.db, db1));
    for (int i = 0; i < N * D; i++) EXPECT_FLOAT_EQ(dx2[i], 2.0f * dx1[i]);
    for (int i = 0; i < F * D; i++) EXPECT_FLOAT_EQ(dw1b[i], 2.0f * dw1[i]);
    for (int i = 0; i < F * D; i++) EXPECT_FLOAT_EQ(dw3b[i], 2.0f * dw3[i]);
    for (int i = 0; i < D * F; i++) EXPECT_FLOAT_EQ(dw2b[i], 2.0f * dw2[i]);
}

TEST(SwiGLU, ZeroRowsIsANoOp) {
    // An expert that received no tokens: N = 0 and no row buffers at all.
    Weights w;
    SwigluActs none = {nullptr, nullptr, nullptr, nullptr, nullptr};
    Vec dw1(F * D, 1.0f), dw3(F * D, 1.0f), dw2(D * F, 1.0f);
    swiglu_forward(nullptr, &none, nullptr, w.w1.data(), w.w3.data(), w.w2.data(), 0, D, F);
    swiglu_backward_input(nullptr, &none, nullptr, nullptr, w.w1.data(), w.w3.data(), w.w2.data(),
                          0, D, F);
    swiglu_backward_weight(dw1.data(), dw3.data(), dw2.data(), &none, nullptr, nullptr, 0, D, F);
    for (float g : dw1) EXPECT_EQ(g, 1.0f);
    for (float g : dw2) EXPECT_EQ(g, 1.0f);
}

}  // namespace
