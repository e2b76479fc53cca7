// Throughput measurement for `moelab bench`: training steps of a config on synthetic tokens on a
// backend (layers/ops.h), and the machine's GEMM rate measured in the same run as the baseline to
// compare against (OpenBLAS sgemm on the CPU, cuBLAS bf16 on the GPU).
#ifndef MOELAB_FRAMEWORK_BENCH_H
#define MOELAB_FRAMEWORK_BENCH_H

#include "framework/core/config.h"
#include "framework/core/prof.h"
#include "layers/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double tokens_per_s;
    double gflops;          // model FLOPs (model_train_flops_per_token) per second / 1e9
    double step_seconds;    // mean over the timed steps
    int steps;              // timed steps (after one warm-up step; two with a CUDA graph: its capture)
    double params_m;        // parameters held, millions
    double peak_gib;        // most device memory the backend held at once (0 where not tracked)
    float first_loss, last_loss;  // loss of the warm-up step and of the last timed step
    // Time by layer type (prof.h) over prof_steps more steps after the timed ones (so the marks
    // cost the throughput nothing): milliseconds per step in each region, and their sum.
    int prof_steps;
    double prof_ms[PROF_N], prof_step_ms;
    // Expert load of the last step, max/mean tokens per expert of each MoE layer: the mean and the
    // largest over the layers (0 without MoE layers). The grouped GEMMs run at these counts, so a
    // kernel benchmark at uniform counts says how fast they could run, this how skewed they were.
    double load_mean, load_worst;
} BenchResult;

// Times optimizer steps of c on backend ops (one warm-up step, then at least min_steps and at least
// min_seconds), the model and its optimizer living on that backend; then 2 steps with prof marks on
// (GPU: CUDA events on the compute stream; CPU: the wall clock) for the time by layer type, kernel
// by kernel (after a CUDA graph's launches one more step first, unmeasured).
BenchResult bench_train(const MoeConfig *c, const LayerOps *ops, int min_steps, double min_seconds);
// Single-precision GEMM rate (GFLOP/s) of cblas_sgemm on n × n × n, best of `reps` runs.
double bench_sgemm_gflops(int n, int reps);
// GEMM rate (GFLOP/s) of ops->linear_forward (the backend's own GEMM, in its dtype) on
// n × n × n, best of `reps` synchronized runs after one warm-up.
double bench_gemm_gflops(const LayerOps *ops, int n, int reps);

#ifdef __cplusplus
}
#endif
#endif
