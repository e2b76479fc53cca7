// Throughput measurement for `moelab bench`: training steps of a config on synthetic tokens, and
// the machine's sgemm rate measured in the same run as the baseline to compare against.
#ifndef MOELAB_FRAMEWORK_BENCH_H
#define MOELAB_FRAMEWORK_BENCH_H

#include "framework/core/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double tokens_per_s;
    double gflops;          // model FLOPs (model_train_flops_per_token) per second / 1e9
    double step_seconds;    // mean over the timed steps
    int steps;              // timed steps (after one warm-up step)
    double params_m;        // parameters held, millions
} BenchResult;

// Times optimizer steps of c (one warm-up step, then at least min_steps and at least min_seconds).
BenchResult bench_train_cpu(const MoeConfig *c, int min_steps, double min_seconds);
// Single-precision GEMM rate (GFLOP/s) of cblas_sgemm on n × n × n, best of `reps` runs.
double bench_sgemm_gflops(int n, int reps);

#ifdef __cplusplus
}
#endif
#endif
