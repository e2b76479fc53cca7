// HDF5 checkpoints of the full training state in the logical layout of docs/architecture.md §7 (every
// tensor whole, by parameter name; experts as one (E, ...) array), written atomically and read back
// into any expert-parallel layout. The file format is documented in docs/checkpoint-format.md.
#ifndef MOELAB_CHECKPOINTS_CKPT_H
#define MOELAB_CHECKPOINTS_CKPT_H

#include <stdint.h>
#include <stdio.h>

#include "data/loader.h"
#include "framework/core/config.h"
#include "framework/core/params.h"
#include "framework/core/rng.h"

#define CKPT_PATH_MAX 4096  // bytes of a checkpoint's path

#ifdef __cplusplus
extern "C" {
#endif

#define CKPT_FORMAT_VERSION 2

// Which expert rows this process holds, and which tensors it writes. Each MoE layer has R physical
// expert slots spread evenly over ep_size ranks: rank ep_rank holds slots
// [ep_rank·R/ep_size, (ep_rank+1)·R/ep_size), and slot p holds logical expert phy2log[l·R + p]
// (EPLB's plan; several slots may hold replicas of one expert). Saving writes each logical expert
// once, from the lowest slot that holds it; loading fills every slot from its expert's logical row.
// The tensors are those of the CkptView passed along: a pipeline stage's view saves and loads only
// its own layers (moelab train: one part per stage and DP rank, part = stage·DP + dp_rank).
typedef struct {
    int part, parts;        // this part file and the number of parts (without a pipeline: rank, world)
    int ep_rank, ep_size;   // place among the ranks that share each MoE layer's slots
    int write_dense;        // 1 on exactly one rank per copy of the non-expert tensors (of each stage)
    int write_experts;      // 1 on exactly one rank per copy of the expert slots (expert-DP rank 0)
    int R;                  // physical slots per MoE layer over the ep_size ranks
    const int *phy2log;     // (L, R) logical expert of each slot (rows of dense layers unused);
                            // NULL: the identity (slot p holds expert p, R == E)
} CkptShard;

// The identity layout of a model whose MoE layers' E experts are spread over ep_size ranks: one
// part per EP rank, R = E, every rank writing its own experts and rank 0 the non-expert tensors.
CkptShard ckpt_shard_identity(int ep_rank, int ep_size, int E);

// What a checkpoint stores of one model (the whole model, or one pipeline stage of it), handed over
// by the caller in host memory: the tensors its parameter registry declares, with their values and
// AdamW moments in buffers of the registry's layout. The registry's own buffers are never touched (on
// a GPU they are device memory): for a device model, data, m and v are host copies.
typedef struct {
    const MoeConfig *cfg;      // the run's config: stored by a save, what a load checks the file against
    const ParamRegistry *reg;  // names, logical shapes, kinds, layers and offsets of the tensors
    float *data;               // (reg->total) values
    float *m, *v;              // (reg->total) AdamW moments; NULL in a ckpt_load of the weights only
    long *adam_t;              // AdamW's steps taken (a load with moments sets it); NULL with m, v NULL
} CkptView;

// Training state besides the tensors and the AdamW step count (AdamW.t travels with the moments).
// The learning-rate schedule is a pure function of the config's lr keys and `step`, so those are
// its whole state.
typedef struct {
    int64_t step;      // optimizer steps taken (the 0-based index of the next step)
    LoaderPos data;    // training loader position of the next step
    RngStream rng;     // the sampling stream (training draws no other random numbers: the loader's
                       // shuffle is keyed by (seed, epoch), restored by the config and `data`)
    uint64_t lineage;  // the run's lineage: drawn by a fresh run, kept by a resumed one (ckpt_prune
                       // removes only checkpoints of its own lineage); 0 in files saved before it
    uint32_t tok_fp;   // fingerprint of the tokenizer whose ids the model learned (tok_fingerprint
                       // in data/tokenizer.h); 0: unknown (a file saved before it)
    uint64_t data_fp;  // fingerprint of the training shard `data` indexes (loader_fingerprint); 0: unknown
    int64_t global_batch;  // sequences a step over every rank (batch_size x grad_accum x DP); 0: unknown
    char changed[512]; // ckpt_load: the settings that differ from the saved run's and take their new
                       // values ("steps 2 -> 4, lr ..."), "" if none; for the caller to report once
                       // the resume has passed its own checks. Not saved.
} CkptState;

// EPLB plan and load statistics (optional in a checkpoint; absent means the identity placement).
typedef struct {
    int R;             // physical slots per MoE layer of phy2log
    int *phy2log;      // (L, R) logical expert in each slot, -1 on dense layers; NULL: none saved
    long *counts;      // (L, E) tokens routed to each logical expert; NULL: none saved
    long *load;        // (L, E) tokens per logical expert since the last rebalance (the EPLB
                       // runtime's accumulator); NULL: none saved
} CkptEplb;

// One process holding every expert (sh->parts == 1): writes the whole state to the single file
// `path`, atomically (path.tmp-<pid>, fsync, rename). eplb may be NULL.
void ckpt_save(const char *path, const CkptShard *sh, const CkptView *v, const CkptState *st,
               const CkptEplb *eplb);

// Several processes: every rank writes its own part file (path.part-<r>-of-<n>) with the tensors and
// expert rows it owns; then, once every part is on disk (after a barrier), rank 0 writes the index
// `path`, which joins the parts into the logical tensors through HDF5 virtual datasets and holds the
// state. The index's rename is the commit: until it happens the previous checkpoint is the latest.
// An error in a part or in the index before its commit removes every part of the save (they are of no
// use without the index).
// The index stores c and the state: adam_t is AdamW's step count, as in CkptView.
void ckpt_save_part(const char *path, const CkptShard *sh, const CkptView *v);
// ckpt_save_part in two steps, for a job that puts its parts in place only once every rank has
// written its own: the part complete on the disk under its temporary name (tracked: any end of the
// process removes it), then renamed into place.
typedef struct {
    char final[CKPT_PATH_MAX + 32];
    char tmp[CKPT_PATH_MAX + 64];
    char dir[CKPT_PATH_MAX];
} CkptPartWrite;
void ckpt_part_write(const char *path, const CkptShard *sh, const CkptView *v, CkptPartWrite *out);
void ckpt_part_commit(const CkptPartWrite *pf);
void ckpt_save_index(const char *path, int parts, const MoeConfig *c, long adam_t, const CkptState *st,
                     const CkptEplb *eplb);

// Loads a checkpoint (single file or index, whatever layout saved it) into the slots sh describes.
// Checks the format version, the stored config against v->cfg (model-shape keys must agree), and
// every dataset's name, type, shape and completeness before reading anything; a bad file exits 2
// with one message naming the problem. Fills v->data (and v->m, v->v, *v->adam_t unless v->m is
// NULL: weights only) and *st (unless NULL).
void ckpt_load(const char *path, const CkptShard *sh, const CkptView *v, CkptState *st);
// Every file a reader opens is first read by HDF5 in a child process, so that metadata damaged in a
// way that crashes HDF5 ends in exit 2 (checkpoints/h5_probe.c). Off (0) for the tests that feed
// the reader thousands of damaged files and want its own checks, fast: the fuzz target and the flip
// scan. On (1) by default.
void ckpt_set_probe(int on);
// The config stored in a checkpoint (on top of the defaults).
void ckpt_read_config(const char *path, MoeConfig *c);
// The same for a model that holds the whole checkpoint in one process (sample, export, ckpt inspect
// and verify): the run's layout dropped, one EP rank and one pipeline stage, and no EPLB slots. The
// file holds each logical expert once, whatever replicas the run kept (a model built with the run's
// redundant slots could not take them: such checkpoints failed in all four commands).
void ckpt_read_config_whole(const char *path, MoeConfig *c);
// The training state stored in a checkpoint (step, data position, sampling stream, lineage, tokenizer).
void ckpt_read_state(const char *path, CkptState *st);
// The EPLB group of a checkpoint: returns 0 (and zeroes *out) when absent; arrays from core_alloc.
int ckpt_load_eplb(const char *path, const MoeConfig *c, CkptEplb *out);
void ckpt_eplb_free(CkptEplb *e);

// `moelab ckpt inspect` and `moelab ckpt verify` compare a file with the model its stored config
// builds, which the caller assembles (checkpoints/ does not build models): after ckpt_read_config,
// ref is the registry of that model in any expert-parallel layout (only names, logical shapes and
// kinds are read).
//
// `moelab ckpt inspect`: prints the state (with lr(c, step), the learning rate of the next step), the
// config and every tensor of ref with shape, dtype and norms.
void ckpt_inspect(const char *path, const ParamRegistry *ref, float (*lr)(const MoeConfig *c, int step),
                  FILE *out);
// `moelab ckpt verify`: reads every dataset (Fletcher-32 checks each chunk), checks completeness and
// shapes against ref; prints a summary and returns on success, exits 2 on a problem.
void ckpt_verify(const char *path, const ParamRegistry *ref, FILE *out);

// Checkpoints of a training run: DIR/step_<step>.h5.
void ckpt_step_path(const char *dir, long step, char *out, size_t n);
// Creates dir if it does not exist (a usage error if it cannot).
void ckpt_make_dir(const char *dir);
// A new lineage id (never 0) for a run that does not resume.
uint64_t ckpt_new_lineage(void);
// After a run saved DIR/step_<newest>.h5: keeps `keep` checkpoints of its lineage (keep 0 keeps all),
// removing (with their part files) the oldest of those that are older than `newest` and that this
// run wrote itself (steps own[0..n_own)) or descends from (step <= from, the step it resumed at; -1
// for a fresh run) and that carry `lineage` (a branch has a lineage of its own, framework/train.c).
// Checkpoints of other runs and of other branches, and files that only look like checkpoints, are
// never touched.
void ckpt_prune(const char *dir, int keep, uint64_t lineage, long newest, long from, const long *own,
                int n_own);

// Removes the part files PATH.part-<r>-of-<n> of a checkpoint PATH (regular files only; not the
// temporaries of a save under way), and with index_too first PATH itself, so that the checkpoint is
// never visible with parts missing. In a multi-part save over an earlier checkpoint of the same
// name (rank 0, once every new part is on the disk as a temporary, before any is renamed into
// place): a save that dies in its renames then leaves orphan parts, which ckpt_stale_files names,
// instead of the old index over parts of another save. After a single-file save (index_too 0):
// the parts of an earlier multi-part save of that name, which nothing points at any more.
void ckpt_clear(const char *path, int index_too);

// Leftovers of crashed saves in dir: temporary files NAME.tmp-<pid> whose process is not running
// here, and part files NAME.part-<r>-of-<n> whose index NAME is missing (a multi-rank save that died
// before its commit), where NAME is a checkpoint's (step_<s>.h5 or its part) and the file is empty
// or HDF5: regular files only, never another program's. Calls fn(path, why, ctx) for each and returns their number. A running save of
// another run into the same directory has part files without an index for a moment: clean a
// directory no run is writing to.
int ckpt_stale_files(const char *dir, void (*fn)(const char *path, const char *why, void *ctx), void *ctx);
// The checkpoints DIR/step_<s>.h5 with first <= s <= last that carry `lineage` (same = 1), or that
// do not (same = 0: another run's, or unreadable; a run that saves those steps replaces them), of
// the steps s a run saving every `every` steps and at `last` writes (every = 1: any step; 0: last).
// Writes the newest one's path to newest (when there is one) and returns their number.
int ckpt_lineage_in(const char *dir, uint64_t lineage, int same, long first, long last, long every, char *newest,
                    size_t len);

// Tests only: called after each dataset a save writes, with the number written so far (used to kill
// a save half-way). NULL turns it off.
void ckpt_set_save_hook(void (*hook)(int datasets_written));

#ifdef __cplusplus
}
#endif
#endif
