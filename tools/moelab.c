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

static int is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h"); }

// The arguments a command runs with: all of them, unless --help is among them. Then the help wins
// over whatever else the line holds, as in every command alike: the command and the words before
// the first option (a subcommand, a path), then --help, moved into place. `sample --tokens 0
// --help` was the option's error where `train --steps -1 --help` printed the help (review,
// 2026-12-06). A value that is "-h" or "--help" is given as --flag=-h.
static int help_words(int argc, char **argv) {
    int help = 0;
    for (int i = 1; i < argc; i++) help |= is_help(argv[i]);
    if (!help) return argc;
    int n = 1;
    while (n < argc && argv[n][0] != '-') n++;
    argv[n] = "--help";
    return n + 1;
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
    // `moelab help train` is `moelab train --help`; `moelab help help` is this help.
    const int help_of = !strcmp(argv[1], "help") && argc > 2 && !is_help(argv[2]) && strcmp(argv[2], "help");
    if (!help_of && (is_help(argv[1]) || !strcmp(argv[1], "help"))) {
        usage();
        return finish(0);
    }
    const char *name = argv[help_of ? 2 : 1];
    for (int i = 0; i < NCOMMANDS; i++) {
        if (strcmp(name, COMMANDS[i].name)) continue;
        if (help_of) return finish(COMMANDS[i].run(2, (char *[]){(char *)name, "--help", NULL}));
        return finish(COMMANDS[i].run(help_words(argc - 1, argv + 1), argv + 1));
    }
    return core_usage_report("unknown command '%s' (see moelab --help)", name);
}
