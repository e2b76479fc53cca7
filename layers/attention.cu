// Causal grouped-query attention on the GPU (see attention_cuda.h), flash-attention style on CUDA
// cores: tiles of 32 rows, 4 threads per row, each thread holding every 4th element of its row's
// head vector (interleaved, so that the 4 threads read neighbouring shared-memory words). Scores
// live in registers one 32-wide tile at a time; nothing of size T×T is ever stored.
//   forward:   per query tile, stream the key/value tiles with an online softmax.
//   backward:  delta = rowsum(dout ⊙ out); dk, dv per key tile (looping over the query heads of
//              its kv group and the query tiles at or after it); dq per query tile. Each output row
//              is owned by one block, so the sums need no atomics and are bit-identical run to run.
#include "layers/attention_cuda.h"

#include <math.h>

#define TILE 32          // rows per tile (query rows per block, key rows per block or per step)
#define LANES 4          // threads per row
#define THREADS (TILE * LANES)

// The full dot product of a row pair from the LANES partial sums of one row's threads.
__device__ __forceinline__ float row_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// Loads rows [r0, r0 + TILE) of head `head` of x (B, T, nh, HD) for batch b into s (TILE, HD) as
// fp32; rows past T become zeros.
template <typename T, int HD>
__device__ void load_tile(float (*s)[HD], const T *x, int b, int r0, int Tseq, int nh, int head) {
    for (int e = threadIdx.x; e < TILE * HD; e += THREADS) {
        int r = e / HD, d = e % HD, t = r0 + r;
        s[r][d] = t < Tseq ? core_ld(x + (((size_t)b * Tseq + t) * nh + head) * HD + d) : 0.0f;
    }
}

// This thread's elements (every LANES-th, from its lane) of row t of head `head`, or zeros.
template <typename T, int HD>
__device__ void load_row(float *dst, const T *x, int b, int t, int Tseq, int nh, int head,
                         int lane) {
    const T *row = x + (((size_t)b * Tseq + t) * nh + head) * HD + lane;
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) dst[j] = t < Tseq ? core_ld(row + LANES * j) : 0.0f;
}

// dst row t += this thread's elements of acc (a no-op past T).
template <typename T, int HD>
__device__ void add_row(T *x, const float *acc, int b, int t, int Tseq, int nh, int head,
                        int lane) {
    if (t >= Tseq) return;
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) {
        T *p = x + (((size_t)b * Tseq + t) * nh + head) * HD + lane + LANES * j;
        core_st(p, core_ld(p) + acc[j]);
    }
}

// Block (query tile, b·H + h).
template <typename T, int HD>
__global__ void __launch_bounds__(THREADS)
attention_forward_kernel(T *out, float *lse, const T *q, const T *k, const T *v, int Tseq, int H,
                         int Hkv, float scale) {
    __shared__ float ks[TILE][HD], vs[TILE][HD];
    int b = blockIdx.y / H, h = blockIdx.y % H, g = h / (H / Hkv);
    int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    int q0 = blockIdx.x * TILE, t = q0 + r;
    float qr[HD / LANES], o[HD / LANES];
    load_row<T, HD>(qr, q, b, t, Tseq, H, h, lane);
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) o[j] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    // Key tiles up to the one holding this block's last query row: later keys are all masked.
    for (int k0 = 0; k0 <= q0; k0 += TILE) {
        __syncthreads();  // the previous tile is no longer read
        load_tile<T, HD>(ks, k, b, k0, Tseq, Hkv, g);
        load_tile<T, HD>(vs, v, b, k0, Tseq, Hkv, g);
        __syncthreads();
        float sc[TILE];
        float mt = m;
        #pragma unroll
        for (int c = 0; c < TILE; c++) {
            float s = 0.0f;
            #pragma unroll
            for (int j = 0; j < HD / LANES; j++) s += qr[j] * ks[c][lane + LANES * j];
            s = row_sum(s) * scale;
            sc[c] = k0 + c <= t ? s : -INFINITY;  // causal mask (and keys past T, since t < T)
            mt = fmaxf(mt, sc[c]);
        }
        // Key 0 is in the first tile and visible to every row, so mt is finite from there on.
        float corr = expf(m - mt);
        l *= corr;
        #pragma unroll
        for (int j = 0; j < HD / LANES; j++) o[j] *= corr;
        #pragma unroll
        for (int c = 0; c < TILE; c++) {
            float p = expf(sc[c] - mt);
            l += p;
            #pragma unroll
            for (int j = 0; j < HD / LANES; j++) o[j] += p * vs[c][lane + LANES * j];
        }
        m = mt;
    }
    if (t >= Tseq) return;
    float inv = 1.0f / l;
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++)
        core_st(out + (((size_t)b * Tseq + t) * H + h) * HD + lane + LANES * j, o[j] * inv);
    if (lane == 0) lse[((size_t)b * H + h) * Tseq + t] = m + logf(l);
}

// delta (B, H, T) = Σ_d dout ⊙ out over each row's head vector: one thread per (b, t, h) row.
template <typename T>
__global__ void attention_delta_kernel(float *delta, const T *dout, const T *out, int B, int Tseq,
                                       int H, int hd) {
    long r = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (long)B * Tseq * H) return;
    int h = (int)(r % H), t = (int)(r / H % Tseq), b = (int)(r / ((long)H * Tseq));
    float s = 0.0f;
    for (int d = 0; d < hd; d++) s += core_ld(dout + r * hd + d) * core_ld(out + r * hd + d);
    delta[((size_t)b * H + h) * Tseq + t] = s;
}

// Block (key tile, b·Hkv + g): dk, dv of its TILE key rows, summed over the query heads of group
// g and every query row at or after each key.
template <typename T, int HD>
__global__ void __launch_bounds__(THREADS)
attention_dkdv_kernel(T *dk, T *dv, const T *dout, const T *q, const T *k, const T *v,
                      const float *lse, const float *delta, int Tseq, int H, int Hkv,
                      float scale) {
    __shared__ float qs[TILE][HD], dos[TILE][HD], lses[TILE], dels[TILE];
    int b = blockIdx.y / Hkv, g = blockIdx.y % Hkv, rep = H / Hkv;
    int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    int k0 = blockIdx.x * TILE, tk = k0 + r;
    float kr[HD / LANES], vr[HD / LANES], dkr[HD / LANES], dvr[HD / LANES];
    load_row<T, HD>(kr, k, b, tk, Tseq, Hkv, g, lane);
    load_row<T, HD>(vr, v, b, tk, Tseq, Hkv, g, lane);
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) dkr[j] = dvr[j] = 0.0f;
    for (int h = g * rep; h < (g + 1) * rep; h++) {
        for (int q0 = k0; q0 < Tseq; q0 += TILE) {
            __syncthreads();
            load_tile<T, HD>(qs, q, b, q0, Tseq, H, h);
            load_tile<T, HD>(dos, dout, b, q0, Tseq, H, h);
            if (threadIdx.x < TILE) {
                int t = q0 + threadIdx.x;
                size_t at = ((size_t)b * H + h) * Tseq + t;
                lses[threadIdx.x] = t < Tseq ? lse[at] : 0.0f;
                dels[threadIdx.x] = t < Tseq ? delta[at] : 0.0f;
            }
            __syncthreads();
        #pragma unroll
        for (int c = 0; c < TILE; c++) {
                int t = q0 + c;
                float s = 0.0f, dp = 0.0f;
                #pragma unroll
                for (int j = 0; j < HD / LANES; j++) {
                    s += kr[j] * qs[c][lane + LANES * j];
                    dp += vr[j] * dos[c][lane + LANES * j];
                }
                s = row_sum(s);
                dp = row_sum(dp);
                // p = softmax probability of key tk for query t; 0 where masked or out of range.
                float p = (t < Tseq && tk <= t) ? expf(s * scale - lses[c]) : 0.0f;
                float ds = p * (dp - dels[c]) * scale;
                #pragma unroll
                for (int j = 0; j < HD / LANES; j++) {
                    dvr[j] += p * dos[c][lane + LANES * j];
                    dkr[j] += ds * qs[c][lane + LANES * j];
                }
            }
        }
    }
    add_row<T, HD>(dk, dkr, b, tk, Tseq, Hkv, g, lane);
    add_row<T, HD>(dv, dvr, b, tk, Tseq, Hkv, g, lane);
}

// Block (query tile, b·H + h): dq of its TILE query rows over the keys at or before each.
template <typename T, int HD>
__global__ void __launch_bounds__(THREADS)
attention_dq_kernel(T *dq, const T *dout, const T *q, const T *k, const T *v, const float *lse,
                    const float *delta, int Tseq, int H, int Hkv, float scale) {
    __shared__ float ks[TILE][HD], vs[TILE][HD];
    int b = blockIdx.y / H, h = blockIdx.y % H, g = h / (H / Hkv);
    int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    int q0 = blockIdx.x * TILE, t = q0 + r;
    float qr[HD / LANES], dor[HD / LANES], dqr[HD / LANES];
    load_row<T, HD>(qr, q, b, t, Tseq, H, h, lane);
    load_row<T, HD>(dor, dout, b, t, Tseq, H, h, lane);
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) dqr[j] = 0.0f;
    size_t at = ((size_t)b * H + h) * Tseq + t;
    float l = t < Tseq ? lse[at] : 0.0f, del = t < Tseq ? delta[at] : 0.0f;
    for (int k0 = 0; k0 <= q0; k0 += TILE) {
        __syncthreads();
        load_tile<T, HD>(ks, k, b, k0, Tseq, Hkv, g);
        load_tile<T, HD>(vs, v, b, k0, Tseq, Hkv, g);
        __syncthreads();
        #pragma unroll
        for (int c = 0; c < TILE; c++) {
            float s = 0.0f, dp = 0.0f;
            #pragma unroll
            for (int j = 0; j < HD / LANES; j++) {
                s += qr[j] * ks[c][lane + LANES * j];
                dp += dor[j] * vs[c][lane + LANES * j];
            }
            s = row_sum(s);
            dp = row_sum(dp);
            float p = (t < Tseq && k0 + c <= t) ? expf(s * scale - l) : 0.0f;
            float ds = p * (dp - del) * scale;
            #pragma unroll
            for (int j = 0; j < HD / LANES; j++) dqr[j] += ds * ks[c][lane + LANES * j];
        }
    }
    add_row<T, HD>(dq, dqr, b, t, Tseq, H, h, lane);
}

struct AttnShape {
    int B, T, H, Hkv, hd;
};

template <typename T, int HD>
static void forward_hd(void *out, float *lse, const void *q, const void *k, const void *v,
                       AttnShape s) {
    dim3 grid(core_blocks(s.T, TILE), s.B * s.H);
    attention_forward_kernel<T, HD><<<grid, THREADS, 0, core_stream()>>>(
        (T *)out, lse, (const T *)q, (const T *)k, (const T *)v, s.T, s.H, s.Hkv,
        1.0f / sqrtf((float)HD));
    CUDA_CHECK_LAUNCH();
}

template <typename T, int HD>
static void backward_hd(void *dq, void *dk, void *dv, const void *dout, const void *q,
                        const void *k, const void *v, const void *out, const float *lse,
                        float *delta, AttnShape s) {
    float scale = 1.0f / sqrtf((float)HD);
    attention_delta_kernel<T><<<core_blocks((long)s.B * s.T * s.H, 256), 256, 0, core_stream()>>>(
        delta, (const T *)dout, (const T *)out, s.B, s.T, s.H, HD);
    CUDA_CHECK_LAUNCH();
    dim3 kgrid(core_blocks(s.T, TILE), s.B * s.Hkv);
    attention_dkdv_kernel<T, HD><<<kgrid, THREADS, 0, core_stream()>>>(
        (T *)dk, (T *)dv, (const T *)dout, (const T *)q, (const T *)k, (const T *)v, lse, delta,
        s.T, s.H, s.Hkv, scale);
    CUDA_CHECK_LAUNCH();
    dim3 qgrid(core_blocks(s.T, TILE), s.B * s.H);
    attention_dq_kernel<T, HD><<<qgrid, THREADS, 0, core_stream()>>>(
        (T *)dq, (const T *)dout, (const T *)q, (const T *)k, (const T *)v, lse, delta, s.T, s.H,
        s.Hkv, scale);
    CUDA_CHECK_LAUNCH();
}

// The head size is a template parameter (register arrays need a compile-time length).
template <typename T>
static void forward(void *out, float *lse, const void *q, const void *k, const void *v,
                    AttnShape s) {
    switch (s.hd) {
    case 16: forward_hd<T, 16>(out, lse, q, k, v, s); break;
    case 32: forward_hd<T, 32>(out, lse, q, k, v, s); break;
    case 64: forward_hd<T, 64>(out, lse, q, k, v, s); break;
    default: forward_hd<T, 128>(out, lse, q, k, v, s); break;
    }
}

template <typename T>
static void backward(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                     const void *v, const void *out, const float *lse, float *delta,
                     AttnShape s) {
    switch (s.hd) {
    case 16: backward_hd<T, 16>(dq, dk, dv, dout, q, k, v, out, lse, delta, s); break;
    case 32: backward_hd<T, 32>(dq, dk, dv, dout, q, k, v, out, lse, delta, s); break;
    case 64: backward_hd<T, 64>(dq, dk, dv, dout, q, k, v, out, lse, delta, s); break;
    default: backward_hd<T, 128>(dq, dk, dv, dout, q, k, v, out, lse, delta, s); break;
    }
}

static AttnShape attention_check(int B, int T, int H, int Hkv, int hd) {
    CHECK(B >= 0 && T > 0 && H > 0 && Hkv > 0 && hd > 0,
          "attention: bad shape B=%d T=%d H=%d Hkv=%d hd=%d", B, T, H, Hkv, hd);
    CHECK(H % Hkv == 0, "attention: n_heads (%d) must be divisible by n_kv_heads (%d)", H, Hkv);
    CHECK(hd == 16 || hd == 32 || hd == 64 || hd == 128,
          "attention: the CUDA kernel supports head sizes 16, 32, 64 and 128, got %d", hd);
    AttnShape s = {B, T, H, Hkv, hd};
    return s;
}

void attention_cuda_forward(CoreDtype dt, void *out, float *lse, const void *q, const void *k,
                            const void *v, int B, int T, int H, int Hkv, int hd) {
    AttnShape s = attention_check(B, T, H, Hkv, hd);
    if (B == 0) return;
    CORE_DTYPE_CALL(dt, forward, out, lse, q, k, v, s);
}

void attention_cuda_backward_input(CoreDtype dt, void *dq, void *dk, void *dv, const void *dout,
                                   const void *q, const void *k, const void *v, const void *out,
                                   const float *lse, float *delta, int B, int T, int H, int Hkv,
                                   int hd) {
    AttnShape s = attention_check(B, T, H, Hkv, hd);
    if (B == 0) return;
    CORE_DTYPE_CALL(dt, backward, dq, dk, dv, dout, q, k, v, out, lse, delta, s);
}
