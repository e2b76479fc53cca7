// The pipeline cost simulator and the Chrome-trace reader/writer: both produce a SimTimeline
// (per-rank op start/end, busy and idle time). The simulator times ops with the dependency rule of
// sched_play, so a simulated schedule and a validated one are the same thing.
#include "parallel/simulator.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/json.h"
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
    // Busy time is the length of the union of a rank's ops (in start order): a measured trace may
    // hold ops that overlap on one rank (two threads), whose plain sum made the idle time negative.
    for (int r = 0; r < tl->R; r++) {
        tl->busy[r] = 0;
        double covered = -INFINITY;
        for (int i = 0; i < tl->n[r]; i++) {
            const SimEvent *e = &tl->ev[r][i];
            const double from = e->start > covered ? e->start : covered;
            if (e->end > from) tl->busy[r] += e->end - from;
            if (e->end > covered) covered = e->end;
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
            for (int i = 0; i < s->n_ops[r]; i++) tl->ev[r][i] = (SimEvent){s->ops[r][i], start[r][i], end[r][i]};
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
// Chrome traces, read with the JSON reader of framework/core/json.h; only the fields a timeline
// needs are kept.

// The longest time a trace may span, in µs. Then every figure derived from it (step time, busy and
// idle time and their percentages, mean costs, the bubble formula) is a finite number.
static const double TRACE_MAX_SPAN = 1e15;

// The number member key of event ev into *out; 0 when absent, 1 when present, -1 when not a number.
static int trace_number(const JsonValue *ev, const char *key, double *out) {
    const JsonValue *v = json_get(ev, key);
    if (!v) return 0;
    if (v->type != JSON_NUMBER) return -1;
    *out = v->number;
    return 1;
}

// Checks event k (a JSON value) and, when it is a complete event named like a schedule op, stores it
// into *out with its rank. Returns -1 on a bad event (message in err), 0 to skip it, 1 when kept.
static int trace_event(const JsonValue *ev, size_t k, const char *path, SimEvent *out, int *rank_out,
                       char *err) {
    if (ev->type != JSON_OBJECT) {
        sched_set_err(err, "%s: event %zu is not a JSON object", path, k);
        return -1;
    }
    const JsonValue *name = json_get(ev, "name"), *ph = json_get(ev, "ph");
    if ((name && name->type != JSON_STRING) || (ph && ph->type != JSON_STRING)) {
        sched_set_err(err, "%s: event %zu has a \"name\" or \"ph\" that is not a string", path, k);
        return -1;
    }
    double pid = 0, tid = 0, ts = 0, dur = 0;
    const int has_pid = trace_number(ev, "pid", &pid), has_tid = trace_number(ev, "tid", &tid),
              has_ts = trace_number(ev, "ts", &ts), has_dur = trace_number(ev, "dur", &dur);
    if (has_pid < 0 || has_tid < 0 || has_ts < 0 || has_dur < 0) {
        sched_set_err(err, "%s: event %zu has a pid, tid, ts or dur that is not a number", path, k);
        return -1;
    }
    SchedOp op;
    if (!ph || strcmp(ph->str, "X") != 0 || !name || sched_op_parse(name->str, &op) != 0) return 0;
    const double rank = has_pid ? pid : tid;
    if (!has_ts || !has_dur || !(has_pid || has_tid)) {
        sched_set_err(err, "%s: event \"%s\" lacks ts, dur or pid/tid", path, name->str);
        return -1;
    }
    if (rank < 0 || rank > 65535 || rank != floor(rank) || dur < 0 || !isfinite(ts + dur)) {
        sched_set_err(err, "%s: event \"%s\" has rank %g, ts %g or dur %g out of range", path, name->str, rank,
                ts, dur);
        return -1;
    }
    *out = (SimEvent){op, ts, ts + dur};
    *rank_out = (int)rank;
    return 1;
}

static int cmp_event(const void *a, const void *b) {
    const SimEvent *x = a, *y = b;
    return (x->start > y->start) - (x->start < y->start);
}

SimTimeline *sim_read_trace(const char *path, char *err) {
    // Only a regular file: a FIFO would block the open, and a directory has no length.
    const char *why;
    FILE *f = core_open_regular(path, &why);
    if (!f) {
        sched_set_err(err, "cannot open trace %s: %s", path, why);
        return NULL;
    }
    // The parser gets the length read, so that a NUL byte is a JSON error, not the end of the text.
    // A failed read of a regular file is the machine's failure, not the trace's.
    char *text;
    size_t got;
    const int e = core_read_all(f, SIZE_MAX, &text, &got);
    if (e) FATAL("cannot read trace %s: %s", path, core_read_error(e));
    fclose(f);
    char what[JSON_ERR_LEN];
    size_t at;
    JsonValue *doc = json_parse_at(text, got, what, &at);
    int bad = 0;
    if (!doc) {
        int line = 1;
        for (size_t i = 0; i < at; i++) line += text[i] == '\n';
        sched_set_err(err, "%s:%d: malformed JSON: %s", path, line, what);
        bad = 1;
    }
    // The two forms of a Chrome trace: an array of events, or an object with "traceEvents".
    const JsonValue *events = doc && doc->type == JSON_OBJECT ? json_get(doc, "traceEvents") : doc;
    if (!bad && (!events || events->type != JSON_ARRAY)) {
        sched_set_err(err, "%s: not a Chrome trace (a JSON array of events, or an object with a "
                "\"traceEvents\" array)", path);
        bad = 1;
    }
    // (n) the kept events and their ranks; n <= the events of the trace.
    const size_t cap = bad ? 1 : events->len + 1;
    SimEvent *kept = core_alloc(sizeof(SimEvent) * cap);
    int *rank = core_alloc(sizeof(int) * cap);
    size_t n = 0;
    for (size_t k = 0; !bad && k < events->len; k++) {
        const int r = trace_event(&events->items[k], k, path, &kept[n], &rank[n], err);
        if (r < 0) bad = 1;
        n += r > 0;
    }
    if (!bad && n == 0) {
        sched_set_err(err, "%s: no complete (\"ph\": \"X\") events named like schedule ops (F3d, B0u*, W0u, "
                "FB(4d,1u))", path);
        bad = 1;
    }
    SimTimeline *tl = NULL;
    if (!bad) {
        int R = 0;
        for (size_t i = 0; i < n; i++) R = rank[i] + 1 > R ? rank[i] + 1 : R;
        tl = timeline_alloc(R);
        for (size_t i = 0; i < n; i++) tl->n[rank[i]]++;
        for (int r = 0; r < R; r++) {
            tl->ev[r] = core_alloc(sizeof(SimEvent) * (tl->n[r] > 0 ? tl->n[r] : 1));
            tl->n[r] = 0;
        }
        for (size_t i = 0; i < n; i++) tl->ev[rank[i]][tl->n[rank[i]]++] = kept[i];
        for (int r = 0; r < R; r++) qsort(tl->ev[r], tl->n[r], sizeof(SimEvent), cmp_event);
        timeline_finish(tl);
        // Finite events may still lie so far apart that the step time overflows (ts -1e308 and
        // 1e308), or is too large for the idle percentages; no measured step is that long.
        if (!(tl->t1 - tl->t0 <= TRACE_MAX_SPAN)) {
            sched_set_err(err, "%s: the op events span from ts %g to %g µs, more than %g µs (31 years): "
                    "not a measured step", path, tl->t0, tl->t1, TRACE_MAX_SPAN);
            sim_free(tl);
            tl = NULL;
        }
    }
    core_free(kept);
    core_free(rank);
    json_free(doc);
    core_free(text);
    return tl;
}

void sim_write_trace_to(const SimTimeline *tl, FILE *f) {
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
}

int sim_write_trace(const SimTimeline *tl, const char *path, char *err) {
    // Through a temporary renamed into place: a failed write (a full disk) leaves no partial trace.
    CoreOut out;
    int e = core_out_open(&out, path);
    if (!e) {
        sim_write_trace_to(tl, out.f);
        e = core_out_close(&out);
    }
    if (e) sched_set_err(err, "cannot write trace %s: %s", path, core_out_error(e));
    return e != 0;
}
