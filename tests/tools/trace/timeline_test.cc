// The kernel trace's arithmetic (tools/trace/timeline.h) on made-up timelines: what it prints in
// docs/BENCHMARKS.md must be the union of the GPU's work and the gaps between, clipped to the window.
#include "tools/trace/timeline.h"

#include <gtest/gtest.h>

namespace {

using trace::Work;
constexpr uint64_t us = 1000;  // the timeline is in nanoseconds

Work kernel(uint64_t from_us, uint64_t to_us) { return {from_us * us, to_us * us, "k", 0, true}; }

// Overlapping work counts once; each gap falls in its bucket, the window's ends included.
TEST(Timeline, BusyIsTheUnionAndGapsAreBucketed) {
    // [0, 10) and [5, 20) overlap (busy 20), [8, 12) lies inside them, a 3 µs gap to [23, 30), a
    // 30 µs gap to [60, 61), a 150 µs gap to [211, 212), then 8 µs and 1788 µs to the window's end.
    std::vector<Work> all = {kernel(23, 30), kernel(0, 10), kernel(5, 20), kernel(8, 12), kernel(60, 61),
                             kernel(211, 212), kernel(220, 221)};
    const uint64_t end = 2009 * us;
    std::vector<Work> in = trace::clip(all, 0, end);
    ASSERT_EQ(in.size(), all.size());
    for (size_t i = 1; i < in.size(); i++) EXPECT_LE(in[i - 1].start, in[i].start);
    trace::Idle r = trace::idle_of(in, 0, end);
    EXPECT_DOUBLE_EQ(r.span_ms, 2.009);
    EXPECT_NEAR(r.busy_ms, (20 + 7 + 1 + 1 + 1) * 1e-3, 1e-12);
    const int n[trace::kGapBuckets] = {1, 1, 1, 1, 1};
    const double ms[trace::kGapBuckets] = {0.003, 0.008, 0.030, 0.150, 1.788};
    for (int b = 0; b < trace::kGapBuckets; b++) {
        EXPECT_EQ(r.gap_n[b], n[b]) << trace::kGapLabels[b];
        EXPECT_NEAR(r.gap_ms[b], ms[b], 1e-12) << trace::kGapLabels[b];
    }
    double gaps = 0;
    for (double g : r.gap_ms) gaps += g;
    EXPECT_NEAR(r.busy_ms + gaps, r.span_ms, 1e-12);
}

// Work that straddles the window is cut to it; work outside it is left out.
TEST(Timeline, WorkIsClippedToTheWindow) {
    std::vector<Work> all = {kernel(0, 50), kernel(90, 110), kernel(200, 300), kernel(300, 310)};
    std::vector<Work> in = trace::clip(all, 100 * us, 250 * us);
    ASSERT_EQ(in.size(), 2u);
    EXPECT_EQ(in[0].start, 100 * us);
    EXPECT_EQ(in[0].end, 110 * us);
    EXPECT_EQ(in[1].start, 200 * us);
    EXPECT_EQ(in[1].end, 250 * us);
    trace::Idle r = trace::idle_of(in, 100 * us, 250 * us);
    EXPECT_NEAR(r.busy_ms, 0.060, 1e-12);
    EXPECT_EQ(r.gap_n[2], 1);  // the 90 µs between
    EXPECT_NEAR(r.gap_ms[2], 0.090, 1e-12);
}

// An empty window is one gap; no work at all is no busy time.
TEST(Timeline, AnIdleWindowIsOneGap) {
    trace::Idle r = trace::idle_of({}, 0, 3 * us);
    EXPECT_EQ(r.busy_ms, 0.0);
    EXPECT_EQ(r.gap_n[0], 1);
    EXPECT_NEAR(r.gap_ms[0], 0.003, 1e-12);
}

TEST(Timeline, ShortNames) {
    EXPECT_EQ(trace::short_name("sqsum_partial_kernel"), "sqsum_partial_kernel");
    // void foo<int>(float*) → without its template arguments and parameters.
    EXPECT_EQ(trace::short_name("_Z3fooIiEvPf"), "void foo<…>");
    EXPECT_EQ(trace::short_name(std::string(200, 'a').c_str()).size(), 90u);
}

}  // namespace
