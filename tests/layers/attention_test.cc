// layers/attention: forward and probabilities against a double-precision loop for H/Hkv = 1, 2, 4
// (which also pins the layouts: head-major q, k, v, token-major out), causality, grouped-query
// heads as multi-head attention with repeated k/v heads, the backward against finite differences,
// accumulation, bit-identical results whatever the thread count.
#include "tests/layers/gradcheck.h"

extern "C" {
#include "layers/attention.h"
}

namespace {

const int B = 2, T = 5, H = 4, hd = 6;

struct Shape {
    int Hkv;
    size_t nq() const { return (size_t)B * T * H * hd; }
    size_t nkv() const { return (size_t)B * T * Hkv * hd; }
    size_t natt() const { return (size_t)B * H * T * T; }
};
const Shape shapes[] = {{H}, {H / 2}, {1}};  // H/Hkv = 1, 2, 4

// out (B, T, H, hd) and att (B, H, T, T) in double, straight from the formula, with q (B, H, T,
// hd), k and v (B, Hkv, T, hd) head-major (attention.h).
void reference(const Vec &q, const Vec &k, const Vec &v, int Hkv, std::vector<double> &out,
               std::vector<double> &att) {
    out.assign((size_t)B * T * H * hd, 0.0);
    att.assign((size_t)B * H * T * T, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / Hkv);
            for (int t = 0; t < T; t++) {
                std::vector<double> s(t + 1);
                double mx = -1e300, sum = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    s[t2] = 0.0;
                    for (int i = 0; i < hd; i++)
                        s[t2] += (double)q[((b * H + h) * T + t) * hd + i] *
                                 k[((b * Hkv + g) * T + t2) * hd + i];
                    s[t2] /= std::sqrt((double)hd);
                    mx = std::max(mx, s[t2]);
                }
                for (int t2 = 0; t2 <= t; t2++) sum += std::exp(s[t2] - mx);
                for (int t2 = 0; t2 <= t; t2++) {
                    double p = std::exp(s[t2] - mx) / sum;
                    att[((b * H + h) * T + t) * T + t2] = p;
                    for (int i = 0; i < hd; i++)
                        out[((b * T + t) * H + h) * hd + i] +=
                            p * v[((b * Hkv + g) * T + t2) * hd + i];
                }
            }
        }
}

TEST(Attention, ForwardMatchesReference) {
    for (const Shape &s : shapes) {
        SCOPED_TRACE("Hkv = " + std::to_string(s.Hkv));
        Vec q = rand_vec(s.nq(), 1, 2.0f), k = rand_vec(s.nkv(), 2, 2.0f), v = rand_vec(s.nkv(), 3);
        Vec out(s.nq()), att(s.natt());
        attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, s.Hkv, hd);
        std::vector<double> ref_out, ref_att;
        reference(q, k, v, s.Hkv, ref_out, ref_att);
        expect_close("out", out, ref_out, 1e-5);
        expect_close("att", att, ref_att, 1e-5);
        for (int r = 0; r < B * H * T; r++) {
            int t = r % T;
            double sum = 0.0;
            for (int t2 = 0; t2 < T; t2++) {
                if (t2 > t) {
                    EXPECT_EQ(att[(size_t)r * T + t2], 0.0f);
                }
                sum += att[(size_t)r * T + t2];
            }
            EXPECT_NEAR(sum, 1.0, 1e-6);
        }
    }
}

TEST(Attention, IsCausal) {
    // Changing every head's q, k and v at position t0 leaves all earlier rows bit-identical.
    const int Hkv = 2, t0 = 3;
    Shape s{Hkv};
    Vec q = rand_vec(s.nq(), 4), k = rand_vec(s.nkv(), 5), v = rand_vec(s.nkv(), 6);
    Vec out1(s.nq()), att1(s.natt()), out2(s.nq()), att2(s.natt());
    attention_forward(out1.data(), att1.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, hd);
    for (int b = 0; b < B; b++) {  // head-major q, k, v: position t0 of each head
        for (int h = 0; h < H; h++)
            for (int i = 0; i < hd; i++) q[((b * H + h) * T + t0) * hd + i] += 0.5f;
        for (int g = 0; g < Hkv; g++)
            for (int i = 0; i < hd; i++) {
                k[((b * Hkv + g) * T + t0) * hd + i] += 0.5f;
                v[((b * Hkv + g) * T + t0) * hd + i] -= 0.5f;
            }
    }
    attention_forward(out2.data(), att2.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, hd);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < H * hd; i++) {
                size_t o = (size_t)(b * T + t) * H * hd + i;
                if (t < t0)
                    EXPECT_EQ(out1[o], out2[o]) << "b " << b << " t " << t;
                else
                    EXPECT_NE(out1[o], out2[o]) << "b " << b << " t " << t;
            }
}

TEST(Attention, GroupedQueryEqualsRepeatedKeyValueHeads) {
    // GQA with Hkv = 2 is multi-head attention whose kv head h is the GQA head h / 2; its dk and dv
    // are the sums over the two query heads of each group.
    const int Hkv = 2, rep = H / Hkv;
    Shape g{Hkv}, m{H};
    Vec q = rand_vec(g.nq(), 7), k = rand_vec(g.nkv(), 8), v = rand_vec(g.nkv(), 9);
    Vec dout = rand_vec(g.nq(), 10), km(m.nkv()), vm(m.nkv());
    const int th = T * hd;  // one head-major head
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < th; i++) {
                km[(b * H + h) * th + i] = k[(b * Hkv + h / rep) * th + i];
                vm[(b * H + h) * th + i] = v[(b * Hkv + h / rep) * th + i];
            }
    Vec og(g.nq()), ag(g.natt()), om(m.nq()), am(m.natt());
    attention_forward(og.data(), ag.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, hd);
    attention_forward(om.data(), am.data(), q.data(), km.data(), vm.data(), B, T, H, H, hd);
    EXPECT_TRUE(bit_equal(og, om));
    EXPECT_TRUE(bit_equal(ag, am));
    Vec dqg(g.nq()), dkg(g.nkv()), dvg(g.nkv()), dqm(m.nq()), dkm(m.nkv()), dvm(m.nkv());
    attention_backward_input(dqg.data(), dkg.data(), dvg.data(), dout.data(), q.data(), k.data(),
                             v.data(), ag.data(), B, T, H, Hkv, hd);
    attention_backward_input(dqm.data(), dkm.data(), dvm.data(), dout.data(), q.data(), km.data(),
                             vm.data(), am.data(), B, T, H, H, hd);
    EXPECT_TRUE(bit_equal(dqg, dqm));
    for (int b = 0; b < B; b++)
        for (int j = 0; j < Hkv; j++)
            for (int i = 0; i < th; i++) {
                double sk = 0.0, sv = 0.0;
                for (int h = j * rep; h < (j + 1) * rep; h++) {
                    sk += dkm[(b * H + h) * th + i];
                    sv += dvm[(b * H + h) * th + i];
                }
                EXPECT_NEAR(dkg[(b * Hkv + j) * th + i], sk, 1e-6);
                EXPECT_NEAR(dvg[(b * Hkv + j) * th + i], sv, 1e-6);
            }
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
    for (const Shape &s : shapes) {
        SCOPED_TRACE("Hkv = " + std::to_string(s.Hkv));
        Vec q = rand_vec(s.nq(), 11, 2.0f), k = rand_vec(s.nkv(), 12, 2.0f),
            v = rand_vec(s.nkv(), 13);
        Vec R = rand_vec(s.nq(), 14), out(s.nq()), att(s.natt());
        auto L = [&] {
            attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, s.Hkv,
                              hd);
            return objective(out, R);
        };
        L();
        Vec dq(s.nq()), dk(s.nkv()), dv(s.nkv());
        attention_backward_input(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(),
                                 v.data(), att.data(), B, T, H, s.Hkv, hd);
        expect_grad("dq", dq.data(), fd_grad(q, 1e-2, L), 1e-3);
        expect_grad("dk", dk.data(), fd_grad(k, 1e-2, L), 1e-3);
        expect_grad("dv", dv.data(), fd_grad(v, 1e-2, L), 1e-3);
    }
}

TEST(Attention, BackwardAccumulates) {
    Shape s{2};
    Vec q = rand_vec(s.nq(), 15), k = rand_vec(s.nkv(), 16), v = rand_vec(s.nkv(), 17);
    Vec dout = rand_vec(s.nq(), 18), out(s.nq()), att(s.natt());
    attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, s.Hkv, hd);
    Vec g1[3] = {Vec(s.nq()), Vec(s.nkv()), Vec(s.nkv())},
        g2[3] = {Vec(s.nq()), Vec(s.nkv()), Vec(s.nkv())};
    attention_backward_input(g1[0].data(), g1[1].data(), g1[2].data(), dout.data(), q.data(),
                             k.data(), v.data(), att.data(), B, T, H, s.Hkv, hd);
    for (int r = 0; r < 2; r++)
        attention_backward_input(g2[0].data(), g2[1].data(), g2[2].data(), dout.data(), q.data(),
                                 k.data(), v.data(), att.data(), B, T, H, s.Hkv, hd);
    // The second call adds term by term into a nonzero buffer, so the sums round differently from
    // 2 × the first: equal up to float rounding, and far from the 1 × that "=" would give.
    for (int j = 0; j < 3; j++)
        for (size_t i = 0; i < g1[j].size(); i++) EXPECT_NEAR(g2[j][i], 2.0f * g1[j][i], 1e-6);
}

TEST(Attention, BitIdenticalAcrossThreadCounts) {
    const int b = 3, t_len = 17, h = 4, hkv = 2, d = 8;
    size_t nq = (size_t)b * t_len * h * d, nkv = (size_t)b * t_len * hkv * d,
           na = (size_t)b * h * t_len * t_len;
    Vec q = rand_vec(nq, 19), k = rand_vec(nkv, 20), v = rand_vec(nkv, 21), dout = rand_vec(nq, 22);
    Vec res[3][5];
    for (int r = 0; r < 3; r++) {
        Vec &out = res[r][0], &att = res[r][1], &dq = res[r][2], &dk = res[r][3], &dv = res[r][4];
        out.assign(nq, 0.0f), att.assign(na, 0.0f), dq.assign(nq, 0.0f), dk.assign(nkv, 0.0f);
        dv.assign(nkv, 0.0f);
        with_threads(r + 1, [&] {
            attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), b, t_len, h,
                              hkv, d);
            attention_backward_input(dq.data(), dk.data(), dv.data(), dout.data(), q.data(),
                                     k.data(), v.data(), att.data(), b, t_len, h, hkv, d);
        });
    }
    for (int r = 1; r < 3; r++)
        for (int j = 0; j < 5; j++)
            EXPECT_TRUE(bit_equal(res[0][j], res[r][j])) << r + 1 << " threads, tensor " << j;
}

TEST(AttentionDeath, HeadsNotDivisible) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    Vec x(64);
    EXPECT_EXIT(attention_forward(x.data(), x.data(), x.data(), x.data(), x.data(), 1, 1, 4, 3, 2),
                ::testing::ExitedWithCode(1),
                "attention: n_heads \\(4\\) must be divisible by n_kv_heads \\(3\\)");
}

}  // namespace
