// layers/crossentropy: losses equal −log softmax (double-precision loop), stability for huge
// logits, the backward against finite differences and its row sums, accumulation, bit-identical
// results whatever the thread count, and targets outside the vocabulary.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/crossentropy.h"
}

namespace {

const int N = 6, V = 11;
const int targets[N] = {0, 10, 3, 3, 7, 1};

TEST(CrossEntropy, LossIsMinusLogSoftmax) {
    Vec z = rand_vec(N * V, 1, 4.0f), loss(N), lse(N);
    crossentropy_forward(loss.data(), lse.data(), z.data(), targets, N, V);
    std::vector<double> ref(N), ref_lse(N);
    for (int n = 0; n < N; n++) {
        double s = 0.0;
        for (int i = 0; i < V; i++) s += std::exp((double)z[n * V + i]);
        ref_lse[n] = std::log(s);
        ref[n] = -std::log(std::exp((double)z[n * V + targets[n]]) / s);
    }
    expect_close("loss", loss, ref, 1e-6);
    expect_close("lse", lse, ref_lse, 1e-6);
}

TEST(CrossEntropy, StableForHugeLogits) {
    // exp(1000) overflows any float and exp(-1000) underflows to 0; the max-subtracted form gives the
    // same losses as the logits shifted by ±1000.
    for (const float shift : {1000.0f, -1000.0f}) {
        Vec z = rand_vec(N * V, 2, 4.0f), big = z, l1(N), l2(N), lse1(N), lse2(N);
        for (float &x : big) x += shift;
        crossentropy_forward(l1.data(), lse1.data(), z.data(), targets, N, V);
        crossentropy_forward(l2.data(), lse2.data(), big.data(), targets, N, V);
        for (int n = 0; n < N; n++) {
            EXPECT_TRUE(std::isfinite(l2[n])) << shift;
            EXPECT_NEAR(l2[n], l1[n], 1e-3) << shift;  // the shift itself rounds the logits to ~6e-5
            EXPECT_NEAR(lse2[n], lse1[n] + shift, 1e-3) << shift;
        }
        Vec dz(N * V);
        crossentropy_backward_input(dz.data(), big.data(), lse2.data(), targets, 1.0f, N, V);
        for (float g : dz) EXPECT_TRUE(std::isfinite(g)) << shift;
    }
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
    // L = dloss · Σ_n loss_n, the mean over rows when dloss = 1/N.
    const float dloss = 1.0f / N;
    Vec z = rand_vec(N * V, 3, 3.0f), loss(N), lse(N), dz(N * V);
    auto L = [&] {
        crossentropy_forward(loss.data(), lse.data(), z.data(), targets, N, V);
        double s = 0.0;
        for (float l : loss) s += (double)dloss * l;
        return s;
    };
    L();
    crossentropy_backward_input(dz.data(), z.data(), lse.data(), targets, dloss, N, V);
    expect_grad("dlogits", dz.data(), fd_grad(z, 1e-2, L), 1e-3);
    // Each row of softmax − onehot sums to zero.
    for (int n = 0; n < N; n++) {
        double s = 0.0;
        for (int i = 0; i < V; i++) s += dz[n * V + i];
        EXPECT_NEAR(s, 0.0, 1e-6);
    }
}

// The gradient is written, not added: from NaNs it gives the bits it gives from zeros, and in place
// of the logits (the model's way) the bits it gives into a separate buffer.
TEST(CrossEntropy, BackwardWritesAndRunsInPlace) {
    Vec z = rand_vec(N * V, 4), loss(N), lse(N), d1(N * V, 0.0f), d2(N * V, NAN);
    crossentropy_forward(loss.data(), lse.data(), z.data(), targets, N, V);
    crossentropy_backward_input(d1.data(), z.data(), lse.data(), targets, 0.5f, N, V);
    crossentropy_backward_input(d2.data(), z.data(), lse.data(), targets, 0.5f, N, V);
    EXPECT_TRUE(bit_equal(d1, d2));
    Vec inplace = z;
    crossentropy_backward_input(inplace.data(), inplace.data(), lse.data(), targets, 0.5f, N, V);
    EXPECT_TRUE(bit_equal(inplace, d1));
}

TEST(CrossEntropy, BitIdenticalAcrossThreadCounts) {
    const int n = 64, v = 1000;
    std::vector<int> tgt(n);
    for (int i = 0; i < n; i++) tgt[i] = (i * 37) % v;
    Vec z = rand_vec((size_t)n * v, 5, 5.0f);
    Vec loss[2], lse[2], dz[2];
    for (int r = 0; r < 2; r++) {
        loss[r].assign(n, 0.0f), lse[r].assign(n, 0.0f), dz[r].assign((size_t)n * v, 0.0f);
        with_threads(r + 1, [&] {
            crossentropy_forward(loss[r].data(), lse[r].data(), z.data(), tgt.data(), n, v);
            crossentropy_backward_input(dz[r].data(), z.data(), lse[r].data(), tgt.data(), 1.0f / n,
                                        n, v);
        });
    }
    EXPECT_TRUE(bit_equal(loss[0], loss[1]));
    EXPECT_TRUE(bit_equal(lse[0], lse[1]));
    EXPECT_TRUE(bit_equal(dz[0], dz[1]));
}

TEST(CrossEntropyDeath, TargetOutOfRange) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec z(2 * V), loss(2), lse(2);
    const int bad[2] = {0, V};
    EXPECT_EXIT(crossentropy_forward(loss.data(), lse.data(), z.data(), bad, 2, V),
                ::testing::ExitedWithCode(1),
                "crossentropy: target 11 at row 1 is outside \\[0, 11\\)");
}

}  // namespace
