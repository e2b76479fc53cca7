// Causal grouped-query softmax attention on the CPU. The forward keeps the (B, H, T, T)
// probabilities; the backward reads them instead of recomputing the softmax.
#include "layers/attention.h"

#include <math.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

static void attention_check(int B, int T, int H, int Hkv, int hd) {
    CHECK(B >= 0 && T > 0 && H > 0 && Hkv > 0 && hd > 0,
          "attention: bad shape B=%d T=%d H=%d Hkv=%d hd=%d", B, T, H, Hkv, hd);
    CHECK(H % Hkv == 0, "attention: n_heads (%d) must be divisible by n_kv_heads (%d)", H, Hkv);
}

void attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                       int B, int T, int H, int Hkv, int hd) {
    attention_check(B, T, H, Hkv, hd);
    int rep = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    // One task per query row (b, h, t): it writes its own row of att and of out only.
#pragma omp parallel for
    for (long r = 0; r < (long)B * H * T; r++) {
        int t = (int)(r % T), h = (int)(r / T % H), b = (int)(r / ((long)T * H));
        int g = h / rep;
        const float *qr = q + (((size_t)b * T + t) * H + h) * hd;
        float *p = att + (((size_t)b * H + h) * T + t) * T;
        float *o = out + (((size_t)b * T + t) * H + h) * hd;
        float mx = -INFINITY;
        for (int t2 = 0; t2 <= t; t2++) {
            const float *kr = k + (((size_t)b * T + t2) * Hkv + g) * hd;
            float s = 0.0f;
            for (int i = 0; i < hd; i++) s += qr[i] * kr[i];
            p[t2] = s * scale;
            if (p[t2] > mx) mx = p[t2];
        }
        // Subtracting the row max keeps exp() in range; the masked entries are exact zeros.
        float sum = 0.0f;
        for (int t2 = 0; t2 <= t; t2++) {
            p[t2] = expf(p[t2] - mx);
            sum += p[t2];
        }
        float inv = 1.0f / sum;
        for (int t2 = 0; t2 <= t; t2++) p[t2] *= inv;
        for (int t2 = t + 1; t2 < T; t2++) p[t2] = 0.0f;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int t2 = 0; t2 <= t; t2++) {
            const float *vr = v + (((size_t)b * T + t2) * Hkv + g) * hd;
            for (int i = 0; i < hd; i++) o[i] += p[t2] * vr[i];
        }
    }
}

void attention_backward_input(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, const float *att, int B, int T, int H,
                              int Hkv, int hd) {
    attention_check(B, T, H, Hkv, hd);
    int rep = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    // One task per (b, kv head): the query heads of a group all add into the same rows of dk and
    // dv, so they run in one task, in a fixed order — no races, and bit-identical sums run to run.
#pragma omp parallel
    {
        float *dp = core_alloc((size_t)T * sizeof(float));  // (T) ∂L/∂p of one query row
#pragma omp for
        for (int bg = 0; bg < B * Hkv; bg++) {
            int b = bg / Hkv, g = bg % Hkv;
            for (int h = g * rep; h < (g + 1) * rep; h++) {
                for (int t = 0; t < T; t++) {
                    const float *p = att + (((size_t)b * H + h) * T + t) * T;
                    const float *qr = q + (((size_t)b * T + t) * H + h) * hd;
                    const float *dor = dout + (((size_t)b * T + t) * H + h) * hd;
                    float *dqr = dq + (((size_t)b * T + t) * H + h) * hd;
                    // Softmax backward: ∂L/∂s = p ⊙ (dp − Σ p ⊙ dp), then the 1/sqrt(hd) scale.
                    float pdp = 0.0f;
                    for (int t2 = 0; t2 <= t; t2++) {
                        const float *vr = v + (((size_t)b * T + t2) * Hkv + g) * hd;
                        float s = 0.0f;
                        for (int i = 0; i < hd; i++) s += dor[i] * vr[i];
                        dp[t2] = s;
                        pdp += p[t2] * s;
                    }
                    for (int t2 = 0; t2 <= t; t2++) {
                        size_t kv = (((size_t)b * T + t2) * Hkv + g) * hd;
                        float ds = p[t2] * (dp[t2] - pdp) * scale;
                        for (int i = 0; i < hd; i++) {
                            dqr[i] += ds * k[kv + i];
                            dk[kv + i] += ds * qr[i];
                            dv[kv + i] += p[t2] * dor[i];
                        }
                    }
                }
            }
        }
        core_free(dp);
    }
}
