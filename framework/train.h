// The training loop: data, the engine (pipe_train.h: every layout's step), periodic validation,
// logging (stdout and JSON Lines), checkpoints, and a sample at the end.
#ifndef MOELAB_FRAMEWORK_TRAIN_H
#define MOELAB_FRAMEWORK_TRAIN_H

#include <stdio.h>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "framework/core/config.h"
#include "framework/pipe_train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    MoeConfig cfg;
    PipeTrainer *pipe;       // framework/pipe_train.h: the engine (this rank's stages; a plain run is
                             // a pipeline of one stage)
    Loader *train, *val;
    Tokenizer *tok;          // the data directory's
    FILE *metrics;
    long metrics_whole;      // bytes of --metrics up to its last whole line, as last flushed
    int out_lock;            // rank 0's lock on --out (framework/core/file.h), or a negative code
    int step;                // optimizer steps taken
    int *tokens;             // (A, B, T+1) micro-batch staging buffer
    double unigram_entropy;  // nats/token of the training tokens' frequencies
    double unigram_val;      // the loss of their unigram model on the validation tokens (nats/token)
    uint64_t lineage;        // of the checkpoints: new for a fresh run, the resumed checkpoint's otherwise
    int resumed_at;          // step of the --resume checkpoint (-1: a fresh run)
    long *saved;             // (n_saved) steps this run saved (what --keep may prune besides ancestors)
    int n_saved;
    char last_ckpt[CONFIG_STR + 32];  // the newest checkpoint saved or resumed from ("" if none)
    int ckpt_current;        // last_ckpt holds the model's weights as they are (no step applied since)
    int ckpt_trust;          // what is known of last_ckpt's weights (TrainerTrust in train.c)
    char good_ckpt[CONFIG_STR + 32];  // the newest checkpoint whose weights are known good ("" if none)
    int validated_at;        // the step of the newest validation whose loss was finite (-1: none)
    int skipped, skipped_run;  // non-finite steps skipped in all, and in a row up to now
} Trainer;

// Opens the data named by cfg->data (a directory from `moelab data prepare`, holding tokenizer.bin,
// train.bin and val.bin), builds and initializes the model and the optimizer.
Trainer *trainer_create(const MoeConfig *cfg);
void trainer_free(Trainer *t);
// Runs cfg.steps steps with logging; returns the process exit code.
int trainer_run(Trainer *t);

#ifdef __cplusplus
}
#endif
#endif
