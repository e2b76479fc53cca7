// Communicators (see comm.h): argument checks and one-process shortcuts in front, the MPI backend
// behind. Every MPI call goes through MPI_CHECK (file, line, rank, MPI's own message); every
// transfer is an MPI_I* call completed by a polling loop with a deadline.
#include "parallel/comm.h"

#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "framework/core/check.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/timer.h"

static double g_timeout = COMM_DEFAULT_TIMEOUT;
static int g_mpi_started = 0;  // comm_init started MPI (so comm_finalize calls MPI_Finalize)
static int g_threads_ok = 1;   // MPI runs with MPI_THREAD_MULTIPLE, or there is no MPI
static Comm g_world = {.name = "world", .rank = 0, .size = 1};

size_t comm_type_size(CommType t) {
    switch (t) {
    case COMM_F32: return sizeof(float);
    case COMM_F64: return sizeof(double);
    case COMM_I32: return sizeof(int32_t);
    case COMM_I64: return sizeof(int64_t);
    case COMM_B16: return sizeof(uint16_t);
    }
    FATAL("comm: unknown element type %d", (int)t);
}

void comm_set_timeout(double seconds) {
    CHECK(seconds > 0, "comm: the timeout must be positive, got %g s", seconds);
    g_timeout = seconds;
}

double comm_timeout(void) { return g_timeout; }

Comm *comm_world(void) { return &g_world; }

int comm_threads_ok(void) { return g_threads_ok; }

// "rank r" of c, with its world rank where c is a sub-group: "rank 1" alone on group pp read as
// world rank 1 (review, 2026-12-05), which may be the rank that printed it.
static void peer_name(char *out, size_t n, const Comm *c, int r) {
    if (c->world_of && r >= 0 && r < c->size) snprintf(out, n, "rank %d (world rank %d)", r, c->world_of[r]);
    else snprintf(out, n, "rank %d", r);
}

const char *comm_p2p_name(char *buf, const Comm *c, int dst, int src) {
    char d[40], s[40];
    peer_name(d, sizeof d, c, dst);
    peer_name(s, sizeof s, c, src);
    if (dst >= 0 && src >= 0) snprintf(buf, COMM_OP_NAME_MAX, "send to %s / recv from %s", d, s);
    else if (dst >= 0) snprintf(buf, COMM_OP_NAME_MAX, "send to %s", d);
    else snprintf(buf, COMM_OP_NAME_MAX, "recv from %s", s);
    return buf;
}

void comm_timed_out(const Comm *c, const char *op) {
    fflush(stdout);
    fprintf(stderr, "moelab: error [rank %d]: %s on group %s timed out after %gs\n", core_rank(), op,
            c->name, g_timeout);
    fflush(stderr);
    int up = 0, down = 0;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    if (up && !down) MPI_Abort(MPI_COMM_WORLD, CORE_EXIT_FAILURE);
    exit(CORE_EXIT_FAILURE);
}

// ---------------------------------------------------------------------------------------------
// MPI backend.

#define MPI_CHECK(call) mpi_check((call), #call, __FILE__, __LINE__)

static void mpi_check(int rc, const char *what, const char *file, int line) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error code %d", rc);
    core_fatal_at(file, line, CORE_EXIT_FAILURE, "%s failed: %s", what, msg);
}

static MPI_Comm mpi_of(const Comm *c) { return *(const MPI_Comm *)c->impl; }

static MPI_Datatype mpi_type(CommType t) {
    switch (t) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_I32: return MPI_INT32_T;
    case COMM_I64: return MPI_INT64_T;
    case COMM_B16: return MPI_UINT16_T;
    }
    FATAL("comm: unknown element type %d", (int)t);
}

static MPI_Op mpi_op(CommOp op) { return op == COMM_MAX ? MPI_MAX : MPI_SUM; }

// MPI counts are ints: a larger transfer is one clear error, not a silent truncation.
static int mpi_count(const Comm *c, size_t n, const char *op) {
    CHECK(n <= (size_t)INT_MAX, "comm: %s on group %s moves %zu elements, more than MPI's limit %d",
          op, c->name, n, INT_MAX);
    return (int)n;
}

// Completes the requests or ends the job at the deadline. The first polls yield the core; later
// ones sleep, so that ranks oversubscribing the cores leave the CPU to the peers they wait for.
static void mpi_wait(const Comm *c, int n, MPI_Request *req, const char *op) {
    const double deadline = core_now() + g_timeout;
    for (long polls = 0;; polls++) {
        int done = 0;
        MPI_CHECK(MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE));
        if (done) return;
        if (core_now() > deadline) comm_timed_out(c, op);
        if (polls < 64) {
            sched_yield();
        } else {
            struct timespec ts = {0, 50 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

static void mpi_sendrecv(Comm *c, const void *send, size_t send_n, int dst, void *recv, size_t recv_n,
                         int src, CommType t, int tag) {
    MPI_Request r[2];
    int n = 0;
    char op[COMM_OP_NAME_MAX];
    comm_p2p_name(op, c, dst, src);
    if (src >= 0)
        MPI_CHECK(MPI_Irecv(recv, mpi_count(c, recv_n, op), mpi_type(t), src, tag, mpi_of(c), &r[n++]));
    if (dst >= 0)
        MPI_CHECK(MPI_Isend(send, mpi_count(c, send_n, op), mpi_type(t), dst, tag, mpi_of(c), &r[n++]));
    mpi_wait(c, n, r, op);
}

static void mpi_barrier(Comm *c) {
    MPI_Request r;
    MPI_CHECK(MPI_Ibarrier(mpi_of(c), &r));
    mpi_wait(c, 1, &r, "barrier");
}

static void *mpi_split(Comm *c, int color, int key, int *rank, int *size) {
    MPI_Comm *s = core_alloc(sizeof *s);
    MPI_CHECK(MPI_Comm_split(mpi_of(c), color, key, s));
    MPI_CHECK(MPI_Comm_rank(*s, rank));
    MPI_CHECK(MPI_Comm_size(*s, size));
    return s;
}

static void mpi_free(void *impl) {
    MPI_CHECK(MPI_Comm_free((MPI_Comm *)impl));
    core_free(impl);
}

// A request of the MPI backend: one MPI request, the name its timeout message gives, and what MPI
// reads until the operation completes (freed with the request): an all-to-all-v's argument arrays.
typedef struct {
    MPI_Request r;
    char op[COMM_OP_NAME_MAX];
    int *ints;
} MpiReq;

static void mpi_req_free(MpiReq *q) {
    core_free(q->ints);
    core_free(q);
}

static MpiReq *mpi_req(const char *op) {
    MpiReq *q = core_alloc(sizeof *q);
    snprintf(q->op, sizeof q->op, "%s", op);
    return q;
}

static void *mpi_isend(Comm *c, const void *buf, size_t n, int dst, CommType t, int tag) {
    char op[COMM_OP_NAME_MAX];
    MpiReq *q = mpi_req(comm_p2p_name(op, c, dst, -1));
    MPI_CHECK(MPI_Isend(buf, mpi_count(c, n, q->op), mpi_type(t), dst, tag, mpi_of(c), &q->r));
    return q;
}

static void *mpi_iallreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op) {
    MpiReq *q = mpi_req("all-reduce");
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, mpi_count(c, n, q->op), mpi_type(t), mpi_op(op),
                             mpi_of(c), &q->r));
    return q;
}

static void *mpi_ireduce_scatter(Comm *c, const void *send, void *recv, size_t n, CommType t, CommOp op) {
    MpiReq *q = mpi_req("reduce-scatter");
    mpi_count(c, n * (size_t)c->size, q->op);
    MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, mpi_count(c, n, q->op), mpi_type(t), mpi_op(op),
                                        mpi_of(c), &q->r));
    return q;
}

static void *mpi_iallgather(Comm *c, const void *send, void *recv, size_t n, CommType t) {
    MpiReq *q = mpi_req("all-gather");
    const int k = mpi_count(c, n, q->op);
    mpi_count(c, n * (size_t)c->size, q->op);
    MPI_CHECK(MPI_Iallgather(send, k, mpi_type(t), recv, k, mpi_type(t), mpi_of(c), &q->r));
    return q;
}

// One MPI_Ialltoallv over buffers packed in rank order; its count and displacement arrays stay
// with the request (MPI reads them until the operation completes).
static void *mpi_ialltoallv(Comm *c, const void *send, const size_t *send_counts, void *recv,
                            const size_t *recv_counts, CommType t) {
    MpiReq *q = mpi_req("all-to-all-v");
    const int P = c->size;
    int *v = q->ints = core_alloc((size_t)4 * P * sizeof(int));  // send counts, displs; recv counts, displs
    size_t soff = 0, roff = 0;
    for (int j = 0; j < P; j++) {
        v[j] = mpi_count(c, send_counts[j], q->op);
        v[P + j] = mpi_count(c, soff, q->op);
        v[2 * P + j] = mpi_count(c, recv_counts[j], q->op);
        v[3 * P + j] = mpi_count(c, roff, q->op);
        soff += send_counts[j];
        roff += recv_counts[j];
    }
    MPI_CHECK(MPI_Ialltoallv(send, v, v + P, mpi_type(t), recv, v + 2 * P, v + 3 * P, mpi_type(t),
                             mpi_of(c), &q->r));
    return q;
}

static int mpi_test(Comm *c, void *req) {
    (void)c;
    int done = 0;
    MPI_CHECK(MPI_Test(&((MpiReq *)req)->r, &done, MPI_STATUS_IGNORE));
    if (done) mpi_req_free(req);
    return done;
}

static void mpi_wait_one(Comm *c, void *req) {
    MpiReq *q = req;
    mpi_wait(c, 1, &q->r, q->op);
    mpi_req_free(q);
}

static const CommOps MPI_OPS = {
    .sendrecv = mpi_sendrecv,
    .barrier = mpi_barrier,
    .split = mpi_split,
    .free = mpi_free,
    .isend = mpi_isend,
    .test = mpi_test,
    .wait = mpi_wait_one,
    .iallreduce = mpi_iallreduce,
    .ireduce_scatter = mpi_ireduce_scatter,
    .iallgather = mpi_iallgather,
    .ialltoallv = mpi_ialltoallv,
};

static MPI_Comm g_world_mpi;

// Bad input is found by every rank alike (they read the same config and files) but not at the same
// moment: the first to call MPI_Abort ended the others before they said theirs (review, 2026-12-06:
// a resume of another model's checkpoint under mpirun printed rank 1's message only). A usage error
// waits a second first, so that every rank's message is out; other failures end the job at once.
static void mpi_abort_hook(int code) {
    if (code == CORE_EXIT_USAGE) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
    MPI_Abort(MPI_COMM_WORLD, code);
}

// mpirun (OpenMPI) and PMI/PMIx launchers announce themselves in the environment.
static int launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK") ||
           getenv("PMI_SIZE");
}

void comm_init(int *argc, char ***argv) {
    int up = 0;
    MPI_CHECK(MPI_Initialized(&up));
    if (!up) {
        if (!launched_by_mpirun()) return;  // one process: the world needs no MPI
        // The pipeline's F&B overlap calls MPI from two threads at once (on different groups).
        int provided = MPI_THREAD_SINGLE;
        MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
        g_mpi_started = 1;
    }
    // Asked again: MPI may have been started by someone else (the MPI tests' main).
    int level = MPI_THREAD_SINGLE;
    MPI_CHECK(MPI_Query_thread(&level));
    g_threads_ok = level >= MPI_THREAD_MULTIPLE;
    // Errors come back to MPI_CHECK (with MPI's message) instead of MPI's default abort.
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    g_world_mpi = MPI_COMM_WORLD;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_world.rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_world.size));
    g_world.ops = g_world.size > 1 ? &MPI_OPS : NULL;
    g_world.impl = &g_world_mpi;
    core_set_rank(g_world.rank, g_world.size);
    if (g_world.size > 1) core_set_abort_hook(mpi_abort_hook);
}

void comm_finalize(void) {
    if (!g_mpi_started) return;
    // A dead peer would hang MPI_Finalize; the barrier turns that into a timeout message.
    comm_barrier(&g_world);
    core_set_abort_hook(NULL);
    MPI_CHECK(MPI_Finalize());
    g_mpi_started = 0;
    g_threads_ok = 1;
    g_world.rank = 0;
    g_world.size = 1;
    g_world.ops = NULL;
    g_world.impl = NULL;
}

// ---------------------------------------------------------------------------------------------
// Front end: argument checks, then one-process shortcuts (copies) or the backend.

static void check_peer(const Comm *c, int peer, int tag, const char *op) {
    CHECK(peer >= 0 && peer < c->size, "comm: %s on group %s names rank %d, outside [0, %d)", op,
          c->name, peer, c->size);
    CHECK(tag >= 0 && tag <= 32767, "comm: %s on group %s: tag %d outside [0, 32767]", op, c->name, tag);
}

static void copy(void *dst, const void *src, size_t n, CommType t) {
    if (dst != src && n > 0) memmove(dst, src, n * comm_type_size(t));
}

Comm *comm_split(Comm *c, int color, int key, const char *name) {
    CHECK(color >= 0, "comm: split of group %s into '%s' needs color >= 0, got %d", c->name, name, color);
    CHECK(strlen(name) < COMM_NAME_MAX, "comm: group name '%s' is too long", name);
    Comm *s = core_alloc(sizeof *s);
    strcpy(s->name, name);
    s->rank = 0;
    s->size = 1;
    if (c->ops) {
        // MPI_Comm_split blocks; the timed barrier first turns a missing rank into a timeout.
        comm_barrier(c);
        void *impl = c->ops->split(c, color, key, &s->rank, &s->size);
        if (s->size > 1) {
            s->ops = c->ops;
            s->impl = impl;
            // Its members' world ranks, for the messages that name a peer.
            const int32_t me = (int32_t)core_rank();
            s->world_of = core_alloc((size_t)s->size * sizeof *s->world_of);
            comm_allgather(s, &me, s->world_of, 1, COMM_I32);
        } else {
            c->ops->free(impl);
        }
    }
    return s;
}

void comm_free(Comm *c) {
    if (!c) return;
    CHECK(c != &g_world, "comm: the world communicator is not freed by comm_free");
    if (c->ops) c->ops->free(c->impl);
    core_free(c->world_of);
    core_free(c);
}

// Reductions add numbers; COMM_B16 words are only moved.
static void check_reducible(const Comm *c, CommType t, const char *op) {
    CHECK(t != COMM_B16, "comm: %s on group %s of 16-bit words: they are moved, never reduced", op, c->name);
}

// The blocking collectives are the non-blocking ones, waited for at once.
void comm_allreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op) {
    comm_wait(comm_iallreduce(c, buf, n, t, op));
}

void comm_allgather(Comm *c, const void *send, void *recv, size_t n, CommType t) {
    comm_wait(comm_iallgather(c, send, recv, n, t));
}

void comm_reduce_scatter(Comm *c, const void *send, void *recv, size_t n, CommType t, CommOp op) {
    comm_wait(comm_ireduce_scatter(c, send, recv, n, t, op));
}

void comm_alltoallv(Comm *c, const void *send, const size_t *send_counts, void *recv,
                    const size_t *recv_counts, CommType t) {
    comm_wait(comm_ialltoallv(c, send, send_counts, recv, recv_counts, t));
}

void comm_alltoall(Comm *c, const void *send, void *recv, size_t n, CommType t) {
    size_t *counts = core_alloc((size_t)c->size * sizeof(size_t));  // (size) n each way
    for (int j = 0; j < c->size; j++) counts[j] = n;
    comm_alltoallv(c, send, counts, recv, counts, t);
    core_free(counts);
}

void comm_sendrecv(Comm *c, const void *send, size_t send_n, int dst, void *recv, size_t recv_n,
                   int src, CommType t, int tag) {
    check_peer(c, dst, tag, "send/recv");
    check_peer(c, src, tag, "send/recv");
    if (c->ops) {
        c->ops->sendrecv(c, send, send_n, dst, recv, recv_n, src, t, tag);
        return;
    }
    CHECK(send_n == recv_n, "comm: send/recv on one-process group %s sends %zu elements but expects %zu",
          c->name, send_n, recv_n);
    copy(recv, send, send_n, t);
}

// check_peer, and a lone send or receive addressed to this rank itself could never complete.
static void check_lone_peer(const Comm *c, int peer, int tag, const char *op) {
    check_peer(c, peer, tag, op);
    CHECK(peer != c->rank, "comm: %s on group %s addressed to this rank itself (%d); use comm_sendrecv",
          op, c->name, peer);
}

void comm_send(Comm *c, const void *buf, size_t n, CommType t, int dst, int tag) {
    check_lone_peer(c, dst, tag, "send");
    c->ops->sendrecv(c, buf, n, dst, NULL, 0, -1, t, tag);
}

void comm_recv(Comm *c, void *buf, size_t n, CommType t, int src, int tag) {
    check_lone_peer(c, src, tag, "recv");
    c->ops->sendrecv(c, NULL, 0, -1, buf, n, src, t, tag);
}

void comm_barrier(Comm *c) {
    if (c->ops) c->ops->barrier(c);
}

struct CommRequest {
    Comm *c;
    void *impl;  // the backend's request; NULL: completed when started (a one-process group)
};

static CommRequest *request(Comm *c, void *impl) {
    CommRequest *r = core_alloc(sizeof *r);
    r->c = c;
    r->impl = impl;
    return r;
}

CommRequest *comm_isend(Comm *c, const void *buf, size_t n, CommType t, int dst, int tag) {
    check_lone_peer(c, dst, tag, "send");
    return request(c, c->ops->isend(c, buf, n, dst, t, tag));
}

CommRequest *comm_iallreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op) {
    check_reducible(c, t, "all-reduce");
    return request(c, c->ops && n > 0 ? c->ops->iallreduce(c, buf, n, t, op) : NULL);
}

CommRequest *comm_ireduce_scatter(Comm *c, const void *send, void *recv, size_t n, CommType t, CommOp op) {
    check_reducible(c, t, "reduce-scatter");
    if (c->ops) return request(c, n > 0 ? c->ops->ireduce_scatter(c, send, recv, n, t, op) : NULL);
    copy(recv, send, n, t);
    return request(c, NULL);
}

CommRequest *comm_iallgather(Comm *c, const void *send, void *recv, size_t n, CommType t) {
    if (c->ops) return request(c, n > 0 ? c->ops->iallgather(c, send, recv, n, t) : NULL);
    copy(recv, send, n, t);
    return request(c, NULL);
}

CommRequest *comm_ialltoallv(Comm *c, const void *send, const size_t *send_counts, void *recv,
                             const size_t *recv_counts, CommType t) {
    if (c->ops) return request(c, c->ops->ialltoallv(c, send, send_counts, recv, recv_counts, t));
    CHECK(send_counts[0] == recv_counts[0],
          "comm: all-to-all-v on one-process group %s sends %zu elements to itself but expects %zu",
          c->name, send_counts[0], recv_counts[0]);
    copy(recv, send, send_counts[0], t);
    return request(c, NULL);
}

int comm_test(CommRequest *r) {
    if (r->impl && !r->c->ops->test(r->c, r->impl)) return 0;
    core_free(r);
    return 1;
}

void comm_wait(CommRequest *r) {
    if (r->impl) r->c->ops->wait(r->c, r->impl);
    core_free(r);
}
