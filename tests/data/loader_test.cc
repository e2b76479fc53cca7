// data/loader: every sequence exactly once per epoch across 1, 2 and 4 data-parallel ranks (the
// ranks' sequences are disjoint and their union is everything), the same order whatever the world
// size, seeded per-epoch shuffling that reaches every order, the sequence count (each needs T + 1
// tokens), in-order validation, resuming from a saved position, and the fingerprint's sample.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/data/test_util.h"

extern "C" {
#include "data/loader.h"
#include "data/shard.h"
}

namespace {

// A shard whose token i is i, so a sequence names itself: its first token / T. `changed`: that
// token is 0 instead (in a shard of another name).
std::string counting_shard(uint32_t n, uint32_t changed = UINT32_MAX) {
    std::string path = test_tmp_dir("data") + (changed == UINT32_MAX ? "/train.bin" : "/changed.bin");
    std::vector<uint32_t> ids(n);
    for (uint32_t i = 0; i < n; i++) ids[i] = i == changed ? 0 : i;
    FILE *f = fopen(path.c_str(), "wb");
    if (!f) abort();
    ShardWriter *w = shard_writer_open(f, path.c_str(), 65536, 1);
    shard_writer_put(w, ids.data(), n);
    shard_writer_close(w);
    fclose(f);
    return path;
}

// The run's stream of sequence ids for `steps` steps: step k, rank r, row b lands at
// k*B*world + r*B + b. Checks each row is T + 1 consecutive tokens starting at a multiple of T.
std::vector<int> stream(const std::string &path, int T, int B, int world, uint64_t seed, int shuffle, int steps) {
    std::vector<int> out((size_t)steps * B * world, -1);
    std::vector<int> tok((size_t)B * (T + 1));
    for (int r = 0; r < world; r++) {
        Loader *l = loader_open(path.c_str(), T, B, r, world, seed, shuffle);
        for (int k = 0; k < steps; k++) {
            loader_next(l, tok.data());
            for (int b = 0; b < B; b++) {
                const int *row = &tok[(size_t)b * (T + 1)];
                EXPECT_EQ(row[0] % T, 0);
                for (int t = 0; t <= T; t++) EXPECT_EQ(row[t], row[0] + t);
                out[(size_t)k * B * world + (size_t)r * B + b] = row[0] / T;
            }
        }
        loader_close(l);
    }
    return out;
}

bool is_permutation_of_range(std::vector<int> v, int S) {
    std::sort(v.begin(), v.end());
    for (int i = 0; i < S; i++)
        if (v[i] != i) return false;
    return (int)v.size() == S;
}

TEST(Loader, EverySequenceOncePerEpochAcrossRanks) {
    const int T = 8, S = 37;
    std::string path = counting_shard(S * T + 5);  // the 4 tokens after the last full sequence are unused
    std::vector<int> ref;
    for (int world : {1, 2, 4}) {
        const int B = 3;
        const int steps = (3 * S) / (B * world) + 1;  // a little over three epochs
        std::vector<int> s = stream(path, T, B, world, 42, 1, steps);
        Loader *l = loader_open(path.c_str(), T, B, 0, world, 42, 1);
        ASSERT_EQ(loader_num_sequences(l), (uint64_t)S);
        loader_close(l);
        for (int e = 0; e < 3; e++) {
            std::vector<int> epoch(s.begin() + e * S, s.begin() + (e + 1) * S);
            EXPECT_TRUE(is_permutation_of_range(epoch, S)) << "world " << world << " epoch " << e;
        }
        // Per step, the ranks' rows are disjoint (within one epoch) and together make the step.
        for (int k = 0; k < steps && (k + 1) * B * world <= S; k++) {
            std::vector<int> step(s.begin() + k * B * world, s.begin() + (k + 1) * B * world);
            std::sort(step.begin(), step.end());
            EXPECT_EQ(std::unique(step.begin(), step.end()), step.end());
        }
        // The stream does not depend on the world size: the same data order at any scale.
        s.resize(3 * S);
        if (ref.empty()) ref = s;
        EXPECT_EQ(s, ref) << "world " << world;
    }
    // Epochs differ from each other; the seed decides.
    EXPECT_NE(std::vector<int>(ref.begin(), ref.begin() + S), std::vector<int>(ref.begin() + S, ref.begin() + 2 * S));
    std::vector<int> again = stream(path, T, 3, 1, 42, 1, S), other = stream(path, T, 3, 1, 43, 1, S);
    EXPECT_EQ(std::vector<int>(again.begin(), again.begin() + 3 * S), ref);
    EXPECT_NE(std::vector<int>(other.begin(), other.begin() + S), std::vector<int>(ref.begin(), ref.begin() + S));
}

// A sequence needs T + 1 tokens (its targets run one past it): S·T + 1 tokens hold S sequences, the
// last ending on the shard's last token; one token fewer holds S - 1.
TEST(Loader, TheLastSequenceNeedsItsTarget) {
    const int T = 4, S = 6;
    for (int n : {S * T + 1, S * T}) {
        std::string path = counting_shard(n);
        Loader *l = loader_open(path.c_str(), T, 1, 0, 1, 3, 0);
        const int seqs = n == S * T + 1 ? S : S - 1;
        ASSERT_EQ(loader_num_sequences(l), (uint64_t)seqs) << n << " tokens";
        std::vector<int> tok(T + 1);
        for (int k = 0; k < seqs; k++) loader_next(l, tok.data());
        EXPECT_EQ(tok[T], seqs * T) << n << " tokens";
        loader_close(l);
    }
}

// The shuffle reaches every order: over 60 epochs of 3 sequences all 6 permutations occur (a
// Fisher-Yates loop one swap short reaches only 3 of them).
TEST(Loader, ShuffleReachesEveryOrder) {
    const int T = 2, S = 3, epochs = 60;
    std::string path = counting_shard(S * T + 1);
    std::vector<int> s = stream(path, T, 1, 1, 5, 1, S * epochs);
    std::vector<std::vector<int>> seen;
    for (int e = 0; e < epochs; e++) {
        std::vector<int> order(s.begin() + e * S, s.begin() + (e + 1) * S);
        if (std::find(seen.begin(), seen.end(), order) == seen.end()) seen.push_back(order);
    }
    EXPECT_EQ(seen.size(), 6u);
}

// The resume check's fingerprint reads the token count and 64 runs of 64 tokens spread over the
// shard: a token changed anywhere in a run changes it (its last one too); one between the runs does
// not (what a fingerprint of a few kilobytes gives up).
TEST(Loader, FingerprintReadsItsRuns) {
    const uint32_t n = 64 * 1000, gap = n / 64;
    auto fingerprint = [](const std::string &path) {
        Loader *l = loader_open(path.c_str(), 8, 1, 0, 1, 1, 1);
        const uint64_t fp = loader_fingerprint(l);
        loader_close(l);
        return fp;
    };
    const uint64_t fp = fingerprint(counting_shard(n));
    EXPECT_NE(fp, 0u);
    EXPECT_NE(fingerprint(counting_shard(n + 1)), fp);
    for (uint32_t at : {1u, 5 * gap, 5 * gap + 63, 63 * gap + 63})
        EXPECT_NE(fingerprint(counting_shard(n, at)), fp) << "token " << at;
    EXPECT_EQ(fingerprint(counting_shard(n, 5 * gap + 64)), fp);
}

TEST(Loader, ValidationIsInOrderAndWraps) {
    const int T = 4, S = 10;
    std::string path = counting_shard(S * T + 1);
    std::vector<int> s = stream(path, T, 3, 2, 7, 0, 4);  // 24 rows: 0..9, 0..9, 0..3
    for (size_t i = 0; i < s.size(); i++) EXPECT_EQ(s[i], (int)(i % S)) << i;
}

TEST(Loader, ResumeReproducesBatches) {
    const int T = 5, B = 4, S = 23;
    std::string path = counting_shard(S * T + 1);
    for (int world : {1, 2}) {
        for (int r = 0; r < world; r++) {
            Loader *a = loader_open(path.c_str(), T, B, r, world, 99, 1);
            std::vector<int> tok((size_t)B * (T + 1)), tok2(tok.size());
            for (int k = 0; k < 7; k++) loader_next(a, tok.data());
            LoaderPos pos = loader_get_pos(a);
            const uint64_t consumed = 7ull * B * world;
            EXPECT_EQ(pos.epoch, consumed / S);
            EXPECT_EQ(pos.index, consumed % S);
            // A fresh loader at the saved position gives the same next batches, across epochs.
            Loader *b = loader_open(path.c_str(), T, B, r, world, 99, 1);
            loader_set_pos(b, pos);
            for (int k = 0; k < 12; k++) {
                loader_next(a, tok.data());
                loader_next(b, tok2.data());
                ASSERT_EQ(tok, tok2) << "world " << world << " rank " << r << " step " << k;
            }
            EXPECT_EQ(loader_get_pos(a).epoch, loader_get_pos(b).epoch);
            EXPECT_EQ(loader_get_pos(a).index, loader_get_pos(b).index);
            loader_close(a);
            loader_close(b);
        }
    }
}

TEST(Loader, BadInputIsUsageError) {
    std::string path = counting_shard(8);
    EXPECT_EXIT(loader_open(path.c_str(), 8, 1, 0, 1, 1, 1), ::testing::ExitedWithCode(2),
                "train.bin: 8 tokens are too few for one sequence of T \\+ 1 = 9 tokens");
    Loader *l = loader_open(path.c_str(), 3, 1, 0, 1, 1, 1);  // S = 2
    EXPECT_EQ(loader_vocab(l), 65536u);
    EXPECT_EXIT(loader_set_pos(l, LoaderPos{0, 2}), ::testing::ExitedWithCode(2),
                "train.bin: saved loader position 2 is beyond its 2 sequences");
    loader_close(l);
    std::string bad = test_tmp_dir("data") + "/bad.bin";
    data_test::write_file(bad, "MOELTOK1");
    EXPECT_EXIT(loader_open(bad.c_str(), 3, 1, 0, 1, 1, 1), ::testing::ExitedWithCode(2), "bad.bin: not a token shard");
}

}  // namespace
