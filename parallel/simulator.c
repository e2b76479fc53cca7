// The pipeline cost simulator and the Chrome-trace reader/writer: both produce a SimTimeline
// (per-rank op start/end, busy and idle time). The simulator times ops with the dependency rule of
// sched_play, so a simulated schedule and a validated one are the same thing.
#include "parallel/simulator.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/mem.h"

int sim_costs_check(const SimCosts *c, char *err) {
    const double v[5] = {c->f, c->b, c->w, c->fb, c->p2p};
    const char *name[5] = {"F", "B", "W", "F&B", "p2p"};
    for (int i = 0; i < 5; i++) {
        if (!isfinite(v[i]) || v[i] < 0) {
            sched_set_err(err, "cost of %s must be a finite number >= 0 (got %g)", name[i], v[i]);
            return 1;
        }
    }
    // B and F&B include a full backward, of which W is a part.
    if (c->w > c->b || c->w > c->fb) {
        sched_set_err(err, "cost of W (%g) must not exceed B (%g) or F&B (%g): B is the full backward, W its "
                "weight-gradient part", c->w, c->b, c->fb);
        return 1;
    }
    return 0;
}

double sim_op_cost(const SimCosts *c, const SchedOp *op) {
    switch (op->kind) {
    case SCHED_F: return c->f;
    case SCHED_B: return op->b.defer_w ? c->b - c->w : c->b;
    case SCHED_W: return c->w;
    default: return op->b.defer_w ? c->fb - c->w : c->fb;
    }
}

double sim_bubble_formula(SchedKind kind, int N, const SimCosts *c) {
    switch (kind) {
    case SCHED_1F1B: return (N - 1) * (c->f + c->b);
    case SCHED_DUALPIPE: return (N / 2 - 1) * (c->fb + c->b - 3 * c->w);
    default: return (N - 1) * (c->fb + c->b - 3 * c->w);
    }
}

static SimTimeline *timeline_alloc(int R) {
    SimTimeline *tl = core_alloc(sizeof *tl);
    tl->R = R;
    tl->n = core_alloc(sizeof(int) * R);
    tl->ev = core_alloc(sizeof(SimEvent *) * R);
    tl->busy = core_alloc(sizeof(double) * R);
    tl->bubble = core_alloc(sizeof(double) * R);
    return tl;
}

// t0, t1, busy and bubble from the events.
static void timeline_finish(SimTimeline *tl) {
    int any = 0;
    for (int r = 0; r < tl->R; r++) {
        tl->busy[r] = 0;
        for (int i = 0; i < tl->n[r]; i++) {
            const SimEvent *e = &tl->ev[r][i];
            tl->busy[r] += e->end - e->start;
            if (!any || e->start < tl->t0) tl->t0 = e->start;
            if (!any || e->end > tl->t1) tl->t1 = e->end;
            any = 1;
        }
    }
    for (int r = 0; r < tl->R; r++) tl->bubble[r] = tl->t1 - tl->t0 - tl->busy[r];
}

void sim_free(SimTimeline *tl) {
    if (!tl) return;
    for (int r = 0; r < tl->R; r++) core_free(tl->ev[r]);
    core_free(tl->ev);
    core_free(tl->n);
    core_free(tl->busy);
    core_free(tl->bubble);
    core_free(tl);
}

SimTimeline *sim_run(const Schedule *s, const SimCosts *c, char *err) {
    if (sim_costs_check(c, err)) return NULL;
    double **dur = core_alloc(sizeof(double *) * s->N);    // (N) per-op durations
    double **start = core_alloc(sizeof(double *) * s->N);  // (N) per-op start times
    double **end = core_alloc(sizeof(double *) * s->N);    // (N) per-op end times
    for (int r = 0; r < s->N; r++) {
        int n = s->n_ops[r] > 0 ? s->n_ops[r] : 1;
        dur[r] = core_alloc(sizeof(double) * n);
        start[r] = core_alloc(sizeof(double) * n);
        end[r] = core_alloc(sizeof(double) * n);
        for (int i = 0; i < s->n_ops[r]; i++) dur[r][i] = sim_op_cost(c, &s->ops[r][i]);
    }
    SimTimeline *tl = NULL;
    if (sched_play(s, dur, c->p2p, start, end, err) == 0) {
        tl = timeline_alloc(s->N);
        for (int r = 0; r < s->N; r++) {
            tl->n[r] = s->n_ops[r];
            tl->ev[r] = core_alloc(sizeof(SimEvent) * (s->n_ops[r] > 0 ? s->n_ops[r] : 1));
            for (int i = 0; i < s->n_ops[r]; i++) {
                SimEvent *e = &tl->ev[r][i];
                e->op = s->ops[r][i];
                e->start = start[r][i];
                e->end = end[r][i];
            }
        }
        timeline_finish(tl);
    }
    for (int r = 0; r < s->N; r++) {
        core_free(dur[r]);
        core_free(start[r]);
        core_free(end[r]);
    }
    core_free(dur);
    core_free(start);
    core_free(end);
    return tl;
}

// ---------------------------------------------------------------------------------------------
// Chrome traces. A minimal JSON reader: it understands the whole grammar (so any valid trace
// parses) but keeps only the fields a timeline needs.

typedef struct {
    const char *base, *p, *end;   // the text, the read position, its end
    char *err;
    const char *path;
} Json;

static int json_fail(Json *J, const char *what) {
    int line = 1;
    for (const char *q = J->base; q < J->p; q++) line += *q == '\n';
    sched_set_err(J->err, "%s:%d: malformed JSON: %s", J->path, line, what);
    return 1;
}

static void json_ws(Json *J) {
    while (J->p < J->end && (*J->p == ' ' || *J->p == '\t' || *J->p == '\n' || *J->p == '\r')) J->p++;
}

static int json_eat(Json *J, char c) {
    json_ws(J);
    if (J->p < J->end && *J->p == c) {
        J->p++;
        return 1;
    }
    return 0;
}

// A string into out (cap bytes, truncated); \u escapes outside ASCII become '?'.
static int json_string(Json *J, char *out, size_t cap) {
    size_t n = 0;
    if (!json_eat(J, '"')) return json_fail(J, "expected a string");
    while (J->p < J->end && *J->p != '"') {
        char ch = *J->p++;
        if (ch == '\\') {
            if (J->p >= J->end) break;
            char e = *J->p++;
            switch (e) {
            case '"': case '\\': case '/': ch = e; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u': {
                char hex[5] = {0};
                if (J->end - J->p < 4) return json_fail(J, "short \\u escape");
                memcpy(hex, J->p, 4);
                J->p += 4;
                long u = strtol(hex, NULL, 16);
                ch = u > 0 && u < 128 ? (char)u : '?';
                break;
            }
            default: return json_fail(J, "bad escape in string");
            }
        }
        if (n + 1 < cap) out[n++] = ch;
    }
    if (!json_eat(J, '"')) return json_fail(J, "unterminated string");
    if (cap) out[n] = '\0';
    return 0;
}

static int json_number(Json *J, double *v) {
    json_ws(J);
    char *e;
    *v = strtod(J->p, &e);
    if (e == J->p || e > J->end) return json_fail(J, "expected a number");
    J->p = e;
    return 0;
}

static int json_skip(Json *J, int depth);

// Reads an array or object, calling fn on each element / member value (its key in `key`), or
// skipping the values when fn is NULL.
typedef int (*JsonItemFn)(Json *J, const char *key, void *ctx);

static int json_container(Json *J, int object, JsonItemFn fn, void *ctx, int depth) {
    char key[64] = "";
    if (depth > 64) return json_fail(J, "nesting too deep");
    if (!json_eat(J, object ? '{' : '[')) return json_fail(J, object ? "expected '{'" : "expected '['");
    if (json_eat(J, object ? '}' : ']')) return 0;
    do {
        if (object) {
            if (json_string(J, key, sizeof key)) return 1;
            if (!json_eat(J, ':')) return json_fail(J, "expected ':'");
        }
        if (fn ? fn(J, key, ctx) : json_skip(J, depth + 1)) return 1;
    } while (json_eat(J, ','));
    if (!json_eat(J, object ? '}' : ']')) return json_fail(J, object ? "expected ',' or '}'" : "expected ',' or ']'");
    return 0;
}

static int json_skip(Json *J, int depth) {
    json_ws(J);
    if (J->p >= J->end) return json_fail(J, "unexpected end");
    if (*J->p == '{' || *J->p == '[') return json_container(J, *J->p == '{', NULL, NULL, depth);
    if (*J->p == '"') return json_string(J, NULL, 0);
    static const char *lit[3] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lit[i]);
        if ((size_t)(J->end - J->p) >= n && strncmp(J->p, lit[i], n) == 0) {
            J->p += n;
            return 0;
        }
    }
    double v;
    return json_number(J, &v);
}

// One trace event being read.
typedef struct {
    char name[48], ph[8];
    double pid, tid, ts, dur;
    int has_pid, has_tid, has_ts, has_dur;
} TraceEv;

typedef struct {
    SimEvent *ev;          // (cap) kept events
    int *rank;             // (cap) their ranks
    int n, cap;
    TraceEv cur;
} TraceRead;

static int trace_field(Json *J, const char *key, void *ctx) {
    TraceEv *e = ctx;
    if (strcmp(key, "name") == 0) return json_string(J, e->name, sizeof e->name);
    if (strcmp(key, "ph") == 0) return json_string(J, e->ph, sizeof e->ph);
    struct { const char *k; double *v; int *has; } num[4] = {
        {"pid", &e->pid, &e->has_pid}, {"tid", &e->tid, &e->has_tid},
        {"ts", &e->ts, &e->has_ts}, {"dur", &e->dur, &e->has_dur}};
    for (int i = 0; i < 4; i++) {
        if (strcmp(key, num[i].k) == 0) {
            *num[i].has = 1;
            return json_number(J, num[i].v);
        }
    }
    return json_skip(J, 2);
}

static int trace_event(Json *J, const char *key, void *ctx) {
    TraceRead *T = ctx;
    memset(&T->cur, 0, sizeof T->cur);
    if (json_container(J, 1, trace_field, &T->cur, 1)) return 1;
    TraceEv *e = &T->cur;
    SchedOp op;
    if (strcmp(e->ph, "X") != 0 || sched_op_parse(e->name, &op) != 0) return 0;
    double rank = e->has_pid ? e->pid : e->tid;
    if (!e->has_ts || !e->has_dur || !(e->has_pid || e->has_tid)) {
        sched_set_err(J->err, "%s: event \"%s\" lacks ts, dur or pid/tid", J->path, e->name);
        return 1;
    }
    if (rank < 0 || rank > 65535 || rank != floor(rank) || !isfinite(e->ts) || !isfinite(e->dur) || e->dur < 0) {
        sched_set_err(J->err, "%s: event \"%s\" has rank %g, ts %g or dur %g out of range", J->path, e->name, rank,
                e->ts, e->dur);
        return 1;
    }
    if (T->n == T->cap) {
        T->cap = T->cap ? 2 * T->cap : 256;
        SimEvent *ev = core_alloc(sizeof(SimEvent) * T->cap);
        int *rk = core_alloc(sizeof(int) * T->cap);
        if (T->n) {
            memcpy(ev, T->ev, sizeof(SimEvent) * T->n);
            memcpy(rk, T->rank, sizeof(int) * T->n);
        }
        core_free(T->ev);
        core_free(T->rank);
        T->ev = ev;
        T->rank = rk;
    }
    T->ev[T->n] = (SimEvent){op, e->ts, e->ts + e->dur};
    T->rank[T->n++] = (int)rank;
    return 0;
}

static int trace_top(Json *J, const char *key, void *ctx) {
    if (strcmp(key, "traceEvents") == 0) return json_container(J, 0, trace_event, ctx, 1);
    return json_skip(J, 1);
}

static int cmp_event(const void *a, const void *b) {
    const SimEvent *x = a, *y = b;
    return (x->start > y->start) - (x->start < y->start);
}

SimTimeline *sim_read_trace(const char *path, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        sched_set_err(err, "cannot open trace %s", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = core_alloc((size_t)(size > 0 ? size : 0) + 1);  // (size + 1) NUL-terminated
    size_t got = size > 0 ? fread(text, 1, (size_t)size, f) : 0;
    fclose(f);
    Json J = {text, text, text + got, err, path};
    TraceRead T;
    memset(&T, 0, sizeof T);
    json_ws(&J);
    int bad = (J.p < J.end && *J.p == '[') ? json_container(&J, 0, trace_event, &T, 0)
                                           : json_container(&J, 1, trace_top, &T, 0);
    if (!bad) {
        json_ws(&J);
        if (J.p != J.end) bad = json_fail(&J, "text after the trace");
    }
    if (!bad && T.n == 0) {
        sched_set_err(err, "%s: no complete (\"ph\": \"X\") events named like schedule ops (F3d, B0u*, W0u, "
                "FB(4d,1u))", path);
        bad = 1;
    }
    SimTimeline *tl = NULL;
    if (!bad) {
        int R = 0;
        for (int i = 0; i < T.n; i++) R = T.rank[i] + 1 > R ? T.rank[i] + 1 : R;
        tl = timeline_alloc(R);
        for (int i = 0; i < T.n; i++) tl->n[T.rank[i]]++;
        for (int r = 0; r < R; r++) {
            tl->ev[r] = core_alloc(sizeof(SimEvent) * (tl->n[r] > 0 ? tl->n[r] : 1));
            tl->n[r] = 0;
        }
        for (int i = 0; i < T.n; i++) tl->ev[T.rank[i]][tl->n[T.rank[i]]++] = T.ev[i];
        for (int r = 0; r < R; r++) qsort(tl->ev[r], tl->n[r], sizeof(SimEvent), cmp_event);
        timeline_finish(tl);
    }
    core_free(T.ev);
    core_free(T.rank);
    core_free(text);
    return tl;
}

int sim_write_trace(const SimTimeline *tl, const char *path, char *err) {
    FILE *f = fopen(path, "w");
    if (!f) {
        sched_set_err(err, "cannot write trace %s", path);
        return 1;
    }
    char lab[48];
    int first = 1;
    fputs("{\"traceEvents\": [\n", f);
    for (int r = 0; r < tl->R; r++) {
        for (int i = 0; i < tl->n[r]; i++) {
            const SimEvent *e = &tl->ev[r][i];
            fprintf(f, "%s{\"name\": \"%s\", \"ph\": \"X\", \"pid\": %d, \"tid\": 0, \"ts\": %.17g, \"dur\": %.17g}",
                    first ? "" : ",\n", sched_op_label(&e->op, lab, sizeof lab), r, e->start, e->end - e->start);
            first = 0;
        }
    }
    fputs("\n]}\n", f);
    if (fclose(f) != 0) {
        sched_set_err(err, "cannot write trace %s", path);
        return 1;
    }
    return 0;
}
