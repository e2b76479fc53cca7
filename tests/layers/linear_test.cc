// layers/linear: forward against a double-precision loop, both backward calls against finite
// differences, accumulation (+=), zero rows, determinism and bad shapes.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/linear.h"
}

namespace {

const int N = 7, IC = 13, OC = 5;

TEST(Linear, ForwardMatchesReference) {
    Vec x = rand_vec(N * IC, 1), W = rand_vec(OC * IC, 2), out(N * OC);
    linear_forward(out.data(), x.data(), W.data(), N, IC, OC);
    std::vector<double> ref(N * OC, 0.0);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++)
            for (int i = 0; i < IC; i++) ref[n * OC + o] += (double)x[n * IC + i] * W[o * IC + i];
    expect_close("out", out, ref, 1e-5);
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
    Vec x = rand_vec(N * IC, 3), W = rand_vec(OC * IC, 4), R = rand_vec(N * OC, 5), out(N * OC);
    auto L = [&] {
        linear_forward(out.data(), x.data(), W.data(), N, IC, OC);
        return objective(out, R);
    };
    Vec dx(N * IC), dW(OC * IC);
    linear_backward_input(dx.data(), R.data(), W.data(), N, IC, OC);
    linear_backward_weight(dW.data(), R.data(), x.data(), N, IC, OC);
    expect_grad("dinp", dx.data(), fd_grad(x, 1e-2, L), 1e-3);
    expect_grad("dW", dW.data(), fd_grad(W, 1e-2, L), 1e-3);
}

TEST(Linear, BackwardAccumulates) {
    Vec x = rand_vec(N * IC, 6), W = rand_vec(OC * IC, 7), dout = rand_vec(N * OC, 8);
    Vec dx1(N * IC), dW1(OC * IC), dx2(N * IC), dW2(OC * IC);
    linear_backward_input(dx1.data(), dout.data(), W.data(), N, IC, OC);
    linear_backward_weight(dW1.data(), dout.data(), x.data(), N, IC, OC);
    for (int rep = 0; rep < 2; rep++) {
        linear_backward_input(dx2.data(), dout.data(), W.data(), N, IC, OC);
        linear_backward_weight(dW2.data(), dout.data(), x.data(), N, IC, OC);
    }
    for (int i = 0; i < N * IC; i++) EXPECT_FLOAT_EQ(dx2[i], 2.0f * dx1[i]);
    for (int i = 0; i < OC * IC; i++) EXPECT_FLOAT_EQ(dW2[i], 2.0f * dW1[i]);
}

TEST(Linear, ZeroRowsIsANoOp) {
    // An expert that received no tokens calls the layer with N = 0 and no buffers.
    Vec W = rand_vec(OC * IC, 9), dW = rand_vec(OC * IC, 10), dW0 = dW;
    linear_forward(nullptr, nullptr, W.data(), 0, IC, OC);
    linear_backward_input(nullptr, nullptr, W.data(), 0, IC, OC);
    linear_backward_weight(dW.data(), nullptr, nullptr, 0, IC, OC);
    EXPECT_TRUE(bit_equal(dW, dW0));
}

TEST(Linear, Deterministic) {
    const int n = 64, ic = 96, oc = 80;
    Vec x = rand_vec(n * ic, 11), W = rand_vec(oc * ic, 12), dout = rand_vec(n * oc, 13);
    Vec out[2], dx[2], dW[2];
    for (int r = 0; r < 2; r++) {
        out[r].assign(n * oc, 0.0f), dx[r].assign(n * ic, 0.0f), dW[r].assign(oc * ic, 0.0f);
        linear_forward(out[r].data(), x.data(), W.data(), n, ic, oc);
        linear_backward_input(dx[r].data(), dout.data(), W.data(), n, ic, oc);
        linear_backward_weight(dW[r].data(), dout.data(), x.data(), n, ic, oc);
    }
    EXPECT_TRUE(bit_equal(out[0], out[1]));
    EXPECT_TRUE(bit_equal(dx[0], dx[1]));
    EXPECT_TRUE(bit_equal(dW[0], dW[1]));
}

TEST(LinearDeath, BadShape) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec W(4);
    EXPECT_EXIT(linear_forward(nullptr, nullptr, W.data(), 1, 0, 4), ::testing::ExitedWithCode(1),
                "linear: bad shape N=1 IC=0 OC=4");
    EXPECT_EXIT(linear_forward(nullptr, nullptr, W.data(), 1, 4, 0), ::testing::ExitedWithCode(1),
                "linear: bad shape N=1 IC=4 OC=0");
}

}  // namespace
