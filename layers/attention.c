// Causal grouped-query softmax attention on the CPU. The forward keeps the (B, H, T, T)
// probabilities; the backward reads them instead of recomputing the softmax. Every product is one
// OpenBLAS sgemm per (sequence, head) over the full T × T square: the causal half above the
// diagonal costs the GEMM nothing it would not gain back (a scalar loop over the triangle ran the
// quickstart's attention at 10 GFLOP/s on 2 cores, 37 % of its step), and its probabilities are
// exact zeros, so it adds nothing to any sum.
#include "layers/attention.h"

#include <cblas.h>
#include <math.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "layers/simd_math.h"

static void attention_check(int B, int T, int H, int Hkv, int hd) {
    CHECK(B >= 0 && T > 0 && H > 0 && Hkv > 0 && hd > 0,
          "attention: bad shape B=%d T=%d H=%d Hkv=%d hd=%d", B, T, H, Hkv, hd);
    CHECK(H % Hkv == 0, "attention: n_heads (%d) must be divisible by n_kv_heads (%d)", H, Hkv);
}

// Head h of sequence b is a (T, hd) matrix: contiguous in q, k, v and their gradients
// (head-major), with rows H·hd apart in out and dout, which BLAS takes as its leading dimension.
void attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                       int B, int T, int H, int Hkv, int hd) {
    attention_check(B, T, H, Hkv, hd);
    const int rep = H / Hkv, ldo = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    // One task per (b, h): it writes its own (T, T) of att and its own head of out only. Inside a
    // parallel region OpenBLAS runs each call on the calling thread.
#pragma omp parallel for
    for (int bh = 0; bh < B * H; bh++) {
        const int b = bh / H, h = bh % H, g = h / rep;
        const float *Q = q + (size_t)bh * T * hd;
        const float *K = k + ((size_t)b * Hkv + g) * T * hd, *V = v + ((size_t)b * Hkv + g) * T * hd;
        float *P = att + (size_t)bh * T * T, *O = out + (size_t)b * T * ldo + (size_t)h * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, Q, hd, K, hd, 0.0f, P, T);
        for (int t = 0; t < T; t++) {
            float *p = P + (size_t)t * T;
            // Subtracting the row max keeps exp() in range; the masked entries are exact zeros.
            // Each loop vectorized (layers/simd_math.h).
            float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
            for (int t2 = 0; t2 <= t; t2++) mx = p[t2] > mx ? p[t2] : mx;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int t2 = 0; t2 <= t; t2++) {
                p[t2] = expf(p[t2] - mx);
                sum += p[t2];
            }
            const float inv = 1.0f / sum;
#pragma omp simd
            for (int t2 = 0; t2 <= t; t2++) p[t2] *= inv;
            for (int t2 = t + 1; t2 < T; t2++) p[t2] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, V, hd, 0.0f, O, ldo);
    }
}

void attention_backward_input(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, const float *att, int B, int T, int H,
                              int Hkv, int hd) {
    attention_check(B, T, H, Hkv, hd);
    const int rep = H / Hkv, ldo = H * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    // One task per (b, kv head): the query heads of a group all add into the same rows of dk and
    // dv, so they run in one task, in a fixed order — no races, and bit-identical sums run to run.
#pragma omp parallel
    {
        float *dS = core_alloc((size_t)T * T * sizeof(float));  // (T, T) ∂L/∂p, then ∂L/∂s
#pragma omp for
        for (int bg = 0; bg < B * Hkv; bg++) {
            const int b = bg / Hkv, g = bg % Hkv;
            const size_t kv = (size_t)bg * T * hd;  // head g of sequence b in k, v, dk, dv
            const float *K = k + kv, *V = v + kv;
            float *dK = dk + kv, *dV = dv + kv;
            for (int h = g * rep; h < (g + 1) * rep; h++) {
                const size_t bh = (size_t)b * H + h;
                const float *P = att + bh * T * T, *Q = q + bh * T * hd;
                const float *dO = dout + (size_t)b * T * ldo + (size_t)h * hd;
                float *dQ = dq + bh * T * hd;
                // dP = dO Vᵀ, then the softmax backward ∂L/∂s = p ⊙ (dp − Σ p ⊙ dp) and the scale.
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dO, ldo, V, hd, 0.0f, dS, T);
                for (int t = 0; t < T; t++) {
                    const float *p = P + (size_t)t * T;
                    float *ds = dS + (size_t)t * T;
                    float pdp = 0.0f;
#pragma omp simd reduction(+ : pdp)
                    for (int t2 = 0; t2 <= t; t2++) pdp += p[t2] * ds[t2];
#pragma omp simd
                    for (int t2 = 0; t2 <= t; t2++) ds[t2] = p[t2] * (ds[t2] - pdp) * scale;
                    for (int t2 = t + 1; t2 < T; t2++) ds[t2] = 0.0f;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, dS, T, K, hd, 1.0f, dQ, hd);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, dS, T, Q, hd, 1.0f, dK, hd);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, dO, ldo, 1.0f, dV, hd);
            }
        }
        core_free(dS);
    }
}
