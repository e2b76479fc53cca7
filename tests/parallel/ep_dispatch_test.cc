// The expert-parallel dispatcher under mpirun (CI: 1, 2 and 4 ranks): every rank predicts, from all
// ranks' routings, which rows its expert slots must receive and in which order (slot, then source
// rank, then token and choice), and what every (token, choice) must get back after a per-expert
// transform. This checks the one row exchange per direction and the receive permute around it.
// Covers uneven tokens per rank, a rank with no tokens, experts with no tokens, ranks that receive
// no rows while one expert receives every row, one slot per rank (rows land in place, no permute),
// replicas (the EPLB placement hook), both dispatch flavours (x rows and per-choice rows), the
// dispatch and the combine started and finished apart (the overlaps), rows of one 4-byte element
// (the MoE layer's row dots), and that a one-rank group reproduces the local dispatcher bit for bit.
#include <gtest/gtest.h>

#include <vector>

extern "C" {
#include "framework/core/rng.h"
#include "layers/moe.h"
#include "parallel/comm.h"
#include "parallel/ep_dispatch.h"
#include "parallel/grid.h"
}

namespace {

const int kD = 3;  // row width of the checks (elements)

struct Routing {
    int N, K;
    std::vector<int> idx;  // (N, K)
};

// Rank r's routing: N = 2 + 3r tokens (none on rank 1 when `empty_rank1`), K distinct experts per
// token drawn from [0, E_used) so that experts E_used..E-1 receive nothing; with hot >= 0 every
// token's first choice is expert `hot`.
Routing routing(int r, int E_used, int K, bool empty_rank1, uint32_t seed, int hot = -1) {
    Routing R;
    R.N = empty_rank1 && r == 1 ? 0 : 2 + 3 * r;
    R.K = K;
    RngStream s = rng_stream(seed, (uint64_t)r);
    for (int t = 0; t < R.N; t++) {
        std::vector<int> chosen;
        if (hot >= 0) chosen.push_back(hot);
        while ((int)chosen.size() < K) {
            int e = (int)(rng_next_u32(&s) % (uint32_t)E_used);
            bool dup = false;
            for (int c : chosen) dup = dup || c == e;
            if (!dup) chosen.push_back(e);
        }
        R.idx.insert(R.idx.end(), chosen.begin(), chosen.end());
    }
    return R;
}

// Home row of token t on rank r (D values that identify both).
float home_value(int r, int t, int d) { return (float)(1000 * r + 10 * t + d); }
// Per-choice row of pair (t, k) on rank r.
float pair_value(int r, int t, int k, int d) { return (float)(-1000 * r - 10 * t - 3 * k - d); }

// Physical slot of every pair of every rank under phy2log (the rule of ep_dispatch.h).
std::vector<std::vector<int>> slots_of(const std::vector<Routing> &all, const std::vector<int> &phy2log, int E) {
    std::vector<std::vector<int>> slots(all.size());
    for (size_t r = 0; r < all.size(); r++) {
        std::vector<std::vector<int>> replicas(E);
        for (size_t p = 0; p < phy2log.size(); p++) replicas[phy2log[p]].push_back((int)p);
        std::vector<int> seen(E, 0);
        for (int e : all[r].idx) {
            const std::vector<int> &rep = replicas[e];
            slots[r].push_back(rep[(seen[e]++ + (int)r) % rep.size()]);
        }
    }
    return slots;
}

// Runs one plan/dispatch/combine round of rows of D elements on the EP group `ep` and checks it
// against the prediction.
void check_round(Comm *ep, MoeDispatcher *d, const std::vector<int> &phy2log, int E, int K, bool empty_rank1,
                 uint32_t seed, int hot = -1, int D = kD) {
    const int P = ep->size, me = ep->rank, R = (int)phy2log.size(), Ln = R / P;
    ASSERT_EQ(d->n_local, Ln);
    std::vector<Routing> all;
    for (int r = 0; r < P; r++) all.push_back(routing(r, E - 1, K, empty_rank1, seed, hot));
    const Routing &mine = all[me];
    const std::vector<std::vector<int>> slots = slots_of(all, phy2log, E);

    // Expected rows: for each of my slots, each source rank's pairs in (token, choice) order.
    std::vector<float> want_x, want_pc;
    std::vector<int> want_counts(Ln, 0);
    for (int s = 0; s < Ln; s++)
        for (int r = 0; r < P; r++)
            for (int i = 0; i < all[r].N * K; i++)
                if (slots[r][i] == me * Ln + s) {
                    want_counts[s]++;
                    for (int dd = 0; dd < D; dd++) {
                        want_x.push_back(home_value(r, i / K, dd));
                        want_pc.push_back(pair_value(r, i / K, i % K, dd));
                    }
                }

    std::vector<int> counts(Ln, -1);
    int n_rows = -1;
    MoeDispatchPlan *p = d->plan(d, mine.idx.data(), mine.N, K, &n_rows, counts.data());
    ASSERT_EQ(counts, want_counts);
    ASSERT_EQ(n_rows * D, (int)want_x.size());

    std::vector<float> x(mine.N * D + 1), xk(mine.N * K * D + 1);
    for (int t = 0; t < mine.N; t++)
        for (int dd = 0; dd < D; dd++) {
            x[t * D + dd] = home_value(me, t, dd);
            for (int k = 0; k < K; k++) xk[(t * K + k) * D + dd] = pair_value(me, t, k, dd);
        }
    std::vector<float> rows(n_rows * D + 1);
    d->to_experts(d, p, x.data(), 0, rows.data(), D);
    EXPECT_EQ(std::vector<float>(rows.begin(), rows.end() - 1), want_x);
    d->to_experts(d, p, xk.data(), 1, rows.data(), D);
    EXPECT_EQ(std::vector<float>(rows.begin(), rows.end() - 1), want_pc);

    // "Experts": slot s multiplies its rows by (logical expert + 1), so every pair must come back as
    // its own row times its chosen expert + 1, whichever replica served it.
    // This dispatch is started and finished apart, as the MoE layer does around its shared experts.
    ASSERT_TRUE(d->to_experts_start && d->finish);
    d->to_experts_start(d, p, x.data(), 0, rows.data(), D);
    d->finish(d, p);
    for (int s = 0, off = 0; s < Ln; off += counts[s], s++)
        for (int i = off * D; i < (off + counts[s]) * D; i++) rows[i] *= (float)(phy2log[me * Ln + s] + 1);
    std::vector<float> back(mine.N * K * D + 1, -7.0f);
    d->from_experts(d, p, rows.data(), back.data(), D);
    for (int t = 0; t < mine.N; t++)
        for (int k = 0; k < K; k++)
            for (int dd = 0; dd < D; dd++)
                EXPECT_EQ(back[(t * K + k) * D + dd], home_value(me, t, dd) * (float)(mine.idx[t * K + k] + 1))
                    << "token " << t << " choice " << k;
    EXPECT_EQ(back[mine.N * K * D], -7.0f);
    // The combine started and finished apart (the token chunks' pipeline) brings the same rows home.
    ASSERT_TRUE(d->from_experts_start);
    std::vector<float> apart(back.size(), -7.0f);
    d->from_experts_start(d, p, rows.data(), apart.data(), D);
    d->finish(d, p);
    EXPECT_EQ(apart, back);
    d->release(d, p);
}

std::vector<int> identity(int E) {
    std::vector<int> v(E);
    for (int e = 0; e < E; e++) v[e] = e;
    return v;
}

TEST(EpDispatch, RoutesEveryPairToItsExpertAndBack) {
    Comm *w = comm_world();
    const int E = 8;
    if (E % w->size != 0) GTEST_SKIP() << "world size must divide 8";
    MoeDispatcher *d = ep_dispatcher_create(w, E);
    check_round(w, d, identity(E), E, 2, false, 1);
    check_round(w, d, identity(E), E, 3, true, 2);  // rank 1 routes nothing; expert 7 gets nothing
    check_round(w, d, identity(E), E, 1, false, 3);
    d->destroy(d);
}

TEST(EpDispatch, OneExpertReceivesEveryRow) {
    Comm *w = comm_world();
    const int E = 8;
    if (E % w->size != 0) GTEST_SKIP() << "world size must divide 8";
    MoeDispatcher *d = ep_dispatcher_create(w, E);
    // K = 1, every pair to expert 7 (the last rank's last slot): every other rank receives no rows,
    // and its own other slots none either.
    check_round(w, d, identity(E), E, 1, false, 4, E - 1);
    // K = 3, every token's first choice expert 7: it receives one row per token of every rank, next
    // to random ones, with rank 1 routing nothing.
    check_round(w, d, identity(E), E, 3, true, 5, E - 1);
    // The hot expert on rank 0 instead.
    check_round(w, d, identity(E), E, 1, false, 6, 0);
    d->destroy(d);
}

TEST(EpDispatch, OneSlotPerRankLandsInPlace) {
    // E = world size: each rank's rows arrive in expert order already (one slot), the case without
    // a receive permute; a round must give the same results as any other.
    Comm *w = comm_world();
    const int E = w->size;
    if (E < 2) GTEST_SKIP() << "needs 2 ranks or more (experts draw from E - 1)";
    MoeDispatcher *d = ep_dispatcher_create(w, E);
    check_round(w, d, identity(E), E, 1, false, 7);
    check_round(w, d, identity(E), E, 1, true, 8, E - 1);
    d->destroy(d);
}

TEST(EpDispatch, EveryEpGroupOfTheGrid) {
    Comm *w = comm_world();
    for (int ep = 1; ep <= w->size; ep *= 2) {
        if (w->size % ep != 0) continue;
        Grid *g = grid_create(w, 1, ep, 8);
        MoeDispatcher *d = ep_dispatcher_create(g->ep_comm, 8);
        check_round(g->ep_comm, d, identity(8), 8, 2, true, 10 + ep);
        d->destroy(d);
        grid_free(g);
    }
}

TEST(EpDispatch, ReplicasFromThePlacementHook) {
    Comm *w = comm_world();
    const int E = 4, P = w->size;
    if (E % P != 0) GTEST_SKIP() << "world size must divide 4";
    // Expert 0 is hot: P extra replicas on top of the identity block, one more slot per rank.
    std::vector<int> phy2log = identity(E);
    for (int j = 0; j < P; j++) phy2log.push_back(0);
    MoeDispatcher *d = ep_dispatcher_create(w, E);
    ep_dispatcher_set_placement(d, phy2log.data(), (int)phy2log.size());
    check_round(w, d, phy2log, E, 2, false, 20);
    check_round(w, d, phy2log, E, 1, true, 21);
    d->destroy(d);
}

// The MoE layer brings its experts' row dots home as rows of one fp32 value (moe.c): rows of a
// single 4-byte element travel like wider ones, with and without the receive permute.
TEST(EpDispatch, FourByteRowsTravelLikeWiderOnes) {
    Comm *w = comm_world();
    const int E = 8;
    if (E % w->size != 0) GTEST_SKIP() << "world size must divide 8";
    MoeDispatcher *d = ep_dispatcher_create(w, E);
    check_round(w, d, identity(E), E, 2, false, 40, -1, 1);
    check_round(w, d, identity(E), E, 3, true, 41, E - 1, 1);
    d->destroy(d);
    if (w->size >= 2) {
        MoeDispatcher *one = ep_dispatcher_create(w, w->size);  // one slot per rank: rows land in place
        check_round(w, one, identity(w->size), w->size, 1, false, 42, -1, 1);
        one->destroy(one);
    }
}

TEST(EpDispatch, OneRankGroupMatchesTheLocalDispatcherExactly) {
    const int D = kD;
    Comm *w = comm_world();
    Comm *self = comm_split(w, w->rank, 0, "self");
    const int E = 6, K = 2;
    Routing R = routing(0, E, K, false, 30);
    std::vector<float> x(R.N * D);
    for (size_t i = 0; i < x.size(); i++) x[i] = 0.25f * (float)i;
    MoeDispatcher *ep = ep_dispatcher_create(self, E), *loc = moe_local_dispatcher_create(E);
    std::vector<int> c1(E), c2(E);
    int n1 = 0, n2 = 0;
    MoeDispatchPlan *p1 = ep->plan(ep, R.idx.data(), R.N, K, &n1, c1.data());
    MoeDispatchPlan *p2 = loc->plan(loc, R.idx.data(), R.N, K, &n2, c2.data());
    ASSERT_EQ(n1, n2);
    EXPECT_EQ(c1, c2);
    std::vector<float> r1(n1 * D), r2(n2 * D);
    ep->to_experts(ep, p1, x.data(), 0, r1.data(), D);
    loc->to_experts(loc, p2, x.data(), 0, r2.data(), D);
    EXPECT_EQ(r1, r2);
    ep->release(ep, p1);
    loc->release(loc, p2);
    ep->destroy(ep);
    loc->destroy(loc);
    comm_free(self);
}

}  // namespace
