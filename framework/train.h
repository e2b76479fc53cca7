// The training loop: micro-batches with gradient accumulation, clipping, AdamW, the aux-loss-free
// bias update, periodic validation, logging (stdout and JSON Lines), and a sample at the end.
#ifndef MOELAB_FRAMEWORK_TRAIN_H
#define MOELAB_FRAMEWORK_TRAIN_H

#include <stdio.h>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "framework/core/config.h"
#include "framework/model.h"
#include "framework/optimizer.h"

#ifdef __cplusplus
extern "C" {
#endif

struct PipeTrainer;

typedef struct {
    MoeConfig cfg;
    Model *model;            // the whole model; under a pipeline (pipe != NULL) the stage this rank
                             // holds in the down pipe, owned by pipe
    AdamW opt;               // the whole model's optimizer (unused under a pipeline: pipe has one per stage)
    struct PipeTrainer *pipe;  // framework/pipe_train.h: pipeline schedule and stages, or NULL
    Loader *train, *val;
    Tokenizer *tok;          // NULL when the data has no tokenizer (raw shard)
    FILE *metrics;
    int step;                // optimizer steps taken
    int *tokens;             // (A, B, T+1) micro-batch staging buffer
    double unigram_entropy;  // nats/token of the training tokens' frequencies
    uint64_t lineage;        // of the checkpoints: new for a fresh run, the resumed checkpoint's otherwise
    int resumed_at;          // step of the --resume checkpoint (-1: a fresh run)
    long *saved;             // (n_saved) steps this run saved (what --keep may prune besides ancestors)
    int n_saved;
    char last_ckpt[CONFIG_STR + 32];  // the newest checkpoint of good weights ("" if none)
    int skipped, skipped_run;  // non-finite steps skipped in all, and in a row up to now
} Trainer;

// Step statistics returned by trainer_step.
typedef struct {
    float loss;          // mean over micro-batches of CE + α·Σ L_bal
    float ce;            // mean cross-entropy
    float grad_norm;     // before clipping
    float lr;
    double seconds;
    int rebalanced;      // EPLB moved experts to new slots after this step (model->eplb has the figures)
    int nonfinite;       // the loss or the gradient norm was NaN or infinite (train_step_nonfinite): no
                         // update was applied
} StepStats;

// One optimizer step of model m on A = c->grad_accum micro-batches, tokens (A, B, T+1), as step
// number `step` (0-based) of the schedule: forward, backward_input, backward_weight per micro-batch,
// then clipping, AdamW and the aux-loss-free bias update. The core of every training path. A step
// whose loss or gradient norm is not finite changes nothing but the gradients (st.nonfinite).
StepStats train_step_tokens(Model *m, AdamW *o, const MoeConfig *c, int step, const int *tokens);
// Sets st->nonfinite and returns it (both trainers' test): the loss or the gradient norm is NaN or
// infinite, or the gradient AdamW would apply (after clipping) is too large for its float32 moments.
int train_step_nonfinite(StepStats *st, const MoeConfig *c);

struct Comm;
struct Grid;

// The whole model of this process of grid g, initialized, on backend ops (the optimizer is the
// caller's). With several processes g becomes the model's grid (m->grid, not owned): the EP
// dispatcher when g->ep > 1, and on a GPU the grid's NCCL twins (grid_to_device) through which the
// dispatcher's rows and the gradient sync travel. One process: g is not kept.
Model *train_model_create(const MoeConfig *c, struct Grid *g, const LayerOps *ops);

// Gives a whole model (after adamw_init of o) EPLB as cfg.eplb_interval/eplb_redundant ask: one
// expert-parallel dispatcher per MoE layer over ep (the model's EP group: grid->ep_comm, or
// comm_world() for one process), and a runtime (m->eplb, freed by the caller with eplb_runtime_free)
// that train_step_tokens then drives. Usage errors (exit 2) for settings EPLB cannot run.
void train_eplb_attach(Model *m, AdamW *o, struct Comm *ep);

// Opens the data named by cfg->data (a directory from `moelab data prepare`, holding tokenizer.bin,
// train.bin and val.bin), builds and initializes the model and the optimizer.
Trainer *trainer_create(const MoeConfig *cfg);
void trainer_free(Trainer *t);
// One optimizer step over cfg.grad_accum micro-batches from the training loader.
StepStats trainer_step(Trainer *t);
// Mean loss over cfg.val_batches micro-batches of the validation split (always the same ones).
float trainer_eval(Trainer *t);
// Runs cfg.steps steps with logging; returns the process exit code.
int trainer_run(Trainer *t);

#ifdef __cplusplus
}
#endif
#endif
