// layers/rope: the rotation against a double-precision formula (also at long positions), position
// 0 is the identity, norms are preserved, rows wrap at T, in-place use, the backward against
// finite differences and as the inverse rotation, written (not added) and in place, rows at
// strides other than their width (bit-equal to the plain call, nothing written between rows), and
// the bad shapes (an odd head size, a stride shorter than a row, head-major rows that are not
// whole sequences); the head-major layout attention reads (the rows' bits reordered, both ways),
// and rope_copy, which moves v and dv between that layout and the stacked q, k, v rows.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/ops.h"
#include "layers/rope.h"
}

namespace {

const int T = 5, N = 2 * T, nh = 3, hd = 8, W = nh * hd;  // W: a row's elements
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
    rope_forward(out.data(), W, x.data(), W, N, T, nh, hd, theta);
    expect_close("out", out, reference(x, N, T, nh, hd), 1e-6);
}

TEST(RoPE, LongSequenceKeepsThePhase) {
    // At t ≈ 4000 the angle is thousands of radians: computing it in float would be off by ~1e-4.
    const int t_len = 4096, h_dim = 16;
    Vec x = rand_vec((size_t)t_len * h_dim, 2), out(x.size());
    rope_forward(out.data(), h_dim, x.data(), h_dim, t_len, t_len, 1, h_dim, theta);
    expect_close("out", out, reference(x, t_len, t_len, 1, h_dim), 2e-6);
}

TEST(RoPE, PositionZeroIsIdentityAndRowsWrapAtT) {
    Vec x = rand_vec(N * nh * hd, 3), out(x.size());
    // Rows n and n + T hold the same values, so they must come out the same.
    std::copy(x.begin(), x.begin() + T * nh * hd, x.begin() + T * nh * hd);
    rope_forward(out.data(), W, x.data(), W, N, T, nh, hd, theta);
    for (int i = 0; i < nh * hd; i++) {
        EXPECT_EQ(out[i], x[i]);
        EXPECT_EQ(out[T * nh * hd + i], x[i]);
    }
    for (int i = 0; i < T * nh * hd; i++) EXPECT_EQ(out[i], out[T * nh * hd + i]);
}

TEST(RoPE, PreservesPairNorms) {
    Vec x = rand_vec(N * nh * hd, 4), out(x.size());
    rope_forward(out.data(), W, x.data(), W, N, T, nh, hd, theta);
    for (int r = 0; r < N * nh; r++)
        for (int i = 0; i < hd / 2; i++) {
            size_t o = (size_t)r * hd + i;
            double a = std::hypot(x[o], x[o + hd / 2]), b = std::hypot(out[o], out[o + hd / 2]);
            EXPECT_NEAR(a, b, 1e-6 * (1.0 + a));
        }
}

TEST(RoPE, InPlaceEqualsOutOfPlace) {
    Vec x = rand_vec(N * nh * hd, 5), out(x.size());
    rope_forward(out.data(), W, x.data(), W, N, T, nh, hd, theta);
    rope_forward(x.data(), W, x.data(), W, N, T, nh, hd, theta);
    EXPECT_TRUE(bit_equal(out, x));
}

TEST(RoPE, BackwardMatchesFiniteDifferences) {
    Vec x = rand_vec(N * nh * hd, 6), R = rand_vec(x.size(), 7), out(x.size()), dx(x.size());
    auto L = [&] {
        rope_forward(out.data(), W, x.data(), W, N, T, nh, hd, theta);
        return objective(out, R);
    };
    rope_backward_input(dx.data(), W, R.data(), W, N, T, nh, hd, theta);
    expect_grad("dinp", dx.data(), fd_grad(x, 1e-2, L), 1e-3);
}

TEST(RoPE, BackwardIsInverseAndWrites) {
    // The backward writes its output without reading it: a NaN-filled dinp must not leak through,
    // and a second call gives the same values, not twice them.
    Vec x = rand_vec(N * nh * hd, 8), y(x.size()), back(x.size(), NAN);
    rope_forward(y.data(), W, x.data(), W, N, T, nh, hd, theta);
    rope_backward_input(back.data(), W, y.data(), W, N, T, nh, hd, theta);
    for (size_t i = 0; i < x.size(); i++) EXPECT_NEAR(back[i], x[i], 1e-6);
    Vec again = back;
    rope_backward_input(again.data(), W, y.data(), W, N, T, nh, hd, theta);
    EXPECT_TRUE(bit_equal(again, back));
}

TEST(RoPE, BackwardInPlaceEqualsOutOfPlace) {
    // In place (one stride) is allowed, and the same as out of place.
    Vec dy = rand_vec(N * nh * hd, 9), dx(dy.size());
    rope_backward_input(dx.data(), W, dy.data(), W, N, T, nh, hd, theta);
    rope_backward_input(dy.data(), W, dy.data(), W, N, T, nh, hd, theta);
    EXPECT_TRUE(bit_equal(dx, dy));
}

// n rows of `width` values at stride ld from column `col` of a buffer filled with `fill` (padding
// both sides, so that a call that touches it shows), and back.
Vec spread(const Vec &x, int n, int width, int ld, int col, float fill) {
    Vec y((size_t)n * ld + col, fill);
    for (int r = 0; r < n; r++)
        std::copy(x.begin() + (size_t)r * width, x.begin() + (size_t)(r + 1) * width,
                  y.begin() + (size_t)r * ld + col);
    return y;
}
Vec gather(const Vec &y, int n, int width, int ld, int col) {
    Vec x((size_t)n * width);
    for (int r = 0; r < n; r++)
        std::copy(y.begin() + (size_t)r * ld + col, y.begin() + (size_t)r * ld + col + width,
                  x.begin() + (size_t)r * width);
    return x;
}

TEST(RoPE, StridedRowsEqualTheUnstridedCall) {
    // The engine reads q and k out of the stacked (N, qd + 2·kd) projection rows and writes the
    // gradients back into such rows: strides above the width, in and out, other than each other.
    // Each pass must give the bits of the plain call and leave every element between rows alone.
    const int in_ld = W + 7, in_col = 3, out_ld = W + 12, out_col = 5;
    for (int backward = 0; backward < 2; backward++) {
        auto call = backward ? rope_backward_input : rope_forward;
        Vec x = rand_vec(N * W, 10 + backward), want(x.size());
        call(want.data(), W, x.data(), W, N, T, nh, hd, theta);
        Vec xs = spread(x, N, W, in_ld, in_col, 7.0f), xs0 = xs;
        Vec ys((size_t)N * out_ld + out_col, -3.0f);
        call(ys.data() + out_col, out_ld, xs.data() + in_col, in_ld, N, T, nh, hd, theta);
        EXPECT_TRUE(bit_equal(gather(ys, N, W, out_ld, out_col), want)) << "backward " << backward;
        EXPECT_TRUE(bit_equal(xs, xs0)) << "the input changed";
        Vec pad = spread(gather(ys, N, W, out_ld, out_col), N, W, out_ld, out_col, -3.0f);
        EXPECT_TRUE(bit_equal(ys, pad)) << "an element between the rows was written";
        // Strided in, plain out and plain in, strided out: the engine's two uses.
        Vec y1(x.size());
        call(y1.data(), W, xs.data() + in_col, in_ld, N, T, nh, hd, theta);
        EXPECT_TRUE(bit_equal(y1, want));
        Vec y2((size_t)N * out_ld + out_col, -3.0f);
        call(y2.data() + out_col, out_ld, x.data(), W, N, T, nh, hd, theta);
        EXPECT_TRUE(bit_equal(y2, ys));
    }
}

// x (N rows of nh heads at stride ld, from element col) in the head-major layout (N / T, nh, T, hd).
Vec to_heads(const Vec &x, int ld, int col) {
    Vec y((size_t)N * W);
    for (int n = 0; n < N; n++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < hd; i++)
                y[(((size_t)(n / T) * nh + h) * T + n % T) * hd + i] = x[(size_t)n * ld + col + h * hd + i];
    return y;
}

TEST(RoPE, HeadMajorIsTheRowsRotationReordered) {
    // The engine's two uses: forward from the stacked rows into the head-major tensors attention
    // reads, backward from head-major gradients into the stacked rows. The bits of the rows call,
    // reordered; the input untouched and nothing written between the rows.
    const int ld = W + 7, col = 3;
    Vec x = rand_vec(N * W, 13), want(x.size());
    rope_forward(want.data(), W, x.data(), W, N, T, nh, hd, theta);
    Vec xs = spread(x, N, W, ld, col, 7.0f), xs0 = xs, y(x.size());
    rope_forward(y.data(), ROPE_HEADS, xs.data() + col, ld, N, T, nh, hd, theta);
    EXPECT_TRUE(bit_equal(y, to_heads(want, W, 0)));
    EXPECT_TRUE(bit_equal(xs, xs0)) << "the input changed";

    Vec dy = rand_vec(N * W, 14), dwant(dy.size());
    rope_backward_input(dwant.data(), W, dy.data(), W, N, T, nh, hd, theta);
    Vec dys = to_heads(dy, W, 0), dx((size_t)N * ld + col, -3.0f);
    rope_backward_input(dx.data() + col, ld, dys.data(), ROPE_HEADS, N, T, nh, hd, theta);
    EXPECT_TRUE(bit_equal(dx, spread(dwant, N, W, ld, col, -3.0f)));
}

TEST(RoPE, CopyMovesTheBitsUnrotated) {
    // v's way into the head-major layout and its gradient's way back (the ops table's rope_copy):
    // exact, every element where the layout puts it, nothing else written.
    const int ld = W + 5, col = 2;
    Vec x = rand_vec(N * W, 15);
    x[4] = -0.0f;  // the sign of zero survives too
    Vec xs = spread(x, N, W, ld, col, 9.0f), heads(x.size(), NAN);
    layer_ops_cpu.rope_copy(heads.data(), ROPE_HEADS, xs.data() + col, ld, N, T, nh, hd);
    EXPECT_TRUE(bit_equal(heads, to_heads(x, W, 0)));
    Vec back((size_t)N * ld + col, -1.0f);
    layer_ops_cpu.rope_copy(back.data() + col, ld, heads.data(), ROPE_HEADS, N, T, nh, hd);
    EXPECT_TRUE(bit_equal(back, spread(x, N, W, ld, col, -1.0f)));
    layer_ops_cpu.rope_copy(back.data(), ld, heads.data(), ROPE_HEADS, 0, T, nh, hd);  // no rows
    EXPECT_TRUE(bit_equal(back, spread(x, N, W, ld, col, -1.0f)));
}

TEST(RoPEDeath, HeadMajorRowsThatAreNotWholeSequences) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec x(N * W), out(x.size());
    EXPECT_EXIT(rope_forward(out.data(), ROPE_HEADS, x.data(), W, N - 1, T, nh, hd, theta),
                ::testing::ExitedWithCode(1),
                "rope: head-major rows must be whole sequences: N=9 is not a multiple of T=5");
    EXPECT_EXIT(rope_copy(out.data(), W, x.data(), ROPE_HEADS, 3, T, nh, hd),
                ::testing::ExitedWithCode(1), "N=3 is not a multiple of T=5");
}

TEST(RoPEDeath, StrideShorterThanARow) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec x(N * W), out(x.size());
    EXPECT_EXIT(rope_forward(out.data(), W, x.data(), W - 1, N, T, nh, hd, theta),
                ::testing::ExitedWithCode(1),
                "rope: row strides 23 \\(in\\) and 24 \\(out\\) must each be at least the row's 24 "
                "elements, or ROPE_HEADS \\(0, head-major\\)");
    EXPECT_EXIT(rope_backward_input(out.data(), W - 2, x.data(), W, N, T, nh, hd, theta),
                ::testing::ExitedWithCode(1), "rope: row strides 24 \\(in\\) and 22 \\(out\\)");
}

TEST(RoPEDeath, OddHeadSize) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec x(2 * 7), out(x.size());
    EXPECT_EXIT(rope_forward(out.data(), 7, x.data(), 7, 2, 2, 1, 7, theta), ::testing::ExitedWithCode(1),
                "rope: head size 7 must be even");
}

}  // namespace
