// Top-k router on the GPU (see router_cuda.h). Forward, in one kernel with a warp per token at a
// time: scores, then K rounds of a warp-wide arg-max over score + bias in which equal keys go to
// the lower expert id (the tie rule of router.c), then the gates and, in training, the expert
// counts. The keys live in shared memory, so E is bounded only by it.
#include "layers/router_cuda.h"

#define WARPS 4            // warps per block
#define COUNT_TOKENS 8     // tokens per warp, one after another, of a forward that counts (below)

// The better of two (key, id) candidates: the larger key, and on equal keys the lower id.
__device__ __forceinline__ bool router_better(float k1, int i1, float k2, int i2) {
    return k1 > k2 || (k1 == k2 && i1 < i2);
}

// Token t's scores, experts and gates, by one warp; key (E) is the warp's shared scratch, and
// hist (E, shared), unless NULL, counts the chosen experts.
__device__ void route_token(float *scores, int *idx, float *gates, unsigned *hist, const float *logits,
                            const float *bias, float *key, int t, int E, int K, int softmax, int norm_topk,
                            float route_scale) {
    const int lane = threadIdx.x % 32;
    const float *l = logits + (size_t)t * E;
    float *s = scores + (size_t)t * E;
    // Scores; softmax subtracts the row max so that expf stays finite.
    float mx = -INFINITY;
    if (softmax)
        for (int i = lane; i < E; i += 32) mx = fmaxf(mx, l[i]);
    mx = core_warp_max(mx);
    float sum = 0.0f;
    __syncwarp();  // the previous token's last reads of key are done
    for (int i = lane; i < E; i += 32) {
        float e = softmax ? expf(l[i] - mx) : 1.0f / (1.0f + expf(-l[i]));
        key[i] = e;
        sum += e;
    }
    float total = softmax ? core_warp_sum(sum) : 1.0f;
    for (int i = lane; i < E; i += 32) {
        float si = softmax ? key[i] / total : key[i];
        s[i] = si;
        float ki = si + (bias ? bias[i] : 0.0f);
        key[i] = isnan(ki) ? -INFINITY : ki;  // a NaN key would never win, and K must be chosen
    }
    __syncwarp();
    // K rounds of arg-max; each lane scans its experts in increasing id, so a strict > keeps the
    // lowest id among its equal keys, and router_better keeps it across lanes. Every untaken key
    // beats the start candidate (−inf, E), and a taken key, set to NaN, beats nothing.
    int *id = idx + (size_t)t * K;
    float *g = gates + (size_t)t * K;
    float z = 0.0f;
    for (int k = 0; k < K; k++) {
        float bk = -INFINITY;
        int bi = E;
        for (int i = lane; i < E; i += 32)
            if (router_better(key[i], i, bk, bi)) {
                bk = key[i];
                bi = i;
            }
        for (int o = 16; o > 0; o >>= 1) {
            float ok = __shfl_xor_sync(0xffffffffu, bk, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (router_better(ok, oi, bk, bi)) {
                bk = ok;
                bi = oi;
            }
        }
        __syncwarp();
        if (lane == 0) {
            id[k] = bi;
            key[bi] = NAN;
            if (hist) atomicAdd(&hist[bi], 1u);
        }
        __syncwarp();
        z += s[bi];
    }
    // Gates in choice order, z summed in that order as on the CPU.
    float scale = norm_topk ? route_scale / z : route_scale;
    for (int k = lane; k < K; k += 32) g[k] = s[id[k]] * scale;
}

// Each warp routes tpw consecutive tokens. The expert counts of training (counts, or NULL) gather
// in the block's shared histogram first, so that one global atomic per expert and block adds them.
// At the bench shapes (N 16 384, E 64, K 6; kernel_bench, H200, 2026-12-04) atomics straight from
// every choice took the kernel from 0.026 to 0.042 ms; blocks of 4 × 8 tokens count in 0.034–0.035,
// about what routing and the separate counting pass this replaces took together (0.024 + 0.008 to
// 0.026 + 0.011), with one launch and one read of the ids fewer. A forward that does not count
// keeps a token per warp (tpw 1), whose more warps hide the loads better (0.025 ms; 0.034 at
// tpw 8). Counts are integers: exact, in any order.
__global__ void router_forward_kernel(float *scores, int *idx, float *gates, unsigned long long *counts,
                                      const float *logits, const float *bias, int N, int tpw, int E, int K,
                                      int softmax, int norm_topk, float route_scale) {
    extern __shared__ float smem[];  // keys (WARPS, E), then the histogram (E)
    const int w = threadIdx.x / 32;
    unsigned *hist = counts ? (unsigned *)(smem + (size_t)WARPS * E) : NULL;
    if (hist) {
        for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
        __syncthreads();
    }
    const int t0 = (blockIdx.x * WARPS + w) * tpw, t1 = min(t0 + tpw, N);
    for (int t = t0; t < t1; t++)
        route_token(scores, idx, gates, hist, logits, bias, smem + (size_t)w * E, t, E, K, softmax, norm_topk,
                    route_scale);
    if (hist) {
        __syncthreads();
        for (int e = threadIdx.x; e < E; e += blockDim.x)
            if (hist[e]) atomicAdd(&counts[e], (unsigned long long)hist[e]);
    }
}

// One warp per token: ds (E) = dscores + the gate terms, then back through sigmoid or softmax.
__global__ void router_backward_kernel(float *dlogits, const float *dgates, const float *dscores,
                                       const float *scores, const int *idx, int N, int E, int K,
                                       int softmax, int norm_topk, float route_scale) {
    extern __shared__ float ds_smem[];  // (WARPS, E)
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    int t = blockIdx.x * WARPS + w;
    if (t >= N) return;
    float *ds = ds_smem + (size_t)w * E;
    const float *s = scores + (size_t)t * E;
    const int *id = idx + (size_t)t * K;
    const float *dg = dgates + (size_t)t * K;
    for (int i = lane; i < E; i += 32) ds[i] = dscores ? dscores[(size_t)t * E + i] : 0.0f;
    __syncwarp();
    // g_k = rs · s_k / z (z ≡ 1 without norm_topk): ∂L/∂s_k = rs · (dg_k / z − Σ_j dg_j s_j / z²).
    // Lane 0 alone, in choice order: K is small and the sums then match the CPU's order.
    if (lane == 0) {
        float z = 1.0f, dot = 0.0f;
        if (norm_topk) {
            z = 0.0f;
            for (int k = 0; k < K; k++) {
                z += s[id[k]];
                dot += dg[k] * s[id[k]];
            }
        }
        for (int k = 0; k < K; k++)
            ds[id[k]] += route_scale * (dg[k] / z - (norm_topk ? dot / (z * z) : 0.0f));
    }
    __syncwarp();
    float *dl = dlogits + (size_t)t * E;
    if (!softmax) {
        for (int i = lane; i < E; i += 32) dl[i] += ds[i] * s[i] * (1.0f - s[i]);
        return;
    }
    float sds = 0.0f;
    for (int i = lane; i < E; i += 32) sds += ds[i] * s[i];
    sds = core_warp_sum(sds);
    for (int i = lane; i < E; i += 32) dl[i] += s[i] * (ds[i] - sds);
}

int router_cuda_max_experts(void) { return 48 * 1024 / (int)((WARPS + 1) * sizeof(float)); }

// The checks of a forward or backward call of N tokens, and its kernel's shared memory (the keys,
// and the forward's histogram).
static size_t router_smem(const RouterCfg *c, int N) {
    router_check_cfg(c);
    size_t bytes = (size_t)(WARPS + 1) * c->E * sizeof(float);
    CHECK(c->E <= router_cuda_max_experts(), "router: E = %d experts exceed the kernel's shared memory", c->E);
    CHECK(N >= 0, "router: bad token count %d", N);
    return bytes;
}

void router_cuda_forward(float *scores, int *idx, float *gates, const float *logits,
                         const float *bias, const RouterCfg *c, int N, long *counts) {
    size_t smem = router_smem(c, N);
    if (N == 0) return;
    static_assert(sizeof(long) == sizeof(unsigned long long), "counts are 64-bit");
    const int tpw = counts ? COUNT_TOKENS : 1;
    router_forward_kernel<<<core_blocks(N, WARPS * tpw), WARPS * 32, smem, core_stream()>>>(
        scores, idx, gates, (unsigned long long *)counts, logits, bias, N, tpw, c->E, c->K, c->softmax,
        c->norm_topk, c->route_scale);
    CUDA_CHECK_LAUNCH();
}

void router_cuda_backward_input(float *dlogits, const float *dgates, const float *dscores,
                                const float *scores, const int *idx, const RouterCfg *c, int N) {
    size_t smem = router_smem(c, N);
    if (N == 0) return;
    router_backward_kernel<<<core_blocks(N, WARPS), WARPS * 32, smem, core_stream()>>>(
        dlogits, dgates, dscores, scores, idx, N, c->E, c->K, c->softmax, c->norm_topk,
        c->route_scale);
    CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------------------------------------
// Sequence balance loss. f_i = E/(K·T) · #{t : i chosen for t} of each sequence is counted first
// (a block per sequence, integer atomics in shared memory: exact in any order); then a warp per
// token row reads its E scores coalesced, and blocks of BAL_ROWS rows split each sequence, so the
// whole GPU works on it (a block per sequence left 8 blocks on 132 SMs: 0.25 ms per backward).
// Sums run in a fixed order: warp shuffles, then the block's warps, then the blocks in order.

#define BAL_THREADS 256
#define BAL_WARPS (BAL_THREADS / 32)
#define BAL_ROWS 32  // token rows per block, BAL_ROWS / BAL_WARPS per warp

// f (B, E) of every sequence; idx (B·T, K). Block b counts sequence b.
__global__ void balance_f_kernel(float *f, const int *idx, int T, int E, int K) {
    extern __shared__ int bal_cnt[];  // (E)
    int b = blockIdx.x;
    for (int i = threadIdx.x; i < E; i += BAL_THREADS) bal_cnt[i] = 0;
    __syncthreads();
    for (long r = threadIdx.x; r < (long)T * K; r += BAL_THREADS) {
        int e = idx[(long)b * T * K + r];
        if ((unsigned)e < (unsigned)E) atomicAdd(&bal_cnt[e], 1);  // a bad id counts for no expert
    }
    __syncthreads();
    float scale = (float)E / ((float)K * (float)T);
    for (int i = threadIdx.x; i < E; i += BAL_THREADS) f[(long)b * E + i] = bal_cnt[i] * scale;
}

// z_t = Σ_i s_{i,t} and fs_t = Σ_i f_i s_{i,t} of the row s (E), on every lane of the warp.
__device__ __forceinline__ void balance_row(float *z, float *fs, const float *s, const float *f, int E) {
    float zz = 0.0f, ff = 0.0f;
    for (int i = threadIdx.x % 32; i < E; i += 32) {
        zz += s[i];
        ff += f[i] * s[i];
    }
    *z = core_warp_sum(zz);
    *fs = core_warp_sum(ff);
}

// part (B, gridDim.y): Σ over block (b, c)'s rows t of fs_t / z_t.
__global__ void balance_loss_kernel(float *part, const float *fseq, const float *scores, int T, int E) {
    __shared__ float warp_acc[BAL_WARPS];
    int b = blockIdx.x, w = threadIdx.x / 32;
    const float *f = fseq + (long)b * E;
    float acc = 0.0f;
    for (int t = blockIdx.y * BAL_ROWS + w; t < min(T, (int)(blockIdx.y + 1) * BAL_ROWS); t += BAL_WARPS) {
        float z, fs;
        balance_row(&z, &fs, scores + ((long)b * T + t) * E, f, E);
        acc += fs / z;
    }
    if (threadIdx.x % 32 == 0) warp_acc[w] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < BAL_WARPS; i++) s += warp_acc[i];
        part[(long)b * gridDim.y + blockIdx.y] = s;
    }
}

// loss (1) = mean over sequences of (1/T) Σ of their parts (B, C): a warp per sequence adds its C
// parts (lanes strided, then a fixed shuffle tree) and leaves the sum in the row's first part, then
// thread 0 adds the sequences in order. One thread walking all B·C parts took 10.2 µs a call at
// the bench shapes (2026-12-04 13:24 trace), half the balance loss's time.
__global__ void balance_mean_kernel(float *loss, float *part, int B, int C, int T) {
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
    for (int b = w; b < B; b += nw) {
        float q = 0.0f;
        for (int c = lane; c < C; c += 32) q += part[(long)b * C + c];
        q = core_warp_sum(q);  // every lane has read the row once this returns
        if (lane == 0) part[(long)b * C] = q / T;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += part[(long)b * C];
        *loss = s / B;
    }
}

// ∂L/∂s_{j,t} = w · (f_j / z_t − Σ_i f_i s_{i,t} / z_t²), w = dloss / (B·T) (see router.c).
__global__ void balance_backward_kernel(float *dscores, float w, const float *fseq, const float *scores,
                                        int T, int E) {
    int b = blockIdx.x;
    const float *f = fseq + (long)b * E;
    for (int t = blockIdx.y * BAL_ROWS + threadIdx.x / 32; t < min(T, (int)(blockIdx.y + 1) * BAL_ROWS);
         t += BAL_WARPS) {
        long row = ((long)b * T + t) * E;
        float z, fs;
        balance_row(&z, &fs, scores + row, f, E);
        for (int j = threadIdx.x % 32; j < E; j += 32) dscores[row + j] += w * (f[j] / z - fs / (z * z));
    }
}

// The expert ids are not checked here: that would cost a host round trip per call, and in the
// engine they come from router_cuda_forward and pass moe_cuda_plan's check in the same forward.
// Returns f (B, E) of the sequences, on the stream's pool (the caller frees it).
static float *balance_f(const int *idx, int B, int T, int E, int K) {
    CHECK(B >= 1 && T >= 1 && E >= 1 && K >= 1 && K <= E,
          "router balance loss: bad shape B = %d, T = %d, E = %d, K = %d", B, T, E, K);
    size_t smem = (size_t)E * sizeof(int);
    CHECK(smem <= 48 * 1024, "router balance loss: E = %d exceeds the kernel's shared memory", E);
    float *f;
    CUDA_CHECK(cudaMallocAsync((void **)&f, (size_t)B * E * sizeof(float), core_stream()));
    balance_f_kernel<<<B, BAL_THREADS, smem, core_stream()>>>(f, idx, T, E, K);
    CUDA_CHECK_LAUNCH();
    return f;
}

void router_cuda_balance_loss(float *loss, const float *scores, const int *idx, int B, int T, int E,
                              int K) {
    float *f = balance_f(idx, B, T, E, K);
    const int C = (T + BAL_ROWS - 1) / BAL_ROWS;
    float *part;  // (B, C)
    CUDA_CHECK(cudaMallocAsync((void **)&part, (size_t)B * C * sizeof(float), core_stream()));
    balance_loss_kernel<<<dim3(B, C), BAL_THREADS, 0, core_stream()>>>(part, f, scores, T, E);
    CUDA_CHECK_LAUNCH();
    balance_mean_kernel<<<1, BAL_THREADS, 0, core_stream()>>>(loss, part, B, C, T);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaFreeAsync(part, core_stream()));
    CUDA_CHECK(cudaFreeAsync(f, core_stream()));
}

void router_cuda_balance_loss_backward(float *dscores, float dloss, const float *scores,
                                       const int *idx, int B, int T, int E, int K) {
    float *f = balance_f(idx, B, T, E, K);
    float w = dloss / ((float)B * (float)T);
    const int C = (T + BAL_ROWS - 1) / BAL_ROWS;
    balance_backward_kernel<<<dim3(B, C), BAL_THREADS, 0, core_stream()>>>(dscores, w, f, scores, T, E);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaFreeAsync(f, core_stream()));
}

// ---------------------------------------------------------------------------------------------
// The bias update, on the device so that a training step needs no host round trip for it.

#define BIAS_LAYERS 64  // layers per launch: their pointers travel as a kernel argument

struct BiasPtrs {
    float *p[BIAS_LAYERS];
};

// Block (x, y = layer): router_bias_update's arithmetic on layer y's biases (see router.c).
__global__ void router_bias_update_kernel(BiasPtrs bias, const long *counts, int E, double mean,
                                          float gamma) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    float *b = bias.p[blockIdx.y];
    if (!b || e >= E) return;
    double gap = mean - (double)counts[(size_t)blockIdx.y * E + e];
    b[e] += gamma * (float)((gap > 0) - (gap < 0));
}

void router_cuda_bias_update(float *const *bias, const long *counts, int L, int E, int K,
                             long n_tokens, float gamma) {
    CHECK(L >= 0 && E >= 1 && K >= 1, "router bias update: bad shape L = %d, E = %d, K = %d", L, E, K);
    double mean = (double)K * (double)n_tokens / E;  // c̄, as router_bias_update computes it
    for (int l0 = 0; l0 < L; l0 += BIAS_LAYERS) {
        int nl = L - l0 < BIAS_LAYERS ? L - l0 : BIAS_LAYERS;
        BiasPtrs p = {};
        for (int j = 0; j < nl; j++) p.p[j] = bias[l0 + j];
        dim3 grid(core_blocks(E, 256), nl);
        router_bias_update_kernel<<<grid, 256, 0, core_stream()>>>(p, counts + (size_t)l0 * E, E, mean,
                                                                   gamma);
        CUDA_CHECK_LAUNCH();
    }
}
