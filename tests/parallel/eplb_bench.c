// Planner speed at DeepSeek-V3 scale: 61 MoE layers × 256 experts → 320 slots on 64 ranks in 8 nodes,
// 32 expert groups, random skewed loads (fixed seed). Prints the median time of one whole plan (all
// layers) over many runs, for the hierarchical policy and for the global one on the same loads: wall
// time, and this thread's CPU time (which leaves out the time other processes take on a shared core).
// Run on one core: OMP_NUM_THREADS=1 taskset -c 0 bazel-bin/tests/parallel/eplb_bench [runs]
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "framework/core/mem.h"
#include "framework/core/rng.h"
#include "framework/core/timer.h"
#include "parallel/eplb.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Times `runs` plans of load (L, E) for shape s; prints the median and min wall time and the median
// CPU time in milliseconds, and the mean per-rank max/mean load before (E/G experts per rank) and after.
static void bench(const EplbShape *s, const double *load, int runs) {
    EplbPlan *p = eplb_plan_create(s);
    double *t = core_alloc((size_t)runs * sizeof(double));  // (runs) wall
    double *c = core_alloc((size_t)runs * sizeof(double));  // (runs) CPU
    eplb_plan_run(p, load);  // warm-up: first touch of the plan's buffers
    for (int i = 0; i < runs; i++) {
        double t0 = core_now(), c0 = cpu_now();
        eplb_plan_run(p, load);
        c[i] = (cpu_now() - c0) * 1e3;
        t[i] = (core_now() - t0) * 1e3;
    }
    qsort(t, (size_t)runs, sizeof(double), cmp_double);
    qsort(c, (size_t)runs, sizeof(double), cmp_double);
    double before = 0, after = 0;
    for (int l = 0; l < s->L; l++) {
        const double *ld = load + (size_t)l * s->E;
        before += eplb_rank_imbalance(ld, s->E, NULL, NULL, s->E, s->G);
        after += eplb_rank_imbalance(ld, s->E, p->phy2log + (size_t)l * s->R, p->logcnt + (size_t)l * s->E,
                                     s->R, s->G);
    }
    printf("%-12s L=%d E=%d R=%d Ng=%d Nn=%d G=%d: wall median %.3f ms (min %.3f), CPU median %.3f ms, "
           "%d runs; max/mean rank load %.3f before, %.3f after (mean over layers)\n",
           p->hierarchical ? "hierarchical" : "global", s->L, s->E, s->R, s->Ng, s->Nn, s->G, t[runs / 2], t[0],
           c[runs / 2], runs, before / s->L, after / s->L);
    core_free(c);
    core_free(t);
    eplb_plan_free(p);
}

int main(int argc, char **argv) {
    int runs = argc > 1 ? atoi(argv[1]) : 51;
    if (runs < 1) {
        fprintf(stderr, "usage: eplb_bench [runs >= 1]\n");
        return 2;
    }
    EplbShape hier = {.L = 61, .E = 256, .R = 320, .Ng = 32, .Nn = 8, .G = 64};
    // Lognormal token counts (sigma 1): a few hot experts per layer, as routers produce in practice.
    double *load = core_alloc((size_t)hier.L * hier.E * sizeof(double));  // (L, E)
    RngStream rs = rng_stream(12345, 0);
    for (int i = 0; i < hier.L * hier.E; i++) {
        double u1 = 1.0 - rng_next_uniform(&rs), u2 = rng_next_uniform(&rs);
        double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
        load[i] = floor(4096.0 * exp(z));
    }
    bench(&hier, load, runs);
    // The global policy on the same machine: Ng = 1 is not a multiple of Nn = 8.
    EplbShape glob = hier;
    glob.Ng = 1;
    bench(&glob, load, runs);
    core_free(load);
    return 0;
}
