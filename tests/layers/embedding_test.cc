// layers/embedding: the gather forward, the scatter-add backward against finite differences and
// against a direct sum (tokens repeat), accumulation, bit-identical results whatever the thread
// count, and tokens outside the vocabulary.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/embedding.h"
}

namespace {

const int N = 9, V = 6, D = 11;
const int tokens[N] = {3, 0, 5, 3, 3, 1, 0, 5, 3};  // token 2 and 4 never appear, 3 four times

TEST(Embedding, ForwardGathersRows) {
    Vec table = rand_vec(V * D, 1), out(N * D);
    embedding_forward(out.data(), tokens, table.data(), N, V, D);
    for (int n = 0; n < N; n++)
        EXPECT_EQ(0, memcmp(&out[n * D], &table[tokens[n] * D], D * sizeof(float))) << "row " << n;
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
    Vec table = rand_vec(V * D, 2), R = rand_vec(N * D, 3), out(N * D), dtable(V * D);
    auto L = [&] {
        embedding_forward(out.data(), tokens, table.data(), N, V, D);
        return objective(out, R);
    };
    embedding_backward_weight(dtable.data(), R.data(), tokens, N, V, D);
    expect_grad("dtable", dtable.data(), fd_grad(table, 1e-2, L), 1e-3);
    // Rows of tokens that never appear stay exactly zero.
    for (int d = 0; d < D; d++) EXPECT_EQ(dtable[2 * D + d], 0.0f);
    for (int d = 0; d < D; d++) EXPECT_EQ(dtable[4 * D + d], 0.0f);
}

TEST(Embedding, BackwardAccumulates) {
    Vec dout = rand_vec(N * D, 4), d1(V * D), d2(V * D);
    embedding_backward_weight(d1.data(), dout.data(), tokens, N, V, D);
    embedding_backward_weight(d2.data(), dout.data(), tokens, N, V, D);
    embedding_backward_weight(d2.data(), dout.data(), tokens, N, V, D);
    for (int i = 0; i < V * D; i++) EXPECT_FLOAT_EQ(d2[i], 2.0f * d1[i]);
}

TEST(Embedding, BackwardBitIdenticalAcrossThreadCounts) {
    // Many rows collide on few tokens: a racy or order-dependent scatter-add would show here.
    const int n = 4000, v = 7, d = 33;
    std::vector<int> tok(n);
    for (int i = 0; i < n; i++) tok[i] = (i * 5 + i / 3) % v;
    Vec dout = rand_vec((size_t)n * d, 5);
    Vec res[4];
    const int threads[4] = {1, 2, 3, 2};
    for (int r = 0; r < 4; r++) {
        res[r].assign(v * d, 0.0f);
        with_threads(threads[r], [&] {
            embedding_backward_weight(res[r].data(), dout.data(), tok.data(), n, v, d);
        });
    }
    for (int r = 1; r < 4; r++) EXPECT_TRUE(bit_equal(res[0], res[r])) << threads[r] << " threads";
}

TEST(EmbeddingDeath, TokenOutOfRange) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec table(V * D), out(2 * D);
    const int high[2] = {1, V}, low[2] = {-1, 0};
    EXPECT_EXIT(embedding_forward(out.data(), high, table.data(), 2, V, D),
                ::testing::ExitedWithCode(1),
                "embedding: token 6 at position 1 is outside \\[0, 6\\)");
    EXPECT_EXIT(embedding_backward_weight(table.data(), out.data(), low, 2, V, D),
                ::testing::ExitedWithCode(1),
                "embedding: token -1 at position 0 is outside \\[0, 6\\)");
}

}  // namespace
