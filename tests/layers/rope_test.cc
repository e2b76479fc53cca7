// layers/rope: the rotation against a double-precision formula (also at long positions), position
// 0 is the identity, norms are preserved, rows wrap at T, in-place use, the backward against
// finite differences and as the inverse rotation, written (not added) and in place, and an odd
// head size.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/rope.h"
}

namespace {

const int T = 5, N = 2 * T, nh = 3, hd = 8;
const float theta = 10000.0f;

std::vector<double> reference(const Vec &x, int n_rows, int t_len, int heads, int h_dim) {
    std::vector<double> ref(x.size());
    int half = h_dim / 2;
    for (int n = 0; n < n_rows; n++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++) {
                double ang = (n % t_len) * std::pow((double)theta, -2.0 * i / h_dim);
                size_t o = ((size_t)n * heads + h) * h_dim + i;
                double x1 = x[o], x2 = x[o + half];
                ref[o] = x1 * std::cos(ang) - x2 * std::sin(ang);
                ref[o + half] = x2 * std::cos(ang) + x1 * std::sin(ang);
            }
    return ref;
}

TEST(RoPE, ForwardMatchesReference) {
    Vec x = rand_vec(N * nh * hd, 1), out(x.size());
    rope_forward(out.data(), x.data(), N, T, nh, hd, theta);
    expect_close("out", out, reference(x, N, T, nh, hd), 1e-6);
}

TEST(RoPE, LongSequenceKeepsThePhase) {
    // At t ≈ 4000 the angle is thousands of radians: computing it in float would be off by ~1e-4.
    const int t_len = 4096, h_dim = 16;
    Vec x = rand_vec((size_t)t_len * h_dim, 2), out(x.size());
    rope_forward(out.data(), x.data(), t_len, t_len, 1, h_dim, theta);
    expect_close("out", out, reference(x, t_len, t_len, 1, h_dim), 2e-6);
}

TEST(RoPE, PositionZeroIsIdentityAndRowsWrapAtT) {
    Vec x = rand_vec(N * nh * hd, 3), out(x.size());
    // Rows n and n + T hold the same values, so they must come out the same.
    std::copy(x.begin(), x.begin() + T * nh * hd, x.begin() + T * nh * hd);
    rope_forward(out.data(), x.data(), N, T, nh, hd, theta);
    for (int i = 0; i < nh * hd; i++) {
        EXPECT_EQ(out[i], x[i]);
        EXPECT_EQ(out[T * nh * hd + i], x[i]);
    }
    for (int i = 0; i < T * nh * hd; i++) EXPECT_EQ(out[i], out[T * nh * hd + i]);
}

TEST(RoPE, PreservesPairNorms) {
    Vec x = rand_vec(N * nh * hd, 4), out(x.size());
    rope_forward(out.data(), x.data(), N, T, nh, hd, theta);
    for (int r = 0; r < N * nh; r++)
        for (int i = 0; i < hd / 2; i++) {
            size_t o = (size_t)r * hd + i;
            double a = std::hypot(x[o], x[o + hd / 2]), b = std::hypot(out[o], out[o + hd / 2]);
            EXPECT_NEAR(a, b, 1e-6 * (1.0 + a));
        }
}

TEST(RoPE, InPlaceEqualsOutOfPlace) {
    Vec x = rand_vec(N * nh * hd, 5), out(x.size());
    rope_forward(out.data(), x.data(), N, T, nh, hd, theta);
    rope_forward(x.data(), x.data(), N, T, nh, hd, theta);
    EXPECT_TRUE(bit_equal(out, x));
}

TEST(RoPE, BackwardMatchesFiniteDifferences) {
    Vec x = rand_vec(N * nh * hd, 6), R = rand_vec(x.size(), 7), out(x.size()), dx(x.size());
    auto L = [&] {
        rope_forward(out.data(), x.data(), N, T, nh, hd, theta);
        return objective(out, R);
    };
    rope_backward_input(dx.data(), R.data(), N, T, nh, hd, theta);
    expect_grad("dinp", dx.data(), fd_grad(x, 1e-2, L), 1e-3);
}

TEST(RoPE, BackwardIsInverseAndWrites) {
    // The backward writes its output without reading it: a NaN-filled dinp must not leak through,
    // and a second call gives the same values, not twice them.
    Vec x = rand_vec(N * nh * hd, 8), y(x.size()), back(x.size(), NAN);
    rope_forward(y.data(), x.data(), N, T, nh, hd, theta);
    rope_backward_input(back.data(), y.data(), N, T, nh, hd, theta);
    for (size_t i = 0; i < x.size(); i++) EXPECT_NEAR(back[i], x[i], 1e-6);
    Vec again = back;
    rope_backward_input(again.data(), y.data(), N, T, nh, hd, theta);
    EXPECT_TRUE(bit_equal(again, back));
}

TEST(RoPE, BackwardInPlaceEqualsOutOfPlace) {
    // The engine turns the gradients of the rotated q and k back in place.
    Vec dy = rand_vec(N * nh * hd, 9), dx(dy.size());
    rope_backward_input(dx.data(), dy.data(), N, T, nh, hd, theta);
    rope_backward_input(dy.data(), dy.data(), N, T, nh, hd, theta);
    EXPECT_TRUE(bit_equal(dx, dy));
}

TEST(RoPEDeath, OddHeadSize) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec x(2 * 7), out(x.size());
    EXPECT_EXIT(rope_forward(out.data(), x.data(), 2, 2, 1, 7, theta), ::testing::ExitedWithCode(1),
                "rope: head size 7 must be even");
}

}  // namespace
