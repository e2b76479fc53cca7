// Shared helpers of the layer tests: seeded random tensors, the scalar objective L = Σ out ⊙ R in
// double, central finite differences of it, and a gradient comparison that is checked to be able
// to fail (a sign flip of one typical gradient entry must break it).
#ifndef MOELAB_TESTS_LAYERS_GRADCHECK_H
#define MOELAB_TESTS_LAYERS_GRADCHECK_H

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

using Vec = std::vector<float>;

// n values uniform in [-scale, scale), a fixed function of seed (mt19937 is fully specified).
inline Vec rand_vec(size_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937 gen(seed);
    Vec v(n);
    for (auto &x : v) x = scale * (2.0f * (float)(gen() / 4294967296.0) - 1.0f);
    return v;
}

// Σ out ⊙ R in double.
inline double objective(const Vec &out, const Vec &R) {
    double s = 0.0;
    for (size_t i = 0; i < out.size(); i++) s += (double)out[i] * R[i];
    return s;
}

// Central differences of L() with respect to every element of x (x is restored afterwards). The
// step is the float-rounded one actually taken, so rounding x ± eps to float costs no accuracy.
inline std::vector<double> fd_grad(Vec &x, double eps, const std::function<double()> &L) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        float x0 = x[i];
        float xp = (float)(x0 + eps), xm = (float)(x0 - eps);
        x[i] = xp;
        double lp = L();
        x[i] = xm;
        double lm = L();
        x[i] = x0;
        g[i] = (lp - lm) / ((double)xp - (double)xm);
    }
    return g;
}

// max_i |a_i − f_i| / max_i |f_i|; infinite where a value is not finite (std::max drops a NaN: a NaN
// gradient entry scored 0, review 2026-12-05).
inline double grad_err(const float *a, const std::vector<double> &f) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < f.size(); i++) {
        if (!std::isfinite(a[i]) || !std::isfinite(f[i])) return INFINITY;
        num = std::max(num, std::fabs((double)a[i] - f[i]));
        den = std::max(den, std::fabs(f[i]));
    }
    return num / den;
}

// Expects the analytic gradient a to match the finite differences f within tol (relative to the
// largest entry), and that the same comparison rejects a copy of a with the sign of its
// median-magnitude nonzero entry flipped, so a passing result means something.
inline void expect_grad(const char *what, const float *a, const std::vector<double> &f,
                        double tol) {
    double err = grad_err(a, f);
    ::testing::Test::RecordProperty(std::string(what) + "_rel_err", std::to_string(err));
    EXPECT_LT(err, tol) << what << ": analytic gradient differs from finite differences";
    std::vector<size_t> nz;
    for (size_t i = 0; i < f.size(); i++)
        if (f[i] != 0.0) nz.push_back(i);
    ASSERT_FALSE(nz.empty()) << what << ": the gradient is zero everywhere";
    std::nth_element(nz.begin(), nz.begin() + nz.size() / 2, nz.end(),
                     [&](size_t i, size_t j) { return std::fabs(f[i]) < std::fabs(f[j]); });
    Vec wrong(a, a + f.size());
    wrong[nz[nz.size() / 2]] *= -1.0f;
    EXPECT_GT(grad_err(wrong.data(), f), tol) << what << ": the check could not catch a sign flip";
}

// Expects got (float) to equal ref (double) within tol · (1 + |ref|) elementwise.
inline void expect_close(const char *what, const Vec &got, const std::vector<double> &ref,
                         double tol) {
    ASSERT_EQ(got.size(), ref.size()) << what;
    for (size_t i = 0; i < ref.size(); i++)
        ASSERT_NEAR(got[i], ref[i], tol * (1.0 + std::fabs(ref[i]))) << what << " at " << i;
}

inline bool bit_equal(const Vec &a, const Vec &b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs f with n OpenMP threads, then restores the previous setting.
inline void with_threads(int n, const std::function<void()> &f) {
    int old = omp_get_max_threads();
    omp_set_num_threads(n);
    f();
    omp_set_num_threads(old);
}

#endif
