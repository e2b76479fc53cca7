// The GPU half of expert parallelism under mpirun, one rank per GPU (tagged manual; run by
// tools/gpu_run.sh's `nccl` stage): the NCCL backend of the communicator API on device buffers
// (every collective with all four types, uneven and zero all-to-all-v counts, the non-blocking
// all-reduce and all-to-all-v, point-to-point, split, ordering after the compute stream), and
// EP / DP training in fp32 against the one-GPU run of the same global batch (losses and gradient
// norms of 3 steps within 1e-5 relative, every updated tensor within W_TOL, also with every token
// routed to one expert so that a rank's experts receive no rows), and EP training with the shared
// experts overlapping the dispatch bit-identical to the same run without the overlap. EPLB on
// GPUs (2 ranks or more): the device EP dispatcher with R > E slots and replicas against the host
// one (counts and rows bit for bit), the EPLB runtime on device buffers against the same runtime on
// host buffers (duplicate Σ g², replica gradient sums, slot moves, placements re-uploaded after a
// rebalance), and EP training rebalancing every 2 steps against the same run without EPLB. ZeRO-1
// in bf16 against the unsharded optimizer: its step (any number of ranks, one included) and the
// trainer with --zero 1 (2 ranks or more).
// DISABLED_UnmatchedAllReduceTimesOut is run on its own by gpu_run.sh: it must end the job.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
#include "framework/backend.h"
#include "framework/core/cuda.h"
#include "framework/core/rng.h"
#include "framework/model.h"
#include "framework/optimizer.h"
#include "framework/train.h"
#include "parallel/comm.h"
#include "parallel/comm_nccl.h"
#include "parallel/dp_sync.h"
#include "parallel/ep_dispatch.h"
#include "parallel/eplb_runtime.h"
#include "parallel/grid.h"
#include "parallel/zero1.h"
}

#include "tests/util/layout_util.h"

namespace {

// This rank's GPU (its local rank) in fp32, set up once.
const LayerOps *gpu() {
    static const LayerOps *o = backend_ops_on("cuda-fp32", grid_local_rank(comm_world(), NULL));
    return o;
}

// The NCCL twin of the world, made once.
Comm *world() {
    gpu();
    static Comm *w = comm_nccl_create(comm_world(), "world");
    return w;
}

// Host values to a fresh device buffer and back.
template <typename T>
T *to_dev(const std::vector<T> &h) {
    T *d = (T *)gpu()->alloc(h.size() * sizeof(T) + 1);
    gpu()->upload(d, h.data(), h.size() * sizeof(T));
    return d;
}
template <typename T>
std::vector<T> to_host(const T *d, size_t n) {
    std::vector<T> h(n);
    gpu()->download(h.data(), d, n * sizeof(T));
    return h;
}

template <typename T>
void check_allreduce(CommType t) {
    Comm *w = world();
    const int P = w->size, r = w->rank, n = 5;
    std::vector<T> v(n);
    for (int i = 0; i < n; i++) v[i] = (T)(r * 10 + i);
    T *a = to_dev(v), *b = to_dev(v);
    comm_allreduce(w, a, n, t, COMM_SUM);
    comm_allreduce(w, b, n, t, COMM_MAX);
    std::vector<T> s = to_host(a, n), m = to_host(b, n);
    for (int i = 0; i < n; i++) {
        EXPECT_EQ(s[i], (T)(10 * P * (P - 1) / 2 + P * i)) << "type " << t << " [" << i << "]";
        EXPECT_EQ(m[i], (T)((P - 1) * 10 + i)) << "type " << t << " [" << i << "]";
    }
    gpu()->free(a);
    gpu()->free(b);
}

TEST(NcclComm, AllReduceEveryType) {
    check_allreduce<float>(COMM_F32);
    check_allreduce<double>(COMM_F64);
    check_allreduce<int32_t>(COMM_I32);
    check_allreduce<int64_t>(COMM_I64);
}

TEST(NcclComm, AllGatherAndReduceScatter) {
    Comm *w = world();
    const int P = w->size, r = w->rank;
    std::vector<float> s(3);
    for (int i = 0; i < 3; i++) s[i] = (float)(r * 100 + i);
    float *ds = to_dev(s), *dr = to_dev(std::vector<float>((size_t)P * 3));
    comm_allgather(w, ds, dr, 3, COMM_F32);
    std::vector<float> g = to_host(dr, (size_t)P * 3);
    for (int j = 0; j < P; j++)
        for (int i = 0; i < 3; i++) EXPECT_EQ(g[(size_t)j * 3 + i], (float)(j * 100 + i));
    // send (P, 2): block j of rank r holds r + 10 j + i; rank r receives Σ_q (q + 10 r + i).
    std::vector<float> rs((size_t)P * 2);
    for (int j = 0; j < P; j++)
        for (int i = 0; i < 2; i++) rs[(size_t)j * 2 + i] = (float)(r + 10 * j + i);
    float *drs = to_dev(rs), *out = to_dev(std::vector<float>(2));
    comm_reduce_scatter(w, drs, out, 2, COMM_F32, COMM_SUM);
    std::vector<float> o = to_host(out, 2);
    for (int i = 0; i < 2; i++) EXPECT_EQ(o[i], (float)(P * (P - 1) / 2 + P * (10 * r + i)));
    for (float *p : {ds, dr, drs, out}) gpu()->free(p);
}

TEST(NcclComm, AllToAllVUnevenAndZeroCounts) {
    Comm *w = world();
    const int P = w->size, r = w->rank;
    // Rank q sends (q + j) % 3 elements to rank j (zero included), valued 1000 q + 10 j + k.
    std::vector<size_t> sc(P), rc(P);
    std::vector<int32_t> send;
    for (int j = 0; j < P; j++) {
        sc[j] = (size_t)((r + j) % 3);
        rc[j] = (size_t)((j + r) % 3);
        for (size_t k = 0; k < sc[j]; k++) send.push_back(1000 * r + 10 * j + (int32_t)k);
    }
    size_t nr = 0;
    for (size_t c : rc) nr += c;
    int32_t *ds = to_dev(send), *dr = to_dev(std::vector<int32_t>(nr));
    comm_alltoallv(w, ds, sc.data(), dr, rc.data(), COMM_I32);
    std::vector<int32_t> got = to_host(dr, nr);
    size_t at = 0;
    for (int j = 0; j < P; j++)
        for (size_t k = 0; k < rc[j]; k++) EXPECT_EQ(got[at++], 1000 * j + 10 * r + (int32_t)k);
    gpu()->free(ds);
    gpu()->free(dr);
}

TEST(NcclComm, NonBlockingAllReduceAndAllToAllV) {
    // An all-reduce and an all-to-all-v in flight together (started in the same order on every
    // rank), completed by test and wait: rank q sends (q + 2 j) % 3 elements to rank j (the EP
    // dispatcher's one exchange: one send and one receive per peer, zero counts included).
    Comm *w = world();
    const int P = w->size, r = w->rank;
    auto count = [](int src, int dst) { return (size_t)((src + 2 * dst) % 3); };
    auto value = [](int src, int dst, size_t k) { return 10000 * src + 100 * dst + (int32_t)k; };
    std::vector<size_t> sc(P), rc(P);
    std::vector<int32_t> send;
    size_t nr = 0;
    for (int j = 0; j < P; j++) {
        sc[j] = count(r, j);
        rc[j] = count(j, r);
        nr += rc[j];
        for (size_t k = 0; k < sc[j]; k++) send.push_back(value(r, j, k));
    }
    std::vector<float> v = {1.0f * r, 2.0f};
    float *dv = to_dev(v);
    int32_t *ds = to_dev(send), *dr = to_dev(std::vector<int32_t>(nr + 1, -1));
    CommRequest *ra = comm_iallreduce(w, dv, 2, COMM_F32, COMM_SUM);
    CommRequest *rb = comm_ialltoallv(w, ds, sc.data(), dr, rc.data(), COMM_I32);
    while (!comm_test(ra)) {
    }
    comm_wait(rb);
    std::vector<float> sum = to_host(dv, 2);
    EXPECT_EQ(sum[0], (float)(P * (P - 1) / 2));
    EXPECT_EQ(sum[1], 2.0f * P);
    std::vector<int32_t> got = to_host(dr, nr + 1);
    size_t at = 0;
    for (int j = 0; j < P; j++)
        for (size_t k = 0; k < rc[j]; k++) EXPECT_EQ(got[at++], value(j, r, k)) << "from " << j;
    EXPECT_EQ(got[nr], -1) << "the element after the packed receive";
    for (void *p : {(void *)dv, (void *)ds, (void *)dr}) gpu()->free(p);
}

TEST(NcclComm, RingSendRecvAndIsend) {
    Comm *w = world();
    const int P = w->size, r = w->rank;
    std::vector<double> v(4, (double)r);
    double *s = to_dev(v), *d = to_dev(std::vector<double>(4));
    comm_sendrecv(w, s, 4, (r + 1) % P, d, 4, (r + P - 1) % P, COMM_F64, 3);
    for (double x : to_host(d, 4)) EXPECT_EQ(x, (double)((r + P - 1) % P));
    if (P > 1) {
        // Rank 0 sends to every other rank without waiting, then completes the requests.
        if (r == 0) {
            std::vector<CommRequest *> q;
            for (int j = 1; j < P; j++) q.push_back(comm_isend(w, s, 4, COMM_F64, j, 5));
            for (CommRequest *x : q) comm_wait(x);
        } else {
            comm_recv(w, d, 4, COMM_F64, 0, 5);
            for (double x : to_host(d, 4)) EXPECT_EQ(x, 0.0);
        }
    }
    comm_barrier(w);
    gpu()->free(s);
    gpu()->free(d);
}

TEST(NcclComm, SplitReversesRanks) {
    Comm *w = world();
    Comm *s = comm_split(w, 0, w->size - 1 - w->rank, "rev");
    EXPECT_EQ(s->rank, w->size - 1 - w->rank);
    EXPECT_EQ(s->size, w->size);
    if (s->ops) {  // a one-process split has no backend
        std::vector<int32_t> v = {s->rank};
        int32_t *d = to_dev(v);
        std::vector<int32_t> all((size_t)s->size);
        int32_t *dall = to_dev(all);
        comm_allgather(s, d, dall, 1, COMM_I32);
        all = to_host(dall, all.size());
        for (int j = 0; j < s->size; j++) EXPECT_EQ(all[j], j);
        gpu()->free(d);
        gpu()->free(dall);
    }
    comm_free(s);
}

TEST(NcclComm, WaitsForTheComputeStream) {
    // A large fill queued on the compute stream right before the all-reduce must be in its input,
    // on every rank: in round k rank k alone fills the largest pattern, one no earlier round left
    // in the buffer, so the maximum is its fill only if rank k's all-reduce read it (a rank that
    // read the buffer before the fill would bring an earlier round's smaller value, or zeros).
    Comm *w = world();
    const size_t n = (size_t)1 << 24;
    float *d = (float *)gpu()->alloc(n * sizeof(float));
    core_cuda_memset(d, 0, n * sizeof(float));
    gpu()->sync();
    for (int k = 0; k < w->size; k++) {
        const int byte = 0x40 + k;  // 0x40404040 = 3.0, 0x41414141 ≈ 12.1, ...: larger every round
        core_cuda_memset(d, w->rank == k ? byte : 0x20, n * sizeof(float));
        comm_allreduce(w, d, n, COMM_F32, COMM_MAX);
        const uint32_t bits = 0x01010101u * (uint32_t)byte;
        float want;
        memcpy(&want, &bits, sizeof want);
        std::vector<float> h = to_host(d, n);
        size_t bad = 0;
        for (float x : h) bad += x != want;
        EXPECT_EQ(bad, 0u) << "round " << k << ": rank " << k << "'s fill";
    }
    gpu()->free(d);
}

TEST(NcclComm, DISABLED_UnmatchedAllReduceTimesOut) {
    // Rank 0 enters an all-reduce that no other rank joins: within the 3 s timeout it must end the
    // job with the timeout message (gpu_run.sh checks it and the time taken).
    Comm *w = world();
    comm_set_timeout(3);
    float *d = to_dev(std::vector<float>(8));
    if (w->rank == 0) comm_allreduce(w, d, 8, COMM_F32, COMM_SUM);
    else sleep(60);
    FAIL() << "the unmatched all-reduce returned";
}

// ---------------------------------------------------------------------------------------------
// EP and DP training on GPUs against the one-GPU run.

const int STEPS = 3;
const double TOL = 1e-5;
// The updated weights are judged looser than the losses. The layouts sum the same gradient terms
// in other orders (micro-batches accumulated in one GEMM vs summed over ranks, the experts' GEMMs
// over other row counts), which moves a gradient element by about 1e-7 of its tensor's scale; for
// an element whose gradient is near AdamW's eps (1e-8) the update lr·g/(|g| + eps) changes by up to
// lr/(4 eps) per unit of g, so such an element can move by ~1e-5 absolute, 1e-4 of the tensor's
// largest weight. Measured on 2 H200s (2026-11-28): worst tensor 7.3e-5 (DP 2), 3.6e-4 (EP 2),
// 3.9e-6 (every token to one expert), while losses and norms agreed to 1e-7. The CPU layouts give
// the same figures on this model (6.9e-5 and 3.6e-4, 2026-12-03; docs/parallel.md §6): the bound is
// this model's, not the GPU's.
const double W_TOL = 1e-3;

// The GPU kernels' shapes (attention head size 16): a dense layer, two MoE layers with a shared
// expert, the balance loss and the bias update on.
MoeConfig small() {
    MoeConfig c;
    config_defaults(&c);
    c.V = 256; c.D = 64; c.L = 3; c.H = 4; c.Hkv = 2; c.T = 32; c.n_dense_layers = 1;
    c.F = 128; c.E = 8; c.K = 2; c.S = 1; c.Fe = 32; c.batch_size = 2; c.seed = 5;
    c.tie_embeddings = 0; c.balance_alpha = 0.01f; c.bias_rate = 0.01f; c.lr = 5e-3f;
    c.warmup_steps = 1; c.steps = STEPS;
    return c;
}

std::vector<int> global_batch(const MoeConfig &c, int G, int step) {
    RngStream r = rng_stream(77, 1000 + (uint32_t)step);
    std::vector<int> t((size_t)G * c.batch_size * (c.T + 1));
    for (int &x : t) x = (int)(rng_next_u32(&r) % (uint32_t)c.V);
    return t;
}

double rel_err(const std::vector<float> &a, const float *b, size_t n) { return layout_rel_err(a.data(), b, n); }

// EP `ep` with A micro-batches per rank against one GPU with DP·A micro-batches, both in fp32 on
// this rank's GPU; returns the last step's global expert counts of the parallel run.
std::vector<long> compare_with_one_gpu(MoeConfig c, int ep, int A) {
    const LayerOps *o = gpu();
    Grid *g = grid_create(comm_world(), 1, ep, c.E);
    const int G = g->dp * A, dp = g->dp, dp_rank = g->dp_rank, ep_rank = g->ep_rank, rank = g->rank;
    const size_t mb = (size_t)c.batch_size * (c.T + 1);

    MoeConfig cr = c;
    cr.grad_accum = G;
    Model *ref = model_create(&cr, 0, 1);
    model_init_weights(ref);
    model_to_device(ref, o);
    AdamW ro;
    adamw_init_on(&ro, &ref->reg, o, ref->wlow);

    MoeConfig cp = c;
    cp.grad_accum = A;
    cp.ep = ep;
    PipeTrainer *pt = pipe_trainer_create(&cp, g, o);  // owns g
    Model *m = pt->ctx[0].m;

    for (int s = 0; s < STEPS; s++) {
        std::vector<int> tok = global_batch(c, G, s);
        StepStats a = train_step_tokens(ref, &ro, &cr, s, tok.data());
        StepStats b = pipe_train_step(pt, &cp, s, tok.data() + (size_t)dp_rank * A * mb);
        EXPECT_NEAR(b.loss, a.loss, TOL * std::fabs(a.loss)) << "step " << s << " ep " << ep;
        EXPECT_NEAR(b.ce, a.ce, TOL * std::fabs(a.ce)) << "step " << s << " ep " << ep;
        EXPECT_NEAR(b.grad_norm, a.grad_norm, TOL * a.grad_norm) << "step " << s << " ep " << ep;
        if (rank == 0)
            std::printf("ep %d dp %d step %d: loss %.7f vs one GPU %.7f, grad norm %.7f vs %.7f\n", ep,
                        dp, s, b.loss, a.loss, b.grad_norm, a.grad_norm);
    }

    std::vector<float> mine(m->reg.total), want(ref->reg.total);
    o->download(mine.data(), m->reg.data, mine.size() * sizeof(float));
    o->download(want.data(), ref->reg.data, want.size() * sizeof(float));
    double worst = 0;
    for (int i = 0; i < m->reg.n; i++) {
        const ParamInfo *p = &m->reg.p[i];
        const ParamInfo *q = &ref->reg.p[params_find(&ref->reg, p->name)];
        std::vector<float> a(mine.begin() + p->offset, mine.begin() + p->offset + p->numel);
        // An expert tensor here holds slots [ep_rank·n_local, +n_local) of the full one.
        const float *b = want.data() + q->offset + (p->kind == PARAM_EXPERT ? ep_rank * p->numel : 0);
        const double e = rel_err(a, b, p->numel);
        worst = std::fmax(worst, e);
        EXPECT_LE(e, W_TOL) << p->name << " ep " << ep;
    }
    if (rank == 0)
        std::printf("ep %d dp %d: worst tensor after %d steps %.2e relative\n", ep, dp, STEPS, worst);

    std::vector<long> counts(m->expert_counts, m->expert_counts + (size_t)c.L * c.E);
    pipe_trainer_free(pt);
    model_free(ref);
    adamw_free(&ro);
    return counts;
}

TEST(GpuEpTrain, MatchesTheOneGpuRun) {
    for (int ep = 1; ep <= comm_world()->size; ep *= 2)
        if (comm_world()->size % ep == 0) compare_with_one_gpu(small(), ep, 2);
}

// Losses, gradient norms and the updated weights of 3 EP steps (EP = the world) with the exchanges
// overlapped by the shared experts and the other token chunks' experts (config key ep_overlap = 1,
// the default) or not (0), in `chunks` token chunks per MoE layer (ep_chunks).
std::vector<float> ep_run(bool overlap, std::vector<float> *weights, int chunks = 1) {
    const LayerOps *o = gpu();
    MoeConfig c = small();
    c.ep_overlap = overlap;
    c.ep_chunks = chunks;
    c.ep = comm_world()->size;
    c.grad_accum = 2;
    Grid *g = grid_create(comm_world(), 1, c.ep, c.E);
    const int dp = g->dp, dp_rank = g->dp_rank;
    PipeTrainer *p = pipe_trainer_create(&c, g, o);  // owns g
    const Model *m = p->ctx[0].m;
    std::vector<float> out;
    for (int s = 0; s < STEPS; s++) {
        std::vector<int> tok = global_batch(c, dp * c.grad_accum, s);
        StepStats st = pipe_train_step(p, &c, s, tok.data() + (size_t)dp_rank * c.grad_accum *
                                                                 c.batch_size * (c.T + 1));
        out.push_back(st.loss);
        out.push_back(st.grad_norm);
    }
    weights->resize(m->reg.total);
    o->download(weights->data(), m->reg.data, weights->size() * sizeof(float));
    pipe_trainer_free(p);
    return out;
}

TEST(GpuEpTrain, SharedExpertOverlapIsBitIdentical) {
    std::vector<float> wa, wb;
    std::vector<float> a = ep_run(true, &wa), b = ep_run(false, &wb);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(a[i], b[i]) << "step " << i / 2 << (i % 2 ? " grad norm" : " loss");
    size_t differ = 0;
    for (size_t i = 0; i < wa.size(); i++) differ += std::memcmp(&wa[i], &wb[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0u) << "weights differ with and without the overlap";
}

// Token chunks (ep_chunks 3) on device buffers: with and without the overlap the same bits (the same
// GEMMs on the same rows, only the exchanges' timing differs); against one chunk, losses and norms
// within TOL and every tensor within W_TOL (the experts' weight gradients add up chunk by chunk).
TEST(GpuEpTrain, TokenChunksMatchOneChunk) {
    std::vector<float> w1, w3, w3s;
    std::vector<float> one = ep_run(true, &w1), three = ep_run(true, &w3, 3), seq = ep_run(false, &w3s, 3);
    ASSERT_EQ(one.size(), three.size());
    EXPECT_EQ(three, seq) << "3 chunks: losses or norms differ with and without the overlap";
    size_t differ = 0;
    for (size_t i = 0; i < w3.size(); i++) differ += std::memcmp(&w3[i], &w3s[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0u) << "3 chunks: weights differ with and without the overlap";
    for (size_t i = 0; i < one.size(); i++)
        EXPECT_NEAR(three[i], one[i], TOL * std::fabs(one[i])) << "step " << i / 2 << (i % 2 ? " grad norm" : " loss");
    EXPECT_LE(rel_err(w3, w1.data(), w1.size()), W_TOL) << "weights with 3 chunks against 1";
}

TEST(GpuEpTrain, AllTokensToOneExpert) {
    // A huge fixed bias sends every token to expert 0: every other EP rank's experts get no rows.
    MoeConfig c = small();
    c.K = 1;
    c.router_skew = 100.0f;
    c.bias_rate = 0.0f;
    const int ep = comm_world()->size;
    std::vector<long> counts = compare_with_one_gpu(c, ep, 1);
    const long tokens = (long)comm_world()->size * c.batch_size * c.T;
    EXPECT_EQ(counts[(size_t)1 * c.E + 0], tokens);
    for (int e = 1; e < c.E; e++) EXPECT_EQ(counts[(size_t)1 * c.E + e], 0) << "expert " << e;
}

// ---------------------------------------------------------------------------------------------
// ZeRO-1 in bf16 against the unsharded optimizer, DP = the world: the optimizer alone (any number of
// ranks, one included, where the trainer would not shard), then the trainer (2 ranks or more).

// The bf16 table on this rank's GPU.
const LayerOps *gpu_bf16() { return backend_ops_on("cuda", grid_local_rank(comm_world(), NULL)); }

std::vector<float> download_f32(const float *d, size_t n) {
    std::vector<float> h(n);
    gpu_bf16()->download(h.data(), d, n * sizeof(float));
    return h;
}

std::vector<uint16_t> download_low(const Model *m) {
    std::vector<uint16_t> h(m->reg.total);
    gpu_bf16()->download(h.data(), m->wlow, h.size() * sizeof(uint16_t));
    return h;
}

// The same gradients on every rank (zero for the untrained tensors), different each step, with 8
// significant bits, so that the sum of up to 8 equal ones is exact.
void fill_grads(Model *m, int step) {
    std::vector<float> g(m->reg.total, 0.0f);
    for (int i = 0; i < m->reg.n; i++) {
        const ParamInfo *q = &m->reg.p[i];
        if (q->kind != PARAM_BUFFER) rng_normal_fill(&g[q->offset], q->numel, 0.01f, 900 + step, q->layer, q->name, -1);
    }
    for (float &x : g) {
        uint32_t u;
        std::memcpy(&u, &x, sizeof u);
        u &= 0xFFFF0000u;
        std::memcpy(&x, &u, sizeof u);
    }
    gpu_bf16()->upload(m->reg.grad, g.data(), g.size() * sizeof(float));
}

// Every byte of a device buffer set to 0xFF (NaN in fp32 and bf16): what a load must overwrite.
void clobber(void *d, size_t bytes) { core_cuda_memset(d, 0xFF, bytes); }

bool same_bits(const std::vector<float> &a, const std::vector<float> &b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Before a load: the sharded optimizer's state, the model's compute copy and its router biases
// clobbered, so that only a scatter that restores all of them leaves the run as it was.
void clobber_sharded(AdamW *o, Model *m) {
    const size_t S = dp_sync_shard_floats(o->shard) * sizeof(float);
    clobber(o->w, S);
    clobber(o->m, S);
    clobber(o->v, S);
    clobber(m->wlow, m->reg.total * sizeof(uint16_t));
    clobber(m->reg.data, params_untrained_floats(&m->reg) * sizeof(float));
}

// Three AdamW steps of the same model on the same gradients, unsharded and ZeRO-1 (1000-float
// buckets that cut tensors), then a save's gather, the sharded state clobbered, a load's scatter
// and one more step. The gradients are equal on every rank and short, so their average is the same
// bits at DP 1, 2, 4 and 8 (the sums of equal terms and the 1/DP scale are exact): the compute copies
// (bf16 bits) and the gathered fp32 values and moments must equal the unsharded ones bit for bit,
// and the fp32 values must be freed but for the router biases.
TEST(GpuZero1, StepMatchesTheUnshardedStep) {
    const int W = comm_world()->size;
    if (W & (W - 1)) GTEST_SKIP() << "needs a power of two of ranks (exact averages)";
    const LayerOps *o = gpu_bf16();
    MoeConfig c = small();
    Model *a = model_create(&c, 0, 1), *b = model_create(&c, 0, 1);
    model_init_weights(a);
    model_init_weights(b);
    model_to_device(a, o);
    model_to_device(b, o);
    AdamW oa, ob;
    adamw_init_on(&oa, &a->reg, o, a->wlow);
    Grid *g = grid_create(comm_world(), 1, 1, c.E);
    grid_to_device(g, o);
    zero1_init(&ob, &b->reg, o, b->wlow, g, 1000);
    model_keep_untrained(b);
    EXPECT_EQ(b->untrained_only, 1);
    const size_t n = a->reg.total;
    auto step = [&](int s) {
        fill_grads(a, s);
        fill_grads(b, s);
        adamw_step(&oa, &a->reg, &c, 1e-3f * (float)(s + 1), 0.5f);
        dp_sync_complete(ob.shard);
        zero1_step(&ob, &b->reg, &c, 1e-3f * (float)(s + 1), 0.5f);
    };
    // The sharded state gathered as a save gathers it, against the unsharded optimizer's, bit for bit.
    std::vector<float> w(n), mm(n), vv(n);
    auto expect_same = [&](const char *when) {
        zero1_gather_state(&ob, &b->reg, w.data(), mm.data(), vv.data());
        EXPECT_TRUE(same_bits(w, download_f32(a->reg.data, n))) << "fp32 values " << when;
        EXPECT_TRUE(same_bits(mm, download_f32(oa.m, n))) << "first moments " << when;
        EXPECT_TRUE(same_bits(vv, download_f32(oa.v, n))) << "second moments " << when;
        EXPECT_TRUE(download_low(a) == download_low(b)) << "compute copies " << when;
    };
    for (int s = 0; s < STEPS; s++) step(s);
    expect_same("after 3 steps");
    clobber_sharded(&ob, b);
    zero1_scatter_state(&ob, &b->reg, w.data(), mm.data(), vv.data());
    EXPECT_TRUE(download_low(a) == download_low(b)) << "compute copies after a load";
    EXPECT_TRUE(same_bits(download_f32(a->reg.data, params_untrained_floats(&a->reg)),
                          download_f32(b->reg.data, params_untrained_floats(&b->reg))))
        << "router biases after a load";
    step(STEPS);
    expect_same("after a load and a step");
    zero1_free(&ob);
    adamw_free(&ob);
    adamw_free(&oa);
    model_free(a);
    model_free(b);
    grid_free(g);
}

// Losses and gradient norms of 3 trainer steps (then of one more after a save's gather, the sharded
// state clobbered and a load's scatter), and the gathered fp32 values, DP = the world, in bf16, with
// `zero` as the config key.
std::vector<float> zero1_trainer_run(int zero, std::vector<float> *w) {
    MoeConfig c = small();
    c.grad_accum = 2;
    c.zero = zero;
    Grid *g = grid_create(comm_world(), 1, 1, c.E);
    const int dp = g->dp, dp_rank = g->dp_rank;
    PipeTrainer *p = pipe_trainer_create(&c, g, gpu_bf16());  // owns g
    Model *m = p->ctx[0].m;
    AdamW *a = p->ctx[0].o;
    EXPECT_EQ(a->shard != NULL, zero == 1);
    EXPECT_EQ(m->untrained_only, zero);
    std::vector<float> out;
    auto step = [&](int s) {
        std::vector<int> tok = global_batch(c, dp * c.grad_accum, s);
        StepStats st = pipe_train_step(p, &c, s, tok.data() + (size_t)dp_rank * c.grad_accum * c.batch_size * (c.T + 1));
        out.push_back(st.loss);
        out.push_back(st.grad_norm);
    };
    for (int s = 0; s < STEPS; s++) step(s);
    const size_t n = m->reg.total;
    w->resize(n);
    if (zero) {
        std::vector<float> mm(n), vv(n);
        zero1_gather_state(a, &m->reg, w->data(), mm.data(), vv.data());
        clobber_sharded(a, m);
        zero1_scatter_state(a, &m->reg, w->data(), mm.data(), vv.data());
    } else {
        *w = download_f32(m->reg.data, n);
    }
    step(STEPS);
    pipe_trainer_free(p);
    return out;
}

// The trainer with --zero 1 against the same run without: losses and norms within TOL, the fp32
// values within W_TOL (DP > 2 may sum the gradients in another order than the all-reduce).
TEST(GpuZero1, TrainerMatchesTheUnshardedRun) {
    if (comm_world()->size < 2) GTEST_SKIP() << "needs 2 ranks or more (one process has no DP to shard)";
    std::vector<float> wz, wu;
    const std::vector<float> z = zero1_trainer_run(1, &wz), u = zero1_trainer_run(0, &wu);
    ASSERT_EQ(z.size(), u.size());
    for (size_t i = 0; i < u.size(); i++)
        EXPECT_NEAR(z[i], u[i], TOL * std::fabs(u[i])) << "step " << i / 2 << (i % 2 ? " grad norm" : " loss");
    const double e = rel_err(wz, wu.data(), wu.size());
    EXPECT_LE(e, W_TOL) << "fp32 values";
    if (comm_world()->rank == 0) std::printf("zero-1 dp %d: fp32 values %.2e relative against unsharded\n", comm_world()->size, e);
}

// ---------------------------------------------------------------------------------------------
// EPLB on GPUs: the device paths against their host twins, which
// tests/parallel/eplb_runtime_test.cc checks.

// Floats of a and b (same length) whose bits differ.
size_t bits_differ(const std::vector<float> &a, const std::vector<float> &b) {
    size_t n = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); i++) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return n + (a.size() > b.size() ? a.size() - b.size() : b.size() - a.size());
}

// The device EP dispatcher dev against the host one (both over the world, same placement) on one
// skewed routing: counts, the expert rows of a dispatch by token (overlapped form where dev has it)
// and by choice, and the rows a combine brings home, bit for bit (fp32 rows are only copied).
void expect_same_dispatch(MoeDispatcher *host, MoeDispatcher *dev, int E, uint32_t seed,
                          const char *what) {
    const int r = comm_world()->rank, N = 29 + 7 * r, K = 2, D = 12;
    RngStream g = rng_stream(seed, 100 + (uint32_t)r);
    std::vector<int> idx((size_t)N * K);  // (N, K): choice 0 among experts 0-2, choice 1 any
    for (int t = 0; t < N; t++) {
        idx[(size_t)t * K] = (int)(rng_next_u32(&g) % 3);
        idx[(size_t)t * K + 1] = (int)(rng_next_u32(&g) % (uint32_t)E);
    }
    std::vector<float> x((size_t)N * D), nk((size_t)N * K * D);  // (N, D), (N, K, D)
    for (size_t i = 0; i < x.size(); i++) x[i] = (float)(r * 100000 + (int)i);
    for (size_t i = 0; i < nk.size(); i++) nk[i] = -(float)(r * 100000 + (int)i);
    ASSERT_EQ(dev->n_local, host->n_local) << what;
    const int L = host->n_local;
    std::vector<int> ch(L), cd(L);
    int nh = 0, nd = 0;
    int *didx = to_dev(idx);
    MoeDispatchPlan *ph = host->plan(host, idx.data(), N, K, &nh, ch.data());
    MoeDispatchPlan *pd = dev->plan(dev, didx, N, K, &nd, cd.data());
    ASSERT_EQ(nd, nh) << what;
    EXPECT_EQ(cd, ch) << what;
    const size_t nr = (size_t)nh * D;
    std::vector<float> rh(nr > 0 ? nr : 1), back(nk.size());
    float *dx = to_dev(x), *dnk = to_dev(nk), *drows = to_dev(rh), *dback = to_dev(back);
    host->to_experts(host, ph, x.data(), 0, rh.data(), D);
    if (dev->to_experts_start) {
        dev->to_experts_start(dev, pd, dx, 0, drows, D);
        dev->finish(dev, pd);
    } else {
        dev->to_experts(dev, pd, dx, 0, drows, D);
    }
    EXPECT_EQ(bits_differ(to_host(drows, rh.size()), rh), 0u) << what << ": dispatch by token";
    host->to_experts(host, ph, nk.data(), 1, rh.data(), D);
    dev->to_experts(dev, pd, dnk, 1, drows, D);
    EXPECT_EQ(bits_differ(to_host(drows, rh.size()), rh), 0u) << what << ": dispatch by choice";
    // The rows just dispatched by choice come home: the round trip is the identity.
    host->from_experts(host, ph, rh.data(), back.data(), D);
    dev->from_experts(dev, pd, drows, dback, D);
    EXPECT_EQ(bits_differ(back, nk), 0u) << what << ": host round trip";
    EXPECT_EQ(bits_differ(to_host(dback, back.size()), back), 0u) << what << ": combine";
    host->release(host, ph);
    dev->release(dev, pd);
    for (void *p : {(void *)didx, (void *)dx, (void *)dnk, (void *)drows, (void *)dback})
        gpu()->free(p);
}

// EPLB on GPUs moves rows over NCCL, which needs 2 ranks or more; the tests use 8 experts.
bool eplb_world_ok() { return comm_world()->size >= 2 && 8 % comm_world()->size == 0; }

// Also at one rank: the device dispatcher's counts and rows then cross a one-rank NCCL group.
TEST(GpuEplb, DispatcherWithReplicasMatchesTheHostOne) {
    if (8 % comm_world()->size) GTEST_SKIP() << "needs 1, 2, 4 or 8 ranks";
    const int P = comm_world()->size, E = 8;
    MoeDispatcher *host = ep_dispatcher_create(comm_world(), E), *dev = ep_dispatcher_create(comm_world(), E);
    ep_dispatcher_to_device(dev, world(), gpu());
    expect_same_dispatch(host, dev, E, 1, "identity placement");
    for (int extra : {P, 2 * P}) {
        const int R = E + extra;
        // The trainer's first placement (slot p holds expert p mod E: replicas on the last ranks),
        // then a shuffled one with expert 6 on many slots.
        std::vector<int> p2l(R);
        eplb_initial_placement(p2l.data(), R, E);
        ep_dispatcher_set_placement(host, p2l.data(), R);
        ep_dispatcher_set_placement(dev, p2l.data(), R);
        expect_same_dispatch(host, dev, E, 2, extra == P ? "initial placement, P redundant" : "initial, 2P");
        for (int p = 0; p < R; p++) p2l[p] = p < E ? (3 * p + 1) % E : p % 2 ? 6 : p % E;
        ep_dispatcher_set_placement(host, p2l.data(), R);
        ep_dispatcher_set_placement(dev, p2l.data(), R);
        expect_same_dispatch(host, dev, E, 3, extra == P ? "shuffled placement, P redundant" : "shuffled, 2P");
    }
    host->destroy(host);
    dev->destroy(dev);
}

// One EPLB runtime over the world on synthetic slots (2 layers, 8 experts, R = 8 + 2P, two tensors
// of 3 and 5 floats per layer): buffers in host memory (MPI) or on this rank's GPU (its NCCL twin),
// with dispatchers of the same memory. Every float of a slot names its expert, tensor, buffer and
// element; gradients name the slot.
struct EplbSide {
    static constexpr int L = 2, E = 8;
    bool gpu_side;
    int R, n;
    std::vector<int> phy2log;
    std::vector<EplbTensor> t;
    std::vector<MoeDispatcher *> disp;
    float *state[EPLB_STATES], *grad;
    size_t floats = 0;
    EplbRuntime *rt;

    explicit EplbSide(bool on_gpu) : gpu_side(on_gpu) {
        const int P = comm_world()->size, me = comm_world()->rank;
        R = E + 2 * P;
        n = R / P;
        phy2log.resize((size_t)L * R);
        for (int l = 0; l < L; l++) eplb_initial_placement(&phy2log[(size_t)l * R], R, E);
        const size_t rows[2] = {3, 5};
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 2; k++) {
                t.push_back(EplbTensor{l, floats, rows[k]});
                floats += (size_t)n * rows[k];
            }
        std::vector<float> h[EPLB_STATES], g(floats);
        for (int k = 0; k < EPLB_STATES; k++) h[k].resize(floats);
        for (size_t i = 0; i < t.size(); i++)
            for (int s = 0; s < n; s++) {
                const int e = phy2log[(size_t)t[i].layer * R + me * n + s];
                for (size_t j = 0; j < t[i].row; j++) {
                    const size_t at = t[i].offset + s * t[i].row + j;
                    for (int k = 0; k < EPLB_STATES; k++) h[k][at] = (float)(e * 1000 + (int)i * 100 + k * 10 + (int)j);
                    g[at] = 0.1f * (float)(me * n + s) + 0.01f * (float)j + (float)i;
                }
            }
        for (int k = 0; k < EPLB_STATES; k++) state[k] = put(h[k]);
        grad = put(g);
        for (int l = 0; l < L; l++) {
            disp.push_back(ep_dispatcher_create(comm_world(), E));
            if (on_gpu) ep_dispatcher_to_device(disp.back(), world(), gpu());
        }
        EplbRuntimeSpec s = {};
        s.L = L; s.E = E; s.R = R; s.interval = 1; s.groups = s.nodes = 1; s.ep = comm_world();
        s.phy2log = phy2log.data();
        s.disp = disp.data(); s.tensor = t.data(); s.n_tensor = (int)t.size();
        for (int k = 0; k < EPLB_STATES; k++) s.state[k] = state[k];
        s.grad = grad;
        s.ops = on_gpu ? gpu() : NULL;
        s.ep_dev = on_gpu ? world() : NULL;
        rt = eplb_runtime_create(&s);
    }
    ~EplbSide() {
        eplb_runtime_free(rt);
        for (MoeDispatcher *d : disp) d->destroy(d);
        for (float *b : {state[0], state[1], state[2], grad}) {
            if (gpu_side) gpu()->free(b);
            else delete[] b;
        }
    }
    float *put(const std::vector<float> &h) {
        if (gpu_side) return to_dev(h);
        float *b = new float[h.size()];
        std::copy(h.begin(), h.end(), b);
        return b;
    }
    std::vector<float> get(const float *b) const {
        return gpu_side ? to_host(b, floats) : std::vector<float>(b, b + floats);
    }
};

// Skewed loads (L, E), different per layer and per round.
std::vector<long> eplb_load(int round) {
    std::vector<long> c((size_t)EplbSide::L * EplbSide::E);
    for (int l = 0; l < EplbSide::L; l++)
        for (int e = 0; e < EplbSide::E; e++)
            c[(size_t)l * EplbSide::E + e] = 1 + ((e * (3 + l) + 5 * round) % EplbSide::E) * ((e + round) % 3 + 1) * 7;
    return c;
}

void expect_same_sides(const EplbSide &h, const EplbSide &d, const char *when) {
    EXPECT_EQ(d.phy2log, h.phy2log) << when;
    const char *what[EPLB_STATES] = {"weights", "AdamW m", "AdamW v"};
    for (int k = 0; k < EPLB_STATES; k++)
        EXPECT_EQ(bits_differ(d.get(d.state[k]), h.get(h.state[k])), 0u) << when << ": " << what[k];
    EXPECT_EQ(bits_differ(d.get(d.grad), h.get(h.grad)), 0u) << when << ": gradients";
    // Σ g² of the duplicate slots: the slots of the last ranks at the first placement, so only some
    // ranks add anything (each into the backend's memory).
    const double sh = eplb_runtime_duplicate_sqsum(h.rt), sd = eplb_runtime_duplicate_sqsum(d.rt);
    EXPECT_GT(sh, 0.0) << when;
    EXPECT_NEAR(sd, sh, 1e-12 * sh) << when << ": duplicate sum of squares";
    for (int l = 0; l < EplbSide::L; l++)
        expect_same_dispatch(h.disp[l], d.disp[l], EplbSide::E, 10 + (uint32_t)l, when);
}

TEST(GpuEplb, RuntimeOnDeviceBuffersMatchesTheHost) {
    if (!eplb_world_ok()) GTEST_SKIP() << "needs 2, 4 or 8 ranks";
    EplbSide h(false), d(true);
    expect_same_sides(h, d, "initial placement");
    long sent = 0;
    for (int round = 0; round < 3; round++) {
        eplb_runtime_sum_replica_grads(h.rt);
        eplb_runtime_sum_replica_grads(d.rt);
        std::vector<long> load = eplb_load(round);
        ASSERT_EQ(eplb_runtime_step(h.rt, load.data(), round), 1);
        ASSERT_EQ(eplb_runtime_step(d.rt, load.data(), round), 1);
        EXPECT_EQ(d.rt->changed, h.rt->changed) << "round " << round;
        EXPECT_EQ(d.rt->sent, h.rt->sent) << "round " << round;
        sent += d.rt->sent;
        char when[32];
        std::snprintf(when, sizeof when, "after rebalance %d", round + 1);
        expect_same_sides(h, d, when);
    }
    EXPECT_GT(sent, 0) << "no slot crossed GPUs: the test would not see a bad move";
}

// Losses and gradient norms of 5 EP steps (EP = the world, fp32, a skewed router) rebalancing after
// steps 2 and 4 with P redundant slots, or without EPLB (step 5 runs on the last rebalance's placement) (gpu_run.sh's eplb stage, in one process
// per rank). ε = 1e-6: replicas add partial gradients in another order
// (tests/parallel/eplb_runtime_test.cc).
std::vector<float> eplb_train(bool eplb) {
    const LayerOps *o = gpu();
    MoeConfig c = small();
    c.ep = comm_world()->size;
    c.grad_accum = 2;
    c.adam_eps = 1e-6f;
    c.router_skew = -0.3f;
    c.steps = 5;
    if (eplb) {
        c.eplb_interval = 2;
        c.eplb_redundant = c.ep;
    }
    Grid *g = grid_create(comm_world(), 1, c.ep, c.E);
    const int dp = g->dp, dp_rank = g->dp_rank;
    PipeTrainer *p = pipe_trainer_create(&c, g, o);  // owns g; EPLB per c
    std::vector<float> out;
    for (int s = 0; s < c.steps; s++) {
        std::vector<int> tok = global_batch(c, dp * c.grad_accum, s);
        StepStats st = pipe_train_step(p, &c, s, tok.data() + (size_t)dp_rank * c.grad_accum *
                                                                 c.batch_size * (c.T + 1));
        if (eplb) {
            EXPECT_EQ(st.rebalanced, (s + 1) % 2 == 0) << "step " << s;
        }
        out.push_back(st.loss);
        out.push_back(st.grad_norm);
    }
    pipe_trainer_free(p);
    return out;
}

TEST(GpuEplbTrain, RebalancingMatchesNoEplb) {
    if (!eplb_world_ok()) GTEST_SKIP() << "needs 2, 4 or 8 ranks";
    std::vector<float> a = eplb_train(false), b = eplb_train(true);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); i++) {
        EXPECT_NEAR(b[i], a[i], TOL * std::fabs(a[i])) << "step " << i / 2 << (i % 2 ? " grad norm" : " loss");
        if (comm_world()->rank == 0 && i % 2)
            std::printf("EPLB on %d GPUs, step %zu: loss %.7f vs %.7f without, grad norm %.7f vs %.7f\n",
                        comm_world()->size, i / 2 + 1, b[i - 1], a[i - 1], b[i], a[i]);
    }
}

}  // namespace
