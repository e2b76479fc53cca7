// `moelab train`: parses the config and flags, then hands over to the trainer (framework/train.h).
#include <stdio.h>
#include <string.h>

#include "data/prepare.h"
#include "framework/core/check.h"
#include "framework/core/config.h"
#include "framework/core/file.h"
#include "framework/train.h"
#include "parallel/comm.h"
#include "tools/commands.h"

static void train_help(void) {
    printf("usage: moelab train [--config FILE] [--key value ...]\n\n"
           "Trains the model the config describes on a prepared data directory (--data DIR, from\n"
           "`moelab data prepare`). Any config key can be given on the command line, where it\n"
           "overrides the --config files (and a later --config file an earlier one; a key set twice\n"
           "on the command line takes its last value); the most used:\n"
           "  --config FILE     key = value file (configs/*.cfg)\n"
           "  --data DIR        prepared data (tokenizer.bin, train.bin, val.bin)\n"
           "  --steps N         optimizer steps\n"
           "  --seed S          seed of weights, data order and sampling\n"
           "  --metrics FILE    JSON Lines metrics: {\"config\": {every key}, ...}, then one object per logged\n"
           "                    step; with --resume, a file of the resumed run goes on after its resumed step\n"
           "  --out DIR         save checkpoints DIR/step_<n>.h5 (every --save-every N steps and at the end)\n"
           "  --keep K          keep the newest K checkpoints of this run's lineage in DIR (0: all)\n"
           "  --nonfinite-skip N  skip up to N steps in a row with a NaN/inf loss or gradient, then stop\n"
           "                    (0: stop at the first)\n"
           "  --resume PATH     continue from a checkpoint (the same model keys; any layout: EP, DP, PP, GPU)\n"
           "  --ep N            expert-parallel ranks (under `mpirun -np P`: P / pp DP ranks, a multiple of N)\n"
           "  --pp N            pipeline ranks (P = pp x dp processes); the layers are split by cost\n"
           "  --schedule S      1f1b | dualpipe (even pp, chunks even >= 2 pp) | dualpipev (chunks >= 2 pp)\n"
           "  --chunks C        micro-batches per step (0: --grad-accum)\n"
           "  --trace FILE      Chrome trace of the last step's pipeline ops (moelab schedule --from-trace)\n"
           "  --device D        cpu | cuda (bf16 compute, fp32 master weights) | cuda-fp32; under mpirun\n"
           "                    one rank per GPU (EP, DP and pipelines over NCCL)\n\n"
           "Ctrl-C, SIGTERM or SIGHUP stop a run after the step under way, with that step's checkpoint\n"
           "where --out is set (exit 128 + the signal; a second signal ends it at once). Under mpirun,\n"
           "send SIGUSR1 to mpirun, which forwards it to every rank (mpirun turns its own Ctrl-C or\n"
           "SIGTERM into SIGTERM and SIGKILL one second apart, too soon for most saves).\n\n");
    config_print_help(stdout);
}

// 1 when path names a file a save into the folder `out` writes: DIR/step_<n>.h5, its parts and its
// temporaries, with DIR the same folder as out.
static int is_checkpoint_name(const char *path, const char *out) {
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    long step;
    int end = 0;
    if (sscanf(base, "step_%ld.h5%n", &step, &end) != 1 || end == 0 || (base[end] != '\0' && base[end] != '.'))
        return 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%.*s", slash ? (slash == path ? 1 : (int)(slash - path)) : 1, slash ? path : ".");
    return core_same_file(dir, out);
}

// The run's outputs opened for writing at start-up (--metrics, --trace) must not be one of its
// inputs or each other: opening truncates, so a metrics file given the path of the checkpoint to
// resume from destroys it, and a trace on a token shard truncates the shard the loader has mapped
// (the run then dies of SIGBUS), and one given any checkpoint, token shard or tokenizer destroys
// that. Checked on every rank before anything is opened.
static void check_outputs(const MoeConfig *c, int argc, char **argv) {
    const char *const out_flag[2] = {"--metrics", "--trace"}, *const out[2] = {c->metrics, c->trace};
    for (int o = 0; o < 2; o++) {
        if (!out[o][0]) continue;
        if (o == 1 && core_same_file(out[0], out[1]))
            core_usage_error("--metrics and --trace are the same file, %s: give each its own", out[1]);
        if (c->resume[0] && core_same_file(out[o], c->resume))
            core_usage_error("%s %s is the checkpoint to resume from (--resume): writing it would destroy it",
                             out_flag[o], out[o]);
        if (c->out[0] && is_checkpoint_name(out[o], c->out))
            core_usage_error("%s %s is a checkpoint name in --out %s: the run's saves would replace it", out_flag[o],
                             out[o], c->out);
        for (int f = 0; f < PREPARE_N_FILES && c->data[0]; f++) {
            char path[2 * CONFIG_STR + 16];
            snprintf(path, sizeof path, "%s/%s", c->data, prepare_file_names[f]);
            if (core_same_file(out[o], path))
                core_usage_error("%s %s is the run's data file %s: writing it would destroy it", out_flag[o],
                                 out[o], path);
        }
        for (int i = 1; i < argc; i++) {
            const size_t n = cmd_flag_len(argv[i]);
            if (!cmd_flag_is(argv[i], n, "--config")) continue;
            const char *v = cmd_flag_value(argc, argv, &i);
            if (v && core_same_file(out[o], v))
                core_usage_error("%s %s is the run's --config file: writing it would destroy it", out_flag[o], out[o]);
        }
        // Any other checkpoint, token shard or tokenizer (the run's own are named above).
        const char *kind = core_data_file_kind(out[o]);
        if (kind) core_usage_error("%s %s is %s: writing it would destroy it", out_flag[o], out[o], kind);
    }
}

int cmd_train(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            train_help();
            return 0;
        }
    // Under mpirun every rank starts MPI first, so that any error below ends every rank.
    comm_init(&argc, &argv);
    MoeConfig c;
    config_defaults(&c);
    int rest = config_apply_args(&c, argc - 1, argv + 1);
    if (rest > 0) core_usage_error("train: unknown option '%s' (see `moelab train --help`)", argv[1]);
    config_validate(&c);
    check_outputs(&c, argc, argv);
    comm_set_timeout(c.comm_timeout);
    Trainer *t = trainer_create(&c);
    int rc = trainer_run(t);
    trainer_free(t);
    comm_finalize();
    return rc;
}
