// `moelab data`: dataset tooling. `moelab data prepare` turns text files into a BPE tokenizer and
// train/validation token shards (data/prepare.h does the work; this file only parses flags).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/prepare.h"
#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/num.h"
#include "tools/commands.h"

static const char USAGE[] =
    "usage: moelab data <subcommand> [options]\n"
    "\n"
    "subcommands:\n"
    "  prepare    train a byte-level BPE tokenizer on text files and write token shards\n"
    "\n"
    "`moelab data prepare --help` describes its options.\n";

static const char USAGE_PREPARE[] =
    "usage: moelab data prepare --input PATH... --vocab N --out DIR [--val-fraction F] [--seed S]\n"
    "                           [--text-field NAME] [--strict]\n"
    "\n"
    "Reads every file named by --input (directories are walked recursively, skipping hidden\n"
    "entries, the fortunes index files *.dat and *.u8, and moelab's own tokenizers, token shards\n"
    "and checkpoints), trains a byte-level BPE tokenizer of N tokens on the training text, and\n"
    "writes DIR/tokenizer.bin, DIR/train.bin and DIR/val.bin\n"
    "(all three or none: a run that fails leaves the old files as they were).\n"
    "A file is one document, except JSON Lines files (*.jsonl, and *.jsonl.gz compressed with\n"
    "gzip): there each line is a JSON object whose string member NAME is one document. Lines that\n"
    "give no document (empty, not JSON, not an object, no such member, not a string) are counted\n"
    "and the first few reported with their line numbers; --strict makes the first one an error.\n"
    "Files compressed with gzip (by their bytes, or named *.gz) are read through zlib, text and\n"
    "JSON Lines alike. The documents go into the shards in a seeded order of their paths' order.\n"
    "\n"
    "options:\n"
    "  --input PATH...     one or more files or directories (the flag may also repeat)\n"
    "  --vocab N           vocabulary size, 256 (raw bytes, no merges) to 1048576\n"
    "  --out DIR           output directory (created if missing)\n"
    "  --val-fraction F    last fraction of each file held out for validation, in (0, 1)\n"
    "                      (default 0.05)\n"
    "  --seed S            seed of the order of the documents in the shards (default 1337)\n"
    "  --text-field NAME   member of each JSON Lines object that holds the text (default text)\n"
    "  --strict            a JSON line without a document is an error (exit 2), not a warning\n"
    "\n"
    "Formats and loader semantics: docs/data.md.\n";

// One usage-error line naming the subcommand; returns exit code 2.
#define fail(...) core_usage_report("data prepare: " __VA_ARGS__)

static int is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h"); }

static int cmd_prepare(int argc, char **argv) {
    const char **inputs = calloc((size_t)argc, sizeof *inputs);  // at most argc - 1 paths
    int n_inputs = 0, rc = 0;
    const char *out = NULL, *vocab = NULL, *frac = NULL, *seed = NULL, *field = NULL;
    int strict = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            fputs(USAGE_PREPARE, stdout);
            free(inputs);
            return 0;
        }
        // "--flag value" and "--flag=value"; --input takes every following argument up to a flag.
        if (!strcmp(a, "--strict")) {
            strict = 1;
            continue;
        }
        const size_t nlen = cmd_flag_len(a);
        if (cmd_flag_is(a, nlen, "--input")) {
            const char *eq = strchr(a, '=');
            const int before = n_inputs;
            if (eq && eq[1]) inputs[n_inputs++] = eq + 1;  // `--input=` names no path
            while (!eq && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) inputs[n_inputs++] = argv[++i];
            if (n_inputs == before) rc = fail("--input needs at least one path");
            continue;
        }
        const char **slot = cmd_flag_is(a, nlen, "--vocab")          ? &vocab
                            : cmd_flag_is(a, nlen, "--out")          ? &out
                            : cmd_flag_is(a, nlen, "--val-fraction") ? &frac
                            : cmd_flag_is(a, nlen, "--seed")         ? &seed
                            : cmd_flag_is(a, nlen, "--text-field")   ? &field
                                                                     : NULL;
        const char *val = slot ? cmd_flag_value(argc, argv, &i) : NULL;
        if (!slot) rc = fail("unknown option '%s' (see moelab data prepare --help)", a);
        else if (!val) rc = fail("%s needs a value", a);
        else *slot = val;
    }
    if (rc == 0 && n_inputs == 0) rc = fail("missing --input PATH... (see moelab data prepare --help)");
    if (rc == 0 && !vocab) rc = fail("missing --vocab N (see moelab data prepare --help)");
    if (rc == 0 && (!out || !*out)) rc = fail("missing --out DIR (see moelab data prepare --help)");
    long long V = 0;
    double f = 0.05;
    unsigned long long S = 1337;
    char err[NUM_ERR_LEN];
    if (rc == 0 && num_parse_int("--vocab", vocab, 256, 1 << 20, &V, err)) rc = fail("%s", err);
    // Bounds of its own below: the parser's "at least 0" was wrong for a range open at 0.
    if (rc == 0 && frac && num_parse_real("--val-fraction", frac, -1e300, 1e300, &f, err))
        rc = fail("%s", err);
    // Some text must be left to train on.
    if (rc == 0 && f >= 1.0) rc = fail("--val-fraction %s is too large: must be below 1", frac);
    // And some to validate on: `moelab train` evaluates val.bin and refuses an empty one, so a
    // dataset without it could only be found unusable later (review, 2026-12-05).
    if (rc == 0 && f <= 0.0)
        rc = fail("--val-fraction %s is too small: must be above 0 (0 leaves val.bin empty, and `moelab "
                  "train` validates on it): give a small fraction, e.g. 0.01", frac);
    if (rc == 0 && seed && num_parse_u64("--seed", seed, UINT64_MAX, &S, err)) rc = fail("%s", err);
    if (rc == 0 && field && !*field) rc = fail("--text-field must not be empty");
    if (rc == 0) {
        PrepareStats st;
        const PrepareJsonl jsonl = {field, strict};
        rc = prepare_dataset(inputs, n_inputs, (int)V, out, f, S, &jsonl, &st);
    }
    free(inputs);
    return rc;
}

int cmd_data(int argc, char **argv) {
    if (argc < 2) return core_usage_report("data: expected the subcommand prepare (see moelab data --help)");
    if (is_help(argv[1])) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (!strcmp(argv[1], "prepare")) return cmd_prepare(argc - 1, argv + 1);
    return core_usage_report("data: unknown subcommand '%s' (see moelab data --help)", argv[1]);
}
