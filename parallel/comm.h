// Communicators: one API for the collectives and point-to-point transfers every parallel layout
// needs (all-reduce, all-gather, reduce-scatter, all-to-all(-v), send/recv, barrier, split), with
// backends behind a table of operations. This build has the MPI backend (host buffers); an NCCL
// backend (device buffers, its own stream) fills the same table. See docs/parallel.md.
//
// Every operation is started non-blocking and completed by polling against a deadline: a deadlock or
// a dead peer ends every rank with "moelab: error [rank r]: <op> on group <name> timed out after Ns"
// instead of hanging. A communicator of one process never communicates: its collectives are copies.
#ifndef MOELAB_PARALLEL_COMM_H
#define MOELAB_PARALLEL_COMM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// COMM_B16: 16-bit words (bf16 weights), moved by the copying operations, never reduced.
typedef enum { COMM_F32 = 0, COMM_F64 = 1, COMM_I32 = 2, COMM_I64 = 3, COMM_B16 = 4 } CommType;
typedef enum { COMM_SUM = 0, COMM_MAX = 1 } CommOp;

#define COMM_NAME_MAX 32
#define COMM_DEFAULT_TIMEOUT 300.0  // seconds

typedef struct Comm Comm;

// The backend interface. Each operation gets validated arguments on a communicator of size > 1,
// blocks until its buffers may be reused (an asynchronous backend such as NCCL enqueues on its
// stream and waits with the same deadline), and ends the job through comm_timed_out on expiry.
// Counts are in elements of type t; all-to-all-v buffers are packed in rank order.
typedef struct {
    // Either side may be absent (dst or src = -1): send only, receive only, or both at once.
    void (*sendrecv)(Comm *c, const void *send, size_t send_n, int dst, void *recv, size_t recv_n,
                     int src, CommType t, int tag);
    void (*barrier)(Comm *c);
    // A new backend communicator for the processes of the same color, ordered by key (collective).
    void *(*split)(Comm *c, int color, int key, int *rank, int *size);
    void (*free)(void *impl);
    // Non-blocking send (the pipeline executor's): starts the transfer and returns the backend's
    // request; test returns 1 once it has completed (and releases it), wait completes it under the
    // deadline (and releases it).
    void *(*isend)(Comm *c, const void *buf, size_t n, int dst, CommType t, int tag);
    // Non-blocking collectives, completed by test / wait like isend's requests (the blocking
    // collectives wait on them at once).
    void *(*iallreduce)(Comm *c, void *buf, size_t n, CommType t, CommOp op);
    void *(*ireduce_scatter)(Comm *c, const void *send, void *recv, size_t n, CommType t, CommOp op);
    void *(*iallgather)(Comm *c, const void *send, void *recv, size_t n, CommType t);
    void *(*ialltoallv)(Comm *c, const void *send, const size_t *send_counts, void *recv,
                        const size_t *recv_counts, CommType t);
    int (*test)(Comm *c, void *req);
    void (*wait)(Comm *c, void *req);
} CommOps;

struct Comm {
    char name[COMM_NAME_MAX];  // "world", "dp", "ep", "edp", "pp": named in every error message
    int rank, size;
    int *world_of;             // (size) each member's world rank, for messages; NULL for the world
                               // and one-process groups
    const CommOps *ops;        // NULL for a one-process communicator
    void *impl;                // the backend's handle
};

// Starts MPI when the process was launched by mpirun (OpenMPI's or a PMI launcher's environment);
// otherwise the world is this one process and no MPI library call is made. Sets the log rank and,
// for more than one process, installs an abort hook (core_set_abort_hook) that ends every rank.
void comm_init(int *argc, char ***argv);
// Finalizes MPI after a barrier (under the timeout) if comm_init started it.
void comm_finalize(void);
// The communicator of all processes (one process before comm_init or without mpirun).
Comm *comm_world(void);
// 1 when two threads may call into communicators at once (each on its own group): MPI was started
// with MPI_THREAD_MULTIPLE, or there is no MPI. comm_init asks for it; an MPI built without it
// gives less.
int comm_threads_ok(void);
// Seconds an operation may take before the job is ended (default COMM_DEFAULT_TIMEOUT, > 0).
void comm_set_timeout(double seconds);
double comm_timeout(void);

// Sub-group of the processes passing the same color, ranked by key (collective over c; color >= 0).
Comm *comm_split(Comm *c, int color, int key, const char *name);
void comm_free(Comm *c);  // not for comm_world()

// buf (n) ← elementwise op over the ranks of buf (n), in place.
void comm_allreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op);
// recv (size, n) ← every rank's send (n), in rank order.
void comm_allgather(Comm *c, const void *send, void *recv, size_t n, CommType t);
// recv (n) ← the rank-th block of the elementwise sum (or max) of every rank's send (size, n).
void comm_reduce_scatter(Comm *c, const void *send, void *recv, size_t n, CommType t, CommOp op);
// recv (size, n): block j ← block `rank` of rank j's send (size, n).
void comm_alltoall(Comm *c, const void *send, void *recv, size_t n, CommType t);
// send holds send_counts[j] elements for rank j, packed in rank order; recv receives
// recv_counts[j] elements from rank j, packed in rank order. Zero counts are ordinary.
void comm_alltoallv(Comm *c, const void *send, const size_t *send_counts, void *recv,
                    const size_t *recv_counts, CommType t);
// Point-to-point with another rank of c (matched by tag).
void comm_send(Comm *c, const void *buf, size_t n, CommType t, int dst, int tag);
void comm_recv(Comm *c, void *buf, size_t n, CommType t, int src, int tag);
// Sends to dst and receives from src at the same time (no ordering deadlock); dst/src may be c->rank.
void comm_sendrecv(Comm *c, const void *send, size_t send_n, int dst, void *recv, size_t recv_n,
                   int src, CommType t, int tag);
void comm_barrier(Comm *c);
// An operation in flight (comm_isend, comm_i* collectives), completed and freed by
// comm_test or comm_wait. Its buffers must stay untouched until then.
typedef struct CommRequest CommRequest;
// Starts sending buf (n) to dst (another rank of c, matched by tag) and returns at once; buf must
// stay untouched until the request has completed.
CommRequest *comm_isend(Comm *c, const void *buf, size_t n, CommType t, int dst, int tag);
// Non-blocking comm_allreduce and comm_alltoallv: they start the operation and return at once.
// Collectives in flight must be started in the same order on every rank of c (NCCL runs them in
// issue order); on a one-process group the copy is made at once and the request is complete.
// comm_ialltoallv is the expert-parallel dispatcher's one row exchange per MoE layer and direction:
// one MPI_Ialltoallv on MPI, one group of one send and one receive per peer on NCCL.
CommRequest *comm_iallreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op);
// Non-blocking comm_reduce_scatter and comm_allgather (ZeRO-1's gradient shards and weights).
CommRequest *comm_ireduce_scatter(Comm *c, const void *send, void *recv, size_t n, CommType t, CommOp op);
CommRequest *comm_iallgather(Comm *c, const void *send, void *recv, size_t n, CommType t);
CommRequest *comm_ialltoallv(Comm *c, const void *send, const size_t *send_counts, void *recv,
                             const size_t *recv_counts, CommType t);
// 1 once the operation has completed (the request is then freed), 0 while it is in flight.
int comm_test(CommRequest *r);
// Completes the operation under the timeout and frees the request.
void comm_wait(CommRequest *r);

size_t comm_type_size(CommType t);
// Ends every rank of the job after printing the timeout message (backends call this).
void comm_timed_out(const Comm *c, const char *op);
// The name a point-to-point operation on c goes by in messages, naming its peers by their rank in c
// and in the world (backends call this): "send to rank 3", "recv from rank 1 (world rank 3)", "send
// to rank 1 (world rank 5) / recv from rank 0 (world rank 4)" (dst or src < 0: that side is absent).
// Written into buf (COMM_OP_NAME_MAX), which it returns.
#define COMM_OP_NAME_MAX 112
const char *comm_p2p_name(char *buf, const Comm *c, int dst, int src);

#ifdef __cplusplus
}
#endif
#endif
