// The pipeline executor (see pipeline.h). Each op's sends and receives follow from the path of its
// micro-batch (sched_path_*): a message is tagged with (kind, pipe, micro-batch) of the position
// that receives it, so the receiver picks exactly the message it needs whatever order the link
// delivers them in. Sends are non-blocking from an executor-owned copy, so a rank never waits for a
// peer to post its receive.
#include "parallel/pipeline.h"

#include <string.h>
#include <time.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

enum { MSG_ACT = 0, MSG_GRAD = 1 };

// Tags must fit the communicator's [0, 32767]: 2 kinds × 2 pipes × micro-batch.
#define PIPE_MAX_MB (32768 / 4)

static int tag_of(int kind, int pipe, int mb) { return (mb * 2 + pipe) * 2 + kind; }

typedef struct {
    CommRequest *req;
    float *buf;  // (n_act) the message, owned until the send completes
} Send;

typedef struct {
    const PipeRun *r;
    const Schedule *s;
    int last;              // the last position of a path
    float **local;         // (2 kinds, 2 pipes, C) messages handed over on this rank, or NULL
    Send *sends;           // (cap) sends in flight
    int n_sends, cap_sends;
    SchedCell *wq;         // (C · 2) the deferred-W queue: backwards waiting for their W
    int wq_head, wq_tail;
} Exec;

static double wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static float **local_slot(Exec *x, int kind, int pipe, int mb) {
    return &x->local[((size_t)kind * 2 + (size_t)pipe) * (size_t)x->s->C + (size_t)mb];
}

// Frees the buffers of completed sends.
static void reap_sends(Exec *x) {
    int k = 0;
    for (int i = 0; i < x->n_sends; i++) {
        if (comm_test(x->sends[i].req)) core_free(x->sends[i].buf);
        else x->sends[k++] = x->sends[i];
    }
    x->n_sends = k;
}

// Sends a copy of msg (n_act) about micro-batch mb to position k of the path of micro-batch path
// (mb itself in a training step).
static void post(Exec *x, int kind, int mb, int path, int k, const float *msg) {
    const PipeRun *r = x->r;
    const int dst = sched_path_rank(x->s, path, k), pipe = sched_path_pipe(x->s, path, k);
    float *buf = core_alloc(r->n_act * sizeof(float));  // (n_act)
    memcpy(buf, msg, r->n_act * sizeof(float));
    if (dst == r->rank) {
        float **slot = local_slot(x, kind, pipe, mb);
        CHECK(*slot == NULL, "pipeline: message %d of micro-batch %d handed over twice", kind, mb);
        *slot = buf;
        return;
    }
    if (x->n_sends == x->cap_sends) {
        x->cap_sends = x->cap_sends ? 2 * x->cap_sends : 16;
        Send *grown = core_alloc((size_t)x->cap_sends * sizeof(Send));
        if (x->n_sends) memcpy(grown, x->sends, (size_t)x->n_sends * sizeof(Send));
        core_free(x->sends);
        x->sends = grown;
    }
    x->sends[x->n_sends++] = (Send){comm_isend(r->pp, buf, r->n_act, COMM_F32, dst, tag_of(kind, pipe, mb)), buf};
}

// The message of `kind` for (pipe, mb) at this rank, coming from position k of the path of
// micro-batch path (a new buffer (n_act), freed by the caller).
static float *take(Exec *x, int kind, int pipe, int mb, int path, int k) {
    const PipeRun *r = x->r;
    const int src = sched_path_rank(x->s, path, k);
    if (src == r->rank) {
        float **slot = local_slot(x, kind, pipe, mb);
        float *buf = *slot;
        CHECK(buf != NULL, "pipeline: rank %d needs a local message %d of micro-batch %d that was "
              "never handed over", r->rank, kind, mb);
        *slot = NULL;
        return buf;
    }
    float *buf = core_alloc(r->n_act * sizeof(float));  // (n_act)
    comm_recv(r->pp, buf, r->n_act, COMM_F32, src, tag_of(kind, pipe, mb));
    return buf;
}

static PipeStage *stage_of(const PipeRun *r, int pipe) {
    PipeStage *st = r->stage[pipe];
    CHECK(st != NULL, "pipeline: rank %d has no stage in the %s pipe", r->rank, sched_pipe_name(pipe));
    return st;
}

static int position(const Exec *x, const SchedCell *c) {
    const int k = sched_path_pos(x->s, x->r->rank, c->pipe, c->mb);
    CHECK(k >= 0, "pipeline: micro-batch %d never visits the %s pipe of rank %d", c->mb,
          sched_pipe_name(c->pipe), x->r->rank);
    return k;
}

// The message an op part needs before it runs (NULL if none): a forward (MSG_ACT) at position k of
// the path of micro-batch path takes the activation from k − 1, a backward (MSG_GRAD) the gradient
// from k + 1.
static float *input_of(Exec *x, int kind, const SchedCell *c, int path, int k) {
    if (kind == MSG_ACT) return k > 0 ? take(x, MSG_ACT, c->pipe, c->mb, path, k - 1) : NULL;
    return k < x->last ? take(x, MSG_GRAD, c->pipe, c->mb, path, k + 1) : NULL;
}

// Forward of c at position k of the path of micro-batch path, given its input h_in (freed here).
static void run_forward(Exec *x, const SchedCell *c, int path, int k, float *h_in) {
    PipeStage *st = stage_of(x->r, c->pipe);
    const float *out = st->forward(st->ctx, c->mb, h_in);
    core_free(h_in);
    if (k < x->last) post(x, MSG_ACT, c->mb, path, k + 1, out);
}

static void run_weight(Exec *x, const SchedCell *c) {
    PipeStage *st = stage_of(x->r, c->pipe);
    st->backward_weight(st->ctx, c->mb);
    st->release(st->ctx, c->mb);
}

// Backward of c at position k given its output gradient dh_out (freed here).
static void run_backward(Exec *x, const SchedCell *c, int k, float *dh_out) {
    PipeStage *st = stage_of(x->r, c->pipe);
    const float *dh_in = st->backward_input(st->ctx, c->mb, dh_out);
    core_free(dh_out);
    if (k > 0) post(x, MSG_GRAD, c->mb, c->mb, k - 1, dh_in);
    if (c->defer_w) x->wq[x->wq_tail++] = *c;
    else run_weight(x, c);
}

static void exec_init(Exec *x, const PipeRun *r) {
    const Schedule *s = r->s;
    CHECK(r->pp->size == s->N && r->rank == r->pp->rank,
          "pipeline: a %d-rank schedule needs a pipeline group of %d ranks (this is rank %d of %d)",
          s->N, s->N, r->pp->rank, r->pp->size);
    CHECK(s->C <= PIPE_MAX_MB, "pipeline: %d micro-batches per step, at most %d fit the message tags",
          s->C, PIPE_MAX_MB);
    memset(x, 0, sizeof *x);
    x->r = r;
    x->s = s;
    x->last = sched_path_len(s) - 1;
    x->local = core_alloc((size_t)4 * s->C * sizeof(float *));
    x->wq = core_alloc((size_t)2 * s->C * sizeof(SchedCell));
}

// Waits for every send (under the comm timeout) and frees the executor's buffers.
static void exec_finish(Exec *x) {
    for (int i = 0; i < x->n_sends; i++) {
        comm_wait(x->sends[i].req);
        core_free(x->sends[i].buf);
    }
    for (int i = 0; i < 4 * x->s->C; i++)
        CHECK(x->local[i] == NULL, "pipeline: rank %d kept a local message nobody took", x->r->rank);
    core_free(x->sends);
    core_free(x->local);
    core_free(x->wq);
}

void pipe_run(const PipeRun *r) {
    Exec x;
    exec_init(&x, r);
    const int n = r->s->n_ops[r->rank];
    const SchedOp *ops = r->s->ops[r->rank];
    for (int i = 0; i < n; i++) {
        const SchedOp *op = &ops[i];
        const int has_f = op->kind == SCHED_F || op->kind == SCHED_FB;
        const int has_b = op->kind == SCHED_B || op->kind == SCHED_FB;
        const int kf = has_f ? position(&x, &op->f) : -1, kb = has_b ? position(&x, &op->b) : -1;
        // Inputs first, so that a traced op spans its compute and sends, not the wait for its
        // inputs (that wait is the bubble). An F&B waits for both, as the validator assumes.
        float *h_in = has_f ? input_of(&x, MSG_ACT, &op->f, op->f.mb, kf) : NULL;
        float *dh_out = has_b ? input_of(&x, MSG_GRAD, &op->b, op->b.mb, kb) : NULL;
        const double t0 = r->trace ? wall_us() : 0;
        if (has_f) run_forward(&x, &op->f, op->f.mb, kf, h_in);
        if (has_b) run_backward(&x, &op->b, kb, dh_out);
        if (op->kind == SCHED_W) {
            CHECK(x.wq_head < x.wq_tail, "pipeline: rank %d op %d is a W with no deferred backward",
                  r->rank, i);
            const SchedCell c = x.wq[x.wq_head++];
            CHECK(c.mb == op->b.mb && c.pipe == op->b.pipe,
                  "pipeline: rank %d op %d completes micro-batch %d (%s) but the oldest deferred "
                  "backward is micro-batch %d (%s)", r->rank, i, op->b.mb, sched_pipe_name(op->b.pipe),
                  c.mb, sched_pipe_name(c.pipe));
            run_weight(&x, &c);
        }
        CHECK(has_f || has_b || op->kind == SCHED_W, "pipeline: unknown op kind %d", op->kind);
        if (r->trace) r->trace[i] = (SimEvent){*op, t0, wall_us()};
        reap_sends(&x);
    }
    CHECK(x.wq_head == x.wq_tail, "pipeline: rank %d ends the step with %d deferred W's not run",
          r->rank, x.wq_tail - x.wq_head);
    exec_finish(&x);
}

void pipe_run_forward(const PipeRun *r, int n) {
    Exec x;
    exec_init(&x, r);
    CHECK(n <= r->s->C, "pipeline: %d forward micro-batches, the schedule has %d", n, r->s->C);
    const int L = sched_path_len(r->s);
    for (int mb = 0; mb < n; mb++)
        for (int k = 0; k < L; k++) {
            if (sched_path_rank(r->s, 0, k) != r->rank) continue;
            // Every micro-batch follows micro-batch 0's path.
            const SchedCell c = {mb, sched_path_pipe(r->s, 0, k), 0};
            run_forward(&x, &c, 0, k, input_of(&x, MSG_ACT, &c, 0, k));
            PipeStage *st = stage_of(r, c.pipe);
            st->release(st->ctx, mb);
            reap_sends(&x);
        }
    exec_finish(&x);
}
