// Pipeline schedule generators (1F1B, DualPipe, DualPipeV per docs/architecture.md §5), the
// dependency player that validates them and times them for the simulator, and the text / JSON
// writers. docs/pipeline.md is the narrative version of this file.
#include "parallel/schedule.h"

#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

static const char *KIND_NAMES[] = {"1f1b", "dualpipe", "dualpipev"};

int sched_kind_parse(const char *name) {
    for (int k = 0; k < 3; k++)
        if (strcmp(name, KIND_NAMES[k]) == 0) return k;
    return -1;
}

const char *sched_kind_name(SchedKind kind) { return KIND_NAMES[kind]; }

const char *sched_pipe_name(int pipe) { return pipe == SCHED_UP ? "up" : "down"; }

// ---------------------------------------------------------------------------------------------
// Paths. A micro-batch of DualPipe's up pipe is one of the last C/2 ids; it enters at rank N−1.
// A DualPipeV micro-batch goes down ranks 0..N−1 and then back up N−1..0 (the V).

int sched_path_len(const Schedule *s) { return s->kind == SCHED_DUALPIPEV ? 2 * s->N : s->N; }

static int in_up_pipe(const Schedule *s, int mb) { return s->kind == SCHED_DUALPIPE && mb >= s->C / 2; }

int sched_path_rank(const Schedule *s, int mb, int k) {
    if (s->kind == SCHED_DUALPIPEV) return k < s->N ? k : 2 * s->N - 1 - k;
    return in_up_pipe(s, mb) ? s->N - 1 - k : k;
}

int sched_path_pipe(const Schedule *s, int mb, int k) {
    if (s->kind == SCHED_DUALPIPEV) return k < s->N ? SCHED_DOWN : SCHED_UP;
    return in_up_pipe(s, mb) ? SCHED_UP : SCHED_DOWN;
}

int sched_path_pos(const Schedule *s, int rank, int pipe, int mb) {
    if (mb < 0 || mb >= s->C || rank < 0 || rank >= s->N) return -1;
    if (pipe != SCHED_DOWN && pipe != SCHED_UP) return -1;
    switch (s->kind) {
    case SCHED_1F1B: return pipe == SCHED_DOWN ? rank : -1;
    case SCHED_DUALPIPE:
        if (pipe != (in_up_pipe(s, mb) ? SCHED_UP : SCHED_DOWN)) return -1;
        return pipe == SCHED_DOWN ? rank : s->N - 1 - rank;
    default: return pipe == SCHED_DOWN ? rank : 2 * s->N - 1 - rank;
    }
}

int sched_stage(const Schedule *s, int rank, int pipe) {
    if (pipe == SCHED_DOWN) return rank;
    return s->kind == SCHED_DUALPIPEV ? 2 * s->N - 1 - rank : s->N - 1 - rank;
}

int sched_max_live(const Schedule *s, int rank, int pipe, SchedOpKind from) {
    int live = 0, most = 0;
    for (int i = 0; i < s->n_ops[rank]; i++) {
        const SchedOp *op = &s->ops[rank][i];
        const int f = (op->kind == SCHED_F || op->kind == SCHED_FB) && op->f.pipe == pipe;
        const int b = (op->kind == SCHED_B || op->kind == SCHED_FB) && op->b.pipe == pipe;
        const int w = op->kind == SCHED_W && op->b.pipe == pipe;
        if ((from == SCHED_F ? f : b && op->b.defer_w) && ++live > most) most = live;
        if (w || (from == SCHED_F && b && !op->b.defer_w)) live--;
    }
    return most;
}

// ---------------------------------------------------------------------------------------------
// Generators. A Builder emits one rank's ops: it hands out micro-batches of each pipe in order and
// keeps the deferred-W queue, so a W always names the oldest deferred backward.

typedef struct {
    const Schedule *s;
    SchedOp *ops;          // (cap) the rank's op array
    int n, cap;
    int next_f[2];         // per pipe: forwards emitted so far
    int next_b[2];         // per pipe: backwards emitted so far
    SchedCell *queue;      // (cap) deferred backwards, oldest at head
    int head, tail;
    int step;              // step number stamped on emitted ops
} Builder;

// The k-th micro-batch a pipe sees. DualPipe's up pipe carries ids C/2..C−1.
static int pipe_mb(const Schedule *s, int pipe, int k) {
    return (s->kind == SCHED_DUALPIPE && pipe == SCHED_UP) ? s->C / 2 + k : k;
}

static SchedOp *emit(Builder *b, int kind) {
    CHECK(b->n < b->cap, "schedule: rank op list overflow (%d ops)", b->cap);
    SchedOp *op = &b->ops[b->n++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->step = b->step;
    return op;
}

static SchedCell next_fwd(Builder *b, int pipe) {
    SchedCell c = {pipe_mb(b->s, pipe, b->next_f[pipe]++), pipe, 0};
    return c;
}

static SchedCell next_bwd(Builder *b, int pipe, int defer_w) {
    SchedCell c = {pipe_mb(b->s, pipe, b->next_b[pipe]++), pipe, defer_w};
    if (defer_w) b->queue[b->tail++] = c;
    return c;
}

static void op_f(Builder *b, int pipe) { emit(b, SCHED_F)->f = next_fwd(b, pipe); }

static void op_b(Builder *b, int pipe, int defer_w) { emit(b, SCHED_B)->b = next_bwd(b, pipe, defer_w); }

static void op_w(Builder *b) {
    CHECK(b->head < b->tail, "schedule: W with no deferred backward (generator bug)");
    emit(b, SCHED_W)->b = b->queue[b->head++];
}

static void op_fb(Builder *b, int fpipe, int bpipe) {
    SchedOp *op = emit(b, SCHED_FB);
    op->f = next_fwd(b, fpipe);
    op->b = next_bwd(b, bpipe, 0);
}

static Schedule *sched_alloc(SchedKind kind, int N, int C) {
    Schedule *s = core_alloc(sizeof *s);
    s->kind = kind;
    s->N = N;
    s->C = C;
    s->n_ops = core_alloc(sizeof(int) * N);
    s->ops = core_alloc(sizeof(SchedOp *) * N);
    return s;
}

// Every op list fits in 6C: at most one F, B and W per micro-batch and pipe.
static Builder builder_begin(Schedule *s) {
    Builder b;
    memset(&b, 0, sizeof b);
    b.s = s;
    b.cap = 6 * s->C + 8;
    b.ops = core_alloc(sizeof(SchedOp) * b.cap);
    b.queue = core_alloc(sizeof(SchedCell) * b.cap);
    return b;
}

static void builder_end(Builder *b, int r) {
    CHECK(b->head == b->tail, "schedule: rank %d ends with %d deferred W (generator bug)", r,
          b->tail - b->head);
    b->s->ops[r] = b->ops;
    b->s->n_ops[r] = b->n;
    core_free(b->queue);
}

void sched_free(Schedule *s) {
    if (!s) return;
    for (int r = 0; r < s->N; r++) core_free(s->ops[r]);
    core_free(s->ops);
    core_free(s->n_ops);
    core_free(s);
}

static int check_nc(const char *name, int N, int C, char *err) {
    if (N < 1) {
        sched_set_err(err, "%s needs at least 1 rank (pp = %d)", name, N);
        return 1;
    }
    if (C < 1) {
        sched_set_err(err, "%s needs at least 1 micro-batch (chunks = %d)", name, C);
        return 1;
    }
    return 0;
}

static Schedule *build_1f1b(int N, int C, char *err) {
    if (check_nc("1f1b", N, C, err)) return NULL;
    Schedule *s = sched_alloc(SCHED_1F1B, N, C);
    for (int r = 0; r < N; r++) {
        Builder b = builder_begin(s);
        int warm = N - r - 1 < C ? N - r - 1 : C;
        b.step = 1;
        for (int i = 0; i < warm; i++) op_f(&b, SCHED_DOWN);
        b.step = 2;
        for (int i = 0; i < C - warm; i++) {
            op_f(&b, SCHED_DOWN);
            op_b(&b, SCHED_DOWN, 0);
        }
        b.step = 3;
        for (int i = 0; i < warm; i++) op_b(&b, SCHED_DOWN, 0);
        builder_end(&b, r);
    }
    return s;
}

// The eight steps of §5, shared by DualPipe and DualPipeV. For DualPipe: H = N/2,
// h = min(r, N−1−r), M = C/2 micro-batches per pipe, near = the pipe entering on this rank's half.
// For DualPipeV: H = N, h = r, M = C, near = down (the first half of the V).
static void eight_steps(Builder *b, int H, int h, int M, int near) {
    int far = 1 - near;
    // The middle ranks of DualPipe (the last rank of DualPipeV) are where both pipes meet.
    int middle = h == H - 1;
    b->step = 1;
    for (int i = 0; i < 2 * (H - h - 1); i++) op_f(b, near);
    b->step = 2;
    for (int i = 0; i < h + 1; i++) {
        op_f(b, near);
        op_f(b, far);
    }
    b->step = 3;
    for (int i = 0; i < H - h - 1; i++) {
        op_b(b, far, 1);
        op_w(b);
        op_f(b, far);
    }
    b->step = 4;
    for (int i = 0; i < M - 2 * H + h + 1; i++) {
        // The first repetition on the middle rank(s) runs F and B one after the other: the far
        // backward there depends on the near forward of the same rank only through the loss
        // (DualPipeV) or the neighbouring middle rank, and not overlapping shortens the bubble.
        if (i == 0 && middle) {
            op_f(b, near);
            op_b(b, far, 0);
        } else {
            op_fb(b, near, far);
        }
        op_fb(b, far, near);
    }
    b->step = 5;
    for (int i = 0; i < H - h - 1; i++) {
        op_b(b, far, 0);
        op_fb(b, far, near);
    }
    // Step 6 runs 2(h+1) backwards, far and near alternating; W deferral switches on halfway:
    // the last h+1 of them defer their W, which steps 7 and 8 then drain exactly.
    b->step = 6;
    for (int j = 0; j < 2 * (h + 1); j++) op_b(b, j % 2 == 0 ? far : near, j >= h + 1);
    b->step = 7;
    for (int i = 0; i < H - h - 1; i++) {
        op_w(b);
        op_b(b, near, 1);
    }
    b->step = 8;
    for (int i = 0; i < h + 1; i++) op_w(b);
}

// DualPipe and DualPipeV after their own checks: at least 2N micro-batches, then eight_steps per rank.
static Schedule *eight_step_schedule(SchedKind kind, const char *name, int N, int C, char *err) {
    if (C < 2 * N) {
        sched_set_err(err, "%s needs at least 2N = %d micro-batches (chunks = %d)", name, 2 * N, C);
        return NULL;
    }
    Schedule *s = sched_alloc(kind, N, C);
    for (int r = 0; r < N; r++) {
        Builder b = builder_begin(s);
        if (kind == SCHED_DUALPIPE) {
            const int h = r < N - 1 - r ? r : N - 1 - r;  // the rank's distance from its nearer end
            eight_steps(&b, N / 2, h, C / 2, r < N / 2 ? SCHED_DOWN : SCHED_UP);
        } else {
            eight_steps(&b, N, r, C, SCHED_DOWN);
        }
        builder_end(&b, r);
    }
    return s;
}

static Schedule *build_dualpipe(int N, int C, char *err) {
    if (check_nc("dualpipe", N, C, err)) return NULL;
    if (N % 2) {
        sched_set_err(err, "dualpipe needs an even number of ranks (pp = %d)", N);
        return NULL;
    }
    if (C % 2) {
        sched_set_err(err, "dualpipe needs an even number of micro-batches (chunks = %d)", C);
        return NULL;
    }
    return eight_step_schedule(SCHED_DUALPIPE, "dualpipe", N, C, err);
}

static Schedule *build_dualpipev(int N, int C, char *err) {
    if (check_nc("dualpipev", N, C, err)) return NULL;
    return eight_step_schedule(SCHED_DUALPIPEV, "dualpipev", N, C, err);
}

Schedule *sched_build(SchedKind kind, int N, int C, char *err) {
    switch (kind) {
    case SCHED_1F1B: return build_1f1b(N, C, err);
    case SCHED_DUALPIPE: return build_dualpipe(N, C, err);
    case SCHED_DUALPIPEV: return build_dualpipev(N, C, err);
    }
    sched_set_err(err, "unknown schedule kind %d", (int)kind);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Labels.

static int cell_label(const SchedCell *c, int star, char *buf, size_t len) {
    return snprintf(buf, len, "%d%c%s", c->mb, c->pipe == SCHED_UP ? 'u' : 'd',
                    star && c->defer_w ? "*" : "");
}

char *sched_op_label(const SchedOp *op, char *buf, size_t len) {
    static const char K[] = "FBW";
    if (op->kind < SCHED_F || op->kind > SCHED_FB) {
        snprintf(buf, len, "?");
    } else if (op->kind == SCHED_FB) {
        char f[16], b[16];
        cell_label(&op->f, 0, f, sizeof f);
        cell_label(&op->b, 1, b, sizeof b);
        snprintf(buf, len, "FB(%s,%s)", f, b);
    } else {
        char c[16];
        cell_label(op->kind == SCHED_F ? &op->f : &op->b, op->kind == SCHED_B, c, sizeof c);
        snprintf(buf, len, "%c%s", K[op->kind], c);
    }
    return buf;
}

// "12u*" → cell; returns the text after it, or NULL.
static const char *parse_cell(const char *p, SchedCell *c, int allow_star) {
    char *end;
    if (*p < '0' || *p > '9') return NULL;
    long mb = strtol(p, &end, 10);
    if (mb > 1000000000L || (*end != 'd' && *end != 'u')) return NULL;
    c->mb = (int)mb;
    c->pipe = *end == 'u' ? SCHED_UP : SCHED_DOWN;
    c->defer_w = 0;
    p = end + 1;
    if (allow_star && *p == '*') {
        c->defer_w = 1;
        p++;
    }
    return p;
}

int sched_op_parse(const char *text, SchedOp *op) {
    memset(op, 0, sizeof *op);
    const char *p = text;
    if (strncmp(p, "FB(", 3) == 0) {
        op->kind = SCHED_FB;
        p = parse_cell(p + 3, &op->f, 0);
        if (!p || *p != ',') return 1;
        p = parse_cell(p + 1, &op->b, 1);
        if (!p || *p != ')') return 1;
        return p[1] != '\0';
    }
    switch (*p) {
    case 'F': op->kind = SCHED_F; p = parse_cell(p + 1, &op->f, 0); break;
    case 'B': op->kind = SCHED_B; p = parse_cell(p + 1, &op->b, 1); break;
    case 'W':
        op->kind = SCHED_W;
        p = parse_cell(p + 1, &op->b, 0);
        if (p) op->b.defer_w = 1;
        break;
    default: return 1;
    }
    return !p || *p != '\0';
}

void sched_write_text(const Schedule *s, FILE *f) {
    char buf[48];
    for (int r = 0; r < s->N; r++) {
        fprintf(f, "rank %d:", r);
        for (int i = 0; i < s->n_ops[r]; i++) fprintf(f, " %s", sched_op_label(&s->ops[r][i], buf, sizeof buf));
        fputc('\n', f);
    }
}

void sched_write_json(const Schedule *s, FILE *f) {
    fputs("{\"ranks\": [\n", f);
    for (int r = 0; r < s->N; r++) {
        fputs("  [", f);
        for (int i = 0; i < s->n_ops[r]; i++) {
            const SchedOp *op = &s->ops[r][i];
            if (i) fputs(", ", f);
            switch (op->kind) {
            case SCHED_F:
                fprintf(f, "{\"op\": \"F\", \"mb\": %d, \"pipe\": \"%s\"}", op->f.mb, sched_pipe_name(op->f.pipe));
                break;
            case SCHED_B:
                fprintf(f, "{\"op\": \"B\", \"mb\": %d, \"pipe\": \"%s\", \"defer_w\": %s}", op->b.mb,
                        sched_pipe_name(op->b.pipe), op->b.defer_w ? "true" : "false");
                break;
            case SCHED_W:
                fprintf(f, "{\"op\": \"W\", \"mb\": %d, \"pipe\": \"%s\"}", op->b.mb, sched_pipe_name(op->b.pipe));
                break;
            default:
                fprintf(f,
                        "{\"op\": \"FB\", \"f\": {\"mb\": %d, \"pipe\": \"%s\"}, "
                        "\"b\": {\"mb\": %d, \"pipe\": \"%s\", \"defer_w\": %s}}",
                        op->f.mb, sched_pipe_name(op->f.pipe), op->b.mb, sched_pipe_name(op->b.pipe),
                        op->b.defer_w ? "true" : "false");
            }
        }
        fprintf(f, "]%s\n", r + 1 < s->N ? "," : "");
    }
    fputs("]}\n", f);
}

// ---------------------------------------------------------------------------------------------
// The player. Dependency rule (docs/pipeline.md): at path position k of micro-batch mb,
//   F needs F at k−1 (none at k = 0);
//   B needs F at k on this rank and B at k+1 (at the last position, the loss: F at k suffices);
//   W needs its B, and must name the oldest deferred backward of its rank.
// A message between positions on different ranks arrives p2p after its producer ends; between two
// positions on one rank (the tip of DualPipeV's V) it is available at once.

typedef struct {
    const Schedule *s;
    int L;                 // path length
    unsigned char *f_done, *b_done, *w_done;   // (C, L) flags
    double *f_end, *b_end;                     // (C, L) when the F / B output exists
    double p2p;
    char *err;
} Play;

#define AT(P, mb, k) ((size_t)(mb) * (P)->L + (k))

// A B or F&B whose backward leaves its W for a later W op.
static int defers_w(const SchedOp *op) {
    return (op->kind == SCHED_B || op->kind == SCHED_FB) && op->b.defer_w;
}

// Checks that a cell names a real (micro-batch, position) on this rank whose `what` (done: its
// flags) has not run yet; returns the position, or -1.
static int cell_pos(Play *P, int r, int i, const SchedCell *c, const char *what, const unsigned char *done) {
    int k = sched_path_pos(P->s, r, c->pipe, c->mb);
    if (k < 0) {
        sched_set_err(P->err, "rank %d op %d: %s of micro-batch %d in pipe %s does not exist in a %s "
                "schedule with %d ranks and %d micro-batches", r, i, what, c->mb, sched_pipe_name(c->pipe),
                KIND_NAMES[P->s->kind], P->s->N, P->s->C);
    } else if (done[AT(P, c->mb, k)]) {
        sched_set_err(P->err, "rank %d op %d: %s of micro-batch %d (pipe %s) runs twice", r, i, what, c->mb,
                sched_pipe_name(c->pipe));
        k = -1;
    }
    return k;
}

static double arrival(Play *P, int r, int mb, int k_src, double end) {
    return sched_path_rank(P->s, mb, k_src) == r ? end : end + P->p2p;
}

// Readiness of the forward part: 1 ready (time in *t), 0 waiting, -1 error.
static int f_ready(Play *P, int r, int i, const SchedCell *c, double *t) {
    int k = cell_pos(P, r, i, c, "forward", P->f_done);
    if (k < 0) return -1;
    if (k == 0) {
        *t = 0;
        return 1;
    }
    if (!P->f_done[AT(P, c->mb, k - 1)]) return 0;
    *t = arrival(P, r, c->mb, k - 1, P->f_end[AT(P, c->mb, k - 1)]);
    return 1;
}

static int b_ready(Play *P, int r, int i, const SchedCell *c, double *t) {
    int k = cell_pos(P, r, i, c, "backward", P->b_done);
    if (k < 0) return -1;
    if (!P->f_done[AT(P, c->mb, k)]) return 0;
    *t = P->f_end[AT(P, c->mb, k)];
    if (k + 1 < P->L) {
        if (!P->b_done[AT(P, c->mb, k + 1)]) return 0;
        double a = arrival(P, r, c->mb, k + 1, P->b_end[AT(P, c->mb, k + 1)]);
        if (a > *t) *t = a;
    }
    return 1;
}

int sched_play(const Schedule *s, double *const *dur, double p2p, double **start, double **end,
               char *err) {
    Play P = {s, sched_path_len(s), NULL, NULL, NULL, NULL, NULL, p2p, err};
    size_t cells = (size_t)s->C * P.L;
    P.f_done = core_alloc(cells);
    P.b_done = core_alloc(cells);
    P.w_done = core_alloc(cells);
    P.f_end = core_alloc(cells * sizeof(double));
    P.b_end = core_alloc(cells * sizeof(double));
    int *pc = core_alloc(sizeof(int) * s->N);        // (N) next op per rank
    double *clock = core_alloc(sizeof(double) * s->N); // (N) when each rank is free
    int *qhead = core_alloc(sizeof(int) * s->N);     // (N) index of the oldest undone deferred op
    int bad = 0, progress = 1;

    // Sweep the ranks, running every op whose inputs exist, until nothing moves. Times depend only
    // on the producers' end times, so the sweep order does not change them.
    while (progress && !bad) {
        progress = 0;
        for (int r = 0; r < s->N && !bad; r++) {
            while (pc[r] < s->n_ops[r]) {
                int i = pc[r];
                const SchedOp *op = &s->ops[r][i];
                double t = clock[r], tf = 0, tb = 0;
                int ok = 1;
                if (op->kind < SCHED_F || op->kind > SCHED_FB) {
                    sched_set_err(err, "rank %d op %d: unknown op kind %d", r, i, op->kind);
                    bad = 1;
                    break;
                }
                if (op->kind == SCHED_F || op->kind == SCHED_FB) {
                    int st = f_ready(&P, r, i, &op->f, &tf);
                    if (st < 0) { bad = 1; break; }
                    ok = ok && st;
                }
                if (op->kind == SCHED_B || op->kind == SCHED_FB) {
                    int st = b_ready(&P, r, i, &op->b, &tb);
                    if (st < 0) { bad = 1; break; }
                    ok = ok && st;
                }
                if (op->kind == SCHED_FB && op->f.mb == op->b.mb && op->f.pipe == op->b.pipe) {
                    sched_set_err(err, "rank %d op %d: F&B of micro-batch %d with itself", r, i, op->f.mb);
                    bad = 1;
                    break;
                }
                if (op->kind == SCHED_W) {
                    // The oldest deferred backward of this rank not yet completed by a W.
                    while (qhead[r] < i && !defers_w(&s->ops[r][qhead[r]])) qhead[r]++;
                    if (qhead[r] >= i) {
                        sched_set_err(err, "rank %d op %d: W with no deferred backward before it", r, i);
                        bad = 1;
                        break;
                    }
                    const SchedCell *q = &s->ops[r][qhead[r]].b;
                    if (q->mb != op->b.mb || q->pipe != op->b.pipe) {
                        sched_set_err(err, "rank %d op %d: W names micro-batch %d (pipe %s) but the oldest "
                                "deferred backward is micro-batch %d (pipe %s)", r, i, op->b.mb,
                                sched_pipe_name(op->b.pipe), q->mb, sched_pipe_name(q->pipe));
                        bad = 1;
                        break;
                    }
                    // Its B sits earlier in this rank's list, so it has already run.
                    tb = P.b_end[AT(&P, q->mb, sched_path_pos(s, r, q->pipe, q->mb))];
                }
                if (!ok) break;
                if (tf > t) t = tf;
                if (tb > t) t = tb;
                double e = t + (dur ? dur[r][i] : 0);
                if (start) start[r][i] = t;
                if (end) end[r][i] = e;
                clock[r] = e;
                if (op->kind == SCHED_F || op->kind == SCHED_FB) {
                    size_t a = AT(&P, op->f.mb, sched_path_pos(s, r, op->f.pipe, op->f.mb));
                    P.f_done[a] = 1;
                    P.f_end[a] = e;
                }
                if (op->kind != SCHED_F) {
                    size_t a = AT(&P, op->b.mb, sched_path_pos(s, r, op->b.pipe, op->b.mb));
                    if (op->kind == SCHED_W) {
                        P.w_done[a] = 1;
                        qhead[r]++;
                    } else {
                        P.b_done[a] = 1;
                        P.b_end[a] = e;
                        if (!op->b.defer_w) P.w_done[a] = 1;
                    }
                }
                pc[r]++;
                progress = 1;
            }
        }
    }

    if (!bad) {
        // Deadlock: name every rank's first op that never became ready.
        char msg[SCHED_ERR_LEN] = "deadlock:", lab[48];
        size_t n = strlen(msg);
        for (int r = 0; r < s->N; r++) {
            if (pc[r] == s->n_ops[r]) continue;
            bad = 1;
            if (n < sizeof msg)
                n += snprintf(msg + n, sizeof msg - n, " rank %d waits at op %d (%s);", r, pc[r],
                              sched_op_label(&s->ops[r][pc[r]], lab, sizeof lab));
        }
        if (bad) sched_set_err(err, "%s", msg);
    }
    // Completeness: every position of every path ran F, B and W, and no W is left owed.
    for (int mb = 0; mb < s->C && !bad; mb++) {
        for (int k = 0; k < P.L && !bad; k++) {
            size_t a = AT(&P, mb, k);
            const char *miss = !P.f_done[a] ? "forward" : !P.b_done[a] ? "backward" : !P.w_done[a] ? "W" : NULL;
            if (miss) {
                sched_set_err(err, "micro-batch %d never runs its %s at stage %d on rank %d (pipe %s)", mb, miss,
                        sched_stage(s, sched_path_rank(s, mb, k), sched_path_pipe(s, mb, k)),
                        sched_path_rank(s, mb, k), sched_pipe_name(sched_path_pipe(s, mb, k)));
                bad = 1;
            }
        }
    }
    core_free(P.f_done);
    core_free(P.b_done);
    core_free(P.w_done);
    core_free(P.f_end);
    core_free(P.b_end);
    core_free(pc);
    core_free(clock);
    core_free(qhead);
    return bad;
}

int sched_validate(const Schedule *s, char *err) { return sched_play(s, NULL, 0, NULL, NULL, err); }
