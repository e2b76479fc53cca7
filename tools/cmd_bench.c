// `moelab bench`: training throughput of configs next to the machine's GEMM rate, in one table.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/bench.h"
#include "framework/core/check.h"
#include "framework/core/config.h"
#include "tools/commands.h"

static void bench_help(void) {
    printf("usage: moelab bench [--device cpu] [--config FILE]... [--steps N] [--seconds S]\n\n"
           "Times training steps on synthetic tokens for each config (default: configs/tiny.cfg and\n"
           "configs/small.cfg) and prints tokens/s and achieved model GFLOP/s next to the sgemm rate\n"
           "of this machine measured in the same run. Other --key value pairs override every config.\n");
}

int cmd_bench(int argc, char **argv) {
    const char *configs[16];
    int n_cfg = 0, min_steps = 3;
    double min_seconds = 5.0;
    const char *device = "cpu";
    // Our own flags first; everything else is a config override applied to every config.
    char *overrides[64];
    int n_over = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { bench_help(); return 0; }
        if (i + 1 >= argc) core_usage_error("bench: %s needs a value", a);
        if (!strcmp(a, "--config")) {
            if (n_cfg == 16) core_usage_error("bench: at most 16 --config files");
            configs[n_cfg++] = argv[++i];
        } else if (!strcmp(a, "--device")) device = argv[++i];
        else if (!strcmp(a, "--steps")) min_steps = atoi(argv[++i]);
        else if (!strcmp(a, "--seconds")) min_seconds = atof(argv[++i]);
        else if (n_over + 2 <= 64 && config_is_key(a)) {
            overrides[n_over++] = argv[i];
            overrides[n_over++] = argv[++i];
        } else core_usage_error("bench: unknown option '%s' (see `moelab bench --help`)", a);
    }
    if (strcmp(device, "cpu") != 0)
        core_usage_error("bench: --device %s is not available in this build (CPU only)", device);
    if (n_cfg == 0) { configs[0] = "configs/tiny.cfg"; configs[1] = "configs/small.cfg"; n_cfg = 2; }
    double sgemm = bench_sgemm_gflops(1024, 5);
    printf("moelab bench --device cpu: sgemm 1024^3 = %.1f GFLOP/s (OpenBLAS, this machine, this run)\n\n", sgemm);
    printf("%-22s %9s %7s %12s %10s %10s %8s\n", "config", "params(M)", "steps", "step (s)", "tokens/s",
           "GFLOP/s", "/sgemm");
    for (int k = 0; k < n_cfg; k++) {
        MoeConfig c;
        config_defaults(&c);
        config_load_file(&c, configs[k]);
        config_apply_args(&c, n_over, overrides);
        config_validate(&c);
        BenchResult r = bench_train_cpu(&c, min_steps, min_seconds);
        printf("%-22s %9.2f %7d %12.3f %10.0f %10.1f %7.1f%%\n", configs[k], r.params_m, r.steps,
               r.step_seconds, r.tokens_per_s, r.gflops, 100.0 * r.gflops / sgemm);
    }
    return 0;
}
