// Pipeline-parallel training (see pipe_train.h): the Model behind the executor's stage interface,
// and the step around the schedule. Every rank of a pipeline reads the same micro-batches from its
// loader, so the first stage finds the inputs and the last stage the targets of any micro-batch
// without sending tokens along.
#include "framework/pipe_train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/timer.h"
#include "parallel/comm_nccl.h"
#include "parallel/dp_sync.h"
#include "parallel/ep_dispatch.h"
#include "parallel/stage_partition.h"
#include "parallel/zero1.h"

// ---------------------------------------------------------------------------------------------
// The stage interface over a Model.

static const float *stage_forward(void *ctx, int mb, const float *h_in) {
    PipeStageCtx *x = ctx;
    ModelActs *a = &x->acts[mb];
    const int *tok = x->tokens + (size_t)mb * x->B * (x->T + 1);
    x->loss += model_stage_forward(x->m, a, tok, h_in, x->B, x->T, 1);
    if (x->m->last) {
        x->ce += a->ce;
        return NULL;
    }
    return a->h_out;
}

static const float *stage_backward_input(void *ctx, int mb, const float *dh_out) {
    PipeStageCtx *x = ctx;
    model_stage_backward_input(x->m, &x->acts[mb], dh_out, x->scale);
    return x->m->first ? NULL : model_stage_dinput(x->m, &x->acts[mb]);
}

static void stage_backward_weight(void *ctx, int mb) {
    PipeStageCtx *x = ctx;
    model_backward_weight(x->m, &x->acts[mb]);
}

static void stage_release(void *ctx, int mb) {
    PipeStageCtx *x = ctx;
    model_acts_free(x->m, &x->acts[mb]);
}

// ---------------------------------------------------------------------------------------------
// Set-up.

int pipe_trainer_wanted(const MoeConfig *c) {
    return c->pp > 1 || strcmp(c->schedule, "1f1b") != 0 || c->trace[0] != '\0';
}

PipeTrainer *pipe_trainer_create(const MoeConfig *c, Grid *g, const LayerOps *ops) {
    const int kind = sched_kind_parse(c->schedule), N = g->pp, C = c->grad_accum;
    if (kind < 0) core_usage_error("--schedule %s: expected 1f1b, dualpipe or dualpipev", c->schedule);
    char err[SCHED_ERR_LEN];
    Schedule *s = sched_build((SchedKind)kind, N, C, err);
    if (!s) core_usage_error("--schedule %s --pp %d with %d micro-batches per step (--chunks): %s",
                             c->schedule, N, C, err);
    PipeTrainer *p = core_alloc(sizeof *p);
    p->sched = s;
    p->grid = g;
    p->S = kind == SCHED_DUALPIPEV ? 2 * N : N;
    if (c->L < p->S)
        core_usage_error("--schedule %s with --pp %d cuts the model into %d stages of at least one "
                         "layer, but n_layers = %d", c->schedule, N, p->S, c->L);
    double *layer = core_alloc((size_t)c->L * sizeof(double));  // (L) forward FLOPs per token
    double embed, head;
    stage_costs(c, layer, &embed, &head);
    p->bounds = core_alloc((size_t)(p->S + 1) * sizeof(int));
    stage_partition(layer, c->L, embed, head, p->S, p->bounds);
    core_free(layer);

    p->n_models = kind == SCHED_1F1B ? 1 : 2;
    p->partner = kind == SCHED_DUALPIPE ? N - 1 - g->pp_rank : -1;
    p->n_own = p->partner >= 0 ? 1 : p->n_models;
    p->ops = ops;
    const int on_gpu = ops->dev != CORE_CPU;
    // On GPUs gradients and token rows stay in device memory and travel over NCCL twins of the
    // grid's groups; counts, losses and norms still travel over the host groups.
    if (on_gpu) grid_to_device(g, ops);
    // Pipe 1's model gets EP communicators of its own (the same ranks as the grid's EP group), so
    // that each communicator serves one model: the F&B overlap runs pipe 0's and pipe 1's halves on
    // two threads, and every EP rank of the stage issues one model's calls in the schedule's order,
    // which is the per-communicator order MPI and NCCL need. Made whenever there are two pipes, so
    // that the CPU tests run the layout the overlap uses.
    if (p->n_models == 2 && g->ep > 1) {
        p->ep1 = comm_split(g->ep_comm, 0, g->ep_rank, "ep pipe 1");
        if (on_gpu) p->ep1_dev = comm_nccl_create(p->ep1, "ep pipe 1");
    }
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        const int st = sched_stage(s, g->pp_rank, pipe);
        // Initialization is keyed by parameter identity, so both copies of a DualPipe stage (and
        // every stage against the one-process model) start identical.
        Model *m = model_create_stage(c, g->ep_rank, g->ep, p->bounds[st], p->bounds[st + 1]);
        model_init_weights(m);
        m->grid = g;
        if (g->ep > 1) {
            MoeDispatcher *d = ep_dispatcher_create(pipe == 1 ? p->ep1 : g->ep_comm, c->E);
            ep_dispatcher_set_overlap(d, c->ep_overlap);
            if (on_gpu) ep_dispatcher_to_device(d, pipe == 1 ? p->ep1_dev : g->ep_dev, ops);
            model_set_dispatcher(m, d);
        }
        model_to_device(m, ops);
        p->model[pipe] = m;
        zero1_init_if(&p->opt[pipe], &m->reg, ops, m->wlow, g, c->zero);
        p->ctx[pipe] = (PipeStageCtx){m, core_alloc((size_t)C * sizeof(ModelActs)), NULL, c->batch_size,
                                      c->T, 1.0f / (float)C, 0, 0};
        p->stage[pipe] = (PipeStage){&p->ctx[pipe], stage_forward, stage_backward_input,
                                     stage_backward_weight, stage_release};
    }
    // The copies of a DualPipe stage sum their gradients over a group of the two ranks: an
    // all-reduce of two gives both the same a + b.
    if (p->partner >= 0) {
        const int lo = g->pp_rank < p->partner ? g->pp_rank : p->partner;
        p->pair = comm_split(g->pp_comm, lo, g->pp_rank, "pp copies");
        if (on_gpu) p->pair_dev = comm_nccl_create(p->pair, "pp copies");
    }
    // Test seam (core_test_seam): MOELAB_TEST_PIPE_LINKS=1 runs the GPU transport (per-link
    // communicators, ordered receives) over MPI on the CPU (tests/pipeline/train_pp_cli_test.sh).
    const char *test_links = core_test_seam("MOELAB_TEST_PIPE_LINKS");
    if (test_links && strcmp(test_links, "1") != 0)
        core_usage_error("MOELAB_TEST_PIPE_LINKS = '%s': expected 1 (or unset)", test_links);
    if (N > 1 && (on_gpu || test_links))
        p->links = pipe_links_create(g->pp_comm, ops, (size_t)c->batch_size * c->T * c->D * ops->act_size);
    // The F&B overlap runs an op's forward on a second stream; the CPU runs the halves in turn
    // (a second host thread there would compete for the same cores, and OpenMP's settings are
    // per thread).
    if (c->fb_overlap && on_gpu) p->fb = pipe_fb_create();
    if (c->fb_overlap && kind != SCHED_1F1B)
        core_info0("pipeline: F&B ops run their forward and backward %s",
                   on_gpu ? "at once, on two streams" : "one after the other (no overlap on the CPU)");
    // A trace file that cannot be written is found now, not after the last step.
    if (c->trace[0] && g->rank == 0) {
        FILE *f = fopen(c->trace, "w");
        if (!f) core_usage_error("cannot write --trace %s: %s", c->trace, strerror(errno));
        fclose(f);
    }
    p->imbalance = core_alloc((size_t)c->L * sizeof(float));
    p->trace = core_alloc((size_t)(s->n_ops[g->pp_rank] > 0 ? s->n_ops[g->pp_rank] : 1) * sizeof(SimEvent));

    char line[1024];
    int n = snprintf(line, sizeof line, "pipeline: %s, %d ranks, %d micro-batches per step | layers per stage:",
                     c->schedule, N, C);
    for (int st = 0; st < p->S && n < (int)sizeof line - 32; st++)
        n += snprintf(line + n, sizeof line - (size_t)n, " [%d,%d)", p->bounds[st], p->bounds[st + 1]);
    core_info0("%s", line);
    if (kind == SCHED_DUALPIPE)
        core_info0("pipeline: rank r holds stages r and %d-r; their gradients are summed with rank %d-r", N - 1, N - 1);
    if (kind == SCHED_DUALPIPEV) core_info0("pipeline: rank r holds stages r and %d-r", 2 * N - 1);
    if (p->links)
        core_info0("pipeline: messages over one %s communicator per directed link between neighbours",
                   on_gpu ? "NCCL" : "MPI");
    return p;
}

void pipe_trainer_free(PipeTrainer *p) {
    if (!p) return;
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        model_free(p->model[pipe]);  // before the grid: the EP dispatcher uses its communicator
        zero1_free(&p->opt[pipe]);
        adamw_free(&p->opt[pipe]);
        core_free(p->ctx[pipe].acts);
    }
    pipe_links_free(p->links);
    pipe_fb_free(p->fb);
    if (p->ep1_dev) comm_free(p->ep1_dev);
    if (p->ep1) comm_free(p->ep1);
    if (p->pair_dev) comm_free(p->pair_dev);
    if (p->pair) comm_free(p->pair);
    grid_free(p->grid);
    sched_free(p->sched);
    core_free(p->bounds);
    core_free(p->imbalance);
    core_free(p->trace);
    core_free(p);
}

// ---------------------------------------------------------------------------------------------
// The step.

static PipeRun run_of(PipeTrainer *p, SimEvent *trace) {
    const MoeConfig *c = &p->model[0]->cfg;
    const int on_gpu = p->ops->dev != CORE_CPU;
    PipeRun r = {p->sched, p->grid->pp_rank, p->grid->pp_comm, {&p->stage[0], NULL},
                 (size_t)c->batch_size * c->T * c->D * p->ops->act_size, on_gpu ? p->ops : NULL,
                 p->links, trace, p->fb};
    if (p->n_models > 1) r.stage[1] = &p->stage[1];
    return r;
}

// DualPipe: the two copies of each stage (this rank's down stage r and the partner's up stage r,
// and the other way round) add up their gradients and routing counts, so that both copies take
// the same optimizer step and bias update. Each sum is an all-reduce over the pair (its device
// twin for the gradients), which gives both ranks the same float a + b, so the copies stay
// bit-identical. Both ranks sum the copies of the lower rank's down stage first.
static void copy_sum(PipeTrainer *p) {
    const MoeConfig *c = &p->model[0]->cfg;
    const int lower = p->grid->pp_rank < p->partner;
    for (int i = 0; i < 2; i++) {
        Model *m = p->model[lower ? i : 1 - i];
        comm_allreduce(p->pair_dev ? p->pair_dev : p->pair, m->reg.grad, m->reg.total, COMM_F32, COMM_SUM);
        comm_allreduce(p->pair, m->expert_counts, (size_t)c->L * c->E, COMM_I64, COMM_SUM);
    }
}

// The trained tensors' gradients of models [0, n) as a DpGrad list (t has room for all tensors).
static int grad_list(PipeTrainer *p, int n, DpGrad *t) {
    int k = 0;
    for (int pipe = 0; pipe < n; pipe++) {
        const ParamRegistry *r = &p->model[pipe]->reg;
        for (int i = 0; i < r->n; i++)
            if (r->p[i].kind != PARAM_BUFFER)
                t[k++] = (DpGrad){r->grad + r->p[i].offset, r->p[i].numel, r->p[i].kind == PARAM_EXPERT};
    }
    return k;
}

StepStats pipe_train_step(PipeTrainer *p, const MoeConfig *c, int step, const int *tokens) {
    StepStats st = {0};
    const double t0 = core_now();
    const Grid *g = p->grid;
    const int C = p->sched->C;
    CHECK(c->grad_accum == C, "pipe_train_step: %d micro-batches, the schedule has %d", c->grad_accum, C);
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        Model *m = p->model[pipe];
        model_zero_grad(m);
        model_reset_counts(m);
        m->count_routes = 1;
        p->ctx[pipe].tokens = tokens;
        p->ctx[pipe].loss = p->ctx[pipe].ce = 0;
    }
    grid_test_die_at(g, step);
    PipeRun run = run_of(p, p->trace);
    pipe_run(&run);
    double means[2] = {0, 0};  // loss, ce: summed over the stages, then over the pipeline group
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        p->model[pipe]->count_routes = 0;
        model_counts_to_host(p->model[pipe]);  // the counts travel over the host groups
        means[0] += p->ctx[pipe].loss;
        means[1] += p->ctx[pipe].ce;
    }
    comm_allreduce(g->pp_comm, means, 2, COMM_F64, COMM_SUM);
    means[0] /= C;
    means[1] /= C;
    if (p->partner >= 0) copy_sum(p);

    int n_tensors = 0;
    for (int pipe = 0; pipe < p->n_models; pipe++) n_tensors += p->model[pipe]->reg.n;
    DpGrad *t = core_alloc((size_t)n_tensors * sizeof *t);
    DpSync *shard[2] = {p->opt[0].shard, p->opt[1].shard};  // ZeRO-1: each model's sharded sync
    // Each stage counted once: DualPipe's up stages are copies of other ranks' down stages.
    if (shard[0]) {
        for (int pipe = 0; pipe < p->n_models; pipe++) dp_sync_complete(shard[pipe]);
        st.grad_norm = (float)sqrt(dp_sync_shard_sqsum(g, shard, p->n_own));
    } else {
        dp_sync_grads(g, t, grad_list(p, p->n_models, t), DP_SYNC_BUCKET_FLOATS);
        st.grad_norm = (float)sqrt(dp_sync_grad_sqsum(g, t, grad_list(p, p->n_own, t)));
    }
    core_free(t);
    dp_sync_mean(g, means, 2);
    st.loss = (float)means[0];
    st.ce = (float)means[1];
    // As in train_step_tokens: a diverged step changes nothing, on every rank (both values are global).
    if (train_step_nonfinite(&st, c)) {
        p->ops->sync();
        st.seconds = core_now() - t0;
        return st;
    }

    const float clip = optim_clip_factor(st.grad_norm, c->grad_clip);
    st.lr = optim_lr(c, step);
    // The bias update's c̄ counts the tokens of the whole step, over all data-parallel ranks.
    const long n_tokens = (long)C * c->batch_size * c->T * g->dp;
    for (int l = 0; l < c->L; l++) p->imbalance[l] = 0;
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        Model *m = p->model[pipe];
        dp_sync_sum_counts(g, m->expert_counts, (size_t)c->L * c->E);
        model_counts_to_device(m);  // the bias update reads the global counts where it runs
        if (shard[0]) zero1_step(&p->opt[pipe], &m->reg, c, st.lr, clip);
        else adamw_step(&p->opt[pipe], &m->reg, c, st.lr, clip);
        model_router_bias_update(m, n_tokens);
        float *imb = core_alloc((size_t)c->L * sizeof(float));  // (L) zero outside this stage
        model_load_imbalance(m, imb);
        for (int l = 0; l < c->L; l++) p->imbalance[l] = fmaxf(p->imbalance[l], imb[l]);
        core_free(imb);
    }
    comm_allreduce(g->pp_comm, p->imbalance, (size_t)c->L, COMM_F32, COMM_MAX);
    p->ops->sync();  // a GPU step is done when its last kernel is
    st.seconds = core_now() - t0;
    return st;
}

float pipe_eval_ce(PipeTrainer *p, const int *tokens) {
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        p->ctx[pipe].tokens = tokens;
        p->ctx[pipe].loss = p->ctx[pipe].ce = 0;
    }
    PipeRun run = run_of(p, NULL);
    pipe_run_forward(&run, 1);
    double ce = 0;
    for (int pipe = 0; pipe < p->n_models; pipe++) ce += p->ctx[pipe].ce;
    comm_allreduce(p->grid->pp_comm, &ce, 1, COMM_F64, COMM_SUM);
    return (float)ce;
}

size_t pipe_param_count(const PipeTrainer *p) {
    long total = 0;
    for (int pipe = 0; pipe < p->n_own; pipe++) total += (long)p->model[pipe]->reg.total;
    comm_allreduce(p->grid->pp_comm, &total, 1, COMM_I64, COMM_SUM);
    return (size_t)total;
}

void pipe_expert_counts(const PipeTrainer *p, long *counts) {
    const MoeConfig *c = &p->model[0]->cfg;
    const size_t n = (size_t)c->L * c->E;
    // Every layer belongs to exactly one owned stage of the pipeline, and is zero in all others.
    memset(counts, 0, n * sizeof(long));
    for (int pipe = 0; pipe < p->n_own; pipe++)
        for (size_t i = 0; i < n; i++) counts[i] += p->model[pipe]->expert_counts[i];
    comm_allreduce(p->grid->pp_comm, counts, n, COMM_I64, COMM_SUM);
}

void pipe_write_trace(const PipeTrainer *p, const char *path) {
    const Grid *g = p->grid;
    const Schedule *s = p->sched;
    // DP rank 0's pipeline holds world rank 0; the other pipelines ran the same schedule.
    if (g->dp_rank != 0) return;
    int most = 1;
    for (int r = 0; r < s->N; r++) most = s->n_ops[r] > most ? s->n_ops[r] : most;
    // Every rank knows every rank's ops (the schedule): only the times travel.
    double *mine = core_alloc((size_t)2 * most * sizeof(double));       // (most, 2) start, end
    double *all = core_alloc((size_t)2 * most * s->N * sizeof(double)); // (N, most, 2)
    for (int i = 0; i < s->n_ops[g->pp_rank]; i++) {
        mine[2 * i] = p->trace[i].start;
        mine[2 * i + 1] = p->trace[i].end;
    }
    comm_allgather(g->pp_comm, mine, all, (size_t)2 * most, COMM_F64);
    if (g->rank == 0) {
        double t0 = all[0];
        for (int r = 0; r < s->N; r++)
            for (int i = 0; i < s->n_ops[r]; i++) t0 = fmin(t0, all[((size_t)r * most + i) * 2]);
        SimEvent **ev = core_alloc((size_t)s->N * sizeof(SimEvent *));  // (N) per-rank events
        for (int r = 0; r < s->N; r++) {
            ev[r] = core_alloc((size_t)(s->n_ops[r] > 0 ? s->n_ops[r] : 1) * sizeof(SimEvent));
            for (int i = 0; i < s->n_ops[r]; i++) {
                const double *x = &all[((size_t)r * most + i) * 2];
                ev[r][i] = (SimEvent){s->ops[r][i], x[0] - t0, x[1] - t0};
            }
        }
        SimTimeline tl = {s->N, s->n_ops, ev, 0, 0, NULL, NULL};
        char err[SCHED_ERR_LEN];
        if (sim_write_trace(&tl, path, err)) FATAL("--trace: %s", err);
        core_info0("trace of the last step's pipeline ops written to %s", path);
        for (int r = 0; r < s->N; r++) core_free(ev[r]);
        core_free(ev);
    }
    core_free(mine);
    core_free(all);
}
