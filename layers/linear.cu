// Linear layer on the GPU (see linear_cuda.h): each product is one cublasGemmEx with fp32 compute.
// The grouped (per-expert) calls run, on a Hopper GPU with bf16 operands, as one CUTLASS grouped
// GEMM (gemm_sm90.cu); otherwise, or when asked, the same per-expert products run one
// cublasGemmEx each, on one side stream (the loop) or spread over a few concurrent ones (streams),
// or as one cublasGemmGroupedBatchedEx (linear_cuda_set_grouped_mode chooses, from the config key
// expert_gemm; tests/gpu/kernel_bench.cc measures every way at the bench config's expert shapes).
// cuBLAS is column-major: a row-major (r, c) matrix is its column-major (c, r) transpose, so
// out = inp · Wᵀ (row-major) is outᵀ = W · inpᵀ (column-major), and likewise for the backward.
#include "layers/linear_cuda.h"

#include "layers/gemm_sm90_cuda.h"

#include <cublas_v2.h>
#include <stdlib.h>
#include <string.h>

static cudaDataType_t cuda_type(CoreDtype dt) {
    return core_dtype_size(dt) == 2 ? CUDA_R_16BF : CUDA_R_32F;
}

// One product: C (m × n, column-major, type ct) = op(A) · op(B) + beta · C, operands of type ab.
typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k;
    const void *A, *B;
    int lda, ldb, ldc;
    float beta;
    void *C;
    cudaDataType_t ct, ab;
} Gemm;

// CUBLAS_GEMM_DEFAULT: since CUDA 11 the *_TENSOR_OP algorithm values are deprecated and act as
// the default; bf16 operands use tensor cores either way, and fp32 stays fp32 by the math mode.
static void gemm_on(const Gemm *g, cublasHandle_t h) {
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(h, g->ta, g->tb, g->m, g->n, g->k, &alpha,
                              g->A, g->ab, g->lda, g->B, g->ab, g->ldb, &g->beta, g->C, g->ct, g->ldc,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
static void gemm(const Gemm *g) { gemm_on(g, (cublasHandle_t)core_cuda_cublas()); }
static double gemm_work(const Gemm *g) { return (double)g->m * g->n * g->k; }

static void linear_check(int N, int IC, int OC) {
    CHECK(N >= 0 && IC > 0 && OC > 0, "linear: bad shape N=%d IC=%d OC=%d", N, IC, OC);
}

// outᵀ (OC × N) = W (col-major IC × OC)ᵀ · inpᵀ (IC × N)
static Gemm forward_gemm(CoreDtype dt, CoreDtype out_dt, void *out, const void *inp, const void *W,
                         int N, int IC, int OC) {
    Gemm g = {CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, W, inp, IC, IC, OC, 0.0f, out, cuda_type(out_dt),
              cuda_type(dt)};
    return g;
}
// dinpᵀ (IC × N) += W (col-major IC × OC) · doutᵀ (OC × N); = with beta 0 (dinp not read)
static Gemm backward_input_gemm(CoreDtype dt, void *dinp, const void *dout, const void *W, int N,
                                int IC, int OC, float beta) {
    Gemm g = {CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, W, dout, IC, OC, IC, beta, dinp, cuda_type(dt),
              cuda_type(dt)};
    return g;
}
// dWᵀ (IC × OC) += inpᵀ (IC × N) · dout (col-major OC × N)ᵀ; = with beta 0 (dW not read)
static Gemm backward_weight_gemm(CoreDtype dt, float *dW, const void *dout, const void *inp, int N,
                                 int IC, int OC, float beta) {
    Gemm g = {CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, inp, dout, IC, OC, IC, beta, dW, CUDA_R_32F,
              cuda_type(dt)};
    return g;
}

void linear_cuda_forward(CoreDtype dt, CoreDtype out_dt, void *out, const void *inp, const void *W,
                         int N, int IC, int OC) {
    linear_check(N, IC, OC);
    CHECK(out_dt == dt || out_dt == CORE_F32,
          "linear: output dtype %d must be the operands' (%d) or fp32", (int)out_dt, (int)dt);
    if (N == 0) return;
    Gemm g = forward_gemm(dt, out_dt, out, inp, W, N, IC, OC);
    gemm(&g);
}

void linear_cuda_backward_input(CoreDtype dt, void *dinp, const void *dout, const void *W, int N,
                                int IC, int OC, int acc) {
    linear_check(N, IC, OC);
    if (N == 0) return;
    Gemm g = backward_input_gemm(dt, dinp, dout, W, N, IC, OC, acc ? 1.0f : 0.0f);
    gemm(&g);
}

void linear_cuda_backward_weight(CoreDtype dt, float *dW, const void *dout, const void *inp, int N,
                                 int IC, int OC) {
    linear_check(N, IC, OC);
    if (N == 0) return;
    Gemm g = backward_weight_gemm(dt, dW, dout, inp, N, IC, OC, 1.0f);
    gemm(&g);
}

// ---------------------------------------------------------------------------------------------
// Per-expert products. Each expert's product is the plain one above on its row range; the mode
// decides whether those GEMMs run one cublasGemmEx each, spread over S side streams (the loop is
// S = 1), or as one cublasGemmGroupedBatchedEx call (one group of one problem per non-empty expert).

// Default cutlass, which is cuBLAS's grouped call where the Hopper kernels do not apply: measured
// on an H200 (docs/BENCHMARKS.md), cuBLAS grouped 157 ms per bench step against 241-264 ms for loop
// and streams (side-stream fork/join in the model's step).
static int g_mode = LINEAR_GROUPED_CUTLASS;
static int g_streams = LINEAR_DEFAULT_STREAMS;  // side streams of LINEAR_GROUPED_STREAMS

int linear_cuda_grouped_mode(void) { return g_mode; }

void linear_cuda_set_grouped_mode(int mode) {
    CHECK(mode >= LINEAR_GROUPED_LOOP && mode <= LINEAR_GROUPED_CUTLASS, "linear: unknown grouped mode %d", mode);
    g_mode = mode;
}

int linear_cuda_gemm_streams(void) { return g_streams; }

void linear_cuda_set_gemm_streams(int n) {
    CHECK(n >= 1 && n <= LINEAR_MAX_STREAMS, "linear: %d GEMM streams, need 1..%d", n, LINEAR_MAX_STREAMS);
    g_streams = n;
}

// The side streams, created on first use and kept for the process (like the compute stream), one
// pool per compute stream: a worker thread with a stream of its own (the pipeline's F&B overlap)
// gets its own side streams, handles and events, so two threads never share one.
// cuBLAS promises bit-identical results only per stream with its own workspace: a handle shared
// by concurrent streams may pick other kernels (its workspace is per handle). So each side
// stream has its own handle and workspace, configured alike (math mode, workspace size), so
// that an expert's GEMM picks the same kernel whichever side stream runs it. The loop (S = 1)
// runs on side stream 0 too, so loop and streams are bit-identical. 32 MiB is the workspace
// cuBLAS's documentation recommends for Hopper (4 MiB before).
enum { SIDE_WORKSPACE = 32 << 20 };
typedef struct {
    cudaStream_t stream;
    cublasHandle_t cublas;
    cudaEvent_t done;  // recorded on this stream after its last GEMM of a call
} SideStream;
typedef struct {
    SideStream side[LINEAR_MAX_STREAMS];
    int n;              // side streams created so far
    cudaEvent_t fork;   // recorded on the compute stream before a call's GEMMs
} SidePool;

// The calling thread's compute stream's pool, with at least S side streams.
static SidePool *side_streams_init(int S) {
    SidePool **slot = (SidePool **)core_cuda_stream_state();
    if (!*slot) {
        *slot = (SidePool *)core_alloc(sizeof(SidePool));  // zeroed
        CUDA_CHECK(cudaEventCreateWithFlags(&(*slot)->fork, cudaEventDisableTiming));
    }
    SidePool *p = *slot;
    for (; p->n < S; p->n++) {
        SideStream *s = &p->side[p->n];
        void *ws = NULL;
        CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
        CUDA_CHECK(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming));
        CUDA_CHECK(cudaMalloc(&ws, SIDE_WORKSPACE));
        CUBLAS_CHECK(cublasCreate(&s->cublas));
        // cublasSetStream resets the workspace to cuBLAS's own pool: the stream first.
        CUBLAS_CHECK(cublasSetStream(s->cublas, s->stream));
        CUBLAS_CHECK(cublasSetWorkspace(s->cublas, ws, SIDE_WORKSPACE));
        CUBLAS_CHECK(cublasSetMathMode(s->cublas, CUBLAS_DEFAULT_MATH));  // as the compute handle
    }
    return p;
}

// Runs the n products of gs one cublasGemmEx each on S side streams: forked from the compute
// stream by one event, joined back by one event per stream before returning, so everything after
// the call on the compute stream (and whatever orders itself after that stream, like the NCCL
// backend) sees the results. Products go largest first (by m·n·k), each to the stream with the
// least work so far (round-robin for equal sizes); the products write disjoint outputs
// (run_groups says why), so neither the order nor the stream changes a bit of the results.
static void gemm_streams(const Gemm *gs, int n, int S) {
    if (S > n) S = n;
    SidePool *p = side_streams_init(S);
    int *order = (int *)core_alloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) order[i] = i;
    // Insertion sort by size, descending, ties by index: n is the expert count (tens).
    for (int i = 1; i < n; i++) {
        int o = order[i], j = i;
        for (; j > 0 && gemm_work(&gs[order[j - 1]]) < gemm_work(&gs[o]); j--) order[j] = order[j - 1];
        order[j] = o;
    }
    double load[LINEAR_MAX_STREAMS] = {0};
    CUDA_CHECK(cudaEventRecord(p->fork, core_stream()));
    for (int s = 0; s < S; s++) CUDA_CHECK(cudaStreamWaitEvent(p->side[s].stream, p->fork, 0));
    for (int i = 0; i < n; i++) {
        const Gemm *g = &gs[order[i]];
        int s = 0;
        for (int t = 1; t < S; t++)
            if (load[t] < load[s]) s = t;
        load[s] += gemm_work(g);
        gemm_on(g, p->side[s].cublas);
    }
    for (int s = 0; s < S; s++) {
        CUDA_CHECK(cudaEventRecord(p->side[s].done, p->side[s].stream));
        CUDA_CHECK(cudaStreamWaitEvent(core_stream(), p->side[s].done, 0));
    }
    core_free(order);
}

// cuBLAS refuses operand/output type pairs its grouped GEMM lacks (its documentation lists bf16
// operands with a bf16 C only, so the fp32 weight gradient of bf16 operands may be one): such a
// pair falls back to streams, remembered here per [operands][C]. gpu_test checks that the pairs
// of the table (C of the operands' dtype) never fall back, so a bad argument cannot hide here.
static int g_unsupported[2][2];

int linear_cuda_grouped_unsupported(CoreDtype dt, CoreDtype c_dt) { return g_unsupported[dt][c_dt]; }

int linear_cuda_cutlass_applies(CoreDtype dt, CoreDtype out_dt, int IC, int OC) {
    return dt == CORE_BF16 && out_dt == CORE_BF16 && gemm_sm90_available() && gemm_sm90_shapes_ok(IC, OC);
}

// Device pointer arrays travel as kernel arguments: no host buffer whose lifetime would tie the
// host to the stream, and no synchronizing copy from pageable memory.
enum { PTR_BLOCK = 256 };
struct PtrBlock {
    const void *p[PTR_BLOCK];
};
__global__ void store_ptrs_kernel(const void **dst, PtrBlock b, int n) {
    if ((int)threadIdx.x < n) dst[threadIdx.x] = b.p[threadIdx.x];
}

// Runs the n products of gs (same transposes, beta and types) as one grouped GEMM; 0 when cuBLAS
// does not support the types (nothing ran).
static int gemm_grouped(const Gemm *gs, int n, CoreDtype dt, CoreDtype c_dt) {
    if (g_unsupported[dt][c_dt]) return 0;
    // Host arrays of the group-level arguments (one group of one problem per product).
    int *ints = (int *)core_alloc((size_t)7 * n * sizeof(int));
    int *m = ints, *nn = m + n, *k = nn + n, *lda = k + n, *ldb = lda + n, *ldc = ldb + n, *one = ldc + n;
    float *scal = (float *)core_alloc((size_t)2 * n * sizeof(float));  // alpha (n), beta (n)
    cublasOperation_t *ops = (cublasOperation_t *)core_alloc((size_t)2 * n * sizeof(cublasOperation_t));
    const void **ptrs = (const void **)core_alloc((size_t)3 * n * sizeof(void *));  // A, B, C
    for (int i = 0; i < n; i++) {
        m[i] = gs[i].m, nn[i] = gs[i].n, k[i] = gs[i].k;
        lda[i] = gs[i].lda, ldb[i] = gs[i].ldb, ldc[i] = gs[i].ldc, one[i] = 1;
        scal[i] = 1.0f, scal[n + i] = gs[i].beta;
        ops[i] = gs[i].ta, ops[n + i] = gs[i].tb;
        ptrs[i] = gs[i].A, ptrs[n + i] = gs[i].B, ptrs[2 * n + i] = gs[i].C;
    }
    const void **dptrs = NULL;  // (3n) on the GPU
    CUDA_CHECK(cudaMallocAsync((void **)&dptrs, (size_t)3 * n * sizeof(void *), core_stream()));
    for (int i = 0; i < 3 * n; i += PTR_BLOCK) {
        PtrBlock b;
        int c = 3 * n - i < PTR_BLOCK ? 3 * n - i : PTR_BLOCK;
        memcpy(b.p, ptrs + i, (size_t)c * sizeof(void *));
        store_ptrs_kernel<<<1, PTR_BLOCK, 0, core_stream()>>>(dptrs + i, b, c);
        CUDA_CHECK_LAUNCH();
    }
    cublasStatus_t s = cublasGemmGroupedBatchedEx(
        (cublasHandle_t)core_cuda_cublas(), ops, ops + n, m, nn, k, scal, dptrs, gs[0].ab, lda,
        dptrs + n, gs[0].ab, ldb, scal + n, (void *const *)(dptrs + 2 * n), gs[0].ct, ldc, n, one,
        CUBLAS_COMPUTE_32F);
    CUDA_CHECK(cudaFreeAsync(dptrs, core_stream()));
    core_free(ints);
    core_free(scal);
    core_free(ops);
    core_free(ptrs);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE) {
        g_unsupported[dt][c_dt] = 1;
        return 0;
    }
    CUBLAS_CHECK(s);
    return 1;
}

// The product of expert e on its rows (row0 its first, rows > 0) for each of the three kinds.
typedef enum { GROUP_FORWARD, GROUP_BACKWARD_INPUT, GROUP_BACKWARD_WEIGHT } GroupKind;

typedef struct {
    GroupKind kind;
    CoreDtype dt, out_dt;
    void *y;            // out (forward), dinp (backward_input) or dW (backward_weight)
    const void *a, *b;  // inp, W (forward); dout, W (backward_input); dout, inp (weight)
    int IC, OC;
    float beta;         // backward_*: 1 adds to dinp or dW, 0 writes it unread (the forward ignores it)
} GroupArgs;

static const char *at(const void *p, size_t elems, CoreDtype dt) {
    return (const char *)p + elems * core_dtype_size(dt);
}

static Gemm group_gemm(const GroupArgs *g, int e, int rows, size_t row0) {
    const size_t w = (size_t)e * g->OC * g->IC;  // expert e's weight matrix
    switch (g->kind) {
    case GROUP_FORWARD:
        return forward_gemm(g->dt, g->out_dt, (void *)at(g->y, row0 * g->OC, g->out_dt),
                            at(g->a, row0 * g->IC, g->dt), at(g->b, w, g->dt), rows, g->IC, g->OC);
    case GROUP_BACKWARD_INPUT:
        return backward_input_gemm(g->dt, (void *)at(g->y, row0 * g->IC, g->dt),
                                   at(g->a, row0 * g->OC, g->dt), at(g->b, w, g->dt), rows, g->IC, g->OC,
                                   g->beta);
    default:
        return backward_weight_gemm(g->dt, (float *)g->y + w, at(g->a, row0 * g->OC, g->dt),
                                    at(g->b, row0 * g->IC, g->dt), rows, g->IC, g->OC, g->beta);
    }
}

// dW[e] (OC·IC floats each) = 0 for each expert e without rows: a weight gradient written (β = 0)
// skips the groups without rows. One launch for up to ZERO_MAX of them instead of a memset each (a
// bench step had 126 of them, each a launch and the gap after it). With the counts on the host the
// launch lists the empty experts (z); with counts on the device only (dcounts, the host has no
// list) it has a block row per expert, and those with rows return at once.
#define ZERO_MAX 256
typedef struct {
    int e[ZERO_MAX];
    int n;
} ZeroList;
__global__ void zero_experts_kernel(float *dw, long block, const __grid_constant__ ZeroList z, const int *dcounts) {
    const int e = dcounts ? (int)blockIdx.y : z.e[blockIdx.y];
    if (dcounts && dcounts[e] != 0) return;
    float *y = dw + (size_t)e * block;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < block; i += (long)gridDim.x * blockDim.x)
        y[i] = 0.0f;
}
static void zero_launch(float *dw, long block, const ZeroList *z, const int *dcounts, int rows) {
    const long blocks = (block + 255) / 256;
    zero_experts_kernel<<<dim3((unsigned)(blocks < 64 ? blocks : 64), (unsigned)rows), 256, 0, core_stream()>>>(
        dw, block, *z, dcounts);
    CUDA_CHECK_LAUNCH();
}
static void zero_empty_experts(float *dw, const int *counts, const int *dcounts, int G, long block) {
    ZeroList z;
    z.n = 0;
    if (!counts) {
        zero_launch(dw, block, &z, dcounts, G);
        return;
    }
    for (int e = 0; e < G; e++) {
        if (counts[e] == 0) z.e[z.n++] = e;
        if (z.n && (z.n == ZERO_MAX || e == G - 1)) {
            zero_launch(dw, block, &z, NULL, z.n);
            z.n = 0;
        }
    }
}

// Why the experts' products may run concurrently and stay bit-identical to the loop: product e
// reads its own operand rows and weights and writes only its own output, which no other product
// touches: the forward its out rows [o_e, o_e + counts[e]), backward_input its dinp rows (β = 1
// adds to that range only), backward_weight its dW[e] (β = 1 adds to that matrix only; every
// expert has its own). So no two products race, and each is the same cublasGemmEx on an alike
// configured handle whichever stream runs it.
static void run_groups(const GroupArgs *g, const int *counts, const int *dcounts, int G) {
    CHECK(G >= 1, "linear: need at least one group, got G = %d", G);
    CHECK(counts || dcounts, "linear: grouped product without counts");
    linear_check(0, g->IC, g->OC);
    int mode = linear_cuda_grouped_mode();
    // The weight gradient of a single group (a shared expert: every token of the micro-batch) is one
    // product with a long K, which CUTLASS's grouped kernel, never splitting K, runs on one CTA per
    // output tile: 16 to 32 of 132 at the bench shapes, 110 TFLOP/s measured inside a bench step
    // (ncu). cuBLAS splits K for it. Only with the count on the host: one routed expert's count
    // (n_experts = 1) is on the device only under a CUDA graph, whose capture a host read would
    // break (review, 2026-12-05).
    if (mode == LINEAR_GROUPED_CUTLASS && g->kind == GROUP_BACKWARD_WEIGHT && G == 1 && counts)
        mode = LINEAR_GROUPED_LOOP;
    // The weight gradient is always fp32: what decides is the dtype of its operands.
    const CoreDtype out_dt = g->kind == GROUP_BACKWARD_WEIGHT ? g->dt : g->out_dt;
    if (mode == LINEAR_GROUPED_CUTLASS && !linear_cuda_cutlass_applies(g->dt, out_dt, g->IC, g->OC))
        mode = LINEAR_GROUPED_CUBLAS;
    const GemmSm90Kind kind = g->kind == GROUP_FORWARD          ? GEMM_SM90_FORWARD
                              : g->kind == GROUP_BACKWARD_INPUT ? GEMM_SM90_BACKWARD_INPUT
                                                                : GEMM_SM90_BACKWARD_WEIGHT;
    // A weight gradient written (β = 0) is written for every group: the products skip groups
    // without rows, whose gradient is zero.
    const int zero_empty = g->kind == GROUP_BACKWARD_WEIGHT && g->beta == 0.0f;
    if (mode == LINEAR_GROUPED_CUTLASS && !counts && gemm_sm90_device_counts_ok(kind, G)) {
        if (zero_empty) zero_empty_experts((float *)g->y, NULL, dcounts, G, (long)g->OC * g->IC);
        gemm_sm90_grouped(kind, g->y, g->a, g->b, NULL, dcounts, G, g->IC, g->OC, g->beta != 0.0f);
        return;
    }
    // Every other path reads the counts on the host.
    int *fetched = NULL;
    if (!counts) {
        fetched = (int *)core_alloc((size_t)G * sizeof(int));
        CUDA_CHECK(cudaMemcpyAsync(fetched, dcounts, (size_t)G * sizeof(int), cudaMemcpyDeviceToHost, core_stream()));
        CUDA_CHECK(cudaStreamSynchronize(core_stream()));
        counts = fetched;
    }
    if (zero_empty) zero_empty_experts((float *)g->y, counts, NULL, G, (long)g->OC * g->IC);
    if (mode == LINEAR_GROUPED_CUTLASS) {
        gemm_sm90_grouped(kind, g->y, g->a, g->b, counts, NULL, G, g->IC, g->OC, g->beta != 0.0f);
    } else {
        Gemm *gs = (Gemm *)core_alloc((size_t)G * sizeof(Gemm));
        int n = 0;
        size_t row0 = 0;
        for (int e = 0; e < G; e++) {
            CHECK(counts[e] >= 0, "linear: group %d has %d rows", e, counts[e]);
            if (counts[e] > 0) gs[n++] = group_gemm(g, e, counts[e], row0);
            row0 += (size_t)counts[e];
        }
        const CoreDtype c_dt = g->kind == GROUP_BACKWARD_WEIGHT ? CORE_F32 : g->out_dt;
        if (n > 0 && !(mode == LINEAR_GROUPED_CUBLAS && gemm_grouped(gs, n, g->dt, c_dt)))
            gemm_streams(gs, n, mode == LINEAR_GROUPED_LOOP ? 1 : linear_cuda_gemm_streams());
        core_free(gs);
    }
    core_free(fetched);
}

void linear_cuda_forward_grouped(CoreDtype dt, CoreDtype out_dt, void *out, const void *inp, const void *W,
                                 const int *counts, const int *dcounts, int G, int IC, int OC) {
    CHECK(out_dt == dt || out_dt == CORE_F32,
          "linear: output dtype %d must be the operands' (%d) or fp32", (int)out_dt, (int)dt);
    GroupArgs g = {GROUP_FORWARD, dt, out_dt, out, inp, W, IC, OC, 0.0f};
    run_groups(&g, counts, dcounts, G);
}

void linear_cuda_backward_input_grouped(CoreDtype dt, void *dinp, const void *dout, const void *W,
                                        const int *counts, const int *dcounts, int G, int IC, int OC, int acc) {
    GroupArgs g = {GROUP_BACKWARD_INPUT, dt, dt, dinp, dout, W, IC, OC, acc ? 1.0f : 0.0f};
    run_groups(&g, counts, dcounts, G);
}

void linear_cuda_backward_weight_grouped(CoreDtype dt, float *dW, const void *dout, const void *inp,
                                         const int *counts, const int *dcounts, int G, int IC, int OC, int acc) {
    GroupArgs g = {GROUP_BACKWARD_WEIGHT, dt, CORE_F32, dW, dout, inp, IC, OC, acc ? 1.0f : 0.0f};
    run_groups(&g, counts, dcounts, G);
}
