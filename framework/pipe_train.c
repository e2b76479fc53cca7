// The training engine (see pipe_train.h): the Model behind the executor's stage interface, and the
// one step around the schedule for every layout. Every rank of a pipeline reads the same
// micro-batches from its loader, so the first stage finds the inputs and the last stage the targets
// of any micro-batch without sending tokens along.
#include "framework/pipe_train.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/backend.h"
#include "framework/core/check.h"
#include "framework/core/cuda.h"
#include "framework/core/file.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/num.h"
#include "framework/core/prof.h"
#include "framework/core/timer.h"
#include "framework/sample.h"
#include "parallel/comm_nccl.h"
#include "parallel/dp_sync.h"
#include "parallel/ep_dispatch.h"
#include "parallel/stage_partition.h"
#include "parallel/zero1.h"

// ---------------------------------------------------------------------------------------------
// The stage interface over a Model.

// A training forward counts its routes and leaves its loss scalars in the model's memory (the step
// downloads them once), and with recompute keeps only the inputs of the layers that recompute; an
// evaluation forward keeps only every layer's input (no backward follows), returns its loss at once,
// and the last stage adds its cross-entropy (and for pipe_sample_generate keeps the logits row it
// asks for).
static const void *stage_forward(void *ctx, int mb, const void *h_in) {
    PipeStageCtx *x = ctx;
    Model *m = x->m;
    ModelActs *a = &x->acts[mb];
    const int *tok = x->tokens + (size_t)mb * x->B * (x->T + 1);
    const ModelPass train = {.count_routes = 1, .defer_loss = 1,
                             .dev_ids = x->ids ? x->ids + (size_t)mb * 2 * x->B * x->T : NULL,
                             .inputs_only = x->recompute, .keep_attention = x->keep_attention};
    const ModelPass eval = {.inputs_only = m->l1 - m->l0};  // no backward follows
    model_stage_forward(m, a, tok, h_in, x->B, x->T, 1, x->training ? &train : &eval);
    if (x->training) {
        CHECK(x->n_fwd < x->n_mb, "stage [%d, %d): more forwards than its %d micro-batches", m->l0, m->l1,
              x->n_mb);
        const size_t ns = 1 + (size_t)m->cfg.L;
        m->ops->copy(x->dscal + (size_t)x->n_fwd++ * ns, a->scalars, ns * sizeof(float));
    } else if (m->last) {
        x->ce += a->ce;
        if (x->sample_row && !x->sampled) {
            sample_logits_row(m->ops, a->logits, x->sample_pos, m->cfg.V, x->sample_row);
            x->sampled = 1;
        }
    }
    return m->last ? NULL : a->h_out;
}

// Layer l's weight gradients are final: the buckets of its tensors may start their all-reduce.
static void layer_done(void *ctx, int l) {
    PipeStageCtx *x = ctx;
    for (int i = 0; i < x->n_grads; i++)
        if (x->layer_of[i] == l) dp_sync_ready(x->sync, i);
}

// A whole model without a grid (one process, one stage), and with recompute any 1F1B stage, runs
// model_backward here: input and weight gradients layer by layer, bit-identical to the two passes,
// with one layer's backward buffers at a time; its backward_weight then has nothing left to do.
// Otherwise the weight pass waits for the whole input pass: the DP gradient sync, which starts as
// layers' weight gradients complete, then never interleaves with the input pass's EP exchanges.
// So a fused stage with EP ranks reports no layer, and its DP sync runs after the backward.
static const void *stage_backward_input(void *ctx, int mb, const void *dh_out) {
    PipeStageCtx *x = ctx;
    if (x->fused) {
        const ModelPass last = {.layer_done = layer_done, .layer_ctx = x};
        const int report = x->sync && x->n_wgt == x->n_mb - 1 && x->m->ep_size == 1;
        model_backward(x->m, &x->acts[mb], dh_out, x->scale, report ? &last : NULL);
    } else {
        model_stage_backward_input(x->m, &x->acts[mb], dh_out, x->scale);
    }
    return x->m->first ? NULL : model_stage_dinput(x->m, &x->acts[mb]);
}

// The stage's last backward_weight of the step reports each layer as it finishes (layers go last to
// first), so that the DP sync runs during the rest of the backward.
static void stage_backward_weight(void *ctx, int mb) {
    PipeStageCtx *x = ctx;
    const ModelPass last = {.layer_done = layer_done, .layer_ctx = x};
    if (!x->fused) model_backward_weight(x->m, &x->acts[mb], x->sync && x->n_wgt == x->n_mb - 1 ? &last : NULL);
    x->n_wgt++;
}

static void stage_release(void *ctx, int mb) {
    PipeStageCtx *x = ctx;
    model_acts_free(x->m, &x->acts[mb]);
}

// ---------------------------------------------------------------------------------------------
// Set-up.

// The step context of pipe `pipe` around model m (on its backend already) and optimizer o, for
// steps of c: the trained tensors' gradient list, the micro-batches this rank runs through the stage
// (each is one backward of the pipe in the schedule), and the step's buffers.
static void stage_init(PipeTrainer *p, int pipe, const MoeConfig *c, Model *m, AdamW *o) {
    const Schedule *s = p->sched;
    const int rank = p->grid ? p->grid->pp_rank : 0;
    PipeStageCtx *x = &p->ctx[pipe];
    x->m = m;
    x->o = o;
    x->moe0 = m->l0 > c->n_dense_layers ? m->l0 : c->n_dense_layers;
    const ParamRegistry *r = &m->reg;
    x->grads = core_alloc((size_t)r->n * sizeof *x->grads);
    x->layer_of = core_alloc((size_t)r->n * sizeof(int));
    for (int i = 0; i < r->n; i++)
        if (r->p[i].kind != PARAM_BUFFER) {
            x->layer_of[x->n_grads] = r->p[i].layer;
            x->grads[x->n_grads++] = (DpGrad){r->grad + r->p[i].offset, r->p[i].numel, r->p[i].kind == PARAM_EXPERT};
        }
    for (int i = 0; i < s->n_ops[rank]; i++) {
        const SchedOp *op = &s->ops[rank][i];
        x->n_mb += (op->kind == SCHED_B || op->kind == SCHED_FB) && op->b.pipe == pipe;
    }
    x->acts = core_alloc((size_t)s->C * sizeof(ModelActs));
    x->B = c->batch_size;
    x->T = c->T;
    x->scale = 1.0f / (float)s->C;
    // With recompute the stage's first x->recompute layers keep their input only (all of them unless
    // recompute_layers says fewer). 1F1B's backwards (each weight pass right after its input pass)
    // run layer by layer (model_backward), holding one layer's recomputed activations at a time.
    // DualPipe's and DualPipeV's input passes recompute those layers and keep them for the weight
    // pass, which may come later.
    const int n = m->l1 - m->l0, k = c->recompute_layers;
    x->recompute = !c->recompute ? 0 : k > 0 && k < n ? k : n;
    x->keep_attention = c->recompute_keep_attention;
    x->fused = (!p->grid && m->first && m->last) || (x->recompute && strcmp(c->schedule, "1f1b") == 0);
    x->dscal = m->ops->alloc((size_t)(x->n_mb > 0 ? x->n_mb : 1) * (1 + (size_t)c->L) * sizeof(float));
    p->stage[pipe] = (PipeStage){x, stage_forward, stage_backward_input, stage_backward_weight, stage_release};
}

static void stage_free(PipeStageCtx *x, int owned) {
    eplb_runtime_free(x->eplb);
    x->m->ops->free(x->dscal);
    x->m->ops->free(x->ids);
    core_free(x->acts);
    core_free(x->grads);
    core_free(x->layer_of);
    if (!owned) return;
    model_free(x->m);  // before the grid: the EP dispatchers use its communicators
    zero1_free(x->o);
    adamw_free(x->o);
    core_free(x->o);
}

// Around a rebalance's moves (EplbRuntimeSpec.move_begin, _end), which carry whole slot rows between
// EP ranks, while which floats of a row lie in this rank's ZeRO-1 shard differs from slot to slot:
// under ZeRO-1 the fp32 values and the moments are made whole for the moves, and each rank takes its
// shard of them back after (with the compute copy); else the moved slots' compute copy is
// re-derived. A rebalance that keeps every slot's expert calls neither, and so gathers nothing.
static void stage_move_begin(void *ctx) {
    PipeStageCtx *x = ctx;
    float **state = x->eplb->s.state;
    if (x->o->shard) zero1_state_whole(x->o, &x->m->reg, &state[0], &state[1], &state[2]);
}

static void stage_move_end(void *ctx) {
    PipeStageCtx *x = ctx;
    float **state = x->eplb->s.state;
    if (!x->o->shard) {
        model_refresh_low(x->m);
        return;
    }
    zero1_state_shard(x->o, &x->m->reg, state[0], state[1], state[2]);
    state[0] = state[1] = state[2] = NULL;
}

// An EP dispatcher over the stage's group, with the run's exchange settings (ep_overlap,
// ep_chunks), on the device where the model runs there.
static MoeDispatcher *stage_dispatcher(const PipeStageCtx *x, const MoeConfig *c, const LayerOps *ops) {
    MoeDispatcher *d = ep_dispatcher_create(x->ep, c->E);
    ep_dispatcher_set_overlap(d, c->ep_overlap);
    ep_dispatcher_set_chunks(d, c->ep_chunks);
    if (ops->dev != CORE_CPU) ep_dispatcher_to_device(d, x->ep_dev, ops);
    return d;
}

// EPLB over the stage's MoE layers [moe0, l1) in its EP group (cfg.eplb_interval > 0): a runtime that
// the step drives, and a dispatcher of its own for each layer, because each layer has its own
// placement of experts in slots. On a GPU slot rows move over the group's NCCL twin. A stage of
// dense layers only has nothing to balance. A ZeRO-1 optimizer's values and moments are a shard, not
// in the registry's layout: the runtime gets whole copies of them for each rebalance that moves a
// slot (stage_move_begin).
static void stage_eplb_attach(PipeStageCtx *x, const MoeConfig *c) {
    Model *m = x->m;
    const int L = m->l1 - x->moe0;
    if (c->eplb_interval <= 0 || L <= 0) return;
    const int on_gpu = m->ops->dev != CORE_CPU;
    CHECK(!on_gpu || x->ep_dev, "EPLB on %s needs the EP group's NCCL twin (grid_to_device)", m->ops->name);
    const int whole = !x->o->shard;
    EplbRuntimeSpec s = {.L = L, .E = c->E, .R = m->R, .interval = c->eplb_interval,
                         .groups = c->eplb_groups, .nodes = c->eplb_nodes, .ep = x->ep,
                         .phy2log = m->phy2log + (size_t)x->moe0 * m->R,
                         .state = {whole ? m->reg.data : NULL, whole ? x->o->m : NULL, whole ? x->o->v : NULL},
                         .grad = m->reg.grad,
                         .ops = backend_ops_f32(m->ops), .ep_dev = on_gpu ? x->ep_dev : NULL,
                         .move_begin = stage_move_begin, .move_end = stage_move_end, .move_ctx = x};
    s.disp = core_alloc((size_t)L * sizeof *s.disp);
    for (int l = 0; l < L; l++) {
        s.disp[l] = stage_dispatcher(x, c, m->ops);
        model_set_layer_dispatcher(m, x->moe0 + l, s.disp[l]);
    }
    EplbTensor *t = core_alloc((size_t)m->reg.n * sizeof *t);
    for (int i = 0; i < m->reg.n; i++) {
        const ParamInfo *q = &m->reg.p[i];
        if (q->kind == PARAM_EXPERT)
            t[s.n_tensor++] = (EplbTensor){q->layer - x->moe0, q->offset, q->numel / (size_t)q->local_rows};
    }
    s.tensor = t;
    x->eplb = eplb_runtime_create(&s);
    core_free(t);
    core_free(s.disp);
}

// A config whose activations do not fit in memory was ended by the kernel's OOM killer (SIGKILL)
// in its first step (review, 2026-12-05). After setup, when the weights, gradients and moments are
// resident, each CPU rank adds the activations its schedule holds at once (a lower bound of the
// step's peak); the ranks of each machine add theirs up against that machine's memory, and if any
// machine's would exceed it, every rank refuses the config naming the fullest one. Under ZeRO-1 an
// EPLB rebalance (between steps, the activations freed) holds whole copies of the values and the
// moments beside the shards (stage_move_begin): a rank's peak beyond what it holds is the larger of
// the two.
// Test seam (core_test_seam): MOELAB_TEST_HOST_MEMORY_MIB stands for the machine's memory, so that
// the tests reach the refusal without filling a machine (tests/parallel/zero1_cli_test.sh).
static void check_host_memory(const PipeTrainer *p, const MoeConfig *c) {
    if (p->ops->dev != CORE_CPU) return;
    enum { HELD, ACTS, REBAL, HOST, MEMORY, NF };  // per rank: held now, activations, a rebalance's
                                                   // whole copies, its host, the host's memory
    const int rank = p->grid ? p->grid->pp_rank : 0, W = p->grid ? p->grid->world : 1;
    double mine[NF] = {core_host_resident_bytes(), 0, 0, 0, core_host_memory_bytes()}, *all = mine;
    const char *seam = core_test_seam("MOELAB_TEST_HOST_MEMORY_MIB");
    if (seam) {
        long long mib;
        char err[NUM_ERR_LEN];
        if (num_parse_int("MOELAB_TEST_HOST_MEMORY_MIB", seam, 1, 1LL << 40, &mib, err) != NUM_OK)
            core_usage_error("%s", err);
        mine[MEMORY] = (double)mib * 1048576.0;
    }
    double bwd = 0;  // the widest backward's buffers, of one micro-batch at a time
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        const PipeStageCtx *x = &p->ctx[pipe];
        double b;
        const ModelPass fwd = {.inputs_only = x->recompute, .keep_attention = x->keep_attention};
        const double one = model_acts_bytes(x->m, c->batch_size, c->T, &fwd, &b);
        mine[ACTS] += sched_max_live(p->sched, rank, pipe, SCHED_F) * one;
        // With recompute a deferred W holds its micro-batch's whole activations from its backward on.
        if (x->recompute)
            mine[ACTS] += sched_max_live(p->sched, rank, pipe, SCHED_B) *
                          (model_acts_bytes(x->m, c->batch_size, c->T, NULL, &b) - one);
        if (b > bwd) bwd = b;
        // The stages rebalance one after the other, each freeing its whole copies before the
        // next gathers; a run shorter than the interval never rebalances.
        if (x->eplb && x->o->shard && c->steps >= c->eplb_interval)
            mine[REBAL] = fmax(mine[REBAL], 3.0 * sizeof(float) * (double)x->o->total);
    }
    mine[ACTS] += bwd;
    if (W > 1) {
        mine[HOST] = grid_host_first(comm_world());
        all = core_alloc((size_t)W * sizeof mine);
        comm_allgather(comm_world(), mine, all, NF, COMM_F64);
    }
    // The machine whose ranks need the largest share of its memory, in a step or at a rebalance.
    double held = 0, extra = 0, have = 1, worst = 0;
    int ranks = 0, rebalance = 0;
    for (int h = 0; h < W; h++) {
        if (all[NF * h + HOST] != h) continue;  // h is not a machine's first rank
        double sum[3] = {0, 0, 0};
        int n = 0;
        for (int q = 0; q < W; q++)
            if (all[NF * q + HOST] == h) {
                for (int f = HELD; f <= REBAL; f++) sum[f] += all[NF * q + f];
                n++;
            }
        for (int at = ACTS; at <= REBAL; at++) {
            const double share = (sum[HELD] + sum[at]) / all[NF * h + MEMORY];
            if (share > worst) {
                worst = share; held = sum[HELD]; extra = sum[at]; have = all[NF * h + MEMORY];
                ranks = n; rebalance = at == REBAL;
            }
        }
    }
    if (W > 1) core_free(all);
    if (worst <= 1) return;
    const double GiB = 1 << 30;
    char who[64] = "one process";
    if (ranks > 1) snprintf(who, sizeof who, "the %d ranks on one machine", ranks);
    if (rebalance)
        core_usage_error("config: an EPLB rebalance under ZeRO-1 needs at least %.1f GiB of host memory for %s "
                         "(%.1f GiB held after setup by weights, gradients and optimizer state, and %.1f GiB for "
                         "the whole fp32 weights and AdamW moments it moves expert rows of), more than the "
                         "machine's %.1f GiB: lower the model's sizes, or run without --zero 1 or --eplb-interval",
                         (held + extra) / GiB, who, held / GiB, extra / GiB, have / GiB);
    core_usage_error("config: a training step needs at least %.1f GiB of host memory for %s (%.1f GiB held "
                     "after setup by weights, gradients and optimizer state, %.1f GiB of activations and their "
                     "gradients for micro-batches of batch_size %d x seq_len %d), more than the machine's %.1f "
                     "GiB: lower batch_size, seq_len or the model's sizes", (held + extra) / GiB, who, held / GiB,
                     extra / GiB, c->batch_size, c->T, have / GiB);
}

// The CUDA graph of the step (cuda_graph), where the layout and the backend allow one: its
// device buffer of token ids, the dispatchers' counts kept on the device, and a line saying so.
static void graph_setup(PipeTrainer *p, const MoeConfig *c) {
    if (!c->cuda_graph || p->ops->dev == CORE_CPU) return;
    PipeStageCtx *x = &p->ctx[0];
    const char *why = p->grid ? "more than one process"
                      : p->n_models > 1 || !(x->m->first && x->m->last) ? "a pipeline"
                      : p->eplb ? "EPLB moves experts between steps"
                      : backend_graph_blocker(c, p->ops);
    if (why) {
        core_info0("cuda graph: not used (%s): the step runs kernel by kernel", why);
        return;
    }
    p->graph_on = 1;
    x->ids = p->ops->alloc_uninit((size_t)p->sched->C * 2 * x->B * x->T * sizeof(int));
    model_keep_counts_on_device(x->m);
    core_info0("cuda graph: the step's forward and backward run as one CUDA graph from the second step");
}

// The step's token ids, checked and split, to the graph's buffer (one upload).
static void graph_ids(PipeTrainer *p, const int *tokens) {
    PipeStageCtx *x = &p->ctx[0];
    const size_t N = (size_t)x->B * x->T, C = (size_t)p->sched->C;
    int *ids = core_alloc(C * 2 * N * sizeof(int));  // (C, 2, N)
    for (size_t mb = 0; mb < C; mb++)
        model_split_tokens(x->m, tokens + mb * x->B * (x->T + 1), x->B, x->T, 1, ids + mb * 2 * N);
    p->ops->upload(x->ids, ids, C * 2 * N * sizeof(int));
    core_free(ids);
}

// Kernel-by-kernel work on a trainer with a graph: the graph's memory goes back to the driver first
// and the pool's cache before the next launch, so that the device never holds both peaks.
static void graph_pause(PipeTrainer *p) {
    if (!p->graph) return;
    core_cuda_graph_trim();
    p->graph_stale = 1;
}

// The schedule's run: kernel by kernel, or on the graph's path the first time, captured the second
// (its work runs at the launch), launched thereafter. A launch runs no host code, so the stage's
// counts of forwards and weight backwards are set as the run would have left them. A profiled or
// traced step (--trace's, the last) runs kernel by kernel: it times the ops on the host. The first
// step is not captured so that what is made on first use (the libraries' plans and workspaces,
// buffers allocated lazily) is made outside the capture, where an allocation would become graph
// memory. A guard, not the fix of a failure seen: capturing the first step in a fresh process gave
// the same losses (H100, 2026-12-07, quickstart.cfg and bench.cfg).
static void run_step(PipeTrainer *p, PipeRun *run, const int *tokens) {
    // On the graph's path the model reads the ids from the graph's buffer, also when a step runs
    // kernel by kernel.
    if (p->graph_on) graph_ids(p, tokens);
    if (!p->graph_on || prof_active() || run->trace) {
        graph_pause(p);
        pipe_run(run);
        return;
    }
    if (!p->graph_warm) {
        pipe_run(run);
        p->graph_warm = 1;
        return;
    }
    if (!p->graph) {
        core_cuda_graph_begin();
        pipe_run(run);
        p->graph = core_cuda_graph_end();
    }
    if (p->graph_stale) core_cuda_pool_trim();
    p->graph_stale = 0;
    core_cuda_graph_launch(p->graph);
    PipeStageCtx *x = &p->ctx[0];
    x->n_fwd = x->n_wgt = x->n_mb;
}

PipeTrainer *pipe_trainer_create(const MoeConfig *c, Grid *g, const LayerOps *ops) {
    const int kind = sched_kind_parse(c->schedule), N = g->pp, C = c->grad_accum;
    if (kind < 0) core_usage_error("--schedule %s: expected 1f1b, dualpipe or dualpipev", c->schedule);
    char err[SCHED_ERR_LEN];
    Schedule *s = sched_build((SchedKind)kind, N, C, err);
    if (!s)  // C is --chunks, or --grad-accum where --chunks is 0 (config_parse resolves the two)
        core_usage_error("--schedule %s --pp %d with %d micro-batch%s per step (%s %d): %s", c->schedule, N, C,
                         C == 1 ? "" : "es", c->chunks > 0 ? "--chunks" : "--chunks 0, so --grad-accum", C, err);
    eplb_runtime_check_config(c);
    PipeTrainer *p = core_alloc(sizeof *p);
    p->sched = s;
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

    // One process has nobody to talk to: no grid, and the step does no communication at all.
    if (g->world == 1) {
        grid_free(g);
        g = NULL;
    }
    p->grid = g;
    const int rank = g ? g->pp_rank : 0, ep = g ? g->ep : 1;
    p->n_models = kind == SCHED_1F1B ? 1 : 2;
    p->partner = kind == SCHED_DUALPIPE ? N - 1 - rank : -1;
    p->n_own = p->partner >= 0 ? 1 : p->n_models;
    p->ops = ops;
    p->overlap = c->dp_overlap;
    p->eplb = c->eplb_interval > 0;
    const int on_gpu = ops->dev != CORE_CPU;
    // On GPUs gradients and token rows stay in device memory and travel over NCCL twins of the
    // grid's groups; the routing statistics (expert counts), losses and norms still travel over
    // the host groups.
    if (g && on_gpu) grid_to_device(g, ops);
    // Pipe 1's model gets EP communicators of its own (the same ranks as the grid's EP group), so
    // that each communicator serves one model: the F&B overlap runs pipe 0's and pipe 1's halves on
    // two threads, and every EP rank of the stage issues one model's calls in the schedule's order,
    // which is the per-communicator order MPI and NCCL need. Made whenever there are two pipes, so
    // that the CPU tests run the layout the overlap uses.
    if (p->n_models == 2 && ep > 1) {
        p->ep1 = comm_split(g->ep_comm, 0, g->ep_rank, "ep pipe 1");
        if (on_gpu) p->ep1_dev = comm_nccl_create(p->ep1, "ep pipe 1");
    }
    // The optimizer's host bytes per parameter, for model_create_stage's check: AdamW's two moments,
    // or under ZeRO-1 the moments, the fp32 master copy and the gradient of a shard (zero1_init) of
    // 1/DP of the dense and 1/EDP of the expert floats; a GPU holds them itself.
    ModelStateBytes state = {2.0 * sizeof(float), 2.0 * sizeof(float)};
    if (c->zero && g && g->dp > 1)
        state = (ModelStateBytes){4.0 * sizeof(float) / g->dp, 4.0 * sizeof(float) / g->edp};
    if (on_gpu) state = (ModelStateBytes){0, 0};
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        const int st = sched_stage(s, rank, pipe);
        // Initialization is keyed by parameter identity, so both copies of a DualPipe stage (and
        // every stage against the one-process model) start identical.
        Model *m = model_create_stage(c, g ? g->ep_rank : 0, ep, p->bounds[st], p->bounds[st + 1], state);
        model_init_weights(m);
        PipeStageCtx *x = &p->ctx[pipe];
        const int own_ep = pipe == 1 && p->ep1;
        x->ep = own_ep ? p->ep1 : g ? g->ep_comm : comm_world();
        x->ep_dev = own_ep ? p->ep1_dev : g ? g->ep_dev : NULL;
        if (ep > 1) model_set_dispatcher(m, stage_dispatcher(x, c, ops));
        model_to_device(m, ops);
        AdamW *o = core_alloc(sizeof *o);
        zero1_init_if(o, &m->reg, ops, m->wlow, g, c->zero);
        if (o->shard && m->wlow) model_keep_untrained(m);  // the shard holds the fp32 master copy
        stage_init(p, pipe, c, m, o);
        stage_eplb_attach(x, c);
    }
    // The copies of a DualPipe stage sum their gradients over a group of the two ranks: an
    // all-reduce of two gives both the same a + b.
    if (p->partner >= 0) {
        const int lo = rank < p->partner ? rank : p->partner;
        p->pair = comm_split(g->pp_comm, lo, rank, "pp copies");
        if (on_gpu) p->pair_dev = comm_nccl_create(p->pair, "pp copies");
    }
    // Test seam (core_test_seam): MOELAB_TEST_PIPE_LINKS=1 runs the GPU transport (per-link
    // communicators, ordered receives) over MPI on the CPU (tests/parallel/train_pp_cli_test.sh).
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
    // 1F1B (and so a plain run) has no F&B ops: the key would change nothing, silently.
    if (c->fb_overlap && kind == SCHED_1F1B && core_rank() == 0)
        core_warn("--fb-overlap 1 changes nothing with --schedule 1f1b: only DualPipe and DualPipeV have "
                  "F&B ops");
    // Token chunks are the EP dispatcher's: one process of experts has no exchange to overlap.
    if (c->ep_chunks > 1 && ep == 1 && core_rank() == 0)
        core_warn("--ep-chunks %d changes nothing with --ep 1: the chunks overlap the EP exchanges", c->ep_chunks);
    // A trace file that cannot be written is found now, not after the last step; the probe writes
    // beside it (CoreOut's temporary) and leaves the path as it was until the trace is written.
    if (c->trace[0] && core_rank() == 0) {
        CoreOut probe;
        const int err = core_out_open(&probe, c->trace);
        if (err) core_path_error(err, "cannot write --trace %s: %s", c->trace, core_out_error(err));
        core_out_abort(&probe);
    }
    p->imbalance = core_alloc((size_t)c->L * sizeof(float));
    p->trace = core_alloc((size_t)(s->n_ops[rank] > 0 ? s->n_ops[rank] : 1) * sizeof(SimEvent));
    check_host_memory(p, c);
    graph_setup(p, c);
    // A plain run is a pipeline of one stage: only a real pipeline is worth a line.
    if (N == 1 && kind == SCHED_1F1B) return p;
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
    core_cuda_graph_free(p->graph);
    for (int pipe = 0; pipe < p->n_models; pipe++) stage_free(&p->ctx[pipe], !p->borrowed);
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
    const MoeConfig *c = &p->ctx[0].m->cfg;
    const int on_gpu = p->ops->dev != CORE_CPU;
    PipeRun r = {p->sched, p->grid ? p->grid->pp_rank : 0, p->grid ? p->grid->pp_comm : NULL,
                 {&p->stage[0], NULL}, (size_t)c->batch_size * c->T * c->D * p->ops->act_size,
                 on_gpu ? p->ops : NULL, p->links, trace, p->fb};
    if (p->n_models > 1) r.stage[1] = &p->stage[1];
    return r;
}

// DualPipe: the two copies of each stage (this rank's down stage r and the partner's up stage r,
// and the other way round) add up their gradients (or routing counts), so that both copies take
// the same optimizer step and bias update. Each sum is an all-reduce over the pair (its device
// twin for the gradients), which gives both ranks the same a + b, so the copies stay
// bit-identical. Both ranks sum the copies of the lower rank's down stage first.
static void copy_sum(PipeTrainer *p, int counts) {
    const MoeConfig *c = &p->ctx[0].m->cfg;
    const int lower = p->grid->pp_rank < p->partner;
    for (int i = 0; i < 2; i++) {
        Model *m = p->ctx[lower ? i : 1 - i].m;
        if (counts) comm_allreduce(p->pair, m->expert_counts, (size_t)c->L * c->E, COMM_I64, COMM_SUM);
        else comm_allreduce(p->pair_dev ? p->pair_dev : p->pair, m->reg.grad, m->reg.total, COMM_F32, COMM_SUM);
    }
}

// Σ g² of the whole model, every logical tensor once: the stages this rank owns (DualPipe's up
// stages are copies of other ranks' down stages), each summed over the grid, less EPLB's replicas
// (each stage's over its EP group, then over the pipeline).
static double grad_sqsum(PipeTrainer *p) {
    const Grid *g = p->grid;
    // ZeRO-1: every float lies in one rank's shard, EPLB's duplicate slots too, so each rank leaves
    // out the part of them in its shard.
    if (p->ctx[0].o->shard) {
        DpSync *shard[2] = {p->ctx[0].o->shard, p->n_models > 1 ? p->ctx[1].o->shard : NULL};
        double dup = 0;
        for (int pipe = 0; pipe < p->n_own; pipe++) {
            const PipeStageCtx *x = &p->ctx[pipe];
            if (!x->eplb) continue;
            AdamwSpan *rows;
            const int n = eplb_runtime_duplicate_rows(x->eplb, &rows);
            dup += dp_sync_shard_rows_sqsum(x->o->shard, rows, n);
            core_free(rows);
        }
        return dp_sync_shard_sqsum(g, shard, p->n_own, dup);
    }
    double sq = 0, dup = 0;
    for (int pipe = 0; pipe < p->n_own; pipe++) {
        const PipeStageCtx *x = &p->ctx[pipe];
        sq += g ? dp_sync_grad_sqsum(g, x->grads, x->n_grads) : optim_grad_sqsum_on(p->ops, &x->m->reg, -1);
        if (x->eplb) dup += eplb_runtime_duplicate_sqsum(x->eplb);
    }
    if (g && g->pp > 1 && p->eplb) comm_allreduce(g->pp_comm, &dup, 1, COMM_F64, COMM_SUM);
    return sq - dup;
}

// The step's mean loss and cross-entropy over its C micro-batches (means), from every training
// forward's scalars (one download per stage), summed over the stages.
static void step_means(PipeTrainer *p, int C, double *means) {
    means[0] = means[1] = 0;
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        const PipeStageCtx *x = &p->ctx[pipe];
        const size_t ns = 1 + (size_t)x->m->cfg.L;
        float *scal = core_alloc((size_t)(x->n_fwd > 0 ? x->n_fwd : 1) * ns * sizeof(float));  // (n_fwd, 1 + L)
        x->m->ops->download(scal, x->dscal, (size_t)x->n_fwd * ns * sizeof(float));
        for (int i = 0; i < x->n_fwd; i++) {
            float ce, bal;
            means[0] += model_scalars_loss(x->m, scal + (size_t)i * ns, 1, &ce, &bal);
            if (x->m->last) means[1] += ce;
        }
        core_free(scal);
    }
    const Grid *g = p->grid;
    if (g && g->pp > 1) comm_allreduce(g->pp_comm, means, 2, COMM_F64, COMM_SUM);
    means[0] /= C;
    means[1] /= C;
}

// The rebalance after step `step`: every stage's MoE layers, gathered over the pipeline, in one
// line on rank 0. Collective over the pipeline group.
static void log_rebalance(const PipeTrainer *p, int step) {
    EplbRuntime v;
    pipe_eplb_figures(p, &v);
    char buf[1024], *at = buf;
    for (int l = 0; l < v.s.L && at < buf + sizeof buf - 32; l++)
        at += sprintf(at, " %.2f->%.2f", v.before[l], v.after[l]);
    core_info0("eplb: step %d: rebalanced | rank load max/mean before->after per MoE layer:%s | "
               "%ld of %d slots changed, %ld copied between ranks", step + 1, buf, v.changed,
               v.s.L * p->ctx[0].m->R, v.sent);
    core_free(v.step_imbalance);
}

// Test seams (core_test_seam) of the step, for the tests of what follows one:
//  - MOELAB_TEST_SIGNAL_AT_STEP=R:S:SIG sends world rank R the signal SIG (KILL, TERM, INT, HUP or
//    USR1) as its 0-based step S begins: a rank lost mid-step (tests/parallel/failure_test.sh), a
//    polite stop that arrives during a step (tests/checkpoints/stop_cli_test.sh);
//  - MOELAB_TEST_NAN_STEPS=S[,S...] makes the loss of those 0-based steps NaN on every rank, a step
//    that diverged on demand (tests/checkpoints/diverge_cli_test.sh).
static void test_signal_at(const Grid *g, int step) {
    static const struct { const char *name; int sig; } sigs[] = {
        {"KILL", SIGKILL}, {"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"USR1", SIGUSR1}};
    const char *v = core_test_seam("MOELAB_TEST_SIGNAL_AT_STEP");
    if (!v) return;
    int rank = -1, at = -1, n = 0, sig = 0;
    char name[8] = "";
    if (sscanf(v, "%d:%d:%7[A-Z1]%n", &rank, &at, name, &n) == 3 && v[n] == 0)
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
            if (strcmp(name, sigs[i].name) == 0) sig = sigs[i].sig;
    if (!sig)
        core_usage_error("MOELAB_TEST_SIGNAL_AT_STEP = '%s': expected RANK:STEP:SIGNAL, the signal one of KILL, "
                         "TERM, INT, HUP, USR1", v);
    if (rank != (g ? g->rank : 0) || at != step) return;
    fprintf(stderr, "moelab: [rank %d] MOELAB_TEST_SIGNAL_AT_STEP: raising SIG%s at step %d\n", rank, name, step);
    fflush(stderr);
    raise(sig);
}

static int test_nan_step(int step) {
    const char *v = core_test_seam("MOELAB_TEST_NAN_STEPS");
    if (!v) return 0;
    int hit = 0;
    for (const char *at = v;;) {
        char one[24], err[NUM_ERR_LEN];
        const size_t n = strcspn(at, ",");
        long long s;
        snprintf(one, sizeof one, "%.*s", (int)(n < sizeof one ? n : sizeof one - 1), at);
        if (n >= sizeof one || num_parse_int("MOELAB_TEST_NAN_STEPS", one, 0, INT_MAX, &s, err) != NUM_OK)
            core_usage_error("MOELAB_TEST_NAN_STEPS = '%s': expected STEP[,STEP...], 0-based steps", v);
        hit |= s == step;
        if (!at[n]) return hit;
        at += n + 1;
    }
}

StepStats pipe_train_step(PipeTrainer *p, const MoeConfig *c, int step, const int *tokens) {
    StepStats st = {0};
    const double t0 = core_now();
    const Grid *g = p->grid;
    const int C = p->sched->C;
    CHECK(c->grad_accum == C, "pipe_train_step: %d micro-batches, the schedule has %d", c->grad_accum, C);
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        PipeStageCtx *x = &p->ctx[pipe];
        model_zero_grad(x->m);
        model_reset_counts(x->m);
        x->tokens = tokens;
        x->training = 1;
        x->n_fwd = x->n_wgt = 0;
        // The DP all-reduces (ZeRO-1: the optimizer's reduce-scatters, whose list is x->grads) run
        // during the stage's last backward_weight. EPLB sums the replicas' gradients after the
        // backward, so its stages sync afterwards (under ZeRO-1 dp_sync_complete then starts every
        // bucket); dp_overlap = 0 does too (to measure the gain, with bit-identical results); so does
        // ZeRO-1 under DualPipe, whose copies sum their whole gradients before the reduce-scatter.
        if (g && g->dp > 1 && p->overlap && !x->eplb && !(x->o->shard && p->partner >= 0))
            x->sync = x->o->shard ? x->o->shard : dp_sync_start(g, x->grads, x->n_grads, DP_SYNC_BUCKET_FLOATS);
    }
    test_signal_at(g, step);
    // Only the run's last step is traced: the trace holds that step, and a traced op waits for its
    // kernels, which would slow every other step for nothing.
    PipeRun run = run_of(p, c->trace[0] && step == c->steps - 1 ? p->trace : NULL);
    run_step(p, &run, tokens);
    // Gradients: EPLB's replica sums, the DP/expert-DP averages (docs/architecture.md §4), then
    // DualPipe's copy sums.
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        PipeStageCtx *x = &p->ctx[pipe];
        x->training = 0;
        // The DP overlap starts at the stage's n_mb-th weight backward: that must be its last.
        CHECK(x->n_fwd == x->n_mb && x->n_wgt == x->n_mb, "stage [%d, %d): %d forwards and %d weight "
              "backwards, the schedule has %d micro-batches", x->m->l0, x->m->l1, x->n_fwd, x->n_wgt, x->n_mb);
        // Replicas of an expert apply one update: each gets the sum of all the replicas' gradients.
        if (x->eplb) eplb_runtime_sum_replica_grads(x->eplb);
        if (x->o->shard) continue;  // reduce-scattered below, after DualPipe's copy sums
        if (x->sync) dp_sync_finish(x->sync);
        else if (g && g->dp > 1) dp_sync_grads(g, x->grads, x->n_grads, DP_SYNC_BUCKET_FLOATS);
        x->sync = NULL;
    }
    if (p->partner >= 0) copy_sum(p, 0);
    // ZeRO-1: each rank's shard of the averaged gradients (docs/parallel.md); zero1_step reads it.
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        PipeStageCtx *x = &p->ctx[pipe];
        if (!x->o->shard) continue;
        dp_sync_complete(x->o->shard);
        x->sync = NULL;
    }
    // Σ g² is queued before the first wait (the scalars' download), so the device keeps busy.
    st.grad_norm = (float)sqrt(grad_sqsum(p));
    double means[2];
    step_means(p, C, means);
    // The step's routing counts, over both copies of a DualPipe stage and all DP ranks.
    for (int pipe = 0; pipe < p->n_models; pipe++) model_counts_to_host(p->ctx[pipe].m);
    if (p->partner >= 0) copy_sum(p, 1);
    if (g) {
        for (int pipe = 0; pipe < p->n_models; pipe++) {
            dp_sync_sum_counts(g, p->ctx[pipe].m->expert_counts, (size_t)c->L * c->E);
            model_counts_to_device(p->ctx[pipe].m);  // the bias update reads them where it runs
        }
        dp_sync_mean(g, means, 2);
    }
    st.loss = test_nan_step(step) ? NAN : (float)means[0];
    st.ce = (float)means[1];
    // A diverged step must not reach the weights, the moments or the router biases. The loss and the
    // norm are global (reduced over every rank), so every rank takes this branch together.
    if (train_step_nonfinite(&st, c)) {
        p->ops->sync();
        st.seconds = core_now() - t0;
        return st;
    }
    const float clip = optim_clip_factor(st.grad_norm, c->grad_clip);
    st.lr = optim_lr(c, step);
    // The bias update's c̄ counts the tokens of the whole step, over all data-parallel ranks.
    const long n_tokens = (long)C * c->batch_size * c->T * (g ? g->dp : 1);
    for (int l = 0; l < c->L; l++) p->imbalance[l] = 0;
    float *imb = core_alloc((size_t)c->L * sizeof(float));  // (L) zero outside a stage
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        PipeStageCtx *x = &p->ctx[pipe];
        Model *m = x->m;
        if (x->o->shard) zero1_step(x->o, &m->reg, c, st.lr, clip);
        else adamw_step(x->o, &m->reg, c, st.lr, clip);
        model_router_bias_update(m, n_tokens);
        // Every stage balances its own MoE layers on the step's global counts; both copies of a
        // DualPipe stage see the same counts and placement, so they plan the same moves. A
        // rebalance after every interval-th step (stage_move_begin and _end around its moves).
        if (x->eplb) eplb_runtime_step(x->eplb, m->expert_counts + (size_t)x->moe0 * c->E, step);
        model_load_imbalance(m, imb);
        for (int l = 0; l < c->L; l++) p->imbalance[l] = fmaxf(p->imbalance[l], imb[l]);
    }
    core_free(imb);
    // Every stage rebalances after the same steps (a stage without MoE layers has no runtime).
    st.rebalanced = p->eplb && (step + 1) % c->eplb_interval == 0;
    if (st.rebalanced) log_rebalance(p, step);
    if (g && g->pp > 1) comm_allreduce(g->pp_comm, p->imbalance, (size_t)c->L, COMM_F32, COMM_MAX);
    p->ops->sync();  // a GPU step is done when its last kernel is
    st.seconds = core_now() - t0;
    return st;
}

int train_step_nonfinite(StepStats *st, const MoeConfig *c) {
    // AdamW squares each gradient into a float32 moment: a (clipped) norm past sqrt(FLT_MAX) could
    // make it infinite even though the norm itself is finite.
    const float applied = st->grad_norm * optim_clip_factor(st->grad_norm, c->grad_clip);
    st->nonfinite = !isfinite(st->loss) || !isfinite(st->grad_norm) || !(applied < sqrtf(FLT_MAX));
    return st->nonfinite;
}

// The engine of pipe_trainer_wrap, with or without the CUDA graph.
static PipeTrainer *wrap(Model *m, AdamW *o, const MoeConfig *c, int graph) {
    CHECK(m->first && m->last, "pipe_trainer_wrap: stage [%d, %d) is not the whole model", m->l0, m->l1);
    char err[SCHED_ERR_LEN];
    PipeTrainer *p = core_alloc(sizeof *p);
    p->sched = sched_build(SCHED_1F1B, 1, c->grad_accum, err);
    CHECK(p->sched, "pipe_trainer_wrap: %s", err);
    p->S = p->n_models = p->n_own = 1;
    p->partner = -1;
    p->ops = m->ops;
    p->borrowed = 1;
    p->imbalance = core_alloc((size_t)c->L * sizeof(float));
    p->trace = core_alloc((size_t)p->sched->n_ops[0] * sizeof(SimEvent));
    stage_init(p, 0, c, m, o);
    check_host_memory(p, c);
    if (graph) graph_setup(p, c);
    return p;
}

PipeTrainer *pipe_trainer_wrap(Model *m, AdamW *o, const MoeConfig *c) { return wrap(m, o, c, 1); }

StepStats train_step_tokens(Model *m, AdamW *o, const MoeConfig *c, int step, const int *tokens) {
    PipeTrainer *p = wrap(m, o, c, 0);
    const StepStats st = pipe_train_step(p, c, step, tokens);
    pipe_trainer_free(p);
    return st;
}

float pipe_eval_ce(PipeTrainer *p, const int *tokens) {
    graph_pause(p);
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        p->ctx[pipe].tokens = tokens;
        p->ctx[pipe].ce = 0;
    }
    PipeRun run = run_of(p, NULL);
    pipe_run_forward(&run, 1);
    double ce = 0;
    for (int pipe = 0; pipe < p->n_models; pipe++) ce += p->ctx[pipe].ce;
    if (p->grid && p->grid->pp > 1) comm_allreduce(p->grid->pp_comm, &ce, 1, COMM_F64, COMM_SUM);
    return (float)ce;
}

// The logits of a window through the pipeline, for sample_generate_by: one evaluation forward
// (pipe_run_forward) of a micro-batch of one sequence, the window padded with token 0 (its stages'
// messages shrink with it); the rank of the last stage on micro-batch 0's path holds the row, and an
// all-reduce (max, the others adding −∞) gives it to every rank of the pipeline.
static void pipe_logits(void *ctx, const int *window, int w, float *row) {
    PipeTrainer *p = ctx;
    const MoeConfig *c = &p->ctx[0].m->cfg;
    int *tokens = core_alloc(((size_t)c->T + 1) * sizeof(int));  // (1, T+1): the window, a target 0
    memcpy(tokens, window, (size_t)c->T * sizeof(int));
    for (int i = 0; i < c->V; i++) row[i] = -INFINITY;
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        PipeStageCtx *x = &p->ctx[pipe];
        x->tokens = tokens;
        x->B = 1;
        x->sample_row = row;
        x->sample_pos = w - 1;
        x->sampled = 0;
    }
    PipeRun run = run_of(p, NULL);
    run.msg_bytes /= (size_t)c->batch_size;
    pipe_run_forward(&run, 1);
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        p->ctx[pipe].B = c->batch_size;
        p->ctx[pipe].sample_row = NULL;
    }
    if (p->grid && p->grid->pp > 1) comm_allreduce(p->grid->pp_comm, row, (size_t)c->V, COMM_F32, COMM_MAX);
    core_free(tokens);
}

int pipe_sample_generate(PipeTrainer *p, const int *prompt, int n_prompt, int n_new, float temperature,
                         int top_k, RngStream *rng, int *out) {
    const MoeConfig *c = &p->ctx[0].m->cfg;
    graph_pause(p);
    return sample_generate_by(pipe_logits, p, c->V, c->T, prompt, n_prompt, n_new, temperature, top_k, rng, out);
}

size_t pipe_param_count(const PipeTrainer *p, size_t *on_rank) {
    long n[2] = {0, 0};  // the model's, this rank's
    // This rank holds every model it runs (under DualPipe also the copy of another rank's stage: its
    // count left that copy out, a third of what the rank holds; review, 2026-12-06); the model's
    // total counts each stage once, over the owned ones.
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        const Model *m = p->ctx[pipe].m;
        for (int i = 0; i < m->reg.n; i++) {
            const ParamInfo *q = &m->reg.p[i];
            if (pipe < p->n_own)
                n[0] += q->kind == PARAM_EXPERT ? (long)(q->numel / (size_t)q->local_rows) * m->cfg.E : (long)q->numel;
            n[1] += (long)q->numel;
        }
    }
    if (p->grid && p->grid->pp > 1) comm_allreduce(p->grid->pp_comm, &n[0], 1, COMM_I64, COMM_SUM);
    *on_rank = (size_t)n[1];
    return (size_t)n[0];
}

void pipe_expert_counts(const PipeTrainer *p, long *counts) {
    const MoeConfig *c = &p->ctx[0].m->cfg;
    const size_t n = (size_t)c->L * c->E;
    // Every layer belongs to exactly one owned stage of the pipeline, and is zero in all others.
    memset(counts, 0, n * sizeof(long));
    for (int pipe = 0; pipe < p->n_own; pipe++)
        for (size_t i = 0; i < n; i++) counts[i] += p->ctx[pipe].m->expert_counts[i];
    if (p->grid && p->grid->pp > 1) comm_allreduce(p->grid->pp_comm, counts, n, COMM_I64, COMM_SUM);
}

void pipe_set_expert_counts(PipeTrainer *p, const long *counts) {
    const size_t E = (size_t)p->ctx[0].m->cfg.E;
    for (int pipe = 0; pipe < p->n_own; pipe++) {
        Model *m = p->ctx[pipe].m;
        const size_t row0 = (size_t)m->l0 * E;
        memcpy(m->expert_counts + row0, counts + row0, (size_t)(m->l1 - m->l0) * E * sizeof(long));
    }
}

void pipe_eplb_placement(const PipeTrainer *p, int *phy2log) {
    const Model *m0 = p->ctx[0].m;
    const size_t R = (size_t)m0->R, n = (size_t)m0->cfg.L * R;
    // Each layer's row comes from the owned stage that holds it; -1 elsewhere loses every maximum.
    for (size_t i = 0; i < n; i++) phy2log[i] = -1;
    for (int pipe = 0; pipe < p->n_own; pipe++) {
        const Model *m = p->ctx[pipe].m;
        memcpy(phy2log + (size_t)m->l0 * R, m->phy2log + (size_t)m->l0 * R, (size_t)(m->l1 - m->l0) * R * sizeof(int));
    }
    if (p->grid && p->grid->pp > 1) comm_allreduce(p->grid->pp_comm, phy2log, n, COMM_I32, COMM_MAX);
}

void pipe_eplb_load(const PipeTrainer *p, long *load) {
    const MoeConfig *c = &p->ctx[0].m->cfg;
    const size_t n = (size_t)c->L * c->E;
    memset(load, 0, n * sizeof(long));
    for (int pipe = 0; pipe < p->n_own; pipe++) {
        const PipeStageCtx *x = &p->ctx[pipe];
        if (x->eplb)
            memcpy(load + (size_t)x->moe0 * c->E, x->eplb->load, (size_t)x->eplb->s.L * c->E * sizeof(long));
    }
    if (p->grid && p->grid->pp > 1) comm_allreduce(p->grid->pp_comm, load, n, COMM_I64, COMM_SUM);
}

void pipe_eplb_set_load(const PipeTrainer *p, const long *load) {
    // Every held model, both copies of a DualPipe stage among them: they rebalance alike.
    for (int pipe = 0; pipe < p->n_models; pipe++) {
        const PipeStageCtx *x = &p->ctx[pipe];
        if (x->eplb) eplb_runtime_set_load(x->eplb, load + (size_t)x->moe0 * p->ctx[0].m->cfg.E);
    }
}

void pipe_eplb_figures(const PipeTrainer *p, EplbRuntime *v) {
    const MoeConfig *c = &p->ctx[0].m->cfg;
    const int L = c->L - c->n_dense_layers, G = p->grid ? p->grid->ep : 1;
    // One block: step imbalance, before, after (L each), rank loads before and after (L, G each),
    // then the slots changed and sent. Each owned stage fills its layers' rows, zeros elsewhere, and
    // a sum over the pipeline puts every stage's rows (and counts) together.
    const size_t n = 3 * (size_t)L + 2 * (size_t)L * G + 2;
    double *b = core_alloc(n * sizeof(double));
    memset(v, 0, sizeof *v);
    v->s.L = L;
    v->G = G;
    v->step_imbalance = b;
    v->before = b + L;
    v->after = b + 2 * L;
    v->rank_before = b + 3 * L;
    v->rank_after = v->rank_before + (size_t)L * G;
    double *slots = v->rank_after + (size_t)L * G;
    for (int pipe = 0; pipe < p->n_own; pipe++) {
        const EplbRuntime *rt = p->ctx[pipe].eplb;
        if (!rt) continue;
        const size_t at = (size_t)(p->ctx[pipe].moe0 - c->n_dense_layers), nl = (size_t)rt->s.L;
        memcpy(v->step_imbalance + at, rt->step_imbalance, nl * sizeof(double));
        memcpy(v->before + at, rt->before, nl * sizeof(double));
        memcpy(v->after + at, rt->after, nl * sizeof(double));
        memcpy(v->rank_before + at * G, rt->rank_before, nl * G * sizeof(double));
        memcpy(v->rank_after + at * G, rt->rank_after, nl * G * sizeof(double));
        slots[0] += (double)rt->changed;
        slots[1] += (double)rt->sent;
    }
    if (p->grid && p->grid->pp > 1) comm_allreduce(p->grid->pp_comm, b, n, COMM_F64, COMM_SUM);
    v->changed = (long)slots[0];
    v->sent = (long)slots[1];
}

void pipe_write_trace(const PipeTrainer *p, const char *path) {
    const Grid *g = p->grid;
    const Schedule *s = p->sched;
    // DP rank 0's pipeline holds world rank 0; the other pipelines ran the same schedule.
    if (g && g->dp_rank != 0) return;
    const int rank = g ? g->pp_rank : 0;
    int most = 1;
    for (int r = 0; r < s->N; r++) most = s->n_ops[r] > most ? s->n_ops[r] : most;
    // Every rank knows every rank's ops (the schedule): only the times travel.
    double *mine = core_alloc((size_t)2 * most * sizeof(double));       // (most, 2) start, end
    double *all = core_alloc((size_t)2 * most * s->N * sizeof(double)); // (N, most, 2)
    for (int i = 0; i < s->n_ops[rank]; i++) {
        mine[2 * i] = p->trace[i].start;
        mine[2 * i + 1] = p->trace[i].end;
    }
    if (g) comm_allgather(g->pp_comm, mine, all, (size_t)2 * most, COMM_F64);
    else memcpy(all, mine, (size_t)2 * most * sizeof(double));
    if (core_rank() == 0) {
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
