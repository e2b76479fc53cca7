// The MoE layer over the expert-parallel dispatcher with token chunks (config key ep_chunks), under
// mpirun (CI: 1, 2 and 4 ranks). With C = 2 and 3 chunks every rank's forward output, input
// gradient, router and shared-expert gradients must be the bits of C = 1 (per token the math is the
// same); the routed experts' weight gradients add their rows up chunk by chunk, C partial sums
// instead of one, so they may differ by fp32 reassociation only: within 1e-6 of the tensor's
// largest value. Cases: N not divisible by C (7 tokens), chunks of one token (3 tokens, C = 3),
// empty chunks on a rank with one token while the other ranks have more,
// every pair to one expert on the last rank (every other rank receives zero rows from every chunk),
// a hot expert on rank 0 next to random choices, the exchanges left in flight (the default) and run
// to their end (ep_overlap = 0). Then C = 3 against the one-process run over every rank's tokens
// with the local dispatcher: the rank's outputs and input gradients, its slice of the expert
// gradients, and the router gradient summed over the ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

extern "C" {
#include "layers/moe.h"
#include "parallel/comm.h"
#include "parallel/ep_dispatch.h"
}
#include "tests/layers/moe_reference.h"

namespace {

const int D = 8, E = 8, Fe = 5, S = 1;

MoeShape shape(int K) {
    MoeShape s;
    s.D = D;
    s.E = E;
    s.K = K;
    s.S = S;
    s.Fe = Fe;
    s.rc = RouterCfg{E, K, 1, 1, 1.0f};
    s.alpha = 0.0f;
    return s;
}

// The same weights on every rank; hot >= 0: a balancing bias that makes expert `hot` every token's
// first choice.
struct Weights {
    std::vector<float> router, bias, w13, w2, sw13, sw2;
    explicit Weights(int hot) {
        router = moeref::randn((size_t)E * D, 0.5f, 11);
        bias.assign(E, 0.0f);
        if (hot >= 0) bias[hot] = 100.0f;
        w13 = moeref::randn((size_t)E * 2 * Fe * D, 0.4f, 12);
        w2 = moeref::randn((size_t)E * D * Fe, 0.4f, 14);
        sw13 = moeref::randn((size_t)S * 2 * Fe * D, 0.4f, 15);
        sw2 = moeref::randn((size_t)S * D * Fe, 0.4f, 17);
    }
};

struct Out {
    std::vector<float> y, dx, router, w13, w2, sw13, sw2;
};

// Forward, backward_input and backward_weight of B sequences of T tokens x (with upstream gradient
// dy) through d, whose slots start at expert `first`. The experts' gradients start as NaN: acc = 0
// must write them.
Out run(MoeDispatcher *d, const Weights &w, int K, int first, const std::vector<float> &x,
        const std::vector<float> &dy, int B, int T) {
    const MoeShape s = shape(K);
    const int L = d->n_local;
    const size_t we = (size_t)first * Fe * D, n = (size_t)L * Fe * D;
    Out o;
    o.y.assign(x.size(), NAN);
    o.dx.assign(x.size(), 0.0f);
    o.router.assign(w.router.size(), 0.0f);
    o.w13.assign(2 * n, NAN);
    o.w2.assign(n, NAN);
    o.sw13.assign(w.sw13.size(), NAN);
    o.sw2.assign(w.sw2.size(), NAN);
    std::vector<float> bias = w.bias;
    MoeParams p = {w.router.data(), bias.data(), w.w13.data() + 2 * we, w.w2.data() + we, w.sw13.data(),
                   w.sw2.data()};
    MoeGrads g = {o.router.data(), o.w13.data(), o.w2.data(), o.sw13.data(), o.sw2.data()};
    MoeActs a;
    moe_forward(o.y.data(), &a, x.data(), &s, &p, d, B, T, NULL);
    // The chunks the layer ran are the dispatcher's, split as moe.h says (else every comparison
    // with one chunk below would hold with the setting ignored).
    const int C = d->chunks > 1 ? d->chunks : 1, N = B * T;
    EXPECT_EQ(a.C, C);
    for (int c = 0; c < a.C && a.C == C; c++) {
        EXPECT_EQ(a.ch[c].t0, (int)((long)c * N / C)) << "chunk " << c;
        EXPECT_EQ(a.ch[c].n, (int)((long)(c + 1) * N / C) - (int)((long)c * N / C)) << "chunk " << c;
    }
    moe_backward_input(o.dx.data(), &a, dy.data(), &s, &p, d);
    moe_backward_weight(&g, &a, dy.data(), &s, d, 0);
    moe_acts_free(&a, d);
    return o;
}

// |a - b| <= tol · max(max |b|, floor) elementwise, and no NaN.
void expect_close(const std::vector<float> &a, const std::vector<float> &b, double tol, const char *what,
                  double floor = 0.0) {
    ASSERT_EQ(a.size(), b.size()) << what;
    double scale = floor;
    for (float v : b) scale = std::max(scale, (double)std::fabs(v));
    for (size_t i = 0; i < a.size(); i++) {
        ASSERT_FALSE(std::isnan(a[i])) << what << "[" << i << "]";
        EXPECT_LE(std::fabs((double)a[i] - b[i]), tol * scale) << what << "[" << i << "]: " << a[i] << " vs " << b[i];
    }
}

// This rank's T tokens and their upstream gradient.
std::vector<float> tokens(int T, unsigned seed) {
    return moeref::randn((size_t)T * D, 1.0f, seed + 31u * (unsigned)comm_world()->rank);
}

struct Case {
    int T, K, hot;
    bool per_rank;  // rank r has T + r tokens instead of T
};

// hot = E - 1: every pair (K = 1) goes to the last rank's last slot; hot = 0 with K = 2: rank 0's
// first slot receives every token next to a random second choice. T = 1 + r: rank 0's one token
// leaves it with empty chunks (as in a sampling pass) while the others' chunks are not.
const Case CASES[] = {{7, 2, -1, false}, {3, 2, -1, false}, {5, 1, E - 1, false}, {7, 2, 0, false},
                      {1, 2, -1, true}};

TEST(EpChunks, ChunksEqualOneChunk) {
    Comm *w = comm_world();
    for (int overlap = 1; overlap >= 0; overlap--)
        for (const Case &c : CASES) {
            const int T = c.T + (c.per_rank ? w->rank : 0);
            SCOPED_TRACE(testing::Message() << "T = " << T << ", K = " << c.K << ", hot = " << c.hot
                                            << ", ep_overlap = " << overlap);
            const Weights wt(c.hot);
            const std::vector<float> x = tokens(T, 1), dy = tokens(T, 2);
            MoeDispatcher *d = ep_dispatcher_create(w, E);
            ep_dispatcher_set_overlap(d, overlap);
            const int first = w->rank * d->n_local;
            const Out one = run(d, wt, c.K, first, x, dy, 1, T);
            for (int C = 2; C <= 3; C++) {
                SCOPED_TRACE(testing::Message() << "ep_chunks = " << C);
                ep_dispatcher_set_chunks(d, C);
                const Out o = run(d, wt, c.K, first, x, dy, 1, T);
                // Within 1e-6 of the largest element, not to the bit: OpenBLAS's sgemm may round a
                // row differently with fewer rows beside it once the inner dimension exceeds 8
                // (measured: 10 differs at 4-11 rows), and a chunk's experts multiply fewer rows;
                // the [W1; W3] backward's inner dimension is 2·Fe = 10. A row in the wrong place
                // would be off by its own size.
                expect_close(o.y, one.y, 1e-6, "y");
                expect_close(o.dx, one.dx, 1e-6, "dx");
                // Where one expert takes every token (hot) the router's gradient is a cancellation
                // down to 1e-9, rounding noise: it is judged at the scale of dx, which the same dy
                // drives.
                double dx_scale = 0.0;
                for (float v : one.dx) dx_scale = std::max(dx_scale, (double)std::fabs(v));
                expect_close(o.router, one.router, 1e-6, "router", dx_scale);
                EXPECT_EQ(o.sw13, one.sw13);
                EXPECT_EQ(o.sw2, one.sw2);
                expect_close(o.w13, one.w13, 1e-6, "w13");
                expect_close(o.w2, one.w2, 1e-6, "w2");
            }
            d->destroy(d);
        }
}

// With every pair on one expert no other slot has a row in any chunk: the chunked experts' weight
// gradients there must come out zero (written, not left NaN), as with one chunk.
TEST(EpChunks, IdleSlotsGetZeroGradients) {
    Comm *w = comm_world();
    const Weights wt(E - 1);
    const std::vector<float> x = tokens(5, 3), dy = tokens(5, 4);
    MoeDispatcher *d = ep_dispatcher_create(w, E);
    ep_dispatcher_set_chunks(d, 3);
    const int first = w->rank * d->n_local;
    const Out o = run(d, wt, 1, first, x, dy, 1, 5);
    for (int s = 0; s < d->n_local; s++) {
        const bool hot = first + s == E - 1;
        for (int i = 0; i < 2 * Fe * D; i++) {
            const float v = o.w13[(size_t)s * 2 * Fe * D + i];
            if (hot) EXPECT_TRUE(std::isfinite(v));
            else EXPECT_EQ(v, 0.0f) << "slot " << s;
        }
    }
    d->destroy(d);
}

// C = 3 on every rank against one process with the local dispatcher over all ranks' tokens (B = P
// sequences): outputs and input gradients per token, this rank's expert slice, and the router
// gradient summed over the ranks, within 1e-5 (the one-process GEMMs sum other row groupings).
TEST(EpChunks, MatchesTheOneProcessRun) {
    Comm *w = comm_world();
    const int P = w->size, T = 7, K = 2;
    const Weights wt(-1);
    std::vector<float> x = tokens(T, 5), dy = tokens(T, 6);
    std::vector<float> xa((size_t)P * T * D), dya((size_t)P * T * D);
    comm_allgather(w, x.data(), xa.data(), x.size(), COMM_F32);
    comm_allgather(w, dy.data(), dya.data(), dy.size(), COMM_F32);

    MoeDispatcher *d = ep_dispatcher_create(w, E);
    ep_dispatcher_set_chunks(d, 3);
    const int first = w->rank * d->n_local;
    Out o = run(d, wt, K, first, x, dy, 1, T);
    MoeDispatcher *loc = moe_local_dispatcher_create(E);
    const Out all = run(loc, wt, K, 0, xa, dya, P, T);

    const size_t mine = (size_t)w->rank * T * D, ne = (size_t)d->n_local * Fe * D, at = (size_t)first * Fe * D;
    expect_close(o.y, std::vector<float>(all.y.begin() + mine, all.y.begin() + mine + x.size()), 1e-5, "y");
    expect_close(o.dx, std::vector<float>(all.dx.begin() + mine, all.dx.begin() + mine + x.size()), 1e-5, "dx");
    expect_close(o.w13, std::vector<float>(all.w13.begin() + 2 * at, all.w13.begin() + 2 * (at + ne)), 1e-5, "w13");
    expect_close(o.w2, std::vector<float>(all.w2.begin() + at, all.w2.begin() + at + ne), 1e-5, "w2");
    comm_allreduce(w, o.router.data(), o.router.size(), COMM_F32, COMM_SUM);
    expect_close(o.router, all.router, 1e-5, "router");
    loc->destroy(loc);
    d->destroy(d);
}

}  // namespace
