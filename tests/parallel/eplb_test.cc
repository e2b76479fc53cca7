// The EPLB planner (parallel/eplb.h, docs/architecture.md §6): hand-checked packing and replication (ties,
// one item per pack, R = E, equal weights), hand-worked hierarchical and global plans, input
// validation, and properties of plans for many random shapes and loads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

extern "C" {
#include "framework/core/mem.h"
#include "framework/core/rng.h"
#include "parallel/eplb.h"
}

namespace {

using V = std::vector<int>;

struct Packed {
    V pack_of, rank;
};

Packed pack(const std::vector<double> &w, int m) {
    int n = (int)w.size();
    Packed r{V(n, -7), V(n, -7)};
    std::vector<double> work(eplb_pack_work_bytes(n, m) / sizeof(double) + 1);
    eplb_pack(w.data(), n, m, r.pack_of.data(), r.rank.data(), work.data());
    return r;
}

struct Replicated {
    V phy2item, rank, count;
};

Replicated replicate(const std::vector<double> &w, int r) {
    int n = (int)w.size();
    Replicated o{V(r, -7), V(r, -7), V(n, -7)};
    std::vector<int> heap(n);
    eplb_replicate(w.data(), n, r, o.phy2item.data(), o.rank.data(), o.count.data(), heap.data());
    return o;
}

TEST(Pack, OneItemPerPackKeepsIndexOrder) {
    // n/m == 1: item i → pack i whatever the weights.
    Packed p = pack({1, 9, 3, 7}, 4);
    EXPECT_EQ(p.pack_of, (V{0, 1, 2, 3}));
    EXPECT_EQ(p.rank, (V{0, 0, 0, 0}));
}

TEST(Pack, HeaviestFirstWithTies) {
    // w = {3, 5, 5, 1, 2, 2}, 2 packs of 3. Visit order 1, 2 (equal 5s by index), 0, 4, 5, 3.
    //   1 → p0 (both empty: lowest index)  totals 5 0
    //   2 → p1                             totals 5 5
    //   0 → p0 (5 = 5: lowest index)       totals 8 5
    //   4 → p1                             totals 8 7
    //   5 → p1                             totals 8 9, p1 full
    //   3 → p0 (the only one with room)    totals 9 9
    Packed p = pack({3, 5, 5, 1, 2, 2}, 2);
    EXPECT_EQ(p.pack_of, (V{0, 0, 1, 0, 1, 1}));
    EXPECT_EQ(p.rank, (V{1, 0, 0, 2, 1, 2}));
}

TEST(Pack, RoomBeatsLightness) {
    // 10 → p0; 1 → p1; 1 → p1 (1 < 10), p1 full; 1 → p0 although p0 is far heavier.
    Packed p = pack({10, 1, 1, 1}, 2);
    EXPECT_EQ(p.pack_of, (V{0, 1, 1, 0}));
    EXPECT_EQ(p.rank, (V{0, 0, 1, 1}));
}

TEST(Pack, EqualWeightsDealRoundRobin) {
    // Each arrival makes its pack the heaviest, so the next tie goes to the next lowest index.
    Packed p = pack(std::vector<double>(6, 1.0), 3);
    EXPECT_EQ(p.pack_of, (V{0, 1, 2, 0, 1, 2}));
    EXPECT_EQ(p.rank, (V{0, 0, 0, 1, 1, 1}));
}

TEST(Pack, ZeroWeightsFillPacksInOrder) {
    // Totals stay 0, so the lowest-index pack with room wins every tie until it is full.
    Packed p = pack(std::vector<double>(6, 0.0), 3);
    EXPECT_EQ(p.pack_of, (V{0, 0, 1, 1, 2, 2}));
    EXPECT_EQ(p.rank, (V{0, 1, 0, 1, 0, 1}));
}

TEST(Pack, SinglePackTakesEverythingHeaviestFirst) {
    Packed p = pack({1, 4, 2}, 1);
    EXPECT_EQ(p.pack_of, (V{0, 0, 0}));
    EXPECT_EQ(p.rank, (V{2, 0, 1}));
}

TEST(Replicate, REqualsEIsIdentity) {
    Replicated o = replicate({5, 0, 2}, 3);
    EXPECT_EQ(o.phy2item, (V{0, 1, 2}));
    EXPECT_EQ(o.rank, (V{0, 0, 0}));
    EXPECT_EQ(o.count, (V{1, 1, 1}));
}

TEST(Replicate, LargestLoadPerReplicaWithTies) {
    // w = {4, 2, 4, 1}; w/count: slot 4: 4 2 4 1 → 0 (tie with 2: lowest index);
    // slot 5: 2 2 4 1 → 2; slot 6: 2 2 2 1 → 0 (three-way tie), its third copy (rank 2).
    Replicated o = replicate({4, 2, 4, 1}, 7);
    EXPECT_EQ(o.phy2item, (V{0, 1, 2, 3, 0, 2, 0}));
    EXPECT_EQ(o.rank, (V{0, 0, 0, 0, 1, 1, 2}));
    EXPECT_EQ(o.count, (V{3, 1, 2, 1}));
}

TEST(Replicate, EqualWeightsRoundRobin) {
    Replicated o = replicate({1, 1, 1}, 7);
    EXPECT_EQ(o.phy2item, (V{0, 1, 2, 0, 1, 2, 0}));
    EXPECT_EQ(o.rank, (V{0, 0, 0, 1, 1, 1, 2}));
    EXPECT_EQ(o.count, (V{3, 2, 2}));
}

TEST(Replicate, AllZeroLoadsGoToExpertZero) {
    // Every w/count ties at 0, so every extra slot goes to the lowest index.
    Replicated o = replicate({0, 0}, 4);
    EXPECT_EQ(o.phy2item, (V{0, 1, 0, 0}));
    EXPECT_EQ(o.count, (V{3, 1}));
}

// Plans one layer and returns the plan (caller frees).
EplbPlan *plan1(const std::vector<double> &load, int R, int Ng, int Nn, int G) {
    EplbShape s = {1, (int)load.size(), R, Ng, Nn, G};
    EplbPlan *p = eplb_plan_create(&s);
    eplb_plan_run(p, load.data());
    return p;
}

V span(const int *v, int n) { return V(v, v + n); }

// The heaps choose exactly what a scan over every pack or item chose (the rule of eplb.h, written
// out as that scan here), on random weights drawn from a few values so that ties are common, and at
// the largest shapes `moelab eplb` takes, where the scans ran for hours (review, 2026-12-05).
Packed pack_by_scan(const std::vector<double> &w, int m) {
    const int n = (int)w.size(), per = n / m;
    Packed r{V(n), V(n)};
    if (per == 1) {  // item i to pack i
        for (int i = 0; i < n; i++) r.pack_of[i] = i, r.rank[i] = 0;
        return r;
    }
    std::vector<int> order(n), cnt(m, 0);
    std::vector<double> total(m, 0.0);
    for (int i = 0; i < n; i++) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return w[a] > w[b]; });
    for (int i : order) {
        int best = -1;
        for (int j = 0; j < m; j++)
            if (cnt[j] < per && (best < 0 || total[j] < total[best])) best = j;
        r.pack_of[i] = best;
        r.rank[i] = cnt[best]++;
        total[best] += w[i];
    }
    return r;
}

Replicated replicate_by_scan(const std::vector<double> &w, int r) {
    const int n = (int)w.size();
    Replicated o{V(r), V(r), V(n, 1)};
    for (int i = 0; i < n; i++) o.phy2item[i] = i, o.rank[i] = 0;
    for (int p = n; p < r; p++) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (w[i] / o.count[i] > w[best] / o.count[best]) best = i;
        o.phy2item[p] = best;
        o.rank[p] = o.count[best]++;
    }
    return o;
}

TEST(Property, HeapsChooseAsTheScans) {
    RngStream rng = rng_stream(20261205, 3);
    for (int trial = 0; trial < 300; trial++) {
        const int m = 1 + (int)(rng_next_u32(&rng) % 9), per = 1 + (int)(rng_next_u32(&rng) % 7);
        const int n = m * per, values = 1 + (int)(rng_next_u32(&rng) % 4);
        std::vector<double> w(n);
        for (double &x : w) x = (double)(rng_next_u32(&rng) % values);
        const Packed a = pack(w, m), b = pack_by_scan(w, m);
        ASSERT_EQ(a.pack_of, b.pack_of) << "trial " << trial;
        ASSERT_EQ(a.rank, b.rank) << "trial " << trial;
        const int r = n + (int)(rng_next_u32(&rng) % (2 * n + 1));
        const Replicated c = replicate(w, r), d = replicate_by_scan(w, r);
        ASSERT_EQ(c.phy2item, d.phy2item) << "trial " << trial;
        ASSERT_EQ(c.rank, d.rank) << "trial " << trial;
        ASSERT_EQ(c.count, d.count) << "trial " << trial;
    }
    // The largest shapes in well under a second each (the scans: n·m and (r - n)·n steps).
    std::vector<double> w(1 << 19);
    for (size_t i = 0; i < w.size(); i++) w[i] = (double)(i % 1000);
    const Packed big = pack(w, 1 << 18);
    std::vector<int> filled(1 << 18, 0);
    for (int p : big.pack_of) filled[p]++;
    EXPECT_EQ(*std::min_element(filled.begin(), filled.end()), 2);
    EXPECT_EQ(*std::max_element(filled.begin(), filled.end()), 2);
    const Replicated rep = replicate(std::vector<double>(w.begin(), w.begin() + (1 << 18)), 1 << 20);
    EXPECT_EQ(rep.phy2item.size(), (size_t)1 << 20);
}

TEST(Plan, HandWorkedHierarchical) {
    // E = 8, Ng = 4 groups of 2, Nn = 2 nodes, G = 4 ranks (2 per node), R = 12 (6 per node, 3 per
    // rank). load = 6 2 | 1 1 | 9 4 | 3 3  (groups g0..g3, sums 8 2 13 6).
    // (1) pack groups onto 2 nodes, 2 each: order g2(13) g0(8) g3(6) g1(2).
    //     g2 → n0 r0 (tie → 0); g0 → n1 r0; g3 → n1 r1 (8 < 13); g1 → n0 r1 (13 < 14).
    //     renumber m = (node·2 + rank)·2 + o: g2 → 0,1; g1 → 2,3; g0 → 4,5; g3 → 6,7.
    //     node 0 holds logical 4 5 2 3 (loads 9 4 1 1), node 1 holds 0 1 6 7 (loads 6 2 3 3).
    // (2) replicate 4 → 6 slots per node.
    //     node 0: extra slots → item 0 (9), then item 0 (9/2 = 4.5 > 4): items 0 1 2 3 0 0,
    //             replica ranks 0 0 0 0 1 2, counts 3 1 1 1.
    //     node 1: extra → item 0 (6), then 6/2 = 3 ties with items 2, 3 → item 0: items 0 1 2 3 0 0,
    //             ranks 0 0 0 0 1 2, counts 3 1 1 1.
    // (3) pack each node's 6 replicas onto its 2 ranks, 3 each.
    //     node 0 weights (load/count) j0..j5 = 3 4 1 1 3 3; order j1 j0 j4 j5 j2 j3:
    //       j1 → r0 (4 0); j0 → r1 (4 3); j4 → r1 (4 6); j5 → r0 (7 6); j2 → r1 (7 7, full); j3 → r0.
    //       slots 0..5 = j1 j5 j3 | j0 j4 j2 → logical 5 4 3 | 4 4 2, replica ranks 0 2 0 | 0 1 0.
    //     node 1 weights = 2 2 3 3 2 2; order j2 j3 j0 j1 j4 j5:
    //       j2 → r0 (3 0); j3 → r1 (3 3); j0 → r0 (5 3); j1 → r1 (5 5); j4 → r0 (full); j5 → r1.
    //       slots 6..11 = j2 j0 j4 | j3 j1 j5 → logical 6 0 0 | 7 1 0, replica ranks 0 0 1 | 0 0 2.
    // Rank loads after: 4+3+1 = 8 | 3+3+1 = 7 | 3+2+2 = 7 | 3+2+2 = 7 → max/mean = 8 / 7.25.
    // Before (2 experts per rank): 8 | 2 | 13 | 6 → 13 / 7.25.
    std::vector<double> load = {6, 2, 1, 1, 9, 4, 3, 3};
    EplbPlan *p = plan1(load, 12, 4, 2, 4);
    EXPECT_EQ(p->hierarchical, 1);
    EXPECT_EQ(span(p->phy2log, 12), (V{5, 4, 3, 4, 4, 2, 6, 0, 0, 7, 1, 0}));
    EXPECT_EQ(span(p->phyrank, 12), (V{0, 2, 0, 0, 1, 0, 0, 0, 1, 0, 0, 2}));
    EXPECT_EQ(span(p->logcnt, 8), (V{3, 1, 1, 1, 3, 1, 1, 1}));
    ASSERT_EQ(p->maxcnt, 3);
    EXPECT_EQ(span(p->log2phy, 24), (V{7, 8, 11, 10, -1, -1, 5, -1, -1, 2, -1, -1,  //
                                       3, 4, 1, 0, -1, -1, 6, -1, -1, 9, -1, -1}));
    EXPECT_DOUBLE_EQ(eplb_rank_imbalance(load.data(), 8, p->phy2log, p->logcnt, 12, 4), 8 / 7.25);
    EXPECT_DOUBLE_EQ(eplb_rank_imbalance(load.data(), 8, nullptr, nullptr, 8, 4), 13 / 7.25);
    eplb_plan_free(p);
}

TEST(Plan, HandWorkedGlobal) {
    // Ng = 1, Nn = 2: 1 % 2 != 0 → global policy. E = 4, R = 6, G = 2 (3 slots per rank).
    // replicate 5 1 3 1: slot 4 → 0 (5), slot 5 → 2 (3 > 2.5): items 0 1 2 3 0 2, counts 2 1 2 1.
    // weights 2.5 1 1.5 1 2.5 1.5, order j0 j4 j2 j5 j1 j3: j0 → r0; j4 → r1; j2 → r0 (2.5 = 2.5);
    // j5 → r1; j1 → r0 (4 = 4); j3 → r1. Slots j0 j2 j1 | j4 j5 j3 → logical 0 2 1 | 0 2 3.
    std::vector<double> load = {5, 1, 3, 1};
    EplbPlan *p = plan1(load, 6, 1, 2, 2);
    EXPECT_EQ(p->hierarchical, 0);
    EXPECT_EQ(span(p->phy2log, 6), (V{0, 2, 1, 0, 2, 3}));
    EXPECT_EQ(span(p->logcnt, 4), (V{2, 1, 2, 1}));
    ASSERT_EQ(p->maxcnt, 2);
    EXPECT_EQ(span(p->log2phy, 8), (V{0, 3, 2, -1, 1, 4, 5, -1}));
    EXPECT_DOUBLE_EQ(eplb_rank_imbalance(load.data(), 4, p->phy2log, p->logcnt, 6, 2), 1.0);
    EXPECT_DOUBLE_EQ(eplb_rank_imbalance(load.data(), 4, nullptr, nullptr, 4, 2), 1.2);
    eplb_plan_free(p);
}

TEST(Plan, MaxcntSpansAllLayers) {
    // Layer 0 replicates one expert 3 times, layer 1 spreads: both use the stride maxcnt = 3.
    EplbShape s = {2, 2, 4, 1, 1, 2};
    EplbPlan *p = eplb_plan_create(&s);
    std::vector<double> load = {9, 1, 1, 1};
    eplb_plan_run(p, load.data());
    ASSERT_EQ(p->maxcnt, 3);
    EXPECT_EQ(span(p->logcnt, 4), (V{3, 1, 2, 2}));
    EXPECT_EQ(span(p->log2phy + 6, 6)[2], -1);  // layer 1, expert 0, padding of the third replica
    eplb_plan_free(p);
}

TEST(Imbalance, ZeroLoadIsBalanced) {
    std::vector<double> load = {0, 0, 0, 0};
    EXPECT_EQ(eplb_rank_imbalance(load.data(), 4, nullptr, nullptr, 4, 2), 1.0);
}

TEST(Validate, ShapeRulesAreNamed) {
    char buf[256];
    struct Case {
        EplbShape s;
        const char *rule;
    } cases[] = {
        {{1, 8, 6, 1, 1, 2}, "R >= E"},        {{1, 8, 10, 1, 1, 4}, "R % G == 0"},
        {{1, 8, 12, 3, 1, 4}, "E % Ng == 0"},  {{1, 8, 12, 4, 3, 4}, "G % Nn == 0"},
        {{0, 8, 12, 4, 2, 4}, "L (layers) must be >= 1"},
    };
    for (const Case &c : cases) {
        const char *m = eplb_shape_error(&c.s, buf, sizeof buf);
        ASSERT_NE(m, nullptr) << c.rule;
        EXPECT_NE(std::string(m).find(c.rule), std::string::npos) << m;
    }
    EplbShape ok = {61, 256, 320, 32, 8, 64};
    EXPECT_EQ(eplb_shape_error(&ok, buf, sizeof buf), nullptr);
}

TEST(Validate, LoadErrorNamesLayerAndExpert) {
    char buf[256];
    std::vector<double> load = {1, 2, 3, 4, 5, -1};
    const char *m = eplb_load_error(load.data(), 2, 3, buf, sizeof buf);
    ASSERT_NE(m, nullptr);
    EXPECT_NE(std::string(m).find("layer 1, expert 2"), std::string::npos) << m;
    load[5] = INFINITY;
    EXPECT_NE(eplb_load_error(load.data(), 2, 3, buf, sizeof buf), nullptr);
    load[5] = NAN;
    EXPECT_NE(eplb_load_error(load.data(), 2, 3, buf, sizeof buf), nullptr);
    load[5] = 0;
    EXPECT_EQ(eplb_load_error(load.data(), 2, 3, buf, sizeof buf), nullptr);
}

void create_bad() {
    EplbShape s = {1, 8, 10, 1, 1, 4};
    eplb_plan_create(&s);
}

void run_nan() {
    EplbShape s = {2, 4, 4, 1, 1, 2};
    EplbPlan *p = eplb_plan_create(&s);
    std::vector<double> load = {1, 1, 1, 1, 1, 1, NAN, 1};
    eplb_plan_run(p, load.data());
}

TEST(ValidateDeath, BadShapeIsUsageError) {
    EXPECT_EXIT(create_bad(), ::testing::ExitedWithCode(2), "rule R % G == 0 broken: R = 10.*G = 4");
}

TEST(ValidateDeath, BadLoadIsUsageError) {
    EXPECT_EXIT(run_nan(), ::testing::ExitedWithCode(2), "layer 1, expert 2 is nan");
}

// ---- properties on random inputs ----

struct Rand {
    RngStream s;
    explicit Rand(uint32_t stream) : s(rng_stream(20240611, stream)) {}
    int below(int n) { return (int)(rng_next_u32(&s) % (uint32_t)n); }
    double uniform() { return rng_next_uniform(&s); }
};

// Skewed loads with frequent exact ties and zeros: a heavy-tailed base value per expert.
std::vector<double> random_loads(Rand &r, int n) {
    std::vector<double> w(n);
    for (double &x : w) {
        int kind = r.below(8);
        if (kind == 0) x = 0;
        else if (kind == 1) x = 100;
        else x = std::floor(10.0 / (0.01 + r.uniform() * r.uniform()));
    }
    return w;
}

// Asserts every invariant of layer l of a plan.
void check_layer(const EplbPlan *p, int l) {
    const EplbShape &s = p->shape;
    int E = s.E, R = s.R, M = p->maxcnt;
    const int *phy2log = p->phy2log + (size_t)l * R, *logcnt = p->logcnt + (size_t)l * E;
    const int *log2phy = p->log2phy + (size_t)l * E * M;
    int sum = 0;
    V seen(R, 0);
    for (int e = 0; e < E; e++) {
        ASSERT_GE(logcnt[e], 1) << "expert " << e;
        ASSERT_LE(logcnt[e], M);
        sum += logcnt[e];
        for (int k = 0; k < M; k++) {
            int q = log2phy[e * M + k];
            if (k >= logcnt[e]) {
                ASSERT_EQ(q, -1);
                continue;
            }
            ASSERT_TRUE(q >= 0 && q < R);
            ASSERT_EQ(phy2log[q], e) << "log2phy/phy2log disagree at slot " << q;
            ASSERT_EQ(p->phyrank[(size_t)l * R + q], k);
            seen[q]++;
        }
    }
    ASSERT_EQ(sum, R);
    // log2phy names every slot exactly once, so each rank holds exactly R/G of them.
    V per_rank(s.G, 0);
    for (int q = 0; q < R; q++) {
        ASSERT_EQ(seen[q], 1) << "slot " << q;
        per_rank[q / (R / s.G)]++;
    }
    for (int c : per_rank) ASSERT_EQ(c, R / s.G);
    if (p->hierarchical) {
        // Every slot of every expert of a group lies on one node; each node holds E/Nn experts.
        int gsize = E / s.Ng, Rn = R / s.Nn;
        V experts_on_node(s.Nn, 0);
        for (int g = 0; g < s.Ng; g++) {
            int node = log2phy[(g * gsize) * M] / Rn;
            for (int e = g * gsize; e < (g + 1) * gsize; e++) {
                for (int k = 0; k < logcnt[e]; k++) ASSERT_EQ(log2phy[e * M + k] / Rn, node) << "group " << g;
                experts_on_node[node]++;
            }
        }
        for (int c : experts_on_node) ASSERT_EQ(c, E / s.Nn);
    }
}

TEST(Property, RandomShapesAndLoads) {
    Rand r(1);
    int n_hier = 0, n_glob = 0;
    for (int trial = 0; trial < 400; trial++) {
        EplbShape s;
        s.Nn = 1 + r.below(4);
        s.G = s.Nn * (1 + r.below(4));
        s.R = s.G * (1 + r.below(5));
        s.Ng = 1 + r.below(8);
        s.E = s.Ng * (1 + r.below(4));
        s.L = 1 + r.below(3);
        if (s.E > s.R) {
            trial--;
            continue;
        }
        EplbPlan *p = eplb_plan_create(&s);
        ASSERT_EQ(p->hierarchical, s.Ng % s.Nn == 0);
        (p->hierarchical ? n_hier : n_glob)++;
        std::vector<double> load = random_loads(r, s.L * s.E);
        eplb_plan_run(p, load.data());
        V first(p->phy2log, p->phy2log + s.L * s.R);
        for (int l = 0; l < s.L; l++) {
            SCOPED_TRACE(testing::Message() << "trial " << trial << " L=" << s.L << " E=" << s.E << " R=" << s.R
                                            << " Ng=" << s.Ng << " Nn=" << s.Nn << " G=" << s.G << " layer " << l);
            check_layer(p, l);
            if (HasFatalFailure()) {
                eplb_plan_free(p);
                return;
            }
        }
        // The reused workspace leaves no trace: other loads, then the same loads, give the same plan.
        std::vector<double> other = random_loads(r, s.L * s.E);
        eplb_plan_run(p, other.data());
        eplb_plan_run(p, load.data());
        EXPECT_EQ(V(p->phy2log, p->phy2log + s.L * s.R), first) << "trial " << trial;
        eplb_plan_free(p);
    }
    EXPECT_GT(n_hier, 50);
    EXPECT_GT(n_glob, 50);
}

TEST(Property, ReplicationNeverHurtsSkewedLoads) {
    // Over many skewed layers, the planned placement is better balanced than E/G experts per rank.
    Rand r(2);
    for (EplbShape s : {EplbShape{50, 64, 80, 8, 4, 16}, EplbShape{50, 64, 80, 1, 2, 16},
                        EplbShape{50, 16, 16, 4, 2, 4}}) {
        EplbPlan *p = eplb_plan_create(&s);
        std::vector<double> load = random_loads(r, s.L * s.E);
        eplb_plan_run(p, load.data());
        double before = 0, after = 0;
        for (int l = 0; l < s.L; l++) {
            const double *ld = load.data() + (size_t)l * s.E;
            before += eplb_rank_imbalance(ld, s.E, nullptr, nullptr, s.E, s.G);
            after += eplb_rank_imbalance(ld, s.E, p->phy2log + (size_t)l * s.R, p->logcnt + (size_t)l * s.E, s.R, s.G);
        }
        EXPECT_LT(after, before) << "E=" << s.E << " R=" << s.R << " G=" << s.G;
        if (s.R > s.E) {
            EXPECT_LT(after / s.L, 1.5) << "mean imbalance after, E=" << s.E;
        }
        eplb_plan_free(p);
    }
}

}  // namespace
