// `moelab plot`: draws the expert load of a training run from its --metrics file (JSON Lines) as one
// SVG: a heatmap per MoE layer of each expert's tokens over the logged steps (relative to a fair share,
// rebalances marked), and for the first and last EPLB rebalance each EP rank's load before and after.
// A thin front end: a small JSON reader, checks on the fields it needs, and plain SVG rectangles.
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "tools/commands.h"

static const char USAGE[] =
    "usage: moelab plot --metrics FILE --out FILE.svg\n"
    "\n"
    "Draws the expert load of a training run from its metrics (moelab train --metrics FILE):\n"
    "  - per MoE layer, a heatmap of each expert's tokens at every logged step, as a multiple of a\n"
    "    fair share (tokens of the layer / experts): blue below, white at, red above; dashed lines\n"
    "    mark EPLB rebalances;\n"
    "  - for the first and the last rebalance (--eplb-interval), each EP rank's tokens before and\n"
    "    after, relative to the mean rank, with max/mean.\n"
    "  --metrics FILE   JSON Lines written by moelab train (lines need \"step\" and \"expert_load\")\n"
    "  --out FILE       the SVG to write\n";

// One usage-error line naming the command; returns exit code 2.
#define fail(...) core_usage_report("plot: " __VA_ARGS__)

// ---------------------------------------------------------------------------------------------
// A JSON reader (one value per line of the metrics file): numbers, strings, arrays, objects,
// true/false/null. Strings keep their escapes undecoded: only keys are compared, and they are plain.

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } JKind;

typedef struct JVal {
    JKind kind;
    double num;
    char *str;            // J_STR: the text between the quotes
    int n;                // J_ARR, J_OBJ: elements
    struct JVal *item;    // (n) elements or members' values
    char **key;           // (n) J_OBJ: members' names
} JVal;

typedef struct {
    const char *s, *p;
    char err[160];
} JReader;

static void j_free(JVal *v) {
    for (int i = 0; i < v->n; i++) {
        j_free(&v->item[i]);
        if (v->key) core_free(v->key[i]);
    }
    core_free(v->item);
    core_free(v->key);
    core_free(v->str);
}

static int j_error(JReader *r, const char *what) {
    if (!r->err[0]) snprintf(r->err, sizeof r->err, "%s at column %d", what, (int)(r->p - r->s) + 1);
    return 1;
}

static void j_ws(JReader *r) {
    while (*r->p == ' ' || *r->p == '\t' || *r->p == '\r') r->p++;
}

static int j_value(JReader *r, JVal *v, int depth);

static int j_string(JReader *r, char **out) {
    const char *start = ++r->p;
    while (*r->p && *r->p != '"') r->p += *r->p == '\\' && r->p[1] ? 2 : 1;
    if (*r->p != '"') return j_error(r, "unterminated string");
    size_t n = (size_t)(r->p - start);
    *out = core_alloc(n + 1);
    memcpy(*out, start, n);
    r->p++;
    return 0;
}

// Appends one element (and its key) to an array or object under construction.
static JVal *j_push(JVal *v, int *cap) {
    if (v->n == *cap) {
        *cap = *cap ? 2 * *cap : 8;
        JVal *item = core_alloc((size_t)*cap * sizeof *item);
        if (v->n) memcpy(item, v->item, (size_t)v->n * sizeof *item);
        core_free(v->item);
        v->item = item;
        if (v->kind == J_OBJ) {
            char **key = core_alloc((size_t)*cap * sizeof *key);
            if (v->n) memcpy(key, v->key, (size_t)v->n * sizeof *key);
            core_free(v->key);
            v->key = key;
        }
    }
    return &v->item[v->n++];
}

static int j_container(JReader *r, JVal *v, int depth) {
    const char close = *r->p == '[' ? ']' : '}';
    v->kind = close == ']' ? J_ARR : J_OBJ;
    int cap = 0;
    r->p++;
    j_ws(r);
    if (*r->p == close) {
        r->p++;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        j_ws(r);
        if (v->kind == J_OBJ) {
            if (*r->p != '"') return j_error(r, "expected a member name");
            if (j_string(r, &key)) return 1;
            j_ws(r);
            if (*r->p != ':') {
                core_free(key);
                return j_error(r, "expected ':'");
            }
            r->p++;
        }
        JVal *item = j_push(v, &cap);
        if (v->kind == J_OBJ) v->key[v->n - 1] = key;
        if (j_value(r, item, depth + 1)) return 1;
        j_ws(r);
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p == close) {
            r->p++;
            return 0;
        }
        return j_error(r, close == ']' ? "expected ',' or ']'" : "expected ',' or '}'");
    }
}

static int j_value(JReader *r, JVal *v, int depth) {
    memset(v, 0, sizeof *v);
    if (depth > 32) return j_error(r, "nesting deeper than 32");
    j_ws(r);
    const char c = *r->p;
    if (c == '[' || c == '{') return j_container(r, v, depth);
    if (c == '"') {
        v->kind = J_STR;
        return j_string(r, &v->str);
    }
    static const char *words[] = {"null", "true", "false"};
    for (int i = 0; i < 3; i++)
        if (!strncmp(r->p, words[i], strlen(words[i]))) {
            v->kind = i ? J_BOOL : J_NULL;
            v->num = i == 1;
            r->p += strlen(words[i]);
            return 0;
        }
    char *end;
    v->num = strtod(r->p, &end);
    if (end == r->p || !isfinite(v->num)) return j_error(r, "expected a value");
    v->kind = J_NUM;
    r->p = end;
    return 0;
}

static const JVal *j_get(const JVal *o, const char *key) {
    for (int i = 0; o->kind == J_OBJ && i < o->n; i++)
        if (!strcmp(o->key[i], key)) return &o->item[i];
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// The run's load data.

typedef struct {
    int step;
    double *before, *after;   // (L) max/mean rank load
    double *rank_before, *rank_after;  // (L, G) tokens per EP rank
} Rebalance;

typedef struct {
    int L, E, G;              // MoE layers, experts, EP ranks (G = 0 until a rebalance is read)
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

// Reads a (rows, cols) matrix of non-negative numbers into out (rows·cols, core_alloc), fixing rows and
// cols on first sight (*rows == 0) and checking them afterwards. Returns an error message or NULL.
static const char *read_matrix(const JVal *v, const char *name, int *rows, int *cols, double **out,
                               char *msg, size_t cap) {
    if (!v || v->kind != J_ARR || v->n == 0)
        return snprintf(msg, cap, "\"%s\" is not a non-empty array of arrays", name), msg;
    if (*rows && v->n != *rows)
        return snprintf(msg, cap, "\"%s\" has %d rows, earlier lines had %d", name, v->n, *rows), msg;
    for (int i = 0; i < v->n; i++) {
        const JVal *row = &v->item[i];
        if (row->kind != J_ARR || row->n == 0)
            return snprintf(msg, cap, "\"%s\" row %d is not a non-empty array", name, i + 1), msg;
        if ((*cols && row->n != *cols) || (i > 0 && row->n != v->item[0].n))
            return snprintf(msg, cap, "\"%s\" row %d has %d values, expected %d", name, i + 1, row->n,
                            *cols ? *cols : v->item[0].n), msg;
        for (int j = 0; j < row->n; j++)
            if (row->item[j].kind != J_NUM || row->item[j].num < 0)
                return snprintf(msg, cap, "\"%s\" row %d, value %d is not a number >= 0", name, i + 1,
                                j + 1), msg;
    }
    *rows = v->n;
    *cols = v->item[0].n;
    *out = core_alloc((size_t)*rows * *cols * sizeof(double));
    for (int i = 0; i < *rows; i++)
        for (int j = 0; j < *cols; j++) (*out)[(size_t)i * *cols + j] = v->item[i].item[j].num;
    return NULL;
}

static const char *read_vector(const JVal *v, const char *name, int n, double **out, char *msg,
                               size_t cap) {
    if (!v || v->kind != J_ARR || v->n != n)
        return snprintf(msg, cap, "\"%s\" is not an array of %d numbers (one per MoE layer)", name, n), msg;
    *out = core_alloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) {
        if (v->item[i].kind != J_NUM)
            return snprintf(msg, cap, "\"%s\" value %d is not a number", name, i + 1), msg;
        (*out)[i] = v->item[i].num;
    }
    return NULL;
}

// Takes what one metrics line holds; returns an error message or NULL.
static const char *take_line(Run *d, const JVal *o, char *msg, size_t cap) {
    const JVal *load = j_get(o, "expert_load"), *eplb = j_get(o, "eplb"), *step = j_get(o, "step");
    if (!load && !eplb) return NULL;
    if (!step || step->kind != J_NUM || step->num < 0 || step->num != floor(step->num) || step->num > 1e9)
        return "\"step\" is missing or not a non-negative integer";
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
        d->step[d->ns] = (int)step->num;
        memcpy(d->load + (size_t)d->ns * d->L * d->E, x, (size_t)d->L * d->E * sizeof(double));
        d->ns++;
        core_free(x);
    }
    if (!eplb) return NULL;
    if (eplb->kind != J_OBJ) return "\"eplb\" is not an object";
    if (!d->L) return "\"eplb\" comes before any \"expert_load\"";
    if (d->nr == d->rcap) {
        d->rcap = d->rcap ? 2 * d->rcap : 16;
        Rebalance *r = core_alloc((size_t)d->rcap * sizeof *r);
        if (d->nr) memcpy(r, d->reb, (size_t)d->nr * sizeof *r);
        core_free(d->reb);
        d->reb = r;
    }
    Rebalance *r = &d->reb[d->nr++];
    r->step = (int)step->num;
    const char *e;
    int L = d->L;
    if ((e = read_vector(j_get(eplb, "before"), "before", d->L, &r->before, msg, cap)) ||
        (e = read_vector(j_get(eplb, "after"), "after", d->L, &r->after, msg, cap)) ||
        (e = read_matrix(j_get(eplb, "rank_load_before"), "rank_load_before", &L, &d->G,
                         &r->rank_before, msg, cap)) ||
        (e = read_matrix(j_get(eplb, "rank_load_after"), "rank_load_after", &L, &d->G, &r->rank_after,
                         msg, cap)))
        return e;
    return NULL;
}

// Reads every line of the metrics file; returns 0 or the exit code after printing the error.
static int read_run(const char *path, Run *d) {
    FILE *f = fopen(path, "rb");
    if (!f) return fail("cannot read --metrics '%s': %s", path, strerror(errno));
    char *text = NULL;
    size_t n = 0, cap = 0;
    for (int c; (c = fgetc(f)) != EOF;) {
        if (n + 2 > cap) {
            cap = cap ? 2 * cap : 1 << 16;
            char *t = core_alloc(cap);
            if (n) memcpy(t, text, n);
            core_free(text);
            text = t;
        }
        text[n++] = (char)c;
    }
    fclose(f);
    if (!text) return fail("--metrics '%s' is empty", path);
    text[n] = '\0';
    int rc = 0, line = 0;
    for (char *s = text; s && *s && !rc; line++) {
        char *eol = strchr(s, '\n');
        if (eol) *eol = '\0';
        JReader r = {s, s, ""};
        j_ws(&r);
        if (*r.p) {
            JVal v;
            char msg[200];
            int bad = j_value(&r, &v, 0);
            j_ws(&r);
            if (!bad && *r.p) bad = j_error(&r, "text after the value");
            if (bad)
                rc = fail("%s, line %d: not JSON: %s", path, line + 1, r.err);
            else if (v.kind != J_OBJ)
                rc = fail("%s, line %d: not a JSON object", path, line + 1);
            else {
                const char *e = take_line(d, &v, msg, sizeof msg);
                if (e) rc = fail("%s, line %d: %s", path, line + 1, e);
            }
            j_free(&v);
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

static int heatmap(FILE *f, const Run *d, int l, int top, double cw, double ch) {
    const int E = d->E;
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">MoE layer %d: tokens per expert / fair share"
               "</text>\n", LEFT, top - 8, l);
    for (int i = 0; i < d->ns; i++) {
        const double *x = d->load + ((size_t)i * d->L + l) * E;
        double sum = 0;
        for (int e = 0; e < E; e++) sum += x[e];
        for (int e = 0; e < E; e++) {
            const double r = sum > 0 ? x[e] * E / sum : 0;
            char col[8];
            share_color(r, col);
            fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\">"
                       "<title>step %d, expert %d: %.0f tokens (%.2f x fair share)</title></rect>\n",
                    LEFT + i * cw, top + e * ch, cw, ch, col, d->step[i], e, x[e], r);
        }
    }
    const double w = d->ns * cw, h = E * ch;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.2f\" height=\"%.2f\" fill=\"none\" stroke=\"#444\"/>\n",
            LEFT, top, w, h);
    // Each rebalance takes effect after its step: a line at the right edge of that step's column.
    for (int k = 0; k < d->nr; k++)
        for (int i = 0; i < d->ns; i++)
            if (d->step[i] == d->reb[k].step)
                fprintf(f, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#000\" "
                           "stroke-dasharray=\"4,3\"/>\n",
                        LEFT + (i + 1) * cw, top - 4, LEFT + (i + 1) * cw, top + h + 4);
    fprintf(f, "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\" font-size=\"11\">expert 0</text>\n", LEFT - 4,
            top + ch / 2 + 4);
    fprintf(f, "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\" font-size=\"11\">%d</text>\n", LEFT - 4,
            top + h - ch / 2 + 4, E - 1);
    // About six step labels under the columns.
    const int every = d->ns > 6 ? (d->ns + 5) / 6 : 1;
    for (int i = 0; i < d->ns; i += every)
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\" font-size=\"11\">%d</text>\n",
                LEFT + (i + 0.5) * cw, top + h + 16, d->step[i]);
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
    double mean = 0, peak = 1.5;
    for (int g = 0; g < G; g++) mean += b[g] / G;
    for (int g = 0; g < G && mean > 0; g++) peak = fmax(peak, fmax(b[g], a[g]) / mean);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">step %d, MoE layer %d: max/mean %.2f -&gt; "
               "%.2f</text>\n", x0, top - 6, r->step, l, r->before[l], r->after[l]);
    for (int g = 0; g < G; g++) {
        const double hb = mean > 0 ? BAR_H * b[g] / mean / peak : 0;
        const double ha = mean > 0 ? BAR_H * a[g] / mean / peak : 0;
        const int x = x0 + g * (2 * bw + 6);
        fprintf(f, "<rect x=\"%d\" y=\"%.2f\" width=\"%d\" height=\"%.2f\" fill=\"#969696\">"
                   "<title>rank %d before: %.1f tokens</title></rect>\n",
                x, top + BAR_H - hb, bw, hb, g, b[g]);
        fprintf(f, "<rect x=\"%d\" y=\"%.2f\" width=\"%d\" height=\"%.2f\" fill=\"#2166ac\">"
                   "<title>rank %d after: %.1f tokens</title></rect>\n",
                x + bw, top + BAR_H - ha, bw, ha, g, a[g]);
    }
    const int w = G * (2 * bw + 6);
    const double y1 = top + BAR_H - BAR_H / peak;
    fprintf(f, "<line x1=\"%d\" y1=\"%.2f\" x2=\"%d\" y2=\"%.2f\" stroke=\"#000\" "
               "stroke-dasharray=\"4,3\"/>\n", x0 - 2, y1, x0 + w, y1);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#444\"/>\n", x0 - 2, top + BAR_H,
            x0 + w, top + BAR_H);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\">ranks 0..%d; dashed: mean</text>\n", x0,
            top + BAR_H + 14, G - 1);
    return w > 260 ? w : 260;
}

static int write_svg(const char *path, const Run *d) {
    const double cw = fmax(2, fmin(24, 720.0 / d->ns)), ch = fmax(3, fmin(16, (double)HEAT_H / d->E));
    const int heat_h = (int)(d->E * ch) + 70;
    const int n_charts = d->nr == 0 ? 0 : d->nr == 1 ? 1 : 2;   // the first and the last rebalance
    const int chart_w = 2 * 10 * d->G + 6 * d->G > 260 ? 26 * d->G : 260;
    int width = LEFT + (int)(d->ns * cw) + 60;
    if (LEFT + d->L * (chart_w + 30) > width) width = LEFT + d->L * (chart_w + 30);
    if (width < 640) width = 640;
    const int height = 40 + d->L * heat_h + 60 + (n_charts ? n_charts * (BAR_H + 60) + 30 : 30);
    FILE *f = fopen(path, "w");
    if (!f) return fail("cannot write --out '%s': %s", path, strerror(errno));
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
    if (fclose(f) != 0) return fail("cannot write --out '%s': %s", path, strerror(errno));
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
        const char *eq = strchr(a, '=');
        const size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        const char **dst = nlen == 9 && !strncmp(a, "--metrics", 9) ? &metrics
                           : nlen == 5 && !strncmp(a, "--out", 5)    ? &out
                                                                     : NULL;
        if (!dst) return fail("unknown option '%s' (see moelab plot --help)", a);
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val || !*val) return fail("%.*s needs a value", (int)nlen, a);
        *dst = val;
    }
    if (!metrics) return fail("missing --metrics FILE (see moelab plot --help)");
    if (!out) return fail("missing --out FILE.svg (see moelab plot --help)");
    Run d;
    memset(&d, 0, sizeof d);
    int rc = read_run(metrics, &d);
    if (!rc) rc = write_svg(out, &d);
    if (!rc)
        printf("plot: %d logged steps x %d MoE layers x %d experts, %d rebalances -> %s\n", d.ns, d.L, d.E,
               d.nr, out);
    run_free(&d);
    return rc;
}
