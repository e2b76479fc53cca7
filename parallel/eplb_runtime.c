// EPLB during training (see eplb_runtime.h and docs/eplb.md "Runtime"): replica gradient sums, the
// rebalance (plan, keep experts in place where the plan allows, move the rest point-to-point), and the
// load figures for the log and the metrics. Buffer rows are touched only through the spec's backend
// table (memory of the host or of a GPU) and travel over the spec's ep_dev.
#include "parallel/eplb_runtime.h"

#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/ops.h"
#include "parallel/ep_dispatch.h"

#define EPLB_TAG 611  // point-to-point tag of the slot moves

void eplb_runtime_check_config(const MoeConfig *c) {
    if (c->eplb_interval == 0) {
        if (c->eplb_redundant > 0)
            core_usage_error("--eplb-redundant %d needs --eplb-interval > 0: redundant slots hold "
                             "replicas, and only rebalancing decides which experts get them",
                             c->eplb_redundant);
        if (c->eplb_groups > 1 || c->eplb_nodes > 1)
            core_usage_error("--eplb-groups %d / --eplb-nodes %d need --eplb-interval > 0: they shape "
                             "the rebalancing plan", c->eplb_groups, c->eplb_nodes);
        return;
    }
    // Past n_experts x (ep - 1) redundant slots some rank holds an expert twice, which gains
    // nothing; the bound leaves n_experts more, so that one rank (ep 1) can still be given replicas
    // (a layout to compare with), and keeps the planner's work in proportion (fuzzing: 65 536
    // redundant slots on an 8-expert model ran for minutes within the key's old bound).
    if ((long)c->eplb_redundant > (long)c->E * c->ep)
        core_usage_error("--eplb-redundant %d is more than n_experts x ep = %d x %d (past n_experts x "
                         "(ep - 1) a rank holds an expert twice, which gains nothing)", c->eplb_redundant,
                         c->E, c->ep);
    const int L = c->L - c->n_dense_layers, R = c->E + c->eplb_redundant;
    if (L < 1)
        core_usage_error("--eplb-interval %d needs MoE layers, but n_dense_layers = %d makes all %d "
                         "layers dense", c->eplb_interval, c->n_dense_layers, c->L);
    if (R % c->ep != 0)
        core_usage_error("--eplb-redundant %d: n_experts + eplb_redundant = %d physical slots per MoE "
                         "layer do not split evenly over --ep %d ranks (choose eplb_redundant so that "
                         "%d + eplb_redundant is a multiple of %d)",
                         c->eplb_redundant, R, c->ep, c->E, c->ep);
    EplbShape s = {.L = L, .E = c->E, .R = R, .Ng = c->eplb_groups, .Nn = c->eplb_nodes, .G = c->ep};
    char msg[256];
    if (eplb_shape_error(&s, msg, sizeof msg)) core_usage_error("eplb: %s", msg);
}

void eplb_initial_placement(int *phy2log, int R, int E) {
    for (int p = 0; p < R; p++) phy2log[p] = p % E;
}

// Floats one slot of layer l occupies in one buffer: the rows of all the layer's expert tensors.
static size_t slot_floats(const EplbRuntime *rt, int l) {
    size_t n = 0;
    for (int i = 0; i < rt->s.n_tensor; i++)
        if (rt->s.tensor[i].layer == l) n += rt->s.tensor[i].row;
    return n;
}

// Copies local slot `slot` of layer l between the buffers and buf (both in the backend's memory): the
// layer's tensors in list order, each as one row of `from` (the gradient, or with from == NULL the
// EPLB_STATES moved buffers). to_buf = 1 reads the slot into buf, 0 writes buf into the slot. Returns
// the floats used.
static size_t slot_copy(const EplbRuntime *rt, int l, int slot, float *buf, int to_buf, float *from) {
    float *const *bufs = from ? &from : rt->s.state;
    const int nb = from ? 1 : EPLB_STATES;
    size_t used = 0;
    for (int i = 0; i < rt->s.n_tensor; i++) {
        const EplbTensor *t = &rt->s.tensor[i];
        if (t->layer != l) continue;
        for (int k = 0; k < nb; k++) {
            float *x = bufs[k] + t->offset + (size_t)slot * t->row;
            if (to_buf) rt->s.ops->copy(buf + used, x, t->row * sizeof(float));
            else rt->s.ops->copy(x, buf + used, t->row * sizeof(float));
            used += t->row;
        }
    }
    return used;
}

static void count_replicas(EplbRuntime *rt) {
    const int L = rt->s.L, E = rt->s.E, R = rt->s.R;
    memset(rt->logcnt, 0, (size_t)L * E * sizeof(int));
    for (int l = 0; l < L; l++)
        for (int p = 0; p < R; p++) rt->logcnt[(size_t)l * E + rt->s.phy2log[(size_t)l * R + p]]++;
}

// Every slot of phy2log (L, R) names an expert in [0, E) (that every expert has a slot, the
// dispatchers check).
static void check_placement(const int *phy2log, int L, int R, int E) {
    for (size_t p = 0; p < (size_t)L * R; p++)
        CHECK(phy2log[p] >= 0 && phy2log[p] < E, "eplb runtime: slot %zu of layer %zu holds expert %d",
              p % (size_t)R, p / (size_t)R, phy2log[p]);
}

static void install_placement(EplbRuntime *rt) {
    count_replicas(rt);
    for (int l = 0; l < rt->s.L; l++) {
        ep_dispatcher_set_placement(rt->s.disp[l], rt->s.phy2log + (size_t)l * rt->s.R, rt->s.R);
        CHECK(rt->s.disp[l]->n_local == rt->n_local, "eplb: layer %d's dispatcher has %d slots per rank, "
              "expected %d", l, rt->s.disp[l]->n_local, rt->n_local);
    }
}

EplbRuntime *eplb_runtime_create(const EplbRuntimeSpec *s) {
    const int G = s->ep->size;
    CHECK(s->L >= 1 && s->E >= 1 && s->R >= s->E && s->R % G == 0 && s->interval >= 1,
          "eplb runtime: bad shape L = %d, E = %d, R = %d over %d ranks, interval %d", s->L, s->E, s->R,
          G, s->interval);
    for (int i = 0; i < s->n_tensor; i++)
        CHECK(s->tensor[i].layer >= 0 && s->tensor[i].layer < s->L && s->tensor[i].row > 0,
              "eplb runtime: tensor %d names layer %d of %d (row %zu)", i, s->tensor[i].layer, s->L,
              s->tensor[i].row);
    check_placement(s->phy2log, s->L, s->R, s->E);
    EplbRuntime *rt = core_alloc(sizeof *rt);
    rt->s = *s;
    if (!rt->s.ops) rt->s.ops = &layer_ops_cpu;
    if (!rt->s.ep_dev) rt->s.ep_dev = s->ep;
    CHECK(rt->s.ops->dt == CORE_F32, "eplb runtime: the %s table does not add fp32 gradients",
          rt->s.ops->name);
    CHECK(rt->s.ep_dev->size == G && rt->s.ep_dev->rank == s->ep->rank,
          "eplb runtime: group %s (rank %d of %d) is not the twin of %s (rank %d of %d)",
          rt->s.ep_dev->name, rt->s.ep_dev->rank, rt->s.ep_dev->size, s->ep->name, s->ep->rank, G);
    EplbTensor *t = core_alloc((size_t)s->n_tensor * sizeof *t);
    memcpy(t, s->tensor, (size_t)s->n_tensor * sizeof *t);
    rt->s.tensor = t;
    rt->s.disp = core_alloc((size_t)s->L * sizeof *rt->s.disp);
    memcpy(rt->s.disp, s->disp, (size_t)s->L * sizeof *rt->s.disp);
    rt->G = G;
    rt->n_local = s->R / G;
    const size_t LE = (size_t)s->L * s->E, LG = (size_t)s->L * G;
    rt->logcnt = core_alloc(LE * sizeof(int));
    rt->load = core_alloc(LE * sizeof(long));
    EplbShape shape = {.L = s->L, .E = s->E, .R = s->R, .Ng = s->groups, .Nn = s->nodes, .G = G};
    rt->plan = eplb_plan_create(&shape);
    rt->work = core_alloc((size_t)s->E * sizeof(int));
    rt->step_imbalance = core_alloc((size_t)s->L * sizeof(double));
    rt->before = core_alloc((size_t)s->L * sizeof(double));
    rt->after = core_alloc((size_t)s->L * sizeof(double));
    rt->rank_before = core_alloc(LG * sizeof(double));
    rt->rank_after = core_alloc(LG * sizeof(double));
    install_placement(rt);
    return rt;
}

void eplb_runtime_set_placement(EplbRuntime *rt, const int *phy2log) {
    check_placement(phy2log, rt->s.L, rt->s.R, rt->s.E);
    memcpy(rt->s.phy2log, phy2log, (size_t)rt->s.L * rt->s.R * sizeof(int));
    install_placement(rt);
}

void eplb_runtime_set_load(EplbRuntime *rt, const long *load) {
    for (size_t i = 0; i < (size_t)rt->s.L * rt->s.E; i++)
        CHECK(load[i] >= 0, "eplb runtime: layer %zu expert %zu has a load of %ld tokens", i / rt->s.E,
              i % rt->s.E, load[i]);
    memcpy(rt->load, load, (size_t)rt->s.L * rt->s.E * sizeof(long));
}

void eplb_runtime_free(EplbRuntime *rt) {
    if (!rt) return;
    core_free((void *)rt->s.tensor);
    core_free(rt->s.disp);
    core_free(rt->logcnt);
    core_free(rt->load);
    eplb_plan_free(rt->plan);
    core_free(rt->work);
    core_free(rt->step_imbalance);
    core_free(rt->before);
    core_free(rt->after);
    core_free(rt->rank_before);
    core_free(rt->rank_after);
    core_free(rt);
}

// ---------------------------------------------------------------------------------------------
// Replica gradients.

void eplb_runtime_sum_replica_grads(EplbRuntime *rt) {
    const int L = rt->s.L, E = rt->s.E, R = rt->s.R, n = rt->n_local, me = rt->s.ep->rank;
    // Each replicated expert owns one block of slot_floats(l) in the exchange buffer.
    size_t *off = core_alloc((size_t)L * E * sizeof(size_t));  // (L, E) block offset + 1; 0: one replica
    size_t total = 0, widest = 0;
    for (int l = 0; l < L; l++) {
        const size_t f = slot_floats(rt, l);
        if (f > widest) widest = f;
        for (int e = 0; e < E; e++)
            if (rt->logcnt[(size_t)l * E + e] > 1) {
                off[(size_t)l * E + e] = total + 1;
                total += f;
            }
    }
    // The placement is the same on every rank, so either every rank returns here or none does.
    if (total == 0) {
        core_free(off);
        return;
    }
    const LayerOps *ops = rt->s.ops;
    float *part = ops->alloc(total * sizeof(float));  // (total) this rank's replicas, summed (zeroed)
    float *row = ops->alloc_uninit(widest * sizeof(float));  // one slot's gradient rows (written, then read)
    for (int l = 0; l < L; l++)
        for (int s = 0; s < n; s++) {
            const size_t o = off[(size_t)l * E + rt->s.phy2log[(size_t)l * R + me * n + s]];
            if (!o) continue;
            const size_t k = slot_copy(rt, l, s, row, 1, rt->s.grad);
            ops->add(part + o - 1, part + o - 1, row, (long)k);
        }
    // One EP rank holds every replica: its part is the sum already (and a one-process group's
    // all-gather would copy on the host).
    float *all = NULL;
    if (rt->G > 1) {
        all = ops->alloc_uninit((size_t)rt->G * total * sizeof(float));  // (G, total), the all-gather writes it all
        comm_allgather(rt->s.ep_dev, part, all, total, COMM_F32);
        // The ranks' parts are added in rank order on every rank: the same sum, bit for bit.
        ops->copy(part, all, total * sizeof(float));
        for (int r = 1; r < rt->G; r++) ops->add(part, part, all + (size_t)r * total, (long)total);
    }
    for (int l = 0; l < L; l++)
        for (int s = 0; s < n; s++) {
            const size_t o = off[(size_t)l * E + rt->s.phy2log[(size_t)l * R + me * n + s]];
            if (o) slot_copy(rt, l, s, part + o - 1, 0, rt->s.grad);
        }
    ops->free(all);
    ops->free(row);
    ops->free(part);
    core_free(off);
}

int eplb_runtime_duplicate_rows(EplbRuntime *rt, AdamwSpan **rows) {
    const int L = rt->s.L, E = rt->s.E, R = rt->s.R, n = rt->n_local, me = rt->s.ep->rank;
    int *first = rt->work;  // (E) lowest slot holding each expert
    // Every tensor belongs to one layer: at most n rows a tensor.
    *rows = core_alloc((size_t)(n * rt->s.n_tensor > 0 ? n * rt->s.n_tensor : 1) * sizeof **rows);
    int nr = 0;
    for (int l = 0; l < L; l++) {
        const int *p2l = rt->s.phy2log + (size_t)l * R;
        for (int e = 0; e < E; e++) first[e] = -1;
        for (int p = 0; p < R; p++)
            if (first[p2l[p]] < 0) first[p2l[p]] = p;
        for (int s = 0; s < n; s++) {
            if (first[p2l[me * n + s]] == me * n + s) continue;
            for (int i = 0; i < rt->s.n_tensor; i++) {
                const EplbTensor *t = &rt->s.tensor[i];
                if (t->layer == l)
                    (*rows)[nr++] = (AdamwSpan){0, (long)(t->offset + (size_t)s * t->row), (long)t->row, 0};
            }
        }
    }
    return nr;
}

double eplb_runtime_duplicate_sqsum(EplbRuntime *rt) {
    AdamwSpan *rows;
    const int nr = eplb_runtime_duplicate_rows(rt, &rows);
    // No download on a rank without duplicate slots.
    double sq = ops_sqsum(rt->s.ops, rt->s.grad, rows, nr);
    core_free(rows);
    // Gathered and added in rank order, so every rank computes the same norm.
    double *all = core_alloc((size_t)rt->G * sizeof(double));
    comm_allgather(rt->s.ep, &sq, all, 1, COMM_F64);
    sq = 0;
    for (int r = 0; r < rt->G; r++) sq += all[r];
    core_free(all);
    return sq;
}

// ---------------------------------------------------------------------------------------------
// Load figures.

// Tokens on each of the G ranks for one layer's loads (E) under placement p2l (R), a replica taking
// load/count of its expert: rank_load (G); returns max/mean (1 when all zero). count: (E) scratch.
static double layer_rank_load(const int *p2l, const long *load, int E, int R, int G, double *rank_load,
                              int *count) {
    memset(count, 0, (size_t)E * sizeof(int));
    for (int p = 0; p < R; p++) count[p2l[p]]++;
    memset(rank_load, 0, (size_t)G * sizeof(double));
    for (int p = 0; p < R; p++) rank_load[p / (R / G)] += (double)load[p2l[p]] / count[p2l[p]];
    double sum = 0, mx = 0;
    for (int r = 0; r < G; r++) {
        sum += rank_load[r];
        if (rank_load[r] > mx) mx = rank_load[r];
    }
    return sum > 0 ? mx * G / sum : 1.0;
}

void eplb_runtime_rank_load(const EplbRuntime *rt, const long *load, double *rank_load,
                            double *imbalance) {
    const int E = rt->s.E, R = rt->s.R, G = rt->G;
    for (int l = 0; l < rt->s.L; l++) {
        const double x = layer_rank_load(rt->s.phy2log + (size_t)l * R, load + (size_t)l * E, E, R, G,
                                         rank_load + (size_t)l * G, rt->work);
        if (imbalance) imbalance[l] = x;
    }
}

// ---------------------------------------------------------------------------------------------
// Rebalancing.

// Orders the planned slots of each rank so that an expert the rank already holds keeps its slot: the
// planner balances ranks, and where a rank's experts sit among its own slots is free. old, planned,
// out: (R) one layer; need: (E) scratch.
static void keep_in_place(const int *old, const int *planned, int R, int n, int E, int *out, int *need) {
    for (int r0 = 0; r0 < R; r0 += n) {
        memset(need, 0, (size_t)E * sizeof(int));
        for (int p = r0; p < r0 + n; p++) need[planned[p]]++;
        for (int p = r0; p < r0 + n; p++) {
            out[p] = need[old[p]] > 0 ? old[p] : -1;
            if (out[p] >= 0) need[old[p]]--;
        }
        // The remaining experts fill the remaining slots, both in slot order.
        int q = r0;
        for (int p = r0; p < r0 + n; p++) {
            if (out[p] >= 0) continue;
            while (need[planned[q]] == 0) q++;
            out[p] = planned[q];
            need[planned[q]]--;
        }
    }
}

typedef struct {
    int layer;
    int src, src_slot;  // EP rank and local slot of the old copy
    int dst, dst_slot;  // EP rank and local slot that receives it
} SlotMove;

// Every slot of next (L, R) whose expert differs from the current placement, with its source: a slot of
// the same rank that held the expert (a local copy) if there is one, else the expert's old replicas
// taken in turn. The list is the same on every rank. Returns its length; moves has room for L·R.
static int plan_moves(const EplbRuntime *rt, const int *next, SlotMove *moves) {
    const int L = rt->s.L, E = rt->s.E, R = rt->s.R, n = rt->n_local;
    int *turn = rt->work;  // (E) remote copies of each expert so far in this layer
    int nm = 0;
    for (int l = 0; l < L; l++) {
        const int *old = rt->s.phy2log + (size_t)l * R, *nw = next + (size_t)l * R;
        memset(turn, 0, (size_t)E * sizeof(int));
        for (int p = 0; p < R; p++) {
            const int e = nw[p], dst = p / n;
            if (old[p] == e) continue;
            int q = -1;
            for (int s = dst * n; s < (dst + 1) * n && q < 0; s++)
                if (old[s] == e) q = s;
            for (int s = 0, k = turn[e]++ % rt->logcnt[(size_t)l * E + e]; s < R && q < 0; s++)
                if (old[s] == e && k-- == 0) q = s;
            moves[nm++] = (SlotMove){l, q / n, q % n, dst, p % n};
        }
    }
    return nm;
}

// Moves the slots' weights and moments: every rank packs what leaves it from the old contents, the
// ranks exchange in G − 1 rounds (round k: send to rank + k, receive from rank − k, so every pair
// meets in the same round), and then every slot that changes is overwritten.
static void move_slots(EplbRuntime *rt, const SlotMove *mv, int nm) {
    const int G = rt->G, me = rt->s.ep->rank;
    size_t *cnt = core_alloc((size_t)3 * G * sizeof(size_t));
    size_t *nsend = cnt, *nrecv = cnt + G, *base = cnt + 2 * G;  // (G) floats to, from, block of each peer
    size_t nlocal = 0;
    long sent = 0;
    for (int i = 0; i < nm; i++) {
        const size_t f = slot_floats(rt, mv[i].layer) * EPLB_STATES;
        sent += mv[i].src != mv[i].dst;
        if (mv[i].src == me && mv[i].dst == me) nlocal += f;
        else if (mv[i].src == me) nsend[mv[i].dst] += f;
        else if (mv[i].dst == me) nrecv[mv[i].src] += f;
    }
    size_t ns = 0, nr = 0;
    for (int r = 0; r < G; r++) {
        ns += nsend[r];
        nr += nrecv[r];
    }
    const LayerOps *ops = rt->s.ops;
    float *sbuf = ops->alloc(ns * sizeof(float)), *rbuf = ops->alloc(nr * sizeof(float));
    float *lbuf = ops->alloc(nlocal * sizeof(float));
    // Cursor into each peer's block of sbuf (packing) and rbuf (unpacking).
    size_t *scur = core_alloc((size_t)G * sizeof(size_t)), *rcur = core_alloc((size_t)G * sizeof(size_t));
    for (int r = 1; r < G; r++) {
        scur[r] = scur[r - 1] + nsend[r - 1];
        rcur[r] = rcur[r - 1] + nrecv[r - 1];
    }
    memcpy(base, scur, (size_t)G * sizeof(size_t));
    size_t lcur = 0;
    for (int i = 0; i < nm; i++) {
        if (mv[i].src != me) continue;
        float *b = mv[i].dst == me ? lbuf + lcur : sbuf + scur[mv[i].dst];
        const size_t k = slot_copy(rt, mv[i].layer, mv[i].src_slot, b, 1, NULL);
        if (mv[i].dst == me) lcur += k;
        else scur[mv[i].dst] += k;
    }
    // Nothing crosses ranks: no round at all (every rank knows, the move list is global). An empty
    // side is left out, so that both ends of a pair agree on what round k carries: NCCL matches
    // untagged point-to-point calls in issue order.
    for (int k = 1; k < G && sent > 0; k++) {
        const int dst = (me + k) % G, src = (me - k + G) % G;
        float *sb = sbuf + base[dst], *rb = rbuf + rcur[src];
        if (nsend[dst] && nrecv[src])
            comm_sendrecv(rt->s.ep_dev, sb, nsend[dst], dst, rb, nrecv[src], src, COMM_F32, EPLB_TAG);
        else if (nsend[dst])
            comm_send(rt->s.ep_dev, sb, nsend[dst], COMM_F32, dst, EPLB_TAG);
        else if (nrecv[src])
            comm_recv(rt->s.ep_dev, rb, nrecv[src], COMM_F32, src, EPLB_TAG);
    }
    lcur = 0;
    for (int i = 0; i < nm; i++) {
        if (mv[i].dst != me) continue;
        float *b = mv[i].src == me ? lbuf + lcur : rbuf + rcur[mv[i].src];
        const size_t k = slot_copy(rt, mv[i].layer, mv[i].dst_slot, b, 0, NULL);
        if (mv[i].src == me) lcur += k;
        else rcur[mv[i].src] += k;
    }
    rt->changed = nm;
    rt->sent = sent;
    core_free(scur);
    core_free(rcur);
    ops->free(sbuf);
    ops->free(rbuf);
    ops->free(lbuf);
    core_free(cnt);
}

static void rebalance(EplbRuntime *rt) {
    const int L = rt->s.L, E = rt->s.E, R = rt->s.R;
    eplb_runtime_rank_load(rt, rt->load, rt->rank_before, rt->before);
    double *load = core_alloc((size_t)L * E * sizeof(double));  // (L, E)
    for (size_t i = 0; i < (size_t)L * E; i++) load[i] = (double)rt->load[i];
    eplb_plan_run(rt->plan, load);
    core_free(load);
    int *next = core_alloc((size_t)L * R * sizeof(int));  // (L, R) the new placement
    double *rl = core_alloc((size_t)rt->G * sizeof(double));  // (G) scratch
    for (int l = 0; l < L; l++) {
        const int *old = rt->s.phy2log + (size_t)l * R, *planned = rt->plan->phy2log + (size_t)l * R;
        // The planner starts from scratch and is greedy: a layer keeps its placement (and moves
        // nothing) unless the plan balances the interval's loads strictly better.
        const double x = layer_rank_load(planned, rt->load + (size_t)l * E, E, R, rt->G, rl, rt->work);
        if (x < rt->before[l] * (1 - 1e-9))
            keep_in_place(old, planned, R, rt->n_local, E, next + (size_t)l * R, rt->work);
        else
            memcpy(next + (size_t)l * R, old, (size_t)R * sizeof(int));
    }
    core_free(rl);
    SlotMove *mv = core_alloc((size_t)L * R * sizeof *mv);
    const int nm = plan_moves(rt, next, mv);
    if (nm > 0 && rt->s.move_begin) rt->s.move_begin(rt->s.move_ctx);
    move_slots(rt, mv, nm);
    if (nm > 0 && rt->s.move_end) rt->s.move_end(rt->s.move_ctx);
    core_free(mv);
    memcpy(rt->s.phy2log, next, (size_t)L * R * sizeof(int));
    core_free(next);
    install_placement(rt);
    eplb_runtime_rank_load(rt, rt->load, rt->rank_after, rt->after);
}

int eplb_runtime_step(EplbRuntime *rt, const long *counts, int step) {
    const size_t LE = (size_t)rt->s.L * rt->s.E;
    double *rl = core_alloc((size_t)rt->s.L * rt->G * sizeof(double));  // (L, G)
    eplb_runtime_rank_load(rt, counts, rl, rt->step_imbalance);
    core_free(rl);
    for (size_t i = 0; i < LE; i++) rt->load[i] += counts[i];
    if ((step + 1) % rt->s.interval != 0) return 0;
    rebalance(rt);
    memset(rt->load, 0, LE * sizeof(long));
    return 1;
}

// ---------------------------------------------------------------------------------------------
// Metrics.

static void write_reals(FILE *f, const double *x, int n, const char *fmt) {
    fputc('[', f);
    for (int i = 0; i < n; i++) {
        if (i) fputs(", ", f);
        fprintf(f, fmt, x[i]);
    }
    fputc(']', f);
}

static void write_rows(FILE *f, const double *x, int rows, int cols) {
    fputc('[', f);
    for (int r = 0; r < rows; r++) {
        if (r) fputs(", ", f);
        write_reals(f, x + (size_t)r * cols, cols, "%.1f");
    }
    fputc(']', f);
}

void eplb_runtime_write_metrics(const EplbRuntime *rt, FILE *f, int rebalanced) {
    const int L = rt->s.L;
    fputs(", \"rank_imbalance\": ", f);
    write_reals(f, rt->step_imbalance, L, "%.4f");
    if (!rebalanced) return;
    fputs(", \"eplb\": {\"before\": ", f);
    write_reals(f, rt->before, L, "%.4f");
    fputs(", \"after\": ", f);
    write_reals(f, rt->after, L, "%.4f");
    fprintf(f, ", \"slots_changed\": %ld, \"slots_sent\": %ld, \"rank_load_before\": ", rt->changed,
            rt->sent);
    write_rows(f, rt->rank_before, L, rt->G);
    fputs(", \"rank_load_after\": ", f);
    write_rows(f, rt->rank_after, L, rt->G);
    fputc('}', f);
}
