// Training throughput and the GEMM baselines (see bench.h).
#include "framework/bench.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "framework/backend.h"
#include "framework/core/cuda.h"
#include "framework/core/mem.h"
#include "framework/core/rng.h"
#include "framework/core/timer.h"
#include "framework/model.h"
#include "framework/optimizer.h"
#include "framework/pipe_train.h"
#include "framework/train.h"

BenchResult bench_train(const MoeConfig *c, const LayerOps *ops, int min_steps, double min_seconds) {
    BenchResult r = {0};
    backend_configure(c, 1);  // each config's own expert_gemm and gemm_streams
    // AdamW's two moments live beside the weights on the CPU: a model that cannot hold them is a
    // usage error before anything is allocated (model_create_stage), not a process the kernel kills.
    const double moments = ops->dev == CORE_CPU ? 2.0 * sizeof(float) : 0;
    Model *m = model_create_stage(c, 0, 1, 0, c->L, (ModelStateBytes){moments, moments});
    model_init_weights(m);
    model_to_device(m, ops);
    AdamW o;
    adamw_init_on(&o, &m->reg, ops, m->wlow);
    const size_t n = (size_t)c->grad_accum * c->batch_size * (c->T + 1);
    int *tok = core_alloc(n * sizeof(int));
    RngStream rng = rng_stream(c->seed, 3);
    for (size_t i = 0; i < n; i++) tok[i] = (int)(rng_next_u32(&rng) % (uint32_t)c->V);
    // One engine for every step, so that a GPU's steps run as the trainer's do: from the second
    // on as a CUDA graph (cuda_graph), whose capture is the second warm-up step.
    PipeTrainer *p = pipe_trainer_wrap(m, &o, c);
    // Warm-up: first-touch page faults, BLAS thread start, the GPU pool's first allocations.
    r.first_loss = pipe_train_step(p, c, 0, tok).loss;
    const int warm = p->graph_on ? 2 : 1;  // steps before the timed ones
    if (p->graph_on) pipe_train_step(p, c, 1, tok);
    // The timed steps are a profiler's window (tools/trace); each step ends with the loss on the
    // host, so the window holds whole steps.
    const int gpu = ops->dev != CORE_CPU;
    if (gpu) core_cuda_profiler_window(1);
    double t0 = core_now(), t = 0;
    while (r.steps < min_steps || t < min_seconds) {
        r.last_loss = pipe_train_step(p, c, warm + r.steps, tok).loss;
        r.steps++;
        t = core_now() - t0;
    }
    if (gpu) core_cuda_profiler_window(0);
    const double tokens = (double)r.steps * c->grad_accum * c->batch_size * c->T;
    r.tokens_per_s = tokens / t;
    r.gflops = r.tokens_per_s * model_train_flops_per_token(c) / 1e9;
    r.step_seconds = t / r.steps;
    r.prof_steps = 2;
    int step = warm + r.steps;
    // Profiled steps run kernel by kernel. After a graph's launches the first of them also unmaps
    // the graph's memory and grows the pool again, a cost of the switch, not of any layer: that
    // step runs unmeasured.
    if (p->graph) {
        prof_start(gpu);
        pipe_train_step(p, c, step++, tok);
        prof_stop(r.prof_ms);
        memset(r.prof_ms, 0, sizeof r.prof_ms);
    }
    prof_start(gpu);
    for (int s = 0; s < r.prof_steps; s++) pipe_train_step(p, c, step++, tok);
    prof_stop(r.prof_ms);
    for (int i = 0; i < PROF_N; i++) {
        r.prof_ms[i] /= r.prof_steps;
        r.prof_step_ms += r.prof_ms[i];
    }
    float *imb = core_alloc((size_t)c->L * sizeof(float));  // (L) max/mean per MoE layer, else 0
    model_load_imbalance(m, imb);
    int n_moe = 0;
    for (int l = 0; l < c->L; l++)
        if (imb[l] > 0) {
            r.load_mean += imb[l];
            r.load_worst = fmax(r.load_worst, imb[l]);
            n_moe++;
        }
    if (n_moe) r.load_mean /= n_moe;
    core_free(imb);
    r.params_m = (double)m->reg.total / 1e6;
    r.peak_gib = (double)ops->peak_bytes() / (1024.0 * 1024.0 * 1024.0);
    core_free(tok);
    pipe_trainer_free(p);
    adamw_free(&o);
    model_free(m);
    return r;
}

double bench_sgemm_gflops(int n, int reps) {
    float *a = core_alloc((size_t)n * n * sizeof(float));
    float *b = core_alloc((size_t)n * n * sizeof(float));
    float *c = core_alloc((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)(i % 7) * 0.1f;
        b[i] = (float)(i % 5) * 0.1f;
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = core_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t = core_now() - t0;
        if (t < best) best = t;
    }
    core_free(a);
    core_free(b);
    core_free(c);
    return 2.0 * n * (double)n * n / best / 1e9;
}

double bench_gemm_gflops(const LayerOps *ops, int n, int reps) {
    const size_t nn = (size_t)n * n;
    // Random operands: all-zero ones would flatter a GPU (less switching power, higher clocks).
    float *h = core_alloc(nn * sizeof(float));  // (n, n) on the host
    RngStream rng = rng_stream(1, 11);
    for (size_t i = 0; i < nn; i++) h[i] = (float)(rng_next_u32(&rng) % 2001) * 1e-3f - 1.0f;
    float *f = ops->alloc(nn * sizeof(float));
    ops->upload(f, h, nn * sizeof(float));
    void *a = ops->alloc(nn * ops->act_size), *b = ops->alloc(nn * ops->act_size),
         *c = ops->alloc(nn * ops->act_size);
    ops->to_act(a, f, (long)nn);
    ops->to_act(b, f, (long)nn);
    double best = 1e30;
    for (int r = -1; r < reps; r++) {  // r = -1: warm-up (cuBLAS heuristics, clocks)
        ops->sync();
        double t0 = core_now();
        ops->linear_forward(c, a, b, n, n, n);
        ops->sync();
        double t = core_now() - t0;
        if (r >= 0 && t < best) best = t;
    }
    ops->free(a);
    ops->free(b);
    ops->free(c);
    ops->free(f);
    core_free(h);
    return 2.0 * n * (double)n * n / best / 1e9;
}
