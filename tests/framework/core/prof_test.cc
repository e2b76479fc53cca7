// prof.h on the CPU: marks are ignored until prof_start and on other threads than its caller's,
// each interval counts for the region opened before it, and prof_stop adds to what the caller holds.
#include <gtest/gtest.h>

#include <time.h>

#include <thread>

extern "C" {
#include "framework/core/prof.h"
}

namespace {

void sleep_ms(int ms) {
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, nullptr);
}

TEST(Prof, IntervalsCountForTheOpenRegion) {
    prof_mark(PROF_ATTN);  // not started: ignored
    double ms[PROF_N] = {0};
    ms[PROF_HEAD] = 1.0;  // prof_stop adds
    prof_start(0);
    prof_mark(PROF_ATTN);
    sleep_ms(30);
    prof_mark(PROF_EXPERTS);
    sleep_ms(10);
    prof_mark(PROF_ATTN);
    sleep_ms(20);
    prof_stop(ms);
    EXPECT_GE(ms[PROF_ATTN], 50.0);
    EXPECT_LT(ms[PROF_ATTN], 500.0);
    EXPECT_GE(ms[PROF_EXPERTS], 10.0);
    EXPECT_LT(ms[PROF_EXPERTS], ms[PROF_ATTN]);
    EXPECT_EQ(ms[PROF_HEAD], 1.0);
    EXPECT_EQ(ms[PROF_NORM], 0.0);
    EXPECT_STREQ(prof_name(PROF_EXPERTS), "experts");
}

// Only the thread that called prof_start takes marks: a worker's (the pipeline's F&B overlap) are
// no-ops, so the starter's open region keeps the time.
TEST(Prof, AnotherThreadsMarksAreIgnored) {
    double ms[PROF_N] = {0};
    prof_start(0);
    prof_mark(PROF_ATTN);
    std::thread worker([] { prof_mark(PROF_NORM); });
    worker.join();
    sleep_ms(20);
    prof_stop(ms);
    EXPECT_EQ(ms[PROF_NORM], 0.0);
    EXPECT_GE(ms[PROF_ATTN], 20.0);
}

}  // namespace
