// `moelab eplb`: reads a load matrix (CSV, one row per MoE layer, one column per logical expert) and
// prints the EPLB plan of parallel/eplb.h as JSON. A thin front end: flags, CSV checks, JSON output.
// Bad input gives one message naming the row and column (1-based) or the broken rule, and exit code 2.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/num.h"
#include "parallel/eplb.h"
#include "tools/commands.h"

static const char USAGE[] =
    "usage: moelab eplb --load FILE --replicas R --groups Ng --nodes Nn --ranks G\n"
    "\n"
    "Plans expert replication and placement (docs/architecture.md §6) and prints it as JSON.\n"
    "  --load FILE    CSV of expert loads: one row per layer, E numbers in [0, 1e15] per row\n"
    "  --replicas R   physical expert slots per layer (R >= E, R % G == 0)\n"
    "  --groups Ng    expert groups, contiguous blocks kept on one node (E % Ng == 0)\n"
    "  --nodes Nn     nodes (G % Nn == 0); Ng % Nn == 0 selects the hierarchical policy,\n"
    "                 otherwise the global one\n"
    "  --ranks G      ranks (GPUs) in all, R/G slots each\n"
    "Each of R, Ng, Nn and G is 1 to 1048576, and the plan must fit in this machine's memory.\n"
    "Output: {\"policy\": ..., \"layers\": [{\"phy2log\", \"log2phy\", \"logcnt\",\n"
    "  \"rank_load_max_over_mean_before\", \"rank_load_max_over_mean_after\"}, ...]}\n"
    "(\"before\" is the identity placement, E/G experts per rank; null when G does not divide E).\n";

// One usage-error line naming the command; returns exit code 2.
#define fail(...) core_usage_report("eplb: " __VA_ARGS__)

// Bounds: a plan of more slots, groups, nodes or ranks than any cluster has is no plan; loads are
// token counts, at most NUM_MAX_LOAD.
enum { MAX_FLAG = 1 << 20 };

// Memory of the plan of L layers, E experts and R slots (eplb_plan_create): phy2log and phyrank (L,
// R), logcnt (L, E) and log2phy (L, E, R - E + 1), ints; the loads (L, E) as doubles.
static double plan_bytes(int L, int E, int R) {
    return (double)L * ((2.0 * R + E + (double)E * (R - E + 1)) * sizeof(int) + (double)E * sizeof(double));
}

// Reads the whole load file into *text (NUL-terminated, core_free it). Returns 0, or an exit code
// after printing the error: 2 for a path that is no regular file (a FIFO is refused without blocking
// in open, a directory has no length) or a file that holds a NUL byte, 1 for a read error.
static int read_text(const char *path, char **text) {
    const char *why;
    FILE *f = core_open_regular(path, &why);
    if (!f) return fail("cannot read load file '%s': %s", path, why);
    char *t;
    size_t n;
    const int err = core_read_all(f, SIZE_MAX, &t, &n);
    fclose(f);
    if (err) return core_failure_report("eplb: cannot read load file '%s': %s", path, core_read_error(err));
    // The rows are parsed as C strings: a NUL byte would end the file there, its rows unread.
    const int row = core_nul_line(t, n);
    if (row) {
        core_free(t);
        return fail("%s: row %d holds a NUL byte (a load file is text)", path, row);
    }
    *text = t;
    return 0;
}

// One CSV field: text between separators, surrounding blanks removed. Returns 0 and sets *v, or an
// exit code after printing an error that names the row and column.
static int parse_field(char *s, const char *path, int row, int col, double *v) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) *--e = '\0';
    if (*s == '\0') return fail("%s: row %d, column %d: empty value", path, row, col);
    // A stray carriage return (a line ending "\r\r\n", an old Mac file) quoted in the message below
    // moved the terminal's cursor back, so the value read as a good number.
    for (const char *c = s; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return fail("%s: row %d, column %d: control character 0x%02x in the value", path, row, col,
                        (unsigned char)*c);
    char name[64], err[NUM_ERR_LEN];
    snprintf(name, sizeof name, "row %d, column %d: load", row, col);
    if (num_parse_real(name, s, 0, NUM_MAX_LOAD, v, err)) return fail("%s: %s", path, err);
    return 0;
}

// Parses text (modified in place) into load (rows, cols), allocated here. Blank lines may only
// trail the data. Returns 0, or an exit code after printing the error.
static int parse_csv(char *text, const char *path, double **load, int *rows, int *cols) {
    // A UTF-8 byte order mark (spreadsheets write one) is not part of row 1's first value; the config
    // reader skips it too.
    text += core_bom_len(text, strlen(text));
    // Every value needs a separator or a line end after it, which bounds the value count.
    size_t cap = 1;
    for (const char *c = text; *c; c++) cap += (*c == ',' || *c == '\n');
    double *v = core_alloc(cap * sizeof(double));
    int L = 0, E = 0, blank_row = 0, rc = 0;
    size_t n = 0;
    char *line = text;
    for (int row = 1; line && rc == 0; row++) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r') line[len - 1] = '\0';
        if (line[strspn(line, " \t")] == '\0') {
            if (!blank_row) blank_row = row;
            line = next;
            continue;
        }
        if (blank_row) {
            rc = fail("%s: row %d is empty (blank lines may only end the file)", path, blank_row);
            break;
        }
        int col = 0;
        for (char *f = line; f && rc == 0; col++) {
            char *comma = strchr(f, ',');
            if (comma) *comma++ = '\0';
            rc = parse_field(f, path, row, col + 1, &v[n++]);
            f = comma;
        }
        if (rc) break;
        if (L == 0) E = col;
        else if (col != E)
            rc = fail("%s: row %d has %d values but row 1 has %d (every row needs one value per expert)",
                      path, row, col, E);
        L++;
        line = next;
    }
    if (rc == 0 && L == 0) rc = fail("%s: no rows of expert loads", path);
    if (rc) {
        core_free(v);
        return rc;
    }
    *load = v, *rows = L, *cols = E;
    return 0;
}

static void print_ints(const int *v, int n) {
    putchar('[');
    for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", v[i]);
    putchar(']');
}

// The shortest decimal that reads back as the same double, always with a '.' or exponent so that it
// reads as a real number (as Python's json writes it).
static void print_real(double x) {
    char buf[32];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, x);
        if (strtod(buf, NULL) == x) break;
    }
    fputs(buf, stdout);
    if (!strpbrk(buf, ".e")) fputs(".0", stdout);
}

static void print_plan(const EplbPlan *p, const double *load) {
    const EplbShape *s = &p->shape;
    int E = s->E, R = s->R, G = s->G, M = p->maxcnt;
    printf("{\"policy\": \"%s\", \"layers\": [", p->hierarchical ? "hierarchical" : "global");
    for (int l = 0; l < s->L; l++) {
        const double *ld = load + (size_t)l * E;     // (E)
        const int *phy2log = p->phy2log + (size_t)l * R;  // (R)
        const int *logcnt = p->logcnt + (size_t)l * E;    // (E)
        printf(l ? ", {\"phy2log\": " : "{\"phy2log\": ");
        print_ints(phy2log, R);
        printf(", \"log2phy\": [");
        for (int e = 0; e < E; e++) {
            if (e) printf(", ");
            print_ints(p->log2phy + ((size_t)l * E + e) * M, M);
        }
        printf("], \"logcnt\": ");
        print_ints(logcnt, E);
        printf(", \"rank_load_max_over_mean_before\": ");
        if (E % G == 0) print_real(eplb_rank_imbalance(ld, E, NULL, NULL, E, G));
        else printf("null");
        printf(", \"rank_load_max_over_mean_after\": ");
        print_real(eplb_rank_imbalance(ld, E, phy2log, logcnt, R, G));
        putchar('}');
    }
    printf("]}\n");
    core_stdout_flush();
}

int cmd_eplb(int argc, char **argv) {
    const char *path = NULL;
    int R = 0, Ng = 0, Nn = 0, G = 0;
    static const char *names[] = {"--replicas", "--groups", "--nodes", "--ranks"};
    int *ints[] = {&R, &Ng, &Nn, &G};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        // Both "--flag value" and "--flag=value".
        const size_t nlen = cmd_flag_len(a);
        int k = -1;
        for (int j = 0; j < 4; j++)
            if (cmd_flag_is(a, nlen, names[j])) k = j;
        if (k < 0 && !cmd_flag_is(a, nlen, "--load"))
            return fail("unknown option '%s' (see moelab eplb --help)", a);
        const char *val = cmd_flag_value(argc, argv, &i);
        if (!val) return fail("%.*s needs a value", (int)nlen, a);
        if (k < 0) {
            path = val;
        } else {
            char err[NUM_ERR_LEN];
            long long v;
            if (num_parse_int(names[k], val, 1, MAX_FLAG, &v, err)) return fail("%s", err);
            *ints[k] = (int)v;
        }
    }
    if (!path) return fail("missing --load FILE (see moelab eplb --help)");
    for (int j = 0; j < 4; j++)
        if (*ints[j] == 0) return fail("missing %s (see moelab eplb --help)", names[j]);

    char *text = NULL;
    int rc = read_text(path, &text);
    if (rc) return rc;
    double *load;  // (L, E)
    int L, E;
    rc = parse_csv(text, path, &load, &L, &E);
    core_free(text);
    if (rc) return rc;

    EplbShape s = {.L = L, .E = E, .R = R, .Ng = Ng, .Nn = Nn, .G = G};
    char msg[256];
    if (eplb_shape_error(&s, msg, sizeof msg)) {
        core_free(load);
        return fail("%s (E = %d is the number of columns of %s)", msg, E, path);
    }
    const double need = plan_bytes(L, E, R), have = core_host_memory_bytes();
    if (need > have) {
        core_free(load);
        return fail("--replicas %d for %d layers of %d experts is too large: the plan needs about %.0f GiB, more "
                    "than this machine's %.1f GiB of memory", R, L, E, need / (1 << 30), have / (1 << 30));
    }
    EplbPlan *p = eplb_plan_create(&s);
    eplb_plan_run(p, load);
    print_plan(p, load);
    eplb_plan_free(p);
    core_free(load);
    return 0;
}
