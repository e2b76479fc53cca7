// Time by layer type (see prof.h): a list of (region, timestamp) marks, summed at prof_stop. Only
// the thread that called prof_start takes marks: a worker thread (the pipeline's F&B overlap) runs
// on a stream of its own, whose times would interleave with this one's, so its marks are no-ops.
#include "framework/core/prof.h"

#include "framework/core/check.h"
#include "framework/core/cuda.h"
#include "framework/core/mem.h"
#include "framework/core/timer.h"

static int g_on, g_gpu;
static _Thread_local int t_owner;  // this thread called prof_start (and not yet prof_stop)
static int g_n, g_cap;     // marks taken, marks the arrays hold
static ProfRegion *g_region;  // (cap) the region each mark opens
static double *g_t;           // (cap) CPU: the wall clock at each mark
static void **g_ev;           // (cap) GPU: a CUDA event per mark, kept across runs

static void take(ProfRegion r) {
    if (g_n == g_cap) {
        int cap = g_cap ? 2 * g_cap : 4096;
        g_region = core_grow(g_region, g_cap, cap, sizeof *g_region);
        g_t = core_grow(g_t, g_cap, cap, sizeof *g_t);
        g_ev = core_grow(g_ev, g_cap, cap, sizeof *g_ev);  // zeroed: no event yet
        g_cap = cap;
    }
    g_region[g_n] = r;
    if (g_gpu) {
        if (!g_ev[g_n]) g_ev[g_n] = core_cuda_event_create();
        core_cuda_event_record(g_ev[g_n]);
    } else {
        g_t[g_n] = core_now();
    }
    g_n++;
}

void prof_mark(ProfRegion r) {
    // Read first, so that another thread never reads the shared state.
    if (!t_owner) return;
    CHECK(r >= 0 && r < PROF_N, "prof_mark: unknown region %d", (int)r);
    // Two marks in a row for the same region add nothing but an event.
    if (g_region[g_n - 1] != r) take(r);
}

void prof_start(int gpu) {
    CHECK(!g_on, "prof_start: already started");
    g_on = 1;
    t_owner = 1;
    g_gpu = gpu;
    g_n = 0;
    take(PROF_OTHER);
}

int prof_active(void) { return g_on; }

void prof_stop(double ms[PROF_N]) {
    CHECK(g_on, "prof_stop: not started");
    take(PROF_OTHER);  // closes the last interval
    g_on = 0;
    t_owner = 0;
    for (int i = 0; i + 1 < g_n; i++)
        ms[g_region[i]] += g_gpu ? core_cuda_event_ms(g_ev[i], g_ev[i + 1]) : 1e3 * (g_t[i + 1] - g_t[i]);
}

const char *prof_name(ProfRegion r) {
    static const char *names[PROF_N] = {"other", "embedding", "attention", "norms", "dense FFN",
                                        "router", "dispatch/permute", "experts", "combine",
                                        "head + loss", "optimizer"};
    CHECK(r >= 0 && r < PROF_N, "prof_name: unknown region %d", (int)r);
    return names[r];
}
