// Top-k router on the CPU (see router.h): scores, the choice of K experts with the tie rule, gates,
// their backward through the sigmoid/softmax Jacobian, the sequence balance loss and the
// auxiliary-loss-free bias update of docs/architecture.md §2.
#include "layers/router.h"

#include <math.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

void router_check_cfg(const RouterCfg *c) {
    CHECK(c->E >= 1 && c->K >= 1 && c->K <= c->E,
          "router: need 1 <= K <= E, got E = %d, K = %d", c->E, c->K);
}

// s (E) = sigmoid(l) or softmax(l) of one token's logits l (E).
static void scores_row(float *s, const float *l, int E, int softmax) {
    if (!softmax) {
        for (int i = 0; i < E; i++) s[i] = 1.0f / (1.0f + expf(-l[i]));
        return;
    }
    // Subtracting the maximum keeps expf finite; the result is unchanged.
    float mx = l[0];
    for (int i = 1; i < E; i++) mx = fmaxf(mx, l[i]);
    float sum = 0.0f;
    for (int i = 0; i < E; i++) {
        s[i] = expf(l[i] - mx);
        sum += s[i];
    }
    for (int i = 0; i < E; i++) s[i] /= sum;
}

// The selection key of expert i: score plus balancing bias (bias may be NULL).
static float key_of(const float *s, const float *bias, int i) { return s[i] + (bias ? bias[i] : 0.0f); }

// idx (K) = the K experts with the largest s_i + b_i, in descending order. An insertion into the
// sorted prefix that only passes entries with a strictly smaller key keeps experts of equal key in
// id order, which is the tie rule (ties go to the lower expert id).
static void topk_row(int *idx, const float *s, const float *bias, int E, int K) {
    int n = 0;
    for (int i = 0; i < E; i++) {
        float key = key_of(s, bias, i);
        if (n == K) {
            if (!(key > key_of(s, bias, idx[K - 1]))) continue;
            n--;
        }
        int j = n;
        while (j > 0 && key > key_of(s, bias, idx[j - 1])) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
        n++;
    }
}

void router_forward(float *scores, int *idx, float *gates, const float *logits, const float *bias,
                    const RouterCfg *c, int N, long *counts) {
    router_check_cfg(c);
    int E = c->E, K = c->K;
    for (int t = 0; t < N; t++) {
        float *s = scores + (long)t * E;
        int *id = idx + (long)t * K;
        float *g = gates + (long)t * K;
        scores_row(s, logits + (long)t * E, E, c->softmax);
        topk_row(id, s, bias, E, K);
        float z = 0.0f;
        for (int k = 0; k < K; k++) z += s[id[k]];
        float scale = c->norm_topk ? c->route_scale / z : c->route_scale;
        for (int k = 0; k < K; k++) g[k] = s[id[k]] * scale;
        if (counts)
            for (int k = 0; k < K; k++) counts[id[k]]++;
    }
}

void router_backward_input(float *dlogits, const float *dgates, const float *dscores,
                           const float *scores, const int *idx, const RouterCfg *c, int N) {
    router_check_cfg(c);
    int E = c->E, K = c->K;
    float *ds = core_alloc((size_t)E * sizeof(float));  // (E) ∂L/∂scores of one token
    for (int t = 0; t < N; t++) {
        const float *s = scores + (long)t * E;
        const int *id = idx + (long)t * K;
        const float *dg = dgates + (long)t * K;
        if (dscores) memcpy(ds, dscores + (long)t * E, (size_t)E * sizeof(float));
        else memset(ds, 0, (size_t)E * sizeof(float));
        // Gates: g_k = rs · s_k / z with z = Σ_chosen s_j (z ≡ 1 without norm_topk), so
        // ∂L/∂s_k = rs · (dg_k / z − Σ_j dg_j s_j / z²) for each chosen k.
        float z = 1.0f, dot = 0.0f;
        if (c->norm_topk) {
            z = 0.0f;
            for (int k = 0; k < K; k++) {
                z += s[id[k]];
                dot += dg[k] * s[id[k]];
            }
        }
        for (int k = 0; k < K; k++)
            ds[id[k]] += c->route_scale * (dg[k] / z - (c->norm_topk ? dot / (z * z) : 0.0f));
        // Back through the score function: sigmoid' = s(1 − s); softmax: s_i (ds_i − Σ_j ds_j s_j).
        float *dl = dlogits + (long)t * E;
        if (!c->softmax) {
            for (int i = 0; i < E; i++) dl[i] += ds[i] * s[i] * (1.0f - s[i]);
        } else {
            float sds = 0.0f;
            for (int i = 0; i < E; i++) sds += ds[i] * s[i];
            for (int i = 0; i < E; i++) dl[i] += s[i] * (ds[i] - sds);
        }
    }
    core_free(ds);
}

static void check_balance_args(const int *idx, int B, int T, int E, int K) {
    CHECK(B >= 1 && T >= 1 && E >= 1 && K >= 1 && K <= E,
          "router balance loss: bad shape B = %d, T = %d, E = %d, K = %d", B, T, E, K);
    for (long r = 0; r < (long)B * T * K; r++)
        CHECK(idx[r] >= 0 && idx[r] < E, "router balance loss: expert id %d out of range [0, %d)",
              idx[r], E);
}

// f (E) = E/(K·T) · #{t : i chosen for t} over the T tokens of one sequence (idx (T, K)).
static void balance_f(float *f, const int *idx, int T, int E, int K) {
    memset(f, 0, (size_t)E * sizeof(float));
    for (long r = 0; r < (long)T * K; r++) f[idx[r]] += 1.0f;
    float scale = (float)E / ((float)K * (float)T);
    for (int i = 0; i < E; i++) f[i] *= scale;
}

float router_balance_loss(const float *scores, const int *idx, int B, int T, int E, int K) {
    check_balance_args(idx, B, T, E, K);
    float *f = core_alloc((size_t)E * sizeof(float));  // (E)
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        balance_f(f, idx + (long)b * T * K, T, E, K);
        // Σ_i f_i P_i = (1/T) Σ_t Σ_i f_i s_{i,t} / Σ_j s_{j,t}: no (E) array for P is needed.
        double seq = 0.0;
        for (int t = 0; t < T; t++) {
            const float *s = scores + ((long)b * T + t) * E;
            double z = 0.0, fs = 0.0;
            for (int i = 0; i < E; i++) {
                z += s[i];
                fs += (double)f[i] * s[i];
            }
            seq += fs / z;
        }
        total += seq / T;
    }
    core_free(f);
    return (float)(total / B);
}

void router_balance_loss_backward(float *dscores, float dloss, const float *scores, const int *idx,
                                  int B, int T, int E, int K) {
    check_balance_args(idx, B, T, E, K);
    float *f = core_alloc((size_t)E * sizeof(float));  // (E)
    // L = 1/(B·T) Σ_b Σ_t Σ_i f_i s_{i,t} / z_t with z_t = Σ_j s_{j,t}, f held constant:
    // ∂L/∂s_{j,t} = 1/(B·T) · (f_j / z_t − Σ_i f_i s_{i,t} / z_t²).
    float w = dloss / ((float)B * (float)T);
    for (int b = 0; b < B; b++) {
        balance_f(f, idx + (long)b * T * K, T, E, K);
        for (int t = 0; t < T; t++) {
            long row = ((long)b * T + t) * E;
            const float *s = scores + row;
            float z = 0.0f, fs = 0.0f;
            for (int i = 0; i < E; i++) {
                z += s[i];
                fs += f[i] * s[i];
            }
            for (int j = 0; j < E; j++) dscores[row + j] += w * (f[j] / z - fs / (z * z));
        }
    }
    core_free(f);
}

void router_bias_update(float *bias, const long *counts, int E, int K, long n_tokens, float gamma) {
    double mean = (double)K * (double)n_tokens / E;  // c̄
    for (int i = 0; i < E; i++) {
        double gap = mean - (double)counts[i];
        bias[i] += gamma * (float)((gap > 0) - (gap < 0));
    }
}
