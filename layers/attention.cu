// Causal grouped-query attention on the GPU (see attention_cuda.h), flash-attention style: scores
// live in registers one tile at a time and nothing of size T×T is ever stored. bf16 with head size
// 64 or 128 goes to cuDNN's fused attention first (attention_cudnn.cu) where cuDNN is present and
// runs the shape; the rest, and everything where it is not, to one of two kernel sets here:
//
// Tensor cores (bf16, head size 64 or 128): FA2 on mma.sync.m16n8k16 (bf16 in, fp32 accumulate)
// with ldmatrix. Blocks of 4 warps; a block owns 64 rows (query rows, or key rows for dk/dv) and
// each warp 16 of them, so every mma A operand is a warp's own 16 rows. Tiles are staged in
// shared memory with rows padded by 16 bytes (conflict-free ldmatrix). Two warp-level products
// cover every step: tc_gemm_abt (acc += A·Bᵀ, both operands in shared memory: Q·Kᵀ, dO·Vᵀ and
// their transposes) and tc_gemm_pb (acc += P·B with P taken straight from a previous product's
// fp32 accumulators, rounded to bf16: P·V, Pᵀ·dO, dSᵀ·Q, dS·K).
//   forward:   per 64-row query tile, stream 64-row key/value tiles up to the diagonal (later ones
//              are fully masked and skipped); S = Q·Kᵀ, online softmax in registers in log2 units
//              (exp2f), O += P·V; then O / l in bf16 and lse = ln(Σ exp) in fp32.
//   backward:  delta = rowsum(dO ⊙ O); dk, dv per 64-row key tile, looping over the query heads
//              of its kv group and the query tiles at or after it (Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ,
//              dV += Pᵀ·dO, dK += dSᵀ·Q); dq per 64-row query tile (dQ += dS·K).
// CUDA cores (fp32, other head sizes, or tensors not 16-byte aligned): tiles of 32 rows, 4 threads
// per row, each thread holding every 4th element of its row's head vector (interleaved, so that
// the 4 threads read neighbouring shared-memory words); the same forward / delta / dk,dv / dq split.
// In both, every output row is owned by one block, so the sums need no atomics and are
// bit-identical run to run, and each block stores its rows (dq, dk, dv are overwritten, never read).
#include "layers/attention_cuda.h"

#include <math.h>
#include <stdint.h>

#include "layers/attention_cudnn_cuda.h"

#define TILE 32          // rows per tile (query rows per block, key rows per block or per step)
// The grids are (sequences × heads, tiles): gridDim.x takes up to 2^31 - 1 blocks and gridDim.y
// only 65535, which B·H passes at accepted shapes (batch 16384 of 4 heads), T / TILE never (T ≤ 2^20).
#define LANES 4          // threads per row
#define THREADS (TILE * LANES)

// The full dot product of a row pair from the LANES partial sums of one row's threads.
__device__ __forceinline__ float row_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// The backward's per-(query, key) quantities from this thread's parts of the row pairs: the score
// s = a·x and dp = b·y (x, y rows of shared tiles), then the softmax probability p = exp(s·scale −
// lse) (0 where `live` is false: masked or past T) and the score gradient ds = p·(dp − delta)·scale.
template <int HD>
__device__ __forceinline__ float2 attn_p_ds(const float *a, const float *x, const float *b, const float *y,
                                            int lane, bool live, float lse, float delta, float scale) {
    float s = 0.0f, dp = 0.0f;
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) {
        s += a[j] * x[lane + LANES * j];
        dp += b[j] * y[lane + LANES * j];
    }
    s = row_sum(s);
    dp = row_sum(dp);
    const float p = live ? expf(s * scale - lse) : 0.0f;
    return make_float2(p, p * (dp - delta) * scale);
}

// The two layouts of attention.h: q, k, v and their gradients are head-major (B, nh, T, HD), out
// and dout token-major (B, T, nh, HD). attn_row: where row t of head `head` of sequence b starts.
enum AttnLayout { TOKENS, HEADS };
template <int HD>
__device__ __forceinline__ size_t attn_row(AttnLayout lay, int b, int t, int Tseq, int nh, int head) {
    return (lay == TOKENS ? ((size_t)b * Tseq + t) * nh + head : ((size_t)b * nh + head) * Tseq + t) * HD;
}

// Loads rows [r0, r0 + TILE) of head `head` of x (laid out as lay) for batch b into s (TILE, HD)
// as fp32; rows past T become zeros.
template <typename T, int HD>
__device__ void load_tile(float (*s)[HD], const T *x, AttnLayout lay, int b, int r0, int Tseq,
                          int nh, int head) {
    for (int e = threadIdx.x; e < TILE * HD; e += THREADS) {
        int r = e / HD, d = e % HD, t = r0 + r;
        s[r][d] = t < Tseq ? core_ld(x + attn_row<HD>(lay, b, t, Tseq, nh, head) + d) : 0.0f;
    }
}

// This thread's elements (every LANES-th, from its lane) of row t of head `head`, or zeros.
template <typename T, int HD>
__device__ void load_row(float *dst, const T *x, AttnLayout lay, int b, int t, int Tseq, int nh,
                         int head, int lane) {
    const T *row = x + attn_row<HD>(lay, b, t, Tseq, nh, head) + lane;
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) dst[j] = t < Tseq ? core_ld(row + LANES * j) : 0.0f;
}

// dst row t = this thread's elements of acc (a no-op past T).
template <typename T, int HD>
__device__ void store_row(T *x, const float *acc, AttnLayout lay, int b, int t, int Tseq, int nh,
                          int head, int lane) {
    if (t >= Tseq) return;
    T *row = x + attn_row<HD>(lay, b, t, Tseq, nh, head) + lane;
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) core_st(row + LANES * j, acc[j]);
}

// Block (b·H + h, query tile).
template <typename T, int HD>
__global__ void __launch_bounds__(THREADS)
attention_forward_kernel(T *out, float *lse, const T *q, const T *k, const T *v, int Tseq, int H,
                         int Hkv, float scale) {
    __shared__ float ks[TILE][HD], vs[TILE][HD];
    int b = blockIdx.x / H, h = blockIdx.x % H, g = h / (H / Hkv);
    int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    int q0 = blockIdx.y * TILE, t = q0 + r;
    float qr[HD / LANES], o[HD / LANES];
    load_row<T, HD>(qr, q, HEADS, b, t, Tseq, H, h, lane);
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) o[j] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    // Key tiles up to the one holding this block's last query row: later keys are all masked.
    for (int k0 = 0; k0 <= q0; k0 += TILE) {
        __syncthreads();  // the previous tile is no longer read
        load_tile<T, HD>(ks, k, HEADS, b, k0, Tseq, Hkv, g);
        load_tile<T, HD>(vs, v, HEADS, b, k0, Tseq, Hkv, g);
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

// Block (b·Hkv + g, key tile): dk, dv of its TILE key rows, summed over the query heads of group
// g and every query row at or after each key.
template <typename T, int HD>
__global__ void __launch_bounds__(THREADS)
attention_dkdv_kernel(T *dk, T *dv, const T *dout, const T *q, const T *k, const T *v,
                      const float *lse, const float *delta, int Tseq, int H, int Hkv,
                      float scale) {
    __shared__ float qs[TILE][HD], dos[TILE][HD], lses[TILE], dels[TILE];
    int b = blockIdx.x / Hkv, g = blockIdx.x % Hkv, rep = H / Hkv;
    int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    int k0 = blockIdx.y * TILE, tk = k0 + r;
    float kr[HD / LANES], vr[HD / LANES], dkr[HD / LANES], dvr[HD / LANES];
    load_row<T, HD>(kr, k, HEADS, b, tk, Tseq, Hkv, g, lane);
    load_row<T, HD>(vr, v, HEADS, b, tk, Tseq, Hkv, g, lane);
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) dkr[j] = dvr[j] = 0.0f;
    for (int h = g * rep; h < (g + 1) * rep; h++) {
        for (int q0 = k0; q0 < Tseq; q0 += TILE) {
            __syncthreads();
            load_tile<T, HD>(qs, q, HEADS, b, q0, Tseq, H, h);
            load_tile<T, HD>(dos, dout, TOKENS, b, q0, Tseq, H, h);
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
                // Key tk against query t (masked unless tk <= t < T).
                const float2 pd = attn_p_ds<HD>(kr, qs[c], vr, dos[c], lane, t < Tseq && tk <= t, lses[c],
                                                dels[c], scale);
                const float p = pd.x, ds = pd.y;
                #pragma unroll
                for (int j = 0; j < HD / LANES; j++) {
                    dvr[j] += p * dos[c][lane + LANES * j];
                    dkr[j] += ds * qs[c][lane + LANES * j];
                }
            }
        }
    }
    store_row<T, HD>(dk, dkr, HEADS, b, tk, Tseq, Hkv, g, lane);
    store_row<T, HD>(dv, dvr, HEADS, b, tk, Tseq, Hkv, g, lane);
}

// Block (b·H + h, query tile): dq of its TILE query rows over the keys at or before each.
template <typename T, int HD>
__global__ void __launch_bounds__(THREADS)
attention_dq_kernel(T *dq, const T *dout, const T *q, const T *k, const T *v, const float *lse,
                    const float *delta, int Tseq, int H, int Hkv, float scale) {
    __shared__ float ks[TILE][HD], vs[TILE][HD];
    int b = blockIdx.x / H, h = blockIdx.x % H, g = h / (H / Hkv);
    int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    int q0 = blockIdx.y * TILE, t = q0 + r;
    float qr[HD / LANES], dor[HD / LANES], dqr[HD / LANES];
    load_row<T, HD>(qr, q, HEADS, b, t, Tseq, H, h, lane);
    load_row<T, HD>(dor, dout, TOKENS, b, t, Tseq, H, h, lane);
    #pragma unroll
    for (int j = 0; j < HD / LANES; j++) dqr[j] = 0.0f;
    size_t at = ((size_t)b * H + h) * Tseq + t;
    float l = t < Tseq ? lse[at] : 0.0f, del = t < Tseq ? delta[at] : 0.0f;
    for (int k0 = 0; k0 <= q0; k0 += TILE) {
        __syncthreads();
        load_tile<T, HD>(ks, k, HEADS, b, k0, Tseq, Hkv, g);
        load_tile<T, HD>(vs, v, HEADS, b, k0, Tseq, Hkv, g);
        __syncthreads();
        #pragma unroll
        for (int c = 0; c < TILE; c++) {
            const float ds =
                attn_p_ds<HD>(qr, ks[c], dor, vs[c], lane, t < Tseq && k0 + c <= t, l, del, scale).y;
            #pragma unroll
            for (int j = 0; j < HD / LANES; j++) dqr[j] += ds * ks[c][lane + LANES * j];
        }
    }
    store_row<T, HD>(dq, dqr, HEADS, b, t, Tseq, H, h, lane);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernels (bf16, head size 64 or 128).

#define TC_ROWS 64      // rows a block owns (query rows, or key rows for dk/dv), and key rows per step
#define TC_THREADS 128  // 4 warps of 16 owned rows each
#define TC_PAD 8        // bf16 elements padding each shared-memory row: row starts 16 bytes apart
                        // modulo 128, so the 8 rows an ldmatrix reads hit distinct banks

typedef __nv_bfloat16 bf16;

// ldmatrix .x4: lanes 8i..8i+7 give the row addresses (16 bytes each) of 8×8 matrix i; lane l
// receives r[i] = elements (l / 4, 2·(l % 4) and +1) of matrix i, or of its transpose with TRANS
// (.trans).
#define TC_LDSM(instr, r, a)                                                      \
    asm volatile(instr " {%0, %1, %2, %3}, [%4];\n"                              \
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                \
                 : "r"(a)                                                        \
                 : "memory")
template <bool TRANS>
__device__ __forceinline__ void tc_ldsm(uint32_t r[4], const bf16 *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    if (TRANS) TC_LDSM("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16", r, a);
    else TC_LDSM("ldmatrix.sync.aligned.m8n8.x4.shared.b16", r, a);
}
#undef TC_LDSM

// c (16×8, fp32) += a (16×16, bf16, row) · b (16×8, bf16, col). With g = lane / 4, i = lane % 4
// (PTX ISA, mma.m16n8k16 fragments): a[0] holds A(g, 2i..2i+1), a[1] A(g+8, 2i..), a[2]
// A(g, 2i+8..), a[3] A(g+8, 2i+8..); b0 holds B(2i..2i+1, g), b1 B(2i+8.., g); c[0], c[1] are
// C(g, 2i), C(g, 2i+1) and c[2], c[3] the same columns of row g+8.
__device__ __forceinline__ void tc_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t tc_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

// acc (16, N) += a (16, K) · b (N, K)ᵀ for one warp; a and b row-major bf16 in shared memory,
// row strides lda, ldb. acc is N/8 accumulator fragments (columns 8j..8j+7 in acc[j]).
template <int N, int K>
__device__ __forceinline__ void tc_gemm_abt(float (*acc)[4], const bf16 *a, int lda,
                                            const bf16 *b, int ldb) {
    int lane = threadIdx.x % 32;
    #pragma unroll
    for (int kk = 0; kk < K; kk += 16) {
        // Matrices 0..3 = rows 0-7 / 8-15 × columns kk / kk+8: the a[0..3] fragment order.
        uint32_t af[4];
        tc_ldsm<false>(af, a + (lane % 16) * lda + kk + (lane / 16) * 8);
        #pragma unroll
        for (int n = 0; n < N; n += 16) {
            // B(k, n) = b(n, k): rows of b are B's columns, so no transpose. Matrices 0..3 =
            // (b rows n..n+7, columns kk), (n..n+7, kk+8), (n+8.., kk), (n+8.., kk+8): b0, b1 of
            // column block n / 8, then b0, b1 of block n / 8 + 1.
            uint32_t bf[4];
            tc_ldsm<false>(bf, b + (n + lane % 8 + (lane / 16) * 8) * ldb + kk + (lane / 8 % 2) * 8);
            tc_mma(acc[n / 8], af, bf[0], bf[1]);
            tc_mma(acc[n / 8 + 1], af, bf[2], bf[3]);
        }
    }
}

// acc (16, N) += p (16, K) · b (K, N) for one warp: p as K/16 A fragments in registers (from
// tc_to_a), b row-major bf16 in shared memory with row stride ldb.
template <int N, int K>
__device__ __forceinline__ void tc_gemm_pb(float (*acc)[4], const uint32_t (*p)[4],
                                           const bf16 *b, int ldb) {
    int lane = threadIdx.x % 32;
    #pragma unroll
    for (int kk = 0; kk < K / 16; kk++) {
        #pragma unroll
        for (int n = 0; n < N; n += 16) {
            // B(k, n) = b(k, n) is stored along n, so ldmatrix transposes. Matrices 0..3 =
            // (b rows 16kk..+7, columns n..n+7), (rows +8..+15, n), (rows 16kk.., n+8),
            // (rows +8.., n+8): b0, b1 of column block n / 8, then of block n / 8 + 1.
            uint32_t bf[4];
            tc_ldsm<true>(bf, b + (kk * 16 + lane % 8 + (lane / 8 % 2) * 8) * ldb + n + (lane / 16) * 8);
            tc_mma(acc[n / 8], p[kk], bf[0], bf[1]);
            tc_mma(acc[n / 8 + 1], p[kk], bf[2], bf[3]);
        }
    }
}

// The (16, K) accumulator tile s as bf16 A fragments: the C layout of column blocks 2kk and
// 2kk+1 is the A layout of columns 16kk..16kk+15, so this is a rounding, not a shuffle.
template <int K>
__device__ __forceinline__ void tc_to_a(uint32_t (*p)[4], const float (*s)[4]) {
    #pragma unroll
    for (int kk = 0; kk < K / 16; kk++) {
        p[kk][0] = tc_pack(s[2 * kk][0], s[2 * kk][1]);
        p[kk][1] = tc_pack(s[2 * kk][2], s[2 * kk][3]);
        p[kk][2] = tc_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        p[kk][3] = tc_pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

// Row and column of accumulator element e of fragment j within a warp's 16-row tile.
__device__ __forceinline__ int tc_row(int e) { return threadIdx.x % 32 / 4 + (e / 2) * 8; }
__device__ __forceinline__ int tc_col(int j, int e) { return j * 8 + 2 * (threadIdx.x % 4) + e % 2; }

// The max (or sum) over the 4 threads of a quad, which together hold one accumulator row.
__device__ __forceinline__ float tc_quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float tc_quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// s (rows, HD + TC_PAD) = rows [r0, r0 + rows) of head `head` of x (laid out as lay) for batch
// b, in 16-byte pieces; rows past T become zeros.
template <int HD>
__device__ void tc_load(bf16 *s, const bf16 *x, int rows, AttnLayout lay, int b, int r0, int Tseq,
                        int nh, int head) {
    const int pieces = HD / 8;
    for (int e = threadIdx.x; e < rows * pieces; e += TC_THREADS) {
        int r = e / pieces, c = e % pieces * 8, t = r0 + r;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (t < Tseq) val = *(const uint4 *)(x + attn_row<HD>(lay, b, t, Tseq, nh, head) + c);
        *(uint4 *)(s + r * (HD + TC_PAD) + c) = val;
    }
}

// Rows r0 + (0..15) of head `head` of x (laid out as lay) = the warp's (16, HD) accumulator tile
// acc, its rows g scaled by mul[0] and g+8 by mul[1]. Rows past T are skipped.
template <int HD>
__device__ void tc_store(bf16 *x, const float (*acc)[4], const float mul[2], AttnLayout lay, int b,
                         int r0, int Tseq, int nh, int head) {
    #pragma unroll
    for (int half = 0; half < 2; half++) {
        int t = r0 + tc_row(2 * half);
        if (t >= Tseq) continue;
        bf16 *row = x + attn_row<HD>(lay, b, t, Tseq, nh, head);
        #pragma unroll
        for (int j = 0; j < HD / 8; j++) {
            __nv_bfloat162 *p = (__nv_bfloat162 *)(row + tc_col(j, 0));
            *p = __floats2bfloat162_rn(acc[j][2 * half] * mul[half], acc[j][2 * half + 1] * mul[half]);
        }
    }
}

#define TC_LOG2E 1.4426950408889634f

// Block (b·H + h, query tile). Query tiles run in reverse block order, so that the longest ones
// (near the end of the sequence) start first. Shared: q, k, v tiles of (TC_ROWS, HD + TC_PAD).
template <int HD>
__global__ void __launch_bounds__(TC_THREADS)
attention_tc_forward_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                            int Tseq, int H, int Hkv, float scale) {
    extern __shared__ __align__(16) unsigned char tc_smem[];
    const int LD = HD + TC_PAD;
    bf16 *qs = (bf16 *)tc_smem, *ks = qs + TC_ROWS * LD, *vs = ks + TC_ROWS * LD;
    int b = blockIdx.x / H, h = blockIdx.x % H, g = h / (H / Hkv), warp = threadIdx.x / 32;
    int q0 = (gridDim.y - 1 - blockIdx.y) * TC_ROWS, w0 = q0 + warp * 16;  // w0: warp's first row
    float sl2 = scale * TC_LOG2E;  // scores in log2 units: exp(x) = exp2(x · log2 e)
    tc_load<HD>(qs, q, TC_ROWS, HEADS, b, q0, Tseq, H, h);
    float o[HD / 8][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g, g+8; l per thread
    for (int k0 = 0; k0 <= q0; k0 += TC_ROWS) {
        __syncthreads();  // the previous tiles are no longer read
        tc_load<HD>(ks, k, TC_ROWS, HEADS, b, k0, Tseq, Hkv, g);
        tc_load<HD>(vs, v, TC_ROWS, HEADS, b, k0, Tseq, Hkv, g);
        __syncthreads();
        float s[TC_ROWS / 8][4] = {};
        tc_gemm_abt<TC_ROWS, HD>(s, qs + warp * 16 * LD, LD, ks, LD);
        // Scale and mask (keys after the row; only the diagonal tile has any, and keys past T
        // are after every row < T), then the running max of each row.
        float mt[2] = {m[0], m[1]};
        #pragma unroll
        for (int j = 0; j < TC_ROWS / 8; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[j][e] * sl2;
                if (k0 == q0 && k0 + tc_col(j, e) > w0 + tc_row(e)) x = -INFINITY;
                s[j][e] = x;
                mt[e / 2] = fmaxf(mt[e / 2], x);
            }
        // Key 0 is in the first tile and visible to every row, so mt is finite from there on.
        float corr[2];
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            mt[r] = tc_quad_max(mt[r]);
            corr[r] = exp2f(m[r] - mt[r]);
            l[r] *= corr[r];
            m[r] = mt[r];
        }
        #pragma unroll
        for (int j = 0; j < HD / 8; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) o[j][e] *= corr[e / 2];
        #pragma unroll
        for (int j = 0; j < TC_ROWS / 8; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = exp2f(s[j][e] - m[e / 2]);
                l[e / 2] += s[j][e];
            }
        uint32_t pf[TC_ROWS / 16][4];
        tc_to_a<TC_ROWS>(pf, s);
        tc_gemm_pb<HD, TC_ROWS>(o, pf, vs, LD);
    }
    float inv[2];
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] = tc_quad_sum(l[r]);
        inv[r] = 1.0f / l[r];
    }
    tc_store<HD>(out, o, inv, TOKENS, b, w0, Tseq, H, h);
    if (threadIdx.x % 4 == 0) {
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            int t = w0 + tc_row(2 * r);
            if (t < Tseq) lse[((size_t)b * H + h) * Tseq + t] = (m[r] + log2f(l[r])) / TC_LOG2E;
        }
    }
}

// Block (b·Hkv + g, key tile): dk, dv of its TC_ROWS key rows, summed over the query heads of
// group g and the query rows at or after each key, QS query rows per step (fewer for HD 128, to
// keep the accumulators in registers). Shared: k, v tiles (TC_ROWS rows), q, dout tiles (QS
// rows), then QS lse (log2 units) and QS delta values.
template <int HD, int QS>
__global__ void __launch_bounds__(TC_THREADS)
attention_tc_dkdv_kernel(bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k,
                         const bf16 *v, const float *lse, const float *delta, int Tseq, int H,
                         int Hkv, float scale) {
    extern __shared__ __align__(16) unsigned char tc_smem[];
    const int LD = HD + TC_PAD;
    bf16 *ks = (bf16 *)tc_smem, *vs = ks + TC_ROWS * LD, *qs = vs + TC_ROWS * LD,
         *dos = qs + QS * LD;
    float *lses = (float *)(dos + QS * LD), *dels = lses + QS;
    int b = blockIdx.x / Hkv, g = blockIdx.x % Hkv, rep = H / Hkv, warp = threadIdx.x / 32;
    int k0 = blockIdx.y * TC_ROWS, w0 = k0 + warp * 16;  // w0: the warp's first key row
    float sl2 = scale * TC_LOG2E;
    tc_load<HD>(ks, k, TC_ROWS, HEADS, b, k0, Tseq, Hkv, g);
    tc_load<HD>(vs, v, TC_ROWS, HEADS, b, k0, Tseq, Hkv, g);
    float dka[HD / 8][4] = {}, dva[HD / 8][4] = {};
    for (int h = g * rep; h < (g + 1) * rep; h++) {
        for (int q0 = k0; q0 < Tseq; q0 += QS) {
            __syncthreads();
            tc_load<HD>(qs, q, QS, HEADS, b, q0, Tseq, H, h);
            tc_load<HD>(dos, dout, QS, TOKENS, b, q0, Tseq, H, h);
            for (int i = threadIdx.x; i < QS; i += TC_THREADS) {
                int t = q0 + i;
                size_t at = ((size_t)b * H + h) * Tseq + t;
                lses[i] = t < Tseq ? lse[at] * TC_LOG2E : 0.0f;
                dels[i] = t < Tseq ? delta[at] : 0.0f;
            }
            __syncthreads();
            // Transposed scores: rows are this warp's keys, columns the QS queries.
            float st[QS / 8][4] = {}, dpt[QS / 8][4] = {};
            tc_gemm_abt<QS, HD>(st, ks + warp * 16 * LD, LD, qs, LD);
            tc_gemm_abt<QS, HD>(dpt, vs + warp * 16 * LD, LD, dos, LD);
            // Masking is needed only where the step overlaps the diagonal or runs past T.
            bool edge = q0 < k0 + TC_ROWS || q0 + QS > Tseq;
            #pragma unroll
            for (int j = 0; j < QS / 8; j++)
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    int c = tc_col(j, e), t = q0 + c;
                    float p = exp2f(st[j][e] * sl2 - lses[c]);  // softmax probability
                    if (edge && (w0 + tc_row(e) > t || t >= Tseq)) p = 0.0f;
                    st[j][e] = p;
                    dpt[j][e] = p * (dpt[j][e] - dels[c]);  // dSᵀ, without the scale
                }
            uint32_t pf[QS / 16][4];
            tc_to_a<QS>(pf, st);
            tc_gemm_pb<HD, QS>(dva, pf, dos, LD);
            tc_to_a<QS>(pf, dpt);
            tc_gemm_pb<HD, QS>(dka, pf, qs, LD);
        }
    }
    const float kmul[2] = {scale, scale}, vmul[2] = {1.0f, 1.0f};
    tc_store<HD>(dk, dka, kmul, HEADS, b, w0, Tseq, Hkv, g);
    tc_store<HD>(dv, dva, vmul, HEADS, b, w0, Tseq, Hkv, g);
}

// Block (b·H + h, query tile), tiles in reverse block order as in the forward: dq of its
// TC_ROWS query rows over the keys at or before each. Shared: q, dout, k, v tiles.
template <int HD>
__global__ void __launch_bounds__(TC_THREADS)
attention_tc_dq_kernel(bf16 *dq, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v,
                       const float *lse, const float *delta, int Tseq, int H, int Hkv,
                       float scale) {
    extern __shared__ __align__(16) unsigned char tc_smem[];
    const int LD = HD + TC_PAD;
    bf16 *qs = (bf16 *)tc_smem, *dos = qs + TC_ROWS * LD, *ks = dos + TC_ROWS * LD,
         *vs = ks + TC_ROWS * LD;
    int b = blockIdx.x / H, h = blockIdx.x % H, g = h / (H / Hkv), warp = threadIdx.x / 32;
    int q0 = (gridDim.y - 1 - blockIdx.y) * TC_ROWS, w0 = q0 + warp * 16;
    float sl2 = scale * TC_LOG2E;
    tc_load<HD>(qs, q, TC_ROWS, HEADS, b, q0, Tseq, H, h);
    tc_load<HD>(dos, dout, TC_ROWS, TOKENS, b, q0, Tseq, H, h);
    float lr[2], dr[2];  // lse (log2 units) and delta of rows g, g+8
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        int t = w0 + tc_row(2 * r);
        size_t at = ((size_t)b * H + h) * Tseq + t;
        lr[r] = t < Tseq ? lse[at] * TC_LOG2E : 0.0f;
        dr[r] = t < Tseq ? delta[at] : 0.0f;
    }
    float dqa[HD / 8][4] = {};
    for (int k0 = 0; k0 <= q0; k0 += TC_ROWS) {
        __syncthreads();
        tc_load<HD>(ks, k, TC_ROWS, HEADS, b, k0, Tseq, Hkv, g);
        tc_load<HD>(vs, v, TC_ROWS, HEADS, b, k0, Tseq, Hkv, g);
        __syncthreads();
        float s[TC_ROWS / 8][4] = {}, dp[TC_ROWS / 8][4] = {};
        tc_gemm_abt<TC_ROWS, HD>(s, qs + warp * 16 * LD, LD, ks, LD);
        tc_gemm_abt<TC_ROWS, HD>(dp, dos + warp * 16 * LD, LD, vs, LD);
        #pragma unroll
        for (int j = 0; j < TC_ROWS / 8; j++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = exp2f(s[j][e] * sl2 - lr[e / 2]);
                if (k0 == q0 && k0 + tc_col(j, e) > w0 + tc_row(e)) p = 0.0f;
                s[j][e] = p * (dp[j][e] - dr[e / 2]);  // dS, without the scale
            }
        uint32_t pf[TC_ROWS / 16][4];
        tc_to_a<TC_ROWS>(pf, s);
        tc_gemm_pb<HD, TC_ROWS>(dqa, pf, ks, LD);
    }
    const float mul[2] = {scale, scale};
    tc_store<HD>(dq, dqa, mul, HEADS, b, w0, Tseq, H, h);
}

struct AttnShape {
    int B, T, H, Hkv, hd;
};

// delta = rowsum(dout ⊙ out), the first step of either backward.
template <typename T>
static void delta_launch(float *delta, const void *dout, const void *out, AttnShape s) {
    attention_delta_kernel<T><<<core_blocks((long)s.B * s.T * s.H, 256), 256, 0, core_stream()>>>(
        delta, (const T *)dout, (const T *)out, s.B, s.T, s.H, s.hd);
    CUDA_CHECK_LAUNCH();
}

template <typename T, int HD>
static void forward_hd(void *out, float *lse, const void *q, const void *k, const void *v,
                       AttnShape s) {
    dim3 grid(s.B * s.H, core_blocks(s.T, TILE));
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
    delta_launch<T>(delta, dout, out, s);
    dim3 kgrid(s.B * s.Hkv, core_blocks(s.T, TILE));
    attention_dkdv_kernel<T, HD><<<kgrid, THREADS, 0, core_stream()>>>(
        (T *)dk, (T *)dv, (const T *)dout, (const T *)q, (const T *)k, (const T *)v, lse, delta,
        s.T, s.H, s.Hkv, scale);
    CUDA_CHECK_LAUNCH();
    dim3 qgrid(s.B * s.H, core_blocks(s.T, TILE));
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

// The tensor-core kernels' dynamic shared memory (the HD 128 tiles pass the 48 KB default).
template <typename Kernel>
static void tc_smem_limit(Kernel *kernel, size_t bytes) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)bytes));
}

template <int HD>
static void tc_forward_hd(void *out, float *lse, const void *q, const void *k, const void *v,
                          AttnShape s) {
    size_t smem = 3 * TC_ROWS * (HD + TC_PAD) * sizeof(bf16);
    tc_smem_limit(attention_tc_forward_kernel<HD>, smem);
    dim3 grid(s.B * s.H, core_blocks(s.T, TC_ROWS));
    attention_tc_forward_kernel<HD><<<grid, TC_THREADS, smem, core_stream()>>>(
        (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, s.T, s.H, s.Hkv,
        1.0f / sqrtf((float)HD));
    CUDA_CHECK_LAUNCH();
}

template <int HD>
static void tc_backward_hd(void *dq, void *dk, void *dv, const void *dout, const void *q,
                           const void *k, const void *v, const void *out, const float *lse,
                           float *delta, AttnShape s) {
    const int QS = HD == 128 ? 32 : 64;  // dk/dv query rows per step (see the kernel)
    float scale = 1.0f / sqrtf((float)HD);
    delta_launch<bf16>(delta, dout, out, s);
    size_t smem = (2 * TC_ROWS + 2 * QS) * (HD + TC_PAD) * sizeof(bf16) + 2 * QS * sizeof(float);
    tc_smem_limit(attention_tc_dkdv_kernel<HD, QS>, smem);
    dim3 kgrid(s.B * s.Hkv, core_blocks(s.T, TC_ROWS));
    attention_tc_dkdv_kernel<HD, QS><<<kgrid, TC_THREADS, smem, core_stream()>>>(
        (bf16 *)dk, (bf16 *)dv, (const bf16 *)dout, (const bf16 *)q, (const bf16 *)k,
        (const bf16 *)v, lse, delta, s.T, s.H, s.Hkv, scale);
    CUDA_CHECK_LAUNCH();
    smem = 4 * TC_ROWS * (HD + TC_PAD) * sizeof(bf16);
    tc_smem_limit(attention_tc_dq_kernel<HD>, smem);
    dim3 qgrid(s.B * s.H, core_blocks(s.T, TC_ROWS));
    attention_tc_dq_kernel<HD><<<qgrid, TC_THREADS, smem, core_stream()>>>(
        (bf16 *)dq, (const bf16 *)dout, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, lse,
        delta, s.T, s.H, s.Hkv, scale);
    CUDA_CHECK_LAUNCH();
}

// Other than AUTO only through attention_cuda_set_path (tests, kernel_bench).
static AttentionCudaPath g_path = ATTENTION_CUDA_AUTO;

void attention_cuda_set_path(AttentionCudaPath path) { g_path = path; }

// cuDNN and the tensor-core kernels take bf16 with head size 64 or 128, and tensors whose rows
// start on 16 bytes (16-byte vector loads; a row's offset is a multiple of 128 bytes, so the base
// pointers decide).
static bool bf16_fast_shape(CoreDtype dt, int hd, const void *const *ptrs, int n) {
    if (dt != CORE_BF16 || (hd != 64 && hd != 128)) return false;
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ptrs[i] % 16 != 0) return false;
    return true;
}
static bool try_cudnn(CoreDtype dt, int hd, const void *const *ptrs, int n) {
    if (g_path == ATTENTION_CUDA_CUDNN) {
        CHECK(bf16_fast_shape(dt, hd, ptrs, n),
              "attention: the cuDNN path takes bf16 with head size 64 or 128 and 16-byte aligned "
              "tensors");
        return true;
    }
    return g_path == ATTENTION_CUDA_AUTO && bf16_fast_shape(dt, hd, ptrs, n);
}
static bool use_tensor_cores(CoreDtype dt, int hd, const void *const *ptrs, int n) {
    return g_path != ATTENTION_CUDA_CUDA_CORES && bf16_fast_shape(dt, hd, ptrs, n);
}
// Ends the process where the cuDNN path was forced and cuDNN did not run the call.
static void cudnn_ran(int ran, const char *what, AttnShape s) {
    CHECK(ran || g_path != ATTENTION_CUDA_CUDNN,
          "attention: cuDNN %s forced but not run for B=%d T=%d H=%d Hkv=%d hd=%d (see the log)",
          what, s.B, s.T, s.H, s.Hkv, s.hd);
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
    const void *ptrs[] = {out, q, k, v, lse};  // the tensor-core kernels' 4, and cuDNN's lse
    if (try_cudnn(dt, hd, ptrs, 5)) {
        int ran = attention_cudnn_forward(out, lse, q, k, v, B, T, H, Hkv, hd);
        cudnn_ran(ran, "forward", s);
        if (ran) return;
    }
    if (use_tensor_cores(dt, hd, ptrs, 4)) {
        if (hd == 64) tc_forward_hd<64>(out, lse, q, k, v, s);
        else tc_forward_hd<128>(out, lse, q, k, v, s);
        return;
    }
    CORE_DTYPE_CALL(dt, forward, out, lse, q, k, v, s);
}

void attention_cuda_backward_input(CoreDtype dt, void *dq, void *dk, void *dv, const void *dout,
                                   const void *q, const void *k, const void *v, const void *out,
                                   const float *lse, float *delta, int B, int T, int H, int Hkv,
                                   int hd) {
    AttnShape s = attention_check(B, T, H, Hkv, hd);
    if (B == 0) return;
    // The tensor-core kernels' 7 (16-byte vector loads and stores), and cuDNN's out and lse.
    const void *ptrs[] = {dq, dk, dv, dout, q, k, v, out, lse};
    if (try_cudnn(dt, hd, ptrs, 9)) {
        int ran = attention_cudnn_backward(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, Hkv, hd);
        cudnn_ran(ran, "backward", s);
        if (ran) return;
    }
    if (use_tensor_cores(dt, hd, ptrs, 7)) {
        if (hd == 64) tc_backward_hd<64>(dq, dk, dv, dout, q, k, v, out, lse, delta, s);
        else tc_backward_hd<128>(dq, dk, dv, dout, q, k, v, out, lse, delta, s);
        return;
    }
    CORE_DTYPE_CALL(dt, backward, dq, dk, dv, dout, q, k, v, out, lse, delta, s);
}

int attention_cuda_cudnn_applies(CoreDtype dt, int B, int T, int H, int Hkv, int hd) {
    attention_check(B, T, H, Hkv, hd);
    return dt == CORE_BF16 && (hd == 64 || hd == 128) && attention_cudnn_supports(B, T, H, Hkv, hd);
}
