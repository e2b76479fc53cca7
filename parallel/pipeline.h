// The pipeline executor (docs/architecture.md §5): runs one rank's op list of any Schedule on real
// ranks. Activations and gradients travel between ranks of the pipeline as non-blocking messages:
// on the CPU tagged MPI messages over the pipeline communicator, matched by (kind, pipe,
// micro-batch); on GPUs device buffers over one NCCL communicator per directed link between
// neighbours (PipeLinks), matched by the order the schedule sends them in. The stage itself is the
// engine's business, reached through the PipeStage interface (forward, backward-for-input,
// backward-for-weights, release). docs/pipeline.md "Executor" describes the rules.
#ifndef MOELAB_PARALLEL_PIPELINE_H
#define MOELAB_PARALLEL_PIPELINE_H

#include <stddef.h>

#include "parallel/comm.h"
#include "parallel/schedule.h"
#include "parallel/simulator.h"

#ifdef __cplusplus
extern "C" {
#endif

struct LayerOps;

// The GPU transport: for each neighbour of this rank in the pipeline group ([0] the previous rank,
// [1] the next), a two-process NCCL communicator per direction, so that a send, which holds its
// stream until the peer posts the matching receive, never sits in front of a receive, and the
// messages of one link arrive exactly in the order they were sent.
typedef struct {
    Comm *to[2], *from[2];  // [neighbour] NULL where there is none (the ends of the pipeline)
    Comm *pp;               // the pipeline group they link (not owned)
} PipeLinks;

// Makes the links of every rank of pp (collective over pp, after core_cuda_init): pairs of
// neighbours (2i, 2i+1), then (2i+1, 2i+2), each split off pp and given its two NCCL
// communicators, which then move one warm-up message of msg_bytes (device memory of ops) so that
// NCCL's lazy connection set-up is done before the first step. With a CPU ops the links are
// two-process MPI communicators instead (host messages; how the tests run this transport).
PipeLinks *pipe_links_create(Comm *pp, const struct LayerOps *ops, size_t msg_bytes);
// Finalizes the communicators in the order they were made (collective over pp).
void pipe_links_free(PipeLinks *l);

// The F&B overlap on a GPU: an F&B op runs its forward on a worker thread, on a side stream of
// its own (core_cuda_use_stream), while the calling thread runs its backward on the main stream;
// then the main stream waits for the side stream, and the op's sends go out. The two halves touch
// different Models (the generators pair the two pipes), so they share no memory. Their stages may
// communicate inside forward and backward (expert parallelism) on communicators of their own: each
// pipe's model has its own EP group (framework/pipe_train.c), so every communicator sees one thread's
// calls in the schedule's order; and MPI must allow two calling threads (comm_threads_ok, which the
// trainer checks before --fb-overlap with --ep > 1).
typedef struct PipeFb PipeFb;
PipeFb *pipe_fb_create(void);  // the side stream and two events, after core_cuda_init
void pipe_fb_free(PipeFb *fb);

// One pipeline stage as the executor sees it (the stage interface of §3); the engine implements it.
// Activations of a micro-batch live from its forward until release. Messages (h_in, dh_out and
// what the calls return) are memory of PipeRun.ops, elements of the stage's activation dtype.
typedef struct PipeStage {
    void *ctx;
    // Forward of micro-batch mb; h_in (msg_bytes) is the previous stage's output, NULL on the first
    // stage. Returns the output (msg_bytes) to send on, NULL on the last stage (it ends in the loss);
    // the pointer stays valid until the next call on this stage.
    const void *(*forward)(void *ctx, int mb, const void *h_in);
    // Backward for the input of micro-batch mb; dh_out (msg_bytes) is the gradient of the output from
    // the next stage, NULL on the last stage (it starts from the loss). Returns ∂/∂h_in (msg_bytes),
    // NULL on the first stage; valid until the next call on this stage.
    const void *(*backward_input)(void *ctx, int mb, const void *dh_out);
    // Accumulates micro-batch mb's weight gradients (after its backward_input).
    void (*backward_weight)(void *ctx, int mb);
    // Frees micro-batch mb's activations.
    void (*release)(void *ctx, int mb);
} PipeStage;

typedef struct {
    const Schedule *s;
    int rank;              // this process's rank in s
    Comm *pp;              // the pipeline group: its rank i runs s's rank i (size s->N); may be NULL
                           // when s->N == 1
    PipeStage *stage[2];   // [pipe] the stage this rank holds in the down and the up pipe
                           // (sched_stage); up is NULL for 1F1B
    size_t msg_bytes;      // bytes of one activation or gradient message (B·T·D elements of the
                           // stage's activation type; a multiple of 4)
    const struct LayerOps *ops;  // the memory the stage's messages live in (alloc, free, copy,
                                 // sync); NULL: host memory
    const PipeLinks *links;      // the GPU transport, or NULL: tagged messages over pp
    SimEvent *trace;       // (s->n_ops[rank]) filled with each op and its start/end (µs, wall
                           // clock) when non-NULL
    PipeFb *fb;            // the F&B overlap (GPU only), or NULL: an F&B op runs F, then B
} PipeRun;

// Runs this rank's ops of r->s in order (collective over r->pp: every rank runs its own list):
//   F:  receive the activation (unless first on the path), forward, send the output (unless last);
//   B:  receive the output gradient (unless last), backward_input, send the input gradient (unless
//       first), then backward_weight and release now, or, with defer_w, queue them for a W;
//   W:  backward_weight and release of the oldest queued backward (the one the op names);
//   FB: both inputs, then its F, then its B (one after the other), or with r->fb its F on the
//       worker thread while this thread runs its B (input and weight gradients, or input only
//       with defer_w); then F's output goes out, then B's input gradient (the order of F, B).
// Messages between positions on the same rank (the tip of DualPipeV's V) are handed over locally.
// With trace, an op's time starts once its inputs are in: waiting for them is the rank's bubble;
// on a device (ops) the op ends when its GPU work has (ops->sync after each traced op).
// Returns once every send has completed; a peer that never answers ends the job at the comm
// timeout.
void pipe_run(const PipeRun *r);

// Forward only (evaluation): micro-batches 0..n−1 in order along the path of the schedule's
// micro-batch 0 (the down pipe, then the up pipe for DualPipeV), each released right after its
// forward. Collective over r->pp.
void pipe_run_forward(const PipeRun *r, int n);

#ifdef __cplusplus
}
#endif
#endif
