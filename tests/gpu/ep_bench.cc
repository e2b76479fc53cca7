// Expert-parallel benchmarks on GPUs, one rank per GPU under mpirun (a benchmark: it checks
// nothing; tools/gpu_run.sh's `ep_bench` stage runs it next to tools/bench_a2a.py, the PyTorch
// baseline moving the same bytes):
//   ep_bench a2a [--tokens N] [--d-model D] [--top-k K] [--experts E] [--reps R]
//       the EP dispatcher's dispatch + combine of N tokens × K choices of D bf16 values per rank,
//       EP = the world, every expert receiving the same number of rows: per direction one gather,
//       ONE exchange of rows (one NCCL send and receive per peer) and the receive permute; the
//       plan (device plan, NCCL count exchange, count download, permute map) is timed apart
//   ep_bench train --config FILE --ep E [--steps S] [--ep-overlap 0|1] [--ep-chunks C] [--zero 0|1]
//                  [--cuda-graph 0|1]
//       training tokens/s of the config (bf16 on the GPU) at its per-GPU batch, EP E, DP = world/E,
//       and the GPU memory peak; --ep-overlap 0 turns the exchanges' overlaps off, --ep-chunks C
//       splits each MoE layer's micro-batch into C token chunks, --zero 1 shards the optimizer over
//       the DP ranks, --cuda-graph 0 runs one GPU's step kernel by kernel as several processes do
//       (config keys ep_overlap, ep_chunks, zero, cuda_graph; the last as the config has it unless
//       given)
// Rank 0 prints one line of figures; times are the slowest rank's.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "framework/backend.h"
#include "framework/core/check.h"
#include "framework/core/config.h"
#include "framework/core/rng.h"
#include "framework/core/timer.h"
#include "framework/model.h"
#include "framework/optimizer.h"
#include "framework/train.h"
#include "parallel/comm.h"
#include "parallel/ep_dispatch.h"
#include "parallel/grid.h"
}

namespace {

// The value after flag `name` in argv, or def.
const char *arg(int argc, char **argv, const char *name, const char *def) {
    for (int i = 2; i + 1 < argc; i++)
        if (!std::strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

// The median over reps of the slowest rank's time.
double slowest_median(std::vector<double> t) {
    comm_allreduce(comm_world(), t.data(), t.size(), COMM_F64, COMM_MAX);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

int bench_a2a(int argc, char **argv) {
    const int N = std::atoi(arg(argc, argv, "--tokens", "16384"));
    const int D = std::atoi(arg(argc, argv, "--d-model", "1024"));
    const int K = std::atoi(arg(argc, argv, "--top-k", "6"));
    const int E = std::atoi(arg(argc, argv, "--experts", "64"));
    const int reps = std::atoi(arg(argc, argv, "--reps", "10"));
    Comm *w = comm_world();
    const LayerOps *o = backend_ops_on("cuda", grid_local_rank(w, NULL));
    Grid *g = grid_create(w, 1, w->size, E);
    grid_to_device(g, o);
    MoeDispatcher *d = ep_dispatcher_create(g->ep_comm, E);
    ep_dispatcher_to_device(d, g->ep_dev, o);

    // Pair (t, k) goes to expert (t·K + k + rank) mod E: every expert receives N·K/E rows from
    // every rank, so each rank sends the same bytes to each rank (what all_to_all_single's even
    // split moves).
    std::vector<int> idx((size_t)N * K);
    for (size_t i = 0; i < idx.size(); i++) idx[i] = (int)((i + (size_t)w->rank) % (size_t)E);
    int *didx = (int *)o->alloc(idx.size() * sizeof(int));
    o->upload(didx, idx.data(), idx.size() * sizeof(int));
    const size_t row = (size_t)D * o->act_size;
    void *x = o->alloc((size_t)N * row);           // (N, D) home rows
    void *back = o->alloc((size_t)N * K * row);    // (N, K, D) combined rows
    std::vector<int> counts((size_t)E);
    std::vector<double> t_plan, t_move;
    for (int r = -2; r < reps; r++) {  // r < 0: warm-up (NCCL connections, the memory pool)
        o->sync();
        comm_barrier(w);
        const double t0 = core_now();
        int n_rows = 0;
        MoeDispatchPlan *p = d->plan(d, didx, N, K, &n_rows, counts.data());
        void *rows = o->alloc((size_t)n_rows * row);  // (n_rows, D) at the experts
        o->sync();
        const double t1 = core_now();
        d->to_experts(d, p, x, 0, rows, D);
        d->from_experts(d, p, rows, back, D);
        o->sync();
        const double t2 = core_now();
        o->free(rows);
        d->release(d, p);
        if (r >= 0) {
            t_plan.push_back(t1 - t0);
            t_move.push_back(t2 - t1);
        }
    }
    const double plan = slowest_median(t_plan), move = slowest_median(t_move);
    // Each direction moves N·K rows out of every rank (its own share included, as NCCL's
    // all-to-all does).
    const double bytes = (double)N * K * row;
    if (w->rank == 0)
        std::printf("ep_bench a2a: %d ranks | %d tokens x %d choices x %d bf16 per rank = %.1f MB each way | "
                    "dispatch+combine %.3f ms = %.1f GB/s per rank | with the plan %.3f ms = %.1f GB/s\n",
                    w->size, N, K, D, bytes / 1e6, move * 1e3, 2 * bytes / move / 1e9,
                    (plan + move) * 1e3, 2 * bytes / (plan + move) / 1e9);
    o->free(x);
    o->free(back);
    o->free(didx);
    d->destroy(d);
    grid_free(g);
    return 0;
}

int bench_ep_train(int argc, char **argv) {
    Comm *w = comm_world();
    MoeConfig c;
    config_defaults(&c);
    config_load_file(&c, arg(argc, argv, "--config", "configs/bench.cfg"));
    c.ep = std::atoi(arg(argc, argv, "--ep", "1"));
    const int steps = std::atoi(arg(argc, argv, "--steps", "4"));
    config_set(&c, "ep_overlap", arg(argc, argv, "--ep-overlap", "1"), "command line");
    config_set(&c, "ep_chunks", arg(argc, argv, "--ep-chunks", "1"), "command line");
    config_set(&c, "zero", arg(argc, argv, "--zero", "0"), "command line");
    if (const char *graph = arg(argc, argv, "--cuda-graph", NULL)) config_set(&c, "cuda_graph", graph, "command line");
    config_validate(&c);
    Grid *g = grid_create(w, 1, c.ep, c.E);
    const int ep = g->ep, dp = g->dp, dp_rank = g->dp_rank;
    const LayerOps *o = backend_ops_on(c.device, grid_local_rank(w, NULL));
    backend_configure(&c, 1);
    PipeTrainer *p = pipe_trainer_create(&c, g, o);  // owns g
    // Each data-parallel rank its own random tokens.
    const size_t n = (size_t)c.grad_accum * c.batch_size * (c.T + 1);
    std::vector<int> tok(n);
    RngStream rng = rng_stream(c.seed, 3 + (uint32_t)dp_rank);
    for (int &t : tok) t = (int)(rng_next_u32(&rng) % (uint32_t)c.V);
    const float first = pipe_train_step(p, &c, 0, tok.data()).loss;  // warm-up
    // On one GPU the step runs as a CUDA graph (cuda_graph), captured at the second step: that
    // step warms up too, as in moelab bench (framework/bench.c), or the capture would be timed in
    // the one-GPU baseline only (more than one process runs kernel by kernel).
    const int warm = p->graph_on ? 2 : 1;
    if (p->graph_on) pipe_train_step(p, &c, 1, tok.data());
    std::vector<double> t(1);
    comm_barrier(w);
    const double t0 = core_now();
    float last = first;
    for (int s = warm; s < warm + steps; s++) last = pipe_train_step(p, &c, s, tok.data()).loss;
    t[0] = core_now() - t0;
    const double secs = slowest_median(t);
    const double tokens = (double)steps * w->size * c.grad_accum * c.batch_size * c.T;
    // The largest GPU memory peak of any rank (they differ by their shares of ZeRO-1's padding).
    double most = (double)o->peak_bytes();
    comm_allreduce(w, &most, 1, COMM_F64, COMM_MAX);
    if (w->rank == 0)
        std::printf("ep_bench train: world %d = ep %d x dp %d | ep_overlap %d, ep_chunks %d, zero %d, cuda graph %d | "
                    "per-GPU batch %d x %d | %.3f s/step | %.0f tokens/s (%.0f per GPU, %.1f TFLOP/s per GPU) | "
                    "loss %.4f -> %.4f | peak %.2f GiB\n",
                    w->size, ep, dp, c.ep_overlap, c.ep_chunks, c.zero, p->graph_on, c.batch_size, c.T, secs / steps,
                    tokens / secs,
                    tokens / secs / w->size, tokens / secs / w->size * model_train_flops_per_token(&c) / 1e12,
                    first, last, most / (1024.0 * 1024.0 * 1024.0));
    pipe_trainer_free(p);
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    int rc = 2;
    if (argc >= 2 && !std::strcmp(argv[1], "a2a")) rc = bench_a2a(argc, argv);
    else if (argc >= 2 && !std::strcmp(argv[1], "train")) rc = bench_ep_train(argc, argv);
    else std::fprintf(stderr, "usage: ep_bench a2a [--tokens N] [--d-model D] [--top-k K] [--experts E] "
                              "[--reps R] | ep_bench train --config FILE --ep E [--steps S] [--ep-overlap 0|1] "
                              "[--ep-chunks C] [--zero 0|1] [--cuda-graph 0|1]\n");
    comm_finalize();
    return rc;
}
