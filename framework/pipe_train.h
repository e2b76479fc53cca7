// The training engine (docs/architecture.md §4, §5, §11): every layout is a pipeline. A plain run is
// a pipeline of one stage, the whole model, under a one-rank 1F1B schedule; DP and EP add groups, PP
// adds stages. This rank holds one or two stages (one per pipe), each a (Model, AdamW) pair with its
// step context: the EPLB runtime of its MoE layers, its EP group, the DP-sync overlap and the
// micro-batches in flight. One step runs the schedule, then one tail for every layout: the DualPipe
// copy sum, DP/expert-DP averaging, the global gradient norm, the non-finite check, clipping, the
// learning-rate schedule, AdamW, the router bias update and EPLB. Also evaluation through the
// pipeline, the expert counts of the whole model and the measured op trace.
#ifndef MOELAB_FRAMEWORK_PIPE_TRAIN_H
#define MOELAB_FRAMEWORK_PIPE_TRAIN_H

#include "framework/core/config.h"
#include "framework/core/rng.h"
#include "framework/model.h"
#include "framework/optimizer.h"
#include "parallel/dp_sync.h"
#include "parallel/eplb_runtime.h"
#include "parallel/grid.h"
#include "parallel/pipeline.h"
#include "parallel/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

// Step statistics, the same on every rank.
typedef struct {
    float loss;          // mean over micro-batches of CE + α·Σ L_bal
    float ce;            // mean cross-entropy
    float grad_norm;     // before clipping
    float lr;
    double seconds;
    int rebalanced;      // EPLB moved experts to new slots after this step (the stages' eplb have
                         // the figures)
    int nonfinite;       // the loss or the gradient norm was NaN or infinite (train_step_nonfinite): no
                         // update was applied
} StepStats;

// One stage this rank holds and what a step needs around it: what the executor's PipeStage calls
// reach, and what the model itself does not carry (the grid, EPLB, the gradient-sync callback).
typedef struct {
    Model *m;            // the stage (owned unless the engine wraps a caller's, train_step_tokens)
    AdamW *o;            // its optimizer (likewise)
    EplbRuntime *eplb;   // EPLB over the stage's MoE layers and EP group, or NULL
    int moe0;            // the stage's first MoE layer: the runtime's layer 0
    Comm *ep, *ep_dev;   // the stage's EP group and its NCCL twin (not owned; NULL: one process or CPU)
    DpGrad *grads;       // (n_grads) the trained tensors' gradients, for the DP sync and the norm
    int *layer_of;       // (n_grads) each one's layer (-1 outside the layers)
    int n_grads;
    int n_mb;            // micro-batches through this stage per step (C, or C/2 under DualPipe)
    // The step (or evaluation) in flight:
    int training;        // forwards count routes and defer their loss (else: evaluation)
    ModelActs *acts;     // (C) activations of each micro-batch between its forward and release
    const int *tokens;   // (C, B, T+1) the step's micro-batches (every rank reads all of them)
    int B, T;
    float scale;         // 1/C: each micro-batch's share of the step's objective
    int fused;           // no grid and the whole model, or recompute under 1F1B: backward_input runs
                         // model_backward (input and weight gradients) and backward_weight only counts
    int recompute;       // training forwards keep the input only of the stage's first `recompute`
                         // layers (config recompute and recompute_layers)
    int keep_attention;  // and the attention's results of those (config recompute_keep_attention)
    float *dscal;        // (n_mb, 1 + L) each training forward's loss scalars, in the model's memory
    int *ids;            // (C, 2, B·T) under a CUDA graph: the step's checked inputs and targets in
                         // the model's memory, at a place fixed for the graph (else NULL)
    int n_fwd, n_wgt;    // forwards and backward_weights run this step
    DpSync *sync;        // the DP sync overlapped with this step's last backward_weight, or NULL
    double ce;           // evaluation: Σ of the last stage's cross-entropies
    float *sample_row;   // pipe_sample_generate: the logits (V) of row sample_pos of the first
    int sample_pos;      // last-stage forward (sampled set then), on the host; else NULL
    int sampled;
} PipeStageCtx;

typedef struct PipeTrainer {
    Schedule *sched;     // this step's schedule: N = pp ranks, C micro-batches
    Grid *grid;          // owned; NULL for one process (no communication at all)
    int S;               // model stages: pp, or 2·pp for DualPipeV
    int *bounds;         // (S + 1) stage s holds layers [bounds[s], bounds[s + 1])
    int n_models;        // 1 (1F1B) or 2 (DualPipe, DualPipeV)
    int n_own;           // models [0, n_own) hold distinct stages, and over the pipeline every stage
                         // once: n_models, or 1 under DualPipe (the up stages copy other ranks' down)
    int partner;         // DualPipe: the pp rank N−1−r holding the other copies of both stages; else -1
    Comm *pair;          // DualPipe: this rank and its partner (host memory: counts); else NULL
    Comm *pair_dev;      // its NCCL twin on GPUs (the gradients), else NULL
    Comm *ep1;           // two pipes with EP: pipe 1's own EP group (counts; rows on the CPU), else NULL
    Comm *ep1_dev;       // its NCCL twin on GPUs (pipe 1's token rows), else NULL
    const LayerOps *ops; // the backend the stages run on
    PipeLinks *links;    // on GPUs with pp > 1: the executor's NCCL links, else NULL
    PipeFb *fb;          // on GPUs with fb_overlap: the F&B overlap's side stream, else NULL
    PipeStageCtx ctx[2]; // [pipe] the stage held in the down / up pipe (sched_stage)
    PipeStage stage[2];  // [pipe] the executor's view of ctx[pipe]
    int overlap;         // dp_overlap: the DP sync of a stage without EPLB runs during its last
                         // backward_weight
    int eplb;            // EPLB runs (cfg.eplb_interval > 0): each stage with MoE layers has a runtime
    float *imbalance;    // (L) per-layer max/mean tokens per expert of the last step, whole pipeline
    SimEvent *trace;     // (n_ops of this rank) the last step's ops with start/end (µs)
    int borrowed;        // the stage is a caller's model and optimizer (pipe_trainer_wrap)
    // The step's schedule run as a CUDA graph (cuda_graph; docs/gpu.md, "CUDA graph"): one process,
    // one stage on a GPU that runs it with no host wait (backend_graph_blocker). The first step
    // runs eagerly on the graph's path (the libraries' first-call set-up, every cached operator),
    // the second is captured, and every later one launches the capture.
    int graph_on;        // the steps take the graph's path
    int graph_warm;      // a step has run eagerly on it
    void *graph;         // the captured run (core_cuda_graph_*), or NULL
    int graph_stale;     // kernel-by-kernel work (an evaluation, a profiled step) ran since the
                         // last launch: before the next, the pool gives back what it cached
} PipeTrainer;

// Partitions the model (stage_partition), builds this rank's stage models with identical initial
// weights, their optimizers, EP dispatchers and (cfg.eplb_interval > 0) EPLB runtimes, and the
// schedule of cfg->grad_accum micro-batches, on the backend ops (on a GPU: the grid's NCCL twins,
// the models, optimizers and dispatchers on the device, and the executor's NCCL links). Takes
// ownership of g (freed at once for one process). Usage errors (exit 2) for a schedule the layout
// cannot run or EPLB settings it cannot use.
PipeTrainer *pipe_trainer_create(const MoeConfig *c, Grid *g, const LayerOps *ops);
void pipe_trainer_free(PipeTrainer *p);
// One optimizer step on tokens (C, B, T+1), the same on every rank of the pipeline: the schedule,
// then the step tail above. Collective over the grid. A step whose loss or gradient norm is not
// finite changes nothing but the gradients (st.nonfinite).
StepStats pipe_train_step(PipeTrainer *p, const MoeConfig *c, int step, const int *tokens);
// A one-stage engine around a caller's whole model m and optimizer o in one process, no
// communication, for pipe_train_step (the benchmark); pipe_trainer_free leaves m and o to the
// caller.
PipeTrainer *pipe_trainer_wrap(Model *m, AdamW *o, const MoeConfig *c);
// One step of such an engine made for the call (tests, the reference dumps): never a CUDA graph.
StepStats train_step_tokens(Model *m, AdamW *o, const MoeConfig *c, int step, const int *tokens);
// Sets st->nonfinite and returns it: the loss or the gradient norm is NaN or infinite, or the
// gradient AdamW would apply (after clipping) is too large for its float32 moments.
int train_step_nonfinite(StepStats *st, const MoeConfig *c);
// Mean cross-entropy of one micro-batch tokens (B, T+1) through the pipeline, on every rank of the
// pipeline group (no backward, no routing counts).
float pipe_eval_ce(PipeTrainer *p, const int *tokens);
// sample_generate (framework/sample.h) through the pipeline, for the stages of a model that no rank
// holds whole; a collective of every rank. Each new token is one evaluation forward
// (pipe_run_forward) of a micro-batch of one sequence, the window padded with token 0 after it (as
// sample_generate pads on a GPU: no position sees the ones after it); the last stage's logits row
// reaches every rank of the pipeline, which all draw the same token from the same rng (and all stop
// alike at logits that are not finite: sample_generate's return).
int pipe_sample_generate(PipeTrainer *p, const int *prompt, int n_prompt, int n_new, float temperature,
                         int top_k, RngStream *rng, int *out);
// The model's parameters, each logical expert once (whatever the EP layout and EPLB's replicas), and
// in *on_rank those this rank holds (expert slots as held). Collective over the pipeline group.
size_t pipe_param_count(const PipeTrainer *p, size_t *on_rank);
// counts (L, E): the last step's tokens routed to each logical expert of the whole model (each stage
// counts only its own layers), on every rank of the pipeline group. Collective over it.
void pipe_expert_counts(const PipeTrainer *p, long *counts);
// The inverse, for this rank's stages: a resumed checkpoint's counts, which a run that trains no
// step saves again (they were zeros in its checkpoint: review, 2026-12-06).
void pipe_set_expert_counts(PipeTrainer *p, const long *counts);
// phy2log (L, R): the EPLB placement of the whole model (each stage's runtime places its own layers;
// -1 on dense layers), on every rank of the pipeline group. Collective over it.
void pipe_eplb_placement(const PipeTrainer *p, int *phy2log);
// load (L, E): the tokens each logical expert received since the last rebalance (each stage's
// runtime keeps its own layers'; 0 on dense layers), on every rank of the pipeline group. Collective.
void pipe_eplb_load(const PipeTrainer *p, long *load);
// Gives each stage's runtime its layers' rows of load (L, E), a checkpoint's pipe_eplb_load.
void pipe_eplb_set_load(const PipeTrainer *p, const long *load);
// The EPLB figures of the whole model for the metrics: each stage's runtime's per-layer figures of
// the last step (and rebalance), gathered over the pipeline into v, a runtime-shaped view over every
// MoE layer for eplb_runtime_write_metrics (its arrays are one block: core_free(v->step_imbalance)).
// Collective over the pipeline group.
void pipe_eplb_figures(const PipeTrainer *p, EplbRuntime *v);
// Rank 0 writes the last step's op timeline of DP rank 0's pipeline as a Chrome trace (ranks as
// pids, µs from the first op); collective over the grid. Exits 1 if the file cannot be written.
void pipe_write_trace(const PipeTrainer *p, const char *path);

#ifdef __cplusplus
}
#endif
#endif
