// The CUDA tables of ops.h (see ops_cuda.h): thin calls into the layers' *_cuda_* kernels with the
// table's dtype, stream-ordered memory (cudaMallocAsync on the one stream, so a free is never a
// device-wide wait), the few kernels the engine needs besides the layers (residual add, the MoE
// gate-weighted combine, its backward and the gates' gradient), and the GPU's single-process MoE
// dispatcher.
#include "layers/ops_cuda.h"

#include <limits.h>
#include <string.h>

#include <mutex>
#include <type_traits>
#include <vector>

#include "layers/attention_cuda.h"
#include "layers/crossentropy_cuda.h"
#include "layers/embedding_cuda.h"
#include "layers/linear_cuda.h"
#include "layers/moe_cuda.h"
#include "layers/rmsnorm_cuda.h"
#include "layers/rope_cuda.h"
#include "layers/router_cuda.h"
#include "layers/swiglu_cuda.h"

// ---------------------------------------------------------------------------------------------
// Memory: the device's default pool, used on core_cuda's stream.

static void *cu_alloc_uninit(size_t bytes) {
    if (bytes == 0) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMallocAsync(&p, bytes, core_stream());
    // Only a failed allocation is "out of memory": an error that an earlier kernel left (an illegal
    // address) also surfaces at the next call, which is often this one.
    if (e == cudaErrorMemoryAllocation)
        core_failure_error("out of GPU memory allocating %zu bytes (%.2f GiB; %s): a smaller batch_size or "
                           "seq_len needs less, and so does --recompute 1", bytes, (double)bytes / (1 << 30),
                           cudaGetErrorString(e));
    CUDA_CHECK(e);
    return p;
}
static void *cu_alloc(size_t bytes) {
    void *p = cu_alloc_uninit(bytes);
    if (p) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, core_stream()));
    return p;
}
static void cu_free(void *p) {
    if (p) CUDA_CHECK(cudaFreeAsync(p, core_stream()));
}
static void cu_zero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, core_stream()));
}
static void cu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, core_stream()));
}
// Both transfers wait: the host buffer may be reused or freed as soon as the call returns.
static void cu_upload(void *dst, const void *host, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, core_stream()));
    core_cuda_sync();
}
static void cu_download(void *host, const void *src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, core_stream()));
    core_cuda_sync();
}

// ---------------------------------------------------------------------------------------------
// Elementwise kernels; every sum in fp32 in a fixed order. A thread takes W consecutive elements
// of a row in one 16-byte access per tensor where the sizes and buffers allow (W = 8 in bf16, 4 in
// fp32), else one (W = 1): element-wide bf16 accesses reached only 40-60 % of the memory bandwidth.

struct OpsAdd {
    __device__ float operator()(float x, float y) const { return x + y; }
};

template <typename T, int W>
__global__ void add_kernel(T *out, const T *a, const T *b, long n) {
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i < n) core_zip_vec<W>(out, a, b, i, OpsAdd());
}

// The row of pair tk in a combine's rows: map[tk], or tk without a map (layers/ops.h).
__device__ __forceinline__ long pair_row(const int *map, long tk) { return map ? map[tk] : tk; }

// The float x rounded to T and back.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
    T r;
    core_st(&r, x);
    return core_ld(&r);
}

// y[t, d] = Σ_k gates[t, k] · rows[pair (t, k), d], then + add[a, t, d] for a < n_add, each sum
// rounded to T as `add` would round it; a thread per (t, W consecutive d).
template <typename T, int W>
__global__ void combine_kernel(T *y, const T *rows, const int *map, const float *gates, int N, int K, int D,
                               const T *add, int n_add) {
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i >= (long)N * D) return;
    long t = i / D, d = i % D;
    float acc[W] = {0.0f}, v[W];
    for (int k = 0; k < K; k++) {
        float g = gates[t * K + k];
        core_ld_vec<W>(v, rows + pair_row(map, t * K + k) * D + d);
#pragma unroll
        for (int j = 0; j < W; j++) acc[j] += g * v[j];
    }
    for (int a = 0; a < n_add; a++) {
        core_ld_vec<W>(v, add + (long)a * N * D + i);
#pragma unroll
        for (int j = 0; j < W; j++) acc[j] = round_to<T>(round_to<T>(acc[j]) + v[j]);
    }
    core_st_vec<W>(y + i, acc);
}

// drows[pair (t, k), d] = gates[t, k] · dy[t, d]; a thread per (t, W consecutive d), dy read once
// for the K choices.
template <typename T, int W>
__global__ void combine_backward_kernel(T *drows, const T *dy, const int *map, const float *gates, int N,
                                        int K, int D) {
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i >= (long)N * D) return;
    long t = i / D, d = i % D;
    float dyv[W], v[W];
    core_ld_vec<W>(dyv, dy + i);
    for (int k = 0; k < K; k++) {
        float g = gates[t * K + k];
#pragma unroll
        for (int j = 0; j < W; j++) v[j] = g * dyv[j];
        core_st_vec<W>(drows + pair_row(map, t * K + k) * D + d, v);
    }
}

// dgates[w] = s[pair w] / gates[w], 0 where the gate is 0 (ops.h); a thread per pair.
__global__ void gate_grad_kernel(float *dgates, const float *s, const int *map, const float *gates, long NK) {
    long w = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (w >= NK) return;
    const float g = gates[w];
    dgates[w] = g == 0.0f ? 0.0f : s[pair_row(map, w)] / g;
}

// dx[t, d] += Σ_k rows[pair (t, k), d], choices in order; a thread per (t, W consecutive d).
template <typename T, int W>
__global__ void sum_choices_kernel(T *dx, const T *rows, const int *map, int N, int K, int D) {
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i >= (long)N * D) return;
    long t = i / D, d = i % D;
    float acc[W], v[W];
    core_ld_vec<W>(acc, dx + i);
    for (int k = 0; k < K; k++) {
        core_ld_vec<W>(v, rows + pair_row(map, t * K + k) * D + d);
#pragma unroll
        for (int j = 0; j < W; j++) acc[j] += v[j];
    }
    core_st_vec<W>(dx + i, acc);
}

// The element type of a dtype known at compile time.
template <CoreDtype DT> struct Elem { typedef float T; };
template <> struct Elem<CORE_BF16> { typedef __nv_bfloat16 T; };

template <CoreDtype DT>
static void cu_add(void *out, const void *a, const void *b, long n) {
    typedef typename Elem<DT>::T T;
    if (n <= 0) return;
    const void *p[] = {out, a, b};
    CORE_VEC_LAUNCH(add_kernel, T, n, n, p, (T *)out, (const T *)a, (const T *)b, n);
}

template <CoreDtype DT>
static void cu_moe_combine(void *y, const void *rows, const int *map, const float *gates, int N, int K, int D,
                           const void *add, int n_add) {
    typedef typename Elem<DT>::T T;
    if (N == 0) return;
    const void *p[] = {y, rows, add};
    CORE_VEC_LAUNCH(combine_kernel, T, (long)N * D, D, p, (T *)y, (const T *)rows, map, gates, N, K, D,
                    (const T *)add, n_add);
}

template <CoreDtype DT>
static void cu_moe_combine_backward(void *drows, const void *dy, const int *map, const float *gates, int N,
                                    int K, int D) {
    typedef typename Elem<DT>::T T;
    if (N == 0) return;
    const void *p[] = {drows, dy};
    CORE_VEC_LAUNCH(combine_backward_kernel, T, (long)N * D, D, p, (T *)drows, (const T *)dy, map, gates, N,
                    K, D);
}

static void cu_moe_gate_grad(float *dgates, const float *s, const int *map, const float *gates, int N, int K) {
    const long NK = (long)N * K;
    if (NK == 0) return;
    gate_grad_kernel<<<core_blocks(NK, 256), 256, 0, core_stream()>>>(dgates, s, map, gates, NK);
    CUDA_CHECK_LAUNCH();
}

template <CoreDtype DT>
static void cu_moe_sum_choices(void *dx, const void *rows, const int *map, int N, int K, int D) {
    typedef typename Elem<DT>::T T;
    if (N == 0) return;
    const void *p[] = {dx, rows};
    CORE_VEC_LAUNCH(sum_choices_kernel, T, (long)N * D, D, p, (T *)dx, (const T *)rows, map, N, K, D);
}

template <CoreDtype DT>
static void cu_to_act(void *dst, const float *src, long n) { core_cuda_convert(dst, DT, src, CORE_F32, n); }
template <CoreDtype DT>
static void cu_from_act(float *dst, const void *src, long n) { core_cuda_convert(dst, CORE_F32, src, DT, n); }

// ---------------------------------------------------------------------------------------------
// The layers, in the table's dtype.

// The table's entry for a layer kernel F that takes the dtype first and then the table's arguments
// as they are: its parameter types A come from the entry it is assigned to, and must be F's own
// (a call would convert an int to a long, or a long to an int, without a word).
template <CoreDtype DT, auto F, typename... A>
static void in_dt(A... a) {
    static_assert(std::is_same<decltype(F), void (*)(CoreDtype, A...)>::value,
                  "the table entry's parameters differ from the layer kernel's");
    F(DT, a...);
}
template <CoreDtype DT>
static void cu_linear_forward(void *out, const void *inp, const void *W, int N, int IC, int OC) {
    linear_cuda_forward(DT, DT, out, inp, W, N, IC, OC);
}
template <CoreDtype DT>
static void cu_linear_forward_f32(float *out, const void *inp, const void *W, int N, int IC, int OC) {
    linear_cuda_forward(DT, CORE_F32, out, inp, W, N, IC, OC);
}
template <CoreDtype DT>
static void cu_linear_forward_grouped(void *out, const void *inp, const void *W, const OpsGroups *g, int IC,
                                      int OC) {
    linear_cuda_forward_grouped(DT, DT, out, inp, W, g->host, g->dev, g->G, IC, OC);
}
template <CoreDtype DT>
static void cu_linear_backward_input_grouped(void *dinp, const void *dout, const void *W, const OpsGroups *g,
                                             int IC, int OC, int acc) {
    linear_cuda_backward_input_grouped(DT, dinp, dout, W, g->host, g->dev, g->G, IC, OC, acc);
}
template <CoreDtype DT>
static void cu_linear_backward_weight_grouped(float *dW, const void *dout, const void *inp, const OpsGroups *g,
                                              int IC, int OC, int acc) {
    linear_cuda_backward_weight_grouped(DT, dW, dout, inp, g->host, g->dev, g->G, IC, OC, acc);
}
static size_t cu_attention_state_floats(int B, int T, int H) { return (size_t)B * H * T; }
template <CoreDtype DT>
static void cu_attention_backward_input(void *dq, void *dk, void *dv, const void *dout, const void *q,
                                        const void *k, const void *v, const void *out,
                                        const float *state, int B, int T, int H, int Hkv, int hd) {
    float *delta = (float *)cu_alloc((size_t)B * H * T * sizeof(float));  // (B, H, T) scratch
    attention_cuda_backward_input(DT, dq, dk, dv, dout, q, k, v, out, state, delta, B, T, H, Hkv, hd);
    cu_free(delta);
}

template <CoreDtype DT>
static void cu_adamw_step(float *p, const float *g, float *m, float *v, void *p_low, const AdamwSpan *s,
                          int ns, const AdamwHyper *h) {
    adamw_cuda_step(p, g, m, v, p_low, DT, s, ns, h);
}

// ---------------------------------------------------------------------------------------------
// The single-process dispatcher on the GPU: moe_cuda_plan gives each (token, choice) pair its row
// in the local dispatcher's stable order (expert, token, choice), and the permutes move the rows;
// the combine reads the expert rows in place through the same map (row_map).

// Where a plan's counts land on the host: pinned memory (a copy into pageable memory would make
// the host wait at once) and the event after the copy. The dispatcher keeps those it has made; a
// plan holds one from cu_plan to cu_plan_wait.
struct CountStage {
    int *host;  // (E), pinned
    cudaEvent_t copied;
};
struct LocalDispatch {
    std::mutex mu;  // the pipeline's F&B overlap plans from two threads
    std::vector<CountStage> idle;
};

struct MoeDispatchPlan {
    int N, K;
    int *row_of;      // (N, K) on the GPU: the expert-side row of each pair
    int *dcounts;     // (E) on the GPU: rows per expert (cu_dev_counts)
    const int *idx;   // (N, K) on the GPU: the routing, checked where the counts fall short
    int *counts;      // (E) the caller's, written by cu_plan_wait
    CountStage stage;
    bool waiting;     // between cu_plan and cu_plan_wait
};

static MoeDispatchPlan *cu_plan(MoeDispatcher *self, const int *idx, int N, int K, int *n_rows,
                                int *counts) {
    const int E = self->n_local;
    CHECK(N >= 0 && K >= 1, "GPU dispatcher: bad routing shape N = %d, K = %d", N, K);
    long n = (long)N * K;
    CHECK(n <= INT_MAX, "GPU dispatcher: %ld routed rows overflow an int", n);
    LocalDispatch *ld = (LocalDispatch *)self->impl;
    // Both written in full by the plan's kernels (row_of: every pair, a bad id's too).
    int *row_of = (int *)cu_alloc_uninit((size_t)n * sizeof(int));
    int *dcounts = (int *)cu_alloc_uninit((size_t)E * sizeof(int));
    MoeDispatchPlan *p = new MoeDispatchPlan{N, K, row_of, dcounts, idx, counts, {}, !self->device_counts_only};
    moe_cuda_plan_unchecked(p->row_of, p->dcounts, idx, N, K, E);
    *n_rows = (int)n;
    if (!p->waiting) return p;  // the counts stay on the device (moe.h's device_counts_only)
    {
        std::lock_guard<std::mutex> lock(ld->mu);
        if (ld->idle.empty()) {
            CountStage s;
            CUDA_CHECK(cudaMallocHost((void **)&s.host, (size_t)E * sizeof(int)));
            CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
            ld->idle.push_back(s);
        }
        p->stage = ld->idle.back();
        ld->idle.pop_back();
    }
    // The counts stay on the device for the expert GEMMs (cu_dev_counts) and travel to the host,
    // where cu_plan_wait waits for them: the weight gradients choose their grid from them, and the
    // copy checks the expert ids (a bad one is missing from the counts).
    CUDA_CHECK(cudaMemcpyAsync(p->stage.host, p->dcounts, (size_t)E * sizeof(int), cudaMemcpyDeviceToHost,
                               core_stream()));
    CUDA_CHECK(cudaEventRecord(p->stage.copied, core_stream()));
    return p;
}

static void cu_plan_wait(MoeDispatcher *self, MoeDispatchPlan *p) {
    CHECK(!self->device_counts_only, "GPU dispatcher: plan_wait with the counts kept on the device");
    CHECK(p->waiting, "GPU dispatcher: plan_wait twice");
    const int E = self->n_local;
    const long n = (long)p->N * p->K;
    CUDA_CHECK(cudaEventSynchronize(p->stage.copied));
    memcpy(p->counts, p->stage.host, (size_t)E * sizeof(int));
    p->waiting = false;
    {
        LocalDispatch *ld = (LocalDispatch *)self->impl;
        std::lock_guard<std::mutex> lock(ld->mu);
        ld->idle.push_back(p->stage);
    }
    long routed = 0;
    for (int e = 0; e < E; e++) routed += p->counts[e];
    if (routed != n) core_cuda_check_indices(p->idx, n, E, "moe: expert id");  // exits with the id
    CHECK(routed == n, "GPU dispatcher: %ld of %ld routed pairs planned", routed, n);
}

template <CoreDtype DT>
static void cu_to_experts(MoeDispatcher *self, MoeDispatchPlan *p, const void *src, int per_choice,
                          void *rows, int D) {
    moe_cuda_permute(DT, rows, src, per_choice, p->row_of, p->N, p->K, D);
}

template <CoreDtype DT>
static void cu_from_experts(MoeDispatcher *self, MoeDispatchPlan *p, const void *rows, void *dst, int D) {
    moe_cuda_unpermute(DT, dst, rows, p->row_of, p->N, p->K, D);
}

static const int *cu_row_map(MoeDispatcher *self, MoeDispatchPlan *p) { return p->row_of; }
static const int *cu_dev_counts(MoeDispatcher *self, MoeDispatchPlan *p) { return p->dcounts; }

static void cu_release(MoeDispatcher *self, MoeDispatchPlan *p) {
    if (!p) return;
    if (p->waiting) cu_plan_wait(self, p);  // its stage goes back to the dispatcher
    cu_free(p->row_of);
    cu_free(p->dcounts);
    delete p;
}

static void cu_destroy(MoeDispatcher *self) {
    LocalDispatch *ld = (LocalDispatch *)self->impl;
    for (CountStage &s : ld->idle) {
        CUDA_CHECK(cudaFreeHost(s.host));
        CUDA_CHECK(cudaEventDestroy(s.copied));
    }
    delete ld;
    core_free(self);
}

template <CoreDtype DT>
static MoeDispatcher *cu_local_dispatcher(int E) {
    CHECK(E >= 1, "GPU dispatcher: need at least one expert, got E = %d", E);
    MoeDispatcher *d = (MoeDispatcher *)core_alloc(sizeof *d);
    d->n_local = E;
    d->impl = new LocalDispatch;
    d->ops = layer_ops_cuda(DT);
    d->plan = cu_plan;
    d->plan_wait = cu_plan_wait;
    d->to_experts = cu_to_experts<DT>;
    d->from_experts = cu_from_experts<DT>;
    d->row_map = cu_row_map;
    d->dev_counts = cu_dev_counts;
    d->release = cu_release;
    d->destroy = cu_destroy;
    return d;
}

template <CoreDtype DT>
static void cu_gather_rows(void *dst, const void *rows, const int *pos, long n, int D) {
    CHECK(n <= INT_MAX, "gather_rows: %ld rows overflow an int", n);
    moe_cuda_unpermute(DT, dst, rows, pos, (int)n, 1, D);
}

static void cu_ep_plan(int *send_pos, int *counts, const int *idx, long n, int E, const int *log2phy,
                       const int *logcnt, int maxcnt, int me, int R) {
    int *scratch = (int *)cu_alloc((size_t)(2 * n + E) * sizeof(int));  // moe_cuda_ep_plan's
    moe_cuda_ep_plan(send_pos, counts, scratch, idx, n, E, log2phy, logcnt, maxcnt, me, R);
    cu_free(scratch);
}

// ---------------------------------------------------------------------------------------------
// The tables (filled in code: nvcc's C++17 has no designated initializers).

template <CoreDtype DT>
static void fill(LayerOps *t, const char *name) {
    t->name = name;
    t->dev = CORE_CUDA;
    t->dt = DT;
    t->act_size = core_dtype_size(DT);
    t->alloc = cu_alloc;
    t->alloc_uninit = cu_alloc_uninit;
    t->free = cu_free;
    t->zero = cu_zero;
    t->copy = cu_copy;
    t->upload = cu_upload;
    t->download = cu_download;
    t->sync = core_cuda_sync;
    t->peak_bytes = core_cuda_peak_bytes;
    t->to_act = cu_to_act<DT>;
    t->from_act = cu_from_act<DT>;
    t->add = cu_add<DT>;
    t->embedding_forward = in_dt<DT, embedding_cuda_forward>;
    t->embedding_backward_weight = in_dt<DT, embedding_cuda_backward_weight>;
    t->rmsnorm_forward = in_dt<DT, rmsnorm_cuda_forward>;
    t->rmsnorm_backward_input = in_dt<DT, rmsnorm_cuda_backward_input>;
    t->rmsnorm_backward_weight = rmsnorm_cuda_backward_weight;
    t->linear_forward = cu_linear_forward<DT>;
    t->linear_forward_f32 = cu_linear_forward_f32<DT>;
    t->linear_backward_input = in_dt<DT, linear_cuda_backward_input>;
    t->linear_backward_weight = in_dt<DT, linear_cuda_backward_weight>;
    t->linear_forward_grouped = cu_linear_forward_grouped<DT>;
    t->linear_backward_input_grouped = cu_linear_backward_input_grouped<DT>;
    t->linear_backward_weight_grouped = cu_linear_backward_weight_grouped<DT>;
    t->rope_forward = in_dt<DT, rope_cuda_forward>;
    t->rope_backward_input = in_dt<DT, rope_cuda_backward_input>;
    t->rope_copy = in_dt<DT, rope_cuda_copy>;
    t->attention_state_floats = cu_attention_state_floats;
    t->attention_forward = in_dt<DT, attention_cuda_forward>;
    t->attention_backward_input = cu_attention_backward_input<DT>;
    t->swiglu_act_forward = in_dt<DT, swiglu_cuda_act_forward>;
    t->swiglu_act_backward = in_dt<DT, swiglu_cuda_act_backward>;
    t->crossentropy_forward = in_dt<DT, crossentropy_cuda_forward>;
    t->crossentropy_backward_input = in_dt<DT, crossentropy_cuda_backward_input>;
    t->loss_mean = crossentropy_cuda_mean;
    t->router_forward = router_cuda_forward;
    t->router_backward_input = router_cuda_backward_input;
    t->balance_loss = router_cuda_balance_loss;
    t->balance_loss_backward = router_cuda_balance_loss_backward;
    t->router_bias_update = router_cuda_bias_update;
    t->moe_combine = cu_moe_combine<DT>;
    t->moe_combine_backward = cu_moe_combine_backward<DT>;
    t->moe_gate_grad = cu_moe_gate_grad;
    t->moe_sum_choices = cu_moe_sum_choices<DT>;
    t->local_dispatcher = cu_local_dispatcher<DT>;
    t->scatter_rows = in_dt<DT, moe_cuda_permute>;
    t->gather_rows = cu_gather_rows<DT>;
    t->ep_plan = cu_ep_plan;
    t->ep_recv_pos = moe_cuda_ep_recv_pos;
    t->adamw_step = cu_adamw_step<DT>;
    t->grad_sqsum = adamw_cuda_sqsum;
    t->grad_scale = adamw_cuda_scale;
}

const LayerOps *layer_ops_cuda(CoreDtype dt) {
    static LayerOps f32, bf16;
    static int ready = 0;
    core_cuda_stream();  // CHECKs that core_cuda_init ran
    if (!ready) {
        fill<CORE_F32>(&f32, "cuda fp32");
        fill<CORE_BF16>(&bf16, "cuda bf16");
        ready = 1;
    }
    CHECK(dt == CORE_F32 || dt == CORE_BF16, "layer_ops_cuda: unknown dtype %d", (int)dt);
    return dt == CORE_BF16 ? &bf16 : &f32;
}
