// The pipeline executor (ARCHITECTURE.md §5): runs one rank's op list of any Schedule on real
// ranks. Activations and gradients travel between ranks of the pipeline communicator as
// non-blocking tagged messages matched by (kind, pipe, micro-batch); the stage itself is the
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

// One pipeline stage as the executor sees it (the stage interface of §3); the engine implements it.
// Activations of a micro-batch live from its forward until release.
typedef struct PipeStage {
    void *ctx;
    // Forward of micro-batch mb; h_in (n_act) is the previous stage's output, NULL on the first
    // stage. Returns the output (n_act) to send on, NULL on the last stage (it ends in the loss);
    // the pointer stays valid until the next call on this stage.
    const float *(*forward)(void *ctx, int mb, const float *h_in);
    // Backward for the input of micro-batch mb; dh_out (n_act) is the gradient of the output from
    // the next stage, NULL on the last stage (it starts from the loss). Returns ∂/∂h_in (n_act),
    // NULL on the first stage; valid until the next call on this stage.
    const float *(*backward_input)(void *ctx, int mb, const float *dh_out);
    // Accumulates micro-batch mb's weight gradients (after its backward_input).
    void (*backward_weight)(void *ctx, int mb);
    // Frees micro-batch mb's activations.
    void (*release)(void *ctx, int mb);
} PipeStage;

typedef struct {
    const Schedule *s;
    int rank;              // this process's rank in s
    Comm *pp;              // the pipeline group: its rank i runs s's rank i (size s->N)
    PipeStage *stage[2];   // [pipe] the stage this rank holds in the down and the up pipe
                           // (sched_stage); up is NULL for 1F1B
    size_t n_act;          // floats in one activation or gradient message (B·T·D)
    SimEvent *trace;       // (s->n_ops[rank]) filled with each op and its start/end (µs, wall
                           // clock) when non-NULL
} PipeRun;

// Runs this rank's ops of r->s in order (collective over r->pp: every rank runs its own list):
//   F:  receive the activation (unless first on the path), forward, send the output (unless last);
//   B:  receive the output gradient (unless last), backward_input, send the input gradient (unless
//       first), then backward_weight and release now, or, with defer_w, queue them for a W;
//   W:  backward_weight and release of the oldest queued backward (the one the op names);
//   FB: both inputs, then its F, then its B (one after the other: no overlap on the CPU).
// Messages between positions on the same rank (the tip of DualPipeV's V) are handed over locally.
// With trace, an op's time starts once its inputs are in: waiting for them is the rank's bubble.
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
