// Pipeline-parallel training (docs/architecture.md §4–§5): the stages this rank holds (one Model per
// pipe), the executor's stage interface over a Model, one optimizer step under a 1F1B, DualPipe or
// DualPipeV schedule (with DP and EP), evaluation through the pipeline, and the measured op trace.
#ifndef MOELAB_FRAMEWORK_PIPE_TRAIN_H
#define MOELAB_FRAMEWORK_PIPE_TRAIN_H

#include "framework/core/config.h"
#include "framework/model.h"
#include "framework/optimizer.h"
#include "framework/train.h"
#include "parallel/grid.h"
#include "parallel/pipeline.h"
#include "parallel/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

// What the executor's PipeStage calls reach: one Model and the micro-batches in flight on it.
typedef struct {
    Model *m;
    ModelActs *acts;     // (C) activations of each micro-batch between its forward and release
    const int *tokens;   // (C, B, T+1) the step's micro-batches (every rank reads all of them)
    int B, T;
    float scale;         // 1/C: each micro-batch's share of the step's objective
    double loss, ce;     // Σ over this stage's forwards of the stage's loss part, and of the CE
} PipeStageCtx;

typedef struct PipeTrainer {
    Schedule *sched;     // this step's schedule: N = pp ranks, C micro-batches
    Grid *grid;          // owned
    int S;               // model stages: pp, or 2·pp for DualPipeV
    int *bounds;         // (S + 1) stage s holds layers [bounds[s], bounds[s + 1])
    int n_models;        // 1 (1F1B) or 2 (DualPipe, DualPipeV)
    int n_own;           // models [0, n_own) hold distinct stages, and over the pipeline every stage
                         // once: n_models, or 1 under DualPipe (the up stages copy other ranks' down)
    Model *model[2];     // [pipe] the stage held in the down / up pipe (sched_stage), owned
    AdamW opt[2];        // [pipe]
    int partner;         // DualPipe: the pp rank N−1−r holding the other copies of both stages; else -1
    Comm *pair;          // DualPipe: this rank and its partner (host memory: counts); else NULL
    Comm *pair_dev;      // its NCCL twin on GPUs (the gradients), else NULL
    Comm *ep1;           // two pipes with EP: pipe 1's own EP group (counts; rows on the CPU), else NULL
    Comm *ep1_dev;       // its NCCL twin on GPUs (pipe 1's token rows), else NULL
    const LayerOps *ops; // the backend the stages run on
    PipeLinks *links;    // on GPUs with pp > 1: the executor's NCCL links, else NULL
    PipeFb *fb;          // on GPUs with fb_overlap: the F&B overlap's side stream, else NULL
    PipeStageCtx ctx[2]; // [pipe]
    PipeStage stage[2];  // [pipe] the executor's view of model[pipe]
    float *imbalance;    // (L) per-layer max/mean tokens per expert of the last step, whole pipeline
    SimEvent *trace;     // (n_ops of this rank) the last step's ops with start/end (µs)
} PipeTrainer;

// Whether cfg asks for the pipeline engine: pp > 1, a schedule other than 1f1b, or a trace.
int pipe_trainer_wanted(const MoeConfig *c);
// Partitions the model (stage_partition), builds this rank's stage models with identical initial
// weights, their optimizers and EP dispatchers, and the schedule of cfg->grad_accum micro-batches,
// on the backend ops (on a GPU: the grid's NCCL twins, the models, optimizers and dispatchers on
// the device, and the executor's NCCL links). Takes ownership of g. Usage errors (exit 2) for a
// schedule the layout cannot run.
PipeTrainer *pipe_trainer_create(const MoeConfig *c, Grid *g, const LayerOps *ops);
void pipe_trainer_free(PipeTrainer *p);
// One optimizer step on tokens (C, B, T+1), the same on every rank of the pipeline: the schedule,
// then the DualPipe copy sum, DP/expert-DP averaging, the global gradient norm (every stage once),
// clipping, AdamW on each held stage and the bias update. Collective over the grid.
StepStats pipe_train_step(PipeTrainer *p, const MoeConfig *c, int step, const int *tokens);
// Mean cross-entropy of one micro-batch tokens (B, T+1) through the pipeline, on every rank of the
// pipeline group (no backward, no routing counts).
float pipe_eval_ce(PipeTrainer *p, const int *tokens);
// Parameters held by this rank's pipeline group, each stage counted once.
size_t pipe_param_count(const PipeTrainer *p);
// counts (L, E): the last step's tokens routed to each logical expert of the whole model (each stage
// counts only its own layers), on every rank of the pipeline group. Collective over it.
void pipe_expert_counts(const PipeTrainer *p, long *counts);
// Rank 0 writes the last step's op timeline of DP rank 0's pipeline as a Chrome trace (ranks as
// pids, µs from the first op); collective over the grid. Exits 1 if the file cannot be written.
void pipe_write_trace(const PipeTrainer *p, const char *path);

#ifdef __cplusplus
}
#endif
#endif
