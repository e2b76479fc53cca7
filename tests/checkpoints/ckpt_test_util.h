// Helpers shared by the checkpoint tests: a tiny MoE config, temporary directories, a model (or
// pipeline stage) and optimizer state whose every value depends only on its logical identity (so that
// models of different expert- and pipeline-parallel layouts hold comparable values), and comparisons.
#ifndef MOELAB_TESTS_CHECKPOINTS_CKPT_TEST_UTIL_H
#define MOELAB_TESTS_CHECKPOINTS_CKPT_TEST_UTIL_H

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "checkpoints/ckpt.h"
#include "framework/core/log.h"
#include "framework/core/rng.h"
#include "framework/model.h"
#include "framework/optimizer.h"
#include "framework/train.h"
#include "tests/util/tmp.h"
}

namespace ckpt_test {

// Two MoE layers after one dense layer, 4 experts, one shared expert.
inline MoeConfig tiny() {
    MoeConfig c;
    config_defaults(&c);
    c.V = 32; c.D = 16; c.L = 3; c.H = 4; c.Hkv = 2; c.T = 8; c.n_dense_layers = 1;
    c.F = 24; c.E = 4; c.K = 2; c.S = 1; c.Fe = 8; c.batch_size = 2; c.seed = 5;
    c.steps = 12; c.warmup_steps = 3; c.bias_rate = 0.01f; c.balance_alpha = 0.01f;
    return c;
}

inline bool file_exists(const std::string &p) {
    struct stat sb;
    return stat(p.c_str(), &sb) == 0;
}

// A value that depends on (tensor name, logical element index, salt) only.
inline float logical_value(const char *name, size_t logical_index, uint32_t salt) {
    uint32_t h = rng_name_hash(name) ^ (salt * 0x9E3779B9u);
    uint64_t x = ((uint64_t)h << 32) ^ (uint64_t)logical_index;
    x = (x ^ (x >> 31)) * 0x7FB5D329728EA185ull;
    x = (x ^ (x >> 27)) * 0x81DADEF4BC2DD44Dull;
    return (float)((double)(x >> 40) / (double)(1ull << 24)) - 0.5f;
}

// Fills `buf` (values or a moment of m's registry) with logical_value, through m's expert slots.
inline void fill_logical(const Model *m, float *buf, uint32_t salt) {
    for (int i = 0; i < m->reg.n; i++) {
        const ParamInfo *p = &m->reg.p[i];
        size_t row = p->numel / (size_t)p->local_rows;
        size_t first = p->kind == PARAM_EXPERT ? (size_t)m->ep_rank * (size_t)m->n_local : 0;
        for (size_t j = 0; j < p->numel; j++)
            buf[p->offset + j] = logical_value(p->name, first * row + j, salt);
    }
}

// A model of the given EP layout (layers [l0, l1): one pipeline stage; l1 = -1: to the last layer)
// with every value (weights, biases, moments) set by identity.
struct State {
    Model *m;
    AdamW o;
    CkptView v;  // what view() last returned
};

// What the checkpoint code stores of s: its model's and optimizer's own (host) buffers. Rebuilt on
// every call, since a State is copied around (the view points at s.o.t).
inline const CkptView *view(State &s) {
    s.v = CkptView{&s.m->cfg, &s.m->reg, s.m->reg.data, s.o.m, s.o.v, &s.o.t};
    return &s.v;
}

// The identity layout of m's expert slots.
inline CkptShard shard_of(const Model *m) { return ckpt_shard_identity(m->ep_rank, m->ep_size, m->cfg.E); }

// `moelab ckpt verify` / `inspect` as tools/cmd_ckpt.c runs them: against the model the checkpoint's
// stored config builds, with one expert slot per rank (the smallest layout that has every tensor).
inline void verify(const char *path, FILE *out) {
    MoeConfig c;
    ckpt_read_config(path, &c);
    Model *ref = model_create(&c, 0, c.E);
    ckpt_verify(path, &ref->reg, out);
    model_free(ref);
}

inline void inspect(const char *path, FILE *out) {
    MoeConfig c;
    ckpt_read_config(path, &c);
    Model *ref = model_create(&c, 0, c.E);
    ckpt_inspect(path, &ref->reg, optim_lr, out);
    model_free(ref);
}

inline State blank_state(const MoeConfig &c, int ep_rank, int ep_size, int l0 = 0, int l1 = -1) {
    State s;
    s.m = model_create_stage(&c, ep_rank, ep_size, l0, l1 < 0 ? c.L : l1, ModelStateBytes{0, 0});
    adamw_init(&s.o, &s.m->reg);
    return s;
}

inline State make_state(const MoeConfig &c, int ep_rank, int ep_size, int l0 = 0, int l1 = -1) {
    State s = blank_state(c, ep_rank, ep_size, l0, l1);
    fill_logical(s.m, s.m->reg.data, 1);
    fill_logical(s.m, s.o.m, 2);
    fill_logical(s.m, s.o.v, 3);
    // Second moments are >= 0 and AdamW's t at most the step, as the loader requires: every save
    // of these states names a step of 7 or more (or none is loaded back).
    for (size_t j = 0; j < s.o.total; j++) s.o.v[j] += 0.5f;
    s.o.t = 7;
    return s;
}

inline void free_state(State &s) {
    adamw_free(&s.o);
    model_free(s.m);
}

// Every tensor of a and b bit-identical (same layout).
inline void expect_same(const State &a, const State &b) {
    ASSERT_EQ(a.m->reg.total, b.m->reg.total);
    for (int i = 0; i < a.m->reg.n; i++) {
        const ParamInfo *p = &a.m->reg.p[i];
        const size_t n = p->numel * sizeof(float);
        EXPECT_EQ(0, memcmp(a.m->reg.data + p->offset, b.m->reg.data + p->offset, n)) << p->name;
        if (p->kind == PARAM_BUFFER) continue;
        EXPECT_EQ(0, memcmp(a.o.m + p->offset, b.o.m + p->offset, n)) << "m of " << p->name;
        EXPECT_EQ(0, memcmp(a.o.v + p->offset, b.o.v + p->offset, n)) << "v of " << p->name;
    }
    EXPECT_EQ(a.o.t, b.o.t);
}

// Deterministic tokens for training step `step`: (A, B, T + 1).
inline std::vector<int> step_tokens(const MoeConfig &c, int step) {
    std::vector<int> t((size_t)c.grad_accum * c.batch_size * (c.T + 1));
    RngStream r = rng_stream(99, (uint32_t)step);
    for (int &x : t) x = (int)(rng_next_u32(&r) % (uint32_t)c.V);
    return t;
}

}  // namespace ckpt_test

#endif
