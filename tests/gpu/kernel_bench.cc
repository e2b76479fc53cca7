// Times each CUDA kernel of layers/*.cu at the shapes of configs/bench.cfg (B 8, T 2048, D 1024,
// H 16, Hkv 4, V 32768, E 64, K 6, Fe 512, bf16) and prints one table: median time per call and
// the rate it implies (GB/s moved for memory-bound kernels, TFLOP/s for the GEMMs and attention),
// next to a device-to-device copy and a bf16 GEMM measured in the same run, and the expert GEMMs
// every way (one cuBLAS call per expert on 1, 2, 4 or 8 streams, one cuBLAS grouped GEMM, the
// CUTLASS Hopper grouped GEMM with its tile order forced each way and the weight gradient's grid;
// uniform, jittered and skewed counts, also at bench_wide.cfg's shapes),
// the attention's q, k, v projections as three products and as one stacked product, and the
// attention itself every way (cuDNN's backward also as one call instead of two halves on two
// streams, and without determinism; these rows time calls queued back to back, as the "10 queued"
// GEMM rows do; and inside a CUDA graph). A benchmark, not a test: it checks nothing. Runs on the
// GPU machine (tools/gpu_run.sh).
//   usage: kernel_bench [qkv] [experts] [attention]   (only those of the long sections; all by
//          default; the short rows always run)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "framework/core/cuda.h"
#include "layers/adamw_cuda.h"
#include "layers/attention_cuda.h"
#include "layers/attention_cudnn_cuda.h"
#include "layers/crossentropy_cuda.h"
#include "layers/embedding_cuda.h"
#include "layers/gemm_sm90_cuda.h"
#include "layers/linear_cuda.h"
#include "layers/moe_cuda.h"
#include "layers/ops_cuda.h"
#include "layers/rmsnorm.h"
#include "layers/rmsnorm_cuda.h"
#include "layers/rope.h"
#include "layers/rope_cuda.h"
#include "layers/router_cuda.h"
#include "layers/swiglu_cuda.h"
}

namespace {

const int B = 8, T = 2048, N = B * T, D = 1024, H = 16, Hkv = 4, hd = 64, V = 32768, E = 64,
          K = 6, Fe = 512;
const CoreDtype BF = CORE_BF16;

// The device memory calls of the backend table (alloc zero-fills; upload and download wait).
const LayerOps *dev() { return layer_ops_cuda(CORE_F32); }

// n random fp32 values in [-a, a) on the GPU, converted to dtype dt (never zeros: see METHOD.md).
void *dev_rand(size_t n, CoreDtype dt, float a = 1.0f) {
    std::mt19937 gen((uint32_t)n);
    std::uniform_real_distribution<float> u(-a, a);
    std::vector<float> h(n);
    for (auto &x : h) x = u(gen);
    void *f = dev()->alloc(n * 4);
    dev()->upload(f, h.data(), n * 4);
    if (dt == CORE_F32) return f;
    void *b = dev()->alloc(n * 2);
    core_cuda_convert(b, dt, f, CORE_F32, (long)n);
    dev()->free(f);
    return b;
}
int *dev_ints(size_t n, int limit) {
    std::mt19937 gen(7);
    std::vector<int> h(n);
    for (auto &x : h) x = (int)(gen() % (uint32_t)limit);
    int *d = (int *)dev()->alloc(n * 4);
    dev()->upload(d, h.data(), n * 4);
    return d;
}

// Median seconds of one call over 10 timed calls after 2 warm-up calls, from CUDA events recorded
// on the stream around each call (as tools/bench_torch_kernels.py times PyTorch): the time from the
// call's first queued work to its last, host launch gaps included.
double time_it(const std::function<void()> &fn) {
    for (int i = 0; i < 2; i++) fn();
    core_cuda_sync();
    void *a = core_cuda_event_create(), *b = core_cuda_event_create();
    std::vector<double> t;
    for (int i = 0; i < 10; i++) {
        core_cuda_event_record(a);
        fn();
        core_cuda_event_record(b);
        t.push_back(core_cuda_event_ms(a, b) * 1e-3);
    }
    core_cuda_event_destroy(a);
    core_cuda_event_destroy(b);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// Seconds per call of 10 calls queued back to back between two events (after 2 warm-up calls):
// the host's per-call work hides behind the GPU's as it does inside a training step.
double time_queued(const std::function<void()> &fn) {
    for (int i = 0; i < 2; i++) fn();
    core_cuda_sync();
    void *a = core_cuda_event_create(), *b = core_cuda_event_create();
    core_cuda_event_record(a);
    for (int i = 0; i < 10; i++) fn();
    core_cuda_event_record(b);
    double t = core_cuda_event_ms(a, b) * 1e-3 / 10;
    core_cuda_event_destroy(a);
    core_cuda_event_destroy(b);
    return t;
}

// Seconds per call of 10 calls captured into one CUDA graph, the graph launched once to warm up
// (its first launch maps the memory it allocates) and once between two events: no host work
// between the kernels at all, as the trainer's one-GPU step runs them. As many timed calls as
// time_queued's, not more: a card slows the longer it runs a heavy kernel (an H100 runs the hd 128
// attention backward 6-9 % slower after 200 ms of it: tools/trace, docs/BENCHMARKS.md 2026-12-05
// 19:44), so a graph row timed over ten times the queued row's calls, as until 2026-12-05,
// counted the card's state as the graph's cost.
double time_graph(const std::function<void()> &fn) {
    fn();  // a library's first-call set-up stays out of the capture
    core_cuda_graph_begin();
    for (int i = 0; i < 10; i++) fn();
    void *graph = core_cuda_graph_end();
    core_cuda_graph_launch(graph);
    core_cuda_sync();
    void *a = core_cuda_event_create(), *b = core_cuda_event_create();
    core_cuda_event_record(a);
    core_cuda_graph_launch(graph);
    core_cuda_event_record(b);
    double t = core_cuda_event_ms(a, b) * 1e-3 / 10;
    core_cuda_event_destroy(a);
    core_cuda_event_destroy(b);
    core_cuda_graph_free(graph);
    return t;
}

void row(const char *name, double s, double bytes, double flops) {
    printf("%-34s %9.3f ms", name, s * 1e3);
    if (bytes > 0) printf("  %8.1f GB/s", bytes / s / 1e9);
    if (flops > 0) printf("  %8.1f TFLOP/s", flops / s / 1e12);
    printf("\n");
}

// How R rows spread over the experts in the benchmark: evenly (whole tiles when R / nE is a multiple
// of 128, as at both bench shapes), jittered (weights 1 + 0.3 sin(2.7 e + 1): within 30 % of even
// and no expert a whole number of tiles, as a router that balances its load routes them), or
// skewed (Zipf weights 1/(e+1) over the first nE - 4 experts, the last 4 empty).
enum Spread { UNIFORM, JITTERED, SKEWED };
const char *spread_name(Spread s) { return s == UNIFORM ? "uniform" : s == JITTERED ? "jittered" : "skewed"; }

// The counts of R rows over nE experts by the spread's weights, the remainder to expert 0.
// tools/bench_torch_kernels.py makes the same counts for PyTorch's grouped GEMM.
std::vector<int> expert_counts(int R, int nE, Spread s) {
    std::vector<int> c(nE, 0);
    std::vector<double> w(nE, 0.0);
    const int live = s == SKEWED ? nE - 4 : nE;
    double wsum = 0;
    for (int e = 0; e < live; e++)
        wsum += w[e] = s == SKEWED ? 1.0 / (e + 1) : s == JITTERED ? 1.0 + 0.3 * std::sin(2.7 * e + 1.0) : 1.0;
    int sum = 0;
    for (int e = 0; e < live; e++) sum += c[e] = (int)(R * w[e] / wsum);
    c[0] += R - sum;
    return c;
}

// The expert products of the up projection (nD -> nF, w1 or w3) for R rows over nE experts,
// each spread of the counts, every way they run: one cuBLAS call per expert on one stream (loop),
// on 2, 4 and 8 concurrent streams, one cuBLAS grouped GEMM, and the CUTLASS Hopper grouped GEMM
// (where it applies). Each row gives ms and TFLOP/s per way, and the loop's time over the best one's.
void expert_gemms(int R, int nE, int nD, int nF) {
    void *xe = dev_rand((size_t)R * nD, BF), *he = dev_rand((size_t)R * nF, BF),
         *we = dev_rand((size_t)nE * nF * nD, BF, 0.03f), *dxe = dev_rand((size_t)R * nD, BF);
    float *dwe = (float *)dev_rand((size_t)nE * nF * nD, CORE_F32);
    const double flops = 2.0 * R * nD * nF;
    const int saved = linear_cuda_grouped_mode(), saved_streams = linear_cuda_gemm_streams();
    struct Way {
        const char *name;
        int mode, streams;
    };
    std::vector<Way> ways = {{"loop", LINEAR_GROUPED_LOOP, 1},
                             {"streams 2", LINEAR_GROUPED_STREAMS, 2},
                             {"streams 4", LINEAR_GROUPED_STREAMS, 4},
                             {"streams 8", LINEAR_GROUPED_STREAMS, 8},
                             {"grouped", LINEAR_GROUPED_CUBLAS, saved_streams}};
    if (linear_cuda_cutlass_applies(BF, BF, nD, nF)) ways.push_back({"cutlass", LINEAR_GROUPED_CUTLASS, saved_streams});
    for (Spread spread : {UNIFORM, JITTERED, SKEWED}) {
        std::vector<int> c = expert_counts(R, nE, spread);
        int *dcounts = (int *)dev()->alloc(c.size() * sizeof(int));
        dev()->upload(dcounts, c.data(), c.size() * sizeof(int));
        printf("expert GEMMs, %d rows over %d experts, D %d Fe %d (%s, largest %d): ms and TFLOP/s per way, loop/best\n",
               R, nE, nD, nF, spread_name(spread), *std::max_element(c.begin(), c.end()));
        // The backward products both ways the SwiGLU backward calls them: backward_input written
        // (β = 0, the first of the W1/W3 pair) and added (β = 1, the second); the weight gradient
        // added (a second micro-batch) and written (the first after model_zero_grad).
        const char *names[5] = {"  forward D->Fe", "  backward_input (=)", "  backward_input (+=)",
                                "  backward_weight (fp32 dW +=)", "  backward_weight (fp32 dW =)"};
        auto product = [&](int kind) {
            if (kind == 0) linear_cuda_forward_grouped(BF, BF, he, xe, we, c.data(), nullptr, nE, nD, nF);
            if (kind == 1 || kind == 2)
                linear_cuda_backward_input_grouped(BF, dxe, he, we, c.data(), nullptr, nE, nD, nF, kind == 2);
            if (kind >= 3) linear_cuda_backward_weight_grouped(BF, dwe, he, xe, c.data(), nullptr, nE, nD, nF, kind == 3);
        };
        for (int kind = 0; kind < 5; kind++) {
            printf("%-28s", names[kind]);
            double loop = 0, best = 1e30;
            for (size_t w = 0; w < ways.size(); w++) {
                linear_cuda_set_grouped_mode(ways[w].mode);
                linear_cuda_set_gemm_streams(ways[w].streams);
                double t = time_it([&] { product(kind); });
                if (w == 0) loop = t;
                best = std::min(best, t);
                printf(" | %s %.3f ms %5.1f", ways[w].name, t * 1e3, flops / t / 1e12);
            }
            if (linear_cuda_cutlass_applies(BF, BF, nD, nF)) {
                linear_cuda_set_grouped_mode(LINEAR_GROUPED_CUTLASS);
                double t = time_queued([&] { product(kind); });
                printf(" | cutlass best, 10 queued %.3f ms %5.1f", t * 1e3, flops / t / 1e12);
            }
            if (linear_cuda_cutlass_applies(BF, BF, nD, nF)) {
                // The order of the tiles forced each way (cutlass best runs the chosen one).
                printf("\n%-28s", "    tile order (10 queued)");
                for (int r : {GEMM_SM90_RASTER_M, GEMM_SM90_RASTER_N}) {
                    gemm_sm90_set_raster(r);
                    double t = time_queued([&] { product(kind); });
                    printf(" | along %c %.3f ms %5.1f", r == GEMM_SM90_RASTER_M ? 'M' : 'N', t * 1e3, flops / t / 1e12);
                }
                gemm_sm90_set_raster(GEMM_SM90_RASTER_BEST);
                // The tiles paired along M whatever the counts (best pairs them along N where
                // that pads fewer tiles: gemm_sm90.cu's cluster_along_n).
                gemm_sm90_set_pairs(GEMM_SM90_PAIRS_M);
                double tm = time_queued([&] { product(kind); });
                printf(" | pairs along M %.3f ms %5.1f", tm * 1e3, flops / tm / 1e12);
                gemm_sm90_set_pairs(GEMM_SM90_PAIRS_BEST);
                if (kind == 4) {
                    // The weight gradient's grid: CTAs per multiprocessor forced, and chosen from
                    // the counts (what the model runs kernel by kernel); then sized from the
                    // counts on the device (what a CUDA graph of the step runs: ping-pong tiles on
                    // a fixed grid, the empty experts zeroed from the device counts).
                    printf("\n%-28s", "    grid (10 queued)");
                    for (int f : {1, 2, 3, 4, 0}) {
                        gemm_sm90_set_grid_factor(f);
                        double t = time_queued([&] { product(kind); });
                        if (f) printf(" | x%d %.3f ms %5.1f", f, t * 1e3, flops / t / 1e12);
                        else printf(" | chosen %.3f ms %5.1f", t * 1e3, flops / t / 1e12);
                    }
                    gemm_sm90_set_grid_factor(0);
                    if (gemm_sm90_device_counts_ok(GEMM_SM90_BACKWARD_WEIGHT, nE)) {
                        double t = time_queued([&] {
                            linear_cuda_backward_weight_grouped(BF, dwe, he, xe, nullptr, dcounts, nE, nD, nF, 0);
                        });
                        printf(" | device counts %.3f ms %5.1f", t * 1e3, flops / t / 1e12);
                    }
                }
                printf("\n%-28s", "");
            }
            const int fell_back = linear_cuda_grouped_unsupported(BF, kind >= 3 ? CORE_F32 : BF);
            printf(" | loop/best %.2fx%s\n", loop / best,
                   fell_back ? "  (cuBLAS grouped: types not supported, ran as streams)" : "");
        }
        dev()->free(dcounts);
    }
    linear_cuda_set_grouped_mode(saved);
    linear_cuda_set_gemm_streams(saved_streams);
    for (void *p : {xe, he, we, dxe, (void *)dwe}) dev()->free(p);
}

// What W1 and W3 as one product saves (layers/swiglu.h): the SwiGLU's up projection as two
// products of width nF per group (forward twice, backward_input written then added,
// backward_weight twice: the layers before w13) against the one product of width 2·nF over
// [W1; W3] that they run now (each way once, written), each timed 10 queued. Routed: nE groups of the grouped GEMM, uniform counts over R
// rows. Dense: `parts` products of width nF over R rows against one of width parts·nF (the shared
// experts as one SwiGLU: parts = 2·S; the dense FFN: parts = 2).
void w13_products(const char *what, int R, int nE, int nD, int nF, int parts) {
    const bool routed = nE > 0;
    const int P = routed ? 2 : parts, G = routed ? nE : 1;
    void *x = dev_rand((size_t)R * nD, BF), *dx = dev_rand((size_t)R * nD, BF),
         *h = dev_rand((size_t)R * P * nF, BF), *w = dev_rand((size_t)G * P * nF * nD, BF, 0.03f);
    float *dw = (float *)dev_rand((size_t)G * P * nF * nD, CORE_F32);
    const std::vector<int> c = expert_counts(R, G, UNIFORM);
    const size_t hs = (size_t)R * nF * 2, ws = (size_t)G * nF * nD * 2;  // bytes of one part
    auto at = [](void *p, size_t bytes) { return (void *)((char *)p + bytes); };
    // kind 0 forward, 1 backward_input, 2 backward_weight; width nF at part j, or P·nF (j = -1)
    auto product = [&](int kind, int j, int acc) {
        const int F = j < 0 ? P * nF : nF;
        void *hj = j < 0 ? h : at(h, j * hs), *wj = j < 0 ? w : at(w, j * ws);
        float *dwj = j < 0 ? dw : (float *)at(dw, j * ws * 2);
        if (routed) {
            if (kind == 0) linear_cuda_forward_grouped(BF, BF, hj, x, wj, c.data(), nullptr, G, nD, F);
            if (kind == 1) linear_cuda_backward_input_grouped(BF, dx, hj, wj, c.data(), nullptr, G, nD, F, acc);
            if (kind == 2) linear_cuda_backward_weight_grouped(BF, dwj, hj, x, c.data(), nullptr, G, nD, F, 0);
        } else {
            if (kind == 0) linear_cuda_forward(BF, BF, hj, x, wj, R, nD, F);
            if (kind == 1) linear_cuda_backward_input(BF, dx, hj, wj, R, nD, F, acc);
            if (kind == 2) linear_cuda_backward_weight(BF, dwj, hj, x, R, nD, F);
        }
    };
    printf("%s: %d rows, D %d -> %d x %d (%s)\n", what, R, nD, P, nF,
           routed ? "grouped over the experts, uniform counts" : "dense");
    const char *names[3] = {"forward", "backward_input", "backward_weight"};
    double sum_p = 0, sum_1 = 0;
    for (int kind = 0; kind < 3; kind++) {
        const double tp = time_queued([&] {
            for (int j = 0; j < P; j++) product(kind, j, j > 0);
        });
        const double t1 = time_queued([&] { product(kind, -1, 0); });
        const double flops = 2.0 * R * nD * nF * P;
        printf("  %-16s %d products %.3f ms %5.1f TFLOP/s | one product %.3f ms %5.1f TFLOP/s | saves %.3f ms\n",
               names[kind], P, tp * 1e3, flops / tp / 1e12, t1 * 1e3, flops / t1 / 1e12, (tp - t1) * 1e3);
        sum_p += tp, sum_1 += t1;
    }
    printf("  %-16s %d products %.3f ms | one product %.3f ms | saves %.3f ms a layer (%.1f %%)\n", "all three", P,
           sum_p * 1e3, sum_1 * 1e3, (sum_p - sum_1) * 1e3, 100 * (sum_p - sum_1) / sum_p);
    for (void *p : {x, dx, h, w, (void *)dw}) dev()->free(p);
}

// The attention's q, k and v projections of nN rows (sequences of nT; nD -> qd = nH·nhd and
// kd = nHkv·nhd) each way, as three products (k and v with kd outputs, backward_input adding two of
// them into da) and as the engine runs them, one product over the stacked Wqkv (qd + 2·kd, nD);
// then RoPE reading q out of the stacked rows into the head-major layout attention reads and
// rope_copy taking v the same way (attn_forward), and RoPE's backward writing dq back into rows.
void qkv_products(int nN, int nT, int nD, int nH, int nHkv, int nhd) {
    const int qd = nH * nhd, kd = nHkv * nhd, nW = qd + 2 * kd;
    const size_t es = core_dtype_size(BF);
    void *a = dev_rand((size_t)nN * nD, BF), *da = dev_rand((size_t)nN * nD, BF);
    void *w = dev_rand((size_t)nW * nD, BF, 0.03f), *y = dev_rand((size_t)nN * nW, BF);
    float *dw = (float *)dev_rand((size_t)nW * nD, CORE_F32);
    char *wk = (char *)w + (size_t)qd * nD * es, *wv = wk + (size_t)kd * nD * es;
    float *dwk = dw + (size_t)qd * nD, *dwv = dwk + (size_t)kd * nD;
    // The three products' outputs packed one after another (their own contiguous buffers).
    char *yk = (char *)y + (size_t)nN * qd * es, *yv = yk + (size_t)nN * kd * es;
    const double flops = 2.0 * nN * nD * nW;
    char name[64];
    printf("q, k, v projections: %d rows, D %d -> %d + 2 x %d\n", nN, nD, qd, kd);
    row("  forward, three products", time_it([&] {
            linear_cuda_forward(BF, BF, y, a, w, nN, nD, qd);
            linear_cuda_forward(BF, BF, yk, a, wk, nN, nD, kd);
            linear_cuda_forward(BF, BF, yv, a, wv, nN, nD, kd);
        }), 0, flops);
    row("  forward, one stacked product", time_it([&] { linear_cuda_forward(BF, BF, y, a, w, nN, nD, nW); }),
        0, flops);
    row("  backward_input, three products", time_it([&] {
            linear_cuda_backward_input(BF, da, y, w, nN, nD, qd, 0);
            linear_cuda_backward_input(BF, da, yk, wk, nN, nD, kd, 1);
            linear_cuda_backward_input(BF, da, yv, wv, nN, nD, kd, 1);
        }), 0, flops);
    row("  backward_input, one stacked product", time_it([&] {
            linear_cuda_backward_input(BF, da, y, w, nN, nD, nW, 0);
        }), 0, flops);
    row("  backward_weight, three products", time_it([&] {
            linear_cuda_backward_weight(BF, dw, y, a, nN, nD, qd);
            linear_cuda_backward_weight(BF, dwk, yk, a, nN, nD, kd);
            linear_cuda_backward_weight(BF, dwv, yv, a, nN, nD, kd);
        }), 0, flops);
    row("  backward_weight, one stacked product", time_it([&] {
            linear_cuda_backward_weight(BF, dw, y, a, nN, nD, nW);
        }), 0, flops);
    void *q = dev_rand((size_t)nN * qd, BF), *v = dev_rand((size_t)nN * kd, BF);
    snprintf(name, sizeof name, "  rope forward (q: %d-wide rows to heads)", nW);
    row(name, time_it([&] { rope_cuda_forward(BF, q, ROPE_HEADS, y, nW, nN, nT, nH, nhd, 10000.0f); }),
        2 * 2.0 * nN * qd, 0);
    row("  rope backward (dq: heads to the rows)", time_it([&] {
            rope_cuda_backward_input(BF, y, nW, q, ROPE_HEADS, nN, nT, nH, nhd, 10000.0f);
        }), 2 * 2.0 * nN * qd, 0);
    const LayerOps *ops = layer_ops_cuda(BF);
    row("  rope_copy (v: rows to heads)", time_it([&] {
            ops->rope_copy(v, ROPE_HEADS, (char *)y + (size_t)(qd + kd) * es, nW, nN, nT, nHkv, nhd);
        }), 2 * 2.0 * nN * kd, 0);
    printf("\n");
    for (void *p : {a, da, w, y, (void *)dw, q, v}) dev()->free(p);
}

// The long sections named on the command line, or all of them.
const char *const kSections[] = {"qkv", "experts", "attention"};
std::vector<std::string> g_sections;
bool want(const char *section) {
    return g_sections.empty() ||
           std::find(g_sections.begin(), g_sections.end(), section) != g_sections.end();
}

}  // namespace

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        const bool known = std::find(std::begin(kSections), std::end(kSections), a) != std::end(kSections);
        if (!known) {
            const char *usage = "usage: kernel_bench [qkv] [experts] [attention]\n"
                                "  times every kernel; only the named long sections among these (all by default)\n";
            if (a == "--help" || a == "-h") {
                fputs(usage, stdout);
                return 0;
            }
            fprintf(stderr, "kernel_bench: unknown section '%s'\n%s", a.c_str(), usage);
            return 2;
        }
        g_sections.push_back(a);
    }
    core_cuda_init(0);
    printf("shapes: B %d T %d D %d H %d Hkv %d hd %d V %d E %d K %d Fe %d, bf16 activations\n\n",
           B, T, D, H, Hkv, hd, V, E, K, Fe);
    const double nd = (double)N * D;

    // The two ceilings, measured in this run.
    size_t big = (size_t)1 << 30;
    void *src = dev()->alloc(big), *dst = dev()->alloc(big);
    core_cuda_memset(src, 1, big);
    row("copy 1 GiB device to device", time_it([&] {
            dev()->copy(dst, src, big);
        }), 2.0 * big, 0);
    dev()->free(src);
    dev()->free(dst);
    void *a = dev_rand((size_t)8192 * 8192, BF), *b = dev_rand((size_t)8192 * 8192, BF),
         *c = dev_rand((size_t)8192 * 8192, BF);
    row("bf16 GEMM 8192^3 (cuBLAS)", time_it([&] {
            linear_cuda_forward(BF, BF, c, a, b, 8192, 8192, 8192);
        }), 0, 2.0 * 8192 * 8192 * 8192);
    dev()->free(a);
    dev()->free(b);
    dev()->free(c);
    printf("\n");

    void *x = dev_rand((size_t)N * D, BF), *y = dev_rand((size_t)N * D, BF),
         *dy = dev_rand((size_t)N * D, BF), *g = dev_rand(D, BF);
    float *rstd = (float *)dev_rand(N, CORE_F32), *dg = (float *)dev_rand(D, CORE_F32);
    const size_t nparts = rmsnorm_partial_floats(N, D);
    float *part = (float *)dev_rand(nparts, CORE_F32);
    row("rmsnorm forward", time_it([&] { rmsnorm_cuda_forward(BF, y, rstd, x, g, N, D, 1e-5f); }),
        2 * 2 * nd, 0);
    // In place as in the engine (dinp holds the residual gradient): reads x, dy and dinp, writes
    // dinp and the fp32 partial sums.
    row("rmsnorm backward_input, in place", time_it([&] {
            rmsnorm_cuda_backward_input(BF, y, part, y, dy, x, g, rstd, N, D);
        }), 4 * 2 * nd + 4.0 * nparts, 0);
    row("rmsnorm backward_weight (partials)", time_it([&] {
            rmsnorm_cuda_backward_weight(dg, part, N, D);
        }), 4.0 * nparts + 2 * 4.0 * D, 0);
    row("rope forward (q)", time_it([&] {
            rope_cuda_forward(BF, y, D, x, D, N, T, H, hd, 10000.0f);
        }), 2 * 2 * nd, 0);

    void *W = dev_rand((size_t)D * D, BF, 0.03f);
    float *dW = (float *)dev_rand((size_t)D * D, CORE_F32);
    row("linear forward 16384x1024x1024", time_it([&] {
            linear_cuda_forward(BF, BF, y, x, W, N, D, D);
        }), 0, 2.0 * N * D * D);
    row("linear backward_input", time_it([&] {
            linear_cuda_backward_input(BF, y, dy, W, N, D, D, 1);
        }), 0, 2.0 * N * D * D);
    row("linear backward_weight (fp32 dW)", time_it([&] {
            linear_cuda_backward_weight(BF, dW, dy, x, N, D, D);
        }), 0, 2.0 * N * D * D);

    // The attention's projections at the bench config's shapes and at bench_wide.cfg's (4 × 4096
    // tokens, D 2048, 16 heads of 128, 4 key/value heads).
    printf("\n");
    if (want("qkv")) {
        qkv_products(N, T, D, H, Hkv, hd);
        qkv_products(4 * 4096, 4096, 2048, 16, 4, 128);
    }

    // Experts: N·K rows over E experts, D -> Fe; the products of the up projection (w1 or w3)
    // every way (expert_gemms), at the bench config's shapes and at bench_wide.cfg's (4 × 4096
    // tokens, K 6, 32 experts, D 2048, Fe 1408).
    int R = N * K;
    if (want("experts")) {
        expert_gemms(R, E, D, Fe);
        expert_gemms(4 * 4096 * 6, 32, 2048, 1408);
    }
    printf("\n");
    w13_products("W1 and W3, routed experts, bench", R, E, D, Fe, 2);
    w13_products("W1 and W3, shared experts, bench", N, 0, D, Fe, 2 * 2);
    w13_products("W1 and W3, dense FFN, bench", N, 0, D, 2816, 2);
    w13_products("W1 and W3, routed experts, wide", 4 * 4096 * 6, 32, 2048, 1408, 2);
    w13_products("W1 and W3, shared experts, wide", 4 * 4096, 0, 2048, 1408, 2 * 2);
    w13_products("W1 and W3, dense FFN, wide", 4 * 4096, 0, 2048, 5632, 2);
    printf("\n");
    void *xe = dev_rand((size_t)R * D, BF), *ab = dev_rand((size_t)R * 2 * Fe, BF);
    void *hh = dev_rand((size_t)R * Fe, BF), *dab = dev_rand((size_t)R * 2 * Fe, BF);
    float *dots = (float *)dev_rand(R, CORE_F32);
    row("swiglu gate forward (N·K, Fe)", time_it([&] {
            swiglu_cuda_act_forward(BF, hh, ab, R, Fe);
        }), 3 * 2.0 * R * Fe, 0);
    row("swiglu gate backward, row dots", time_it([&] {
            swiglu_cuda_act_backward(BF, dab, dots, hh, ab, R, Fe);
        }), 6 * 2.0 * R * Fe + 4.0 * R, 0);  // reads dh, a, b; writes da, db, h over dh and the dots

    float *logits = (float *)dev_rand((size_t)N * E, CORE_F32), *scores, *gates;
    scores = (float *)dev()->alloc((size_t)N * E * 4);
    gates = (float *)dev()->alloc((size_t)N * K * 4);
    int *idx = (int *)dev()->alloc((size_t)N * K * 4);
    int *row_of = (int *)dev()->alloc((size_t)N * K * 4);
    int *cnt = (int *)dev()->alloc(E * 4);
    RouterCfg rc = {E, K, 0, 1, 2.5f};
    row("router forward (N, 64), top-6", time_it([&] {
            router_cuda_forward(scores, idx, gates, logits, NULL, &rc, N, NULL);
        }), 2 * 4.0 * N * E, 0);
    long *ecount = (long *)dev()->alloc(12 * E * sizeof(long));  // (12 layers, E)
    row("router forward, counting (training)", time_it([&] {
            router_cuda_forward(scores, idx, gates, logits, NULL, &rc, N, ecount);
        }), 2 * 4.0 * N * E, 0);
    float *bal = (float *)dev()->alloc(sizeof(float));
    row("router balance loss (B sequences)", time_it([&] {
            router_cuda_balance_loss(bal, scores, idx, B, T, E, K);
        }), 4.0 * N * E, 0);
    float *dscores = (float *)dev_rand((size_t)N * E, CORE_F32);
    row("router balance loss backward", time_it([&] {
            router_cuda_balance_loss_backward(dscores, 1e-4f, scores, idx, B, T, E, K);
        }), 3 * 4.0 * N * E, 0);
    float *biases = (float *)dev_rand(12 * E, CORE_F32);
    float *bias_of[12];
    for (int l = 0; l < 12; l++) bias_of[l] = biases + l * E;
    row("router bias update (12 layers)", time_it([&] {
            router_cuda_bias_update(bias_of, ecount, 12, E, K, N, 1e-3f);
        }), 0, 0);
    row("moe plan (incl. index check)", time_it([&] {
            moe_cuda_plan(row_of, cnt, idx, N, K, E);
        }), 0, 0);
    row("moe permute (N·K rows of D)", time_it([&] {
            moe_cuda_permute(BF, xe, x, 0, row_of, N, K, D);
        }), 2 * 2.0 * R * D, 0);
    row("moe combine (N·K rows of D, in place)", time_it([&] {
            layer_ops_cuda(BF)->moe_combine(y, xe, row_of, gates, N, K, D, NULL, 0);
        }), 2.0 * R * D + 2 * nd, 0);

    // Attention: causal, so half of the T×T score matrix; forward 2 GEMM-like products. Model
    // FLOPs: forward 2·2·B·H·T²·hd / 2, backward 2.5 times that. Every path at the bench config's
    // shapes: cuDNN's fused attention (what the trainer runs where libcudnn.so.9 loads), the
    // tensor-core kernels (its fallback) and the CUDA-core ones; then cuDNN and the tensor-core
    // kernels at the two shapes of the attention targets (docs/gpu.md): hd 64 and hd 128. Timed
    // 10 queued: a cuDNN call works on the host before its kernel starts (the variant pack, the
    // plan's launch), which a lone call between two events counts and a training step hides
    // behind the kernels queued before it. cuDNN's calls also inside a CUDA graph, as the trainer's
    // one-GPU step runs them, and its backward also with its default algorithm (dQ added with
    // atomics, not deterministic): what the trainer's deterministic one costs.
    auto attention_rows = [&](int ab, int at, int ah, int ahkv, int ahd, bool cuda_cores) {
        size_t nq = (size_t)ab * at * ah * ahd, nk = (size_t)ab * at * ahkv * ahd;
        void *q = dev_rand(nq, BF), *k = dev_rand(nk, BF), *v = dev_rand(nk, BF),
             *o = dev_rand(nq, BF), *dq = dev_rand(nq, BF), *dk = dev_rand(nk, BF),
             *dv = dev_rand(nk, BF), *dout = dev_rand(nq, BF);
        float *lse = (float *)dev()->alloc((size_t)ab * ah * at * 4);
        float *delta = (float *)dev()->alloc((size_t)ab * ah * at * 4);
        double flops = 4.0 * ab * ah * (double)at * at * ahd / 2;
        printf("attention B %d T %d H %d Hkv %d hd %d:\n", ab, at, ah, ahkv, ahd);
        struct Path {
            AttentionCudaPath path;
            const char *name;
        };
        std::vector<Path> paths;
        if (attention_cuda_cudnn_applies(BF, ab, at, ah, ahkv, ahd))
            paths.push_back({ATTENTION_CUDA_CUDNN, "cuDNN"});
        else
            printf("  (cuDNN does not run this shape here: see the log above)\n");
        paths.push_back({ATTENTION_CUDA_TENSOR_CORES, "tensor cores"});
        if (cuda_cores) paths.push_back({ATTENTION_CUDA_CUDA_CORES, "CUDA cores"});
        for (const Path &p : paths) {
            attention_cuda_set_path(p.path);
            char name[64];
            snprintf(name, sizeof name, "  forward (%s)", p.name);
            row(name, time_queued([&] {
                    attention_cuda_forward(BF, o, lse, q, k, v, ab, at, ah, ahkv, ahd);
                }), 0, flops);
            auto backward = [&] {
                attention_cuda_backward_input(BF, dq, dk, dv, dout, q, k, v, o, lse, delta, ab, at,
                                              ah, ahkv, ahd);
            };
            snprintf(name, sizeof name, "  backward (%s)", p.name);
            row(name, time_queued(backward), 0, 2.5 * flops);
            if (p.path == ATTENTION_CUDA_CUDNN) {
                row("  forward (cuDNN, CUDA graph)", time_graph([&] {
                        attention_cuda_forward(BF, o, lse, q, k, v, ab, at, ah, ahkv, ahd);
                    }), 0, flops);
                row("  backward (cuDNN, CUDA graph)", time_graph(backward), 0, 2.5 * flops);
                attention_cudnn_set_streams(1);
                row("  backward (cuDNN, one call)", time_queued(backward), 0, 2.5 * flops);
                attention_cudnn_set_deterministic(0);
                row("  backward (cuDNN, one call, atomics)", time_queued(backward), 0, 2.5 * flops);
                attention_cudnn_set_streams(2);
                row("  backward (cuDNN, with atomics)", time_queued(backward), 0, 2.5 * flops);
                row("  backward (cuDNN, atomics, graph)", time_graph(backward), 0, 2.5 * flops);
                attention_cudnn_set_deterministic(1);
            }
        }
        attention_cuda_set_path(ATTENTION_CUDA_AUTO);
        for (void *p : {q, k, v, o, dq, dk, dv, dout, (void *)lse, (void *)delta})
            dev()->free(p);
    };
    if (want("attention")) {
        attention_rows(B, T, H, Hkv, hd, true);
        attention_rows(4, 4096, 16, 4, 128, false);
    }

    void *lg = dev_rand((size_t)N * V, BF, 4.0f), *dlg = dev_rand((size_t)N * V, BF, 1e-3f);
    int *tg = dev_ints(N, V), *tok = dev_ints(N, V);
    float *loss = (float *)dev()->alloc(N * 4);
    float *lse2 = (float *)dev()->alloc(N * 4);
    row("crossentropy forward (N, V)", time_it([&] {
            crossentropy_cuda_forward(BF, loss, lse2, lg, tg, N, V);
        }), 2.0 * N * V, 0);
    row("crossentropy backward", time_it([&] {
            crossentropy_cuda_backward_input(BF, dlg, lg, lse2, tg, 1.0f / N, N, V);
        }), 2 * 2.0 * N * V, 0);  // each logit read once, its gradient written once
    row("crossentropy backward, in place", time_it([&] {  // the model's way (values garbage)
            crossentropy_cuda_backward_input(BF, dlg, dlg, lse2, tg, 1.0f / N, N, V);
        }), 2 * 2.0 * N * V, 0);
    float *mean = (float *)dev()->alloc(4);
    row("loss mean (N)", time_it([&] { crossentropy_cuda_mean(mean, loss, N); }), 4.0 * N, 0);
    void *table = dev_rand((size_t)V * D, BF);
    float *dtable = (float *)dev_rand((size_t)V * D, CORE_F32);
    row("embedding forward", time_it([&] {
            embedding_cuda_forward(BF, y, tok, table, N, V, D);
        }), 2 * 2 * nd, 0);
    row("embedding backward_weight", time_it([&] {
            embedding_cuda_backward_weight(BF, dtable, dy, tok, N, V, D);
        }), 2 * nd + 8 * nd, 0);

    long np = 100000000;
    float *p = (float *)dev_rand(np, CORE_F32), *pg = (float *)dev_rand(np, CORE_F32, 0.01f);
    float *m = (float *)dev()->alloc(np * 4);
    float *vv = (float *)dev()->alloc(np * 4);
    void *plow = dev()->alloc(np * 2);
    AdamwHyper hy = {3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 1.0f};
    const AdamwSpan all = {0, 0, np, 1};
    row("adamw step (1e8 params, bf16 copy)", time_it([&] {
            adamw_cuda_step(p, pg, m, vv, plow, BF, &all, 1, &hy);
        }), (4 * 4 + 3 * 4 + 2) * (double)np, 0);
    double *sq = (double *)dev()->alloc(sizeof(double));
    row("grad square sum (1e8)", time_it([&] { adamw_cuda_sqsum(sq, pg, &all, 1); }), 4.0 * np, 0);
    return 0;
}
