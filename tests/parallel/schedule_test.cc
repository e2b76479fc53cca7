// Pipeline schedules (docs/architecture.md §5): generators checked by the validator and against the
// step table, broken schedules caught, simulator bubbles against the formulas, and the JSON, text,
// SVG and Chrome-trace outputs.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
#include "parallel/schedule.h"
#include "parallel/schedule_svg.h"
#include "parallel/simulator.h"
#include "tests/util/tmp.h"
}

namespace {

using namespace std::string_literals;  // "...\0..."s keeps its NUL bytes

struct SchedDel {
    void operator()(Schedule *s) const { sched_free(s); }
};
struct TlDel {
    void operator()(SimTimeline *t) const { sim_free(t); }
};
using SchedPtr = std::unique_ptr<Schedule, SchedDel>;
using TlPtr = std::unique_ptr<SimTimeline, TlDel>;

SchedPtr build(SchedKind k, int N, int C) {
    char err[SCHED_ERR_LEN] = "";
    Schedule *s = sched_build(k, N, C, err);
    EXPECT_NE(s, nullptr) << err;
    return SchedPtr(s);
}

std::string validate(const Schedule *s) {
    char err[SCHED_ERR_LEN] = "";
    return sched_validate(s, err) ? std::string(err) : std::string();
}

// What sched_svg_write draws for t, as text.
std::string svg_text(const SimTimeline *t, const char *title, const char *unit) {
    char *buf = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    sched_svg_write(t, title, unit, f);
    fclose(f);
    std::string s(buf, len);
    free(buf);
    return s;
}

std::string label(const SchedOp &op) {
    char buf[48];
    return sched_op_label(&op, buf, sizeof buf);
}

// ---------------------------------------------------------------------------------------------
// Validity of every generated schedule.

TEST(Generators, OneFOneBValid) {
    for (int N = 1; N <= 8; N++)
        for (int C = 1; C <= 3 * N + 1; C++) {
            auto s = build(SCHED_1F1B, N, C);
            EXPECT_EQ(validate(s.get()), "") << "N=" << N << " C=" << C;
        }
}

TEST(Generators, DualPipeValid) {
    for (int N : {2, 4, 6, 8})
        for (int C = 2 * N; C <= 4 * N + 6; C += 2) {
            auto s = build(SCHED_DUALPIPE, N, C);
            EXPECT_EQ(validate(s.get()), "") << "N=" << N << " C=" << C;
        }
}

TEST(Generators, DualPipeVValid) {
    for (int N = 1; N <= 8; N++)
        for (int C = 2 * N; C <= 5 * N + 3; C++) {
            auto s = build(SCHED_DUALPIPEV, N, C);
            EXPECT_EQ(validate(s.get()), "") << "N=" << N << " C=" << C;
        }
}

// 1F1B: min(N−r−1, C) forwards of warm-up, then F/B pairs, then the drain; every B is full.
TEST(Generators, OneFOneBShape) {
    for (int N = 1; N <= 6; N++)
        for (int C : {1, 3, 2 * N}) {
            auto s = build(SCHED_1F1B, N, C);
            for (int r = 0; r < N; r++) {
                int warm = std::min(N - r - 1, C);
                ASSERT_EQ(s->n_ops[r], 2 * C);
                int nf = 0, nb = 0;
                for (int i = 0; i < s->n_ops[r]; i++) {
                    const SchedOp &op = s->ops[r][i];
                    bool in_steady = i >= warm && i < warm + 2 * (C - warm);
                    int want_kind = i < warm ? SCHED_F : in_steady ? ((i - warm) % 2 ? SCHED_B : SCHED_F) : SCHED_B;
                    ASSERT_EQ(op.kind, want_kind) << "N=" << N << " C=" << C << " r=" << r << " i=" << i;
                    EXPECT_EQ(op.step, i < warm ? 1 : in_steady ? 2 : 3);
                    if (op.kind == SCHED_F) {
                        EXPECT_EQ(op.f.mb, nf++);
                    }
                    if (op.kind == SCHED_B) {
                        EXPECT_EQ(op.b.mb, nb++);
                        EXPECT_EQ(op.b.defer_w, 0);
                    }
                }
            }
        }
}

// The eight-step table of §5: op counts per step, computed here from the formulas.
void check_steps(SchedKind kind, int N, int C) {
    auto s = build(kind, N, C);
    bool v = kind == SCHED_DUALPIPEV;
    int H = v ? N : N / 2, M = v ? C : C / 2;
    for (int r = 0; r < N; r++) {
        int h = v ? r : std::min(r, N - 1 - r);
        int near = (v || r < N / 2) ? SCHED_DOWN : SCHED_UP, far = 1 - near;
        bool middle = h == H - 1;
        int rep4 = M - 2 * H + h + 1;
        const int want[9] = {0, 2 * (H - h - 1), 2 * (h + 1), 3 * (H - h - 1), 2 * rep4 + (middle ? 1 : 0),
                             2 * (H - h - 1), 2 * (h + 1), 2 * (H - h - 1), h + 1};
        std::vector<std::vector<SchedOp>> step(9);
        for (int i = 0; i < s->n_ops[r]; i++) step.at(s->ops[r][i].step).push_back(s->ops[r][i]);
        std::string where = std::string(sched_kind_name(kind)) + " N=" + std::to_string(N) + " C=" +
                            std::to_string(C) + " r=" + std::to_string(r);
        for (int k = 1; k <= 8; k++) ASSERT_EQ((int)step[k].size(), want[k]) << where << " step " << k;
        for (auto &op : step[1]) EXPECT_TRUE(op.kind == SCHED_F && op.f.pipe == near) << where;
        for (size_t i = 0; i < step[2].size(); i++)
            EXPECT_TRUE(step[2][i].kind == SCHED_F && step[2][i].f.pipe == (i % 2 ? far : near)) << where;
        for (size_t i = 0; i < step[3].size(); i += 3) {
            EXPECT_TRUE(step[3][i].kind == SCHED_B && step[3][i].b.pipe == far && step[3][i].b.defer_w) << where;
            EXPECT_TRUE(step[3][i + 1].kind == SCHED_W && step[3][i + 1].b.mb == step[3][i].b.mb) << where;
            EXPECT_TRUE(step[3][i + 2].kind == SCHED_F && step[3][i + 2].f.pipe == far) << where;
        }
        // Step 4: F near & B far, then F far & B near; the middle rank's first repetition unfused.
        size_t i0 = 0;
        if (middle) {
            EXPECT_TRUE(step[4][0].kind == SCHED_F && step[4][0].f.pipe == near) << where;
            EXPECT_TRUE(step[4][1].kind == SCHED_B && step[4][1].b.pipe == far && !step[4][1].b.defer_w) << where;
            EXPECT_TRUE(step[4][2].kind == SCHED_FB && step[4][2].f.pipe == far && step[4][2].b.pipe == near) << where;
            i0 = 3;
        }
        for (size_t i = i0; i < step[4].size(); i++) {
            const SchedOp &op = step[4][i];
            int fp = ((i - i0) % 2 == 0) ? near : far;
            EXPECT_TRUE(op.kind == SCHED_FB && op.f.pipe == fp && op.b.pipe == 1 - fp && !op.b.defer_w) << where;
        }
        for (size_t i = 0; i < step[5].size(); i += 2) {
            EXPECT_TRUE(step[5][i].kind == SCHED_B && step[5][i].b.pipe == far && !step[5][i].b.defer_w) << where;
            EXPECT_TRUE(step[5][i + 1].kind == SCHED_FB && step[5][i + 1].f.pipe == far) << where;
        }
        // Step 6: B far, B near alternating; the second half of them defer W.
        for (size_t i = 0; i < step[6].size(); i++) {
            EXPECT_TRUE(step[6][i].kind == SCHED_B && step[6][i].b.pipe == (i % 2 ? near : far)) << where;
            EXPECT_EQ(step[6][i].b.defer_w, (int)i >= h + 1) << where << " step 6 op " << i;
        }
        for (size_t i = 0; i < step[7].size(); i += 2) {
            EXPECT_EQ(step[7][i].kind, SCHED_W) << where;
            EXPECT_TRUE(step[7][i + 1].kind == SCHED_B && step[7][i + 1].b.pipe == near && step[7][i + 1].b.defer_w)
                << where;
        }
        for (auto &op : step[8]) EXPECT_EQ(op.kind, SCHED_W) << where;
        // Each pipe: M forwards and M backwards, in micro-batch order (FIFO channels).
        int nf[2] = {0, 0}, nb[2] = {0, 0}, first[2] = {0, v ? 0 : C / 2};
        for (int i = 0; i < s->n_ops[r]; i++) {
            const SchedOp &op = s->ops[r][i];
            if (op.kind == SCHED_F || op.kind == SCHED_FB) {
                EXPECT_EQ(op.f.mb, first[op.f.pipe] + nf[op.f.pipe]) << where;
                nf[op.f.pipe]++;
            }
            if (op.kind == SCHED_B || op.kind == SCHED_FB) {
                EXPECT_EQ(op.b.mb, first[op.b.pipe] + nb[op.b.pipe]) << where;
                nb[op.b.pipe]++;
            }
        }
        for (int p = 0; p < 2; p++) {
            EXPECT_EQ(nf[p], M) << where;
            EXPECT_EQ(nb[p], M) << where;
        }
    }
}

TEST(Generators, DualPipeStepCounts) {
    for (int N : {2, 4, 6, 8})
        for (int C : {2 * N, 3 * N, 4 * N + 2}) check_steps(SCHED_DUALPIPE, N, C);
}

TEST(Generators, DualPipeVStepCounts) {
    for (int N : {1, 2, 3, 4, 8})
        for (int C : {2 * N, 2 * N + 1, 3 * N}) check_steps(SCHED_DUALPIPEV, N, C);
}

// Small schedules written out by hand from the table.
TEST(Generators, TextFormat) {
    auto s = build(SCHED_1F1B, 2, 2);
    char *buf = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    sched_write_text(s.get(), f);
    fclose(f);
    EXPECT_STREQ(buf, "rank 0: F0d F1d B0d B1d\nrank 1: F0d B0d F1d B1d\n");
    free(buf);

    s = build(SCHED_DUALPIPE, 2, 4);
    f = open_memstream(&buf, &len);
    sched_write_text(s.get(), f);
    fclose(f);
    EXPECT_STREQ(buf,
                 "rank 0: F0d F2u F1d B2u FB(3u,0d) B3u B1d* W1d\n"
                 "rank 1: F2u F0d F3u B0d FB(1d,2u) B1d B3u* W3u\n");
    free(buf);
}

TEST(Generators, Paths) {
    auto d = build(SCHED_DUALPIPE, 4, 8);
    EXPECT_EQ(sched_path_len(d.get()), 4);
    EXPECT_EQ(sched_path_rank(d.get(), 5, 0), 3);   // up micro-batches enter at rank N−1
    EXPECT_EQ(sched_path_pos(d.get(), 0, SCHED_UP, 5), 3);
    EXPECT_EQ(sched_path_pos(d.get(), 0, SCHED_UP, 1), -1);
    EXPECT_EQ(sched_stage(d.get(), 1, SCHED_UP), 2);
    auto v = build(SCHED_DUALPIPEV, 3, 6);
    EXPECT_EQ(sched_path_len(v.get()), 6);
    EXPECT_EQ(sched_path_rank(v.get(), 0, 3), 2);   // the tip of the V: stages 2 and 3 on rank 2
    EXPECT_EQ(sched_path_pipe(v.get(), 0, 3), SCHED_UP);
    EXPECT_EQ(sched_stage(v.get(), 0, SCHED_UP), 5);  // rank 0 holds the last stage (the loss)
    EXPECT_EQ(sched_path_pos(v.get(), 0, SCHED_UP, 2), 5);
}

// The micro-batches a rank holds at once (the host-memory check's multiplier): 1F1B's warm-up is
// N − r forwards deep, one process runs F, B, F, B; a W holds its micro-batch until it runs. From
// the backwards on (recompute's whole activations), 1F1B holds none: it defers no W.
TEST(Generators, MaxLive) {
    auto one = build(SCHED_1F1B, 1, 8);
    EXPECT_EQ(sched_max_live(one.get(), 0, SCHED_DOWN, SCHED_F), 1);
    auto f = build(SCHED_1F1B, 4, 8);
    for (int r = 0; r < 4; r++) {
        EXPECT_EQ(sched_max_live(f.get(), r, SCHED_DOWN, SCHED_F), 4 - r) << "rank " << r;
        EXPECT_EQ(sched_max_live(f.get(), r, SCHED_DOWN, SCHED_B), 0) << "rank " << r;
    }
    EXPECT_EQ(sched_max_live(f.get(), 0, SCHED_UP, SCHED_F), 0);
    auto few = build(SCHED_1F1B, 4, 2);  // fewer micro-batches than stages
    EXPECT_EQ(sched_max_live(few.get(), 0, SCHED_DOWN, SCHED_F), 2);
    for (SchedKind k : {SCHED_DUALPIPE, SCHED_DUALPIPEV}) {
        auto d = build(k, 4, 8);
        int deferred = 0;
        for (int r = 0; r < 4; r++)
            for (int pipe = 0; pipe < 2; pipe++) {
                const int n = sched_max_live(d.get(), r, pipe, SCHED_F);
                const int w = sched_max_live(d.get(), r, pipe, SCHED_B);
                EXPECT_GE(n, 1);
                EXPECT_LE(n, k == SCHED_DUALPIPE ? 4 : 8);  // each pipe of DualPipe carries C/2 micro-batches
                EXPECT_LE(w, n);
                deferred = std::max(deferred, w);
            }
        EXPECT_GE(deferred, 1) << "no rank defers a W";
    }
}

TEST(Generators, InvalidArguments) {
    struct Case { SchedKind k; int N, C; const char *msg; } cases[] = {
        {SCHED_1F1B, 0, 4, "1f1b needs at least 1 rank (pp = 0)"},
        {SCHED_1F1B, 2, 0, "1f1b needs at least 1 micro-batch (chunks = 0)"},
        {SCHED_DUALPIPE, 3, 6, "dualpipe needs an even number of ranks (pp = 3)"},
        {SCHED_DUALPIPE, 4, 9, "dualpipe needs an even number of micro-batches (chunks = 9)"},
        {SCHED_DUALPIPE, 4, 6, "dualpipe needs at least 2N = 8 micro-batches (chunks = 6)"},
        {SCHED_DUALPIPE, -2, 8, "dualpipe needs at least 1 rank (pp = -2)"},
        {SCHED_DUALPIPEV, 3, 5, "dualpipev needs at least 2N = 6 micro-batches (chunks = 5)"},
        {SCHED_DUALPIPEV, 0, 5, "dualpipev needs at least 1 rank (pp = 0)"},
    };
    for (auto &c : cases) {
        char err[SCHED_ERR_LEN] = "";
        EXPECT_EQ(sched_build(c.k, c.N, c.C, err), nullptr);
        EXPECT_STREQ(err, c.msg);
    }
    EXPECT_EQ(sched_kind_parse("dualpipev"), SCHED_DUALPIPEV);
    EXPECT_EQ(sched_kind_parse("DualPipe"), -1);
}

// ---------------------------------------------------------------------------------------------
// Broken schedules.

TEST(Validator, LocalDeadlock) {
    auto s = build(SCHED_1F1B, 4, 8);
    std::swap(s->ops[3][0], s->ops[3][1]);  // last stage: B0 before its own F0
    std::string e = validate(s.get());
    EXPECT_NE(e.find("deadlock"), std::string::npos) << e;
    EXPECT_NE(e.find("rank 3 waits at op 0 (B0d)"), std::string::npos) << e;
}

TEST(Validator, CrossRankDeadlock) {
    auto s = build(SCHED_1F1B, 4, 8);
    std::swap(s->ops[0][1], s->ops[0][4]);  // rank 0: F0 B0 F2 F3 F1 ... waits on a cycle
    std::string e = validate(s.get());
    EXPECT_NE(e.find("rank 0 waits at op 1 (B0d)"), std::string::npos) << e;
    EXPECT_NE(e.find("rank 1 waits at op 1 (F1d)"), std::string::npos) << e;
    EXPECT_NE(e.find("rank 2 waits at op 1 (F1d)"), std::string::npos) << e;
    EXPECT_NE(e.find("rank 3 waits at op 2 (F1d)"), std::string::npos) << e;
}

TEST(Validator, DoubleExecution) {
    auto s = build(SCHED_DUALPIPE, 4, 8);
    s->ops[0][0] = s->ops[0][1];  // F1d twice, F0d never
    EXPECT_EQ(validate(s.get()), "rank 0 op 1: forward of micro-batch 1 (pipe down) runs twice");
}

TEST(Validator, WrongW) {
    auto s = build(SCHED_DUALPIPE, 4, 8);
    int n = s->n_ops[1];
    ASSERT_EQ(label(s->ops[1][n - 2]), "W7u");
    std::swap(s->ops[1][n - 2], s->ops[1][n - 1]);
    EXPECT_EQ(validate(s.get()), "rank 1 op 13: W names micro-batch 3 (pipe down) but the oldest deferred "
                                 "backward is micro-batch 7 (pipe up)");
}

TEST(Validator, MissingAndForeignOps) {
    auto s = build(SCHED_DUALPIPEV, 2, 4);
    s->n_ops[1]--;  // drop rank 1's last W
    EXPECT_NE(validate(s.get()).find("never runs its W"), std::string::npos);
    s->n_ops[1]++;
    auto d = build(SCHED_DUALPIPE, 2, 4);
    d->ops[0][0].f.pipe = SCHED_UP;  // micro-batch 0 belongs to the down pipe
    EXPECT_NE(validate(d.get()).find("forward of micro-batch 0 in pipe up does not exist"), std::string::npos);
    d->ops[0][0].f.pipe = SCHED_DOWN;
    d->ops[0][0].kind = 9;
    EXPECT_EQ(validate(d.get()), "rank 0 op 0: unknown op kind 9");
}

// The validator's checks that the generators never trip: an F&B whose two halves are one
// micro-batch, a W naming the right micro-batch in the wrong pipe (a DualPipeV micro-batch visits a
// rank in both), and a micro-batch id equal to C (one past the last) are each refused with their
// own message, not passed on to a deadlock, a missing W or reads beyond the (C, L) flags.
TEST(Validator, SelfFAndBWrongPipeWAndIdPastLast) {
    auto one = build(SCHED_1F1B, 1, 1);  // F0d B0d
    one->ops[0][0] = SchedOp{SCHED_FB, {0, SCHED_DOWN, 0}, {0, SCHED_DOWN, 0}, 0};
    EXPECT_EQ(validate(one.get()), "rank 0 op 0: F&B of micro-batch 0 with itself");

    auto v = build(SCHED_DUALPIPEV, 1, 2);
    const int n = v->n_ops[0];
    ASSERT_EQ(label(v->ops[0][n - 1]), "W1d");
    v->ops[0][n - 1].b.pipe = SCHED_UP;
    EXPECT_EQ(validate(v.get()), "rank 0 op " + std::to_string(n - 1) + ": W names micro-batch 1 (pipe up) "
                                 "but the oldest deferred backward is micro-batch 1 (pipe down)");

    auto f = build(SCHED_1F1B, 2, 2);
    EXPECT_EQ(sched_path_pos(f.get(), 0, SCHED_DOWN, 1), 0);
    EXPECT_EQ(sched_path_pos(f.get(), 0, SCHED_DOWN, 2), -1);
    EXPECT_EQ(sched_path_pos(f.get(), 1, SCHED_DOWN, 2), -1);
    f->ops[0][0].f.mb = 2;
    EXPECT_EQ(validate(f.get()), "rank 0 op 0: forward of micro-batch 2 in pipe down does not exist in a 1f1b "
                                 "schedule with 2 ranks and 2 micro-batches");
}

// ---------------------------------------------------------------------------------------------
// Simulator.

TlPtr sim(const Schedule *s, SimCosts c) {
    char err[SCHED_ERR_LEN] = "";
    SimTimeline *t = sim_run(s, &c, err);
    EXPECT_NE(t, nullptr) << err;
    return TlPtr(t);
}

TEST(Simulator, HandTimedOneFOneB) {
    auto s = build(SCHED_1F1B, 2, 2);
    auto t = sim(s.get(), {1, 2, 1, 3, 0});
    // rank 0: F0 [0,1] F1 [1,2] B0 [4,6] B1 [7,9]; rank 1: F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7].
    const double want[2][4][2] = {{{0, 1}, {1, 2}, {4, 6}, {7, 9}}, {{1, 2}, {2, 4}, {4, 5}, {5, 7}}};
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 4; i++) {
            EXPECT_EQ(t->ev[r][i].start, want[r][i][0]) << r << " " << i;
            EXPECT_EQ(t->ev[r][i].end, want[r][i][1]) << r << " " << i;
        }
    EXPECT_EQ(t->t1, 9);
    EXPECT_EQ(t->bubble[0], 3);
    EXPECT_EQ(t->bubble[1], 3);
}

TEST(Simulator, P2pLatency) {
    auto s = build(SCHED_1F1B, 2, 1);
    auto t = sim(s.get(), {1, 2, 1, 3, 0.5});
    // F [0,1] → arrives 1.5 → F [1.5,2.5] B [2.5,4.5] → arrives 5 → B [5,7].
    EXPECT_EQ(t->ev[1][0].start, 1.5);
    EXPECT_EQ(t->ev[0][1].start, 5);
    EXPECT_EQ(t->t1, 7);
    EXPECT_EQ(t->bubble[0], 4);
}

// A message between two positions on one rank (the tip of DualPipeV's V) is there at once, without
// the p2p latency: with one rank every message is local, so the rank never idles and each op starts
// where the one before it ended (F0u right after F0d).
TEST(Simulator, LocalMessagesHaveNoLatency) {
    auto s = build(SCHED_DUALPIPEV, 1, 2);
    auto t = sim(s.get(), {1, 2, 1, 3, 0.5});
    ASSERT_EQ(label(t->ev[0][1].op), "F0u");
    EXPECT_EQ(t->ev[0][1].start, 1);
    for (int i = 1; i < t->n[0]; i++) EXPECT_EQ(t->ev[0][i].start, t->ev[0][i - 1].end) << i;
    EXPECT_EQ(t->bubble[0], 0);
    EXPECT_EQ(t->t1, t->busy[0]);
}

TEST(Simulator, DeferredCosts) {
    SimCosts c = {1, 3, 1, 3.5, 0};
    SchedOp b = {SCHED_B, {0, 0, 0}, {0, 0, 1}, 0};
    EXPECT_EQ(sim_op_cost(&c, &b), 2);
    b.b.defer_w = 0;
    EXPECT_EQ(sim_op_cost(&c, &b), 3);
    b.kind = SCHED_W;
    EXPECT_EQ(sim_op_cost(&c, &b), 1);
    char err[SCHED_ERR_LEN];
    SimCosts bad = {1, 1, 2, 3, 0};
    EXPECT_EQ(sim_costs_check(&bad, err), 1);
    EXPECT_NE(std::string(err).find("must not exceed"), std::string::npos);
    bad = {1, 3, 2.5, 2, 0};  // W within B but beyond F&B
    EXPECT_EQ(sim_costs_check(&bad, err), 1);
    EXPECT_NE(std::string(err).find("must not exceed"), std::string::npos);
    bad = {1, 2, 1, NAN, 0};
    EXPECT_EQ(sim_costs_check(&bad, err), 1);
    bad = {-1, 2, 1, 3, 0};
    EXPECT_EQ(sim_costs_check(&bad, err), 1);
    EXPECT_STREQ(err, "cost of F must be a finite number >= 0 (got -1)");
}

// An F&B whose backward defers its W costs F&B − W, as a deferring B costs B − W (the W op runs the
// rest). The generators emit none, but a schedule built by hand or read from a trace may hold one.
TEST(Simulator, DeferredFAndBCost) {
    SimCosts c = {1, 3, 1, 3.5, 0};
    SchedOp fb = {SCHED_FB, {1, SCHED_DOWN, 0}, {0, SCHED_UP, 1}, 0};
    EXPECT_EQ(sim_op_cost(&c, &fb), 2.5);
    fb.b.defer_w = 0;
    EXPECT_EQ(sim_op_cost(&c, &fb), 3.5);
}

// 1F1B: every rank idles exactly (N−1)(F+B), B being the full backward, for any costs.
TEST(Simulator, OneFOneBBubble) {
    const SimCosts costs[] = {{1, 2, 1, 3, 0}, {2, 3, 1, 5, 0}, {1, 1, 0, 2, 0}, {3, 1, 0.5, 4, 0}};
    for (int N = 1; N <= 8; N++)
        for (int C : {1, 3, N, 2 * N + 1})
            for (auto &c : costs) {
                auto s = build(SCHED_1F1B, N, C);
                auto t = sim(s.get(), c);
                for (int r = 0; r < N; r++)
                    EXPECT_DOUBLE_EQ(t->bubble[r], (N - 1) * (c.f + c.b)) << "N=" << N << " C=" << C << " r=" << r;
            }
}

// DualPipe and DualPipeV: with F = B − W ≥ W (forward as long as the input backward, weight part no
// longer) and B ≤ F&B ≤ F + B, the most idle rank idles exactly the formula; with F&B = F + B (no
// overlap gain) every rank does.
void check_dual_bubbles(SchedKind kind, const std::vector<int> &Ns, bool v) {
    struct Base { double f, w; } bases[] = {{1, 1}, {2, 1}, {3, 2}, {1, 0}, {1.5, 0.5}};
    for (int N : Ns)
        for (int C : {2 * N, 3 * N, 2 * N + (v ? 1 : 4)})
            for (auto &bs : bases) {
                double b = bs.f + bs.w;
                for (double fb : {b, (b + bs.f + b) / 2, bs.f + b}) {
                    SimCosts c = {bs.f, b, bs.w, fb, 0};
                    auto s = build(kind, N, C);
                    auto t = sim(s.get(), c);
                    double formula = sim_bubble_formula(kind, N, &c), mx = 0;
                    EXPECT_DOUBLE_EQ(formula, (v ? N - 1 : N / 2 - 1) * (fb + b - 3 * bs.w));
                    for (int r = 0; r < N; r++) {
                        mx = std::max(mx, t->bubble[r]);
                        if (fb == bs.f + b) {
                            EXPECT_DOUBLE_EQ(t->bubble[r], formula);
                        }
                    }
                    EXPECT_DOUBLE_EQ(mx, formula) << "N=" << N << " C=" << C << " F=" << c.f << " B=" << c.b
                                                  << " W=" << c.w << " FB=" << c.fb;
                }
            }
}

TEST(Simulator, DualPipeBubble) { check_dual_bubbles(SCHED_DUALPIPE, {2, 4, 6, 8}, false); }

TEST(Simulator, DualPipeVBubble) { check_dual_bubbles(SCHED_DUALPIPEV, {1, 2, 3, 4, 8}, true); }

// Outside those conditions the formula is not what the schedule does; docs/pipeline.md quotes
// these numbers.
TEST(Simulator, DualPipeFormulaOffCase) {
    auto s = build(SCHED_DUALPIPE, 8, 16);
    SimCosts c = {1, 2, 0.5, 2, 0};
    auto t = sim(s.get(), c);
    const double want[8] = {4.5, 5.5, 6.5, 6.5, 6.5, 6.5, 5.5, 4.5};
    for (int r = 0; r < 8; r++) EXPECT_DOUBLE_EQ(t->bubble[r], want[r]);
    EXPECT_DOUBLE_EQ(sim_bubble_formula(SCHED_DUALPIPE, 8, &c), 7.5);
    EXPECT_DOUBLE_EQ(t->t1, 47.5);
}

TEST(Simulator, RejectsInvalidSchedule) {
    auto s = build(SCHED_1F1B, 3, 3);
    std::swap(s->ops[2][0], s->ops[2][1]);
    SimCosts c = {1, 2, 1, 3, 0};
    char err[SCHED_ERR_LEN] = "";
    EXPECT_EQ(sim_run(s.get(), &c, err), nullptr);
    EXPECT_NE(std::string(err).find("deadlock"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Output formats.

// A small JSON reader for checking the writer's structure.
struct Json {
    enum T { NUL, BOOL, NUM, STR, ARR, OBJ } t = NUL;
    double num = 0;
    bool b = false;
    std::string str;
    std::vector<Json> arr;
    std::map<std::string, Json> obj;
};

struct JsonParser {
    const char *p;
    void ws() { while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++; }
    bool eat(char c) { ws(); if (*p == c) { p++; return true; } return false; }
    std::string string() {
        std::string s;
        if (!eat('"')) throw std::runtime_error("expected string");
        while (*p && *p != '"') s += *p++;
        if (*p++ != '"') throw std::runtime_error("unterminated string");
        return s;
    }
    Json value() {
        Json v;
        ws();
        if (*p == '{') {
            p++;
            v.t = Json::OBJ;
            if (eat('}')) return v;
            do {
                std::string k = string();
                if (!eat(':')) throw std::runtime_error("expected :");
                if (v.obj.count(k)) throw std::runtime_error("duplicate key " + k);
                v.obj[k] = value();
            } while (eat(','));
            if (!eat('}')) throw std::runtime_error("expected }");
        } else if (*p == '[') {
            p++;
            v.t = Json::ARR;
            if (eat(']')) return v;
            do v.arr.push_back(value()); while (eat(','));
            if (!eat(']')) throw std::runtime_error("expected ]");
        } else if (*p == '"') {
            v.t = Json::STR;
            v.str = string();
        } else if (strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0) {
            v.t = Json::BOOL;
            v.b = *p == 't';
            p += v.b ? 4 : 5;
        } else {
            char *end;
            v.t = Json::NUM;
            v.num = strtod(p, &end);
            if (end == p) throw std::runtime_error(std::string("bad value at ") + p);
            p = end;
        }
        return v;
    }
};

Json parse_json(const std::string &text) {
    JsonParser P{text.c_str()};
    Json v = P.value();
    P.ws();
    if (*P.p) throw std::runtime_error("trailing text");
    return v;
}

void expect_cell(const Json &j, const SchedCell &c, bool with_defer) {
    ASSERT_EQ(j.t, Json::OBJ);
    EXPECT_EQ(j.obj.at("mb").t, Json::NUM);
    EXPECT_EQ(j.obj.at("mb").num, c.mb);
    EXPECT_EQ(j.obj.at("pipe").str, c.pipe == SCHED_UP ? "up" : "down");
    EXPECT_EQ(j.obj.count("defer_w"), with_defer ? 1u : 0u);
    if (with_defer) {
        EXPECT_EQ(j.obj.at("defer_w").t, Json::BOOL);
        EXPECT_EQ(j.obj.at("defer_w").b, c.defer_w != 0);
    }
}

TEST(Output, JsonStructure) {
    for (SchedKind k : {SCHED_1F1B, SCHED_DUALPIPE, SCHED_DUALPIPEV}) {
        auto s = build(k, 4, 10);
        char *buf = nullptr;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        sched_write_json(s.get(), f);
        fclose(f);
        Json j = parse_json(buf);
        free(buf);
        ASSERT_EQ(j.t, Json::OBJ);
        ASSERT_EQ(j.obj.size(), 1u);
        const Json &ranks = j.obj.at("ranks");
        ASSERT_EQ(ranks.arr.size(), 4u);
        for (int r = 0; r < 4; r++) {
            ASSERT_EQ((int)ranks.arr[r].arr.size(), s->n_ops[r]);
            for (int i = 0; i < s->n_ops[r]; i++) {
                const Json &o = ranks.arr[r].arr[i];
                const SchedOp &op = s->ops[r][i];
                const char *name[] = {"F", "B", "W", "FB"};
                ASSERT_EQ(o.obj.at("op").str, name[op.kind]);
                if (op.kind == SCHED_FB) {
                    EXPECT_EQ(o.obj.size(), 3u);
                    expect_cell(o.obj.at("f"), op.f, false);
                    expect_cell(o.obj.at("b"), op.b, true);
                } else {
                    // {"op", "mb", "pipe"} plus defer_w on B only: the cell check on the op itself.
                    Json cell = o;
                    cell.obj.erase("op");
                    expect_cell(cell, op.kind == SCHED_F ? op.f : op.b, op.kind == SCHED_B);
                }
                if (k == SCHED_1F1B) {
                    EXPECT_NE(label(op).find('d'), std::string::npos);
                }
            }
        }
    }
}

TEST(Output, LabelRoundTrip) {
    auto s = build(SCHED_DUALPIPE, 4, 12);
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < s->n_ops[r]; i++) {
            SchedOp op;
            std::string l = label(s->ops[r][i]);
            ASSERT_EQ(sched_op_parse(l.c_str(), &op), 0) << l;
            EXPECT_EQ(label(op), l);
            EXPECT_EQ(op.kind, s->ops[r][i].kind);
        }
    SchedOp op;
    for (const char *bad : {"X1d", "F1", "F1d*", "FB(1d,2u", "FB(1d*,2u)", "W1d*", "F-1d", "B3dx", ""})
        EXPECT_EQ(sched_op_parse(bad, &op), 1) << bad;
    ASSERT_EQ(sched_op_parse("FB(12u,3d*)", &op), 0);
    EXPECT_EQ(op.f.mb, 12);
    EXPECT_EQ(op.f.pipe, SCHED_UP);
    EXPECT_EQ(op.b.defer_w, 1);
}

int count(const std::string &text, const std::string &what) {
    int n = 0;
    for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) n++;
    return n;
}

TEST(Output, Svg) {
    for (SchedKind k : {SCHED_1F1B, SCHED_DUALPIPE, SCHED_DUALPIPEV}) {
        auto s = build(k, 4, 8);
        auto t = sim(s.get(), {1, 2, 1, 3, 0});
        std::string svg = svg_text(t.get(), "A <title> & more", "cost units");
        int ops = 0;
        for (int r = 0; r < 4; r++) ops += s->n_ops[r];
        EXPECT_EQ(count(svg, "<rect class=\"op\""), ops);
        EXPECT_EQ(count(svg, "<rect class=\"row\""), 4);
        EXPECT_EQ(svg.rfind("<svg", 0), 0u);
        EXPECT_NE(svg.find("</svg>\n"), std::string::npos);
        EXPECT_NE(svg.find("A &lt;title&gt; &amp; more"), std::string::npos);
        EXPECT_NE(svg.find("F&amp;B"), std::string::npos);
        int fb = 0;
        for (int r = 0; r < 4; r++)
            for (int i = 0; i < s->n_ops[r]; i++) fb += s->ops[r][i].kind == SCHED_FB;
        EXPECT_EQ(count(svg, "<rect class=\"fb-half\""), fb);
    }
}

// The time axis counts its ticks: stepping t += step never ended where the step was infinite (a
// span that overflowed, -1e308 to 1e308) or zero (a span so small that a tenth of it underflows),
// writing "<line x1=\"-nan\"" for ever. sim_read_trace refuses such spans; the loop ends anyway.
TEST(Output, SvgTimeAxisEndsOnAnyLastSpan) {
    SimEvent ev[2] = {{{}, 0, 0}, {{}, 0, 0}};
    ASSERT_EQ(sched_op_parse("F0d", &ev[0].op), 0);
    ASSERT_EQ(sched_op_parse("B0d", &ev[1].op), 0);
    int n = 2;
    SimEvent *rows[1] = {ev};
    double busy = 0, bubble = 0;
    SimTimeline t = {1, &n, rows, 0, 0, &busy, &bubble};
    const struct { double t0, t1; int ticks; } spans[] = {{-1e308, 1e308, 0}, {0, 5e-324, 11}, {0, 10, 11}};
    for (const auto &sp : spans) {
        ev[0].start = ev[0].end = t.t0 = sp.t0;
        ev[1].start = ev[1].end = t.t1 = sp.t1;
        const std::string svg = svg_text(&t, "x", "u");
        EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n") << sp.t1;
        // A tick is a line and a label on one output line; the axis itself is a line alone.
        EXPECT_EQ(count(svg, "\" stroke=\"#333\"/><text"), sp.ticks) << sp.t1;
    }
}

// Op texts with more after them, and micro-batch ids above 10^9 (which strtol takes, and an int may
// not hold), are no ops.
TEST(Output, ParseRefusesTrailingTextAndHugeIds) {
    SchedOp op;
    EXPECT_EQ(sched_op_parse("FB(1d,2u)", &op), 0);
    for (const char *bad : {"FB(1d,2u)x", "FB(1d,2u))", "F1000000001d", "B99999999999u", "FB(1d,5000000000u)"})
        EXPECT_EQ(sched_op_parse(bad, &op), 1) << bad;
    ASSERT_EQ(sched_op_parse("W1000000000u", &op), 0);
    EXPECT_EQ(op.b.mb, 1000000000);
}

// What the SVG draws of each op and rank: an F's colour by its pipe (up darker), an F&B's right half
// in its backward's colour, each rank's own idle time in the right column, the width capped at 3000
// px of plot however short the shortest op, a cell's id only where it fits, and U+FFFE (no XML
// character) in the title not written as it is (U+FFFD in its place).
TEST(Output, SvgColoursIdleWidthAndLabels) {
    SimEvent r0[2] = {{{}, 0, 1}, {{}, 1, 2}};
    SimEvent r1[2] = {{{}, 0, 1000}, {{}, 1000, 1000.001}};
    ASSERT_EQ(sched_op_parse("F3u", &r0[0].op), 0);
    ASSERT_EQ(sched_op_parse("FB(4d,1u)", &r0[1].op), 0);
    ASSERT_EQ(sched_op_parse("F7d", &r1[0].op), 0);
    ASSERT_EQ(sched_op_parse("B8d", &r1[1].op), 0);
    int n[2] = {2, 2};
    SimEvent *rows[2] = {r0, r1};
    double busy[2] = {2, 1000.001}, bubble[2] = {998.25, 0.5};
    SimTimeline t = {2, n, rows, 0, 1000.001, busy, bubble};
    const std::string svg = svg_text(&t, "a\xEF\xBF\xBE" "b", "u");
    // F3u: the up pipe's orange; F7d: the down pipe's.
    EXPECT_NE(svg.find("fill=\"#ef9a3c\" stroke=\"#333\" stroke-width=\"0.6\"><title>F3u"), std::string::npos) << svg;
    EXPECT_NE(svg.find("fill=\"#fcd5a4\" stroke=\"#333\" stroke-width=\"0.6\"><title>F7d"), std::string::npos) << svg;
    // FB(4d,1u): left half the down F's orange, right half the up B's blue.
    EXPECT_NE(svg.find("fill=\"#fcd5a4\" stroke=\"#333\" stroke-width=\"0.6\"><title>FB(4d,1u)"), std::string::npos);
    EXPECT_EQ(count(svg, "<rect class=\"fb-half\""), 1);
    EXPECT_NE(svg.find("<rect class=\"fb-half\""), std::string::npos);
    EXPECT_NE(svg.substr(svg.find("<rect class=\"fb-half\"")).find("fill=\"#4a8fd6\"/>"), std::string::npos);
    EXPECT_EQ(svg.substr(svg.find("<rect class=\"fb-half\"")).find("fill=\"#4a8fd6\"/>"),
              svg.substr(svg.find("<rect class=\"fb-half\"")).find("fill="));
    // Each rank's idle time.
    EXPECT_EQ(count(svg, "font-size=\"12\">998.25</text>"), 1);
    EXPECT_EQ(count(svg, "font-size=\"12\">0.5</text>"), 1);
    // 70 px of rank names + 3000 px of plot + 110 px of idle column.
    EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"3180\" "), std::string::npos);
    // B8d lasts 0.001 of 1000: 0.003 px, no room for its "8".
    EXPECT_EQ(count(svg, "text-anchor=\"middle\">8</text>"), 0);
    EXPECT_EQ(count(svg, "text-anchor=\"middle\">7</text>"), 1);
    EXPECT_NE(svg.find(">a\xEF\xBF\xBD"), std::string::npos);
    EXPECT_EQ(svg.find("\xEF\xBF\xBE"), std::string::npos);
}

// A B whose W is deferred is marked "2*" in its cell, and a title's line break (an XML character)
// is written as it is, not as U+FFFD.
TEST(Output, SvgDeferredMarkAndLineBreak) {
    SimEvent r0[1] = {{{}, 0, 1}};
    r0[0].op.kind = SCHED_B;
    r0[0].op.b.mb = 2;
    r0[0].op.b.defer_w = 1;
    int n[1] = {1};
    SimEvent *rows[1] = {r0};
    double busy[1] = {1}, bubble[1] = {0};
    SimTimeline t = {1, n, rows, 0, 1, busy, bubble};
    const std::string svg = svg_text(&t, "two\nlines", "u");
    EXPECT_EQ(count(svg, "text-anchor=\"middle\">2*</text>"), 1) << svg;
    EXPECT_NE(svg.find(">two\nlines</text>"), std::string::npos) << svg;
}

// ---------------------------------------------------------------------------------------------
// Chrome traces.

TEST(Trace, RoundTrip) {
    auto s = build(SCHED_DUALPIPEV, 3, 7);
    auto t = sim(s.get(), {1.25, 2.5, 1, 3.1, 0.05});
    std::string path = test_tmp_file("trace");
    char err[SCHED_ERR_LEN];
    ASSERT_EQ(sim_write_trace(t.get(), path.c_str(), err), 0) << err;
    TlPtr u(sim_read_trace(path.c_str(), err));
    ASSERT_NE(u, nullptr) << err;
    ASSERT_EQ(u->R, 3);
    for (int r = 0; r < 3; r++) {
        ASSERT_EQ(u->n[r], t->n[r]);
        for (int i = 0; i < t->n[r]; i++) {
            EXPECT_EQ(label(u->ev[r][i].op), label(t->ev[r][i].op));
            EXPECT_EQ(u->ev[r][i].start, t->ev[r][i].start);
            EXPECT_EQ(u->ev[r][i].end, t->ev[r][i].end);
        }
        EXPECT_DOUBLE_EQ(u->bubble[r], t->bubble[r]);
    }
    remove(path.c_str());
}

// The whole of text, NUL bytes included.
std::string write_text(const std::string &text) {
    std::string path = test_tmp_file("tr");
    FILE *f = fopen(path.c_str(), "w");
    fwrite(text.data(), 1, text.size(), f);
    fclose(f);
    return path;
}

TEST(Trace, MeasuredArrayForm) {
    // A bare event array as a profiler writes it: metadata, nested args, non-op events, unsorted
    // events, an escaped name, a rank given only by tid.
    std::string path = write_text(
        "[{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 0, \"args\": {\"name\": \"rank 0\"}},\n"
        " {\"name\": \"B0d\", \"ph\": \"X\", \"pid\": 1, \"tid\": 7, \"ts\": 1020, \"dur\": 40, \"args\": {\"x\": [1, 2, {\"y\": null}]}},\n"
        " {\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"tid\": 0, \"ts\": 1000, \"dur\": 10},\n"
        " {\"name\": \"send\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1010, \"dur\": 1},\n"
        " {\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 1, \"ts\": 1010, \"dur\": 10.5},\n"
        " {\"name\": \"\\u0042\\u0030\\u0064\", \"ph\": \"X\", \"tid\": 0, \"ts\": 1060, \"dur\": 20, \"cat\": \"op\"},\n"
        " {\"name\": \"F1d\", \"ph\": \"B\", \"pid\": 0, \"ts\": 1011}]\n");
    char err[SCHED_ERR_LEN];
    TlPtr t(sim_read_trace(path.c_str(), err));
    ASSERT_NE(t, nullptr) << err;
    ASSERT_EQ(t->R, 2);
    ASSERT_EQ(t->n[0], 2);
    ASSERT_EQ(t->n[1], 2);
    EXPECT_EQ(label(t->ev[0][0].op), "F0d");
    EXPECT_EQ(label(t->ev[0][1].op), "B0d");
    EXPECT_EQ(label(t->ev[1][0].op), "F0d");
    EXPECT_EQ(t->t0, 1000);
    EXPECT_EQ(t->t1, 1080);
    EXPECT_DOUBLE_EQ(t->bubble[0], 80 - 30);
    EXPECT_DOUBLE_EQ(t->bubble[1], 80 - 50);  // F0d ends 0.5 after B0d starts: busy is their union
    remove(path.c_str());

    path = write_text("{\"displayTimeUnit\": \"ms\", \"traceEvents\": [{\"name\": \"FB(1d,0u*)\", \"ph\": \"X\", "
                      "\"pid\": 2, \"ts\": 5, \"dur\": 3}], \"otherData\": {}}");
    t.reset(sim_read_trace(path.c_str(), err));
    ASSERT_NE(t, nullptr) << err;
    EXPECT_EQ(t->R, 3);
    EXPECT_EQ(t->n[0], 0);
    EXPECT_EQ(label(t->ev[2][0].op), "FB(1d,0u*)");
    EXPECT_DOUBLE_EQ(t->bubble[0], 3);
    remove(path.c_str());

    // The longest span a trace may have, 1e15 µs, from a wall-clock origin (µs since 1970).
    path = write_text("[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1.7e15, \"dur\": 1e15}]");
    t.reset(sim_read_trace(path.c_str(), err));
    ASSERT_NE(t, nullptr) << err;
    EXPECT_EQ(t->t1 - t->t0, 1e15);
    remove(path.c_str());
}

TEST(Trace, Errors) {
    char err[SCHED_ERR_LEN];
    EXPECT_EQ(sim_read_trace("/nonexistent/trace.json", err), nullptr);
    EXPECT_STREQ(err, "cannot open trace /nonexistent/trace.json: No such file or directory");
    // A directory "opened" and ftell gave LONG_MAX as its size (an 8 EiB allocation); a FIFO without
    // a writer blocked the open for ever. Neither is a regular file.
    EXPECT_EQ(sim_read_trace("/tmp", err), nullptr);
    EXPECT_STREQ(err, "cannot open trace /tmp: not a regular file");
    std::string fifo = test_tmp_file("fifo");
    remove(fifo.c_str());
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_EQ(sim_read_trace(fifo.c_str(), err), nullptr);
    EXPECT_EQ(std::string(err), "cannot open trace " + fifo + ": not a regular file");
    remove(fifo.c_str());
    std::string path = write_text("[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0,\n \"ts\": 1 \"dur\": 2}]");
    EXPECT_EQ(sim_read_trace(path.c_str(), err), nullptr);
    EXPECT_EQ(std::string(err), path + ":2: malformed JSON: expected ',' or '}'");
    remove(path.c_str());
    path = write_text("[{\"name\": \"optimizer\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1, \"dur\": 2}]");
    EXPECT_EQ(sim_read_trace(path.c_str(), err), nullptr);
    EXPECT_NE(std::string(err).find("no complete"), std::string::npos) << err;
    remove(path.c_str());
    path = write_text("[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": -1, \"ts\": 1, \"dur\": 2}]");
    EXPECT_EQ(sim_read_trace(path.c_str(), err), nullptr);
    EXPECT_NE(std::string(err).find("out of range"), std::string::npos) << err;
    remove(path.c_str());
    path = write_text("[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"dur\": 2}]");
    EXPECT_EQ(sim_read_trace(path.c_str(), err), nullptr);
    EXPECT_NE(std::string(err).find("lacks ts"), std::string::npos) << err;
    remove(path.c_str());
    // Valid JSON that is not a trace, or whose events have fields of the wrong type.
    const struct {
        std::string text;
        const char *message;
    } bad[] = {
        {"{\"events\": []}",
         ": not a Chrome trace (a JSON array of events, or an object with a \"traceEvents\" array)"},
        {"7", ": not a Chrome trace"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1, \"dur\": 2}, 3]",
         ": event 1 is not a JSON object"},
        {"[{\"name\": 5, \"ph\": \"X\"}]", ": event 0 has a \"name\" or \"ph\" that is not a string"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": \"0\", \"ts\": 1, \"dur\": 2}]",
         ": event 0 has a pid, tid, ts or dur that is not a number"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1e999, \"dur\": 2}]",
         ":1: malformed JSON: number out of the range of a double"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1e308, \"dur\": 1e308}]",
         ": event \"F0d\" has rank 0"},
        {"[] x", ":1: malformed JSON: unexpected text after the JSON value"},
        // A NUL byte is no end of the text: the parser sees it (and what follows) and refuses it.
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1, \"dur\": 2}]\n\0["s,
         ":2: malformed JSON: unexpected text after the JSON value"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1, \"dur\": 2},\0]"s,
         ":1: malformed JSON: expected a JSON value"},
        // Finite events whose span is not: t1 - t0 overflowed and the SVG's time axis never ended;
        // 0 to 1.7e308 printed "idle 1.7e+308 (inf%)". A step spans at most 1e15 µs.
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": -1e308, \"dur\": 1},"
         " {\"name\": \"B0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1e308, \"dur\": 1}]",
         ": the op events span from ts -1e+308 to 1e+308 µs, more than 1e+15 µs (31 years): not a measured step"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 0, \"dur\": 1},"
         " {\"name\": \"B0d\", \"ph\": \"X\", \"pid\": 1, \"ts\": 1.7e308, \"dur\": 1}]",
         ": the op events span from ts 0 to 1.7e+308 µs"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 0, \"dur\": 2e15}]",
         ": the op events span from ts 0 to 2e+15 µs"},
    };
    for (const auto &b : bad) {
        path = write_text(b.text);
        EXPECT_EQ(sim_read_trace(path.c_str(), err), nullptr) << b.message;
        EXPECT_NE(std::string(err).find(path + b.message), std::string::npos) << err;
        remove(path.c_str());
    }
}

// An op event's rank is a whole number in [0, 65535] and its duration is given and not negative:
// rank 1.5 was read as rank 1, and a negative or missing duration as an op that ran backwards or
// not at all, each counted into the busy and idle figures without a word.
TEST(Trace, EventFieldsOutOfRange) {
    char err[SCHED_ERR_LEN];
    const struct {
        std::string text;
        const char *message;
    } bad[] = {
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 1.5, \"ts\": 1, \"dur\": 2}]",
         ": event \"F0d\" has rank 1.5, ts 1 or dur 2 out of range"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"tid\": 65536, \"ts\": 1, \"dur\": 2}]",
         ": event \"F0d\" has rank 65536, ts 1 or dur 2 out of range"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1, \"dur\": -0.5}]",
         ": event \"F0d\" has rank 0, ts 1 or dur -0.5 out of range"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1}]", ": event \"F0d\" lacks ts, dur or pid/tid"},
        {"[{\"name\": \"F0d\", \"ph\": \"X\", \"ts\": 1, \"dur\": 2}]", ": event \"F0d\" lacks ts, dur or pid/tid"},
    };
    for (const auto &b : bad) {
        std::string path = write_text(b.text);
        EXPECT_EQ(sim_read_trace(path.c_str(), err), nullptr) << b.message;
        EXPECT_NE(std::string(err).find(path + b.message), std::string::npos) << err;
        remove(path.c_str());
    }
    // The largest rank is taken: 65 536 ranks, all but the last without ops.
    std::string path = write_text("[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 65535, \"ts\": 1, \"dur\": 0}]");
    TlPtr t(sim_read_trace(path.c_str(), err));
    ASSERT_NE(t, nullptr) << err;
    EXPECT_EQ(t->R, 65536);
    EXPECT_EQ(t->n[65535], 1);
    remove(path.c_str());
}

}  // namespace
