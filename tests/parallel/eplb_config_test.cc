// EPLB in one process without MPI: the settings no run can use (usage errors, exit 2, naming the
// rule), the initial placement and replica initialization of a model with redundant slots, and the
// clear failure of a model whose slots outnumber its dispatcher's.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

extern "C" {
#include "framework/core/log.h"
#include "framework/model.h"
#include "parallel/eplb_runtime.h"
}

namespace {

MoeConfig tiny() {
    MoeConfig c;
    config_defaults(&c);
    c.V = 32; c.D = 16; c.L = 2; c.H = 4; c.Hkv = 2; c.T = 8; c.n_dense_layers = 1;
    c.F = 24; c.E = 8; c.K = 2; c.S = 0; c.Fe = 8; c.batch_size = 2; c.seed = 3;
    return c;
}

TEST(EplbConfig, RedundantSlotsNeedRebalancing) {
    MoeConfig c = tiny();
    c.eplb_redundant = 2;
    EXPECT_EXIT(eplb_runtime_check_config(&c), ::testing::ExitedWithCode(2),
                "moelab: error: --eplb-redundant 2 needs --eplb-interval > 0");
    // So do groups and nodes, each alone (a check of one of the two passed for both before).
    for (int groups : {2, 1}) {
        MoeConfig d = tiny();
        d.eplb_groups = groups;
        d.eplb_nodes = groups == 1 ? 2 : 1;
        EXPECT_EXIT(eplb_runtime_check_config(&d), ::testing::ExitedWithCode(2),
                    "--eplb-groups [0-9]+ / --eplb-nodes [0-9]+ need --eplb-interval > 0");
    }
}

TEST(EplbConfig, SlotsMustSplitOverTheEpRanks) {
    MoeConfig c = tiny();
    c.eplb_interval = 2;
    c.eplb_redundant = 3;
    c.ep = 2;
    EXPECT_EXIT(eplb_runtime_check_config(&c), ::testing::ExitedWithCode(2),
                "--eplb-redundant 3: n_experts \\+ eplb_redundant = 11 physical slots per MoE layer do not "
                "split evenly over --ep 2 ranks");
}

TEST(EplbConfig, AtMostAReplicaOfEveryExpertOnEveryRank) {
    MoeConfig c = tiny();
    c.eplb_interval = 2;
    c.eplb_redundant = 9;  // E = 8, one rank
    EXPECT_EXIT(eplb_runtime_check_config(&c), ::testing::ExitedWithCode(2),
                "--eplb-redundant 9 is more than n_experts x ep = 8 x 1");
    c.ep = 2;
    c.eplb_redundant = 18;
    EXPECT_EXIT(eplb_runtime_check_config(&c), ::testing::ExitedWithCode(2),
                "--eplb-redundant 18 is more than n_experts x ep = 8 x 2");
    c.eplb_redundant = 16;
    eplb_runtime_check_config(&c);
}

TEST(EplbConfig, NeedsMoeLayers) {
    MoeConfig c = tiny();
    c.eplb_interval = 1;
    c.n_dense_layers = c.L;
    EXPECT_EXIT(eplb_runtime_check_config(&c), ::testing::ExitedWithCode(2),
                "--eplb-interval 1 needs MoE layers, but n_dense_layers = 2 makes all 2 layers dense");
}

TEST(EplbConfig, GoodSettingsPass) {
    MoeConfig c = tiny();
    eplb_runtime_check_config(&c);  // off
    for (int ep : {1, 2, 4})
        for (int extra : {0, ep, 2 * ep}) {
            c.ep = ep;
            c.eplb_interval = 3;
            c.eplb_redundant = extra;
            eplb_runtime_check_config(&c);
        }
}

TEST(EplbConfig, InitialPlacementRepeatsTheExpertsInOrder) {
    std::vector<int> p(11);
    eplb_initial_placement(p.data(), 11, 4);
    EXPECT_EQ(p, std::vector<int>({0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2}));
}

TEST(EplbModel, ReplicaSlotsStartAsCopiesOfTheirExpert) {
    MoeConfig c = tiny();
    c.eplb_interval = 1;
    c.eplb_redundant = 3;
    Model *m = model_create(&c, 0, 1);
    model_init_weights(m);
    ASSERT_EQ(m->R, 11);
    ASSERT_EQ(m->n_local, 11);
    const MoeConfig plain = tiny();  // no redundant slots
    Model *ref = model_create(&plain, 0, 1);
    model_init_weights(ref);
    for (const char *name : {"layers.1.experts.w13", "layers.1.experts.w2"}) {
        const ParamInfo *p = &m->reg.p[params_find(&m->reg, name)];
        ASSERT_EQ(p->local_rows, 11);
        const size_t row = p->numel / 11;
        const float *x = m->reg.data + p->offset, *y = params_ptr(&ref->reg, name);
        for (int s = 0; s < 11; s++)  // slot s holds expert s mod 8, with that expert's numbers
            EXPECT_EQ(memcmp(x + s * row, y + (s % 8) * row, row * sizeof(float)), 0)
                << name << " slot " << s;
    }
    EXPECT_EQ(m->phy2log[0], -1);  // a dense layer has no slots
    EXPECT_EQ(m->phy2log[11 + 9], 1);
    model_free(ref);
    model_free(m);
}

TEST(EplbModel, RedundantSlotsWithoutEplbDispatchersFailClearly) {
    // The forward runs OpenMP threads: the death test re-runs the binary instead of forking it.
    ::testing::FLAGS_gtest_death_test_style = "threadsafe";
    MoeConfig c = tiny();
    c.eplb_interval = 1;
    c.eplb_redundant = 2;
    EXPECT_EXIT(
        {
            Model *m = model_create(&c, 0, 1);
            model_init_weights(m);
            std::vector<int> tok((size_t)c.batch_size * (c.T + 1), 1);
            ModelActs a;
            model_forward(m, &a, tok.data(), c.batch_size, c.T, 1);
        },
        ::testing::ExitedWithCode(1),
        "layer 1: the dispatcher runs 8 expert slots per rank but the model holds 10");
}

}  // namespace
