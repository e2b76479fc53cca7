// Test helpers for comparing a parallel layout with the one-process run: the tiny model those tests
// train, a deterministic global batch, and the relative error they judge tensors by.
#ifndef MOELAB_TESTS_UTIL_LAYOUT_UTIL_H
#define MOELAB_TESTS_UTIL_LAYOUT_UTIL_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" {
#include "framework/core/config.h"
#include "framework/core/rng.h"
}

// A 2-layer MoE (the first layer dense) small enough for 8 ranks on 2 cores; suites change what they
// need (layers, experts, batch) on top.
inline MoeConfig layout_tiny_config(int steps) {
    MoeConfig c;
    config_defaults(&c);
    c.V = 32; c.D = 16; c.L = 2; c.H = 4; c.Hkv = 2; c.T = 8; c.n_dense_layers = 1;
    c.F = 24; c.E = 8; c.K = 2; c.S = 1; c.Fe = 8; c.batch_size = 2; c.seed = 5;
    c.balance_alpha = 0.01f; c.bias_rate = 0.01f; c.lr = 5e-3f; c.warmup_steps = 1; c.steps = steps;
    // AdamW's eps at 1e-6, not the default 1e-8: in the first steps some of these tiny experts'
    // gradients come near eps, where m / (√v + eps) turns the 1e-7 relative rounding differences of
    // the layouts' other row groupings into 1e-5 of the weights (docs/parallel.md §6; measured on
    // EP 4's experts.w13: 1.43e-5 at 1e-8, under 1e-6 at 1e-6). The layouts' arithmetic is what these
    // suites judge, at the same bounds.
    c.adam_eps = 1e-6f;
    return c;
}

// The global batch of a step: M micro-batches (M, B, T + 1) of random tokens, the same on every rank.
inline std::vector<int> layout_global_batch(const MoeConfig &c, int M, uint64_t seed, uint32_t stream) {
    RngStream r = rng_stream(seed, stream);
    std::vector<int> t((size_t)M * c.batch_size * (c.T + 1));
    for (int &x : t) x = (int)(rng_next_u32(&r) % (uint32_t)c.V);
    return t;
}

// max |a − b| over a tensor, relative to max |b| (elements near zero are judged at the tensor's scale);
// infinite where either holds a value that is not finite (fmax drops a NaN: an all-NaN result
// scored 0 and passed every tolerance, review 2026-12-05).
inline double layout_rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
        num = std::fmax(num, std::fabs((double)a[i] - b[i]));
        den = std::fmax(den, std::fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}

#endif
