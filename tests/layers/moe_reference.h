// Plain double-precision references for the router and the MoE layer tests: the math of
// docs/architecture.md §2 written out token by token, with a full sort for the top-k, sharing no code
// with layers/.
#ifndef MOELAB_TESTS_MOE_REFERENCE_H
#define MOELAB_TESTS_MOE_REFERENCE_H

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace moeref {

// One token's routing: scores (E), the chosen ids (K) and their gates (K).
struct Route {
    std::vector<double> s;
    std::vector<int> idx;
    std::vector<double> g;
};

inline Route route(const std::vector<double> &logits, const float *bias, int K, bool softmax,
                   bool norm_topk, double route_scale) {
    int E = (int)logits.size();
    Route r;
    r.s.resize(E);
    if (softmax) {
        double sum = 0;
        for (int i = 0; i < E; i++) sum += std::exp(logits[i]);
        for (int i = 0; i < E; i++) r.s[i] = std::exp(logits[i]) / sum;
    } else {
        for (int i = 0; i < E; i++) r.s[i] = 1.0 / (1.0 + std::exp(-logits[i]));
    }
    // The key is computed in float exactly as the layer does, so that exact ties stay ties.
    std::vector<float> key(E);
    for (int i = 0; i < E; i++) key[i] = (float)r.s[i] + (bias ? bias[i] : 0.0f);
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) {
        return key[a] != key[b] ? key[a] > key[b] : a < b;
    });
    r.idx.assign(order.begin(), order.begin() + K);
    double z = 0;
    for (int k = 0; k < K; k++) z += r.s[r.idx[k]];
    for (int k = 0; k < K; k++)
        r.g.push_back(r.s[r.idx[k]] * (norm_topk ? route_scale / z : route_scale));
    return r;
}

// out (D) = W2 (D, F) (silu(W1 (F, D) x) ⊙ (W3 (F, D) x)) for one row x (D).
inline std::vector<double> ffn(const float *x, const float *w1, const float *w3, const float *w2,
                               int D, int F) {
    std::vector<double> h(F), out(D, 0.0);
    for (int f = 0; f < F; f++) {
        double a = 0, b = 0;
        for (int i = 0; i < D; i++) {
            a += (double)w1[f * D + i] * x[i];
            b += (double)w3[f * D + i] * x[i];
        }
        h[f] = a / (1.0 + std::exp(-a)) * b;
    }
    for (int i = 0; i < D; i++)
        for (int f = 0; f < F; f++) out[i] += (double)w2[i * F + f] * h[f];
    return out;
}

// L_bal of B sequences of T tokens, straight from the formulas: f_i, P_i, Σ_i f_i P_i, mean over B.
inline double balance_loss(const std::vector<Route> &routes, int B, int T, int E, int K) {
    double total = 0;
    for (int b = 0; b < B; b++) {
        std::vector<double> f(E, 0.0), P(E, 0.0);
        for (int t = 0; t < T; t++) {
            const Route &r = routes[b * T + t];
            for (int i : r.idx) f[i] += (double)E / (K * T);
            double z = std::accumulate(r.s.begin(), r.s.end(), 0.0);
            for (int i = 0; i < E; i++) P[i] += r.s[i] / z / T;
        }
        for (int i = 0; i < E; i++) total += f[i] * P[i];
    }
    return total / B;
}

inline std::vector<float> randn(size_t n, float scale, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (float &x : v) x = dist(gen);
    return v;
}

}  // namespace moeref

#endif
