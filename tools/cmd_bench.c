// `moelab bench`: training throughput of configs next to the machine's GEMM rate, in one table.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "framework/backend.h"
#include "framework/bench.h"
#include "framework/core/check.h"
#include "framework/core/config.h"
#include "framework/core/log.h"
#include "framework/core/num.h"
#include "tools/commands.h"

static void bench_help(void) {
    printf("usage: moelab bench [--device cpu|cuda|cuda-fp32] [--config FILE]... [--steps N] [--seconds S]\n\n"
           "Times training steps on synthetic tokens for each config (default: configs/tiny.cfg and\n"
           "configs/small.cfg in the current folder, the repository's root) and prints tokens/s and\n"
           "achieved model FLOP/s next to the GEMM rate of this machine measured in the same run:\n"
           "OpenBLAS sgemm on the CPU; on a GPU the bf16 cuBLAS GEMM (8192^3), against which MFU is\n"
           "given, and the peak GPU memory. Then, per config, the time of a training step by layer\n"
           "type over 2 more steps (GPU: CUDA events on the compute stream; CPU: wall clock) and how\n"
           "skewed the last step's expert loads were (max/mean tokens per expert of each MoE layer: the\n"
           "grouped GEMMs ran at those counts). The loss columns are the first step's (the untimed\n"
           "warm-up) and the last timed step's loss on the one synthetic batch every step trains on,\n"
           "which the model learns by heart (towards 0): a check that the steps train. --steps and\n"
           "--seconds: time at least N steps (default 3, at most 1000000) and at least S seconds\n"
           "(default 5, at most 86400) per config. --device defaults to the first config's device\n"
           "key. Other --key value pairs (at most 32) override every config; among them\n"
           "--expert-gemm cutlass|grouped|streams|loop picks how the GPU runs the expert GEMMs\n"
           "(default cutlass: CUTLASS's Hopper grouped GEMM on compute capability 9.0, else cuBLAS's\n"
           "grouped call; --gemm-streams 1..8 streams, default 4). `moelab train --help` lists every\n"
           "key. The keys of a run that bench has no use for (data and output files, checkpoints,\n"
           "validation, logging, sampling, pipelines, expert parallelism, ZeRO and the overlaps,\n"
           "EPLB, the communication timeout, the non-finite skip) are refused on its command line\n"
           "and set back to their defaults where a config file names them.\n");
}

// The time of one step by layer type, largest first.
static void print_breakdown(const char *config, const BenchResult *r, int gpu) {
    printf("\n%s: time by layer type, mean of %d steps (%s)\n", config, r->prof_steps,
           gpu ? "CUDA events on the compute stream" : "wall clock");
    printf("  %-18s %10s %8s\n", "layer type", "ms/step", "% step");
    int order[PROF_N];
    for (int i = 0; i < PROF_N; i++) order[i] = i;
    for (int i = 1; i < PROF_N; i++)  // insertion sort by time, descending
        for (int j = i; j > 0 && r->prof_ms[order[j]] > r->prof_ms[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (int i = 0; i < PROF_N; i++)
        printf("  %-18s %10.2f %7.1f%%\n", prof_name((ProfRegion)order[i]), r->prof_ms[order[i]],
               100.0 * r->prof_ms[order[i]] / r->prof_step_ms);
    printf("  %-18s %10.2f %7.1f%%\n", "step", r->prof_step_ms, 100.0);
    if (r->load_worst > 0)
        printf("  expert load max/mean at the last step: %.2f mean over the MoE layers, %.2f the worst\n",
               r->load_mean, r->load_worst);
}

// The keys of a training run that bench has no use for: it times one process on synthetic tokens,
// with no data, files, checkpoints, validation, logging, sampling, pipeline, expert or data
// parallelism, EPLB or non-finite skip.
// On its command line they are refused (they would change nothing, or, for EPLB's slots, build a
// model the one-process dispatcher cannot run); from a config file, where a run's other settings
// sit beside them, they are set back to their defaults.
static const char *const kRunOnlyKeys[] = {
    "ep", "pp", "chunks", "schedule", "fb_overlap", "zero", "dp_overlap", "ep_overlap", "ep_chunks",
    "eplb_interval", "eplb_redundant", "eplb_groups", "eplb_nodes", "comm_timeout", "data", "metrics",
    "out", "resume", "trace", "save_every", "keep", "log_every", "val_every", "val_batches",
    "sample_tokens", "temperature", "top_k_sample", "nonfinite_skip", NULL};

// The run-only key that flag names, or NULL.
static const char *run_only_key(const char *flag) {
    for (const char *const *k = kRunOnlyKeys; *k; k++)
        if (config_names_key(flag, *k)) return *k;
    return NULL;
}

// c with every run-only key at its default.
static void drop_run_only_keys(MoeConfig *c) {
    for (const char *const *k = kRunOnlyKeys; *k; k++) config_reset_key(c, *k);
}

int cmd_bench(int argc, char **argv) {
    const char *configs[16];
    int n_cfg = 0, min_steps = 3;
    double min_seconds = 5.0;
    const char *device = NULL;
    // Our own flags first; everything else is a config override applied to every config.
    char *overrides[2 * 32];  // 32 keys, each one argument ("--key=value") or two
    int n_over = 0, n_keys = 0;
    char err[NUM_ERR_LEN];
    // "--flag value" and "--flag=value".
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { bench_help(); return 0; }
        const size_t n = cmd_flag_len(a);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)n, a);
        static const char *const flags[] = {"--config", "--device", "--steps", "--seconds", NULL};
        // A word where an option belongs: often a second config after one --config (`--config a.cfg
        // b.cfg`), which each config needs of its own.
        if (a[0] != '-')
            core_usage_error("bench: unexpected argument '%s' (each config takes a --config of its own; see "
                             "`moelab bench --help`)", a);
        // A retired key goes on to config_apply_args, which says what replaced it. Only "--key":
        // config_is_key takes any number of dashes, config_apply_args two (`-d-model 32` was
        // accepted and did nothing: review, 2026-12-05).
        const int dashed = a[0] == '-' && a[1] == '-' && a[2] != '-';
        if (!dashed || (!cmd_flag_in(a, n, flags) && !config_is_key(name) && !config_is_retired(name)))
            core_usage_error("bench: unknown option '%s' (see `moelab bench --help`)", name);
        if (run_only_key(name))
            core_usage_error("bench: %s does not apply: bench times one process on synthetic tokens (see "
                             "`moelab bench --help`)", name);
        const char *v = cmd_flag_value(argc, argv, &i);
        if (!v) core_usage_error("bench: %s needs a value", name);
        if (cmd_flag_is(a, n, "--config")) {
            if (n_cfg == 16) core_usage_error("bench: at most 16 --config files");
            configs[n_cfg++] = v;
        } else if (cmd_flag_is(a, n, "--device")) device = v;
        else if (cmd_flag_is(a, n, "--steps")) {
            long long x;
            if (num_parse_int("--steps", v, 1, 1000000, &x, err)) core_usage_error("bench: %s", err);
            min_steps = (int)x;
        } else if (cmd_flag_is(a, n, "--seconds")) {
            if (num_parse_real("--seconds", v, 0, 86400, &min_seconds, err)) core_usage_error("bench: %s", err);
        } else {
            // A config key, in the form config_apply_args reads: "--key=value" or "--key value".
            if (n_keys++ == 32) core_usage_error("bench: at most 32 config overrides");
            overrides[n_over++] = (char *)a;
            if (!strchr(a, '=')) overrides[n_over++] = (char *)v;
        }
    }
    // A --device that names no backend is the first thing wrong, before any config is read.
    const LayerOps *ops = device ? backend_ops(device) : NULL;
    if (n_cfg == 0) {
        configs[0] = "configs/tiny.cfg", configs[1] = "configs/small.cfg", n_cfg = 2;
        // The defaults are paths in the repository, read from the current folder.
        if (access(configs[0], F_OK) != 0)
            core_usage_error("bench: no --config given, and the default configs (configs/tiny.cfg and "
                             "configs/small.cfg) are not in the current folder: run it in the repository's "
                             "root, or give --config FILE");
    }
    MoeConfig *cfg = calloc((size_t)n_cfg, sizeof *cfg);
    for (int k = 0; k < n_cfg; k++) {
        config_defaults(&cfg[k]);
        config_load_file(&cfg[k], configs[k]);
        config_apply_args(&cfg[k], n_over, overrides);
        drop_run_only_keys(&cfg[k]);
        config_validate(&cfg[k]);
    }
    if (!device) device = cfg[0].device, ops = backend_ops(device);
    const int gpu = ops->dev != CORE_CPU;
    // The baseline: the CPU's sgemm, or the GPU's bf16 GEMM (the MFU denominator whatever the
    // compute dtype, as the benchmark asks).
    double base = gpu ? bench_gemm_gflops(backend_ops("cuda"), 8192, 10) : bench_sgemm_gflops(1024, 5);
    if (gpu)
        printf("moelab bench --device %s (%s): bf16 GEMM 8192^3 = %.1f TFLOP/s (cuBLAS, this GPU, this run)\n",
               device, ops->name, base / 1e3);
    else
        printf("moelab bench --device cpu: sgemm 1024^3 = %.1f GFLOP/s (OpenBLAS, this machine, this run)\n", base);
    // Every config runs before the table is printed: the lines a run prints as it sets up (on a GPU
    // the CUDA graph's and the attention's) landed between the table's rows.
    BenchResult *res = calloc((size_t)n_cfg, sizeof *res);
    int w = 22;  // the config column: the longest path given
    for (int k = 0; k < n_cfg; k++) {
        core_info("timing %s", configs[k]);
        res[k] = bench_train(&cfg[k], ops, min_steps, min_seconds);
        if ((int)strlen(configs[k]) > w) w = (int)strlen(configs[k]);
    }
    printf("\n%-*s %9s %7s %10s %10s %10s %8s %9s %17s\n", w, "config", "params(M)", "steps", "step (s)",
           "tokens/s", gpu ? "TFLOP/s" : "GFLOP/s", gpu ? "MFU" : "/sgemm", "peak GiB", "loss first/last");
    for (int k = 0; k < n_cfg; k++) {
        const BenchResult r = res[k];
        char peak[32] = "-";  // the CPU's memory is not tracked
        if (gpu) snprintf(peak, sizeof peak, "%.2f", r.peak_gib);
        printf("%-*s %9.2f %7d %10.3f %10.0f %10.1f %7.1f%% %9s %8.3f/%.3f\n", w, configs[k], r.params_m,
               r.steps, r.step_seconds, r.tokens_per_s, gpu ? r.gflops / 1e3 : r.gflops, 100.0 * r.gflops / base,
               peak, r.first_loss, r.last_loss);
        // A diverged run still times its steps; its loss column is no result (fuzzing: "-nan", exit 0).
        if (!isfinite(r.first_loss) || !isfinite(r.last_loss))
            core_warn("%s: the loss diverged during the timed steps (lower --lr, or set --grad-clip): the "
                      "timings hold, the loss column does not", configs[k]);
    }
    for (int k = 0; k < n_cfg; k++) print_breakdown(configs[k], &res[k], gpu);
    free(res);
    free(cfg);
    return 0;
}
