// The NCCL backend (see comm_nccl.h): one non-blocking ncclComm_t per communicator with its own
// stream. Every operation orders itself after the compute stream, enqueues, and polls the
// communicator's state and the stream against comm_timeout(); on expiry it aborts the NCCL
// communicator and ends the job with the same message as the MPI backend.
#include "parallel/comm_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "framework/core/check.h"
#include "framework/core/cuda.h"
#include "framework/core/mem.h"
#include "framework/core/timer.h"

// Every communicator here is non-blocking, so ncclInProgress is an ordinary answer of any call:
// the call goes on in the background and nccl_wait below sees it through.
#define NCCL_CHECK(call) nccl_check((call), #call, __FILE__, __LINE__)

static void nccl_check(ncclResult_t r, const char *what, const char *file, int line) {
    if (r == ncclSuccess || r == ncclInProgress) return;
    core_fatal_at(file, line, CORE_EXIT_FAILURE, "%s failed: %s (%s)", what, ncclGetErrorString(r),
                  ncclGetLastError(NULL));
}

typedef struct {
    char name[COMM_NAME_MAX];  // the group's (a split's: its parent's), for finalize's messages
    ncclComm_t comm;
    cudaStream_t stream;  // the NCCL kernels of every operation
    cudaEvent_t ready;    // recorded on the compute stream: the buffers' producers are done
    float *one;           // (1) device scratch of the barrier
} Nccl;

static Nccl *nccl_of(const Comm *c) { return (Nccl *)c->impl; }

static ncclDataType_t nccl_type(CommType t) {
    switch (t) {
    case COMM_F32: return ncclFloat32;
    case COMM_F64: return ncclFloat64;
    case COMM_I32: return ncclInt32;
    case COMM_I64: return ncclInt64;
    // Only moved, never reduced (comm.c refuses): any 16-bit type carries the bits unchanged.
    case COMM_B16: return ncclFloat16;
    }
    FATAL("comm: unknown element type %d", (int)t);
}

static ncclRedOp_t nccl_op(CommOp op) { return op == COMM_MAX ? ncclMax : ncclSum; }

static ncclConfig_t nonblocking(void) {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    return cfg;
}

// 1 once the GPU work is done: event ev, else everything on stream s (neither: nothing to wait for).
static int gpu_done(cudaStream_t s, cudaEvent_t ev) {
    if (!s && !ev) return 1;
    cudaError_t e = ev ? cudaEventQuery(ev) : cudaStreamQuery(s);
    if (e == cudaErrorNotReady) {
        // "Not ready" is also left behind as the thread's last error, where the next kernel
        // launch check (cudaGetLastError) would take it for a failure: clear it.
        (void)cudaGetLastError();
        return 0;
    }
    CUDA_CHECK(e);
    return 1;
}

// Waits until comm (of group `group`) has no call in progress and the GPU work (gpu_done's s, ev)
// has completed, or ends the job at the deadline. The first polls yield the core, later ones sleep
// 50 µs.
static void nccl_wait(const char *group, ncclComm_t comm, cudaStream_t s, cudaEvent_t ev,
                      const char *op) {
    const double deadline = core_now() + comm_timeout();
    for (long polls = 0;; polls++) {
        ncclResult_t state;
        NCCL_CHECK(ncclCommGetAsyncError(comm, &state));
        if (state != ncclSuccess && state != ncclInProgress)
            FATAL("NCCL: %s on group %s failed: %s (%s)", op, group, ncclGetErrorString(state),
                  ncclGetLastError(comm));
        if (state == ncclSuccess && gpu_done(s, ev)) return;
        if (core_now() > deadline) {
            // Aborting stops this rank's NCCL kernels, which would otherwise spin on the GPU for
            // the missing peer; then every rank is ended.
            ncclCommAbort(comm);
            Comm named = {.rank = 0};
            strcpy(named.name, group);
            comm_timed_out(&named, op);
        }
        if (polls < 1024) {
            sched_yield();
        } else {
            struct timespec ts = {0, 50 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

// The communicator's stream waits for everything queued so far on the compute stream.
static void after_compute(Nccl *x) {
    CUDA_CHECK(cudaEventRecord(x->ready, (cudaStream_t)core_cuda_stream()));
    CUDA_CHECK(cudaStreamWaitEvent(x->stream, x->ready, 0));
}

static void nc_sendrecv(Comm *c, const void *send, size_t send_n, int dst, void *recv, size_t recv_n,
                        int src, CommType t, int tag) {
    (void)tag;
    Nccl *x = nccl_of(c);
    char op[COMM_OP_NAME_MAX];
    comm_p2p_name(op, c, dst, src);
    after_compute(x);
    NCCL_CHECK(ncclGroupStart());
    if (src >= 0) NCCL_CHECK(ncclRecv(recv, recv_n, nccl_type(t), src, x->comm, x->stream));
    if (dst >= 0) NCCL_CHECK(ncclSend(send, send_n, nccl_type(t), dst, x->comm, x->stream));
    NCCL_CHECK(ncclGroupEnd());
    nccl_wait(c->name, x->comm, x->stream, NULL, op);
}

// An all-reduce of one float: no rank leaves before every rank has entered.
static void nc_barrier(Comm *c) {
    Nccl *x = nccl_of(c);
    NCCL_CHECK(ncclAllReduce(x->one, x->one, 1, ncclFloat32, ncclSum, x->comm, x->stream));
    nccl_wait(c->name, x->comm, x->stream, NULL, "barrier");
}

static Nccl *nccl_new(const char *group, ncclComm_t comm) {
    Nccl *x = core_alloc(sizeof *x);
    strcpy(x->name, group);
    x->comm = comm;
    CUDA_CHECK(cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&x->ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaMalloc((void **)&x->one, sizeof(float)));
    CUDA_CHECK(cudaMemset(x->one, 0, sizeof(float)));
    return x;
}

static void *nc_split(Comm *c, int color, int key, int *rank, int *size) {
    Nccl *x = nccl_of(c);
    ncclConfig_t cfg = nonblocking();
    ncclComm_t s = NULL;
    NCCL_CHECK(ncclCommSplit(x->comm, color, key, &s, &cfg));
    nccl_wait(c->name, x->comm, NULL, NULL, "split");
    nccl_wait(c->name, s, NULL, NULL, "split");
    NCCL_CHECK(ncclCommUserRank(s, rank));
    NCCL_CHECK(ncclCommCount(s, size));
    // The front end names the new group after the split; only finalize's messages use this name.
    return nccl_new(c->name, s);
}

// A non-blocking communicator is finalized (collectively, under the deadline) before it is freed.
static void nc_free(void *impl) {
    Nccl *x = impl;
    CUDA_CHECK(cudaStreamSynchronize(x->stream));
    NCCL_CHECK(ncclCommFinalize(x->comm));
    nccl_wait(x->name, x->comm, NULL, NULL, "finalize");
    NCCL_CHECK(ncclCommDestroy(x->comm));
    CUDA_CHECK(cudaFree(x->one));
    CUDA_CHECK(cudaEventDestroy(x->ready));
    CUDA_CHECK(cudaStreamDestroy(x->stream));
    core_free(x);
}

// The request of an operation in flight is an event recorded after it on the communicator's
// stream, and the operation's name for the timeout message.
typedef struct {
    cudaEvent_t ev;
    char op[COMM_OP_NAME_MAX];
} NcclReq;

// Once the NCCL call just enqueued has left the in-progress state (its kernels are then on the
// stream), the event after it.
static NcclReq *enqueued(Comm *c, const char *op) {
    Nccl *x = nccl_of(c);
    nccl_wait(c->name, x->comm, NULL, NULL, op);
    NcclReq *q = core_alloc(sizeof *q);
    snprintf(q->op, sizeof q->op, "%s", op);
    CUDA_CHECK(cudaEventCreateWithFlags(&q->ev, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(q->ev, x->stream));
    return q;
}

static void *nc_isend(Comm *c, const void *buf, size_t n, int dst, CommType t, int tag) {
    (void)tag;
    Nccl *x = nccl_of(c);
    after_compute(x);
    NCCL_CHECK(ncclSend(buf, n, nccl_type(t), dst, x->comm, x->stream));
    char op[COMM_OP_NAME_MAX];
    return enqueued(c, comm_p2p_name(op, c, dst, -1));
}

static void *nc_iallreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op) {
    Nccl *x = nccl_of(c);
    after_compute(x);
    NCCL_CHECK(ncclAllReduce(buf, buf, n, nccl_type(t), nccl_op(op), x->comm, x->stream));
    return enqueued(c, "all-reduce");
}

static void *nc_ireduce_scatter(Comm *c, const void *send, void *recv, size_t n, CommType t, CommOp op) {
    Nccl *x = nccl_of(c);
    after_compute(x);
    NCCL_CHECK(ncclReduceScatter(send, recv, n, nccl_type(t), nccl_op(op), x->comm, x->stream));
    return enqueued(c, "reduce-scatter");
}

static void *nc_iallgather(Comm *c, const void *send, void *recv, size_t n, CommType t) {
    Nccl *x = nccl_of(c);
    after_compute(x);
    NCCL_CHECK(ncclAllGather(send, recv, n, nccl_type(t), x->comm, x->stream));
    return enqueued(c, "all-gather");
}

// One group of one send and one receive per peer (zero counts skipped on both sides alike): NCCL
// runs them together, so no ordering can deadlock.
static void *nc_ialltoallv(Comm *c, const void *send, const size_t *send_counts, void *recv,
                           const size_t *recv_counts, CommType t) {
    Nccl *x = nccl_of(c);
    const size_t es = comm_type_size(t);
    after_compute(x);
    NCCL_CHECK(ncclGroupStart());
    size_t soff = 0, roff = 0;
    for (int j = 0; j < c->size; j++) {
        if (send_counts[j] > 0)
            NCCL_CHECK(ncclSend((const char *)send + soff * es, send_counts[j], nccl_type(t), j, x->comm,
                                x->stream));
        if (recv_counts[j] > 0)
            NCCL_CHECK(ncclRecv((char *)recv + roff * es, recv_counts[j], nccl_type(t), j, x->comm,
                                x->stream));
        soff += send_counts[j];
        roff += recv_counts[j];
    }
    NCCL_CHECK(ncclGroupEnd());
    return enqueued(c, "all-to-all-v");
}

static void release(NcclReq *q) {
    CUDA_CHECK(cudaEventDestroy(q->ev));
    core_free(q);
}

static int nc_test(Comm *c, void *req) {
    (void)c;
    if (!gpu_done(NULL, ((NcclReq *)req)->ev)) return 0;
    release(req);
    return 1;
}

static void nc_wait(Comm *c, void *req) {
    NcclReq *q = req;
    nccl_wait(c->name, nccl_of(c)->comm, NULL, q->ev, q->op);
    release(q);
}

static const CommOps NCCL_OPS = {
    .sendrecv = nc_sendrecv,
    .barrier = nc_barrier,
    .split = nc_split,
    .free = nc_free,
    .isend = nc_isend,
    .test = nc_test,
    .wait = nc_wait,
    .iallreduce = nc_iallreduce,
    .ireduce_scatter = nc_ireduce_scatter,
    .iallgather = nc_iallgather,
    .ialltoallv = nc_ialltoallv,
};

Comm *comm_nccl_create(Comm *host, const char *name) {
    CHECK(strlen(name) < COMM_NAME_MAX, "comm: group name '%s' is too long", name);
    _Static_assert(sizeof(ncclUniqueId) % sizeof(int32_t) == 0, "the NCCL id travels as int32 words");
    // Rank 0's id reaches every rank through a timed all-gather, which also shows that every peer
    // has arrived before the NCCL set-up starts.
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (host->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    int32_t *all = core_alloc((size_t)host->size * sizeof id);  // (size, words of an id)
    comm_allgather(host, &id, all, sizeof id / sizeof(int32_t), COMM_I32);
    memcpy(&id, all, sizeof id);
    core_free(all);

    Comm *c = core_alloc(sizeof *c);
    strcpy(c->name, name);
    c->rank = host->rank;
    c->size = host->size;
    if (host->world_of) {
        c->world_of = core_alloc((size_t)c->size * sizeof *c->world_of);
        memcpy(c->world_of, host->world_of, (size_t)c->size * sizeof *c->world_of);
    }
    ncclConfig_t cfg = nonblocking();
    ncclComm_t nc = NULL;
    NCCL_CHECK(ncclCommInitRankConfig(&nc, host->size, id, host->rank, &cfg));
    nccl_wait(name, nc, NULL, NULL, "NCCL set-up");
    c->impl = nccl_new(name, nc);
    c->ops = &NCCL_OPS;
    return c;
}
