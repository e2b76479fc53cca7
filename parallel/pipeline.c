// The pipeline executor (see pipeline.h). Each op's sends and receives follow from the path of its
// micro-batch (sched_path_*). Sends are non-blocking from an executor-owned copy, so a rank never
// waits for a peer to post its receive. A message is known by (kind, pipe, micro-batch) of the
// position that receives it: over MPI that is its tag, and the receiver picks exactly the message
// it needs whatever order the link delivers them in. NCCL has no tags: there each directed link
// is a communicator of its own (PipeLinks) whose messages arrive in the order the sender posts
// them, and the receiver, which knows the sender's op list (the schedule), replays it to know that
// order; it receives into a mailbox until the message it needs has arrived. On a GPU an F&B op may
// run its two halves at once, the forward on a worker thread with a stream of its own (PipeFb).
#include "parallel/pipeline.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "framework/core/check.h"
#include "framework/core/cuda.h"
#include "framework/core/mem.h"
#include "layers/ops.h"
#include "parallel/comm_nccl.h"

enum { MSG_ACT = 0, MSG_GRAD = 1 };

// Tags must fit the communicator's [0, 32767]: 2 kinds × 2 pipes × micro-batch. The config keys
// grad_accum and chunks are bounded by the same 8192 (framework/core/config.c), so a command line
// asking for more is refused there.
#define PIPE_MAX_MB (32768 / 4)

static int tag_of(int kind, int pipe, int mb) { return (mb * 2 + pipe) * 2 + kind; }

typedef struct {
    CommRequest *req;
    void *buf;  // (msg_bytes) the message, owned until the send completes
} Send;

typedef struct {
    const PipeRun *r;
    const Schedule *s;
    int last;              // the last position of a path
    int n_fwd;             // pipe_run_forward's micro-batches; 0 in a training step
    // (2 kinds, 2 pipes, C) messages that have arrived and wait to be taken: handed over on this
    // rank, or (over links) received ahead of the one a receive was waiting for
    void **box;
    int *order[2];         // [neighbour] over links: box slots in the order the neighbour sends them
    int n_order[2], next[2];  // [neighbour] messages it sends in the step, and received so far
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

// Messages live in the stage's memory: the device's through ops, else the host's. A message is
// written in full (by the copy of a send, or by a receive) before it is read: on a device no fill.
static void *msg_alloc(const PipeRun *r) {
    return r->ops ? r->ops->alloc_uninit(r->msg_bytes) : core_alloc(r->msg_bytes);
}
static void msg_free(const PipeRun *r, void *p) {
    if (r->ops) r->ops->free(p);
    else core_free(p);
}

// A message travels as 32-bit words (the p2p calls move bytes; bf16 activations pair up).
static size_t msg_words(const PipeRun *r) { return r->msg_bytes / 4; }

static int slot_of(const Exec *x, int kind, int pipe, int mb) {
    return (kind * 2 + pipe) * x->s->C + mb;
}

// Which of this rank's links leads to pp rank `peer` (0: the previous rank, 1: the next).
static int link_of(const Exec *x, int peer) {
    const int me = x->r->rank;
    CHECK(peer == me - 1 || peer == me + 1, "pipeline: rank %d exchanges a message with rank %d, "
          "which is not its neighbour", me, peer);
    return peer == me + 1;
}

// Frees the buffers of completed sends.
static void reap_sends(Exec *x) {
    int k = 0;
    for (int i = 0; i < x->n_sends; i++) {
        if (comm_test(x->sends[i].req)) msg_free(x->r, x->sends[i].buf);
        else x->sends[k++] = x->sends[i];
    }
    x->n_sends = k;
}

// Sends a copy of msg (msg_bytes) about micro-batch mb to position k of the path of micro-batch
// path (mb itself in a training step).
static void post(Exec *x, int kind, int mb, int path, int k, const void *msg) {
    const PipeRun *r = x->r;
    const int dst = sched_path_rank(x->s, path, k), pipe = sched_path_pipe(x->s, path, k);
    void *buf = msg_alloc(r);  // (msg_bytes)
    if (r->ops) r->ops->copy(buf, msg, r->msg_bytes);
    else memcpy(buf, msg, r->msg_bytes);
    if (dst == r->rank) {
        void **slot = &x->box[slot_of(x, kind, pipe, mb)];
        CHECK(*slot == NULL, "pipeline: message %d of micro-batch %d handed over twice", kind, mb);
        *slot = buf;
        return;
    }
    if (x->n_sends == x->cap_sends) {
        x->cap_sends = x->cap_sends ? 2 * x->cap_sends : 16;
        x->sends = core_grow(x->sends, (size_t)x->n_sends, (size_t)x->cap_sends, sizeof(Send));
    }
    CommRequest *req;
    if (r->links) {
        Comm *link = r->links->to[link_of(x, dst)];
        req = comm_isend(link, buf, msg_words(r), COMM_I32, 1 - link->rank, 0);
    } else {
        req = comm_isend(r->pp, buf, msg_words(r), COMM_I32, dst, tag_of(kind, pipe, mb));
    }
    x->sends[x->n_sends++] = (Send){req, buf};
}

// The message of `kind` for (pipe, mb) at this rank, coming from position k of the path of
// micro-batch path (a buffer (msg_bytes) that the caller frees with msg_free).
static void *take(Exec *x, int kind, int pipe, int mb, int path, int k) {
    const PipeRun *r = x->r;
    const int src = sched_path_rank(x->s, path, k);
    void **slot = &x->box[slot_of(x, kind, pipe, mb)];
    if (src != r->rank && !r->links) {
        void *buf = msg_alloc(r);  // (msg_bytes)
        comm_recv(r->pp, buf, msg_words(r), COMM_I32, src, tag_of(kind, pipe, mb));
        return buf;
    }
    if (src != r->rank) {
        // Everything the neighbour sent on this link before our message arrives first.
        const int j = link_of(x, src);
        Comm *link = r->links->from[j];
        while (*slot == NULL) {
            CHECK(x->next[j] < x->n_order[j], "pipeline: rank %d waits for message %d of micro-batch "
                  "%d, which rank %d never sends", r->rank, kind, mb, src);
            void *buf = msg_alloc(r);  // (msg_bytes)
            comm_recv(link, buf, msg_words(r), COMM_I32, 1 - link->rank, 0);
            x->box[x->order[j][x->next[j]++]] = buf;
        }
    }
    void *buf = *slot;
    CHECK(buf != NULL, "pipeline: rank %d needs a local message %d of micro-batch %d that was "
          "never handed over", r->rank, kind, mb);
    *slot = NULL;
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
static void *input_of(Exec *x, int kind, const SchedCell *c, int path, int k) {
    if (kind == MSG_ACT) return k > 0 ? take(x, MSG_ACT, c->pipe, c->mb, path, k - 1) : NULL;
    return k < x->last ? take(x, MSG_GRAD, c->pipe, c->mb, path, k + 1) : NULL;
}

// Forward of c at position k of the path of micro-batch path, given its input h_in (freed here).
static void run_forward(Exec *x, const SchedCell *c, int path, int k, void *h_in) {
    PipeStage *st = stage_of(x->r, c->pipe);
    const void *out = st->forward(st->ctx, c->mb, h_in);
    if (h_in) msg_free(x->r, h_in);
    if (k < x->last) post(x, MSG_ACT, c->mb, path, k + 1, out);
}

static void run_weight(Exec *x, const SchedCell *c) {
    PipeStage *st = stage_of(x->r, c->pipe);
    st->backward_weight(st->ctx, c->mb);
    st->release(st->ctx, c->mb);
}

// Backward of c at position k given its output gradient dh_out (freed here).
static void run_backward(Exec *x, const SchedCell *c, int k, void *dh_out) {
    PipeStage *st = stage_of(x->r, c->pipe);
    const void *dh_in = st->backward_input(st->ctx, c->mb, dh_out);
    if (dh_out) msg_free(x->r, dh_out);
    if (k > 0) post(x, MSG_GRAD, c->mb, c->mb, k - 1, dh_in);
    if (c->defer_w) x->wq[x->wq_tail++] = *c;
    else run_weight(x, c);
}

// ---------------------------------------------------------------------------------------------
// The F&B overlap.

struct PipeFb {
    CoreCudaStream *stream;  // the worker's side stream and cuBLAS handle
    void *fork;              // recorded on the main stream before the worker starts
    void *join;              // recorded on the side stream after the forward
};

PipeFb *pipe_fb_create(void) {
    PipeFb *fb = core_alloc(sizeof *fb);
    fb->stream = core_cuda_stream_create();
    fb->fork = core_cuda_event_create();
    fb->join = core_cuda_event_create();
    return fb;
}

void pipe_fb_free(PipeFb *fb) {
    if (!fb) return;
    core_cuda_stream_free(fb->stream);
    core_cuda_event_destroy(fb->fork);
    core_cuda_event_destroy(fb->join);
    core_free(fb);
}

typedef struct {
    PipeFb *fb;
    PipeStage *st;
    int mb;
    const void *h_in;   // (msg_bytes) the forward's input, NULL on the first stage
    const void *out;    // its output, set by the worker
} FbForward;

// The worker thread: the forward on the side stream, ordered after everything the main stream
// had queued when the op began (the received input among it).
static void *fb_forward(void *arg) {
    FbForward *t = arg;
    core_cuda_use_stream(t->fb->stream);
    core_cuda_stream_wait(t->fb->fork);
    t->out = t->st->forward(t->st->ctx, t->mb, t->h_in);
    core_cuda_event_record(t->fb->join);
    core_cuda_use_stream(NULL);
    return NULL;
}

// An F&B op with its halves at once: the forward of op->f (input h_in, position kf) on the worker,
// the backward of op->b (dh_out, kb) here, input and (unless deferred) weight gradients. The halves
// touch different Models, activation stores and messages. After the join the main stream waits for
// the side stream, so the sends, the frees and every later op see the forward's results; the sends
// go out in the order of the sequential op (F's output first), which the GPU links' receivers
// expect. The results are those of the sequential op: the same kernels on the same data.
static void run_fb_overlapped(Exec *x, const SchedOp *op, int kf, int kb, void *h_in, void *dh_out) {
    PipeFb *fb = x->r->fb;
    PipeStage *sb = stage_of(x->r, op->b.pipe);
    FbForward t = {fb, stage_of(x->r, op->f.pipe), op->f.mb, h_in, NULL};
    core_cuda_event_record(fb->fork);
    pthread_t worker;
    CHECK(pthread_create(&worker, NULL, fb_forward, &t) == 0, "pipeline: cannot start the F&B worker thread");
    const void *dh_in = sb->backward_input(sb->ctx, op->b.mb, dh_out);
    if (!op->b.defer_w) sb->backward_weight(sb->ctx, op->b.mb);
    CHECK(pthread_join(worker, NULL) == 0, "pipeline: cannot join the F&B worker thread");
    core_cuda_stream_wait(fb->join);
    if (h_in) msg_free(x->r, h_in);
    if (dh_out) msg_free(x->r, dh_out);
    if (kf < x->last) post(x, MSG_ACT, op->f.mb, op->f.mb, kf + 1, t.out);
    // dh_in lives in the backward's activations: released only once it has been copied out.
    if (kb > 0) post(x, MSG_GRAD, op->b.mb, op->b.mb, kb - 1, dh_in);
    if (op->b.defer_w) x->wq[x->wq_tail++] = op->b;
    else sb->release(sb->ctx, op->b.mb);
}

// Appends to keys (if non-NULL) the box slot, at dst, of every message that rank src sends to
// rank dst, in the order src posts them: its ops in order (an F&B sends its F's output first), or
// pipe_run_forward's loop for n_fwd > 0. Returns their number.
static int sends_between(const Exec *x, int src, int dst, int *keys) {
    const Schedule *s = x->s;
    int n = 0;
#define SENT(kind, pipe, mb)                                       \
    do {                                                           \
        if (keys) keys[n] = slot_of(x, (kind), (pipe), (mb));      \
        n++;                                                       \
    } while (0)
    if (x->n_fwd > 0) {
        for (int mb = 0; mb < x->n_fwd; mb++)
            for (int k = 0; k < x->last; k++)
                if (sched_path_rank(s, 0, k) == src && sched_path_rank(s, 0, k + 1) == dst)
                    SENT(MSG_ACT, sched_path_pipe(s, 0, k + 1), mb);
        return n;
    }
    for (int i = 0; i < s->n_ops[src]; i++) {
        const SchedOp *op = &s->ops[src][i];
        if (op->kind == SCHED_F || op->kind == SCHED_FB) {
            const int mb = op->f.mb, k = sched_path_pos(s, src, op->f.pipe, mb);
            if (k < x->last && sched_path_rank(s, mb, k + 1) == dst)
                SENT(MSG_ACT, sched_path_pipe(s, mb, k + 1), mb);
        }
        if (op->kind == SCHED_B || op->kind == SCHED_FB) {
            const int mb = op->b.mb, k = sched_path_pos(s, src, op->b.pipe, mb);
            if (k > 0 && sched_path_rank(s, mb, k - 1) == dst)
                SENT(MSG_GRAD, sched_path_pipe(s, mb, k - 1), mb);
        }
    }
#undef SENT
    return n;
}

static void exec_init(Exec *x, const PipeRun *r, int n_fwd) {
    const Schedule *s = r->s;
    // One rank sends nothing: it needs no group (a one-process run has none).
    CHECK(r->pp ? r->pp->size == s->N && r->rank == r->pp->rank : s->N == 1 && r->rank == 0,
          "pipeline: a %d-rank schedule needs a pipeline group of %d ranks (this is rank %d of %d)",
          s->N, s->N, r->rank, r->pp ? r->pp->size : 1);
    CHECK(s->C <= PIPE_MAX_MB, "pipeline: %d micro-batches per step, at most %d fit the message tags",
          s->C, PIPE_MAX_MB);
    CHECK(r->msg_bytes % 4 == 0, "pipeline: a message of %zu bytes is not whole 32-bit words", r->msg_bytes);
    memset(x, 0, sizeof *x);
    x->r = r;
    x->s = s;
    x->last = sched_path_len(s) - 1;
    x->n_fwd = n_fwd;
    x->box = core_alloc((size_t)4 * s->C * sizeof(void *));
    x->wq = core_alloc((size_t)2 * s->C * sizeof(SchedCell));
    for (int j = 0; j < 2 && r->links; j++) {
        const int peer = r->rank + (j ? 1 : -1);
        if (peer < 0 || peer >= s->N) continue;
        x->n_order[j] = sends_between(x, peer, r->rank, NULL);
        x->order[j] = core_alloc((size_t)(x->n_order[j] ? x->n_order[j] : 1) * sizeof(int));
        sends_between(x, peer, r->rank, x->order[j]);
    }
}

// Waits for every send (under the comm timeout) and frees the executor's buffers.
static void exec_finish(Exec *x) {
    for (int i = 0; i < x->n_sends; i++) {
        comm_wait(x->sends[i].req);
        msg_free(x->r, x->sends[i].buf);
    }
    for (int i = 0; i < 4 * x->s->C; i++)
        CHECK(x->box[i] == NULL, "pipeline: rank %d kept a message nobody took", x->r->rank);
    for (int j = 0; j < 2; j++)
        CHECK(x->next[j] == x->n_order[j], "pipeline: rank %d received %d of the %d messages of its "
              "%s neighbour", x->r->rank, x->next[j], x->n_order[j], j ? "next" : "previous");
    core_free(x->sends);
    core_free(x->box);
    core_free(x->order[0]);
    core_free(x->order[1]);
    core_free(x->wq);
}

void pipe_run(const PipeRun *r) {
    Exec x;
    exec_init(&x, r, 0);
    const int n = r->s->n_ops[r->rank];
    const SchedOp *ops = r->s->ops[r->rank];
    for (int i = 0; i < n; i++) {
        const SchedOp *op = &ops[i];
        const int has_f = op->kind == SCHED_F || op->kind == SCHED_FB;
        const int has_b = op->kind == SCHED_B || op->kind == SCHED_FB;
        const int kf = has_f ? position(&x, &op->f) : -1, kb = has_b ? position(&x, &op->b) : -1;
        // Inputs first, so that a traced op spans its compute and sends, not the wait for its
        // inputs (that wait is the bubble). An F&B waits for both, as the validator assumes.
        void *h_in = has_f ? input_of(&x, MSG_ACT, &op->f, op->f.mb, kf) : NULL;
        void *dh_out = has_b ? input_of(&x, MSG_GRAD, &op->b, op->b.mb, kb) : NULL;
        const double t0 = r->trace ? wall_us() : 0;
        // Two halves of one pipe would share a Model (and its activations and scratch): those run
        // one after the other. The generators always pair the two pipes.
        if (op->kind == SCHED_FB && r->fb && op->f.pipe != op->b.pipe) {
            run_fb_overlapped(&x, op, kf, kb, h_in, dh_out);
        } else {
            if (has_f) run_forward(&x, &op->f, op->f.mb, kf, h_in);
            if (has_b) run_backward(&x, &op->b, kb, dh_out);
        }
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
        if (r->trace) {
            // The GPU work of the op, queued so far, is part of it.
            if (r->ops) r->ops->sync();
            r->trace[i] = (SimEvent){*op, t0, wall_us()};
        }
        reap_sends(&x);
    }
    CHECK(x.wq_head == x.wq_tail, "pipeline: rank %d ends the step with %d deferred W's not run",
          r->rank, x.wq_tail - x.wq_head);
    exec_finish(&x);
}

void pipe_run_forward(const PipeRun *r, int n) {
    CHECK(n > 0 && n <= r->s->C, "pipeline: %d forward micro-batches, the schedule has %d", n, r->s->C);
    Exec x;
    exec_init(&x, r, n);
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

// Calls fn on each directed link of this rank in one order that every rank agrees on: the pairs of
// neighbours (2i, 2i+1), then (2i+1, 2i+2) (a rank is in at most one pair of a phase, so the
// pairs' collective set-ups and finalizations cannot wait on each other), in a pair the
// lower-to-higher direction first. With split, fn gets the pair's host communicator (split off pp
// for the phase, collective over pp), else NULL.
static void each_link(Comm *pp, int split, void (*fn)(void *arg, Comm *pair, int peer, int sender),
                      void *arg) {
    const int me = pp->rank, N = pp->size;
    for (int phase = 0; phase < 2; phase++) {
        const int peer = (me % 2 == phase) ? me + 1 : me - 1;
        const int paired = peer >= 0 && peer < N;
        // The pair's color is its lower rank; a rank left out gets a color of its own.
        Comm *pair = split ? comm_split(pp, paired ? (me < peer ? me : peer) : N + me, me, "pp pair") : NULL;
        if (paired) {
            fn(arg, pair, peer, me < peer);  // lower to higher: the lower rank sends
            fn(arg, pair, peer, me > peer);
        }
        if (pair) comm_free(pair);
    }
}

typedef struct {
    PipeLinks *l;
    int me;            // this rank in pp
    int on_gpu;        // NCCL communicators, else MPI ones
    size_t msg_bytes;
    void *warm;        // (msg_bytes) the warm-up message, device memory
} LinkSetup;

static Comm **link_slot(PipeLinks *l, int me, int peer, int sender) {
    const int j = peer > me;
    return sender ? &l->to[j] : &l->from[j];
}

// Makes the NCCL communicator of one direction of the link with peer and moves the warm-up message
// over it: NCCL connects a pair on its first transfer, which must not wait inside a step.
static void link_create(void *arg, Comm *pair, int peer, int sender) {
    LinkSetup *u = arg;
    char name[COMM_NAME_MAX];
    snprintf(name, sizeof name, "pp %d->%d", sender ? u->me : peer, sender ? peer : u->me);
    // On the CPU (the tests of the GPU transport) a two-process MPI communicator: its messages of
    // one tag arrive in order too.
    Comm *c = u->on_gpu ? comm_nccl_create(pair, name) : comm_split(pair, 0, pair->rank, name);
    *link_slot(u->l, u->me, peer, sender) = c;
    if (sender) comm_send(c, u->warm, u->msg_bytes / 4, COMM_I32, 1 - c->rank, 0);
    else comm_recv(c, u->warm, u->msg_bytes / 4, COMM_I32, 1 - c->rank, 0);
}

static void link_free(void *arg, Comm *pair, int peer, int sender) {
    (void)pair;
    LinkSetup *u = arg;
    Comm **c = link_slot(u->l, u->me, peer, sender);
    comm_free(*c);
    *c = NULL;
}

PipeLinks *pipe_links_create(Comm *pp, const struct LayerOps *ops, size_t msg_bytes) {
    CHECK(msg_bytes % 4 == 0, "pipeline: a message of %zu bytes is not whole 32-bit words", msg_bytes);
    LinkSetup u = {core_alloc(sizeof(PipeLinks)), pp->rank, ops->dev != CORE_CPU, msg_bytes,
                   ops->alloc_uninit(msg_bytes)};  // its content is never read
    each_link(pp, 1, link_create, &u);
    ops->free(u.warm);
    u.l->pp = pp;
    return u.l;
}

void pipe_links_free(PipeLinks *l) {
    if (!l) return;
    LinkSetup u = {l, l->pp->rank, 0, 0, NULL};
    each_link(l->pp, 0, link_free, &u);
    core_free(l);
}
