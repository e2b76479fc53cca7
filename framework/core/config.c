// Config parsing: one table lists every key with its default, type, place in MoeConfig, bounds and
// help; the defaults, the file reader, the command-line reader, the writer and --help all walk it.
#include "framework/core/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/json.h"
#include "framework/core/num.h"

typedef enum { K_INT, K_U64, K_FLOAT, K_BOOL, K_STR } KeyType;

typedef struct {
    const char *name;
    const char *def;     // the default, as a config file would write it
    KeyType type;
    size_t offset;
    double lo, hi;      // bounds for numbers (inclusive)
    const char *choices; // for K_STR: "a|b|c", or NULL for free text
    const char *help;
} KeyInfo;

#define OFF(f) offsetof(MoeConfig, f)
static const KeyInfo KEYS[] = {
    {"vocab_size", "256", K_INT, OFF(V), 2, 1 << 24, NULL, "vocabulary size V"},
    {"d_model", "64", K_INT, OFF(D), 1, 1 << 16, NULL, "model width D"},
    {"n_layers", "2", K_INT, OFF(L), 1, 1024, NULL, "number of layers L"},
    {"n_heads", "4", K_INT, OFF(H), 1, 1024, NULL, "query heads H"},
    {"n_kv_heads", "2", K_INT, OFF(Hkv), 1, 1024, NULL, "key/value heads Hkv (H % Hkv == 0)"},
    {"seq_len", "64", K_INT, OFF(T), 1, 1 << 20, NULL, "sequence length T"},
    {"n_dense_layers", "1", K_INT, OFF(n_dense_layers), 0, 1024, NULL, "leading layers with a dense FFN"},
    {"d_ff", "192", K_INT, OFF(F), 1, 1 << 20, NULL, "dense SwiGLU width F"},
    {"n_experts", "8", K_INT, OFF(E), 1, 1 << 16, NULL, "routed experts E"},
    {"top_k", "2", K_INT, OFF(K), 1, 1 << 16, NULL, "experts per token K"},
    {"n_shared", "1", K_INT, OFF(S), 0, 1024, NULL, "shared experts S"},
    {"d_expert", "64", K_INT, OFF(Fe), 1, 1 << 20, NULL, "expert SwiGLU width Fe"},
    {"score", "sigmoid", K_STR, OFF(score), 0, 0, "sigmoid|softmax", "router score function"},
    {"route_scale", "1", K_FLOAT, OFF(route_scale), 0, 1e6, NULL, "gate multiplier"},
    {"norm_topk", "1", K_BOOL, OFF(norm_topk), 0, 1, NULL, "normalize the K chosen scores to sum 1"},
    {"bias_rate", "1e-3", K_FLOAT, OFF(bias_rate), 0, 1e3, NULL, "aux-loss-free bias update rate gamma"},
    {"balance_alpha", "1e-4", K_FLOAT, OFF(balance_alpha), 0, 1e3, NULL, "sequence balance loss weight alpha"},
    {"rope_theta", "10000", K_FLOAT, OFF(rope_theta), 1, 1e12, NULL, "RoPE base theta"},
    {"norm_eps", "1e-5", K_FLOAT, OFF(norm_eps), 1e-30, 1, NULL, "RMSNorm epsilon (positive)"},
    {"tie_embeddings", "0", K_BOOL, OFF(tie_embeddings), 0, 1, NULL, "LM head shares the embedding"},
    {"seed", "1337", K_U64, OFF(seed), 0, 0, NULL, "random seed (weights, data order, sampling)"},
    {"steps", "100", K_INT, OFF(steps), 0, INT_MAX, NULL, "optimizer steps"},
    {"batch_size", "8", K_INT, OFF(batch_size), 1, 1 << 20, NULL, "sequences per micro-batch B"},
    // Micro-batches per step: at most 8192, what the pipeline's message tags number
    // (parallel/pipeline.c; a plain run is a one-stage pipeline too).
    {"grad_accum", "1", K_INT, OFF(grad_accum), 1, 8192, NULL, "micro-batches per step and rank"},
    {"lr", "3e-3", K_FLOAT, OFF(lr), 0, 10, NULL, "peak learning rate"},
    {"min_lr", "3e-4", K_FLOAT, OFF(min_lr), 0, 10, NULL, "final learning rate of the cosine decay"},
    {"warmup_steps", "10", K_INT, OFF(warmup_steps), 0, INT_MAX, NULL, "linear warm-up steps"},
    {"weight_decay", "0.1", K_FLOAT, OFF(weight_decay), 0, 10, NULL, "AdamW decay (matrices only)"},
    {"grad_clip", "1", K_FLOAT, OFF(grad_clip), 0, 1e9, NULL, "global gradient-norm clip (0: off)"},
    {"beta1", "0.9", K_FLOAT, OFF(beta1), 0, 1, NULL, "AdamW beta1, below 1"},
    {"beta2", "0.95", K_FLOAT, OFF(beta2), 0, 1, NULL, "AdamW beta2, below 1"},
    // 0 would divide 0 by 0 for every weight whose gradient is still 0 (an embedding row of a token
    // not yet seen): NaN weights after the first step.
    {"adam_eps", "1e-8", K_FLOAT, OFF(adam_eps), 1e-30, 1, NULL, "AdamW epsilon (positive)"},
    {"nonfinite_skip", "0", K_INT, OFF(nonfinite_skip), 0, INT_MAX, NULL,
     "non-finite steps (loss or grad norm) skipped in a row before the run stops (0: stop at once)"},
    {"log_every", "10", K_INT, OFF(log_every), 1, INT_MAX, NULL, "steps between log lines"},
    {"val_every", "50", K_INT, OFF(val_every), 0, INT_MAX, NULL, "steps between validations (0: before the first step and at the end only)"},
    {"val_batches", "4", K_INT, OFF(val_batches), 1, INT_MAX, NULL, "micro-batches per validation"},
    {"sample_tokens", "0", K_INT, OFF(sample_tokens), 0, 1 << 14, NULL, "tokens sampled before and after training"},
    {"temperature", "0.8", K_FLOAT, OFF(temperature), 0, 100, NULL, "sampling temperature (0: greedy)"},
    {"top_k_sample", "40", K_INT, OFF(top_k_sample), 0, 1 << 24, NULL, "sample among the k most likely (0: all)"},
    {"threads", "0", K_INT, OFF(threads), 0, 4096, NULL, "OpenMP threads (0: OpenMP's default; under mpirun each rank's share of its host's cores)"},
    {"ep", "1", K_INT, OFF(ep), 1, 1 << 16, NULL, "expert-parallel ranks"},
    {"pp", "1", K_INT, OFF(pp), 1, 1 << 16, NULL, "pipeline stages (ranks)"},
    {"chunks", "0", K_INT, OFF(chunks), 0, 8192, NULL, "pipeline micro-batches per step (0: grad_accum)"},
    {"schedule", "1f1b", K_STR, OFF(schedule), 0, 0, "1f1b|dualpipe|dualpipev", "pipeline schedule"},
    {"fb_overlap", "0", K_BOOL, OFF(fb_overlap), 0, 1, NULL, "F&B ops: forward and backward on two GPU streams"},
    {"zero", "0", K_INT, OFF(zero), 0, 1, NULL, "ZeRO stage: 1 shards the AdamW moments and fp32 master weights over the DP ranks (0: off)"},
    // The eight below choose how the work runs, not what it computes (beyond the rounding of the
    // GEMM kernels, and deterministic = 0, whose attention backward sums dQ in a varying order):
    // overlaps on by default, off to measure their gain.
    {"dp_overlap", "1", K_BOOL, OFF(dp_overlap), 0, 1, NULL, "DP gradient all-reduce overlaps the backward"},
    {"ep_overlap", "1", K_BOOL, OFF(ep_overlap), 0, 1, NULL, "shared experts overlap the EP dispatch all-to-all"},
    {"ep_chunks", "1", K_INT, OFF(ep_chunks), 1, 8, NULL,
     "token chunks per EP MoE layer: one chunk's combine overlaps the next one's experts (1 to 8, at most batch_size*seq_len)"},
    {"expert_gemm", "cutlass", K_STR, OFF(expert_gemm), 0, 0, "cutlass|grouped|streams|loop",
     "GPU expert GEMMs: CUTLASS (sm90 bf16, else grouped), cuBLAS grouped, per-expert streams, loop"},
    {"gemm_streams", "4", K_INT, OFF(gemm_streams), 1, 8, NULL, "side streams of expert_gemm = streams"},
    {"cuda_graph", "1", K_BOOL, OFF(cuda_graph), 0, 1, NULL,
     "one GPU: the step's forward and backward as one CUDA graph, captured at the second step"},
    {"deterministic", "1", K_BOOL, OFF(deterministic), 0, 1, NULL,
     "reruns bit-identical (0: on GPUs cuDNN's faster attention backward, whose dQ varies run to run)"},
    {"recompute", "0", K_BOOL, OFF(recompute), 0, 1, NULL,
     "keep each layer's input only and recompute its forward in the backward (less memory)"},
    {"recompute_layers", "0", K_INT, OFF(recompute_layers), 0, 1 << 16, NULL,
     "with recompute: only the first N layers of each pipeline stage recompute (0: all)"},
    {"recompute_keep_attention", "0", K_BOOL, OFF(recompute_keep_attention), 0, 1, NULL,
     "with recompute: those layers keep the attention's output as well; the backward skips the attention and Wo"},
    {"eplb_interval", "0", K_INT, OFF(eplb_interval), 0, INT_MAX, NULL, "steps between EPLB rebalances (0: off)"},
    {"eplb_redundant", "0", K_INT, OFF(eplb_redundant), 0, 1 << 16, NULL, "redundant expert slots per layer"},
    {"eplb_groups", "1", K_INT, OFF(eplb_groups), 1, 1 << 16, NULL, "EPLB expert groups (hierarchical policy when nodes divide them)"},
    {"eplb_nodes", "1", K_INT, OFF(eplb_nodes), 1, 1 << 16, NULL, "EPLB nodes the EP ranks form, in rank order"},
    {"router_skew", "0", K_FLOAT, OFF(router_skew), -1e3, 1e3, NULL,
     "test knob: expert i's balancing bias starts at skew*(E-1-i)/E"},
    {"comm_timeout", "300", K_FLOAT, OFF(comm_timeout), 0.001, 1e6, NULL, "seconds a collective may wait before the job ends"},
    {"device", "cpu", K_STR, OFF(device), 0, 0, "cpu|cuda|cuda-fp32", "compute device"},
    {"data", "", K_STR, OFF(data), 0, 0, NULL, "data directory of moelab data prepare"},
    {"metrics", "", K_STR, OFF(metrics), 0, 0, NULL,
     "JSON Lines metrics file: written anew, or by a resumed run after its checkpoint's lines in it"},
    {"out", "", K_STR, OFF(out), 0, 0, NULL, "checkpoint directory"},
    {"resume", "", K_STR, OFF(resume), 0, 0, NULL, "checkpoint to resume from"},
    {"trace", "", K_STR, OFF(trace), 0, 0, NULL, "Chrome trace output file"},
    {"save_every", "0", K_INT, OFF(save_every), 0, INT_MAX, NULL, "steps between checkpoints (0: end only)"},
    {"keep", "0", K_INT, OFF(keep), 0, INT_MAX, NULL, "checkpoints of the run's lineage kept (0: all)"},
};
#define NKEYS ((int)(sizeof(KEYS) / sizeof(KEYS[0])))

void config_defaults(MoeConfig *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < NKEYS; i++) config_set(c, KEYS[i].name, KEYS[i].def, "config defaults");
}

// "eplb-interval" and "eplb_interval" name the same key.
static int same_key(const char *a, const char *b) {
    for (; *a && *b; a++, b++) {
        char x = *a == '-' ? '_' : *a, y = *b == '-' ? '_' : *b;
        if (x != y) return 0;
    }
    return *a == *b;
}

static const KeyInfo *find_key(const char *name) {
    for (int i = 0; i < NKEYS; i++)
        if (same_key(KEYS[i].name, name)) return &KEYS[i];
    return NULL;
}

// Keys that did something once, and what does it now.
static const struct {
    const char *name, *instead;
} RETIRED[] = {
    {"val_fraction", "the validation split is made once, by `moelab data prepare --val-fraction F`"},
};

static int retired_index(const char *name) {
    for (int i = 0; i < (int)(sizeof RETIRED / sizeof RETIRED[0]); i++)
        if (same_key(RETIRED[i].name, name)) return i;
    return -1;
}

int config_is_retired(const char *name) {
    while (*name == '-') name++;
    return retired_index(name) >= 0;
}

int config_names_key(const char *name, const char *key) {
    while (*name == '-') name++;
    return same_key(name, key);
}

int config_is_key(const char *name) {
    while (*name == '-') name++;
    return find_key(name) != NULL || same_key(name, "config");
}

static const char *expected_form(const KeyInfo *k, char *buf, size_t n) {
    switch (k->type) {
    case K_INT: snprintf(buf, n, "an integer in [%.0f, %.0f]", k->lo, k->hi); break;
    case K_U64: snprintf(buf, n, "a non-negative integer"); break;
    case K_FLOAT: snprintf(buf, n, "a number in [%g, %g]", k->lo, k->hi); break;
    case K_BOOL: snprintf(buf, n, "true|false|1|0"); break;
    case K_STR: snprintf(buf, n, "%s", k->choices ? k->choices : "a string"); break;
    }
    return buf;
}

static int in_choices(const char *choices, const char *v) {
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

// Ends a bad value with one message: text that is no number (or no choice: NUM_SYNTAX) gets the
// key's whole expected form; a number past a bound gets the parser's "too large: at most HI" (it is
// a number).
static void check_value(const KeyInfo *k, const char *value, const char *origin, NumStatus st,
                         const char *err) {
    char form[128];
    if (st == NUM_SYNTAX)
        core_usage_error("%s: %s = '%s' is not valid: expected %s", origin, k->name, value,
                         expected_form(k, form, sizeof form));
    if (st != NUM_OK) core_usage_error("%s: %s", origin, err);
}

void config_set(MoeConfig *c, const char *key, const char *value, const char *origin) {
    const KeyInfo *k = find_key(key);
    const int r = retired_index(key);
    if (r >= 0)
        core_usage_error("%s: config key '%s' no longer exists: %s (remove it)", origin, RETIRED[r].name,
                         RETIRED[r].instead);
    if (!k) core_usage_error("%s: unknown config key '%s' (see `moelab train --help`)", origin, key);
    char name[128], err[NUM_ERR_LEN];
    snprintf(name, sizeof name, "%s =", k->name);
    char *base = (char *)c + k->offset;
    switch (k->type) {
    case K_INT: {
        long long v;
        check_value(k, value, origin, num_parse_int(name, value, (long long)k->lo, (long long)k->hi, &v, err), err);
        *(int *)base = (int)v;
        break;
    }
    case K_U64: {
        unsigned long long v;
        check_value(k, value, origin, num_parse_u64(name, value, UINT64_MAX, &v, err), err);
        *(uint64_t *)base = (uint64_t)v;
        break;
    }
    case K_FLOAT: {
        double v;
        check_value(k, value, origin, num_parse_real(name, value, k->lo, k->hi, &v, err), err);
        *(float *)base = (float)v;
        break;
    }
    case K_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1")) *(int *)base = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0")) *(int *)base = 0;
        else check_value(k, value, origin, NUM_SYNTAX, NULL);
        break;
    case K_STR:
        if (strlen(value) >= CONFIG_STR)
            core_usage_error("%s: %s is longer than %d characters", origin, k->name, CONFIG_STR - 1);
        // A checkpoint stores its config as `key = value` lines that --config reads back: a value
        // with a line break, a '#' (a comment there) or blanks at its ends would come back as
        // another value, or not at all (review, 2026-12-05: `--metrics $'m\nx'` made a checkpoint
        // every reader refused).
        for (const char *v = value; *v; v++) {
            if ((unsigned char)*v < 32 || *v == 127)
                core_usage_error("%s: %s holds a control character (byte 0x%02x at position %d), which a value "
                                 "cannot hold (stored configs are `key = value` lines)", origin, k->name,
                                 (unsigned char)*v, (int)(v - value) + 1);
            if (*v == '#' && (v == value || v[-1] == ' '))
                core_usage_error("%s: %s = '%s': a value cannot hold '#' at its start or after a blank (stored "
                                 "configs are `key = value` lines, where such a '#' starts a comment)", origin,
                                 k->name, value);
        }
        if (value[0] == ' ' || (value[0] && value[strlen(value) - 1] == ' '))
            core_usage_error("%s: %s = '%s' begins or ends with a blank, which a config file drops", origin,
                             k->name, value);
        if (k->choices && !in_choices(k->choices, value)) check_value(k, value, origin, NUM_SYNTAX, NULL);
        strcpy(base, value);
        break;
    }
}

// The bytes a key of type t takes in MoeConfig.
static size_t key_size(KeyType t) {
    switch (t) {
    case K_INT: case K_BOOL: return sizeof(int);
    case K_U64: return sizeof(uint64_t);
    case K_FLOAT: return sizeof(float);
    case K_STR: return CONFIG_STR;
    }
    return 0;
}

void config_reset_key(MoeConfig *c, const char *key) {
    const KeyInfo *k = find_key(key);
    CHECK(k, "config_reset_key: no key '%s'", key);
    MoeConfig d;
    config_defaults(&d);
    memcpy((char *)c + k->offset, (const char *)&d + k->offset, key_size(k->type));
}

// s without the white space around it: the leading skipped, the trailing cut off in place (the key
// and the value of a `key = value` line).
static char *config_trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

// One line of f into line, NUL-terminated with its newline kept, and its length in bytes (NULs
// included), or -1 at the end of the file. A line of cap bytes or more keeps its first cap - 1 and
// returns its whole length: the caller reports it as too long.
static long read_line(FILE *f, char *line, size_t cap) {
    size_t n = 0;
    int ch = EOF;
    while ((ch = getc(f)) != EOF) {
        if (n + 1 < cap) line[n] = (char)ch;
        n++;
        if (ch == '\n') break;
    }
    if (n == 0) return -1;
    line[n < cap ? n : cap - 1] = '\0';
    return (long)n;
}

// The lines of a config file, or (stored = 1) of a checkpoint's stored config, whose messages say
// "NAME line N" and whose retired keys are skipped: an older moelab saved them, and nothing reads
// them now. The checkpoint's config had a reader of its own, which took a key set twice (sweep,
// 2026-12-05).
static void load_lines(MoeConfig *c, FILE *f, const char *name, int stored) {
    // The line each key was set on (0: not yet): a key set twice in one file is a mistake (which
    // line was meant?), unlike a command-line --key, which overrides the file on purpose.
    int set_on[NKEYS] = {0};
    char line[CONFIG_STR + 128], origin[1200];
    long n;
    for (int lineno = 1; (n = read_line(f, line, sizeof line)) >= 0; lineno++) {
        snprintf(origin, sizeof origin, stored ? "%s line %d" : "%s:%d", name, lineno);
        if (n >= (long)sizeof line) core_usage_error("%s: line too long (at most %zu bytes)", origin, sizeof line - 1);
        // A config is text: a NUL would end the line early unseen (a binary file read as empty
        // lines trained on the defaults), and other control bytes hide inside the values the
        // messages quote. A carriage return ends a line only before its newline: a file of bare CRs
        // (old Mac line ends) was one line, all comment after a first '#' (fuzzing, 2026-12-05).
        for (long i = 0; i < n; i++) {
            const unsigned char b = (unsigned char)line[i];
            const int line_end = b == '\n' || (b == '\r' && (i + 1 == n || line[i + 1] == '\n'));
            if (b < 32 && b != '\t' && !line_end)
                core_usage_error("%s: byte 0x%02x at column %ld: not a text config file (key = value lines)",
                                 origin, b, i + 1);
        }
        // Editors on Windows begin a UTF-8 file with a byte order mark, which is no part of a key.
        const size_t bom = lineno == 1 ? core_bom_len(line, strlen(line)) : 0;
        if (bom) memmove(line, line + bom, strlen(line + bom) + 1);
        // A comment starts at a '#' at the start of the line or after a blank; one glued to other
        // characters is part of the value (`out = /tmp/run#2`, a folder of that name).
        char *hash = line;
        while ((hash = strchr(hash, '#')) && hash > line && hash[-1] != ' ' && hash[-1] != '\t') hash++;
        if (hash) *hash = '\0';
        char *s = config_trim(line);
        if (*s == '\0') continue;
        char *eq = strchr(s, '=');
        if (!eq) core_usage_error("%s: expected 'key = value', got '%s'", origin, s);
        *eq = '\0';
        char *key = config_trim(s), *value = config_trim(eq + 1);
        if (*key == '\0') core_usage_error("%s: missing key before '='", origin);
        if (stored && retired_index(key) >= 0) continue;
        const KeyInfo *k = find_key(key);
        if (k && set_on[k - KEYS])
            core_usage_error("%s: %s is set twice, on lines %d and %d (keep one)", origin, k->name,
                             set_on[k - KEYS], lineno);
        if (k) set_on[k - KEYS] = lineno;
        config_set(c, key, value, origin);
    }
    // read_line also returns -1 on a read error: not the end of a file.
    if (ferror(f)) core_failure_error("cannot read config file '%s': %s", name, strerror(errno));
}

void config_load_stream(MoeConfig *c, FILE *f, const char *name) { load_lines(c, f, name, 0); }

void config_load_stored(MoeConfig *c, const char *text, const char *name) {
    if (!*text) return;  // (fmemopen of no bytes may fail)
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    if (!f) core_failure_error("%s: cannot read it: %s", name, strerror(errno));
    load_lines(c, f, name, 1);
    fclose(f);
}

void config_load_file(MoeConfig *c, const char *path) {
    // Only a regular file: a FIFO would block the open until a writer comes (for ever if none
    // does), and a directory opens but fails at its first read.
    const char *why;
    FILE *f = core_open_regular(path, &why);
    if (!f) core_path_error(errno, "cannot open config file '%s': %s", path, why);
    config_load_stream(c, f, path);
    fclose(f);
}

int config_apply_args(MoeConfig *c, int argc, char **argv) {
    // --config first, so that explicit --key overrides win over the file wherever they appear. It
    // takes "--config=FILE" too, like every other flag (that form was an unknown option to train).
    for (int i = 0; i < argc; i++) {
        const char *file = strncmp(argv[i], "--config=", 9) == 0 ? argv[i] + 9 : NULL;
        if (strcmp(argv[i], "--config") == 0)
            file = i + 1 < argc && strncmp(argv[i + 1], "--", 2) ? argv[i + 1] : "";
        if (file && !*file) core_usage_error("--config needs a file name");
        if (file) config_load_file(c, file);
    }
    int kept = 0, flag_chunks = 0, flag_accum = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--config") == 0) { i++; continue; }
        if (strncmp(a, "--config=", 9) == 0) continue;
        // --key value or --key=value, for a key of the table (or a retired one: config_set says so);
        // anything else is the command's own.
        if (strncmp(a, "--", 2) == 0) {
            const char *eq = strchr(a, '=');
            char key[128];
            size_t n = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
            if (n >= sizeof key) n = sizeof key - 1;
            memcpy(key, a + 2, n);
            key[n] = '\0';
            if (find_key(key) || retired_index(key) >= 0) {
                // A next argument that starts with "--" is the next flag (as in tools/commands.h's
                // cmd_flag_value): `--metrics --out` wrote the metrics to a file named "--out".
                if (!eq && (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2)))
                    core_usage_error("command line: %s needs a value", a);
                config_set(c, key, eq ? eq + 1 : argv[++i], "command line");
                flag_chunks |= config_names_key(key, "chunks");
                flag_accum |= config_names_key(key, "grad_accum");
                continue;
            }
        }
        argv[kept++] = argv[i];
    }
    // chunks and grad_accum both count a step's micro-batches (a pipeline's name and a plain run's):
    // a flag for one outranks a file's value of either, as a flag outranks a file (a checkpoint's
    // stored config holds both, resolved, and `--config stored.cfg --chunks 2` was refused as
    // setting both: review, 2026-12-06). Both as flags must agree (`--chunks 4 --grad-accum 1` was
    // taken as 4).
    if (flag_chunks && flag_accum && c->chunks > 0 && c->grad_accum != c->chunks)
        core_usage_error("--chunks %d and --grad-accum %d both set the micro-batches per step: pass one", c->chunks,
                         c->grad_accum);
    if (flag_chunks && !flag_accum && c->chunks > 0) config_reset_key(c, "grad_accum");
    if (flag_accum && !flag_chunks) config_reset_key(c, "chunks");
    return kept;
}

// One broken rule: "what: the rule's message", exit 2.
static CORE_NORETURN void rule_broken(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rule_broken(const char *what, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    core_usage_error("%s: %s", what, msg);
}

void config_validate(const MoeConfig *c) { config_validate_as(c, "config"); }

void config_validate_as(const MoeConfig *c, const char *what) {
#define RULE(cond, ...) do { if (!(cond)) rule_broken(what, __VA_ARGS__); } while (0)
    RULE(c->D % c->H == 0, "d_model (%d) must be divisible by n_heads (%d)", c->D, c->H);
    RULE((c->D / c->H) % 2 == 0, "head size d_model/n_heads (%d) must be even for RoPE", c->D / c->H);
    RULE(c->H % c->Hkv == 0, "n_heads (%d) must be divisible by n_kv_heads (%d)", c->H, c->Hkv);
    RULE(c->K <= c->E, "top_k (%d) must not exceed n_experts (%d)", c->K, c->E);
    RULE(c->n_dense_layers <= c->L, "n_dense_layers (%d) must not exceed n_layers (%d)",
         c->n_dense_layers, c->L);
    RULE(c->min_lr <= c->lr, "min_lr (%g) must not exceed lr (%g)", c->min_lr, c->lr);
    // AdamW's bias correction divides by 1 - beta^t: beta = 1 makes the second step NaN.
    RULE(c->beta1 < 1, "beta1 must be below 1 (AdamW divides by 1 - beta1^t); values within 3e-8 of 1 are 1 as a 32-bit float");
    RULE(c->beta2 < 1, "beta2 must be below 1 (AdamW divides by 1 - beta2^t); values within 3e-8 of 1 are 1 as a 32-bit float");
    RULE(c->E % c->ep == 0, "n_experts (%d) must be divisible by ep (%d)", c->E, c->ep);
    RULE(c->recompute || c->recompute_layers == 0, "recompute_layers (%d) needs recompute = 1",
         c->recompute_layers);
    RULE(c->recompute || !c->recompute_keep_attention, "recompute_keep_attention needs recompute = 1");
    // The tokens of a micro-batch are counted in an int (B·T = N, the shapes' leading extent).
    RULE((long)c->batch_size * c->T <= INT_MAX, "batch_size * seq_len (%ld) must not exceed %d tokens a micro-batch",
         (long)c->batch_size * c->T, INT_MAX);
    RULE((long)c->ep_chunks <= (long)c->batch_size * c->T,
         "ep_chunks (%d) must not exceed the tokens of a micro-batch, batch_size * seq_len (%ld)",
         c->ep_chunks, (long)c->batch_size * c->T);
#undef RULE
}

// The value of key k at base (within a MoeConfig) as text in buf: as a config file spells it, or
// with help as --help shows a default (a float to 6 digits, an empty string as "").
static const char *format_value(const KeyInfo *k, const char *base, int help, char *buf, size_t n) {
    switch (k->type) {
    case K_INT: snprintf(buf, n, "%d", *(const int *)base); break;
    case K_U64: snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)base); break;
    case K_FLOAT: snprintf(buf, n, help ? "%g" : "%.9g", (double)*(const float *)base); break;
    case K_BOOL: snprintf(buf, n, "%s", *(const int *)base ? "true" : "false"); break;
    case K_STR: snprintf(buf, n, "%s", help && !*base ? "\"\"" : base); break;
    }
    return buf;
}

// Every key of c: "key = value" lines, or with json one JSON object {"key": value, ...} in which a
// string is a JSON string literal (numbers and true/false are the same in both; a validated config
// holds no NaN or infinity).
static void write_keys(const MoeConfig *c, int json, FILE *f) {
    char buf[CONFIG_STR + 8];
    if (json) fputc('{', f);
    for (int i = 0; i < NKEYS; i++) {
        const KeyInfo *k = &KEYS[i];
        const char *base = (const char *)c + k->offset;
        if (json) fprintf(f, "%s\"%s\": ", i ? ", " : "", k->name);
        else fprintf(f, "%s = ", k->name);
        if (json && k->type == K_STR) json_write_string(f, base, strlen(base));
        else fputs(format_value(k, base, 0, buf, sizeof buf), f);
        if (!json) fputc('\n', f);
    }
    if (json) fputc('}', f);
}

void config_write(const MoeConfig *c, FILE *f) { write_keys(c, 0, f); }
void config_write_json(const MoeConfig *c, FILE *f) { write_keys(c, 1, f); }

void config_print_help(FILE *f) {
    MoeConfig d;
    config_defaults(&d);
    fprintf(f, "Config keys (in a --config file as `key = value`, or on the command line as --key value):\n");
    char def[CONFIG_STR + 8];
    int w = 0;  // the longest key's width: the defaults form a column
    for (int i = 0; i < NKEYS; i++) w = (int)strlen(KEYS[i].name) > w ? (int)strlen(KEYS[i].name) : w;
    for (int i = 0; i < NKEYS; i++)
        fprintf(f, "  --%-*s %-12s %s\n", w, KEYS[i].name,
                format_value(&KEYS[i], (const char *)&d + KEYS[i].offset, 1, def, sizeof def), KEYS[i].help);
    fprintf(f, "Text values (paths) hold at most %d bytes, no control character, no blank at either end\n"
               "and no '#' at their start or after a blank (in a file that '#' starts a comment).\n",
            CONFIG_STR - 1);
}
