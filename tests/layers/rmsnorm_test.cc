// layers/rmsnorm: forward and rstd against a double-precision loop, both backward calls against
// finite differences, accumulation, bit-identical gain gradients whatever the thread count.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/rmsnorm.h"
}

namespace {

const int N = 6, D = 10;
const float eps = 1e-5f;

TEST(RMSNorm, ForwardMatchesReference) {
    Vec x = rand_vec(N * D, 1, 3.0f), g = rand_vec(D, 2), out(N * D), rstd(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), N, D, eps);
    std::vector<double> ref(N * D), ref_rstd(N);
    for (int n = 0; n < N; n++) {
        double ms = 0.0;
        for (int d = 0; d < D; d++) ms += (double)x[n * D + d] * x[n * D + d] / D;
        ref_rstd[n] = 1.0 / std::sqrt(ms + eps);
        for (int d = 0; d < D; d++) ref[n * D + d] = x[n * D + d] * ref_rstd[n] * g[d];
    }
    expect_close("out", out, ref, 1e-6);
    expect_close("rstd", rstd, ref_rstd, 1e-6);
}

TEST(RMSNorm, BackwardMatchesFiniteDifferences) {
    Vec x = rand_vec(N * D, 3), g = rand_vec(D, 4), R = rand_vec(N * D, 5), out(N * D), rstd(N);
    auto L = [&] {
        rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), N, D, eps);
        return objective(out, R);
    };
    L();
    Vec dx(N * D), dg(D);
    rmsnorm_backward_input(dx.data(), R.data(), x.data(), g.data(), rstd.data(), N, D);
    rmsnorm_backward_weight(dg.data(), R.data(), x.data(), rstd.data(), N, D);
    expect_grad("dinp", dx.data(), fd_grad(x, 1e-3, L), 1e-3);
    expect_grad("dgain", dg.data(), fd_grad(g, 1e-2, L), 1e-3);
}

TEST(RMSNorm, BackwardAccumulates) {
    Vec x = rand_vec(N * D, 6), g = rand_vec(D, 7), dout = rand_vec(N * D, 8), out(N * D), rstd(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), N, D, eps);
    Vec dx1(N * D), dg1(D), dx2(N * D), dg2(D);
    rmsnorm_backward_input(dx1.data(), dout.data(), x.data(), g.data(), rstd.data(), N, D);
    rmsnorm_backward_weight(dg1.data(), dout.data(), x.data(), rstd.data(), N, D);
    for (int r = 0; r < 2; r++) {
        rmsnorm_backward_input(dx2.data(), dout.data(), x.data(), g.data(), rstd.data(), N, D);
        rmsnorm_backward_weight(dg2.data(), dout.data(), x.data(), rstd.data(), N, D);
    }
    for (int i = 0; i < N * D; i++) EXPECT_FLOAT_EQ(dx2[i], 2.0f * dx1[i]);
    for (int i = 0; i < D; i++) EXPECT_FLOAT_EQ(dg2[i], 2.0f * dg1[i]);
}

TEST(RMSNorm, BitIdenticalAcrossThreadCounts) {
    // D spans several column blocks of the gain gradient, with a partial last one.
    const int n = 300, d = 150;
    Vec x = rand_vec(n * d, 9), g = rand_vec(d, 10), dout = rand_vec(n * d, 11);
    Vec out[2], rstd[2], dx[2], dg[2];
    for (int r = 0; r < 2; r++) {
        out[r].assign(n * d, 0.0f), rstd[r].assign(n, 0.0f), dx[r].assign(n * d, 0.0f);
        dg[r].assign(d, 0.0f);
        with_threads(r + 1, [&] {
            rmsnorm_forward(out[r].data(), rstd[r].data(), x.data(), g.data(), n, d, eps);
            rmsnorm_backward_input(dx[r].data(), dout.data(), x.data(), g.data(), rstd[r].data(), n,
                                   d);
            rmsnorm_backward_weight(dg[r].data(), dout.data(), x.data(), rstd[r].data(), n, d);
        });
    }
    EXPECT_TRUE(bit_equal(out[0], out[1]));
    EXPECT_TRUE(bit_equal(dx[0], dx[1]));
    EXPECT_TRUE(bit_equal(dg[0], dg[1]));
}

TEST(RMSNormDeath, BadEps) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec x(D), g(D), out(D), rstd(1);
    EXPECT_EXIT(rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), 1, D, 0.0f),
                ::testing::ExitedWithCode(1), "rmsnorm: eps must be positive");
}

}  // namespace
