// layers/router: scores, top-k choice (tie rule, bias) and gates against a plain reference for every
// score function / norm_topk / route_scale combination; the backward against central finite
// differences; the sequence balance loss on a hand-computed example and its gradient; bias updates.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

extern "C" {
#include "layers/router.h"
}
#include "tests/layers/moe_reference.h"

namespace {

struct Routed {
    std::vector<float> scores, gates;
    std::vector<int> idx;
};

Routed run_router(const std::vector<float> &logits, const float *bias, const RouterCfg &c, int N) {
    Routed r;
    r.scores.assign((size_t)N * c.E, -1.0f);
    r.gates.assign((size_t)N * c.K, -1.0f);
    r.idx.assign((size_t)N * c.K, -1);
    router_forward(r.scores.data(), r.idx.data(), r.gates.data(), logits.data(), bias, &c, N, NULL);
    return r;
}

void expect_matches_reference(const std::vector<float> &logits, const float *bias, const RouterCfg &c,
                              int N) {
    Routed r = run_router(logits, bias, c, N);
    for (int t = 0; t < N; t++) {
        std::vector<double> l(logits.begin() + t * c.E, logits.begin() + (t + 1) * c.E);
        moeref::Route ref = moeref::route(l, bias, c.K, c.softmax, c.norm_topk, c.route_scale);
        for (int i = 0; i < c.E; i++) EXPECT_NEAR(r.scores[t * c.E + i], ref.s[i], 1e-6) << t << " " << i;
        for (int k = 0; k < c.K; k++) {
            EXPECT_EQ(r.idx[t * c.K + k], ref.idx[k]) << "token " << t << " choice " << k;
            EXPECT_NEAR(r.gates[t * c.K + k], ref.g[k], 1e-6 * (1 + std::fabs(ref.g[k])));
        }
    }
}

// Every score function × norm_topk × route_scale.
std::vector<RouterCfg> all_cfgs(int E, int K) {
    std::vector<RouterCfg> v;
    for (int sm = 0; sm < 2; sm++)
        for (int nt = 0; nt < 2; nt++)
            for (float rs : {1.0f, 2.5f}) v.push_back(RouterCfg{E, K, sm, nt, rs});
    return v;
}

TEST(Router, ForwardMatchesReference) {
    const int N = 16, E = 8, K = 3;
    std::vector<float> logits = moeref::randn((size_t)N * E, 1.5f, 1);
    std::vector<float> bias = moeref::randn(E, 0.1f, 2);
    for (const RouterCfg &c : all_cfgs(E, K)) {
        SCOPED_TRACE(testing::Message() << "softmax " << c.softmax << " norm_topk " << c.norm_topk
                                        << " route_scale " << c.route_scale);
        expect_matches_reference(logits, nullptr, c, N);
        expect_matches_reference(logits, bias.data(), c, N);
    }
}

TEST(Router, GatesOfNormTopkSumToRouteScale) {
    const int N = 5, E = 6, K = 4;
    std::vector<float> logits = moeref::randn((size_t)N * E, 1.0f, 3);
    for (int sm = 0; sm < 2; sm++) {
        RouterCfg c = {E, K, sm, 1, 2.5f};
        Routed r = run_router(logits, nullptr, c, N);
        for (int t = 0; t < N; t++) {
            float sum = 0;
            for (int k = 0; k < K; k++) sum += r.gates[t * K + k];
            EXPECT_NEAR(sum, 2.5f, 1e-5);
        }
    }
}

TEST(Router, KEqualsEChoosesEveryExpertInKeyOrder) {
    const int E = 5;
    std::vector<float> logits = {0.3f, -1.0f, 2.0f, 0.0f, 0.9f};
    for (const RouterCfg &c : all_cfgs(E, E)) {
        Routed r = run_router(logits, nullptr, c, 1);
        EXPECT_EQ(r.idx, (std::vector<int>{2, 4, 0, 3, 1}));
        expect_matches_reference(logits, nullptr, c, 1);
    }
}

TEST(Router, AllEqualScoresGoToTheLowestIds) {
    const int N = 3, E = 7, K = 3;
    std::vector<float> logits((size_t)N * E, 0.25f);
    for (const RouterCfg &c : all_cfgs(E, K)) {
        Routed r = run_router(logits, nullptr, c, N);
        for (int t = 0; t < N; t++)
            for (int k = 0; k < K; k++) EXPECT_EQ(r.idx[t * K + k], k);
    }
}

TEST(Router, TiesAreBrokenByBias) {
    const int E = 6, K = 2;
    // Experts 1, 3 and 4 tie on score; the bias lifts 4 over 1, and 3 stays behind 1 (lower id wins).
    std::vector<float> logits = {-2.0f, 1.0f, -1.0f, 1.0f, 1.0f, 0.0f};
    std::vector<float> bias = {0, 0, 0, 0, 0.01f, 0};
    for (const RouterCfg &c : all_cfgs(E, K)) {
        Routed r = run_router(logits, bias.data(), c, 1);
        EXPECT_EQ(r.idx, (std::vector<int>{4, 1}));
        Routed plain = run_router(logits, nullptr, c, 1);
        EXPECT_EQ(plain.idx, (std::vector<int>{1, 3}));
    }
}

TEST(Router, BiasChangesTheChoiceButNotTheGates) {
    const int E = 4, K = 2;
    std::vector<float> logits = {2.0f, 1.0f, 0.0f, -1.0f};
    std::vector<float> bias = {0, 0, 0, 5.0f};  // pulls the worst expert to the front
    for (const RouterCfg &c : all_cfgs(E, K)) {
        Routed r = run_router(logits, bias.data(), c, 1);
        ASSERT_EQ(r.idx, (std::vector<int>{3, 0}));
        double s3 = r.scores[3], s0 = r.scores[0];
        double z = c.norm_topk ? s3 + s0 : 1.0;
        EXPECT_NEAR(r.gates[0], c.route_scale * s3 / z, 1e-6);
        EXPECT_NEAR(r.gates[1], c.route_scale * s0 / z, 1e-6);
        // The scores are the bias-free ones.
        Routed plain = run_router(logits, nullptr, c, 1);
        EXPECT_EQ(r.scores, plain.scores);
    }
}

// Logits whose sorted values sit 0.6 apart, so that a 1e-2 perturbation cannot change the choice.
std::vector<float> separated_logits(int N, int E, unsigned seed) {
    std::mt19937 gen(seed);
    std::vector<float> v((size_t)N * E);
    for (int t = 0; t < N; t++) {
        std::vector<int> perm(E);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), gen);
        for (int i = 0; i < E; i++) v[t * E + i] = 0.6f * (perm[i] - E / 2.0f);
    }
    return v;
}

TEST(Router, BackwardMatchesFiniteDifferences) {
    const int N = 4, E = 6, K = 3;
    std::vector<float> logits = separated_logits(N, E, 4);
    std::vector<float> wg = moeref::randn((size_t)N * K, 1.0f, 5);  // dL/dgates
    std::vector<float> ws = moeref::randn((size_t)N * E, 1.0f, 6);  // dL/dscores
    for (const RouterCfg &c : all_cfgs(E, K)) {
        for (bool with_scores : {false, true}) {
            SCOPED_TRACE(testing::Message() << "softmax " << c.softmax << " norm_topk " << c.norm_topk
                                            << " route_scale " << c.route_scale << " dscores "
                                            << with_scores);
            Routed r = run_router(logits, nullptr, c, N);
            // L = Σ wg·gates (+ Σ ws·scores), accumulated in double.
            auto loss = [&](const std::vector<float> &l) {
                Routed q = run_router(l, nullptr, c, N);
                EXPECT_EQ(q.idx, r.idx) << "the perturbation changed the choice";
                double L = 0;
                for (size_t i = 0; i < q.gates.size(); i++) L += (double)wg[i] * q.gates[i];
                if (with_scores)
                    for (size_t i = 0; i < q.scores.size(); i++) L += (double)ws[i] * q.scores[i];
                return L;
            };
            // Start dlogits at 1 to check that the backward accumulates.
            std::vector<float> dl((size_t)N * E, 1.0f);
            router_backward_input(dl.data(), wg.data(), with_scores ? ws.data() : nullptr,
                                  r.scores.data(), r.idx.data(), &c, N);
            const float eps = 1e-2f;
            for (int i = 0; i < N * E; i++) {
                std::vector<float> lp = logits, lm = logits;
                lp[i] += eps;
                lm[i] -= eps;
                double fd = (loss(lp) - loss(lm)) / ((double)lp[i] - lm[i]);
                EXPECT_NEAR(dl[i] - 1.0f, fd, 2e-3 + 1e-2 * std::fabs(fd)) << "logit " << i;
            }
        }
    }
}

// Two sequences of two tokens, E = 2, K = 1, worked by hand:
//   sequence 0: s = [.6 .2], [.1 .3] → normalized [.75 .25], [.25 .75]; choices 0, 1 → f = [1 1],
//               P = [.5 .5] → L = 1.
//   sequence 1: s = [.5 .5], [.9 .1]; choices 0, 0 → f = [2 0], P_0 = (.5 + .9)/2 = .7 → L = 1.4.
//   mean over sequences: 1.2.
TEST(Router, BalanceLossHandExample) {
    std::vector<float> s = {0.6f, 0.2f, 0.1f, 0.3f, 0.5f, 0.5f, 0.9f, 0.1f};
    std::vector<int> idx = {0, 1, 0, 0};
    EXPECT_NEAR(router_balance_loss(s.data(), idx.data(), 2, 2, 2, 1), 1.2f, 1e-6);
}

TEST(Router, BalanceLossMatchesReferenceAndItsGradient) {
    const int B = 2, T = 5, E = 6, K = 2, N = B * T;
    std::vector<float> logits = moeref::randn((size_t)N * E, 1.0f, 7);
    for (int sm = 0; sm < 2; sm++) {
        RouterCfg c = {E, K, sm, 1, 1.0f};
        Routed r = run_router(logits, nullptr, c, N);
        std::vector<moeref::Route> routes;
        for (int t = 0; t < N; t++)
            routes.push_back(moeref::route(
                std::vector<double>(logits.begin() + t * E, logits.begin() + (t + 1) * E), nullptr, K,
                sm, 1, 1.0));
        float L = router_balance_loss(r.scores.data(), r.idx.data(), B, T, E, K);
        EXPECT_NEAR(L, moeref::balance_loss(routes, B, T, E, K), 1e-6);
        ASSERT_GT(L, 0.1f);

        // Gradient with respect to the scores, the choice (hence f) held fixed; dloss scales it.
        const float dloss = 0.7f;
        std::vector<float> ds((size_t)N * E, 1.0f);
        router_balance_loss_backward(ds.data(), dloss, r.scores.data(), r.idx.data(), B, T, E, K);
        const float eps = 1e-3f;
        for (int i = 0; i < N * E; i++) {
            std::vector<float> sp = r.scores, sm_ = r.scores;
            sp[i] += eps;
            sm_[i] -= eps;
            double fd = dloss *
                        ((double)router_balance_loss(sp.data(), r.idx.data(), B, T, E, K) -
                         router_balance_loss(sm_.data(), r.idx.data(), B, T, E, K)) /
                        ((double)sp[i] - sm_[i]);
            EXPECT_NEAR(ds[i] - 1.0f, fd, 2e-4) << "score " << i;
        }
    }
}

TEST(Router, CountAccumulatesAndBiasMovesTowardBalance) {
    const int E = 4, K = 2;
    // Six tokens whose logits choose {0, 2}, {0, 3}, {0, 2}, {0, 3}, {0, 1}, {2, 3}.
    const int pick[6][2] = {{0, 2}, {0, 3}, {0, 2}, {0, 3}, {0, 1}, {2, 3}};
    std::vector<float> logits(6 * E, -1.0f), s(6 * E), g(6 * K);
    for (int t = 0; t < 6; t++) logits[t * E + pick[t][0]] = logits[t * E + pick[t][1]] = 1.0f;
    std::vector<int> idx(6 * K);
    RouterCfg c = {E, K, 0, 1, 1.0f};
    std::vector<long> counts(E, 0);
    router_forward(s.data(), idx.data(), g.data(), logits.data(), nullptr, &c, 6, counts.data());
    EXPECT_EQ(counts, (std::vector<long>{5, 1, 3, 3}));
    router_forward(s.data(), idx.data(), g.data(), logits.data(), nullptr, &c, 1, counts.data());
    EXPECT_EQ(counts, (std::vector<long>{6, 1, 4, 3})) << "counts accumulate over calls";
    router_forward(s.data(), idx.data(), g.data(), logits.data(), nullptr, &c, 6, nullptr);
    EXPECT_EQ(counts, (std::vector<long>{6, 1, 4, 3})) << "NULL counts: nothing counted";

    // 7 tokens: c̄ = 2·7/4 = 3.5. Over-loaded experts go down, under-loaded go up.
    std::vector<float> bias = {0.0f, 0.0f, 0.5f, -1.0f};
    router_bias_update(bias.data(), counts.data(), E, K, 7, 0.1f);
    EXPECT_FLOAT_EQ(bias[0], -0.1f);
    EXPECT_FLOAT_EQ(bias[1], 0.1f);
    EXPECT_FLOAT_EQ(bias[2], 0.4f);
    EXPECT_FLOAT_EQ(bias[3], -0.9f);

    // An expert exactly at c̄ keeps its bias: 6 tokens, c̄ = 3.
    std::vector<long> even = {3, 3, 5, 1};
    router_bias_update(bias.data(), even.data(), E, K, 6, 0.1f);
    EXPECT_FLOAT_EQ(bias[0], -0.1f);
    EXPECT_FLOAT_EQ(bias[1], 0.1f);
    EXPECT_FLOAT_EQ(bias[2], 0.3f);
    EXPECT_FLOAT_EQ(bias[3], -0.8f);
}

TEST(RouterDeathTest, BadInput) {
    std::vector<float> l(4, 0.0f), s(4), g(8);
    std::vector<int> idx(8);
    RouterCfg c = {4, 5, 0, 1, 1.0f};
    EXPECT_EXIT(router_forward(s.data(), idx.data(), g.data(), l.data(), nullptr, &c, 1, nullptr),
                testing::ExitedWithCode(1), "need 1 <= K <= E");
    std::vector<int> bad = {0, 4};
    EXPECT_EXIT(router_balance_loss(s.data(), bad.data(), 1, 1, 4, 2), testing::ExitedWithCode(1),
                "expert id 4 out of range");
}

}  // namespace
