// Stage partitioning (parallel/stage_partition.h) and the pipeline trainer's refusals, in one
// process: the cost model's numbers, optimal min-max splits with the stated tie rule checked
// against brute force, and the usage errors of layouts a schedule cannot run.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

extern "C" {
#include "framework/core/rng.h"
#include "framework/pipe_train.h"
#include "parallel/comm.h"
#include "parallel/grid.h"
#include "parallel/stage_partition.h"
}

namespace {

std::vector<int> split(const std::vector<double> &layer, double embed, double head, int S) {
    std::vector<int> b(S + 1);
    stage_partition(layer.data(), (int)layer.size(), embed, head, S, b.data());
    return b;
}

double largest_stage(const std::vector<double> &layer, double embed, double head, const std::vector<int> &b) {
    double worst = 0;
    for (size_t s = 0; s + 1 < b.size(); s++) {
        double c = (s == 0 ? embed : 0) + (s + 2 == b.size() ? head : 0);
        for (int l = b[s]; l < b[s + 1]; l++) c += layer[l];
        worst = std::max(worst, c);
    }
    return worst;
}

TEST(StagePartition, CostModel) {
    MoeConfig c;
    config_defaults(&c);
    c.V = 100; c.D = 8; c.L = 3; c.H = 2; c.Hkv = 1; c.T = 5; c.n_dense_layers = 1; c.F = 12;
    c.E = 4; c.K = 2; c.S = 1; c.Fe = 6;
    std::vector<double> layer(3);
    double embed, head;
    stage_costs(&c, layer.data(), &embed, &head);
    // hd 4, q 8, kv 4: projections 2·(64 + 64 + 64) = 384, attention 2·2·8·3 = 96.
    EXPECT_DOUBLE_EQ(layer[0], 384 + 96 + 2 * 3 * 8 * 12);
    EXPECT_DOUBLE_EQ(layer[1], 384 + 96 + 2 * (4 * 8 + 3 * 3 * 8 * 6));
    EXPECT_DOUBLE_EQ(layer[2], layer[1]);
    EXPECT_DOUBLE_EQ(embed, 8);
    EXPECT_DOUBLE_EQ(head, 2 * 100 * 8 + 4 * 100);
}

TEST(StagePartition, ExamplesAndTieRule) {
    const std::vector<double> ones(8, 1.0);
    EXPECT_EQ(split(ones, 0, 0, 4), (std::vector<int>{0, 2, 4, 6, 8}));
    // Ties: each stage from the first takes as many layers as the optimum (3) allows.
    EXPECT_EQ(split(ones, 0, 0, 3), (std::vector<int>{0, 3, 6, 8}));
    // A tiny embedding cost moves the short stage to the front; a head moves it to the back.
    EXPECT_EQ(split(ones, 0.01, 0, 3), (std::vector<int>{0, 2, 5, 8}));
    EXPECT_EQ(split(ones, 0.01, 0.5, 3), (std::vector<int>{0, 3, 6, 8}));
    // An expensive head leaves the last stage a single layer.
    EXPECT_EQ(split(ones, 0, 10, 2), (std::vector<int>{0, 7, 8}));
    EXPECT_EQ(split(ones, 0, 0, 8), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(split(ones, 5, 5, 1), (std::vector<int>{0, 8}));
}

// Every split of L layers into S stages, by enumerating the S − 1 cut positions.
void all_splits(int L, int S, std::vector<int> &b, int s, std::vector<std::vector<int>> &out) {
    if (s == S) {
        if (b[S - 1] < L) {
            b[S] = L;
            out.push_back(b);
        }
        return;
    }
    for (int cut = b[s - 1] + 1; cut <= L - (S - s); cut++) {
        b[s] = cut;
        all_splits(L, S, b, s + 1, out);
    }
}

TEST(StagePartition, OptimalAgainstBruteForce) {
    RngStream r = rng_stream(3, 1);
    for (int trial = 0; trial < 200; trial++) {
        const int L = 1 + (int)(rng_next_u32(&r) % 9), S = 1 + (int)(rng_next_u32(&r) % L);
        std::vector<double> layer(L);
        for (double &x : layer) x = 1 + rng_next_u32(&r) % 5;  // integers: ties happen
        const double embed = rng_next_u32(&r) % 3, head = rng_next_u32(&r) % 8;
        std::vector<int> got = split(layer, embed, head, S);
        std::vector<std::vector<int>> every;
        std::vector<int> b(S + 1, 0);
        all_splits(L, S, b, 1, every);
        double best = 1e300;
        for (const auto &x : every) best = std::min(best, largest_stage(layer, embed, head, x));
        EXPECT_EQ(largest_stage(layer, embed, head, got), best) << "trial " << trial;
        // Tie rule: the optimal split with the lexicographically largest bounds.
        std::vector<int> want;
        for (const auto &x : every)
            if (largest_stage(layer, embed, head, x) == best && (want.empty() || x > want)) want = x;
        EXPECT_EQ(got, want) << "trial " << trial;
    }
}

// One process: the world is 1 rank, so pipelines of one rank (DualPipeV) are the only layouts.
MoeConfig tiny() {
    MoeConfig c;
    config_defaults(&c);
    c.V = 32; c.D = 16; c.L = 2; c.H = 4; c.Hkv = 2; c.T = 8; c.n_dense_layers = 1;
    c.F = 24; c.E = 4; c.K = 2; c.S = 1; c.Fe = 8; c.batch_size = 1;
    return c;
}

void create(MoeConfig c) { pipe_trainer_create(&c, grid_create(comm_world(), c.pp, c.ep, c.E), &layer_ops_cpu); }

TEST(PipeTrainerDeath, LayoutsTheScheduleCannotRun) {
    MoeConfig c = tiny();
    snprintf(c.schedule, sizeof c.schedule, "dualpipe");
    c.grad_accum = 4;
    EXPECT_EXIT(create(c), ::testing::ExitedWithCode(2),
                "--schedule dualpipe --pp 1 with 4 micro-batches per step \\(--chunks 0, so --grad-accum 4\\): "
                "dualpipe needs an even number of ranks \\(pp = 1\\)");
    snprintf(c.schedule, sizeof c.schedule, "dualpipev");
    c.grad_accum = 1;
    EXPECT_EXIT(create(c), ::testing::ExitedWithCode(2), "dualpipev needs at least 2N = 2 micro-batches");
    c.grad_accum = 2;
    c.L = 1;
    c.n_dense_layers = 0;
    EXPECT_EXIT(create(c), ::testing::ExitedWithCode(2),
                "--schedule dualpipev with --pp 1 cuts the model into 2 stages of at least one layer, "
                "but n_layers = 1");
}

}  // namespace
