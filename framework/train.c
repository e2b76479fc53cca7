// The training loop (see train.h): data, model and optimizer wired together, with logging.
#include "framework/train.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/ckpt.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "framework/backend.h"
#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/json.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/prof.h"
#include "framework/core/timer.h"
#include "framework/pipe_train.h"
#include "framework/sample.h"
#include "parallel/comm.h"
#include "parallel/dp_sync.h"
#include "parallel/eplb_runtime.h"
#include "parallel/grid.h"
#include "parallel/zero1.h"

// The training tokens' unigram model (the frequencies of train.bin's ids): its entropy on the
// training tokens (nats/token, what the start of a run reports), and its cross-entropy on the
// targets a validation pass scores (tokens 1..T of sequences 0 .. n_seq - 1 of val.bin), add-one
// smoothed over the vocabulary so that an id unseen in training costs a finite loss: the loss of the
// best model that ignores context on the tokens of the validation loss, which a trained model must
// beat (the training tokens' entropy is no bound on other tokens: a model already below the unigram
// model was told to train longer; review, 2026-12-06). The histogram has the shard's own vocabulary
// (every id is below it: shard_open checked), whatever the config says.
static void unigram_losses(const char *train_path, const char *val_path, uint64_t n_seq, int T, double *h_train,
                           double *ce_val) {
    Shard sh, vs;
    shard_open(train_path, &sh);
    double *cnt = core_alloc((size_t)sh.vocab * sizeof(double));  // (shard vocab)
    for (uint64_t i = 0; i < sh.n; i++) cnt[shard_token(&sh, i)] += 1.0;
    double h = 0;
    for (uint32_t v = 0; v < sh.vocab; v++)
        if (cnt[v] > 0) h -= cnt[v] / (double)sh.n * log(cnt[v] / (double)sh.n);
    *h_train = h;
    shard_open(val_path, &vs);
    double ce = 0;
    for (uint64_t s = 0; s < n_seq; s++)
        for (int j = 1; j <= T; j++) {
            const uint32_t id = shard_token(&vs, s * (uint64_t)T + (uint64_t)j);
            ce -= log(((id < sh.vocab ? cnt[id] : 0) + 1.0) / ((double)sh.n + sh.vocab));
        }
    *ce_val = ce / ((double)n_seq * T);
    shard_close(&vs);
    core_free(cnt);
    shard_close(&sh);
}

// One split of the data directory for the loader. Its token ids index the embedding and the LM head
// (V rows), so a shard written with another tokenizer than the data directory's (the files of two
// `moelab data prepare` runs, or an edited header) is bad data, reported here on every rank. Shards
// of an older moelab carry no tokenizer fingerprint: only their vocabulary size can be checked.
static Loader *open_split(const char *path, const MoeConfig *c, const Tokenizer *tok, int rank, int world,
                          int shuffle) {
    Loader *l = loader_open(path, c->T, c->batch_size, rank, world, c->seed, shuffle);
    if (loader_vocab(l) != (uint32_t)tok->V)
        core_usage_error("%s was written for a vocabulary of %u tokens, but %s/tokenizer.bin and "
                         "vocab_size have %d: the data directory mixes files of different `moelab data "
                         "prepare` runs (prepare it again)", path, loader_vocab(l), c->data, tok->V);
    if (loader_tok_fp(l) && loader_tok_fp(l) != tok_fingerprint(tok))
        core_usage_error("%s was written with another tokenizer of %d tokens than %s/tokenizer.bin "
                         "(fingerprints %08x and %08x): the data directory mixes files of different "
                         "`moelab data prepare` runs (prepare it again)", path, tok->V, c->data,
                         loader_tok_fp(l), tok_fingerprint(tok));
    return l;
}

static void join(char *out, size_t n, const char *dir, const char *file) {
    int k = snprintf(out, n, "%s/%s", dir, file);
    if (k < 0 || (size_t)k >= n) core_usage_error("path too long: %s/%s", dir, file);
}

// The Philox stream of the sample drawn at the end of training (saved in checkpoints).
static const uint32_t SAMPLE_STREAM = 7;

// This process's place in a checkpoint for its model of pipe `pipe`: one part file per model stage
// and data-parallel rank (part = stage·DP + dp_rank of S·DP, so the parts follow the model's order;
// S = 1 without a pipeline, where part = rank); the non-expert tensors of each stage written by its
// DP rank 0, each expert row by its first expert-data-parallel replica.
static CkptShard trainer_shard(Trainer *t, int pipe) {
    const Model *m = t->pipe->ctx[pipe].m;
    CkptShard sh = ckpt_shard_identity(m->ep_rank, m->ep_size, m->cfg.E);
    // The slots hold the experts of the model's placement (EPLB rewrites it; replicas included).
    sh.R = m->R;
    sh.phy2log = m->phy2log;
    const PipeTrainer *p = t->pipe;
    const Grid *g = p->grid;
    const int dp = g ? g->dp : 1;
    sh.part = sched_stage(p->sched, g ? g->pp_rank : 0, pipe) * dp + (g ? g->dp_rank : 0);
    sh.parts = p->S * dp;
    sh.write_dense = !g || g->dp_rank == 0;
    sh.write_experts = !g || g->edp_rank == 0;
    return sh;
}

// What a checkpoint stores of model m and optimizer o, in the host memory the checkpoint code reads
// and writes: on the CPU without ZeRO-1 their own buffers; else host copies of the fp32 values and
// the whole AdamW moments, filled for a save (a ZeRO-1 optimizer's gathered from every rank: a
// collective) and left zero for a load, which reads every tensor's floats (save = 0). AdamW's t
// lives on the host either way.
static CkptView trainer_ckpt_view(Model *m, AdamW *o, int save) {
    CkptView v = {&m->cfg, &m->reg, m->reg.data, o->m, o->v, &o->t};
    if (m->ops->dev == CORE_CPU && !o->shard) return v;
    const size_t bytes = m->reg.total * sizeof(float);
    v.data = core_alloc(bytes);
    v.m = core_alloc(bytes);
    v.v = core_alloc(bytes);
    if (!save) return v;
    if (o->shard) {
        zero1_gather_state(o, &m->reg, v.data, v.m, v.v);
    } else {
        m->ops->download(v.data, m->reg.data, bytes);
        m->ops->download(v.m, o->m, bytes);
        m->ops->download(v.v, o->v, bytes);
    }
    return v;
}

// Frees a view's host copies; after a load (upload = 1) first puts them back: the values, the
// moments and the compute copy of the weights.
static void trainer_ckpt_view_free(CkptView *v, Model *m, AdamW *o, int upload) {
    if (v->data == m->reg.data) return;
    const size_t bytes = m->reg.total * sizeof(float);
    if (upload && o->shard) {
        zero1_scatter_state(o, &m->reg, v->data, v->m, v->v);
    } else if (upload) {
        m->ops->upload(m->reg.data, v->data, bytes);
        m->ops->upload(o->m, v->m, bytes);
        m->ops->upload(o->v, v->v, bytes);
        model_refresh_low(m);
    }
    core_free(v->data);
    core_free(v->m);
    core_free(v->v);
}

// Whether every rank of the world passed the same h: the largest h and the largest negated h over
// the ranks are both this rank's only if all agree. One process agrees with itself.
static int ranks_agree(uint64_t h) {
    Comm *w = comm_world();
    if (w->size < 2) return 1;
    const int64_t mine = (int64_t)(h >> 1);
    int64_t v[2] = {mine, -mine};
    comm_allreduce(w, v, 2, COMM_I64, COMM_MAX);
    return v[0] == mine && -v[1] == mine;
}

// What is known of the newest checkpoint's weights (Trainer.ckpt_trust). Finite weights can give
// nothing but NaN: a checkpoint is named good after a divergence only on evidence (review,
// 2026-12-06: a file whose every forward was NaN was named "the last good checkpoint").
typedef enum {
    TRUST_UNKNOWN,  // saved without a validation at its step, and no step has run on it yet
    TRUST_GOOD,     // a validation of its weights was finite, or the step after it applied
    TRUST_BAD,      // the step after it was not finite (and no validation has cleared it)
} TrainerTrust;

// What is now known of last_ckpt: a good one is also the newest known good.
static void trainer_trust(Trainer *t, TrainerTrust trust) {
    t->ckpt_trust = trust;
    if (trust == TRUST_GOOD) snprintf(t->good_ckpt, sizeof t->good_ckpt, "%s", t->last_ckpt);
}

// After a validation of the model's weights as they are: a finite one clears the checkpoint that
// holds them, if one does.
static void trainer_validated(Trainer *t, float val) {
    if (!isfinite(val)) return;
    t->validated_at = t->step;
    if (t->last_ckpt[0] && t->ckpt_current) trainer_trust(t, TRUST_GOOD);
}

// Sequences a step over every rank: batch_size x grad_accum on each data-parallel rank.
static int64_t trainer_global_batch(const Trainer *t) {
    return (int64_t)t->cfg.batch_size * t->cfg.grad_accum * (t->pipe->grid ? t->pipe->grid->dp : 1);
}

// Restores everything a step depends on: weights and router biases, AdamW moments and t, the step
// (hence the learning rate) and the training loader's position. Returns the checkpoint's lineage.
static uint64_t trainer_resume(Trainer *t) {
    // EPLB goes on from the saved placement when it has as many slots, so that replicas split their
    // experts' tokens as before; ckpt_load fills each slot from its expert's logical rows either way.
    // Each stage's runtime takes the rows of its own MoE layers.
    CkptEplb e = {0};
    int dropped = 0;  // slots of a saved placement of another slot count, said once the resume passed its checks
    int has_eplb = t->cfg.eplb_interval > 0 && ckpt_load_eplb(t->cfg.resume, &t->cfg, &e);
    if (has_eplb) {
        if (e.phy2log && e.R != t->pipe->ctx[0].m->R) dropped = e.R;
        for (int pipe = 0; pipe < t->pipe->n_models; pipe++) {
            const PipeStageCtx *x = &t->pipe->ctx[pipe];
            if (x->eplb && e.phy2log && e.R == x->m->R)
                eplb_runtime_set_placement(x->eplb, e.phy2log + (size_t)x->moe0 * e.R);
        }
        // The interval's load so far: the next rebalance plans from the same tokens as without the
        // interruption (a checkpoint of an older moelab has none: the interval starts empty).
        if (e.load) pipe_eplb_set_load(t->pipe, e.load);
    }
    // Every held model loads its stage's tensors (both copies of a DualPipe stage: they stay equal).
    CkptState st;
    for (int pipe = 0; pipe < t->pipe->n_models; pipe++) {
        Model *m = t->pipe->ctx[pipe].m;
        AdamW *o = t->pipe->ctx[pipe].o;
        const CkptShard sh = trainer_shard(t, pipe);
        CkptView v = trainer_ckpt_view(m, o, 0);
        ckpt_load(t->cfg.resume, &sh, &v, &st);
        trainer_ckpt_view_free(&v, m, o, 1);
    }
    // The last step's routing counts: a step resets them, and a run that trains none saves them again.
    // Read after the weights (without EPLB), whose checks name a checkpoint of another model.
    if (!has_eplb) has_eplb = ckpt_load_eplb(t->cfg.resume, &t->cfg, &e);
    if (has_eplb && e.counts) pipe_set_expert_counts(t->pipe, e.counts);
    if (has_eplb) ckpt_eplb_free(&e);
    // The embedding's rows are the token ids of the checkpoint's tokenizer: another one (data prepared
    // again, with the same vocabulary size) would go on training them as other tokens.
    if (st.tok_fp && st.tok_fp != tok_fingerprint(t->tok))
        core_usage_error("--resume %s was trained with another tokenizer than %s/tokenizer.bin (fingerprints "
                         "%08x and %08x): resume on the data directory of its run", t->cfg.resume, t->cfg.data,
                         st.tok_fp, tok_fingerprint(t->tok));
    // Ranks that do not share a file system may have read different files of that name: they trained
    // on from other steps and weights until a collective timed out (review, 2026-12-06).
    const uint64_t at[4] = {(uint64_t)st.step, st.lineage, st.data.epoch, st.data.index};
    if (!ranks_agree(core_fnv1a64(CORE_FNV64_START, at, sizeof at)))
        core_usage_error("the ranks resumed different checkpoints at --resume %s (other steps or runs: hosts "
                         "that do not share it need the same copy)", t->cfg.resume);
    t->step = (int)st.step;
    // --steps counts from the start of the run the checkpoint continues: fewer than it holds would
    // train nothing and end with exit 0 (fuzzing: `--resume step_3.h5 --steps 2` printed "step 3/2").
    if (t->cfg.steps < t->step)
        core_usage_error("--steps %d is below the step of --resume %s (%d): --steps counts the whole run, "
                         "so pass at least %d (as many evaluates and saves it)", t->cfg.steps, t->cfg.resume,
                         t->step, t->step);
    // Said once the resume has passed every check: a refused one is its error alone.
    if (st.changed[0] && core_rank() == 0)
        core_warn("checkpoint %s: these settings differ from the saved run and take their new values: %s",
                  t->cfg.resume, st.changed);
    // Not dropped silently (review, 2026-12-05): the first rebalance places the experts again.
    if (dropped)
        core_info0("eplb: %s placed %d slots per MoE layer, this run has %d: the experts start in the identity "
                   "placement until the first rebalance", t->cfg.resume, dropped, t->pipe->ctx[0].m->R);
    // Said, not refused: training on from a checkpoint on other data or with another batch can be
    // meant (a new corpus, more GPUs), but a data folder prepared again in place, or a requeue under
    // another layout, changed the run without a word (review, 2026-12-06).
    if (core_rank() == 0 && st.data_fp && st.data_fp != loader_fingerprint(t->train))
        core_warn("checkpoint %s was trained on other data than %s/train.bin holds (prepared again, or another "
                  "corpus): training goes on from the saved position in these shards, an epoch's order no "
                  "longer that of the run", t->cfg.resume, t->cfg.data);
    if (core_rank() == 0 && st.global_batch && st.global_batch != trainer_global_batch(t))
        core_warn("checkpoint %s was trained with %lld sequences a step, this run takes %lld (batch_size x "
                  "grad_accum x data-parallel ranks): the run goes on with another global batch",
                  t->cfg.resume, (long long)st.global_batch, (long long)trainer_global_batch(t));
    t->resumed_at = t->step;
    if (st.lineage) t->lineage = st.lineage;
    // A resume below its lineage's newest checkpoint in --out starts a branch: it takes a lineage of
    // its own, so that neither line of checkpoints prunes the other's (the continued original
    // pruned the branch's results as its own, sweep 2026-12-05), and the original's later
    // checkpoints it will replace are named at the start as another run's.
    char later[2 * CONFIG_STR + 32];
    if (core_rank() == 0 && t->cfg.out[0] &&
        ckpt_lineage_in(t->cfg.out, t->lineage, 1, t->step + 1, LONG_MAX, 1, later, sizeof later) > 0) {
        t->lineage = ckpt_new_lineage();
        core_info0("resumed below %s, the newest checkpoint of the same run in --out: this run is a branch "
                   "with its own checkpoint lineage (--keep prunes only its own)", later);
    }
    snprintf(t->last_ckpt, sizeof t->last_ckpt, "%s", t->cfg.resume);
    t->ckpt_current = 1;
    trainer_trust(t, TRUST_UNKNOWN);  // until the validation at resume
    loader_set_pos(t->train, st.data);
    core_info0("resumed from %s at step %d", t->cfg.resume, t->step);
    return st.lineage;
}

// DIR/step_<n>.h5: one file from one process holding the whole model; otherwise every rank writes
// the part of each stage it owns and rank 0 then commits the index. Keeps the newest cfg.keep.
static void trainer_save(Trainer *t) {
    char path[CONFIG_STR + 32];
    ckpt_step_path(t->cfg.out, t->step, path, sizeof path);
    // `--steps 0 --resume DIR/step_0.h5 --out DIR` holds what that file holds: writing it again could
    // only lose it (a multi-part save removes the old checkpoint first).
    if (t->resumed_at == t->step && core_same_file(path, t->cfg.resume)) {
        core_info0("%s is the checkpoint this run resumed from: not written again", path);
        return;
    }
    core_signals_saving(1);
    const CkptState st = {.step = t->step, .data = loader_get_pos(t->train),
                          .rng = rng_stream(t->cfg.seed, SAMPLE_STREAM), .lineage = t->lineage,
                          .tok_fp = tok_fingerprint(t->tok), .data_fp = loader_fingerprint(t->train),
                          .global_batch = trainer_global_batch(t)};
    Model *m = t->pipe->ctx[0].m;  // pipe 0: the down pipe, the whole model in a plain run
    AdamW *o = t->pipe->ctx[0].o;
    // A pipeline stage counts only its own layers' tokens (and places only its own layers' experts):
    // the whole model's are gathered over the stages.
    long *counts = core_alloc((size_t)t->cfg.L * t->cfg.E * sizeof(long));  // (L, E)
    pipe_expert_counts(t->pipe, counts);
    int *phy2log = NULL;  // (L, R) with EPLB
    long *load = NULL;    // (L, E) with EPLB
    if (t->cfg.eplb_interval > 0) {
        phy2log = core_alloc((size_t)t->cfg.L * m->R * sizeof(int));
        pipe_eplb_placement(t->pipe, phy2log);
        load = core_alloc((size_t)t->cfg.L * t->cfg.E * sizeof(long));
        pipe_eplb_load(t->pipe, load);
    }
    const CkptEplb e = {m->R, phy2log, counts, load};
    const CkptShard sh = trainer_shard(t, 0);
    Comm *world = t->pipe->grid ? t->pipe->grid->world_comm : NULL;
    if (sh.parts == 1) {
        CkptView v = trainer_ckpt_view(m, o, 1);
        ckpt_save(path, &sh, &v, &st, &e);
        trainer_ckpt_view_free(&v, m, o, 0);
        ckpt_clear(path, 0);  // parts of an earlier multi-part save of this step
    } else {
        // DualPipe's up stages are copies of other ranks' down stages: only the down copy is saved.
        CkptPartWrite *pf = core_alloc((size_t)t->pipe->n_own * sizeof *pf);
        for (int pipe = 0; pipe < t->pipe->n_own; pipe++) {
            Model *pm = t->pipe->ctx[pipe].m;
            AdamW *po = t->pipe->ctx[pipe].o;
            const CkptShard psh = trainer_shard(t, pipe);
            CkptView v = trainer_ckpt_view(pm, po, 1);
            ckpt_part_write(path, &psh, &v, &pf[pipe]);
            trainer_ckpt_view_free(&v, pm, po, 0);
        }
        // Every part on the disk before any is put in place: a rank whose part fails (a full disk)
        // ends the job while the others' are still temporaries, which their ends remove, instead
        // of leaving parts that no index names.
        if (world) comm_barrier(world);
        // Only then does an earlier checkpoint of this step (another run's, warned of at the start)
        // go, index first, and before any part replaces one of its parts: the old index over parts
        // of this save would read as damaged. Cleared before the writing (until 2026-12-05), a save
        // that died in its parts (a full disk, a kill) lost the old checkpoint and the new one.
        if (core_rank() == 0) ckpt_clear(path, 1);
        if (world) comm_barrier(world);
        for (int pipe = 0; pipe < t->pipe->n_own; pipe++) ckpt_part_commit(&pf[pipe]);
        core_free(pf);
        if (world) comm_barrier(world);
        if (core_rank() == 0) ckpt_save_index(path, sh.parts, &m->cfg, o->t, &st, &e);
        if (world) comm_barrier(world);
    }
    core_free(counts);
    core_free(phy2log);
    core_free(load);
    t->saved = core_grow(t->saved, (size_t)t->n_saved, (size_t)t->n_saved + 1, sizeof *t->saved);
    t->saved[t->n_saved++] = t->step;
    snprintf(t->last_ckpt, sizeof t->last_ckpt, "%s", path);
    t->ckpt_current = 1;
    trainer_trust(t, t->validated_at == t->step ? TRUST_GOOD : TRUST_UNKNOWN);
    if (core_rank() == 0)
        ckpt_prune(t->cfg.out, t->cfg.keep, t->lineage, t->step, t->resumed_at, t->saved, t->n_saved);
    core_signals_saving(0);
    core_info0("saved %s", path);
}

static void count_stale(const char *path, const char *why, void *first) {
    if (!*(char *)first) snprintf(first, CONFIG_STR + 64, "%s (%s)", path, why);
}

// Crashed saves leave temporary and orphaned part files in --out: the user hears of them (and of the
// command that removes them) when a run starts there.
static void report_stale(const char *dir) {
    char first[CONFIG_STR + 64] = "";
    const int n = ckpt_stale_files(dir, count_stale, first);
    if (n > 0)
        core_warn("%s holds %d file%s left by saves that crashed, e.g. %s: `moelab ckpt clean %s` removes them",
                  dir, n, n == 1 ? "" : "s", first, dir);
}

// A full disk shows at the flush (buffered writes fail late): the run stops rather than logging
// nothing. The file keeps only its whole lines: a cut last line made `moelab plot` refuse the whole
// file, and a failure at the first line left an empty file (sweep, 2026-12-05). A line is flushed
// whole, so the flushed length is the end of a whole line.
static void metrics_flush(Trainer *t) {
    if (fflush(t->metrics) == 0 && !ferror(t->metrics)) {
        t->metrics_whole = ftell(t->metrics);
        return;
    }
    const int err = errno;
    // What the failed flush kept buffered is dropped: the exit's own flush would write it past the
    // cut below, once the cut has freed the space.
    __fpurge(t->metrics);
    struct stat fd_st, path_st;
    if (fstat(fileno(t->metrics), &fd_st) == 0 && S_ISREG(fd_st.st_mode)) {  // not a FIFO or a device
        // Removed only where the path is still this file itself, not a link to it (/dev/stdout).
        const int same = lstat(t->cfg.metrics, &path_st) == 0 && path_st.st_dev == fd_st.st_dev &&
                         path_st.st_ino == fd_st.st_ino;
        if (t->metrics_whole == 0 && same) unlink(t->cfg.metrics);
        else (void)!ftruncate(fileno(t->metrics), t->metrics_whole);
    }
    core_failure_error("cannot write --metrics %s: %s", t->cfg.metrics, strerror(err));
}

// The bytes at the start of the metrics file f that a run resumed from a checkpoint of `lineage`
// at step `at` keeps: through the last line of that lineage's history up to that step. A metrics
// file is a sequence of runs, each a config line (naming its lineage and the step it resumed at)
// and its step lines, so a run requeued with the same command and --resume (a batch system's
// preemption) goes on with the curve that led to its checkpoint: the steps after it, which it
// trains again (or a branch's), go. 0 where the file holds no such line (another run's, or one
// written before lineages were named): the run writes it anew. Reading stops at a line that is not
// whole JSON. *last: the last step line kept (-1: none).
static long metrics_kept(FILE *f, uint64_t lineage, int at, int *last) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long end = 0, keep = 0;
    int ours = 0;  // the lines since the last config line are the resumed lineage's
    *last = -1;    // the last step kept (-1: none)
    while (lineage && (n = getline(&line, &cap, f)) > 0 && line[n - 1] == '\n') {
        // A byte order mark and blank lines are no lines to moelab plot either: passed over, not
        // taken for the end of the run's lines (review, 2026-12-06).
        const size_t bom = end == 0 ? core_bom_len(line, (size_t)n) : 0;
        end += n;
        if (strspn(line + bom, " \t\r\n") == (size_t)n - bom) continue;
        char what[JSON_ERR_LEN];
        size_t col;
        JsonValue *v = json_parse_at(line + bom, (size_t)n - bom, what, &col);
        if (!v) break;
        const JsonValue *id = json_get(v, "lineage"), *from = json_get(v, "resumed_at");
        const JsonValue *step = json_get(v, "step");
        // A run of the lineage that started before `at` (fresh, or resumed below it), and its steps
        // up to `at`.
        if (json_get(v, "config")) {
            ours = id && id->type == JSON_STRING && strtoull(id->str, NULL, 16) == lineage;
            if (ours && (!from || (from->type == JSON_NUMBER && from->number < at))) keep = end;
        } else if (ours && step && step->type == JSON_NUMBER && step->number <= at) {
            keep = end;
            *last = (int)step->number;
        }
        json_free(v);
    }
    free(line);
    return keep;
}

// Rank 0 opens --metrics: cut to what a resumed run keeps of it (metrics_kept; nothing for a fresh
// run), then the config line.
static void metrics_open(Trainer *t, uint64_t resumed) {
    const MoeConfig *c = &t->cfg;
    // O_NONBLOCK: a FIFO that no process reads held the run at this open for ever (it waits for
    // a reader); one with a reader opens, and the writes block again (as file.c's inputs do).
    const int fd = open(c->metrics, O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0666);
    if (fd < 0 && errno == ENXIO)
        core_usage_error("cannot write --metrics %s: a FIFO that no process reads", c->metrics);
    if (fd < 0) core_path_error(errno, "cannot write --metrics %s: %s", c->metrics, strerror(errno));
    long keep = 0;
    // A file that another run writes now is not cut under it: two runs given one --metrics
    // interleaved their lines over a stretch of NULs (sweep, 2026-12-05). The lock lasts as
    // long as this process; a file system without locks goes without.
    struct stat sb;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode)) {
        if (flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK)
            core_usage_error("--metrics %s is being written by another moelab train running now: give this "
                             "run its own --metrics", c->metrics);
        // (A checkpoint saved before lineages, resumed = 0, has no lines to find: written anew.)
        FILE *old = t->resumed_at >= 0 && sb.st_size > 0 ? fopen(c->metrics, "r") : NULL;
        if (old) {
            int last;
            keep = metrics_kept(old, resumed, t->resumed_at, &last);
            fclose(old);
            if (keep && last >= 0)
                core_info0("--metrics %s: goes on after the resumed run's lines up to step %d", c->metrics, last);
            else if (keep) core_info0("--metrics %s: goes on after the resumed run's config line", c->metrics);
            else core_info0("--metrics %s holds no lines of the resumed run: written anew", c->metrics);
        }
        if (ftruncate(fd, keep) != 0 || lseek(fd, keep, SEEK_SET) != keep)
            core_path_error(errno, "cannot write --metrics %s: %s", c->metrics, strerror(errno));
    }
    t->metrics = fcntl(fd, F_SETFL, 0) == 0 ? fdopen(fd, "w") : NULL;
    if (!t->metrics) core_path_error(errno, "cannot write --metrics %s: %s", c->metrics, strerror(errno));
    t->metrics_whole = keep;  // a failed first write cuts back to the kept lines, not to nothing
    // The config line says which settings produced the lines after it, every key as this run
    // resolved it, and which run they belong to (its checkpoints' lineage, and the resumed step).
    fputs("{\"config\": ", t->metrics);
    config_write_json(c, t->metrics);
    fprintf(t->metrics, ", \"lineage\": \"%016llx\"", (unsigned long long)t->lineage);
    if (t->resumed_at >= 0) fprintf(t->metrics, ", \"resumed_at\": %d", t->resumed_at);
    fputs("}\n", t->metrics);
    metrics_flush(t);
}

// Every rank must run the same settings. Ranks started with different command lines (mpirun's
// MPMD form, `-np 1 moelab train A : -np 1 moelab train B`) disagreed on shapes and steps: a buffer
// overrun in the DP all-reduce, or a hang at the end of the shorter run (fuzzing, 2026-12-04). The
// ranks compare a hash of the whole config, every key as config_write prints it.
static void check_same_config(const MoeConfig *c) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f, "open_memstream: %s", strerror(errno));
    config_write(c, f);
    fclose(f);
    const uint64_t h = core_fnv1a64(CORE_FNV64_START, text, len);
    free(text);
    if (!ranks_agree(h))
        core_usage_error("the %d ranks were started with different settings (command lines or config files): "
                         "every rank of a run needs the same ones", comm_world()->size);
}

Trainer *trainer_create(const MoeConfig *cfg) {
    Trainer *t = core_alloc(sizeof *t);
    t->cfg = *cfg;
    MoeConfig *c = &t->cfg;
    check_same_config(c);
    // The layout is checked on every rank before any data is read.
    // (Flags that disagree were refused with the flags; one flag outranks the files' values of both:
    // config_apply_args. What is left is config files that set both.)
    if (c->chunks > 0 && c->grad_accum != 1 && c->grad_accum != c->chunks)
        core_usage_error("config: chunks = %d and grad_accum = %d both set the micro-batches per step: set one "
                         "(or pass --chunks or --grad-accum, which outranks both)", c->chunks, c->grad_accum);
    if (c->chunks > 0) c->grad_accum = c->chunks;
    // With EP the F&B overlap's two threads both call MPI (each pipe on its own EP group).
    if (c->fb_overlap && c->ep > 1 && !comm_threads_ok())
        core_usage_error("--fb-overlap 1 with --ep %d needs an MPI with MPI_THREAD_MULTIPLE: the forward "
                         "and the backward of an F&B op both communicate, from two threads; this MPI "
                         "gives less (pass --fb-overlap 0)", c->ep);
    Grid *g = grid_create(comm_world(), c->pp, c->ep, c->E);
    eplb_runtime_check_config(c);  // before the grid line counts its slots
    grid_log(g, c->E, c->E + c->eplb_redundant);
    const int on_gpu = strcmp(c->device, "cpu") != 0;
    // The device dispatchers move rows over NCCL, which a one-rank EP group does not have.
    if (on_gpu && c->eplb_interval > 0 && g->ep < 2)
        core_usage_error("--device %s --eplb-interval %d needs --ep > 1 (mpirun, one rank per GPU): one "
                         "expert-parallel rank has no load to balance", c->device, c->eplb_interval);
    // One process per GPU: under mpirun each rank takes the GPU of its rank on its host.
    int n_local = 1;
    const int local_rank = g->world > 1 ? grid_local_rank(comm_world(), &n_local) : 0;
    const LayerOps *ops = backend_ops_on(c->device, on_gpu ? local_rank : 0);
    backend_configure(c, n_local);
    if (c->data[0] == '\0')
        core_usage_error("no training data: pass --data DIR (a directory made by `moelab data prepare`)");
    struct stat sb;
    if (stat(c->data, &sb) != 0 || !S_ISDIR(sb.st_mode))
        core_usage_error("--data %s: not a directory made by `moelab data prepare`", c->data);
    // The dataset's files are opened under the shared lock of its lock file, which `data prepare`
    // holds alone while it replaces them: files of two prepares, or ranks of one job on different
    // datasets, were possible when a prepare ran meanwhile (sweep, 2026-12-05). Once open they stay
    // this run's. (A dataset of a prepare before the lock file has none: opened unlocked.)
    char path[2 * CONFIG_STR];
    join(path, sizeof path, c->data, PREPARE_LOCK_NAME);
    const int data_lock = core_file_lock(path, 1);
    if (data_lock == CORE_DIR_BUSY)
        core_usage_error("--data %s is being written by a moelab data prepare running now: train when it has "
                         "ended", c->data);
    join(path, sizeof path, c->data, prepare_file_names[PREPARE_TOKENIZER]);
    t->tok = tok_load(path);
    // With --resume, "set --vocab-size" only led to the checkpoint's refusal of that size (review,
    // 2026-12-06): the data was prepared again.
    MoeConfig saved = *c;  // what --resume's checkpoint holds tells which side changed
    if (t->tok->V != c->V && c->resume[0]) ckpt_read_config(c->resume, &saved);
    if (t->tok->V != c->V && c->resume[0] && saved.V != t->tok->V)
        core_usage_error("the tokenizer in %s has %d tokens, but --resume %s was trained with vocab_size = %d: "
                         "resume on the data directory of its run (was --data prepared again?)", c->data,
                         t->tok->V, c->resume, saved.V);
    if (t->tok->V != c->V)
        core_usage_error("config vocab_size = %d but the tokenizer in %s has %d tokens: set "
                         "--vocab-size %d", c->V, c->data, t->tok->V, t->tok->V);
    join(path, sizeof path, c->data, prepare_file_names[PREPARE_TRAIN]);
    t->train = open_split(path, c, t->tok, g->dp_rank, g->dp, 1);
    char train_path[sizeof path];
    memcpy(train_path, path, sizeof path);
    join(path, sizeof path, c->data, prepare_file_names[PREPARE_VAL]);
    // A validation pass reads the same val_batches x B sequences from the start of val.bin on every
    // rank, so that every layout reports the one-process run's validation loss (each data-parallel
    // rank reading its own share made it depend on the layout: review, 2026-12-05). More than it
    // holds would re-read it (and a huge count would never end).
    t->val = open_split(path, c, t->tok, 0, 1, 0);
    // Read under the lock too; a validation set beyond val.bin is refused below.
    const uint64_t n_val = (uint64_t)c->val_batches * c->batch_size;
    unigram_losses(train_path, path, n_val < loader_num_sequences(t->val) ? n_val : loader_num_sequences(t->val),
                   c->T, &t->unigram_entropy, &t->unigram_val);
    // Every rank holds its lock until all have opened the files: the holds overlap, so no prepare
    // can replace the dataset between one rank's opens and another's (review, 2026-12-05).
    if (g->world > 1) comm_barrier(comm_world());
    core_dir_unlock(data_lock);
    // Ranks on hosts that do not share a file system read their own copies of --data: another
    // tokenizer of the same size, or other shards, trained on in silence (review, 2026-12-06).
    const uint64_t data_id[3] = {tok_fingerprint(t->tok), loader_fingerprint(t->train),
                                 loader_fingerprint(t->val)};
    if (!ranks_agree(core_fnv1a64(CORE_FNV64_START, data_id, sizeof data_id)))
        core_usage_error("the ranks read different datasets at --data %s (another tokenizer or other shards: "
                         "hosts that do not share it need the same copy)", c->data);
    const uint64_t val_seqs = loader_num_sequences(t->val);
    const uint64_t fit = val_seqs / (uint64_t)c->batch_size;  // whole batches it holds
    if ((uint64_t)c->val_batches * (uint64_t)c->batch_size > val_seqs)
        core_usage_error("--val-batches %d is too large: %s holds %llu sequences of %d tokens, enough for "
                         "%llu batches of %d (%s, or prepare a larger --val-fraction)", c->val_batches, path,
                         (unsigned long long)val_seqs, c->T + 1, (unsigned long long)fit, c->batch_size,
                         fit > 0 ? "lower --val-batches or --batch-size" : "lower --batch-size or --seq-len");
    t->pipe = pipe_trainer_create(c, g, ops);
    t->tokens = core_alloc((size_t)c->grad_accum * c->batch_size * (c->T + 1) * sizeof(int));
    t->out_lock = CORE_DIR_NO_LOCK;
    if (c->out[0]) {
        // Rank 0 makes the folder first, so that one process made every new folder of the path and
        // can remove them all again where the run fails before saving (core_make_dirs); the others
        // find it made, or make their own where they do not share its file system.
        if (core_rank() == 0) ckpt_make_dir(c->out);
        // comm_world, not g: pipe_trainer_create took the grid over (and frees a one-process one).
        if (comm_world()->size > 1) comm_barrier(comm_world());
        if (core_rank() != 0) ckpt_make_dir(c->out);
        // Two runs saving into one folder at once would replace (and --keep delete) each other's
        // checkpoints, which the warning below cannot see while both folders still look empty.
        if (core_rank() == 0) {
            t->out_lock = core_dir_lock(c->out);
            if (t->out_lock == CORE_DIR_BUSY)
                core_usage_error("--out %s is in use by another moelab command running now (train, data "
                                 "prepare or ckpt clean): give this run its own --out", c->out);
            report_stale(c->out);
        }
    }
    t->lineage = ckpt_new_lineage();
    t->resumed_at = -1;
    t->validated_at = -1;
    uint64_t resumed = 0;  // the resumed checkpoint's lineage
    if (c->resume[0]) {
        resumed = trainer_resume(t);
        // Each rank reads only its own part: every one has passed its checks before rank 0 truncates
        // --metrics below (a part damaged or missing for another rank ended the job after rank 0
        // had cut the file, review 2026-12-05).
        if (t->pipe->grid) comm_barrier(t->pipe->grid->world_comm);
    }
    // Opened (and so cut) only once --out and --resume have passed their checks: a run refused for
    // bad input cut an earlier metrics file at this path to the refused run's config line.
    if (c->metrics[0] && core_rank() == 0) metrics_open(t, resumed);
    // Another run's checkpoints at steps this run will save are replaced when it saves them: said
    // now, while the run can still be stopped and given another --out (a new run into the same
    // folder, e.g. the quickstart run twice, is common enough that refusing would be worse).
    // A run that trains no step (--steps equal to the resumed step: a checkpoint moved to another
    // layout or folder) saves the resumed step itself (review, 2026-12-06: it was replaced unsaid).
    // Only the steps it saves count (every save_every, and the last): a run saving only its last
    // step named the others as replaced too (review, 2026-12-06).
    if (c->out[0] && core_rank() == 0) {
        char newest[2 * CONFIG_STR + 32];  // --out and a step_<n>.h5 name
        const int first = c->steps == t->resumed_at ? t->resumed_at : t->resumed_at + 1;
        const int n = ckpt_lineage_in(c->out, t->lineage, 0, first, c->steps, c->save_every, newest, sizeof newest);
        if (n > 0)
            core_warn("%s holds %d checkpoint%s of another run at steps this run saves (the newest %s): "
                      "each is replaced when this run saves its step; to keep them, stop and pass another "
                      "--out", c->out, n, n == 1 ? "" : "s", newest);
    }
    return t;
}

void trainer_free(Trainer *t) {
    if (!t) return;
    if (t->metrics) fclose(t->metrics);
    core_dir_unlock(t->out_lock);
    loader_close(t->train);
    loader_close(t->val);
    tok_free(t->tok);
    pipe_trainer_free(t->pipe);
    core_free(t->tokens);
    core_free(t->saved);
    core_free(t);
}

// One optimizer step over cfg.grad_accum micro-batches from the training loader.
static StepStats trainer_step(Trainer *t) {
    const MoeConfig *c = &t->cfg;
    const size_t mb = (size_t)c->batch_size * (c->T + 1);
    for (int i = 0; i < c->grad_accum; i++) loader_next(t->train, t->tokens + i * mb);
    StepStats st = pipe_train_step(t->pipe, c, t->step, t->tokens);
    t->step++;
    return st;
}

// Mean loss over cfg.val_batches micro-batches of the validation split (always the same ones).
static float trainer_eval(Trainer *t) {
    const MoeConfig *c = &t->cfg;
    // Always the same validation micro-batches, from the start of the split, so values compare.
    LoaderPos start = {0};
    loader_set_pos(t->val, start);
    double sum = 0;
    for (int i = 0; i < c->val_batches; i++) {
        loader_next(t->val, t->tokens);
        sum += pipe_eval_ce(t->pipe, t->tokens);  // the language-model loss alone
    }
    double mean = sum / c->val_batches;
    if (t->pipe->grid) dp_sync_mean(t->pipe->grid, &mean, 1);
    return (float)mean;
}

// Decodes ids to text and prints them with non-printable bytes escaped.
static void print_text(const Tokenizer *tok, const int *ids, int n) {
    size_t len;
    uint8_t *txt = tok_decode_ints(tok, ids, (size_t)n, &len);
    fputs("  | ", stdout);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = txt[i];
        if (ch == '\n') fputs("\n  | ", stdout);
        else if (ch == '\t' || ch >= 32) putchar(ch);
        else printf("\\x%02x", ch);
    }
    putchar('\n');
    core_free(txt);
}

// `, "expert_load": [[...], ...]`: the step's tokens per logical expert of each MoE layer, over all
// data-parallel ranks (what `moelab plot` draws); counts (L, E).
static void write_expert_load(FILE *f, const MoeConfig *c, const long *counts) {
    fputs(", \"expert_load\": [", f);
    for (int l = c->n_dense_layers; l < c->L; l++) {
        fputs(l > c->n_dense_layers ? ", [" : "[", f);
        for (int e = 0; e < c->E; e++) fprintf(f, e ? ", %ld" : "%ld", counts[(size_t)l * c->E + e]);
        fputc(']', f);
    }
    fputc(']', f);
}

// Under mpirun with one stage per rank (every rank runs the whole model) the trainer keeps the
// time-by-layer-type profiler (prof.h) running over each log line's steps, for the ranks' time in the
// experts.
static int expert_timing(const Trainer *t) { return t->pipe->grid && t->pipe->S == 1; }

// Every rank's milliseconds per step in the experts (the profiler's `experts` region: the routed
// and shared SwiGLUs) over the `steps` steps since the previous log line, gathered into ms (world) on
// every rank and logged with their max/mean, the compute imbalance that EPLB removes; then restarts
// the profiler unless training is over. Collective over the world.
static void log_expert_time(const Trainer *t, int steps, double *ms) {
    const Grid *g = t->pipe->grid;
    double region[PROF_N] = {0};
    prof_stop(region);
    if (t->step < t->cfg.steps) prof_start(t->pipe->ops->dev != CORE_CPU);
    const double mine = region[PROF_EXPERTS] / (steps > 0 ? steps : 1);
    comm_allgather(g->world_comm, &mine, ms, 1, COMM_F64);
    char buf[512] = "", *p = buf;
    double sum = 0, mx = 0;
    for (int r = 0; r < g->world; r++) {
        if (p < buf + sizeof buf - 16) p += sprintf(p, " %.2f", ms[r]);
        sum += ms[r];
        if (ms[r] > mx) mx = ms[r];
    }
    core_info0("expert time | ms/step per rank over %d steps:%s | max/mean %.3f", steps, buf,
               sum > 0 ? mx * g->world / sum : 1.0);
}

// `, "key": value` in metrics: a non-finite value is written as null, so every line stays valid JSON.
static void json_num(FILE *f, const char *key, double v, const char *fmt) {
    fprintf(f, ", \"%s\": ", key);
    if (isfinite(v)) fprintf(f, fmt, v);
    else fputs("null", f);
}

// "1h05m", "3m07s", "42s": a duration for the log line.
static void format_duration(char *out, size_t n, double s) {
    const long x = s > 0 && s < 1e9 ? (long)(s + 0.5) : 0;
    if (x >= 3600) snprintf(out, n, "%ldh%02ldm", x / 3600, x / 60 % 60);
    else if (x >= 60) snprintf(out, n, "%ldm%02lds", x / 60, x % 60);
    else snprintf(out, n, "%lds", x);
}

// eta_s: the seconds the steps left would take at the run's pace so far (< 0: none left).
static void log_step(Trainer *t, const StepStats *st, float val, double tok_s, int steps, double eta_s) {
    const MoeConfig *c = &t->cfg;
    const Model *m = t->pipe->ctx[0].m;  // for model_is_moe_layer
    const float *imb = t->pipe->imbalance;  // (L)
    const int L = c->L;
    // Per MoE layer, as many as fit one line (the metrics file has them all); none without MoE layers.
    // 64 bytes kept for the last value and the note (" ... (N layers more in --metrics)").
    char ib[512] = "";
    size_t n = 0;
    int shown = 0, moe = 0;
    for (int l = 0; l < L; l++) {
        if (!model_is_moe_layer(m, l)) continue;
        if (!moe++) n += (size_t)snprintf(ib + n, sizeof ib - n, " | load max/mean");
        if (n < sizeof ib - 64) n += (size_t)snprintf(ib + n, sizeof ib - n, " %.2f", imb[l]), shown++;
        if (n > sizeof ib - 1) n = sizeof ib - 1;  // a value snprintf cut
    }
    if (shown < moe) snprintf(ib + n, sizeof ib - n, " ... (%d layers more in --metrics)", moe - shown);
    char vb[32] = "", eta[64] = "";
    if (val >= 0) snprintf(vb, sizeof vb, " | val %.4f", val);
    if (eta_s >= 0) {
        char d[48];
        format_duration(d, sizeof d, eta_s);
        snprintf(eta, sizeof eta, ", eta %s", d);
    }
    core_info0("step %5d/%d | loss %.4f%s | lr %.2e | grad %.3f | %.0f tok/s%s%s",
               t->step, c->steps, st->loss, vb, st->lr, st->grad_norm, tok_s, eta, ib);
    const Grid *g = t->pipe->grid;
    double *ems = expert_timing(t) ? core_alloc((size_t)g->world * sizeof(double)) : NULL;  // (world)
    if (ems) log_expert_time(t, steps, ems);
    if (!c->metrics[0]) {
        core_free(ems);
        return;
    }
    // A pipeline stage counts only its own layers' tokens: the whole model's are summed over the
    // stages, by every rank (a collective), before rank 0 writes them.
    long *counts = core_alloc((size_t)c->L * c->E * sizeof(long));  // (L, E)
    pipe_expert_counts(t->pipe, counts);
    EplbRuntime eplb = {0};  // the EPLB figures of every stage's MoE layers, likewise
    if (c->eplb_interval > 0) pipe_eplb_figures(t->pipe, &eplb);
    if (!t->metrics) {
        core_free(eplb.step_imbalance);
        core_free(counts);
        core_free(ems);
        return;
    }
    fprintf(t->metrics, "{\"step\": %d", t->step);
    json_num(t->metrics, "loss", st->loss, "%.6f");
    json_num(t->metrics, "ce", st->ce, "%.6f");
    if (val >= 0 || isnan(val)) json_num(t->metrics, "val_loss", val, "%.6f");
    json_num(t->metrics, "lr", st->lr, "%.6g");
    json_num(t->metrics, "grad_norm", st->grad_norm, "%.6f");
    json_num(t->metrics, "tokens_per_s", tok_s, "%.1f");
    if (c->nonfinite_skip > 0) fprintf(t->metrics, ", \"skipped_steps\": %d", t->skipped);
    fputs(", \"load_imbalance\": [", t->metrics);
    for (int l = c->n_dense_layers; l < L; l++) {  // the MoE layers
        if (l > c->n_dense_layers) fputs(", ", t->metrics);
        if (isfinite(imb[l])) fprintf(t->metrics, "%.4f", imb[l]);
        else fputs("null", t->metrics);
    }
    fputc(']', t->metrics);
    write_expert_load(t->metrics, c, counts);
    core_free(counts);
    if (ems) {
        fputs(", \"expert_ms\": [", t->metrics);
        for (int r = 0; r < g->world; r++) fprintf(t->metrics, r ? ", %.3f" : "%.3f", ems[r]);
        fputc(']', t->metrics);
        core_free(ems);
    }
    if (eplb.step_imbalance) eplb_runtime_write_metrics(&eplb, t->metrics, st->rebalanced);
    core_free(eplb.step_imbalance);
    fprintf(t->metrics, "}\n");
    metrics_flush(t);
}

// Prints cfg.sample_tokens tokens generated from a newline (the same random numbers every time, so
// the sample before and after training differ only by what the model learned). Where each rank
// holds stages of the model, the tokens are drawn through the pipeline (pipe_sample_generate).
static void trainer_sample(Trainer *t, const char *when) {
    const MoeConfig *c = &t->cfg;
    if (c->sample_tokens <= 0) return;
    Model *m = t->pipe->ctx[0].m;
    const int whole = m->first && m->last;
    RngStream rng = rng_stream(c->seed, SAMPLE_STREAM);
    int prompt = 0;
    uint32_t nl[4];
    // Start from the encoding of a newline when the vocabulary has one, else token 0.
    if (tok_encode(t->tok, (const uint8_t *)"\n", 1, nl) >= 1) prompt = (int)nl[0];
    int *out = core_alloc((size_t)(c->sample_tokens + 1) * sizeof(int));
    out[0] = prompt;
    // Token by token (the same draws as one call for all), with a progress line on a terminal after
    // a second: every token is a forward of the whole window, and a long sample took minutes unseen.
    const int tty = core_rank() == 0 && isatty(STDERR_FILENO);
    const double t0 = core_now();
    int n = 0;
    for (int len = 1; len <= c->sample_tokens; len++, n++) {
        const int drawn = whole ? sample_generate(m, out, len, 1, c->temperature, c->top_k_sample, &rng, out)
                                : pipe_sample_generate(t->pipe, out, len, 1, c->temperature, c->top_k_sample, &rng, out);
        if (!drawn) break;
        if (tty && core_now() - t0 > 1) core_progress("sampling %s: %d/%d tokens", when, len, c->sample_tokens);
    }
    core_progress_end();
    if (n < c->sample_tokens && core_rank() == 0)
        core_warn("sample %s: the logits of token %d are not finite (NaN or infinite): the sample stops there", when,
                  n + 1);
    core_info0("sample %s (%d tokens, temperature %.2f, top-k %d):", when, n, c->temperature, c->top_k_sample);
    if (core_rank() == 0) print_text(t->tok, out + 1, n);
    core_free(out);
}

// The newest checkpoint of good weights, for a run that diverged, into good ("" if none). The newest
// one may hold the very weights that broke (saved, then the next step's loss was NaN): while they
// are still the model's they are validated now (val_now: a validation of them that just ran, or
// NULL), else the newest checkpoint known good is named, if --keep has left it. Returns 1 when the
// newest one is set aside.
static int last_good_ckpt(Trainer *t, const float *val_now, char *good, size_t len) {
    if (t->last_ckpt[0] && t->ckpt_trust != TRUST_GOOD && t->ckpt_current)
        trainer_validated(t, val_now ? *val_now : trainer_eval(t));
    const int aside = t->last_ckpt[0] && t->ckpt_trust != TRUST_GOOD;
    snprintf(good, len, "%s", aside ? t->good_ckpt : t->last_ckpt);
    if (aside && good[0]) {
        // Rank 0 pruned, and its file system is the one the message is about: it looks, all hear.
        struct stat sb;
        int gone = core_rank() == 0 && stat(good, &sb) != 0;
        if (comm_world()->size > 1) comm_allreduce(comm_world(), &gone, 1, COMM_I32, COMM_MAX);
        if (gone) good[0] = '\0';
    }
    return aside;
}

// The run's end by divergence: one message on every rank, naming the last good checkpoint (val_now
// as for last_good_ckpt). Returns 1.
static int trainer_report_diverged(Trainer *t, const char *why, const float *val_now) {
    const MoeConfig *c = &t->cfg;
    char good[sizeof t->last_ckpt], broke[sizeof t->last_ckpt + 80] = "";
    if (last_good_ckpt(t, val_now, good, sizeof good))
        snprintf(broke, sizeof broke, "%s, whose weights gave a loss that is not finite", t->last_ckpt);
    char last[2 * sizeof t->last_ckpt + 160];
    if (good[0])
        snprintf(last, sizeof last, "the last good checkpoint is %s%s%s (resume from it with", good,
                 broke[0] ? ", not the newer " : "", broke);
    else
        snprintf(last, sizeof last, "no checkpoint of this run holds good weights%s%s (start again with",
                 broke[0] ? ": not " : c->out[0] ? "" : ": pass --out DIR", broke);
    core_failure_report("training diverged at step %d: %s; nothing was saved from it, %s a lower --lr or a "
                        "--grad-clip%s)", t->step, why, last,
                        c->nonfinite_skip > 0 ? "" : ", or let --nonfinite-skip N skip such steps");
    return 1;
}

// After a step: a non-finite loss or gradient norm (no update was applied) is skipped while at most
// cfg.nonfinite_skip come in a row; past that the run stops. Every rank sees the same global values,
// so all of them decide alike. Returns 1 when the run must stop.
static int trainer_diverged(Trainer *t, const StepStats *st) {
    const MoeConfig *c = &t->cfg;
    if (!st->nonfinite) {
        t->skipped_run = 0;
        return 0;
    }
    t->skipped++;
    t->skipped_run++;
    if (t->skipped_run <= c->nonfinite_skip) {
        if (core_rank() == 0)  // every rank skips alike
            core_warn("step %d: loss %g, gradient norm %g: not finite or too large, step skipped (%d in a row, "
                      "at most %d; %d in all)", t->step, (double)st->loss, (double)st->grad_norm, t->skipped_run,
                      c->nonfinite_skip, t->skipped);
        return 0;
    }
    char why[128];
    snprintf(why, sizeof why, "loss %g, gradient norm %g (not finite or too large)%s", (double)st->loss,
             (double)st->grad_norm, c->nonfinite_skip > 0 ? ", too many in a row" : "");
    return trainer_report_diverged(t, why, NULL);
}

static const char *signal_name(int sig) {
    return sig == SIGINT ? "SIGINT (Ctrl-C)" : sig == SIGTERM ? "SIGTERM" : sig == SIGHUP ? "SIGHUP" : "SIGUSR1";
}

// The run's end by a polite signal (core_signals_defer), at the end of a step: the step's weights
// saved where --out is set and they are not already, and a line saying how to go on. Every rank
// stops after the same step (trainer_run agrees on it), so the save is collective as usual.
// Returns 128 + the signal, the shell's code for a process a signal ended.
static int trainer_stopped(Trainer *t, int sig, const StepStats *st) {
    const MoeConfig *c = &t->cfg;
    const int saved = t->n_saved > 0 && t->saved[t->n_saved - 1] == t->step;
    // A skipped step's weights are in question (trainer_run saves none of them either).
    if (c->out[0] && !saved && !st->nonfinite) trainer_save(t);
    char what[sizeof t->last_ckpt + 64];
    if (!c->out[0]) snprintf(what, sizeof what, "nothing saved (no --out)");
    else if (t->last_ckpt[0]) snprintf(what, sizeof what, "go on with --resume %s", t->last_ckpt);
    else snprintf(what, sizeof what, "no checkpoint of good weights to go on from");
    core_info0("stopped by %s after step %d of %d: %s", signal_name(sig), t->step, c->steps, what);
    // The exit code is not 0, so mpirun ends the job at the first rank's exit: rank 0 could be
    // killed before its line, or in the middle of its prune of old checkpoints (review,
    // 2026-12-06). Every rank waits for rank 0 to finish first.
    if (t->pipe->grid && t->pipe->grid->world > 1) comm_barrier(t->pipe->grid->world_comm);
    return 128 + sig;
}

// The signal one rank received, on every rank (0: none), so that all of them stop after the same
// step: one small all-reduce a step, where the step's own collectives already keep them together.
static int trainer_stop_signal(const Trainer *t) {
    int sig = core_signals_stop();
    Comm *world = t->pipe->grid ? t->pipe->grid->world_comm : NULL;
    if (world) comm_allreduce(world, &sig, 1, COMM_I32, COMM_MAX);
    return sig;
}

int trainer_run(Trainer *t) {
    const MoeConfig *c = &t->cfg;
    size_t on_rank;
    const size_t n_params = pipe_param_count(t->pipe, &on_rank);
    const int dp = t->pipe->grid ? t->pipe->grid->dp : 1;
    char here[64] = "";
    if (on_rank != n_params) snprintf(here, sizeof here, " (%.2fM on rank 0)", (double)on_rank / 1e6);
    core_info0("model: V %d D %d L %d (dense %d) H %d Hkv %d T %d | E %d K %d S %d Fe %d | %.2fM parameters%s",
               c->V, c->D, c->L, c->n_dense_layers, c->H, c->Hkv, c->T, c->E, c->K, c->S, c->Fe,
               (double)n_params / 1e6, here);
    core_info0("data: %s (%ld training sequences of %d tokens) | batch %d x %d micro-batches x %d dp | %d steps",
               c->data, (long)loader_num_sequences(t->train), c->T, c->batch_size, c->grad_accum, dp,
               c->steps);
    core_info0("unigram entropy of the training tokens: %.4f nats/token (a model that ignores context "
               "scores this)", t->unigram_entropy);
    if (c->recompute) {
        char which[64] = "every layer";
        if (c->recompute_layers) snprintf(which, sizeof which, "the first %d layers of each stage", c->recompute_layers);
        core_info0("recompute: %s keep%s %s only and run%s %s forward again before the backward", which,
                   c->recompute_layers ? "" : "s",
                   c->recompute_keep_attention ? "the input and the attention's output" : "the input",
                   c->recompute_layers ? "" : "s", c->recompute_keep_attention ? "the rest of the" : "the");
    }
    if (t->step == 0) trainer_sample(t, "before training");
    float val = trainer_eval(t);
    trainer_validated(t, val);
    core_info0("step %5d/%d | val %.4f (%s)", t->step, c->steps, val, c->resume[0] ? "at resume" : "before training");
    // Finite weights that give a validation loss that is not finite (values so large that the
    // arithmetic overflows, say) are a checkpoint this run cannot start from, not a run that
    // diverged: it was "training diverged ... the last good checkpoint is" the very file, exit 1
    // (review, 2026-12-06).
    if (c->resume[0] && !isfinite(val))
        core_usage_error("checkpoint %s: its weights give a validation loss of %g at resume: resume from an "
                         "earlier checkpoint", c->resume, (double)val);
    float val_first = val, val_best = val;
    double tokens = 0, secs = 0;
    int steps = 0;  // since the last log line
    if (expert_timing(t) && t->step < c->steps) prof_start(t->pipe->ops->dev != CORE_CPU);
    // Ctrl-C, SIGTERM (a batch system's preemption), SIGHUP or SIGUSR1 (what mpirun forwards to every
    // rank) stop the run after the step under way, with its checkpoint: the work since the last
    // save is not lost. A second signal ends the run at once, as before; under mpirun so does the
    // first SIGINT, SIGTERM or SIGHUP during a save (file.h says why).
    core_signals_defer(core_rank() == 0 ? "moelab: signal received: stopping after this step, with a checkpoint "
                                          "where --out is set (a second signal ends the run at once)\n" : "",
                       t->pipe->grid == NULL || t->pipe->grid->world == 1);
    int rc = -1, late = 0;  // the exit code where the loop ends the run; a signal of the last step
    // The time left comes from the wall clock of the steps so far, validations and saves included
    // (from the steps' own time alone it said 0 s of a run that took 7 s of validations; review,
    // 2026-12-06).
    const double loop_start = core_now();
    const int first_step = t->step;
    while (t->step < c->steps) {  // from the resumed step, if any
        StepStats st = trainer_step(t);
        tokens += (double)c->grad_accum * c->batch_size * c->T * dp;
        secs += st.seconds;
        steps++;
        // A step that ran on a checkpoint's weights tells of them: a finite one clears them, one
        // that is not finite calls them into question (a rare bad batch, or weights that broke).
        if (t->ckpt_current && t->ckpt_trust == TRUST_UNKNOWN) trainer_trust(t, st.nonfinite ? TRUST_BAD : TRUST_GOOD);
        if (!st.nonfinite) t->ckpt_current = 0;  // an update applied
        if (trainer_diverged(t, &st)) {
            rc = CORE_EXIT_FAILURE;
            break;
        }
        int last = t->step == c->steps;
        const int validate = last || (c->val_every > 0 && t->step % c->val_every == 0);
        val = validate ? trainer_eval(t) : -1;
        if (validate) trainer_validated(t, val);
        if (val >= 0 && val < val_best) val_best = val;
        // Weights can be finite and still give nothing but NaN (a last applied step that broke them,
        // every step since skipped): such a result was saved and reported with exit 0 (review,
        // 2026-12-05), and such weights of a step before the last were saved and named the last
        // good checkpoint (review, 2026-12-06). Any validation that is not finite ends the run.
        if (validate && !isfinite(val)) {
            char why[96];
            snprintf(why, sizeof why, "validation loss %g%s%s", (double)val, last ? " after the last step" : "",
                     st.nonfinite ? " (itself skipped)" : "");
            rc = trainer_report_diverged(t, why, &val);
            break;
        }
        if (!st.nonfinite && (last || t->step % c->log_every == 0 || val >= 0 || st.rebalanced)) {
            log_step(t, &st, val, tokens / (secs > 0 ? secs : 1e-9), steps,
                     last ? -1.0 : (core_now() - loop_start) / (t->step - first_step) * (c->steps - t->step));
            tokens = secs = 0;
            steps = 0;
        }
        // A skipped step saves nothing: its weights are the last applied step's, which the skips call
        // into question, until the final validation (above) has found them sound.
        if (c->out[0] && (last || (!st.nonfinite && c->save_every > 0 && t->step % c->save_every == 0)))
            trainer_save(t);
        // A signal during the last step stops nothing: the run is complete (its summary and trace
        // follow); only the sample after it is left out.
        const int sig = trainer_stop_signal(t);
        if (sig && last) {
            late = sig;
        } else if (sig) {
            rc = trainer_stopped(t, sig, &st);
            break;
        }
    }
    core_signals_defer(NULL, 0);
    if (rc >= 0) return rc;
    // No step ran (--steps 0, or --steps equal to the resumed step): the weights as they are, saved
    // into --out (an untrained baseline to sample or export, or a checkpoint moved to another layout
    // or folder; trainer_save leaves the very file resumed from alone).
    const int trained = t->step > (t->resumed_at > 0 ? t->resumed_at : 0);
    if (c->out[0] && !trained) trainer_save(t);
    // A validation loss that rose from its best while training went on will not fall with more of
    // it: "train longer" was the wrong advice for a model that learned a small text by heart
    // (review, 2026-12-05).
    char rose[256];
    snprintf(rose, sizeof rose, "it rose from %.4f, which more steps will not mend (a model that learns its "
             "training text by heart wants more text, a smaller model or fewer steps; too high a learning "
             "rate, a lower --lr)", val_best);
    core_info0("validation loss %.4f -> %.4f nats/token; the training tokens' unigram model scores %.4f on "
               "them: %s", val_first, val, t->unigram_val, val < t->unigram_val ? "the model uses context"
               : trained && val > 1.01f * val_best ? rose
               : "not yet below the unigram model (train longer)");
    // The trace is of the last step this run took: none, no trace (it held zero-length ops).
    if (c->trace[0] && trained) pipe_write_trace(t->pipe, c->trace);
    else if (c->trace[0]) core_info0("no step ran: no trace written to %s", c->trace);
    if (late) core_info0("%s during the last step: the run is complete, no sample drawn", signal_name(late));
    else trainer_sample(t, "after training");
    return 0;
}
