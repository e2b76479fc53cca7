// moelab: the command-line program. main() only picks the subcommand; each lives in its own cmd_*.c.
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/log.h"
#include "tools/commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} Command;

static const Command COMMANDS[] = {
    {"train", cmd_train, "train a model (CPU or GPU, one or many processes)"},
    {"data", cmd_data, "prepare a tokenizer and token shards from text"},
    {"sample", cmd_sample, "generate text from a checkpoint"},
    {"eplb", cmd_eplb, "plan expert placement from a load matrix (EPLB)"},
    {"plot", cmd_plot, "draw expert and rank load of a training run as SVG"},
    {"schedule", cmd_schedule, "print or draw a pipeline schedule"},
    {"bench", cmd_bench, "measure training throughput"},
    {"ckpt", cmd_ckpt, "inspect or verify a checkpoint, clean up after crashed saves"},
    {"export", cmd_export, "write a checkpoint as a Hugging Face model folder"},
};
#define NCOMMANDS ((int)(sizeof COMMANDS / sizeof COMMANDS[0]))

// The list of commands, for --help; a usage error is one line on stderr that points here instead.
static void usage(void) {
    printf("moelab: train small mixture-of-experts transformers\n\nusage: moelab <command> [options]\n\ncommands:\n");
    for (int i = 0; i < NCOMMANDS; i++) printf("  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].help);
    printf("\n`moelab <command> --help` describes each command.\n");
}

// A command's exit code, unless what it printed never reached stdout (a full disk, a closed
// pipe): then the output is lost, and exit 0 would say it is not.
static int finish(int rc) {
    const int err = core_stdout_status();
    if (!err) return rc;
    fprintf(stderr, "moelab: error: cannot write standard output: %s\n", strerror(err));
    return rc ? rc : 1;
}

int main(int argc, char **argv) {
    // A reader that closed its end (`| head`, a --metrics FIFO whose reader left) makes a write fail
    // with EPIPE, which the command reports (exit 1, temporaries removed), instead of ending the
    // process by SIGPIPE without a word and with its temporaries left.
    signal(SIGPIPE, SIG_IGN);
    // Likewise a file-size limit (ulimit -f): the write fails with EFBIG and is reported (exit 1,
    // temporaries removed) instead of SIGXFSZ ending the process with its temporaries left.
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) return core_usage_report("missing command (see moelab --help)");
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage();
        return finish(0);
    }
    for (int i = 0; i < NCOMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return finish(COMMANDS[i].run(argc - 1, argv + 1));
    return core_usage_report("unknown command '%s' (see moelab --help)", argv[1]);
}
