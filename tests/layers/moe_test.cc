// layers/moe with the local dispatcher: the dispatch plan's row order, the forward against a dense
// token-by-token reference, backward_input + backward_weight of every tensor (router included, with
// the balance loss on) against central finite differences, experts that receive no tokens, shared
// experts S = 0 and S = 2, a gate of exactly 0, the gates' gradient from the experts' row dots
// against dy·ye, determinism, a forward without output (the recompute), and misuse errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

extern "C" {
#include "layers/moe.h"
#include "layers/ops.h"
}
#include "tests/layers/moe_reference.h"

namespace {

// The finite-difference checks run thousands of tiny forwards. With two OpenMP threads on a loaded
// 2-core CI machine every parallel region waits for a descheduled thread, which makes this suite
// 40x slower; --test_env fixes OMP_NUM_THREADS=2 for all suites, so the count is set here.
class OneThread : public testing::Environment {
    void SetUp() override { omp_set_num_threads(1); }
};
testing::Environment *const one_thread = testing::AddGlobalTestEnvironment(new OneThread);

// The sort both host plans share: rows by key, input order within a key, row and item inverse.
TEST(CountingSort, StableByKeyWithInverse) {
    const std::vector<int> key = {2, 0, 2, 1, 0, 2, 3};
    std::vector<int> counts(5, -1), row(key.size(), -1), item(key.size(), -1);
    moe_counting_sort(key.data(), (long)key.size(), 5, counts.data(), row.data(), item.data());
    EXPECT_EQ(counts, (std::vector<int>{2, 1, 3, 1, 0}));
    EXPECT_EQ(item, (std::vector<int>{1, 4, 3, 0, 2, 5, 6}));
    EXPECT_EQ(row, (std::vector<int>{3, 0, 4, 2, 1, 5, 6}));
    // Either output alone, and no items at all.
    std::vector<int> only_row(key.size(), -1);
    moe_counting_sort(key.data(), (long)key.size(), 5, counts.data(), only_row.data(), nullptr);
    EXPECT_EQ(only_row, row);
    moe_counting_sort(nullptr, 0, 5, counts.data(), nullptr, nullptr);
    EXPECT_EQ(counts, (std::vector<int>(5, 0)));
}

TEST(LocalDispatcher, StableCountingSortByExpert) {
    const int N = 3, K = 2, E = 3, D = 2;
    std::vector<int> idx = {2, 0, 0, 2, 1, 0};  // token 0 → 2, 0; token 1 → 0, 2; token 2 → 1, 0
    MoeDispatcher *d = moe_local_dispatcher_create(E);
    ASSERT_EQ(d->n_local, E);
    int n_rows = -1;
    std::vector<int> counts(E, -1);
    MoeDispatchPlan *p = d->plan(d, idx.data(), N, K, &n_rows, counts.data());
    ASSERT_EQ(n_rows, N * K);
    EXPECT_EQ(counts, (std::vector<int>{3, 1, 2}));
    // Rows by expert, then token, then choice: (t, k) = (0,1) (1,0) (2,1) | (2,0) | (0,0) (1,1).
    const std::vector<int> pair = {1, 2, 5, 4, 0, 3};
    std::vector<float> x = {0, 0.5f, 1, 1.5f, 2, 2.5f};  // (N, D): row t = [t, t + .5]
    std::vector<float> rows((size_t)n_rows * D, -1);
    d->to_experts(d, p, x.data(), 0, rows.data(), D);
    for (int r = 0; r < n_rows; r++) {
        EXPECT_EQ(rows[r * D], (float)(pair[r] / K)) << r;
        EXPECT_EQ(rows[r * D + 1], pair[r] / K + 0.5f) << r;
    }
    std::vector<float> nk((size_t)N * K * D);  // (N, K, D): row (t, k) = [10 t + k, -(10 t + k)]
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            nk[(t * K + k) * D] = 10.0f * t + k;
            nk[(t * K + k) * D + 1] = -(10.0f * t + k);
        }
    d->to_experts(d, p, nk.data(), 1, rows.data(), D);
    for (int r = 0; r < n_rows; r++) EXPECT_EQ(rows[r * D], 10.0f * (pair[r] / K) + pair[r] % K) << r;
    std::vector<float> back((size_t)N * K * D, -7);
    d->from_experts(d, p, rows.data(), back.data(), D);
    EXPECT_EQ(back, nk);
    // The row map is the inverse: pair (t, k) sits at row map[t·K + k].
    const int *map = d->row_map(d, p);
    for (int r = 0; r < n_rows; r++) EXPECT_EQ(map[pair[r]], r) << r;
    d->release(d, p);
    d->destroy(d);
}

struct Model {
    MoeShape s;
    std::vector<float> router, bias, w13, w2, sw13, sw2;  // w13: each expert's [W1; W3]
    Model(const MoeShape &shape, unsigned seed) : s(shape) {
        int D = s.D, E = s.E, S = s.S, Fe = s.Fe;
        router = moeref::randn((size_t)E * D, 0.5f, seed);
        bias.assign(E, 0.0f);
        w13 = moeref::randn((size_t)E * 2 * Fe * D, 0.4f, seed + 1);
        w2 = moeref::randn((size_t)E * D * Fe, 0.4f, seed + 3);
        sw13 = moeref::randn((size_t)S * 2 * Fe * D, 0.4f, seed + 4);
        sw2 = moeref::randn((size_t)S * D * Fe, 0.4f, seed + 6);
    }
    MoeParams params() { return MoeParams{router.data(), bias.data(), w13.data(), w2.data(), sw13.data(), sw2.data()}; }
};

MoeShape shape(int S, int softmax, int norm_topk, float route_scale, float alpha) {
    MoeShape s;
    s.D = 8;
    s.E = 6;
    s.K = 2;
    s.S = S;
    s.Fe = 5;
    s.rc = RouterCfg{s.E, s.K, softmax, norm_topk, route_scale};
    s.alpha = alpha;
    return s;
}

std::vector<double> ref_logits(const Model &m, const float *xt) {
    std::vector<double> l(m.s.E, 0.0);
    for (int e = 0; e < m.s.E; e++)
        for (int i = 0; i < m.s.D; i++) l[e] += (double)m.router[e * m.s.D + i] * xt[i];
    return l;
}

moeref::Route ref_route(const Model &m, const float *xt) {
    const RouterCfg &c = m.s.rc;
    return moeref::route(ref_logits(m, xt), m.bias.data(), c.K, c.softmax, c.norm_topk, c.route_scale);
}

// N token rows whose K-th and (K+1)-th keys are at least `margin` apart, so that the finite
// difference steps below cannot change any token's choice. pin (may be empty) sets some of a
// candidate row's values before the check.
std::vector<float> well_routed_inputs(const Model &m, int N, float margin, unsigned seed,
                                      const std::function<void(float *)> &pin = nullptr) {
    int D = m.s.D, E = m.s.E, K = m.s.K;
    std::vector<float> x;
    for (unsigned trial = 0; (int)x.size() < N * D; trial++) {
        if (trial == 100000) {
            ADD_FAILURE() << "no inputs with routing margin " << margin;
            break;
        }
        std::vector<float> row = moeref::randn(D, 1.0f, seed * 1000 + trial);
        if (pin) pin(row.data());
        moeref::Route r = ref_route(m, row.data());
        std::vector<double> key(E);
        for (int i = 0; i < E; i++) key[i] = r.s[i] + m.bias[i];
        std::sort(key.begin(), key.end(), std::greater<double>());
        if (K == E || key[K - 1] - key[K] >= margin) x.insert(x.end(), row.begin(), row.end());
    }
    return x;
}

// The dense reference: every token through its chosen experts and the shared ones, directly.
std::vector<double> ref_forward(const Model &m, const std::vector<float> &x, int B, int T,
                                double *bal) {
    int D = m.s.D, Fe = m.s.Fe, N = B * T;
    std::vector<double> y((size_t)N * D, 0.0);
    std::vector<moeref::Route> routes;
    for (int t = 0; t < N; t++) {
        const float *xt = x.data() + t * D;
        routes.push_back(ref_route(m, xt));
        const moeref::Route &r = routes.back();
        for (int k = 0; k < m.s.K; k++) {
            size_t w = (size_t)r.idx[k] * Fe * D;  // W2's offset; W1 at 2w, W3 right after it
            std::vector<double> o = moeref::ffn(xt, &m.w13[2 * w], &m.w13[2 * w + Fe * D], &m.w2[w], D, Fe);
            for (int i = 0; i < D; i++) y[t * D + i] += r.g[k] * o[i];
        }
        for (int j = 0; j < m.s.S; j++) {
            size_t w = (size_t)j * Fe * D;
            std::vector<double> o = moeref::ffn(xt, &m.sw13[2 * w], &m.sw13[2 * w + Fe * D], &m.sw2[w], D, Fe);
            for (int i = 0; i < D; i++) y[t * D + i] += o[i];
        }
    }
    *bal = moeref::balance_loss(routes, B, T, m.s.E, m.s.K);
    return y;
}

struct Fwd {
    std::vector<float> y;
    std::vector<int> idx;
    std::vector<float> gates;
    float bal;
};

Fwd forward(Model &m, const std::vector<float> &x, int B, int T, MoeDispatcher *d) {
    Fwd f;
    f.y.assign(x.size(), NAN);
    MoeParams p = m.params();
    MoeActs a;
    // The expert counts of training come with the forward: the histogram of the chosen experts.
    std::vector<long> counts(m.s.E, 0), want(m.s.E, 0);
    moe_forward(f.y.data(), &a, x.data(), &m.s, &p, d, B, T, counts.data());
    f.idx.assign(a.idx, a.idx + (size_t)a.N * m.s.K);
    for (int e : f.idx) want[e]++;
    EXPECT_EQ(counts, want);
    f.gates.assign(a.gates, a.gates + (size_t)a.N * m.s.K);
    f.bal = *a.bal_loss;
    moe_acts_free(&a, d);
    return f;
}

// Gradients of every tensor, each buffer starting at `init` to check that the backward accumulates;
// with acc = 0 the experts' gradients start at expert_init instead, and must be written unread.
struct Grads {
    std::vector<float> x, router, w13, w2, sw13, sw2;
};

// Every gradient of a equals b's, bit for bit.
void expect_same(const Grads &a, const Grads &b) {
    EXPECT_EQ(a.x, b.x);
    EXPECT_EQ(a.router, b.router);
    EXPECT_EQ(a.w13, b.w13);
    EXPECT_EQ(a.w2, b.w2);
    EXPECT_EQ(a.sw13, b.sw13);
    EXPECT_EQ(a.sw2, b.sw2);
}

// between (if set) runs after backward_input, before backward_weight.
// output false: the forward computes no y (moe_forward's recompute).
Grads backward(Model &m, const std::vector<float> &x, const std::vector<float> &dy, int B, int T,
               MoeDispatcher *d, float init, int acc = 1, float expert_init = 0.0f,
               const std::function<void()> &between = nullptr, bool output = true) {
    Grads g;
    for (auto [dst, src] : {std::pair{&g.x, &x}, {&g.router, &m.router}, {&g.w13, &m.w13}, {&g.w2, &m.w2},
                            {&g.sw13, &m.sw13}, {&g.sw2, &m.sw2}})
        dst->assign(src->size(), acc || dst == &g.x || dst == &g.router ? init : expert_init);
    std::vector<float> y(x.size());
    MoeParams p = m.params();
    MoeGrads gp = {g.router.data(), g.w13.data(), g.w2.data(), g.sw13.data(), g.sw2.data()};
    MoeActs a;
    moe_forward(output ? y.data() : NULL, &a, x.data(), &m.s, &p, d, B, T, NULL);
    moe_backward_input(g.x.data(), &a, dy.data(), &m.s, &p, d);
    if (between) between();
    moe_backward_weight(&gp, &a, dy.data(), &m.s, d, acc);
    moe_acts_free(&a, d);
    return g;
}

struct Case {
    const char *name;
    MoeShape s;
    std::vector<float> bias;  // empty: zeros
};

std::vector<Case> cases() {
    return {
        {"sigmoid_norm_scaled_S2", shape(2, 0, 1, 2.5f, 0.5f), {}},
        {"softmax_plain_S0", shape(0, 1, 0, 1.0f, 1.0f), {}},
        {"sigmoid_plain_S1_noalpha", shape(1, 0, 0, 1.5f, 0.0f), {}},
        {"softmax_norm_S2", shape(2, 1, 1, 1.0f, 0.3f), {}},
        // Large biases send every token to experts 1 and 3: slots 0, 2, 4 and 5 get no rows.
        {"empty_experts_S2", shape(2, 0, 1, 1.0f, 0.5f), {0, 10, 0, 10, 0, 0}},
    };
}

class MoeLayer : public testing::TestWithParam<Case> {};

// A case's layer (seed, its bias set) with inputs x and output gradients dy (seeds seed + 1 and
// seed + 2) for B sequences of T tokens, and a local dispatcher.
struct Problem {
    static constexpr int B = 2, T = 5, N = B * T;
    Model m;
    std::vector<float> x, dy;
    MoeDispatcher *d;
    Problem(const Case &c, unsigned seed)
        : m(c.s, seed), x(moeref::randn((size_t)N * c.s.D, 1.0f, seed + 1)),
          dy(moeref::randn((size_t)N * c.s.D, 1.0f, seed + 2)), d(moe_local_dispatcher_create(c.s.E)) {
        if (!c.bias.empty()) m.bias = c.bias;
    }
    ~Problem() { d->destroy(d); }
    Problem(const Problem &) = delete;  // it owns d
    Problem &operator=(const Problem &) = delete;
};

TEST_P(MoeLayer, ForwardMatchesDenseReference) {
    const Case &c = GetParam();
    Problem p(c, 11);
    const int B = p.B, T = p.T, N = p.N, D = c.s.D;
    const Model &m = p.m;
    const std::vector<float> &x = p.x;
    Fwd f = forward(p.m, x, B, T, p.d);
    double bal;
    std::vector<double> ref = ref_forward(m, x, B, T, &bal);
    for (int i = 0; i < N * D; i++) EXPECT_NEAR(f.y[i], ref[i], 1e-5 * (1 + std::fabs(ref[i]))) << i;
    EXPECT_NEAR(f.bal, bal, 1e-5);
    for (int t = 0; t < N; t++) {
        moeref::Route r = ref_route(m, x.data() + t * D);
        for (int k = 0; k < c.s.K; k++) EXPECT_EQ(f.idx[t * c.s.K + k], r.idx[k]);
    }
    if (!c.bias.empty())
        for (int t = 0; t < N; t++) {
            std::vector<int> chosen = {f.idx[t * 2], f.idx[t * 2 + 1]};
            std::sort(chosen.begin(), chosen.end());
            EXPECT_EQ(chosen, (std::vector<int>{1, 3}));
        }
}

// Every tensor's gradient g (each buffer started at init) against central finite differences of
// L = Σ dy·y + alpha · L_bal, in double over the layer's float outputs. x must be routed with a margin
// (well_routed_inputs): a step that changes the routing fails.
void expect_finite_differences(Model &m, std::vector<float> &x, const std::vector<float> &dy, int B,
                               int T, MoeDispatcher *d, Grads &g, float init) {
    const std::vector<int> idx0 = forward(m, x, B, T, d).idx;
    auto loss = [&]() {
        Fwd f = forward(m, x, B, T, d);
        EXPECT_EQ(f.idx, idx0) << "a finite-difference step changed the routing";
        double L = m.s.alpha * (double)f.bal;
        for (size_t i = 0; i < f.y.size(); i++) L += (double)dy[i] * f.y[i];
        return L;
    };
    struct Check {
        const char *name;
        std::vector<float> *v, *grad;
    };
    std::vector<Check> checks = {{"x", &x, &g.x},          {"router", &m.router, &g.router},
                                 {"w13", &m.w13, &g.w13},  {"w2", &m.w2, &g.w2},
                                 {"sw13", &m.sw13, &g.sw13}, {"sw2", &m.sw2, &g.sw2}};
    const float eps = 1e-2f;
    for (const Check &ch : checks) {
        double max_err = 0;
        for (size_t i = 0; i < ch.v->size(); i++) {
            float v0 = (*ch.v)[i];
            (*ch.v)[i] = v0 + eps;
            double lp = loss();
            float up = (*ch.v)[i];
            (*ch.v)[i] = v0 - eps;
            double lm = loss();
            float dn = (*ch.v)[i];
            (*ch.v)[i] = v0;
            double fd = (lp - lm) / ((double)up - dn);
            double an = (double)(*ch.grad)[i] - init;
            EXPECT_NEAR(an, fd, 2e-3 + 5e-3 * std::fabs(fd)) << ch.name << "[" << i << "]";
            max_err = std::max(max_err, std::fabs(an - fd));
        }
        testing::Test::RecordProperty(std::string("max_err_") + ch.name, std::to_string(max_err));
    }
}

TEST_P(MoeLayer, BackwardMatchesFiniteDifferences) {
    const Case &c = GetParam();
    const int B = 2, T = 4, N = B * T, D = c.s.D;
    Model m(c.s, 21);
    if (!c.bias.empty()) m.bias = c.bias;
    std::vector<float> x = well_routed_inputs(m, N, 0.05f, 22);
    std::vector<float> dy = moeref::randn((size_t)N * D, 1.0f, 23);
    MoeDispatcher *d = moe_local_dispatcher_create(c.s.E);
    const float init = 0.25f;
    Grads g = backward(m, x, dy, B, T, d, init);
    expect_finite_differences(m, x, dy, B, T, d, g, init);
    if (!c.bias.empty()) {
        // Experts without tokens get exactly no gradient.
        size_t n = (size_t)c.s.Fe * D;
        for (int e : {0, 2, 4, 5})
            for (size_t i = 0; i < n; i++) {
                ASSERT_EQ(g.w13[2 * e * n + i], init);
                ASSERT_EQ(g.w13[2 * e * n + n + i], init);
                ASSERT_EQ(g.w2[e * n + i], init);
            }
    }
    d->destroy(d);
}

TEST_P(MoeLayer, Deterministic) {
    Problem p(GetParam(), 31);
    Fwd f1 = forward(p.m, p.x, p.B, p.T, p.d), f2 = forward(p.m, p.x, p.B, p.T, p.d);
    EXPECT_EQ(f1.y, f2.y);
    EXPECT_EQ(f1.bal, f2.bal);
    expect_same(backward(p.m, p.x, p.dy, p.B, p.T, p.d, 0.0f), backward(p.m, p.x, p.dy, p.B, p.T, p.d, 0.0f));
}

// The first weight backward after a step's zeroing writes the experts' gradients (acc = 0): from
// NaN-filled buffers the same bits as adding to zeros, experts without rows included.
TEST_P(MoeLayer, ExpertWeightGradientsWritten) {
    Problem p(GetParam(), 45);
    expect_same(backward(p.m, p.x, p.dy, p.B, p.T, p.d, 0.0f, 0, NAN),
                backward(p.m, p.x, p.dy, p.B, p.T, p.d, 0.0f));
}

// The local dispatcher's row map lets the layer combine in place; a dispatcher without one (every
// EP dispatcher) moves the rows home first. Both ways give the same bits.
TEST_P(MoeLayer, RowMapEqualsRowsMovedHome) {
    Problem p(GetParam(), 41);
    ASSERT_NE(p.d->row_map, nullptr);
    MoeDispatcher home = *p.d;
    home.row_map = NULL;
    EXPECT_EQ(forward(p.m, p.x, p.B, p.T, p.d).y, forward(p.m, p.x, p.B, p.T, &home).y);
    expect_same(backward(p.m, p.x, p.dy, p.B, p.T, p.d, 0.5f), backward(p.m, p.x, p.dy, p.B, p.T, &home, 0.5f));
}

// The forward's calls that make its output, counted: the CPU backend's and the dispatcher's, each
// counting and then calling the original.
struct Calls {
    int gemms, gates, combines, homes;
};
Calls g_calls;
MoeDispatcher *g_counted;
void count_gemm(void *out, const void *inp, const void *W, const OpsGroups *g, int IC, int OC) {
    g_calls.gemms++;
    layer_ops_cpu.linear_forward_grouped(out, inp, W, g, IC, OC);
}
void count_gate(void *h, const void *ab, long rows, int F) {
    g_calls.gates++;
    layer_ops_cpu.swiglu_act_forward(h, ab, rows, F);
}
void count_combine(void *y, const void *rows, const int *map, const float *gates, int N, int K, int D,
                   const void *add, int n_add) {
    g_calls.combines++;
    layer_ops_cpu.moe_combine(y, rows, map, gates, N, K, D, add, n_add);
}
void count_home(MoeDispatcher *self, MoeDispatchPlan *p, const void *rows, void *dst, int D) {
    g_calls.homes++;
    g_counted->from_experts(g_counted, p, rows, dst, D);
}
const LayerOps counting_ops = [] {
    LayerOps o = layer_ops_cpu;
    o.linear_forward_grouped = count_gemm;
    o.swiglu_act_forward = count_gate;
    o.moe_combine = count_combine;
    return o;
}();

// A forward without y (the recompute before a backward) gives the same gradients bit for bit, with
// the row map and with rows moved home, and skips what makes y: its experts, routed and shared, run
// W13 alone (no gate, no W2), and nothing is combined or moved home.
TEST_P(MoeLayer, ForwardWithoutOutputGivesTheSameGradients) {
    Problem p(GetParam(), 61);
    const int S = p.m.s.S;
    g_counted = p.d;
    MoeDispatcher map = *p.d, home = *p.d;
    map.ops = home.ops = &counting_ops;
    home.row_map = NULL;
    home.from_experts = count_home;
    const MoeParams params = p.m.params();
    for (MoeDispatcher *d : {&map, &home}) {
        SCOPED_TRACE(d == &map ? "row map" : "rows moved home");
        expect_same(backward(p.m, p.x, p.dy, p.B, p.T, d, 0.5f, 1, 0.0f, nullptr, false),
                    backward(p.m, p.x, p.dy, p.B, p.T, d, 0.5f));
        for (bool output : {true, false}) {
            SCOPED_TRACE(output ? "with y" : "without y");
            std::vector<float> y(p.x.size());
            MoeActs a;
            g_calls = {};
            moe_forward(output ? y.data() : NULL, &a, p.x.data(), &p.m.s, &params, d, p.B, p.T, NULL);
            const int n = output ? 1 : 0, moved = d == &home ? n : 0;
            EXPECT_EQ(g_calls.gemms, (1 + S) * (1 + n)) << "W13, and W2 with y, per expert call";
            EXPECT_EQ(g_calls.gates, (1 + S) * n);
            EXPECT_EQ(g_calls.combines, n);
            EXPECT_EQ(g_calls.homes, moved);
            moe_acts_free(&a, d);
        }
    }
}

// A dispatcher whose counts arrive only at plan_wait, as the GPU's do: its plan leaves the caller's
// counts at -1 until plan_wait writes them (the local dispatcher does the work).
// Every plan made, in order (a released plan's address may come back: not a key).
struct Deferred {
    MoeDispatchPlan *plan;
    int *dst;
    std::vector<int> counts;
    bool waited;
};
std::vector<Deferred> g_deferred;
MoeDispatcher *g_inner;
MoeDispatchPlan *deferred_plan(MoeDispatcher *self, const int *idx, int N, int K, int *n_rows, int *counts) {
    std::vector<int> c(self->n_local);
    MoeDispatchPlan *p = g_inner->plan(g_inner, idx, N, K, n_rows, c.data());
    std::fill(counts, counts + self->n_local, -1);
    g_deferred.push_back({p, counts, c, false});
    return p;
}
void deferred_wait(MoeDispatcher *self, MoeDispatchPlan *p) {
    ASSERT_FALSE(g_deferred.empty());
    Deferred &d = g_deferred.back();  // the layer waits for its plan before it makes another
    ASSERT_EQ(d.plan, p);
    EXPECT_FALSE(d.waited) << "plan_wait twice";
    std::copy(d.counts.begin(), d.counts.end(), d.dst);
    d.waited = true;
}

const int *deferred_dev_counts(MoeDispatcher *self, MoeDispatchPlan *p) {
    for (const Deferred &d : g_deferred)
        if (d.plan == p) return d.counts.data();
    ADD_FAILURE() << "dev_counts of a plan the dispatcher did not make";
    return nullptr;
}
bool any_waited() {
    for (const Deferred &d : g_deferred)
        if (d.waited) return true;
    return false;
}

// The local dispatcher d with its host counts held back (-1, which the layer's checks reject) until
// plan_wait, and with dev_counts (the counts in the backend's memory, on the CPU the host's) where
// `dev` is set.
MoeDispatcher deferred(MoeDispatcher *d, bool dev) {
    g_inner = d;
    g_deferred.clear();
    MoeDispatcher late = *d;
    late.plan = deferred_plan;
    late.plan_wait = deferred_wait;
    if (dev) late.dev_counts = deferred_dev_counts;
    return late;
}

// The layer waits for the counts before it uses them, and the shared experts it runs in between
// change no bits: forward and backward equal the local dispatcher's. With dev_counts the forward
// and backward_input run the experts from those and the layer waits only before the weight
// gradients: the same bits again. With device_counts_only as well it never waits.
TEST_P(MoeLayer, CountsArriveAtPlanWait) {
    Problem p(GetParam(), 51);
    const int B = p.B, T = p.T;
    Model &m = p.m;
    const std::vector<float> &x = p.x, &dy = p.dy;
    MoeDispatcher *d = p.d;
    const Fwd f1 = forward(m, x, B, T, d);
    const Grads g1 = backward(m, x, dy, B, T, d, 0.5f);
    for (bool dev : {false, true}) {
        SCOPED_TRACE(dev ? "dev_counts" : "host counts");
        MoeDispatcher late = deferred(d, dev);
        Fwd f2 = forward(m, x, B, T, &late);
        EXPECT_EQ(f1.y, f2.y);
        EXPECT_EQ(any_waited(), !dev) << "a forward alone";
        g_deferred.clear();
        Grads g2 = backward(m, x, dy, B, T, &late, 0.5f, 1, 0.0f,
                            [&] { EXPECT_EQ(any_waited(), !dev) << "by the end of backward_input"; });
        expect_same(g1, g2);
        ASSERT_EQ(g_deferred.size(), 1u);
        EXPECT_TRUE(g_deferred[0].waited) << "the weight gradients ran without the host counts";
    }
    // device_counts_only (a step captured in a CUDA graph): nothing waits, the weight gradients
    // included, and the bits are the same again.
    MoeDispatcher late = deferred(d, true);
    late.device_counts_only = 1;
    Fwd f3 = forward(m, x, B, T, &late);
    EXPECT_EQ(f1.y, f3.y);
    g_deferred.clear();
    expect_same(g1, backward(m, x, dy, B, T, &late, 0.5f));
    ASSERT_EQ(g_deferred.size(), 1u);
    EXPECT_FALSE(any_waited()) << "a layer whose dispatcher keeps its counts on the device waited";
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeLayer, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<Case> &i) { return std::string(i.param.name); });

// With dy = 0 the only gradient is alpha · ∂L_bal, which reaches x and the router weights through the
// scores and nothing else.
TEST(MoeLayerBalance, BalanceLossAloneDrivesTheRouterGradient) {
    const int B = 2, T = 4, N = B * T;
    MoeShape s = shape(1, 0, 1, 1.0f, 2.0f);
    Model m(s, 41);
    std::vector<float> x = well_routed_inputs(m, N, 0.05f, 42);
    std::vector<float> dy((size_t)N * s.D, 0.0f);
    MoeDispatcher *d = moe_local_dispatcher_create(s.E);
    Grads g = backward(m, x, dy, B, T, d, 0.0f);
    for (float v : g.w13) ASSERT_EQ(v, 0.0f);
    for (float v : g.sw2) ASSERT_EQ(v, 0.0f);
    double norm = 0;
    const float eps = 1e-2f;
    for (size_t i = 0; i < m.router.size(); i++) {
        float v0 = m.router[i];
        m.router[i] = v0 + eps;
        double lp = forward(m, x, B, T, d).bal;
        m.router[i] = v0 - eps;
        double lm = forward(m, x, B, T, d).bal;
        m.router[i] = v0;
        double fd = s.alpha * (lp - lm) / (2.0 * eps);
        EXPECT_NEAR(g.router[i], fd, 2e-4 + 1e-2 * std::fabs(fd)) << i;
        norm += fd * fd;
    }
    EXPECT_GT(std::sqrt(norm), 1e-2);  // the check above is not vacuous
    d->destroy(d);
}

// A gate of exactly 0 from the router: a balancing bias picks expert 1 for every token while its
// score is 0 in fp32 (logit about -300: sigmoid and softmax both underflow). Its gradient is then
// taken as 0 (moe.c: every use of it in the router's backward is multiplied by s = 0), never 0/0,
// and every gradient still matches finite differences, sigmoid and softmax, norm_topk on and off.
TEST(MoeLayerZeroGate, GradientsMatchFiniteDifferences) {
    for (int softmax : {0, 1})
        for (int norm_topk : {0, 1}) {
            SCOPED_TRACE(testing::Message() << "softmax " << softmax << " norm_topk " << norm_topk);
            const int B = 2, T = 3, N = B * T;
            MoeShape s = shape(1, softmax, norm_topk, 1.5f, 0.5f);
            Model m(s, 61);
            m.bias = {0, 10, 0, 0, 0, 0};
            m.router[1 * s.D + 0] = -300.0f;  // with x[0] = 1: logit 1 near -300
            std::vector<float> x = well_routed_inputs(m, N, 0.05f, 62, [](float *row) { row[0] = 1.0f; });
            std::vector<float> dy = moeref::randn((size_t)N * s.D, 1.0f, 63);
            MoeDispatcher *d = moe_local_dispatcher_create(s.E);
            Fwd f = forward(m, x, B, T, d);
            for (int t = 0; t < N; t++) {
                ASSERT_EQ(f.idx[t * s.K], 1) << t;
                ASSERT_EQ(f.gates[t * s.K], 0.0f) << t;  // the case under test
                ASSERT_GT(f.gates[t * s.K + 1], 0.0f) << t;
            }
            const float init = 0.25f;
            Grads g = backward(m, x, dy, B, T, d, init);
            expect_finite_differences(m, x, dy, B, T, d, g, init);
            d->destroy(d);
        }
}

// The gates' gradient without the experts' outputs (moe.c): (dh·h) / g from the experts' backward
// equals the combine's dot dy · ye that the layer took before it stopped keeping ye, within fp32
// rounding, for ordinary gates and tiny ones (1e-20, 1e-30: d(ye) = g·dy stays a normal float); a
// gate of exactly 0 gets 0, not 0/0 = NaN. The same bits through the row map and with the dots moved
// home as 4-byte rows (the layer's way without a row map).
TEST(MoeGateGrad, EqualsDyDotExpertOutput) {
    const LayerOps *o = &layer_ops_cpu;
    const int N = 6, K = 2, E = 3, D = 8, Fe = 5;
    const std::vector<int> idx = {0, 1, 2, 0, 1, 2, 0, 2, 1, 0, 2, 1};  // (N, K)
    const std::vector<float> gates = {0.7f, 0.3f, 1e-20f, 1.0f, 0.0f, 0.45f,
                                      1e-30f, 2.5f, 0.0f, 0.0f, 1e-6f, 0.9f};
    const size_t nw = (size_t)E * Fe * D;
    std::vector<float> x = moeref::randn((size_t)N * D, 1.0f, 71), dy = moeref::randn((size_t)N * D, 1.0f, 72);
    std::vector<float> w13 = moeref::randn(2 * nw, 0.4f, 73), w2 = moeref::randn(nw, 0.4f, 75);
    MoeDispatcher *d = moe_local_dispatcher_create(E);
    std::vector<int> counts(E);
    int R = 0;
    MoeDispatchPlan *p = d->plan(d, idx.data(), N, K, &R, counts.data());
    const int *map = d->row_map(d, p);
    std::vector<float> xe((size_t)R * D), ye((size_t)R * D), ab((size_t)R * 2 * Fe), h((size_t)R * Fe),
        dab(ab.size()), dh(h.size()), dye(ye.size()), dxe(ye.size());
    SwigluActs acts = {ab.data(), h.data(), dab.data()};
    d->to_experts(d, p, x.data(), 0, xe.data(), D);
    const OpsGroups groups = ops_groups_host(counts.data(), E);
    ops_swiglu_forward(o, ye.data(), &acts, xe.data(), w13.data(), w2.data(), &groups, D, Fe);

    std::vector<float> dots(R, NAN), home((size_t)N * K, NAN), dg(home.size(), NAN), dg_home(home.size(), NAN);
    o->moe_combine_backward(dye.data(), dy.data(), map, gates.data(), N, K, D);
    ops_swiglu_backward_input(o, dxe.data(), &acts, dh.data(), dots.data(), dye.data(), w13.data(), w2.data(),
                              &groups, D, Fe, 0);
    o->moe_gate_grad(dg.data(), dots.data(), map, gates.data(), N, K);
    d->from_experts(d, p, dots.data(), home.data(), 1);
    o->moe_gate_grad(dg_home.data(), home.data(), nullptr, gates.data(), N, K);
    EXPECT_EQ(0, memcmp(dg.data(), dg_home.data(), dg.size() * sizeof(float)));

    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            const int tk = t * K, r = map[t * K + k];
            // The old way, in double, and the size of its terms: fp32 rounding is relative to that.
            double ref = 0, scale = 0;
            for (int i = 0; i < D; i++) {
                ref += (double)dy[t * D + i] * ye[(size_t)r * D + i];
                for (int f = 0; f < Fe; f++)
                    scale += std::fabs((double)dy[t * D + i] * w2[((size_t)idx[tk + k] * D + i) * Fe + f] *
                                       h[(size_t)r * Fe + f]);
            }
            SCOPED_TRACE(testing::Message() << "gate " << gates[tk + k]);
            if (gates[tk + k] == 0.0f) EXPECT_EQ(dg[tk + k], 0.0f);
            else EXPECT_NEAR(dg[tk + k], ref, 1e-6 * scale);
        }
    d->release(d, p);
    d->destroy(d);
}

TEST(MoeLayerDeathTest, Misuse) {
    MoeShape s = shape(0, 0, 1, 1.0f, 0.0f);
    Model m(s, 51);
    MoeParams p = m.params();
    MoeGrads gp = {};
    std::vector<float> x((size_t)2 * s.D, 0.5f), y(x.size());
    MoeDispatcher *d = moe_local_dispatcher_create(s.E);
    EXPECT_EXIT(
        {
            MoeActs a;
            moe_forward(y.data(), &a, x.data(), &s, &p, d, 1, 2, NULL);
            moe_backward_weight(&gp, &a, y.data(), &s, d, 1);
        },
        testing::ExitedWithCode(1), "needs moe_backward_input first");
    MoeShape bad = s;
    bad.rc.K = 3;
    EXPECT_EXIT(
        {
            MoeActs a;
            moe_forward(y.data(), &a, x.data(), &bad, &p, d, 1, 2, NULL);
        },
        testing::ExitedWithCode(1), "router config .* disagrees");
    std::vector<int> idx = {0, 6};
    int n_rows, counts[6];
    EXPECT_EXIT(d->plan(d, idx.data(), 1, 2, &n_rows, counts), testing::ExitedWithCode(1),
                "expert id 6 out of range");
    // Counts kept on the device need a dispatcher that has them there (the CPU's has not), and
    // nobody may then ask for them on the host.
    d->device_counts_only = 1;
    EXPECT_EXIT(
        {
            MoeActs a;
            moe_forward(y.data(), &a, x.data(), &s, &p, d, 1, 2, NULL);
        },
        testing::ExitedWithCode(1), "device_counts_only without dev_counts");
    EXPECT_EXIT(moe_plan_now(d, idx.data(), 1, 1, &n_rows, counts), testing::ExitedWithCode(1),
                "keeps its counts on the device");
    d->destroy(d);
}

// Bad arguments that no caller in the engine passes but the API takes: a negative balance-loss
// weight (it would reward imbalance), an empty batch, a dispatcher without experts, a routing of
// K = 0 choices and a grouped call with a negative row count all stop with their message instead of
// running on.
TEST(MoeLayerDeathTest, BadArguments) {
    MoeShape s = shape(0, 0, 1, 1.0f, 0.0f);
    Model m(s, 52);
    MoeParams p = m.params();
    std::vector<float> x((size_t)2 * s.D, 0.5f), y(x.size());
    MoeDispatcher *d = moe_local_dispatcher_create(s.E);
    MoeShape neg = shape(0, 0, 1, 1.0f, -0.01f);
    EXPECT_EXIT(
        {
            MoeActs a;
            moe_forward(y.data(), &a, x.data(), &neg, &p, d, 1, 2, NULL);
        },
        testing::ExitedWithCode(1), "balance loss weight alpha must be >= 0, got -0.01");
    EXPECT_EXIT(
        {
            MoeActs a;
            moe_forward(y.data(), &a, x.data(), &s, &p, d, 0, 2, NULL);
        },
        testing::ExitedWithCode(1), "need B >= 1 and T >= 1, got B = 0, T = 2");
    EXPECT_EXIT(moe_local_dispatcher_create(0), testing::ExitedWithCode(1), "need at least one expert, got E = 0");
    std::vector<int> idx = {0, 1};
    int n_rows, counts[6];
    EXPECT_EXIT(d->plan(d, idx.data(), 2, 0, &n_rows, counts), testing::ExitedWithCode(1),
                "bad routing shape N = 2, K = 0");
    const int rows[3] = {2, -1, 3};
    EXPECT_EXIT(ops_groups_host(rows, 3), testing::ExitedWithCode(1), "group 1 has -1 rows");
    d->destroy(d);
}

// The CPU table's expert-parallel plan (layers/ops.h ep_plan, the arithmetic of the GPU kernel):
// slots 0..3 hold experts 0, 1, 2 and a replica of 0; rank me = 1 starts each expert's replicas one
// further. An id outside [0, E) is counted in no slot and sorts after every slot.
TEST(MoeDispatchOps, EpPlanOnTheHost) {
    const int E = 3, R = 4, maxcnt = 2, me = 1;
    const int logcnt[E] = {2, 1, 1};
    const int log2phy[E * maxcnt] = {0, 3, 1, -1, 2, -1};
    const std::vector<int> idx = {0, 2, 0, 5, 1, 0};
    std::vector<int> send_pos(idx.size()), counts(R);
    layer_ops_cpu.ep_plan(send_pos.data(), counts.data(), idx.data(), (long)idx.size(), E, log2phy, logcnt,
                          maxcnt, me, R);
    // Expert 0's pairs (0, 2, 5) take replicas (j + 1) mod 2: slots 3, 0, 3.
    EXPECT_EQ(counts, std::vector<int>({1, 1, 1, 2}));
    EXPECT_EQ(send_pos, std::vector<int>({3, 2, 0, 5, 1, 4}));
    // Fewer slots than experts is no placement: both tables stop (moe_cuda_ep_plan's check).
    EXPECT_EXIT(layer_ops_cpu.ep_plan(send_pos.data(), counts.data(), idx.data(), (long)idx.size(), 5,
                                      log2phy, logcnt, maxcnt, me, R),
                testing::ExitedWithCode(1), "bad EP placement E = 5, R = 4");
}

// The receive permute's map (ep_recv_pos): 2 ranks x 2 slots, blocks b = j·2 + s arriving
// source-major and going slot-major; an empty block shares the next one's offset and maps nothing.
TEST(MoeDispatchOps, EpRecvPosOnTheHost) {
    const int B = 4;
    const int table[2 * B] = {0, 1, 3, 5,   // arrival offsets of 1, 2, 2, 1 rows
                              0, 3, 1, 5};  // expert offsets: slot 0 (b0, b2), then slot 1 (b1, b3)
    std::vector<int> pos(6);
    layer_ops_cpu.ep_recv_pos(pos.data(), table, B, 6);
    EXPECT_EQ(pos, std::vector<int>({0, 3, 4, 1, 2, 5}));
    const int empty[2 * B] = {0, 2, 3, 3, 0, 2, 2, 3};  // block 2 has no rows
    layer_ops_cpu.ep_recv_pos(pos.data(), empty, B, 6);
    EXPECT_EQ(pos, std::vector<int>({0, 1, 2, 3, 4, 5}));
}

}  // namespace
