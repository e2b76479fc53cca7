// layers/rmsnorm: forward and rstd against a double-precision loop, both backward calls against
// finite differences, the partial sums against per-chunk sums, the residual joined (also in
// place), outputs written not added (NaN-filled first), bit-identical results whatever the thread
// count.
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

// Backward shapes: rows spanning two full chunks of the partial sums and a partial third.
const int Nb = 2 * RMSNORM_CHUNK + 6;

// The backward of rows (n, d) into a NaN-filled dinp and fresh partials (the call writes both),
// and the gain gradient they add up to: dgain = dg0 + Σ_chunks part.
struct Backward {
    Vec dx, part, dg;
};
Backward run_backward(const Vec &x, const Vec &g, const Vec &dout, const Vec &rstd, const float *dres,
                      int n, int d, const Vec &dg0) {
    Backward b{Vec((size_t)n * d, NAN), Vec(rmsnorm_partial_floats(n, d), NAN), dg0};
    rmsnorm_backward_input(b.dx.data(), b.part.data(), dres, dout.data(), x.data(), g.data(),
                           rstd.data(), n, d);
    rmsnorm_backward_weight(b.dg.data(), b.part.data(), n, d);
    return b;
}

TEST(RMSNorm, BackwardMatchesFiniteDifferences) {
    Vec x = rand_vec(Nb * D, 3), g = rand_vec(D, 4), R = rand_vec(Nb * D, 5), out(Nb * D), rstd(Nb);
    auto L = [&] {
        rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), Nb, D, eps);
        return objective(out, R);
    };
    L();
    Backward b = run_backward(x, g, R, rstd, nullptr, Nb, D, Vec(D, 0.0f));
    expect_grad("dinp", b.dx.data(), fd_grad(x, 1e-3, L), 1e-3);
    expect_grad("dgain", b.dg.data(), fd_grad(g, 1e-2, L), 1e-3);
}

TEST(RMSNorm, PartialSumsAreTheChunksGainGradients) {
    // part row c = Σ over rows [32c, 32c + 32) of dout ⊙ x · rstd; backward_weight adds the rows
    // to dgain: the gain gradient of all the rows, as one sum over them gives it.
    Vec x = rand_vec(Nb * D, 6), g = rand_vec(D, 7), dout = rand_vec(Nb * D, 8), out(Nb * D),
        rstd(Nb), dg0 = rand_vec(D, 9);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), Nb, D, eps);
    Backward b = run_backward(x, g, dout, rstd, nullptr, Nb, D, dg0);
    const int chunks = (Nb + RMSNORM_CHUNK - 1) / RMSNORM_CHUNK;
    ASSERT_EQ(b.part.size(), (size_t)chunks * D);
    std::vector<double> ref_part((size_t)chunks * D, 0.0), ref_dg(dg0.begin(), dg0.end());
    for (int n = 0; n < Nb; n++)
        for (int d = 0; d < D; d++) {
            double t = (double)dout[n * D + d] * x[n * D + d] * rstd[n];
            ref_part[(size_t)(n / RMSNORM_CHUNK) * D + d] += t;
            ref_dg[d] += t;
        }
    expect_close("part", b.part, ref_part, 1e-6);
    expect_close("dgain", b.dg, ref_dg, 1e-6);
}

TEST(RMSNorm, ResidualJoinsTheInputGradient) {
    // dinp = dres + ∂L/∂x to the bit, whether dres is a buffer of its own or dinp itself (the
    // engine's residual path); the partial sums do not depend on dres.
    Vec x = rand_vec(Nb * D, 10), g = rand_vec(D, 11), dout = rand_vec(Nb * D, 12), out(Nb * D),
        rstd(Nb), dres = rand_vec(Nb * D, 13), dg0(D, 0.0f);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), Nb, D, eps);
    Backward none = run_backward(x, g, dout, rstd, nullptr, Nb, D, dg0);
    Backward res = run_backward(x, g, dout, rstd, dres.data(), Nb, D, dg0);
    for (int i = 0; i < Nb * D; i++) ASSERT_EQ(res.dx[i], dres[i] + none.dx[i]) << i;
    EXPECT_TRUE(bit_equal(res.part, none.part));
    Vec alias = dres, part(rmsnorm_partial_floats(Nb, D), NAN);
    rmsnorm_backward_input(alias.data(), part.data(), alias.data(), dout.data(), x.data(), g.data(),
                           rstd.data(), Nb, D);
    EXPECT_TRUE(bit_equal(alias, res.dx));
    EXPECT_TRUE(bit_equal(part, res.part));
}

TEST(RMSNorm, PartialFloats) {
    EXPECT_EQ(rmsnorm_partial_floats(0, D), 0u);
    EXPECT_EQ(rmsnorm_partial_floats(1, D), (size_t)D);
    EXPECT_EQ(rmsnorm_partial_floats(RMSNORM_CHUNK, D), (size_t)D);
    EXPECT_EQ(rmsnorm_partial_floats(RMSNORM_CHUNK + 1, D), 2u * D);
    EXPECT_EQ(rmsnorm_partial_floats(16384, 1024), (size_t)16384 / RMSNORM_CHUNK * 1024);
    // No rows: nothing written, nothing added.
    Vec dg = rand_vec(D, 14), dg0 = dg;
    rmsnorm_backward_input(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, D);
    rmsnorm_backward_weight(dg.data(), nullptr, 0, D);
    EXPECT_TRUE(bit_equal(dg, dg0));
}

TEST(RMSNorm, BitIdenticalAcrossThreadCountsAndReruns) {
    // Ten chunks, the last one partial, shared among the threads differently.
    const int n = 300, d = 150;
    Vec x = rand_vec(n * d, 15), g = rand_vec(d, 16), dout = rand_vec(n * d, 17),
        dres = rand_vec(n * d, 18), dg0 = rand_vec(d, 19);
    Vec out[3], rstd[3];
    Backward b[3];
    for (int r = 0; r < 3; r++) {
        out[r].assign(n * d, 0.0f), rstd[r].assign(n, 0.0f);
        with_threads(r == 0 ? 1 : 2, [&] {
            rmsnorm_forward(out[r].data(), rstd[r].data(), x.data(), g.data(), n, d, eps);
            b[r] = run_backward(x, g, dout, rstd[r], dres.data(), n, d, dg0);
        });
    }
    for (int r = 1; r < 3; r++) {
        EXPECT_TRUE(bit_equal(out[0], out[r]));
        EXPECT_TRUE(bit_equal(b[0].dx, b[r].dx));
        EXPECT_TRUE(bit_equal(b[0].part, b[r].part));
        EXPECT_TRUE(bit_equal(b[0].dg, b[r].dg));
    }
}

TEST(RMSNormDeath, BadEps) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec x(D), g(D), out(D), rstd(1);
    EXPECT_EXIT(rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), 1, D, 0.0f),
                ::testing::ExitedWithCode(1), "rmsnorm: eps must be positive");
}

}  // namespace
