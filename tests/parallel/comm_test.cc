// Communicators, the process grid and data-parallel gradient sync, run under mpirun with any number
// of ranks (CI: 1, 2 and 4): every collective against values each rank can predict, all-to-all-v with
// uneven and zero counts, sub-group splits, every grid layout the world size allows, bucketed
// averaging with tensors spanning buckets, the global gradient norm, and ZeRO-1's sharded sync
// (reduce-scatter into shards that tile every tensor once, their norm, the gathers of weights and
// moments).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

extern "C" {
#include "parallel/comm.h"
#include "parallel/dp_sync.h"
#include "parallel/grid.h"
}

namespace {

Comm *world() { return comm_world(); }

// A peer is named by its rank in the group and, in a sub-group, its world rank: "recv from rank 1
// on group pp" read as world rank 1 (review, 2026-12-05). The world ranks come from the split.
TEST(Comm, PeersNamedWithTheirWorldRank) {
    char buf[COMM_OP_NAME_MAX];
    int world_of[2] = {4, 6};
    Comm pp = {.name = "pp", .rank = 0, .size = 2, .world_of = world_of, .ops = nullptr, .impl = nullptr};
    EXPECT_STREQ(comm_p2p_name(buf, &pp, -1, 1), "recv from rank 1 (world rank 6)");
    EXPECT_STREQ(comm_p2p_name(buf, &pp, 1, 0), "send to rank 1 (world rank 6) / recv from rank 0 (world rank 4)");
    EXPECT_STREQ(comm_p2p_name(buf, comm_world(), 3, -1), "send to rank 3");
    // Reversed keys: member r of the split is world rank W - 1 - r.
    Comm *rev = comm_split(comm_world(), 0, comm_world()->size - comm_world()->rank, "rev");
    for (int r = 0; r < rev->size && rev->world_of; r++) EXPECT_EQ(rev->world_of[r], rev->size - 1 - r);
    EXPECT_EQ(rev->world_of != NULL, rev->size > 1);
    comm_free(rev);
}

TEST(Comm, AllreduceSumAndMaxInEveryType) {
    const int P = world()->size, r = world()->rank;
    std::vector<float> f = {1.0f * r, 2.5f, -1.0f * r};
    comm_allreduce(world(), f.data(), f.size(), COMM_F32, COMM_SUM);
    EXPECT_EQ(f[0], P * (P - 1) / 2.0f);
    EXPECT_EQ(f[1], 2.5f * P);
    EXPECT_EQ(f[2], -P * (P - 1) / 2.0f);
    double d = 0.5 + r;
    comm_allreduce(world(), &d, 1, COMM_F64, COMM_MAX);
    EXPECT_EQ(d, 0.5 + (P - 1));
    int i = 10 - r;
    comm_allreduce(world(), &i, 1, COMM_I32, COMM_MAX);
    EXPECT_EQ(i, 10);
    long l[2] = {(long)1 << 40, r};
    comm_allreduce(world(), l, 2, COMM_I64, COMM_SUM);
    EXPECT_EQ(l[0], ((long)1 << 40) * P);
    EXPECT_EQ(l[1], (long)P * (P - 1) / 2);
}

TEST(Comm, AllgatherAndReduceScatter) {
    const int P = world()->size, r = world()->rank;
    int mine[2] = {r, 100 + r};
    std::vector<int> all(2 * P);
    comm_allgather(world(), mine, all.data(), 2, COMM_I32);
    for (int j = 0; j < P; j++) {
        EXPECT_EQ(all[2 * j], j);
        EXPECT_EQ(all[2 * j + 1], 100 + j);
    }
    // send (P, 3): block j of rank r holds r + 10·j + {0, 1, 2}; rank r gets Σ_src of block r.
    std::vector<float> send(3 * P), recv(3);
    for (int j = 0; j < P; j++)
        for (int k = 0; k < 3; k++) send[3 * j + k] = (float)(r + 10 * j + k);
    comm_reduce_scatter(world(), send.data(), recv.data(), 3, COMM_F32, COMM_SUM);
    for (int k = 0; k < 3; k++) EXPECT_EQ(recv[k], P * (P - 1) / 2.0f + P * (10.0f * r + k));
}

// Elements rank `src` sends to rank `dst`: uneven, and zero for some pairs (including to itself).
size_t a2a_count(int src, int dst) { return (size_t)((src + 2 * dst) % 3); }
float a2a_value(int src, int dst, size_t i) { return (float)(1000 * src + 10 * dst + (int)i); }

// This rank's side of the uneven all-to-all-v above: counts, what it sends, what it must receive.
struct A2aCase {
    std::vector<size_t> sc, rc;
    std::vector<float> send, expect;
};
A2aCase a2a_case(int P, int r) {
    A2aCase a{std::vector<size_t>(P), std::vector<size_t>(P), {}, {}};
    for (int j = 0; j < P; j++) {
        a.sc[j] = a2a_count(r, j);
        a.rc[j] = a2a_count(j, r);
        for (size_t i = 0; i < a.sc[j]; i++) a.send.push_back(a2a_value(r, j, i));
        for (size_t i = 0; i < a.rc[j]; i++) a.expect.push_back(a2a_value(j, r, i));
    }
    return a;
}

TEST(Comm, AlltoallvWithUnevenAndZeroCounts) {
    const int P = world()->size, r = world()->rank;
    A2aCase x = a2a_case(P, r);
    std::vector<size_t> &sc = x.sc, &rc = x.rc;
    std::vector<float> &send = x.send, &expect = x.expect;
    std::vector<float> recv(expect.size() + 1, -1.0f);  // one spare element must stay untouched
    comm_alltoallv(world(), send.data(), sc.data(), recv.data(), rc.data(), COMM_F32);
    for (size_t i = 0; i < expect.size(); i++) EXPECT_EQ(recv[i], expect[i]) << "element " << i;
    EXPECT_EQ(recv.back(), -1.0f);

    std::vector<int> s(P), got(P);
    for (int j = 0; j < P; j++) s[j] = 100 * r + j;
    comm_alltoall(world(), s.data(), got.data(), 1, COMM_I32);
    for (int j = 0; j < P; j++) EXPECT_EQ(got[j], 100 * j + r);
}

TEST(Comm, NonBlockingAllreduceAndAlltoallvInFlightTogether) {
    const int P = world()->size, r = world()->rank;
    // Two all-reduces and an all-to-all-v in flight at once, completed out of start order.
    std::vector<double> a = {1.0 * r, 2.0}, b = {0.5 * r};
    A2aCase x = a2a_case(P, r);
    std::vector<size_t> &sc = x.sc, &rc = x.rc;
    std::vector<float> &send = x.send, &expect = x.expect;
    std::vector<float> recv(expect.size() + 1, -1.0f);
    CommRequest *ra = comm_iallreduce(world(), a.data(), a.size(), COMM_F64, COMM_SUM);
    CommRequest *rv = comm_ialltoallv(world(), send.data(), sc.data(), recv.data(), rc.data(), COMM_F32);
    CommRequest *rb = comm_iallreduce(world(), b.data(), 1, COMM_F64, COMM_MAX);
    comm_wait(rb);
    while (!comm_test(rv)) {
    }
    comm_wait(ra);
    EXPECT_EQ(a[0], P * (P - 1) / 2.0);
    EXPECT_EQ(a[1], 2.0 * P);
    EXPECT_EQ(b[0], 0.5 * (P - 1));
    for (size_t i = 0; i < expect.size(); i++) EXPECT_EQ(recv[i], expect[i]) << "element " << i;
    EXPECT_EQ(recv.back(), -1.0f);
}

TEST(Comm, NonBlockingReduceScatterAndAllgather) {
    const int P = world()->size, r = world()->rank;
    // A reduce-scatter, an all-gather and an all-gather of 16-bit words in flight at once.
    std::vector<float> send(2 * P), recv(2, -1.0f);
    for (int j = 0; j < P; j++) {
        send[2 * j] = (float)(r + 10 * j);
        send[2 * j + 1] = 0.5f;
    }
    const int mine[2] = {r, -r};
    std::vector<int> all(2 * P, 7);
    const uint16_t w[3] = {(uint16_t)(0xbf80 + r), 0xffff, (uint16_t)r};
    std::vector<uint16_t> words(3 * P, 0);
    CommRequest *rs = comm_ireduce_scatter(world(), send.data(), recv.data(), 2, COMM_F32, COMM_SUM);
    CommRequest *ag = comm_iallgather(world(), mine, all.data(), 2, COMM_I32);
    CommRequest *aw = comm_iallgather(world(), w, words.data(), 3, COMM_B16);
    comm_wait(aw);
    while (!comm_test(ag)) {
    }
    comm_wait(rs);
    EXPECT_EQ(recv[0], P * (P - 1) / 2.0f + 10.0f * r * P);
    EXPECT_EQ(recv[1], 0.5f * P);
    for (int j = 0; j < P; j++) {
        EXPECT_EQ(all[2 * j], j);
        EXPECT_EQ(all[2 * j + 1], -j);
        EXPECT_EQ(words[3 * j], 0xbf80 + j);
        EXPECT_EQ(words[3 * j + 1], 0xffff);
        EXPECT_EQ(words[3 * j + 2], j);
    }
}

TEST(Comm, SplitIntoSubGroups) {
    const int P = world()->size, r = world()->rank;
    // Two groups by parity, ranked in reverse world order.
    Comm *c = comm_split(world(), r % 2, -r, "parity");
    std::vector<int> members;
    for (int j = P - 1; j >= 0; j--)
        if (j % 2 == r % 2) members.push_back(j);
    ASSERT_EQ(c->size, (int)members.size());
    EXPECT_STREQ(c->name, "parity");
    int w = r;
    std::vector<int> got(c->size);
    comm_allgather(c, &w, got.data(), 1, COMM_I32);
    EXPECT_EQ(got, members);
    EXPECT_EQ(got[c->rank], r);
    int sum = r;
    comm_allreduce(c, &sum, 1, COMM_I32, COMM_SUM);
    int expect = 0;
    for (int m : members) expect += m;
    EXPECT_EQ(sum, expect);
    comm_barrier(c);
    comm_free(c);
}

TEST(Comm, PointToPointRing) {
    const int P = world()->size, r = world()->rank;
    const int next = (r + 1) % P, prev = (r + P - 1) % P;
    double out[2] = {1.5 * r, -2.0 * r}, in[2] = {0, 0};
    comm_sendrecv(world(), out, 2, next, in, 2, prev, COMM_F64, 7);
    EXPECT_EQ(in[0], 1.5 * prev);
    EXPECT_EQ(in[1], -2.0 * prev);
    if (P < 2) return;
    // Blocking send/recv: even ranks send first, odd ranks receive first.
    long v = 0, mine = 1000 + r;
    if (r % 2 == 0 && r + 1 < P) {
        comm_send(world(), &mine, 1, COMM_I64, r + 1, 3);
        comm_recv(world(), &v, 1, COMM_I64, r + 1, 4);
        EXPECT_EQ(v, 1000 + r + 1);
    } else if (r % 2 == 1) {
        comm_recv(world(), &v, 1, COMM_I64, r - 1, 3);
        comm_send(world(), &mine, 1, COMM_I64, r - 1, 4);
        EXPECT_EQ(v, 1000 + r - 1);
    }
}

// Which world ranks each of this rank's communicators holds, from the documented layout.
void check_grid(int pp, int ep) {
    const int W = world()->size, E = 8;
    Grid *g = grid_create(world(), pp, ep, E);
    const int dp = W / pp;
    ASSERT_EQ(g->dp, dp);
    ASSERT_EQ(g->edp, dp / ep);
    EXPECT_EQ(g->rank, g->pp_rank * dp + g->edp_rank * ep + g->ep_rank);
    struct Case {
        Comm *c;
        std::vector<int> expect;
    };
    std::vector<Case> cases = {{g->dp_comm, {}}, {g->ep_comm, {}}, {g->edp_comm, {}}, {g->pp_comm, {}}};
    for (int s = 0; s < pp; s++)
        for (int e = 0; e < dp / ep; e++)
            for (int k = 0; k < ep; k++) {
                const int w = s * dp + e * ep + k;
                if (s == g->pp_rank) cases[0].expect.push_back(w);
                if (s == g->pp_rank && e == g->edp_rank) cases[1].expect.push_back(w);
                if (s == g->pp_rank && k == g->ep_rank) cases[2].expect.push_back(w);
                if (e == g->edp_rank && k == g->ep_rank) cases[3].expect.push_back(w);
            }
    for (Case &cs : cases) {
        std::vector<int> got(cs.c->size);
        int me = g->rank;
        comm_allgather(cs.c, &me, got.data(), 1, COMM_I32);
        std::sort(got.begin(), got.end());
        EXPECT_EQ(got, cs.expect) << "group " << cs.c->name << " of pp " << pp << " ep " << ep;
    }
    grid_free(g);
}

// Bad arguments of the calls' own checks, on a one-process group (no MPI calls): a tag above 32767,
// a peer outside the group, a send to this rank itself, a send/recv or all-to-all-v whose sizes
// differ, a timeout of 0, a negative split color and a reduction of 16-bit words each stop with
// their message. (One process only: with more, a stopping rank ends the whole job.)
TEST(CommDeathTest, BadArgumentsOnOneProcess) {
    if (world()->size != 1) GTEST_SKIP() << "needs a world of one process";
    Comm one = {.name = "one", .rank = 0, .size = 1, .world_of = nullptr, .ops = nullptr, .impl = nullptr};
    float a[4] = {1, 2, 3, 4}, b[4] = {0, 0, 0, 0};
    EXPECT_EXIT(comm_sendrecv(&one, a, 1, 0, b, 1, 0, COMM_F32, 32768), ::testing::ExitedWithCode(1),
                "send/recv on group one: tag 32768 outside \\[0, 32767\\]");
    EXPECT_EXIT(comm_sendrecv(&one, a, 1, 1, b, 1, 0, COMM_F32, 0), ::testing::ExitedWithCode(1),
                "send/recv on group one names rank 1, outside \\[0, 1\\)");
    EXPECT_EXIT(comm_send(&one, a, 1, COMM_F32, 0, 0), ::testing::ExitedWithCode(1),
                "send on group one addressed to this rank itself");
    EXPECT_EXIT(comm_sendrecv(&one, a, 2, 0, b, 3, 0, COMM_F32, 0), ::testing::ExitedWithCode(1),
                "sends 2 elements but expects 3");
    const size_t two = 2, three = 3;
    EXPECT_EXIT(comm_alltoallv(&one, a, &two, b, &three, COMM_F32), ::testing::ExitedWithCode(1),
                "sends 2 elements to itself but expects 3");
    EXPECT_EXIT(comm_set_timeout(0), ::testing::ExitedWithCode(1), "the timeout must be positive, got 0 s");
    EXPECT_EXIT(comm_split(&one, -1, 0, "neg"), ::testing::ExitedWithCode(1), "needs color >= 0, got -1");
    EXPECT_EXIT(comm_allreduce(&one, a, 2, COMM_B16, COMM_SUM), ::testing::ExitedWithCode(1),
                "all-reduce on group one of 16-bit words");
    // What they guard passes: the equal sizes are copied.
    comm_sendrecv(&one, a, 2, 0, b, 2, 0, COMM_F32, 32767);
    EXPECT_EQ(b[1], 2.0f);
}

TEST(Grid, EveryLayoutOfThisWorld) {
    const int W = world()->size;
    int layouts = 0;
    for (int pp = 1; pp <= W; pp++)
        for (int ep = 1; ep <= W; ep++)
            if (W % pp == 0 && (W / pp) % ep == 0 && 8 % ep == 0) {
                check_grid(pp, ep);
                layouts++;
            }
    EXPECT_GE(layouts, 1);
}

// Every rank of this test runs on one host: its local rank (which picks its GPU) is its world rank.
TEST(Grid, LocalRankOnOneHost) {
    int n = 0;
    EXPECT_EQ(grid_local_rank(world(), &n), world()->rank);
    EXPECT_EQ(n, world()->size);
}

// Gradients whose synchronized values every rank can compute: element j of tensor i on world rank w
// is (i + 1) · (w + 1) + j / 64.
float grad_value(int i, int w, size_t j) { return (float)(i + 1) * (float)(w + 1) + (float)j / 64.0f; }

TEST(DpSync, BucketedAveragingAndGlobalNorm) {
    const int W = world()->size;
    for (int ep : {1, 2, 4}) {
        if (W % ep != 0) continue;
        Grid *g = grid_create(world(), 1, ep, 8);
        // Tensor sizes around a 7-float bucket: smaller, equal, spanning several; dense and expert mixed.
        const std::vector<size_t> sizes = {3, 7, 20, 1, 9, 5};
        const std::vector<int> expert = {0, 1, 0, 1, 1, 0};
        std::vector<std::vector<float>> buf(sizes.size());
        std::vector<DpGrad> t(sizes.size());
        for (size_t i = 0; i < sizes.size(); i++) {
            buf[i].resize(sizes[i]);
            for (size_t j = 0; j < sizes[i]; j++) buf[i][j] = grad_value((int)i, g->rank, j);
            t[i] = DpGrad{buf[i].data(), sizes[i], expert[i]};
        }
        dp_sync_grads(g, t.data(), (int)t.size(), 7);
        // Dense: mean over all DP ranks. Expert: sum over the ranks of the same EP rank, / DP.
        double sq_dense = 0, sq_expert_here = 0;
        for (size_t i = 0; i < sizes.size(); i++)
            for (size_t j = 0; j < sizes[i]; j++) {
                double want = 0;
                for (int w = 0; w < W; w++)
                    if (!expert[i] || w % ep == g->ep_rank) want += grad_value((int)i, w, j);
                want /= W;
                EXPECT_NEAR(buf[i][j], want, 1e-5 * std::fabs(want)) << "tensor " << i << " ep " << ep;
                (expert[i] ? sq_expert_here : sq_dense) += want * want;
            }
        // The norm counts dense tensors once and every EP rank's expert slices once.
        double sq_expert = 0;
        for (int k = 0; k < ep; k++)
            for (size_t i = 0; i < sizes.size(); i++)
                for (size_t j = 0; expert[i] && j < sizes[i]; j++) {
                    double want = 0;
                    for (int w = k; w < W; w += ep) want += grad_value((int)i, w, j);
                    sq_expert += (want / W) * (want / W);
                }
        EXPECT_GT(sq_expert_here, 0.0);
        EXPECT_NEAR(dp_sync_grad_sqsum(g, t.data(), (int)t.size()), sq_dense + sq_expert,
                    1e-5 * (sq_dense + sq_expert));
        long counts[3] = {g->rank, 1, 0};
        dp_sync_sum_counts(g, counts, 3);
        EXPECT_EQ(counts[0], (long)W * (W - 1) / 2);
        EXPECT_EQ(counts[1], W);
        EXPECT_EQ(counts[2], 0);
        double m[2] = {(double)g->rank, 3.0};
        dp_sync_mean(g, m, 2);
        EXPECT_DOUBLE_EQ(m[0], (W - 1) / 2.0);
        EXPECT_DOUBLE_EQ(m[1], 3.0);
        grid_free(g);
    }
}

// ZeRO-1's sync on the same tensors, laid out in one flat buffer (offsets off): each rank's shard
// holds the averages of its pieces, the pieces of the ranks of a group tile every tensor once, the
// shards' norm is the global one, and the gathers bring every rank's pieces to all. Two rounds, the
// second with the tensors reported ready in reverse, as the backward does: the sync is reusable.
TEST(DpSync, ShardedReduceScatterAndGathers) {
    const int W = world()->size;
    const std::vector<size_t> sizes = {3, 7, 20, 1, 9, 5};
    const std::vector<int> expert = {0, 1, 0, 1, 1, 0};
    const int n = (int)sizes.size();
    std::vector<size_t> off(n);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        off[i] = total;
        total += sizes[i];
    }
    for (int ep : {1, 2, 4}) {
        if (W % ep != 0) continue;
        Grid *g = grid_create(world(), 1, ep, 8);
        std::vector<float> flat(total);
        std::vector<DpGrad> t(n);
        for (int i = 0; i < n; i++) t[i] = DpGrad{flat.data() + off[i], sizes[i], expert[i]};
        DpSync *s = dp_sync_shard_create(g, t.data(), off.data(), n, 7);
        for (int round = 0; round < 2; round++) {
            for (int i = 0; i < n; i++)
                for (size_t j = 0; j < sizes[i]; j++) flat[off[i] + j] = grad_value(i, g->rank, j) * (round + 1);
            if (round == 1)
                for (int i = n - 1; i >= 0; i--) dp_sync_ready(s, i);
            dp_sync_complete(s);
            int np;
            const DpShardPiece *sp = dp_sync_shard_pieces(s, &np);
            const float *sh = dp_sync_shard_grads(s);
            // covered (total): how many ranks of each float's group hold it.
            std::vector<int> dense_cov(total, 0), expert_cov(total, 0);
            for (int k = 0; k < np; k++) {
                const int i = sp[k].tensor;
                ASSERT_LE(sp[k].start + sp[k].n, sizes[i]);
                ASSERT_LE(sp[k].at + sp[k].n, dp_sync_shard_floats(s));
                for (size_t j = sp[k].start; j < sp[k].start + sp[k].n; j++) {
                    double want = 0;
                    for (int w = 0; w < W; w++)
                        if (!expert[i] || w % ep == g->ep_rank) want += grad_value(i, w, j) * (round + 1);
                    want /= W;
                    EXPECT_NEAR(sh[sp[k].at + j - sp[k].start], want, 1e-5 * std::fabs(want))
                        << "tensor " << i << " ep " << ep << " round " << round;
                    (expert[i] ? expert_cov : dense_cov)[off[i] + j]++;
                }
            }
            comm_allreduce(g->dp_comm, dense_cov.data(), total, COMM_I32, COMM_SUM);
            comm_allreduce(g->edp_comm, expert_cov.data(), total, COMM_I32, COMM_SUM);
            for (int i = 0; i < n; i++)
                for (size_t j = 0; j < sizes[i]; j++)
                    EXPECT_EQ((expert[i] ? expert_cov : dense_cov)[off[i] + j], 1)
                        << "tensor " << i << "[" << j << "] ep " << ep;
            // The global norm from the shards against the unsharded sync's on the same gradients.
            std::vector<float> again(total);
            for (int i = 0; i < n; i++)
                for (size_t j = 0; j < sizes[i]; j++) again[off[i] + j] = grad_value(i, g->rank, j) * (round + 1);
            std::vector<DpGrad> u(n);
            for (int i = 0; i < n; i++) u[i] = DpGrad{again.data() + off[i], sizes[i], expert[i]};
            dp_sync_grads(g, u.data(), n, 7);
            const double want_sq = dp_sync_grad_sqsum(g, u.data(), n);
            EXPECT_NEAR(dp_sync_shard_sqsum(g, &s, 1, 0), want_sq, 1e-6 * want_sq) << "ep " << ep;
            // Rows of the flat layout that cross tensors and buckets (EPLB's duplicate slots): the
            // part of them in this rank's shard, float by float, and the norm that leaves them out.
            const AdamwSpan rows[2] = {{0, 2, 9, 0}, {0, 25, 12, 0}};
            double want_rows = 0;
            for (int k = 0; k < np; k++)
                for (size_t j = 0; j < sp[k].n; j++) {
                    const long at = (long)(off[sp[k].tensor] + sp[k].start + j);
                    for (const AdamwSpan &r : rows)
                        if (at >= r.g_at && at < r.g_at + r.n) want_rows += (double)again[at] * again[at];
                }
            const double got_rows = dp_sync_shard_rows_sqsum(s, rows, 2);
            EXPECT_NEAR(got_rows, want_rows, 1e-9 * want_rows + 1e-12) << "ep " << ep;
            double all_rows = got_rows;
            comm_allreduce(g->dp_comm, &all_rows, 1, COMM_F64, COMM_SUM);
            // The ranks' parts tile the rows once: their dense floats over the DP ranks, each EP
            // rank's own expert floats over its expert-DP ranks (review, 2026-12-05).
            double dense = 0, experts = 0;
            for (int i = 0; i < n; i++)
                for (size_t j = 0; j < sizes[i]; j++) {
                    const long at = (long)(off[i] + j);
                    for (const AdamwSpan &r : rows)
                        if (at >= r.g_at && at < r.g_at + r.n)
                            (expert[i] ? experts : dense) += (double)again[at] * again[at];
                }
            comm_allreduce(g->dp_comm, &experts, 1, COMM_F64, COMM_SUM);
            EXPECT_NEAR(all_rows, dense + experts / g->edp, 1e-9 * (dense + experts) + 1e-12) << "ep " << ep;
            EXPECT_NEAR(dp_sync_shard_sqsum(g, &s, 1, got_rows), want_sq - all_rows, 1e-6 * want_sq) << "ep " << ep;
        }
        // Weights: each rank knows only its own pieces (the rest is -1); the gather fills them all,
        // in fp32 and as 16-bit words.
        auto weight = [](size_t at) { return (float)at * 0.25f - 3.0f; };
        int np;
        const DpShardPiece *sp = dp_sync_shard_pieces(s, &np);
        std::vector<float> w(total, -1.0f);
        std::vector<uint16_t> w16(total, 0xffff);
        for (int k = 0; k < np; k++)
            for (size_t j = 0; j < sp[k].n; j++) {
                const size_t at = off[sp[k].tensor] + sp[k].start + j;
                w[at] = weight(at);
                w16[at] = (uint16_t)at;
            }
        dp_sync_shard_allgather(s, w.data(), sizeof(float), COMM_F32);
        dp_sync_shard_allgather(s, w16.data(), sizeof(uint16_t), COMM_B16);
        for (size_t at = 0; at < total; at++) {
            EXPECT_EQ(w[at], weight(at)) << "float " << at << " ep " << ep;
            EXPECT_EQ(w16[at], (uint16_t)at) << "word " << at << " ep " << ep;
        }
        // Moments: a shard-layout buffer expands to the whole and this rank's pieces come back.
        std::vector<float> shard(dp_sync_shard_floats(s), 0.0f), full(total, -1.0f), back(shard.size(), 0.0f);
        for (int k = 0; k < np; k++)
            for (size_t j = 0; j < sp[k].n; j++) shard[sp[k].at + j] = weight(off[sp[k].tensor] + sp[k].start + j);
        dp_sync_shard_expand(s, shard.data(), full.data());
        for (size_t at = 0; at < total; at++) EXPECT_EQ(full[at], weight(at)) << "float " << at << " ep " << ep;
        dp_sync_shard_take(s, full.data(), back.data());
        EXPECT_EQ(back, shard);
        dp_sync_free(s);
        grid_free(g);
    }
}

}  // namespace
