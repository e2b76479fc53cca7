// `moelab plot`: draws the expert load of a training run from its --metrics file (JSON Lines) as one
// SVG: a heatmap per MoE layer of each expert's tokens over the logged steps (relative to a fair share,
// rebalances marked), and for the first and last EPLB rebalance each EP rank's load before and after.
// A thin front end: the JSON reader of framework/core/json.h, checks on the fields it needs, and plain
// SVG rectangles.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/json.h"
#include "framework/core/mem.h"
#include "framework/core/num.h"
#include "tools/commands.h"

static const char USAGE[] =
    "usage: moelab plot --metrics FILE --out FILE.svg\n"
    "\n"
    "Draws the expert load of a training run from its metrics (moelab train --metrics FILE):\n"
    "  - per MoE layer, a heatmap of each expert's tokens at every logged step, as a multiple of a\n"
    "    fair share (tokens of the layer / experts): blue below, white at, red above; dashed lines\n"
    "    mark EPLB rebalances; past 360 logged steps a column sums several;\n"
    "  - for the first and the last rebalance (--eplb-interval), each EP rank's tokens before and\n"
    "    after, relative to the mean rank, with max/mean.\n"
    "  --metrics FILE   JSON Lines written by moelab train: lines with \"expert_load\" or \"eplb\" need\n"
    "                   \"step\"; other lines (the first one, the run's config) are skipped\n"
    "  --out FILE       the SVG to write\n"
    "Loads are numbers in [0, 1e15]. Bad input exits 2; a failed write (a full disk) exits 1 and\n"
    "leaves no partial SVG.\n";

// One usage-error line naming the command; returns exit code 2.
#define fail(...) core_usage_report("plot: " __VA_ARGS__)

// ---------------------------------------------------------------------------------------------
// The run's load data.

typedef struct {
    int step;
    double *before, *after;   // (L) max/mean rank load
    double *rank_before, *rank_after;  // (L, G) tokens per EP rank
} Rebalance;

typedef struct {
    int L, E, G;              // MoE layers, experts, EP ranks (G = 0 until a rebalance is read)
    int dense, layers;        // the config line's n_dense_layers and n_layers (-1: none)
    int ns, cap;              // logged steps with expert_load
    int *step;                // (ns)
    double *load;             // (ns, L, E) tokens per expert
    int nr, rcap;
    Rebalance *reb;           // (nr)
} Run;

static void run_free(Run *d) {
    core_free(d->step);
    core_free(d->load);
    for (int i = 0; i < d->nr; i++) {
        core_free(d->reb[i].before);
        core_free(d->reb[i].after);
        core_free(d->reb[i].rank_before);
        core_free(d->reb[i].rank_after);
    }
    core_free(d->reb);
}

// Reads a (rows, cols) matrix of numbers in [0, NUM_MAX_LOAD] into out (rows·cols, core_alloc),
// fixing rows and cols on first sight (*rows == 0) and checking them afterwards. Returns an error message or NULL.
static const char *read_matrix(const JsonValue *v, const char *name, int *rows, int *cols, double **out,
                               char *msg, size_t cap) {
    if (!v || v->type != JSON_ARRAY || v->len == 0)
        return snprintf(msg, cap, "\"%s\" is not a non-empty array of arrays", name), msg;
    if (*rows && v->len != (size_t)*rows)
        return snprintf(msg, cap, "\"%s\" has %zu rows, earlier lines had %d", name, v->len, *rows), msg;
    const size_t want = *cols ? (size_t)*cols : v->items[0].len;
    for (size_t i = 0; i < v->len; i++) {
        const JsonValue *row = &v->items[i];
        if (row->type != JSON_ARRAY || row->len == 0)
            return snprintf(msg, cap, "\"%s\" row %zu is not a non-empty array", name, i + 1), msg;
        if (row->len != want)
            // The width comes from the rows read before this one, of this key or of another (the
            // rank loads before and after share it): "expected" named a well-formed key (sweep, 2026-12-07).
            return snprintf(msg, cap, "\"%s\" row %zu has %zu values where the rows before it have %zu", name,
                            i + 1, row->len, want), msg;
        for (size_t j = 0; j < row->len; j++)
            if (row->items[j].type != JSON_NUMBER || row->items[j].number < 0 ||
                row->items[j].number > NUM_MAX_LOAD)
                return snprintf(msg, cap, "\"%s\" row %zu, value %zu is not a number in [0, %g]", name, i + 1,
                                j + 1, NUM_MAX_LOAD), msg;
    }
    *rows = (int)v->len;
    *cols = (int)want;
    *out = core_alloc((size_t)*rows * *cols * sizeof(double));
    for (int i = 0; i < *rows; i++)
        for (int j = 0; j < *cols; j++) (*out)[(size_t)i * *cols + j] = v->items[i].items[j].number;
    return NULL;
}

static const char *read_vector(const JsonValue *v, const char *name, int n, double **out, char *msg,
                               size_t cap) {
    if (!v || v->type != JSON_ARRAY || v->len != (size_t)n)
        return snprintf(msg, cap, "\"%s\" is not an array of %d numbers (one per MoE layer)", name, n), msg;
    *out = core_alloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) {
        // Ratios of rank loads to their mean: bounded as the loads are (a 1e300 went into the title
        // as a 300-digit number, review 2026-12-05).
        if (v->items[i].type != JSON_NUMBER || v->items[i].number < 0 || v->items[i].number > NUM_MAX_LOAD)
            return snprintf(msg, cap, "\"%s\" value %d is not a number in [0, %g]", name, i + 1, NUM_MAX_LOAD), msg;
        (*out)[i] = v->items[i].number;
    }
    return NULL;
}

// A layer count of the config line: a whole number in [0, 1024], else -1.
static int config_count(const JsonValue *v) {
    return v && v->type == JSON_NUMBER && v->number >= 0 && v->number <= 1024 && v->number == floor(v->number)
               ? (int)v->number : -1;
}

// Takes what one metrics line holds; returns an error message or NULL.
static const char *take_line(Run *d, const JsonValue *o, char *msg, size_t cap) {
    const JsonValue *load = json_get(o, "expert_load"), *eplb = json_get(o, "eplb");
    const JsonValue *step = json_get(o, "step");
    // The config line moelab train writes first places the MoE layers in the model (dense layers
    // lead); other lines hold nothing to draw.
    const JsonValue *cfg = json_get(o, "config");
    if (cfg) {
        d->dense = config_count(json_get(cfg, "n_dense_layers"));
        d->layers = config_count(json_get(cfg, "n_layers"));
    }
    if (!load && !eplb) return NULL;
    if (!step || step->type != JSON_NUMBER || step->number < 0 || step->number != floor(step->number) ||
        step->number > 1e9)
        return "\"step\" is missing or not a whole number in [0, 1e9]";
    // A model of dense layers only logs an empty expert_load: nothing to draw, said as such.
    if (load && load->type == JSON_ARRAY && load->len == 0)
        return "the run has no MoE layers (\"expert_load\" is empty): there is no expert load to draw";
    if (load) {
        double *x;
        const char *e = read_matrix(load, "expert_load", &d->L, &d->E, &x, msg, cap);
        if (e) return e;
        if (d->ns == d->cap) {
            d->cap = d->cap ? 2 * d->cap : 64;
            int *s = core_alloc((size_t)d->cap * sizeof(int));
            double *l = core_alloc((size_t)d->cap * d->L * d->E * sizeof(double));
            if (d->ns) {
                memcpy(s, d->step, (size_t)d->ns * sizeof(int));
                memcpy(l, d->load, (size_t)d->ns * d->L * d->E * sizeof(double));
            }
            core_free(d->step);
            core_free(d->load);
            d->step = s;
            d->load = l;
        }
        d->step[d->ns] = (int)step->number;
        memcpy(d->load + (size_t)d->ns * d->L * d->E, x, (size_t)d->L * d->E * sizeof(double));
        d->ns++;
        core_free(x);
    }
    if (!eplb) return NULL;
    if (eplb->type != JSON_OBJECT) return "\"eplb\" is not an object";
    if (!d->L) return "\"eplb\" comes before any \"expert_load\"";
    if (d->nr == d->rcap) {
        d->rcap = d->rcap ? 2 * d->rcap : 16;
        d->reb = core_grow(d->reb, (size_t)d->nr, (size_t)d->rcap, sizeof *d->reb);
    }
    Rebalance *r = &d->reb[d->nr++];
    r->step = (int)step->number;
    const char *e;
    int L = d->L;
    if ((e = read_vector(json_get(eplb, "before"), "before", d->L, &r->before, msg, cap)) ||
        (e = read_vector(json_get(eplb, "after"), "after", d->L, &r->after, msg, cap)) ||
        (e = read_matrix(json_get(eplb, "rank_load_before"), "rank_load_before", &L, &d->G,
                         &r->rank_before, msg, cap)) ||
        (e = read_matrix(json_get(eplb, "rank_load_after"), "rank_load_after", &L, &d->G,
                         &r->rank_after, msg, cap)))
        return e;
    return NULL;
}

// Reads every line of the metrics file; returns 0 or the exit code after printing the error.
static int read_run(const char *path, Run *d) {
    // Only a regular file: a FIFO would block the open, and a directory read as empty.
    const char *why;
    FILE *f = core_open_regular(path, &why);
    if (!f) return fail("cannot read --metrics '%s': %s", path, why);
    char *text;
    size_t n;
    const int read_error = core_read_all(f, SIZE_MAX, &text, &n);
    fclose(f);
    if (read_error)
        return core_failure_report("plot: cannot read --metrics '%s': %s", path, core_read_error(read_error));
    if (!n) {
        core_free(text);
        return fail("--metrics '%s' is empty", path);
    }
    // The lines are parsed as C strings: a NUL byte would end the file there, unseen.
    const int nul_line = core_nul_line(text, n);
    if (nul_line) {
        core_free(text);
        return fail("%s, line %d: a NUL byte (the file is not text)", path, nul_line);
    }
    int rc = 0, line = 0;
    // A UTF-8 byte order mark is no part of the first line (as in a config file or a load file).
    char *first = text + core_bom_len(text, n);
    for (char *s = first; s && *s && !rc; line++) {
        char *eol = strchr(s, '\n');
        const size_t len = eol ? (size_t)(eol - s) : strlen(s);
        if (strspn(s, " \t\r") < len) {  // blank lines are skipped
            char what[JSON_ERR_LEN], msg[200];
            size_t at;
            JsonValue *v = json_parse_at(s, len, what, &at);
            if (!v)
                rc = fail("%s, line %d: not JSON: %s at column %zu", path, line + 1, what, at + 1);
            else if (v->type != JSON_OBJECT)
                rc = fail("%s, line %d: not a JSON object", path, line + 1);
            else {
                const char *e = take_line(d, v, msg, sizeof msg);
                if (e) rc = fail("%s, line %d: %s", path, line + 1, e);
            }
            json_free(v);
        }
        s = eol ? eol + 1 : NULL;
    }
    core_free(text);
    if (!rc && d->ns == 0)
        rc = fail("%s has no line with \"expert_load\" (moelab train writes it into every --metrics line)",
                  path);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Drawing.

// Tokens as a multiple of a fair share r: blue (0) → white (1) → red (3 and more).
static void share_color(double r, char out[8]) {
    static const double cold[3] = {33, 102, 172}, mid[3] = {247, 247, 247}, hot[3] = {178, 24, 43};
    const double *a = r < 1 ? cold : mid, *b = r < 1 ? mid : hot;
    double t = r < 1 ? r : (r - 1) / 2;
    if (t > 1) t = 1;
    if (t < 0) t = 0;
    snprintf(out, 8, "#%02x%02x%02x", (int)lround(a[0] + t * (b[0] - a[0])),
             (int)lround(a[1] + t * (b[1] - a[1])), (int)lround(a[2] + t * (b[2] - a[2])));
}

#define LEFT 70
#define HEAT_H 220      // target height of one heatmap
#define BAR_H 120       // height of a rank-load chart
// At most this many columns a heatmap: more logged steps share a column, their tokens summed. A cell
// per step made 750 MB of SVG for 5 000 steps of 4 layers x 256 experts, and 100 000 steps never
// finished (review, 2026-12-06).
#define MAX_COLUMNS 360

// Logged steps a column, and the columns.
static int steps_per_column(const Run *d) { return (d->ns + MAX_COLUMNS - 1) / MAX_COLUMNS; }
static int columns(const Run *d) { return (d->ns + steps_per_column(d) - 1) / steps_per_column(d); }

// "MoE layer l", and its place in the model where the metrics' config says it and agrees with the
// layers drawn (the heatmaps' titles, which have the room; the rank charts' labels keep the short
// form).
static const char *layer_name(const Run *d, int l, char *buf, size_t cap) {
    if (d->dense < 0 || d->layers != d->dense + d->L) snprintf(buf, cap, "MoE layer %d", l);
    else snprintf(buf, cap, "MoE layer %d (model layer %d)", l, d->dense + l);
    return buf;
}

static int heatmap(FILE *f, const Run *d, int l, int top, double cw, double ch) {
    const int E = d->E;
    char name[64];
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">%s: tokens per expert / fair share"
               "</text>\n", LEFT, top - 8, layer_name(d, l, name, sizeof name));
    const int per = steps_per_column(d), nc = columns(d);
    double *x = core_alloc((size_t)E * sizeof(double));  // (E) the column's tokens per expert
    for (int c = 0; c < nc; c++) {
        const int i0 = c * per, i1 = i0 + per < d->ns ? i0 + per : d->ns;
        memset(x, 0, (size_t)E * sizeof(double));
        for (int i = i0; i < i1; i++)
            for (int e = 0; e < E; e++) x[e] += d->load[((size_t)i * d->L + l) * E + e];
        double sum = 0;
        for (int e = 0; e < E; e++) sum += x[e];
        char steps[48];
        if (i1 - i0 > 1) snprintf(steps, sizeof steps, "steps %d-%d", d->step[i0], d->step[i1 - 1]);
        else snprintf(steps, sizeof steps, "step %d", d->step[i0]);
        for (int e = 0; e < E; e++) {
            const double r = sum > 0 ? x[e] * E / sum : 0;
            char col[8];
            share_color(r, col);
            fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\">"
                       "<title>%s, expert %d: %.0f tokens (%.2f x fair share)</title></rect>\n",
                    LEFT + c * cw, top + e * ch, cw, ch, col, steps, e, x[e], r);
        }
    }
    core_free(x);
    const double w = nc * cw, h = E * ch;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.2f\" height=\"%.2f\" fill=\"none\" stroke=\"#444\"/>\n",
            LEFT, top, w, h);
    // Each rebalance takes effect after its step: a line at the right edge of that step's column.
    for (int k = 0; k < d->nr; k++)
        for (int i = 0; i < d->ns; i++)
            if (d->step[i] == d->reb[k].step)
                fprintf(f, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#000\" "
                           "stroke-dasharray=\"4,3\"/>\n",
                        LEFT + (i / per + 1) * cw, top - 4, LEFT + (i / per + 1) * cw, top + h + 4);
    fprintf(f, "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\" font-size=\"11\">expert 0</text>\n", LEFT - 4,
            top + ch / 2 + 4);
    fprintf(f, "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\" font-size=\"11\">%d</text>\n", LEFT - 4,
            top + h - ch / 2 + 4, E - 1);
    // About six step labels under the columns (a column's first step).
    const int every = nc > 6 ? (nc + 5) / 6 : 1;
    for (int c = 0; c < nc; c += every)
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\" font-size=\"11\">%d</text>\n",
                LEFT + (c + 0.5) * cw, top + h + 16, d->step[c * per]);
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" font-size=\"11\">step</text>\n", LEFT + w + 6, top + h + 16);
    return (int)(top + h + 44);
}

static int legend(FILE *f, int top) {
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">tokens / fair share:</text>\n", LEFT, top + 12);
    for (int k = 0; k <= 6; k++) {
        char col[8];
        share_color(k * 0.5, col);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"28\" height=\"14\" fill=\"%s\" stroke=\"#444\"/>\n",
                LEFT + 120 + 34 * k, top, col);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"10\">%s%.1f</text>\n",
                LEFT + 134 + 34 * k, top + 26, k == 6 ? ">=" : "", k * 0.5);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">dashed line: EPLB rebalance after that step"
               "</text>\n", LEFT + 370, top + 12);
    return top + 48;
}

// One chart: each rank's tokens before (grey) and after (blue) rebalance k, relative to the mean rank.
static int rank_chart(FILE *f, const Run *d, int k, int l, int x0, int top) {
    const Rebalance *r = &d->reb[k];
    const int G = d->G, bw = 10;
    const double *b = r->rank_before + (size_t)l * G, *a = r->rank_after + (size_t)l * G;
    // The load at full bar height: 1.5 x the mean rank, or the largest bar. A height is a load over
    // it, never a ratio to the mean, which overflows where the mean is tiny (1e15 / 1e-320: NaN bars).
    double mean = 0, full = 0;
    for (int g = 0; g < G; g++) mean += b[g] / G;
    for (int g = 0; g < G; g++) full = fmax(full, fmax(b[g], a[g]));
    full = fmax(full, 1.5 * mean);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">step %d, MoE layer %d: max/mean %.2f -&gt; "
               "%.2f</text>\n", x0, top - 6, r->step, l, r->before[l], r->after[l]);
    for (int g = 0; g < G; g++) {
        const double hb = mean > 0 ? BAR_H * b[g] / full : 0;
        const double ha = mean > 0 ? BAR_H * a[g] / full : 0;
        const int x = x0 + g * (2 * bw + 6);
        fprintf(f, "<rect x=\"%d\" y=\"%.2f\" width=\"%d\" height=\"%.2f\" fill=\"#969696\">"
                   "<title>rank %d before: %.1f tokens</title></rect>\n",
                x, top + BAR_H - hb, bw, hb, g, b[g]);
        fprintf(f, "<rect x=\"%d\" y=\"%.2f\" width=\"%d\" height=\"%.2f\" fill=\"#2166ac\">"
                   "<title>rank %d after: %.1f tokens</title></rect>\n",
                x + bw, top + BAR_H - ha, bw, ha, g, a[g]);
    }
    const int w = G * (2 * bw + 6);
    const double y1 = top + BAR_H - (mean > 0 ? BAR_H * mean / full : BAR_H / 1.5);
    fprintf(f, "<line x1=\"%d\" y1=\"%.2f\" x2=\"%d\" y2=\"%.2f\" stroke=\"#000\" "
               "stroke-dasharray=\"4,3\"/>\n", x0 - 2, y1, x0 + w, y1);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#444\"/>\n", x0 - 2, top + BAR_H,
            x0 + w, top + BAR_H);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\">ranks 0..%d; dashed: mean</text>\n", x0,
            top + BAR_H + 14, G - 1);
    return w > 260 ? w : 260;
}

static int write_svg(const char *path, const Run *d) {
    const double cw = fmax(2, fmin(24, 720.0 / columns(d))), ch = fmax(3, fmin(16, (double)HEAT_H / d->E));
    const int heat_h = (int)(d->E * ch) + 70;
    const int n_charts = d->nr == 0 ? 0 : d->nr == 1 ? 1 : 2;   // the first and the last rebalance
    const int chart_w = 2 * 10 * d->G + 6 * d->G > 260 ? 26 * d->G : 260;
    int width = LEFT + (int)(columns(d) * cw) + 60;
    if (LEFT + d->L * (chart_w + 30) > width) width = LEFT + d->L * (chart_w + 30);
    if (width < 640) width = 640;
    const int height = 40 + d->L * heat_h + 60 + (n_charts ? n_charts * (BAR_H + 60) + 30 : 30);
    // A checkpoint, token shard or tokenizer is never replaced by a chart.
    const char *kind = core_data_file_kind(path);
    if (kind) return core_usage_report("plot: --out %s is %s: writing it would destroy it", path, kind);
    // Written beside path and renamed into place: a failed write leaves no partial SVG and an older
    // file as it was. A path that is wrong is bad input; a device that failed (a full disk) is the
    // machine's failure.
    CoreOut out;
    const int open_error = core_out_open(&out, path);
    if (open_error) return core_out_report(open_error, "plot: cannot write --out '%s'", path);
    FILE *f = out.f;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "font-family=\"sans-serif\" font-size=\"13\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n", width, height);
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\" font-weight=\"bold\">Expert load: %d MoE layers "
               "x %d experts, %d logged steps, %d rebalances</text>\n", LEFT, d->L, d->E, d->ns, d->nr);
    int y = 60;
    for (int l = 0; l < d->L; l++) y = heatmap(f, d, l, y + 14, cw, ch);
    y = legend(f, y);
    if (n_charts == 0) {
        fprintf(f, "<text x=\"%d\" y=\"%d\">no EPLB rebalance in this run (moelab train --eplb-interval N)"
                   "</text>\n", LEFT, y + 10);
    } else {
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">Tokens per EP rank, before (grey) and "
                   "after (blue) a rebalance</text>\n", LEFT, y + 10);
        y += 40;
        for (int c = 0; c < n_charts; c++, y += BAR_H + 60) {
            int x = LEFT;
            for (int l = 0; l < d->L; l++) x += rank_chart(f, d, c ? d->nr - 1 : 0, l, x, y) + 30;
        }
    }
    fprintf(f, "</svg>\n");
    const int write_error = core_out_close(&out);
    if (write_error) return core_out_report(write_error, "plot: cannot write --out '%s'", path);
    return 0;
}

int cmd_plot(int argc, char **argv) {
    const char *metrics = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        // Both "--flag value" and "--flag=value".
        const size_t nlen = cmd_flag_len(a);
        const char **dst = cmd_flag_is(a, nlen, "--metrics") ? &metrics
                           : cmd_flag_is(a, nlen, "--out")    ? &out
                                                              : NULL;
        if (!dst) return fail("unknown option '%s' (see moelab plot --help)", a);
        const char *val = cmd_flag_value(argc, argv, &i);
        if (!val || !*val) return fail("%.*s needs a value%s", (int)nlen, a, val ? ", not an empty one" : "");
        *dst = val;
    }
    if (!metrics) return fail("missing --metrics FILE (see moelab plot --help)");
    if (!out) return fail("missing --out FILE.svg (see moelab plot --help)");
    if (core_same_file(metrics, out)) return fail("--out %s is the --metrics file: writing it would replace it", out);
    Run d;
    memset(&d, 0, sizeof d);
    d.dense = d.layers = -1;
    int rc = read_run(metrics, &d);
    if (!rc) rc = write_svg(out, &d);
    if (!rc)
        printf("plot: %d logged steps x %d MoE layers x %d experts, %d rebalances -> %s\n", d.ns, d.L, d.E,
               d.nr, out);
    run_free(&d);
    return rc;
}
