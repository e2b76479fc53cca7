// GPU kernels (layers/*.cu, framework/core/cuda.cu) against the CPU layers (layers/*.c) on fresh
// random inputs, in fp32 and bf16. Error = ‖gpu − cpu‖ / ‖cpu‖: fp32 must stay far below 1e-3,
// bf16 below 1e-2, and a NaN anywhere fails. Outputs that a call overwrites are poisoned with NaN
// first (an element the kernel misses fails); outputs that it accumulates into start random.
// The CPU side reads the same values the GPU holds (inputs rounded to bf16 where the GPU has bf16).
// Runs on a GPU machine only (tagged manual): see tools/gpu_run.sh.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "framework/core/cuda.h"
#include "framework/core/config.h"
#include "framework/core/log.h"
#include "framework/optimizer.h"
#include "framework/core/params.h"
#include "layers/adamw_cuda.h"
#include "layers/attention.h"
#include "layers/attention_cuda.h"
#include "layers/attention_cudnn_cuda.h"
#include "layers/crossentropy.h"
#include "layers/crossentropy_cuda.h"
#include "layers/embedding.h"
#include "layers/embedding_cuda.h"
#include "layers/linear.h"
#include "layers/gemm_sm90_cuda.h"
#include "layers/linear_cuda.h"
#include "layers/moe.h"
#include "layers/moe_cuda.h"
#include "layers/ops_cuda.h"
#include "layers/rmsnorm.h"
#include "layers/rmsnorm_cuda.h"
#include "layers/rope.h"
#include "layers/rope_cuda.h"
#include "layers/router.h"
#include "layers/router_cuda.h"
#include "layers/swiglu.h"
#include "layers/swiglu_cuda.h"
}

namespace {

using Vec = std::vector<float>;
using IVec = std::vector<int>;

const CoreDtype kDtypes[] = {CORE_F32, CORE_BF16};

const char *dname(CoreDtype dt) { return dt == CORE_BF16 ? "bf16" : "fp32"; }

// The device memory calls of the backend table (alloc zero-fills; upload and download wait).
const LayerOps *dev() { return layer_ops_cuda(CORE_F32); }

// A GPU buffer that frees itself.
struct Buf {
    void *p;
    explicit Buf(size_t bytes) : p(dev()->alloc(bytes)) {}
    ~Buf() { dev()->free(p); }
    Buf(const Buf &) = delete;
    Buf &operator=(const Buf &) = delete;
    float *f() const { return (float *)p; }
    int *i() const { return (int *)p; }
};
using BufP = std::unique_ptr<Buf>;

// n values uniform in [lo, hi) from their own seed: every check draws fresh numbers.
uint32_t g_seed;  // set per test from its name, so that a filter does not change any test's data
Vec rnd(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 gen(g_seed++);
    std::uniform_real_distribution<float> u(lo, hi);
    Vec v(n);
    for (auto &x : v) x = u(gen);
    return v;
}
IVec rnd_int(size_t n, int limit) {
    std::mt19937 gen(g_seed++);
    IVec v(n);
    for (auto &x : v) x = (int)(gen() % (uint32_t)limit);
    return v;
}

// Puts h on the GPU as dtype dt and rounds h to the values the GPU holds.
BufP put(Vec &h, CoreDtype dt) {
    size_t n = h.size();
    Buf f32(n * sizeof(float));
    dev()->upload(f32.p, h.data(), n * sizeof(float));
    BufP b(new Buf(n * core_dtype_size(dt)));
    core_cuda_convert(b->p, dt, f32.p, CORE_F32, (long)n);
    core_cuda_convert(f32.p, CORE_F32, b->p, dt, (long)n);
    dev()->download(h.data(), f32.p, n * sizeof(float));
    return b;
}
BufP put_f32(Vec &h) { return put(h, CORE_F32); }
BufP put_int(const IVec &h) {
    BufP b(new Buf(h.size() * sizeof(int)));
    dev()->upload(b->p, h.data(), h.size() * sizeof(int));
    return b;
}
// n elements of dtype dt, every one a NaN.
BufP poisoned(size_t n, CoreDtype dt) {
    BufP b(new Buf(n * core_dtype_size(dt)));
    core_cuda_memset(b->p, 0xFF, n * core_dtype_size(dt));
    return b;
}
Vec get(const Buf &b, CoreDtype dt, size_t n) {
    Buf f32(n * sizeof(float));
    core_cuda_convert(f32.p, CORE_F32, b.p, dt, (long)n);
    Vec h(n);
    dev()->download(h.data(), f32.p, n * sizeof(float));
    return h;
}
Vec get_f32(const Buf &b, size_t n) { return get(b, CORE_F32, n); }
IVec get_int(const Buf &b, size_t n) {
    IVec h(n);
    dev()->download(h.data(), b.p, n * sizeof(int));
    return h;
}

// ‖out − ref‖ / ‖ref‖ in double; +inf if out holds a NaN or an infinity.
double rel_err(const Vec &out, const Vec &ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        if (!std::isfinite(out[i])) return INFINITY;
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// The bound for a result of dtype dt: fp32 far below 1e-3, bf16 below 1e-2. fp32 results of a
// long fp32 sum (a GEMM's K, a softmax over V) may differ from the CPU's order by more than one
// rounding, hence 1e-5 rather than a few ulps.
double tol(CoreDtype dt) { return dt == CORE_BF16 ? 1e-2 : 1e-5; }

// Checks one result and prints its error (the numbers docs/gpu.md reports).
#define EXPECT_CLOSE(out, ref, dt, what)                                                      \
    do {                                                                                      \
        double e_ = rel_err(out, ref);                                                        \
        printf("  %-40s %s  rel err %.2e\n", what, dname(dt), e_);                            \
        EXPECT_LT(e_, tol(dt)) << what << " (" << dname(dt) << ")";                           \
    } while (0)

class Gpu : public ::testing::Test {
  protected:
    void SetUp() override {
        GTEST_FLAG_SET(death_test_style, "threadsafe");  // a forked child cannot use CUDA
        ASSERT_TRUE(core_cuda_available()) << "no GPU is visible (or this build has no CUDA)";
        core_cuda_init(0);
        g_seed = 2166136261u;  // FNV-1a of the test's name
        for (const char *p = ::testing::UnitTest::GetInstance()->current_test_info()->name(); *p;
             p++)
            g_seed = (g_seed ^ (uint8_t)*p) * 16777619u;
    }
};

// ---------------------------------------------------------------------------------------------
// The plumbing and the checker itself.

TEST_F(Gpu, AllocatorZeroFillsAndCopiesBothWays) {
    Buf b(1000 * sizeof(float));
    Vec z = get_f32(b, 1000);
    for (float x : z) ASSERT_EQ(x, 0.0f);
    Vec h = rnd(1000), back(1000);
    dev()->upload(b.p, h.data(), h.size() * sizeof(float));
    Buf c(1000 * sizeof(float));
    dev()->copy(c.p, b.p, h.size() * sizeof(float));
    dev()->download(back.data(), c.p, h.size() * sizeof(float));
    EXPECT_EQ(0, memcmp(h.data(), back.data(), h.size() * sizeof(float)));
}

TEST_F(Gpu, Bf16ConversionRoundsToNearestEven) {
    // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: it goes to the even one (1);
    // 1 + 3·2^-8 goes up to 1 + 2^-6; 1 + 2^-8 + 2^-20 is past halfway and goes up.
    Vec h = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -2.5f};
    put(h, CORE_BF16);
    EXPECT_EQ(h[0], 1.0f);
    EXPECT_EQ(h[1], 1.0f + 0x1p-6f);
    EXPECT_EQ(h[2], 1.0f + 0x1p-7f);
    EXPECT_EQ(h[3], -2.5f);
}

TEST_F(Gpu, CheckerFailsOnNaNAndOnWrongValues) {
    Vec ref = rnd(100), out = ref;
    EXPECT_EQ(rel_err(out, ref), 0.0);
    out[7] = NAN;
    EXPECT_EQ(rel_err(out, ref), INFINITY);
    out = ref;
    out[7] += 1.0f;
    EXPECT_GT(rel_err(out, ref), tol(CORE_BF16));
    // A poisoned buffer reads back as NaN in both dtypes.
    for (CoreDtype dt : kDtypes) EXPECT_TRUE(std::isnan(get(*poisoned(3, dt), dt, 3)[1]));
}

TEST_F(Gpu, DeviceSelection) {
    EXPECT_EQ(core_device_select("cpu", 0), CORE_CPU);
    EXPECT_EQ(core_device_select("cuda", 0), CORE_CUDA);
}

// Death tests (bad input ends the process with one message) carry "Death" in their names, so that
// tools/gpu_run.sh can leave them out of the compute-sanitizer pass.
TEST_F(Gpu, DeviceSelectionDeath) {
    EXPECT_EXIT(core_device_select("tpu", 0), ::testing::ExitedWithCode(2),
                "--device tpu: expected cpu or cuda");
}

TEST_F(Gpu, FailedCudaCallDeath) {
    const int cuda_error_memory_allocation = 2;  // cudaErrorMemoryAllocation
    EXPECT_EXIT(CUDA_CHECK(cuda_error_memory_allocation), ::testing::ExitedWithCode(1),
                "gpu_test.cc:[0-9]+: cuda_error_memory_allocation failed: out of memory");
}

// ---------------------------------------------------------------------------------------------
// Dense layers.

TEST_F(Gpu, RmsNorm) {
    // 16-byte accesses where D and the pointers allow them (200, 1024, 8192; 36 in fp32 only),
    // single elements otherwise (33; 36 in bf16). Row counts give a partial last chunk of the
    // partial sums (all but 64); D 8192 has fewer warps per block than 8 (shared memory).
    const int shapes[][2] = {{300, 200}, {64, 1024}, {50, 36}, {17, 33}, {70, 8192}};
    for (auto &sh : shapes) {
        int N = sh[0], D = sh[1];
        const size_t np = rmsnorm_partial_floats(N, D);
        for (CoreDtype dt : kDtypes) {
            Vec x = rnd((size_t)N * D, -2, 2), g = rnd(D, 0.5f, 1.5f), dy = rnd((size_t)N * D);
            Vec dres = rnd((size_t)N * D), dg = rnd(D);
            BufP dX = put(x, dt), dG = put(g, dt), dDy = put(dy, dt), dRes = put(dres, dt);
            BufP dDg = put_f32(dg);
            BufP dOut = poisoned((size_t)N * D, dt), dR = poisoned(N, CORE_F32);
            // The backward writes dinp and the partial sums: both start poisoned.
            BufP dDx = poisoned((size_t)N * D, dt), dPart = poisoned(np, CORE_F32);
            Vec out(x.size()), r(N), dx(x.size()), part(np), dx0(x.size()), part0(np);
            rmsnorm_forward(out.data(), r.data(), x.data(), g.data(), N, D, 1e-5f);
            rmsnorm_backward_input(dx.data(), part.data(), dres.data(), dy.data(), x.data(), g.data(),
                                   r.data(), N, D);
            rmsnorm_backward_weight(dg.data(), part.data(), N, D);
            rmsnorm_backward_input(dx0.data(), part0.data(), nullptr, dy.data(), x.data(), g.data(),
                                   r.data(), N, D);
            rmsnorm_cuda_forward(dt, dOut->p, dR->f(), dX->p, dG->p, N, D, 1e-5f);
            rmsnorm_cuda_backward_input(dt, dDx->p, dPart->f(), dRes->p, dDy->p, dX->p, dG->p,
                                        dR->f(), N, D);
            rmsnorm_cuda_backward_weight(dDg->f(), dPart->f(), N, D);
            EXPECT_CLOSE(get(*dOut, dt, out.size()), out, dt, "rmsnorm forward");
            EXPECT_CLOSE(get_f32(*dR, N), r, CORE_F32, "rmsnorm rstd");
            EXPECT_CLOSE(get(*dDx, dt, dx.size()), dx, dt, "rmsnorm backward_input + residual");
            EXPECT_CLOSE(get_f32(*dPart, np), part, CORE_F32, "rmsnorm gain partial sums");
            EXPECT_CLOSE(get_f32(*dDg, D), dg, CORE_F32, "rmsnorm backward_weight");
            // Without a residual, and with the residual in dinp itself (the engine's d_h_mid).
            BufP dDx0 = poisoned((size_t)N * D, dt), dIn = put(dres, dt);
            rmsnorm_cuda_backward_input(dt, dDx0->p, dPart->f(), nullptr, dDy->p, dX->p, dG->p,
                                        dR->f(), N, D);
            EXPECT_CLOSE(get(*dDx0, dt, dx0.size()), dx0, dt, "rmsnorm backward_input, no residual");
            rmsnorm_cuda_backward_input(dt, dIn->p, dPart->f(), dIn->p, dDy->p, dX->p, dG->p,
                                        dR->f(), N, D);
            EXPECT_CLOSE(get(*dIn, dt, dx.size()), dx, dt, "rmsnorm backward_input in place");
            // Reruns give the same bits: the partial sums and their sum have fixed orders.
            Vec p1 = get_f32(*dPart, np), start = rnd(D);
            BufP dPart2 = poisoned(np, CORE_F32), dA = put_f32(start), dB = put_f32(start);
            rmsnorm_cuda_backward_input(dt, dDx->p, dPart2->f(), dRes->p, dDy->p, dX->p, dG->p,
                                        dR->f(), N, D);
            rmsnorm_cuda_backward_weight(dA->f(), dPart->f(), N, D);
            rmsnorm_cuda_backward_weight(dB->f(), dPart2->f(), N, D);
            EXPECT_EQ(0, memcmp(get_f32(*dPart2, np).data(), p1.data(), np * sizeof(float)));
            EXPECT_EQ(0, memcmp(get_f32(*dA, D).data(), get_f32(*dB, D).data(), D * sizeof(float)));
        }
    }
}

// Rows of small values, whose mean square (3e-5) is below eps (1e-4): eps then sets most of the
// scale, and a kernel that left it out passed the test above, whose rows make it 1e-5 of the
// result (mutation test, 2026-12-07).
TEST_F(Gpu, RmsNormEpsOfSmallRows) {
    const int N = 40, D = 256;
    const float eps = 1e-4f;
    Vec x = rnd((size_t)N * D, -0.01f, 0.01f), g = rnd(D, 0.5f, 1.5f), dy = rnd((size_t)N * D);
    Vec out(x.size()), r(N), dx(x.size()), part(rmsnorm_partial_floats(N, D));
    rmsnorm_forward(out.data(), r.data(), x.data(), g.data(), N, D, eps);
    rmsnorm_backward_input(dx.data(), part.data(), nullptr, dy.data(), x.data(), g.data(), r.data(), N, D);
    BufP dX = put_f32(x), dG = put_f32(g), dDy = put_f32(dy);
    BufP dOut = poisoned(x.size(), CORE_F32), dR = poisoned(N, CORE_F32), dDx = poisoned(x.size(), CORE_F32);
    BufP dPart = poisoned(part.size(), CORE_F32);
    rmsnorm_cuda_forward(CORE_F32, dOut->p, dR->f(), dX->p, dG->p, N, D, eps);
    rmsnorm_cuda_backward_input(CORE_F32, dDx->p, dPart->f(), nullptr, dDy->p, dX->p, dG->p, dR->f(), N, D);
    EXPECT_CLOSE(get_f32(*dR, N), r, CORE_F32, "rmsnorm rstd, small rows");
    EXPECT_CLOSE(get_f32(*dOut, out.size()), out, CORE_F32, "rmsnorm forward, small rows");
    EXPECT_CLOSE(get_f32(*dDx, dx.size()), dx, CORE_F32, "rmsnorm backward_input, small rows");
}

// Head sizes 16 and 64 take the 16-byte path, 12 the element path; 5 heads leave the last pair of
// heads one short.
TEST_F(Gpu, Rope) {
    const int B = 3, T = 50, nh = 5, N = B * T;
    for (int hd : {12, 16, 64}) {
        for (CoreDtype dt : kDtypes) {
            const int W = nh * hd;
            size_t n = (size_t)N * W;
            // The backward writes dinp: it starts poisoned.
            Vec x = rnd(n), dy = rnd(n), dx(n);
            BufP dX = put(x, dt), dDy = put(dy, dt), dDx = poisoned(n, dt), dOut = poisoned(n, dt);
            Vec out(n);
            rope_forward(out.data(), W, x.data(), W, N, T, nh, hd, 10000.0f);
            rope_backward_input(dx.data(), W, dy.data(), W, N, T, nh, hd, 10000.0f);
            rope_cuda_forward(dt, dOut->p, W, dX->p, W, N, T, nh, hd, 10000.0f);
            rope_cuda_backward_input(dt, dDx->p, W, dDy->p, W, N, T, nh, hd, 10000.0f);
            EXPECT_CLOSE(get(*dOut, dt, n), out, dt, "rope forward");
            EXPECT_CLOSE(get(*dDx, dt, n), dx, dt, "rope backward_input");
            // In place (one stride) is allowed.
            rope_cuda_backward_input(dt, dDy->p, W, dDy->p, W, N, T, nh, hd, 10000.0f);
            EXPECT_CLOSE(get(*dDy, dt, n), dx, dt, "rope backward_input in place");
            rope_cuda_forward(dt, dX->p, W, dX->p, W, N, T, nh, hd, 10000.0f);
            EXPECT_CLOSE(get(*dX, dt, n), out, dt, "rope forward in place");
        }
    }
}

// Rows at strides other than their width, in and out, as the engine reads q and k out of the
// stacked (N, qd + 2·kd) projection rows and writes their gradients back into such rows: against
// the CPU on the same strided data, bit-equal to the unstrided GPU call, and every element between
// the output rows left as it was (poisoned). Strides and columns that are whole 16-byte runs keep
// the 16-byte path (hd 16, 64); odd ones take the element path.
TEST_F(Gpu, RopeStrided) {
    const int B = 2, T = 40, nh = 3, N = B * T;
    struct Layout { int in_pad, in_col, out_pad, out_col; };
    for (Layout lay : {Layout{16, 8, 24, 16}, Layout{3, 1, 5, 3}})
    for (int hd : {12, 16, 64})
    for (CoreDtype dt : kDtypes)
    for (int backward = 0; backward < 2; backward++) {
        const int W = nh * hd, in_ld = W + lay.in_pad, out_ld = W + lay.out_pad;
        const size_t n = (size_t)N * W, es = core_dtype_size(dt);
        const size_t n_in = (size_t)N * in_ld + lay.in_col, n_out = (size_t)N * out_ld + lay.out_col;
        auto gpu = backward ? rope_cuda_backward_input : rope_cuda_forward;
        auto cpu = backward ? rope_backward_input : rope_forward;
        Vec xs = rnd(n_in);
        BufP dXs = put(xs, dt), dOuts = poisoned(n_out, dt), dOut = poisoned(n, dt);
        // The same rows packed, for the unstrided call.
        Vec x(n);
        for (int r = 0; r < N; r++)
            std::copy(xs.begin() + (size_t)r * in_ld + lay.in_col,
                      xs.begin() + (size_t)r * in_ld + lay.in_col + W, x.begin() + (size_t)r * W);
        BufP dX = put(x, dt);
        Vec ref(n);
        cpu(ref.data(), W, xs.data() + lay.in_col, in_ld, N, T, nh, hd, 10000.0f);
        gpu(dt, (char *)dOuts->p + lay.out_col * es, out_ld, (char *)dXs->p + lay.in_col * es, in_ld,
            N, T, nh, hd, 10000.0f);
        gpu(dt, dOut->p, W, dX->p, W, N, T, nh, hd, 10000.0f);
        const Vec outs = get(*dOuts, dt, n_out), plain = get(*dOut, dt, n);
        Vec got(n);
        size_t untouched = 0;
        for (size_t i = 0; i < n_out; i++) {
            const long c = (long)i - lay.out_col;
            const bool in_row = c >= 0 && c % out_ld < W;
            if (in_row) got[(size_t)(c / out_ld) * W + c % out_ld] = outs[i];
            else untouched += std::isnan(outs[i]);
        }
        EXPECT_EQ(untouched, n_out - n) << "an element between the output rows was written";
        const char *what = backward ? "rope backward_input strided" : "rope forward strided";
        EXPECT_CLOSE(got, ref, dt, what);
        EXPECT_EQ(0, memcmp(got.data(), plain.data(), n * sizeof(float)))
            << "strided and unstrided calls differ: hd " << hd << ", " << dname(dt);
    }
}

// The head-major layout attention reads (rope.h's ROPE_HEADS), both ways, as the engine uses it:
// forward from strided stacked rows into head-major q and k, backward from head-major gradients
// into strided rows; the table's rope_copy moves v and dv the same ways, unrotated. Against the
// CPU on the same data; the rotations bit-equal to the rows-to-rows GPU call reordered, the copies
// exact; nothing written between the output rows (poisoned). hd 16 and 64 take the 16-byte path,
// 12 the element path (and an odd stride forces it for 16 and 64 too).
TEST_F(Gpu, RopeHeadMajor) {
    const int B = 2, T = 40, nh = 3, N = B * T;
    for (int pad : {8, 3})  // the rows pad elements wider than a row, starting pad elements in
    for (int hd : {12, 16, 64})
    for (CoreDtype dt : kDtypes) {
        const int W = nh * hd, ld = W + pad, col = pad;
        const size_t n = (size_t)N * W, n_rows = (size_t)N * ld + col, es = core_dtype_size(dt);
        auto head_at = [&](size_t r, int c) {  // row r, column c < W of the rows → head-major index
            return (((r / T) * nh + c / hd) * T + r % T) * hd + c % hd;
        };
        auto in_row = [&](size_t i) { return i >= (size_t)col && (i - col) % ld < (size_t)W; };
        auto packed = [&](size_t i) { return (i - col) / ld * W + (i - col) % ld; };  // of an in_row i
        Vec rows = rnd(n_rows), heads = rnd(n);
        BufP dRows = put(rows, dt), dHeads = put(heads, dt);
        const Vec rows_r = get(*dRows, dt, n_rows), heads_r = get(*dHeads, dt, n);  // as rounded
        void *rows_at = (char *)dRows->p + col * es;
        for (int copy = 0; copy < 2; copy++) {
            const char *what = copy ? "rope_copy" : "rope";
            // Rows → heads: forward (or the copy).
            BufP dH = poisoned(n, dt);
            Vec ref(n);
            if (copy) {
                layer_ops_cuda(dt)->rope_copy(dH->p, ROPE_HEADS, rows_at, ld, N, T, nh, hd);
                rope_copy(ref.data(), ROPE_HEADS, rows_r.data() + col, ld, N, T, nh, hd);
            } else {
                rope_cuda_forward(dt, dH->p, ROPE_HEADS, rows_at, ld, N, T, nh, hd, 10000.0f);
                rope_forward(ref.data(), ROPE_HEADS, rows_r.data() + col, ld, N, T, nh, hd, 10000.0f);
            }
            const Vec h = get(*dH, dt, n);
            if (copy) {
                EXPECT_EQ(0, memcmp(h.data(), ref.data(), n * sizeof(float))) << what << " hd " << hd;
            } else {
                EXPECT_CLOSE(h, ref, dt, "rope forward into heads");
                // The bits of the rows-to-rows call, reordered.
                BufP dPlain = poisoned(n_rows, dt);
                rope_cuda_forward(dt, (char *)dPlain->p + col * es, ld, rows_at, ld, N, T, nh, hd, 10000.0f);
                const Vec plain = get(*dPlain, dt, n_rows);
                size_t bad = 0;
                for (size_t i = 0; i < n_rows; i++)
                    if (in_row(i)) bad += memcmp(&plain[i], &h[head_at(packed(i) / W, packed(i) % W)], 4) != 0;
                EXPECT_EQ(bad, 0u) << "forward into heads differs from the rows call: hd " << hd;
            }
            // Heads → rows: backward (or the copy back), into the strided rows.
            BufP dR = poisoned(n_rows, dt);
            Vec back(n);
            void *out_at = (char *)dR->p + col * es;
            if (copy) {
                layer_ops_cuda(dt)->rope_copy(out_at, ld, dHeads->p, ROPE_HEADS, N, T, nh, hd);
                rope_copy(back.data(), W, heads_r.data(), ROPE_HEADS, N, T, nh, hd);
            } else {
                rope_cuda_backward_input(dt, out_at, ld, dHeads->p, ROPE_HEADS, N, T, nh, hd, 10000.0f);
                rope_backward_input(back.data(), W, heads_r.data(), ROPE_HEADS, N, T, nh, hd, 10000.0f);
            }
            const Vec got = get(*dR, dt, n_rows);
            Vec got_in(n);
            size_t untouched = 0;
            for (size_t i = 0; i < n_rows; i++) {
                if (in_row(i)) got_in[packed(i)] = got[i];
                else untouched += std::isnan(got[i]);
            }
            EXPECT_EQ(untouched, n_rows - n) << what << ": an element outside the rows was written";
            if (copy) EXPECT_EQ(0, memcmp(got_in.data(), back.data(), n * sizeof(float))) << what;
            else EXPECT_CLOSE(got_in, back, dt, "rope backward_input from heads");
        }
    }
}

// The gate over rows of F whose a and b are the halves of (rows, 2F) rows: F = 1000 takes the
// 16-byte path, 1003 the element path; h, dab and s are written (poisoned). s = Σ_f dh·h per row is
// what the gates' gradient is made of (moe_gate_grad): a wrong one fails here. Without s the
// backward gives the same bits.
TEST_F(Gpu, SwigluGate) {
    const long rows = 300;
    for (int F : {1000, 1003})
    for (CoreDtype dt : kDtypes) {
        const long n = rows * F;
        Vec ab(2 * n), dh = rnd(n), h(n), dab(2 * n), s(rows);
        const Vec a = rnd(n, -4, 4), b = rnd(n);
        for (long r = 0; r < rows; r++)
            for (int f = 0; f < F; f++) ab[r * 2 * F + f] = a[r * F + f], ab[r * 2 * F + F + f] = b[r * F + f];
        BufP dAb = put(ab, dt), dDh = put(dh, dt), dDh2 = put(dh, dt), dH = poisoned(n, dt),
             dDab = poisoned(2 * n, dt), dDab2 = poisoned(2 * n, dt), dS = poisoned(rows, CORE_F32);
        swiglu_act_forward(h.data(), ab.data(), rows, F);
        swiglu_act_backward(dab.data(), s.data(), dh.data(), ab.data(), rows, F);
        swiglu_cuda_act_forward(dt, dH->p, dAb->p, rows, F);
        swiglu_cuda_act_backward(dt, dDab->p, dS->f(), dDh->p, dAb->p, rows, F);
        swiglu_cuda_act_backward(dt, dDab2->p, nullptr, dDh2->p, dAb->p, rows, F);
        EXPECT_CLOSE(get(*dH, dt, n), h, dt, "swiglu gate forward");
        EXPECT_CLOSE(get(*dDab, dt, 2 * n), dab, dt, "swiglu gate backward dab");
        EXPECT_CLOSE(get_f32(*dS, rows), s, dt, "swiglu gate backward row dots");
        EXPECT_TRUE(get(*dDab2, dt, 2 * n) == get(*dDab, dt, 2 * n)) << "swiglu gate backward without dots";
        // The backward leaves the forward's h in dh, to the bit (W2's weight gradient reads it).
        EXPECT_TRUE(get(*dDh, dt, n) == get(*dH, dt, n)) << "swiglu gate backward: dh does not hold h";
        EXPECT_TRUE(get(*dDh2, dt, n) == get(*dH, dt, n)) << "swiglu gate backward: dh does not hold h";
    }
}

TEST_F(Gpu, CrossEntropy) {
    const int shapes[][2] = {{64, 1000}, {8, 32768}, {5, 100}, {3, 4099}};
    for (auto &sh : shapes) {
        int N = sh[0], V = sh[1];
        for (CoreDtype dt : kDtypes) {
            Vec z = rnd((size_t)N * V, -6, 6), dz = rnd((size_t)N * V, -1e-3f, 1e-3f);
            IVec tg = rnd_int(N, V);
            BufP dZ = put(z, dt), dDz = poisoned(dz.size(), dt), dT = put_int(tg);
            BufP dL = poisoned(N, CORE_F32), dLse = poisoned(N, CORE_F32);
            Vec loss(N), lse(N);
            crossentropy_forward(loss.data(), lse.data(), z.data(), tg.data(), N, V);
            crossentropy_backward_input(dz.data(), z.data(), lse.data(), tg.data(), 1.0f / N, N,
                                        V);
            crossentropy_cuda_forward(dt, dL->f(), dLse->f(), dZ->p, dT->i(), N, V);
            crossentropy_cuda_backward_input(dt, dDz->p, dZ->p, dLse->f(), dT->i(), 1.0f / N, N,
                                             V);
            EXPECT_CLOSE(get_f32(*dL, N), loss, CORE_F32, "crossentropy losses");
            EXPECT_CLOSE(get_f32(*dLse, N), lse, CORE_F32, "crossentropy lse");
            EXPECT_CLOSE(get(*dDz, dt, dz.size()), dz, dt, "crossentropy backward_input");
            // The softmax part alone (every entry but the targets'): the targets' −1/N dominate the
            // whole gradient's norm, under which a softmax part off by 10 % (75 % at V 32768)
            // passed (review, 2026-12-06).
            const Vec got = get(*dDz, dt, dz.size());
            Vec soft_got, soft_ref;
            for (int r = 0; r < N; r++)
                for (int v = 0; v < V; v++)
                    if (v != tg[r]) {
                        soft_got.push_back(got[(size_t)r * V + v]);
                        soft_ref.push_back(dz[(size_t)r * V + v]);
                    }
            EXPECT_CLOSE(soft_got, soft_ref, dt, "crossentropy backward, softmax part");
            // In place of the logits (the model's way): the same bits as into a separate buffer.
            crossentropy_cuda_backward_input(dt, dZ->p, dZ->p, dLse->f(), dT->i(), 1.0f / N, N, V);
            EXPECT_EQ(get(*dZ, dt, dz.size()), get(*dDz, dt, dz.size())) << "crossentropy backward in place";
        }
    }
}

// The caller checks the targets (the model, on the host); one outside [0, V) that got through
// anyway reads nothing outside its row and shows as a NaN loss, the other rows untouched.
TEST_F(Gpu, CrossEntropyTargetOutsideTheVocabulary) {
    IVec tg = {1, 2, 10, -1};
    Vec z = rnd(4 * 10);
    BufP dZ = put_f32(z), dT = put_int(tg);
    BufP dL = poisoned(4, CORE_F32), dLse = poisoned(4, CORE_F32);
    crossentropy_cuda_forward(CORE_F32, dL->f(), dLse->f(), dZ->p, dT->i(), 4, 10);
    Vec loss = get_f32(*dL, 4);
    EXPECT_TRUE(std::isfinite(loss[0]) && std::isfinite(loss[1]));
    EXPECT_TRUE(std::isnan(loss[2]) && std::isnan(loss[3]));
}

// Many repeated tokens (the backward must add them all), and a vocabulary of 2^15 with mostly
// single positions (every bit of the device sort's keys); the backward twice from the same start
// gives the same bits.
TEST_F(Gpu, Embedding) {
    const int shapes[][3] = {{500, 50, 96}, {4096, 32768, 64}};
    for (auto &sh : shapes)
    for (CoreDtype dt : kDtypes) {
        const int N = sh[0], V = sh[1], D = sh[2];
        Vec table = rnd((size_t)V * D), dy = rnd((size_t)N * D), dtab = rnd((size_t)V * D);
        IVec tok = rnd_int(N, V);
        BufP dTab = put(table, dt), dDy = put(dy, dt), dTok = put_int(tok), dDtab = put_f32(dtab);
        BufP dDtab2 = put_f32(dtab), dOut = poisoned((size_t)N * D, dt);
        Vec out((size_t)N * D);
        embedding_forward(out.data(), tok.data(), table.data(), N, V, D);
        embedding_backward_weight(dtab.data(), dy.data(), tok.data(), N, V, D);
        embedding_cuda_forward(dt, dOut->p, dTok->i(), dTab->p, N, V, D);
        embedding_cuda_backward_weight(dt, dDtab->f(), dDy->p, dTok->i(), N, V, D);
        embedding_cuda_backward_weight(dt, dDtab2->f(), dDy->p, dTok->i(), N, V, D);
        EXPECT_CLOSE(get(*dOut, dt, out.size()), out, dt, "embedding forward");
        EXPECT_CLOSE(get_f32(*dDtab, dtab.size()), dtab, CORE_F32, "embedding backward_weight");
        EXPECT_EQ(get_f32(*dDtab, dtab.size()), get_f32(*dDtab2, dtab.size()));
    }
}

// Likewise a token outside [0, V): a NaN row in the forward, nothing added in the backward (the
// table's neighbours in memory, the test's guard rows, stay as they were).
TEST_F(Gpu, EmbeddingTokenOutsideTheVocabulary) {
    const int V = 50, D = 96;
    IVec bad = {3, -1, 50};
    Vec table = rnd((size_t)(V + 2) * D), dy = rnd(3 * (size_t)D), zeros((size_t)(V + 2) * D, 0.0f);
    BufP dBad = put_int(bad), dOut = poisoned(3 * D, CORE_F32), dTab = put_f32(table), dDy = put_f32(dy);
    BufP dDtab = put_f32(zeros);
    const float *tab = dTab->f() + D;  // rows -1 and V of the view are guard rows
    embedding_cuda_forward(CORE_F32, dOut->p, dBad->i(), tab, 3, V, D);
    embedding_cuda_backward_weight(CORE_F32, dDtab->f() + D, dDy->p, dBad->i(), 3, V, D);
    Vec out = get_f32(*dOut, 3 * (size_t)D), dtab = get_f32(*dDtab, (size_t)(V + 2) * D);
    for (int d = 0; d < D; d++) {
        EXPECT_EQ(out[d], table[(size_t)(1 + 3) * D + d]);
        EXPECT_TRUE(std::isnan(out[D + d]) && std::isnan(out[2 * D + d]));
        EXPECT_EQ(dtab[d], 0.0f);                       // row -1
        EXPECT_EQ(dtab[(size_t)(V + 1) * D + d], 0.0f);  // row V
        EXPECT_EQ(dtab[(size_t)(1 + 3) * D + d], dy[d]);
    }
}

TEST_F(Gpu, Linear) {
    const int shapes[][3] = {{100, 96, 80}, {256, 1024, 512}, {1, 33, 7}};
    for (auto &sh : shapes) {
        int N = sh[0], IC = sh[1], OC = sh[2];
        for (CoreDtype dt : kDtypes) {
            Vec x = rnd((size_t)N * IC), W = rnd((size_t)OC * IC, -0.1f, 0.1f);
            Vec dy = rnd((size_t)N * OC), dx = rnd((size_t)N * IC), dW = rnd((size_t)OC * IC);
            BufP dX = put(x, dt), dWt = put(W, dt), dDy = put(dy, dt), dDx = put(dx, dt);
            BufP dDW = put_f32(dW), dOut = poisoned((size_t)N * OC, dt);
            BufP dOut32 = poisoned((size_t)N * OC, CORE_F32);
            Vec out((size_t)N * OC);
            linear_forward(out.data(), x.data(), W.data(), N, IC, OC);
            linear_backward_input(dx.data(), dy.data(), W.data(), N, IC, OC);
            linear_backward_weight(dW.data(), dy.data(), x.data(), N, IC, OC);
            linear_cuda_forward(dt, dt, dOut->p, dX->p, dWt->p, N, IC, OC);
            linear_cuda_forward(dt, CORE_F32, dOut32->p, dX->p, dWt->p, N, IC, OC);
            linear_cuda_backward_input(dt, dDx->p, dDy->p, dWt->p, N, IC, OC, 1);
            // acc = 0 writes without reading: a poisoned dinp gets the product alone.
            Vec dx0((size_t)N * IC, 0.0f);
            linear_backward_input(dx0.data(), dy.data(), W.data(), N, IC, OC);
            BufP dDx0 = poisoned((size_t)N * IC, dt);
            linear_cuda_backward_input(dt, dDx0->p, dDy->p, dWt->p, N, IC, OC, 0);
            EXPECT_CLOSE(get(*dDx0, dt, dx0.size()), dx0, dt, "linear backward_input, acc = 0");
            linear_cuda_backward_weight(dt, dDW->f(), dDy->p, dX->p, N, IC, OC);
            EXPECT_CLOSE(get(*dOut, dt, out.size()), out, dt, "linear forward");
            EXPECT_CLOSE(get_f32(*dOut32, out.size()), out, CORE_F32, "linear forward, fp32 out");
            EXPECT_CLOSE(get(*dDx, dt, dx.size()), dx, dt, "linear backward_input");
            EXPECT_CLOSE(get_f32(*dDW, dW.size()), dW, CORE_F32, "linear backward_weight");
        }
    }
}

const char *mode_name(int mode) {
    return mode == LINEAR_GROUPED_LOOP      ? "loop"
           : mode == LINEAR_GROUPED_STREAMS ? "streams"
           : mode == LINEAR_GROUPED_CUTLASS ? "cutlass"
                                            : "grouped";
}

// Per-expert GEMMs on contiguous row ranges (one empty expert, one of a single row) against the
// CPU linear layer called range by range, all three ways: one cuBLAS call per expert on one
// stream (loop) and on 3 concurrent streams, one cuBLAS grouped GEMM (where cuBLAS's grouped GEMM
// lacks the types, that product runs as streams either way) and one CUTLASS grouped GEMM (bf16 on
// a Hopper GPU; cuBLAS's grouped GEMM elsewhere).
TEST_F(Gpu, LinearGrouped) {
    const int G = 5, IC = 64, OC = 48;
    const int counts[G] = {30, 0, 17, 1, 52};
    int R = 0;
    for (int c : counts) R += c;
    const int saved = linear_cuda_grouped_mode(), saved_streams = linear_cuda_gemm_streams();
    linear_cuda_set_gemm_streams(3);
    // CUTLASS with its tiles' clusters as chosen, and forced along M.
    struct Way {
        int mode, pairs;
    };
    const Way ways[] = {{LINEAR_GROUPED_LOOP, 0},
                        {LINEAR_GROUPED_STREAMS, 0},
                        {LINEAR_GROUPED_CUBLAS, 0},
                        {LINEAR_GROUPED_CUTLASS, GEMM_SM90_PAIRS_BEST},
                        {LINEAR_GROUPED_CUTLASS, GEMM_SM90_PAIRS_M}};
    for (const Way &way : ways)
    for (CoreDtype dt : kDtypes) {
        const int mode = way.mode;
        SCOPED_TRACE(mode_name(mode));
        SCOPED_TRACE(way.pairs);
        printf("  %s (pairs %d), %s:\n", mode_name(mode), way.pairs, dname(dt));
        linear_cuda_set_grouped_mode(mode);
        if (mode == LINEAR_GROUPED_CUTLASS) gemm_sm90_set_pairs(way.pairs);
        Vec x = rnd((size_t)R * IC), W = rnd((size_t)G * OC * IC, -0.1f, 0.1f);
        Vec dy = rnd((size_t)R * OC), dx = rnd((size_t)R * IC), dW = rnd((size_t)G * OC * IC);
        BufP dX = put(x, dt), dWt = put(W, dt), dDy = put(dy, dt), dDx = put(dx, dt);
        BufP dDW = put_f32(dW), dOut = poisoned((size_t)R * OC, dt), dDxw = poisoned((size_t)R * IC, dt);
        BufP dDWw = poisoned((size_t)G * OC * IC, CORE_F32);
        Vec out((size_t)R * OC), dxw((size_t)R * IC, 0.0f);  // dxw: backward_input written (acc 0)
        Vec dWw((size_t)G * OC * IC, 0.0f);                  // dWw: backward_weight written (acc 0)
        size_t r0 = 0;
        for (int e = 0; e < G; r0 += counts[e], e++) {
            const float *w = W.data() + (size_t)e * OC * IC;
            linear_forward(out.data() + r0 * OC, x.data() + r0 * IC, w, counts[e], IC, OC);
            linear_backward_input(dx.data() + r0 * IC, dy.data() + r0 * OC, w, counts[e], IC, OC);
            linear_backward_input(dxw.data() + r0 * IC, dy.data() + r0 * OC, w, counts[e], IC, OC);
            linear_backward_weight(dW.data() + (size_t)e * OC * IC, dy.data() + r0 * OC,
                                   x.data() + r0 * IC, counts[e], IC, OC);
            linear_backward_weight(dWw.data() + (size_t)e * OC * IC, dy.data() + r0 * OC,
                                   x.data() + r0 * IC, counts[e], IC, OC);
        }
        linear_cuda_forward_grouped(dt, dt, dOut->p, dX->p, dWt->p, counts, nullptr, G, IC, OC);
        linear_cuda_backward_input_grouped(dt, dDx->p, dDy->p, dWt->p, counts, nullptr, G, IC, OC, 1);
        linear_cuda_backward_input_grouped(dt, dDxw->p, dDy->p, dWt->p, counts, nullptr, G, IC, OC, 0);
        linear_cuda_backward_weight_grouped(dt, dDW->f(), dDy->p, dX->p, counts, nullptr, G, IC, OC, 1);
        linear_cuda_backward_weight_grouped(dt, dDWw->f(), dDy->p, dX->p, counts, nullptr, G, IC, OC, 0);
        EXPECT_CLOSE(get(*dOut, dt, out.size()), out, dt, "linear grouped forward");
        EXPECT_CLOSE(get(*dDx, dt, dx.size()), dx, dt, "linear grouped backward_input");
        EXPECT_CLOSE(get(*dDxw, dt, dxw.size()), dxw, dt, "linear grouped backward_input written (poisoned)");
        EXPECT_CLOSE(get_f32(*dDW, dW.size()), dW, CORE_F32, "linear grouped backward_weight");
        // Expert 1 has no rows: its written gradient is zeros, not the poison.
        EXPECT_CLOSE(get_f32(*dDWw, dWw.size()), dWw, CORE_F32, "linear grouped backward_weight written (poisoned)");
        if (mode == LINEAR_GROUPED_CUBLAS) {
            // A C of the operands' dtype is in cuBLAS's grouped table: those must not have fallen
            // back to the loop. The fp32 dW of bf16 operands may have (said here).
            EXPECT_FALSE(linear_cuda_grouped_unsupported(dt, dt)) << "grouped GEMM refused " << dname(dt);
            printf("  grouped dW from %s operands ran as %s\n", dname(dt),
                   linear_cuda_grouped_unsupported(dt, CORE_F32) ? "the loop (types not supported)" : "one grouped GEMM");
        }
    }
    gemm_sm90_set_pairs(GEMM_SM90_PAIRS_BEST);
    linear_cuda_set_grouped_mode(saved);
    linear_cuda_set_gemm_streams(saved_streams);
}

// The CUTLASS grouped GEMM (Hopper only) on 600 experts, more than one launch takes
// (GEMM_SM90_MAX_GROUPS), with empty experts, single rows and a few hundred rows, against the CPU
// layer expert by expert; and run three times from the same inputs, in the chosen tile order,
// along M and along N, bit for bit (no split-K, no atomics: the order moves tiles between CTAs,
// not the sums inside a tile). Two tile columns of IC and of OC and groups of mostly one tile row
// make the forward and backward_input pair their tiles along N (cluster_along_n), the weight
// gradient along M.
TEST_F(Gpu, LinearGroupedCutlass) {
    if (!gemm_sm90_available()) GTEST_SKIP() << "needs a GPU of compute capability 9.0";
    const int G = 600, IC = 136, OC = 200;  // multiples of 8, not of the tile
    ASSERT_GT(G, (int)GEMM_SM90_MAX_GROUPS);
    IVec counts = rnd_int(G, 40);
    for (int e = 0; e < G; e += 7) counts[e] = 0;
    counts[1] = 1, counts[G - 1] = 300;
    int R = 0;
    for (int c : counts) R += c;
    const CoreDtype dt = CORE_BF16;
    ASSERT_TRUE(linear_cuda_cutlass_applies(dt, dt, IC, OC));
    const int saved = linear_cuda_grouped_mode();
    linear_cuda_set_grouped_mode(LINEAR_GROUPED_CUTLASS);
    Vec x = rnd((size_t)R * IC), W = rnd((size_t)G * OC * IC, -0.1f, 0.1f), dy = rnd((size_t)R * OC);
    Vec dx0 = rnd((size_t)R * IC), dW0 = rnd((size_t)G * OC * IC);
    BufP dX = put(x, dt), dWt = put(W, dt), dDy = put(dy, dt);  // put rounds x, W and dy to bf16
    put(dx0, dt);                                                // and dx0
    Vec out((size_t)R * OC), dx = dx0, dW = dW0, dxw((size_t)R * IC, 0.0f);
    size_t r0 = 0;
    for (int e = 0; e < G; r0 += counts[e], e++) {
        const float *w = W.data() + (size_t)e * OC * IC;
        linear_forward(out.data() + r0 * OC, x.data() + r0 * IC, w, counts[e], IC, OC);
        linear_backward_input(dx.data() + r0 * IC, dy.data() + r0 * OC, w, counts[e], IC, OC);
        linear_backward_input(dxw.data() + r0 * IC, dy.data() + r0 * OC, w, counts[e], IC, OC);
        linear_backward_weight(dW.data() + (size_t)e * OC * IC, dy.data() + r0 * OC, x.data() + r0 * IC,
                               counts[e], IC, OC);
    }
    // Run 0 in the chosen tile order, runs 1 and 2 along M and along N: one of them repeats run 0.
    std::vector<Vec> runs[3];
    for (int run = 0; run < 3; run++) {
        gemm_sm90_set_raster(run == 0 ? GEMM_SM90_RASTER_BEST : run == 1 ? GEMM_SM90_RASTER_M : GEMM_SM90_RASTER_N);
        BufP dOut = poisoned((size_t)R * OC, dt), dDx = put(dx0, dt), dDW = put_f32(dW0);
        BufP dDxw = poisoned((size_t)R * IC, dt);
        linear_cuda_forward_grouped(dt, dt, dOut->p, dX->p, dWt->p, counts.data(), nullptr, G, IC, OC);
        linear_cuda_backward_input_grouped(dt, dDx->p, dDy->p, dWt->p, counts.data(), nullptr, G, IC, OC, 1);
        linear_cuda_backward_input_grouped(dt, dDxw->p, dDy->p, dWt->p, counts.data(), nullptr, G, IC, OC, 0);
        linear_cuda_backward_weight_grouped(dt, dDW->f(), dDy->p, dX->p, counts.data(), nullptr, G, IC, OC, 1);
        runs[run] = {get(*dOut, dt, out.size()), get(*dDx, dt, dx.size()), get_f32(*dDW, dW.size()),
                     get(*dDxw, dt, dxw.size())};
    }
    EXPECT_CLOSE(runs[0][0], out, dt, "cutlass grouped forward");
    EXPECT_CLOSE(runs[0][1], dx, dt, "cutlass grouped backward_input");
    EXPECT_CLOSE(runs[0][2], dW, CORE_F32, "cutlass grouped backward_weight");
    EXPECT_CLOSE(runs[0][3], dxw, dt, "cutlass grouped backward_input written (poisoned)");
    gemm_sm90_set_raster(GEMM_SM90_RASTER_BEST);
    for (int run = 1; run < 3; run++)
        for (int k = 0; k < 4; k++)
            EXPECT_TRUE(runs[0][k] == runs[run][k]) << "product " << k << " differs in run " << run;
    linear_cuda_set_grouped_mode(saved);
}

// The CUTLASS weight gradient on skewed counts (one group of 3000 rows among groups of a few rows,
// some empty), on grids of 1 to 4 CTAs per multiprocessor and the grid chosen from the counts: the
// same bits every way (a CTA sums its tiles whole, whichever multiprocessor runs it), and against
// the CPU layer. These counts make the choice more than one CTA per multiprocessor.
TEST_F(Gpu, LinearGroupedCutlassGridFactors) {
    if (!gemm_sm90_available()) GTEST_SKIP() << "needs a GPU of compute capability 9.0";
    const int G = 40, IC = 512, OC = 256;
    IVec counts = rnd_int(G, 24);
    for (int e = 3; e < G; e += 6) counts[e] = 0;
    counts[0] = 3000;
    int R = 0;
    for (int c : counts) R += c;
    const CoreDtype dt = CORE_BF16;
    const int saved = linear_cuda_grouped_mode();
    linear_cuda_set_grouped_mode(LINEAR_GROUPED_CUTLASS);
    Vec x = rnd((size_t)R * IC), dy = rnd((size_t)R * OC), dW((size_t)G * OC * IC, 0.0f);
    BufP dX = put(x, dt), dDy = put(dy, dt);  // put rounds x and dy to bf16
    size_t r0 = 0;
    for (int e = 0; e < G; r0 += counts[e], e++)
        linear_backward_weight(dW.data() + (size_t)e * OC * IC, dy.data() + r0 * OC, x.data() + r0 * IC,
                               counts[e], IC, OC);
    Vec first;
    for (int f : {1, 2, 3, 4, 0}) {
        SCOPED_TRACE(f);
        gemm_sm90_set_grid_factor(f);
        BufP dDW = poisoned((size_t)G * OC * IC, CORE_F32);
        linear_cuda_backward_weight_grouped(dt, dDW->f(), dDy->p, dX->p, counts.data(), nullptr, G, IC, OC, 0);
        Vec got = get_f32(*dDW, dW.size());
        if (f == 1) {
            EXPECT_CLOSE(got, dW, CORE_F32, "cutlass grouped backward_weight, skewed counts");
            first = got;
        } else {
            EXPECT_TRUE(got == first) << "grid factor " << f << " changed the bits of dW";
        }
    }
    gemm_sm90_set_grid_factor(0);
    linear_cuda_set_grouped_mode(saved);
}

// The grouped products with their counts on the device only (the GPU dispatcher's plan: layers/ops.h's
// OpsGroups without host counts) against the same products from host counts, bit for bit. The
// Hopper kernels read them there (the setup kernel puts the groups with rows first; the first and
// last groups are empty; a weight gradient written zeroes the empty experts' dW from the device
// counts and runs on a fixed grid); every other path (cuBLAS, fp32, more groups than one launch
// takes) downloads them first.
TEST_F(Gpu, LinearGroupedDeviceCounts) {
    const int IC = 136, OC = 200;
    const int saved = linear_cuda_grouped_mode();
    for (int G : {300, 600})
    for (int mode : {LINEAR_GROUPED_CUTLASS, LINEAR_GROUPED_CUBLAS})
    for (CoreDtype dt : kDtypes) {
        SCOPED_TRACE(G);
        SCOPED_TRACE(mode_name(mode));
        SCOPED_TRACE(dname(dt));
        linear_cuda_set_grouped_mode(mode);
        IVec counts = rnd_int(G, 40);
        for (int e = 0; e < G; e += 7) counts[e] = 0;
        counts[1] = 300, counts[G - 1] = 0;
        int R = 0;
        for (int c : counts) R += c;
        Vec x = rnd((size_t)R * IC), W = rnd((size_t)G * OC * IC, -0.1f, 0.1f), dy = rnd((size_t)R * OC);
        Vec dx0 = rnd((size_t)R * IC), dW0 = rnd((size_t)G * OC * IC);
        BufP dX = put(x, dt), dWt = put(W, dt), dDy = put(dy, dt), dCounts = put_int(counts);
        // forward, backward_input added and written, backward_weight added and written
        auto run = [&](const int *hc, const int *dc) {
            BufP out = poisoned((size_t)R * OC, dt), dDx = put(dx0, dt), dDxw = poisoned((size_t)R * IC, dt);
            BufP dDW = put_f32(dW0), dDWw = poisoned((size_t)G * OC * IC, CORE_F32);
            linear_cuda_forward_grouped(dt, dt, out->p, dX->p, dWt->p, hc, dc, G, IC, OC);
            linear_cuda_backward_input_grouped(dt, dDx->p, dDy->p, dWt->p, hc, dc, G, IC, OC, 1);
            linear_cuda_backward_input_grouped(dt, dDxw->p, dDy->p, dWt->p, hc, dc, G, IC, OC, 0);
            linear_cuda_backward_weight_grouped(dt, dDW->f(), dDy->p, dX->p, hc, dc, G, IC, OC, 1);
            linear_cuda_backward_weight_grouped(dt, dDWw->f(), dDy->p, dX->p, hc, dc, G, IC, OC, 0);
            return std::vector<Vec>{get(*out, dt, (size_t)R * OC), get(*dDx, dt, (size_t)R * IC),
                                    get(*dDxw, dt, (size_t)R * IC), get_f32(*dDW, dW0.size()),
                                    get_f32(*dDWw, dW0.size())};
        };
        const std::vector<Vec> host = run(counts.data(), nullptr);
        const std::vector<Vec> device = run(nullptr, (const int *)dCounts->p);
        const char *what[5] = {"forward", "backward_input", "backward_input written", "backward_weight",
                               "backward_weight written"};
        for (int k = 0; k < 5; k++) EXPECT_TRUE(host[k] == device[k]) << what[k] << " differs";
    }
    linear_cuda_set_grouped_mode(saved);
}

// Streams against the loop, bit for bit: the three products of 24 experts (some empty, sizes
// from 1 row to a few hundred, so that several streams run at once and are assigned unevenly)
// from the same inputs and the same accumulators, with 2, 4 and LINEAR_MAX_STREAMS streams. The
// run_groups argument (each product writes only its own rows or its own dW) says they must agree
// exactly; a race or a kernel choice that depends on the stream would show here.
TEST_F(Gpu, LinearGroupedStreamsBitIdentical) {
    const int G = 24, IC = 256, OC = 192;
    IVec counts = rnd_int(G, 400);
    for (int e = 0; e < G; e += 5) counts[e] = 0;
    counts[1] = 1;
    int R = 0;
    for (int c : counts) R += c;
    const int saved = linear_cuda_grouped_mode(), saved_streams = linear_cuda_gemm_streams();
    for (CoreDtype dt : kDtypes) {
        Vec x = rnd((size_t)R * IC), W = rnd((size_t)G * OC * IC, -0.1f, 0.1f);
        Vec dy = rnd((size_t)R * OC), dx0 = rnd((size_t)R * IC), dW0 = rnd((size_t)G * OC * IC);
        BufP dX = put(x, dt), dWt = put(W, dt), dDy = put(dy, dt);
        const size_t nout = (size_t)R * OC * core_dtype_size(dt), ndx = (size_t)R * IC * core_dtype_size(dt),
                     ndw = (size_t)G * OC * IC * sizeof(float);
        // The bytes of out, dinp and dW after the three products with `streams` streams (0: loop).
        auto run = [&](int streams) {
            linear_cuda_set_grouped_mode(streams ? LINEAR_GROUPED_STREAMS : LINEAR_GROUPED_LOOP);
            if (streams) linear_cuda_set_gemm_streams(streams);
            BufP out = poisoned((size_t)R * OC, dt), dDx = put(dx0, dt), dDW = put_f32(dW0);
            linear_cuda_forward_grouped(dt, dt, out->p, dX->p, dWt->p, counts.data(), nullptr, G, IC, OC);
            linear_cuda_backward_input_grouped(dt, dDx->p, dDy->p, dWt->p, counts.data(), nullptr, G, IC, OC, 1);
            linear_cuda_backward_weight_grouped(dt, dDW->f(), dDy->p, dX->p, counts.data(), nullptr, G, IC, OC, 1);
            std::vector<unsigned char> h(nout + ndx + ndw);
            dev()->download(h.data(), out->p, nout);
            dev()->download(h.data() + nout, dDx->p, ndx);
            dev()->download(h.data() + nout + ndx, dDW->p, ndw);
            return h;
        };
        const std::vector<unsigned char> loop = run(0);
        const char *what[3] = {"forward", "backward_input", "backward_weight"};
        const size_t off[4] = {0, nout, nout + ndx, nout + ndx + ndw};
        bool same = true;
        for (int streams : {2, 4, (int)LINEAR_MAX_STREAMS}) {
            const std::vector<unsigned char> got = run(streams);
            for (int k = 0; k < 3; k++) {
                const bool eq = memcmp(got.data() + off[k], loop.data() + off[k], off[k + 1] - off[k]) == 0;
                EXPECT_TRUE(eq) << dname(dt) << " " << what[k] << ", " << streams << " streams differs from the loop";
                same = same && eq;
            }
        }
        printf("  streams 2, 4, %d vs loop, %s: %s\n", (int)LINEAR_MAX_STREAMS, dname(dt),
               same ? "bit-identical" : "DIFFERENT");
    }
    linear_cuda_set_grouped_mode(saved);
    linear_cuda_set_gemm_streams(saved_streams);
}

// ---------------------------------------------------------------------------------------------
// Attention: the CPU layer keeps (B, H, T, T) probabilities, the GPU one lse only. Three paths
// (attention_cuda_set_path): cuDNN's fused attention (bf16, head size 64 or 128, where
// libcudnn.so.9 loads: the cuDNN tests skip, saying so, where it does not), the tensor-core
// kernels (the same shapes) and the CUDA-core ones (everything). The backward overwrites dq, dk
// and dv: they start as NaN, so a path that reads them, or misses a row, fails.

struct AttnCase {
    int B, T, H, Hkv, hd;
};

// The inputs of one case, rounded to dtype dt, and the CPU's out, lse (in double, from the
// definition, with q and k head-major as attention.h lays them out), dq, dk and dv.
struct AttnRef {
    Vec q, k, v, dy, out, lse, dq, dk, dv;
    AttnRef(const AttnCase &c, CoreDtype dt, bool with_cpu) {
        const int B = c.B, T = c.T, H = c.H, Hkv = c.Hkv, hd = c.hd;
        const size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd;
        q = rnd(nq, -2, 2), k = rnd(nk, -2, 2), v = rnd(nk), dy = rnd(nq);
        round_to(q, dt), round_to(k, dt), round_to(v, dt), round_to(dy, dt);
        if (!with_cpu) return;
        out.resize(nq), dq.assign(nq, 0.0f), dk.assign(nk, 0.0f), dv.assign(nk, 0.0f);
        Vec att((size_t)B * H * T * T);
        attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, Hkv, hd);
        attention_backward_input(dq.data(), dk.data(), dv.data(), dy.data(), q.data(), k.data(),
                                 v.data(), att.data(), B, T, H, Hkv, hd);
        lse.resize((size_t)B * H * T);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++) {
                    std::vector<double> s(t + 1);
                    double mx = -INFINITY, sum = 0;
                    for (int u = 0; u <= t; u++) {
                        double d = 0;
                        for (int i = 0; i < hd; i++)
                            d += (double)q[(((size_t)b * H + h) * T + t) * hd + i] *
                                 k[(((size_t)b * Hkv + h / (H / Hkv)) * T + u) * hd + i];
                        s[u] = d / std::sqrt((double)hd);
                        mx = std::max(mx, s[u]);
                    }
                    for (double x : s) sum += std::exp(x - mx);
                    lse[((size_t)b * H + h) * T + t] = (float)(mx + std::log(sum));
                }
    }
    // x rounded to the values dtype dt holds (what put() does, without a GPU buffer to keep).
    static void round_to(Vec &x, CoreDtype dt) { BufP b = put(x, dt); }
};

// The GPU's out, lse, dq, dk, dv of one case: the forward on path fwd, then the backward on path
// bwd (the same unless given) from its out and lse, every output poisoned first.
std::array<Vec, 5> attention_gpu(const AttnRef &r, const AttnCase &c, CoreDtype dt,
                                 AttentionCudaPath fwd, AttentionCudaPath bwd) {
    const int B = c.B, T = c.T, H = c.H, Hkv = c.Hkv, hd = c.hd;
    const size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd, nl = (size_t)B * H * T;
    Vec q = r.q, k = r.k, v = r.v, dy = r.dy;  // already of dtype dt: put() keeps them
    BufP dQ = put(q, dt), dK = put(k, dt), dV = put(v, dt), dDy = put(dy, dt);
    BufP dOut = poisoned(nq, dt), dLse = poisoned(nl, CORE_F32), dDelta = poisoned(nl, CORE_F32);
    BufP dDq = poisoned(nq, dt), dDk = poisoned(nk, dt), dDv = poisoned(nk, dt);
    attention_cuda_set_path(fwd);
    attention_cuda_forward(dt, dOut->p, dLse->f(), dQ->p, dK->p, dV->p, B, T, H, Hkv, hd);
    attention_cuda_set_path(bwd);
    attention_cuda_backward_input(dt, dDq->p, dDk->p, dDv->p, dDy->p, dQ->p, dK->p, dV->p, dOut->p,
                                  dLse->f(), dDelta->f(), B, T, H, Hkv, hd);
    attention_cuda_set_path(ATTENTION_CUDA_AUTO);
    return {get(*dOut, dt, nq), get_f32(*dLse, nl), get(*dDq, dt, nq), get(*dDk, dt, nk),
            get(*dDv, dt, nk)};
}
std::array<Vec, 5> attention_gpu(const AttnRef &r, const AttnCase &c, CoreDtype dt,
                                 AttentionCudaPath path) {
    return attention_gpu(r, c, dt, path, path);
}

const char *const kAttnNames[5] = {"forward", "lse", "dq", "dk", "dv"};

// The forward on path fwd and the backward on path bwd against the CPU at case c.
void attention_vs_cpu(const AttnCase &c, CoreDtype dt, AttentionCudaPath fwd, AttentionCudaPath bwd,
                      const char *tag) {
    AttnRef r(c, dt, true);
    std::array<Vec, 5> got = attention_gpu(r, c, dt, fwd, bwd);
    const Vec *ref[5] = {&r.out, &r.lse, &r.dq, &r.dk, &r.dv};
    for (int i = 0; i < 5; i++) {
        char what[96];
        snprintf(what, sizeof what, "attention %s T=%d H=%d/%d hd=%d %s", tag, c.T, c.H, c.Hkv,
                 c.hd, kAttnNames[i]);
        EXPECT_CLOSE(got[i], *ref[i], i == 1 ? CORE_F32 : dt, what);
    }
}

// Path a against path b (bf16, same inputs) where the CPU reference would be too slow.
void attention_paths_agree(const AttnCase &c, AttentionCudaPath a, AttentionCudaPath b,
                           const char *tag) {
    AttnRef r(c, CORE_BF16, false);
    std::array<Vec, 5> ga = attention_gpu(r, c, CORE_BF16, a), gb = attention_gpu(r, c, CORE_BF16, b);
    for (int i = 0; i < 5; i++) {
        char what[96];
        snprintf(what, sizeof what, "attention %s T=%d H=%d/%d hd=%d %s", tag, c.T, c.H, c.Hkv,
                 c.hd, kAttnNames[i]);
        EXPECT_CLOSE(ga[i], gb[i], i == 1 ? CORE_F32 : CORE_BF16, what);
    }
}

// True when cuDNN runs case c; else the test is skipped with the reason (the log line above it
// says why cuDNN is missing: tools/gpu_run.sh puts PyTorch's cuDNN on the library path).
bool cudnn_runs(const AttnCase &c) {
    return attention_cuda_cudnn_applies(CORE_BF16, c.B, c.T, c.H, c.Hkv, c.hd) != 0;
}
#define SKIP_WITHOUT_CUDNN(c)                                                                  \
    if (!cudnn_runs(c))                                                                        \
    GTEST_SKIP() << "cuDNN does not run attention here (libcudnn.so.9 not loaded, or the "    \
                    "graph did not build: see the log)"
// Once cuDNN runs one case, every other case of the test must run too: a shape it turns down is
// a failure here (forcing the path would end the process), not a skip.
bool cudnn_runs_case(const AttnCase &c) {
    bool ok = cudnn_runs(c);
    if (!ok)
        ADD_FAILURE() << "cuDNN does not run B=" << c.B << " T=" << c.T << " H=" << c.H
                      << " Hkv=" << c.Hkv << " hd=" << c.hd << " (see the log)";
    return ok;
}

// T not a multiple of the 32- or 64-row tiles (3 tiles of 64, the last partial, so the
// tensor-core kernels see full, diagonal and out-of-range tiles); 4 query heads per kv head.
const AttnCase kAttnSmall[] = {{2, 150, 8, 2, 16}, {2, 150, 8, 2, 32}, {2, 150, 8, 2, 64},
                               {2, 150, 8, 2, 128}};

TEST_F(Gpu, AttentionForwardAndBackward) {
    for (const AttnCase &c : kAttnSmall)
        for (CoreDtype dt : kDtypes)
            attention_vs_cpu(c, dt, ATTENTION_CUDA_TENSOR_CORES, ATTENTION_CUDA_TENSOR_CORES,
                             "kernels");
}

// More sequences × heads than a grid's y dimension takes (65535): the kernels' grids put them on x
// (they failed to launch at batch 16384 of 4 heads, review 2026-12-05).
TEST_F(Gpu, AttentionManySequences) {
    for (int hd : {16, 64})
        for (CoreDtype dt : kDtypes)
            attention_vs_cpu({16384, 4, 4, 2, hd}, dt, ATTENTION_CUDA_TENSOR_CORES, ATTENTION_CUDA_TENSOR_CORES,
                             "many sequences");
}

// The tensor-core kernels against the CUDA-core ones (same bf16 inputs) over a longer sequence
// than the CPU reference can afford: many off-diagonal tiles, the last one partial. Small enough
// for the sanitizer stage (racecheck slows the CUDA-core kernels a lot).
TEST_F(Gpu, AttentionTensorCoresMatchCudaCoresLongSequence) {
    for (int hd : {64, 128})
        attention_paths_agree({1, 600, 8, 2, hd}, ATTENTION_CUDA_TENSOR_CORES,
                              ATTENTION_CUDA_CUDA_CORES, "tensor cores vs CUDA cores");
}

// cuDNN against the CPU at the kernels' shapes, and with one kv head (MQA) and none shared (MHA).
TEST_F(Gpu, AttentionCudnnMatchesCpu) {
    SKIP_WITHOUT_CUDNN(kAttnSmall[2]);
    for (int hd : {64, 128})
        for (AttnCase c : {AttnCase{2, 150, 8, 2, hd}, AttnCase{1, 97, 4, 1, hd},
                           AttnCase{1, 130, 4, 4, hd}})
            if (cudnn_runs_case(c))
                attention_vs_cpu(c, CORE_BF16, ATTENTION_CUDA_CUDNN, ATTENTION_CUDA_CUDNN, "cudnn");
}

// cuDNN's backward with its default algorithm (config key deterministic = 0: dQ summed with
// atomics) against the CPU, within the same bf16 tolerance.
TEST_F(Gpu, AttentionCudnnNotDeterministicMatchesCpu) {
    const AttnCase c = {2, 150, 8, 2, 64};
    SKIP_WITHOUT_CUDNN(c);
    attention_cudnn_set_deterministic(0);
    for (int hd : {64, 128})
        if (cudnn_runs_case({2, 150, 8, 2, hd}))
            attention_vs_cpu({2, 150, 8, 2, hd}, CORE_BF16, ATTENTION_CUDA_CUDNN, ATTENTION_CUDA_CUDNN,
                             "cudnn, not deterministic");
    attention_cudnn_set_deterministic(1);
}

// cuDNN's softmax statistics are our lse: its forward feeds the tensor-core backward, and the
// tensor-core forward feeds its backward (as where only one direction's graph builds).
TEST_F(Gpu, AttentionCudnnLseFeedsTheKernelsAndBack) {
    const AttnCase c = {2, 150, 8, 2, 64};
    SKIP_WITHOUT_CUDNN(c);
    attention_vs_cpu(c, CORE_BF16, ATTENTION_CUDA_CUDNN, ATTENTION_CUDA_TENSOR_CORES,
                     "cudnn fwd + kernel bwd");
    attention_vs_cpu(c, CORE_BF16, ATTENTION_CUDA_TENSOR_CORES, ATTENTION_CUDA_CUDNN,
                     "kernel fwd + cudnn bwd");
}

// The trainer's default path at a length cuDNN may turn down (T 1: one key; its backward does not
// take s_q = s_kv = 1): whatever runs, falling back per direction, matches the CPU. Runs with and
// without cuDNN.
TEST_F(Gpu, AttentionCudnnAutoPathMatchesCpuAtEveryLength) {
    for (int T : {1, 2, 150})
        attention_vs_cpu({2, T, 8, 2, 64}, CORE_BF16, ATTENTION_CUDA_AUTO, ATTENTION_CUDA_AUTO,
                         "auto");
}

// cuDNN against the tensor-core kernels over long sequences: T 600 (partial last tile) and the
// bench config's head layout (H 16, Hkv 4) at T 2048.
TEST_F(Gpu, AttentionCudnnMatchesTensorCoresLongSequence) {
    SKIP_WITHOUT_CUDNN(AttnCase({1, 600, 8, 2, 64}));
    for (int hd : {64, 128})
        for (AttnCase c : {AttnCase{1, 600, 8, 2, hd}, AttnCase{1, 2048, 16, 4, hd}})
            if (cudnn_runs_case(c))
                attention_paths_agree(c, ATTENTION_CUDA_CUDNN, ATTENTION_CUDA_TENSOR_CORES,
                                      "cudnn vs tensor cores");
}

// Twice on the same inputs: the forward's and the backward's outputs bit for bit.
void attention_bit_identical(const AttnCase &c, CoreDtype dt, AttentionCudaPath path) {
    AttnRef r(c, dt, false);
    std::array<Vec, 5> first = attention_gpu(r, c, dt, path), again = attention_gpu(r, c, dt, path);
    for (int i = 0; i < 5; i++)
        EXPECT_EQ(0, memcmp(first[i].data(), again[i].data(), first[i].size() * sizeof(float)))
            << "path " << (int)path << " " << dname(dt) << " hd " << c.hd << " " << kAttnNames[i];
}

// Both kernel sets: CUDA cores (fp32, hd 32) and tensor cores (bf16, hd 64); every output row is
// owned by one block.
TEST_F(Gpu, AttentionIsBitIdenticalRunToRun) {
    attention_bit_identical({1, 80, 4, 1, 32}, CORE_F32, ATTENTION_CUDA_CUDA_CORES);
    attention_bit_identical({1, 80, 4, 1, 64}, CORE_BF16, ATTENTION_CUDA_TENSOR_CORES);
}

// cuDNN with grouped-query heads and T not a multiple of 64: its backward runs the deterministic
// algorithm (attention_cudnn.cu), without which dQ's atomic sums would differ run to run.
TEST_F(Gpu, AttentionCudnnIsBitIdenticalRunToRun) {
    SKIP_WITHOUT_CUDNN(AttnCase({2, 200, 8, 2, 64}));
    for (int hd : {64, 128})
        if (cudnn_runs_case({2, 200, 8, 2, hd}))
            attention_bit_identical({2, 200, 8, 2, hd}, CORE_BF16, ATTENTION_CUDA_CUDNN);
}

// Where cuDNN runs a shape, the default path (the trainer's) is cuDNN: the same bits as forcing it.
TEST_F(Gpu, AttentionCudnnIsTheDefaultWhereItRuns) {
    const AttnCase c = {2, 200, 8, 2, 64};
    SKIP_WITHOUT_CUDNN(c);
    AttnRef r(c, CORE_BF16, false);
    std::array<Vec, 5> forced = attention_gpu(r, c, CORE_BF16, ATTENTION_CUDA_CUDNN),
                       dflt = attention_gpu(r, c, CORE_BF16, ATTENTION_CUDA_AUTO);
    for (int i = 0; i < 5; i++)
        EXPECT_EQ(0, memcmp(forced[i].data(), dflt[i].data(), forced[i].size() * sizeof(float)))
            << kAttnNames[i];
}

// cuDNN on a side stream (its own cuDNN handle and graphs, as a pipeline worker thread has):
// the same bits as on the main stream.
TEST_F(Gpu, AttentionCudnnSideStreamMatchesMainStream) {
    const AttnCase c = {2, 200, 8, 2, 128};
    SKIP_WITHOUT_CUDNN(c);
    AttnRef r(c, CORE_BF16, false);
    std::array<Vec, 5> main_run = attention_gpu(r, c, CORE_BF16, ATTENTION_CUDA_CUDNN);
    CoreCudaStream *side = core_cuda_stream_create();
    core_cuda_use_stream(side);
    std::array<Vec, 5> side_run = attention_gpu(r, c, CORE_BF16, ATTENTION_CUDA_CUDNN);
    core_cuda_sync();
    core_cuda_use_stream(NULL);
    core_cuda_stream_free(side);
    for (int i = 0; i < 5; i++)
        EXPECT_EQ(0, memcmp(main_run[i].data(), side_run[i].data(), main_run[i].size() * sizeof(float)))
            << kAttnNames[i];
}

// The backward of B ≥ 2 sequences runs as two halves on two streams (attention_cudnn.cu): the
// same bits as one call over the whole batch, for an even and an odd B, both algorithms.
TEST_F(Gpu, AttentionCudnnTwoStreamsMatchOneCall) {
    SKIP_WITHOUT_CUDNN(AttnCase({2, 200, 8, 2, 64}));
    for (int det : {1, 0})
        for (AttnCase c : {AttnCase{2, 200, 8, 2, 64}, AttnCase{3, 130, 8, 2, 128}}) {
            if (!cudnn_runs_case(c)) continue;
            attention_cudnn_set_deterministic(det);
            AttnRef r(c, CORE_BF16, false);
            attention_cudnn_set_streams(1);
            std::array<Vec, 5> one = attention_gpu(r, c, CORE_BF16, ATTENTION_CUDA_CUDNN);
            attention_cudnn_set_streams(2);
            std::array<Vec, 5> two = attention_gpu(r, c, CORE_BF16, ATTENTION_CUDA_CUDNN);
            for (int i = 0; i < 5; i++) {
                char what[96];
                snprintf(what, sizeof what, "B=%d hd=%d %s%s", c.B, c.hd, kAttnNames[i],
                         det ? "" : " (atomics)");
                if (det)
                    EXPECT_EQ(0, memcmp(one[i].data(), two[i].data(), one[i].size() * sizeof(float)))
                        << what;
                else  // atomic sums: their order varies, so the bf16 tolerance
                    EXPECT_CLOSE(one[i], two[i], i == 1 ? CORE_F32 : CORE_BF16, what);
            }
        }
    attention_cudnn_set_deterministic(1);
}

// Where cuDNN cannot build a half's backward graph (refused here through the test seam, as a
// failed build leaves it), the backward runs as one call over the whole batch: cuDNN still runs
// the shape (supports, and the forced path would end the process if not), with one call's bits.
// The shape is one no other test runs: the refusal lasts for the process.
TEST_F(Gpu, AttentionCudnnRefusedHalfRunsAsOneCall) {
    const AttnCase c = {4, 72, 4, 2, 64};
    SKIP_WITHOUT_CUDNN(c);
    AttnRef r(c, CORE_BF16, false);
    attention_cudnn_set_streams(1);
    std::array<Vec, 5> one = attention_gpu(r, c, CORE_BF16, ATTENTION_CUDA_CUDNN);
    attention_cudnn_test_refuse_backward(c.B / 2, c.T, c.H, c.Hkv, c.hd);
    // The halves would give the same bits: the refusal must hold, or this test proves nothing.
    ASSERT_FALSE(attention_cudnn_supports(c.B / 2, c.T, c.H, c.Hkv, c.hd)) << "the seam refused nothing";
    attention_cudnn_set_streams(2);
    ASSERT_TRUE(attention_cudnn_supports(c.B, c.T, c.H, c.Hkv, c.hd));
    std::array<Vec, 5> two = attention_gpu(r, c, CORE_BF16, ATTENTION_CUDA_CUDNN);
    for (int i = 0; i < 5; i++)
        EXPECT_EQ(0, memcmp(one[i].data(), two[i].data(), one[i].size() * sizeof(float))) << kAttnNames[i];
}

// ---------------------------------------------------------------------------------------------
// Router and MoE data movement.

// Router outputs against the CPU. The chosen ids must match exactly, except for tokens whose
// K-th and (K+1)-th keys on the CPU are so close (< 1e-5) that one ulp of expf may swap them.
void router_case(int N, const RouterCfg &c, bool all_equal, bool with_bias) {
    int E = c.E, K = c.K;
    Vec l = all_equal ? Vec((size_t)N * E, 0.3f) : rnd((size_t)N * E, -3, 3);
    Vec bias = with_bias ? rnd(E, -0.05f, 0.05f) : Vec(E, 0.0f);
    BufP dL = put_f32(l), dBias = put_f32(bias);
    BufP dS = poisoned((size_t)N * E, CORE_F32), dG = poisoned((size_t)N * K, CORE_F32);
    BufP dIdx = put_int(IVec((size_t)N * K, -1));
    Vec s((size_t)N * E), g((size_t)N * K);
    IVec idx((size_t)N * K);
    router_forward(s.data(), idx.data(), g.data(), l.data(), with_bias ? bias.data() : NULL, &c, N, NULL);
    router_cuda_forward(dS->f(), dIdx->i(), dG->f(), dL->f(), with_bias ? dBias->f() : NULL, &c, N, NULL);
    IVec gidx = get_int(*dIdx, idx.size());
    int skipped = 0;
    for (int t = 0; t < N; t++) {
        // The CPU's experts by key, to find near-ties among the first K + 1: two keys closer than
        // what the GPU's rounding may move them (expf's ulps and the softmax sum's order, about
        // 1e-6 of the score, plus the key's own rounding) may come out in either order.
        const float *st = s.data() + (size_t)t * E;
        auto key = [&](int i) { return st[i] + bias[i]; };
        std::vector<int> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) > key(b); });
        bool near_tie = false;
        for (int j = 0; j + 1 < E && j < K; j++) {
            int a = order[j], b = order[j + 1];
            float gap = key(a) - key(b);
            float slack = 2e-6f * (std::max(st[a], st[b]) +
                                   std::max(std::fabs(key(a)), std::fabs(key(b))));
            near_tie |= gap != 0.0f && gap < slack;
        }
        if (near_tie) {
            skipped++;
            continue;
        }
        for (int k = 0; k < K; k++)
            ASSERT_EQ(gidx[(size_t)t * K + k], idx[(size_t)t * K + k])
                << "token " << t << " choice " << k;
    }
    EXPECT_LT(skipped, N / 10) << "too many near-ties to test the choice";
    Vec gs = get_f32(*dS, s.size()), gg = get_f32(*dG, g.size());
    EXPECT_CLOSE(gs, s, CORE_F32, "router scores");
    // Gates of skipped tokens may belong to other experts: compare the others only.
    Vec gg_cmp, g_cmp;
    for (int t = 0; t < N; t++)
        if (std::equal(idx.begin() + (size_t)t * K, idx.begin() + (size_t)(t + 1) * K,
                       gidx.begin() + (size_t)t * K))
            for (int k = 0; k < K; k++) {
                gg_cmp.push_back(gg[(size_t)t * K + k]);
                g_cmp.push_back(g[(size_t)t * K + k]);
            }
    EXPECT_CLOSE(gg_cmp, g_cmp, CORE_F32, "router gates");

    // Backward from the CPU's own routing (idx, scores) so both sides differentiate one choice.
    Vec dg = rnd((size_t)N * K), dsc = rnd((size_t)N * E), dl = rnd((size_t)N * E);
    BufP dDg = put_f32(dg), dDs = put_f32(dsc), dDl = put_f32(dl), dSc = put_f32(s);
    BufP dI = put_int(idx);
    router_backward_input(dl.data(), dg.data(), dsc.data(), s.data(), idx.data(), &c, N);
    router_cuda_backward_input(dDl->f(), dDg->f(), dDs->f(), dSc->f(), dI->i(), &c, N);
    EXPECT_CLOSE(get_f32(*dDl, dl.size()), dl, CORE_F32, "router backward_input");
}

TEST_F(Gpu, Router) {
    for (int softmax : {0, 1})
        for (int norm : {0, 1}) {
            RouterCfg c = {64, 6, softmax, norm, 2.5f};
            router_case(500, c, false, true);
        }
    RouterCfg wide = {160, 8, 0, 1, 1.0f};  // E beyond one expert per lane
    router_case(200, wide, false, true);
    RouterCfg all = {16, 16, 1, 1, 1.0f};  // K = E
    router_case(50, all, false, false);
}

TEST_F(Gpu, RouterTiesGoToTheLowerExpertId) {
    RouterCfg c = {40, 5, 0, 1, 1.0f};
    router_case(20, c, true, false);  // all scores equal: the CPU picks 0..4, so must the GPU
    Vec l(40, 0.3f);
    BufP dL = put_f32(l), dS = poisoned(40, CORE_F32), dG = poisoned(5, CORE_F32);
    BufP dIdx = put_int(IVec(5, -1));
    router_cuda_forward(dS->f(), dIdx->i(), dG->f(), dL->f(), NULL, &c, 1, NULL);
    EXPECT_EQ(get_int(*dIdx, 5), (IVec{0, 1, 2, 3, 4}));
}

// A token whose logits are all NaN (a diverged step, which the trainer then skips or stops at)
// still goes to experts inside [0, E): the K lowest ids, as router.c's insertion gives them, with
// and without the training counts. A kernel that kept NaN keys chose expert E, outside every
// buffer, and passed every test (mutation test, 2026-12-07).
TEST_F(Gpu, RouterNaNLogitsChooseExpertsInRange) {
    const int E = 40, K = 5, N = 3;
    for (int softmax : {0, 1})
        for (bool count : {false, true}) {
            RouterCfg c = {E, K, softmax, 1, 1.0f};
            Vec l = rnd((size_t)N * E, -3, 3);
            std::fill(l.begin() + E, l.begin() + 2 * E, NAN);  // token 1
            Vec s((size_t)N * E), g((size_t)N * K);
            IVec idx((size_t)N * K);
            router_forward(s.data(), idx.data(), g.data(), l.data(), NULL, &c, N, NULL);
            const IVec lowest = {0, 1, 2, 3, 4};
            EXPECT_EQ(IVec(idx.begin() + K, idx.begin() + 2 * K), lowest) << "the CPU";
            BufP dL = put_f32(l), dS = poisoned((size_t)N * E, CORE_F32), dG = poisoned((size_t)N * K, CORE_F32);
            BufP dIdx = put_int(IVec((size_t)N * K, -1));
            Buf dCounts(E * sizeof(long));
            core_cuda_memset(dCounts.p, 0, E * sizeof(long));
            router_cuda_forward(dS->f(), dIdx->i(), dG->f(), dL->f(), NULL, &c, N, count ? (long *)dCounts.p : NULL);
            const IVec got = get_int(*dIdx, idx.size());
            EXPECT_EQ(IVec(got.begin() + K, got.begin() + 2 * K), lowest) << "softmax " << softmax << ", counts " << count;
            for (int e : got) EXPECT_TRUE(e >= 0 && e < E) << "expert id " << e;
            if (count) {
                std::vector<long> counts(E);
                dev()->download(counts.data(), dCounts.p, E * sizeof(long));
                EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), 0L), (long)N * K);
            }
        }
}

// T 40 gives two blocks of rows per sequence; T 1100 gives 35, more than the 32 lanes that add a
// sequence's parts (a mean that added only the first 32 passed with T 40 alone).
TEST_F(Gpu, RouterBalanceLoss) {
    const int E = 16, K = 4;
    for (int T : {40, 1100}) {
        const int B = T > 64 ? 2 : 3, N = B * T;
        RouterCfg c = {E, K, 0, 1, 1.0f};
        Vec l = rnd((size_t)N * E, -3, 3), s((size_t)N * E), g((size_t)N * K);
        IVec idx((size_t)N * K);
        router_forward(s.data(), idx.data(), g.data(), l.data(), NULL, &c, N, NULL);
        Vec ds = rnd((size_t)N * E);
        BufP dS = put_f32(s), dIdx = put_int(idx), dDs = put_f32(ds), dLoss = poisoned(1, CORE_F32);
        Vec loss = {router_balance_loss(s.data(), idx.data(), B, T, E, K)};
        router_balance_loss_backward(ds.data(), 0.7f, s.data(), idx.data(), B, T, E, K);
        router_cuda_balance_loss(dLoss->f(), dS->f(), dIdx->i(), B, T, E, K);
        router_cuda_balance_loss_backward(dDs->f(), 0.7f, dS->f(), dIdx->i(), B, T, E, K);
        const std::string at = " (T " + std::to_string(T) + ")";
        EXPECT_CLOSE(get_f32(*dLoss, 1), loss, CORE_F32, ("router balance loss" + at).c_str());
        EXPECT_CLOSE(get_f32(*dDs, ds.size()), ds, CORE_F32, ("router balance loss backward" + at).c_str());
    }
}

// The expert counts that the router's forward adds up as it chooses, and the bias update of a
// training step, on the device: each layer's counts equal the histogram of the experts the kernel
// chose (exactly: integers), biases equal router.c's to the bit (the same double c̄ and sign rule).
TEST_F(Gpu, RouterCountAndBiasUpdate) {
    const int L = 3, E = 40, K = 6;
    for (int N : {1, 77, 5000}) {
        RouterCfg c = {E, K, 0, 1, 1.0f};
        std::vector<long> counts((size_t)L * E, 0);
        Buf dCounts(counts.size() * sizeof(long));
        core_cuda_memset(dCounts.p, 0, counts.size() * sizeof(long));
        for (int l = 0; l < L; l++)
            for (int rep = 0; rep < 2; rep++) {  // the counts accumulate over calls
                // Layer 1's bias sends every token to experts 0..K-1: all atomics on K counts.
                Vec bias(E, 0.0f);
                if (l == 1) std::fill(bias.begin(), bias.begin() + K, 10.0f);
                Vec logits = rnd((size_t)N * E, -3, 3);
                BufP dL = put_f32(logits), dBias = put_f32(bias);
                BufP dS = poisoned((size_t)N * E, CORE_F32), dG = poisoned((size_t)N * K, CORE_F32);
                BufP dIdx = put_int(IVec((size_t)N * K, -1));
                router_cuda_forward(dS->f(), dIdx->i(), dG->f(), dL->f(), dBias->f(), &c, N,
                                    (long *)dCounts.p + (size_t)l * E);
                for (int e : get_int(*dIdx, (size_t)N * K)) {
                    ASSERT_TRUE(e >= 0 && e < E) << "expert id " << e;
                    counts[(size_t)l * E + e]++;
                }
            }
        for (int e = 0; e < K; e++) EXPECT_EQ(counts[E + e], 2L * N) << "layer 1's biased experts";
        std::vector<long> got(counts.size());
        dev()->download(got.data(), dCounts.p, got.size() * sizeof(long));
        EXPECT_EQ(got, counts) << "N = " << N;

        // Layer 2 is skipped (a dense layer's NULL); n_tokens = 2N makes c̄ the mean of the counts.
        Vec b0 = rnd(E), b1 = rnd(E), b2 = rnd(E);
        BufP dB0 = put_f32(b0), dB1 = put_f32(b1), dB2 = put_f32(b2);
        float *bias[L] = {dB0->f(), dB1->f(), NULL};
        router_cuda_bias_update(bias, (const long *)dCounts.p, L, E, K, 2L * N, 0.01f);
        router_bias_update(b0.data(), counts.data(), E, K, 2L * N, 0.01f);
        router_bias_update(b1.data(), counts.data() + E, E, K, 2L * N, 0.01f);
        EXPECT_EQ(get_f32(*dB0, E), b0);
        EXPECT_EQ(get_f32(*dB1, E), b1);
        EXPECT_EQ(get_f32(*dB2, E), b2) << "a NULL layer must stay untouched";
    }
}

// More layers than one launch of the bias update takes (64: their pointers travel as a kernel
// argument), with dense layers' NULLs in both launches: each layer steps from its own counts.
TEST_F(Gpu, RouterBiasUpdateOverManyLayers) {
    const int L = 70, E = 5, K = 2;
    const long n_tokens = 40;
    std::vector<long> counts((size_t)L * E);
    for (size_t i = 0; i < counts.size(); i++) counts[i] = (long)((i * 7919) % 33);
    Buf dCounts(counts.size() * sizeof(long));
    dev()->upload(dCounts.p, counts.data(), counts.size() * sizeof(long));
    std::vector<Vec> want(L);
    std::vector<BufP> dBias(L);
    std::vector<float *> bias(L, nullptr);
    for (int l = 0; l < L; l++) {
        want[l] = rnd(E);
        dBias[l] = put_f32(want[l]);
        if (l % 9 == 4) continue;  // a dense layer
        bias[l] = dBias[l]->f();
        router_bias_update(want[l].data(), counts.data() + (size_t)l * E, E, K, n_tokens, 0.01f);
    }
    router_cuda_bias_update(bias.data(), (const long *)dCounts.p, L, E, K, n_tokens, 0.01f);
    for (int l = 0; l < L; l++) EXPECT_EQ(get_f32(*dBias[l], E), want[l]) << "layer " << l;
}

// The mean cross-entropy kept on the device: against the CPU's ordered double sum.
TEST_F(Gpu, LossMean) {
    for (int N : {1, 255, 257, 16384}) {
        Vec x = rnd((size_t)N, 0.0f, 10.0f);
        BufP dX = put_f32(x), dOut = poisoned(1, CORE_F32), dOut2 = poisoned(1, CORE_F32);
        double ref = 0;
        for (float v : x) ref += v;
        crossentropy_cuda_mean(dOut->f(), dX->f(), N);
        crossentropy_cuda_mean(dOut2->f(), dX->f(), N);
        EXPECT_CLOSE(get_f32(*dOut, 1), Vec{(float)(ref / N)}, CORE_F32, "loss mean");
        EXPECT_EQ(get_f32(*dOut, 1), get_f32(*dOut2, 1)) << "the mean must not vary between runs";
    }
}

// The plan against the CPU's stable counting sort (moe_counting_sort), row for row, at sizes whose
// (expert, tile) table spans several of the scan's chunks (PLAN_SCAN_THREADS · PLAN_SCAN_ITEMS
// entries, layers/moe.cu) and at one that fits in part of one; some experts receive nothing.
TEST_F(Gpu, MoePlanMatchesCountingSort) {
    const int shapes[][3] = {{16384, 6, 64}, {5000, 8, 300}, {37, 3, 5}};  // N, K, E
    for (auto &sh : shapes) {
        const int N = sh[0], K = sh[1], E = sh[2];
        SCOPED_TRACE(E);
        IVec idx = rnd_int((size_t)N * K, E);
        for (int &e : idx)
            if (e % 7 == 3) e = 0;  // experts 3, 10, ... empty, expert 0 large
        IVec counts(E), row((size_t)N * K);
        moe_counting_sort(idx.data(), (long)idx.size(), E, counts.data(), row.data(), nullptr);
        BufP dIdx = put_int(idx), dRowOf = put_int(IVec(idx.size(), -1)), dCounts = put_int(IVec(E, -1));
        moe_cuda_plan(dRowOf->i(), dCounts->i(), dIdx->i(), N, K, E);
        EXPECT_EQ(get_int(*dCounts, E), counts);
        EXPECT_EQ(get_int(*dRowOf, idx.size()), row);
    }
}

TEST_F(Gpu, MoePermuteUnpermuteCombine) {
    const int N = 300, K = 4, E = 16, D = 40;
    for (CoreDtype dt : kDtypes) {
        // Experts 3 and 11 receive nothing: empty ranges are ordinary.
        IVec idx = rnd_int((size_t)N * K, E);
        for (int &e : idx)
            if (e == 3 || e == 11) e = 5;
        Vec x = rnd((size_t)N * D), xk = rnd((size_t)N * K * D), gates = rnd((size_t)N * K);
        BufP dIdx = put_int(idx), dX = put(x, dt), dXk = put(xk, dt), dGates = put_f32(gates);
        MoeDispatcher *d = moe_local_dispatcher_create(E);
        IVec counts(E);
        int n_rows;
        MoeDispatchPlan *p = d->plan(d, idx.data(), N, K, &n_rows, counts.data());
        Vec rows((size_t)n_rows * D), rows_k((size_t)n_rows * D), back((size_t)N * K * D);
        d->to_experts(d, p, x.data(), 0, rows.data(), D);
        d->to_experts(d, p, xk.data(), 1, rows_k.data(), D);
        d->from_experts(d, p, rows_k.data(), back.data(), D);
        d->release(d, p);
        d->destroy(d);
        Vec y((size_t)N * D, 0.0f);
        for (int t = 0; t < N; t++)
            for (int k = 0; k < K; k++)
                for (int i = 0; i < D; i++)
                    y[(size_t)t * D + i] +=
                        gates[(size_t)t * K + k] * back[((size_t)t * K + k) * D + i];

        BufP dRowOf = put_int(IVec((size_t)N * K, -1)), dCounts = put_int(IVec(E, -1));
        moe_cuda_plan(dRowOf->i(), dCounts->i(), dIdx->i(), N, K, E);
        EXPECT_EQ(get_int(*dCounts, E), counts);
        const IVec row_of_h = get_int(*dRowOf, (size_t)N * K);
        BufP dRows = poisoned(rows.size(), dt), dRowsK = poisoned(rows.size(), dt);
        BufP dBack = poisoned(back.size(), dt), dY = poisoned(y.size(), dt);
        moe_cuda_permute(dt, dRows->p, dX->p, 0, dRowOf->i(), N, K, D);
        moe_cuda_permute(dt, dRowsK->p, dXk->p, 1, dRowOf->i(), N, K, D);
        moe_cuda_unpermute(dt, dBack->p, dRowsK->p, dRowOf->i(), N, K, D);
        const LayerOps *o = layer_ops_cuda(dt);
        o->moe_combine(dY->p, dBack->p, NULL, dGates->f(), N, K, D, NULL, 0);  // rows moved home (EP)
        // Moving rows is exact.
        EXPECT_EQ(get(*dRows, dt, rows.size()), rows) << dname(dt);
        EXPECT_EQ(get(*dRowsK, dt, rows.size()), rows_k) << dname(dt);
        EXPECT_EQ(get(*dBack, dt, back.size()), back) << dname(dt);
        EXPECT_CLOSE(get(*dY, dt, y.size()), y, dt, "moe combine");

        // The single-process layer's way: the combine, its backward and the sum of choices read
        // and write the expert rows in place through the plan's row map. Same bits as on rows
        // moved home, the backward's rows landing where the permute would have put them.
        const int *map = dRowOf->i();
        BufP dYm = poisoned(y.size(), dt);
        o->moe_combine(dYm->p, dRowsK->p, map, dGates->f(), N, K, D, NULL, 0);
        EXPECT_EQ(get(*dYm, dt, y.size()), get(*dY, dt, y.size())) << dname(dt);
        // With two addends (the shared experts' outputs): the bits of the combine followed by two
        // adds, in one pass.
        Vec sh = rnd(2 * y.size());
        BufP dShared = put(sh, dt), dYa = poisoned(y.size(), dt);
        o->moe_combine(dYa->p, dRowsK->p, map, dGates->f(), N, K, D, dShared->p, 2);
        for (int j = 0; j < 2; j++) {
            const void *sj = (char *)dShared->p + (size_t)j * y.size() * core_dtype_size(dt);
            o->add(dYm->p, dYm->p, sj, (long)y.size());
        }
        EXPECT_EQ(get(*dYa, dt, y.size()), get(*dYm, dt, y.size())) << dname(dt) << ": combine with addends";
        Vec dy = rnd((size_t)N * D), dx0 = rnd((size_t)N * D);
        BufP dDy = put(dy, dt);
        BufP dNk = poisoned(back.size(), dt), dNkRows = poisoned(rows.size(), dt), dRowsM = poisoned(rows.size(), dt);
        o->moe_combine_backward(dNk->p, dDy->p, NULL, dGates->f(), N, K, D);
        moe_cuda_permute(dt, dNkRows->p, dNk->p, 1, dRowOf->i(), N, K, D);
        o->moe_combine_backward(dRowsM->p, dDy->p, map, dGates->f(), N, K, D);
        EXPECT_EQ(get(*dRowsM, dt, rows.size()), get(*dNkRows, dt, rows.size())) << dname(dt);
        Vec dnk_ref(back.size());
        for (size_t i = 0; i < dnk_ref.size(); i++) dnk_ref[i] = gates[i / D] * dy[(i / D / K) * D + i % D];
        EXPECT_CLOSE(get(*dNk, dt, back.size()), dnk_ref, dt, "moe combine backward");

        // The gates' gradient from the experts' row dots s (one fp32 per row), in place through the
        // map and on dots moved home, against the CPU's: the same division, so the same bits, and 0
        // (not 0/0) where a gate is 0.
        Vec s_rows = rnd(rows.size() / D), g0 = gates;
        for (size_t w = 0; w < g0.size(); w += 7) g0[w] = 0.0f;
        Vec s_home(g0.size()), dg_ref(g0.size());
        for (size_t w = 0; w < g0.size(); w++) s_home[w] = s_rows[(size_t)row_of_h[w]];
        layer_ops_cpu.moe_gate_grad(dg_ref.data(), s_home.data(), NULL, g0.data(), N, K);
        BufP dS = put_f32(s_rows), dSh = put_f32(s_home), dG0 = put_f32(g0);
        BufP dDg = poisoned(g0.size(), CORE_F32), dDgh = poisoned(g0.size(), CORE_F32);
        o->moe_gate_grad(dDg->f(), dS->f(), map, dG0->f(), N, K);
        o->moe_gate_grad(dDgh->f(), dSh->f(), NULL, dG0->f(), N, K);
        EXPECT_EQ(get_f32(*dDg, g0.size()), dg_ref) << dname(dt);
        EXPECT_EQ(get_f32(*dDgh, g0.size()), dg_ref) << dname(dt);
        // Without a row map (EP) the dots travel as rows of one 4-byte word, 4 / size elements of
        // dt (the narrow-row kernel): both ways exact.
        const int w4 = 4 / (int)core_dtype_size(dt);
        BufP dSh2 = poisoned(g0.size(), CORE_F32), dS2 = poisoned(s_rows.size(), CORE_F32);
        moe_cuda_unpermute(dt, dSh2->p, dS->p, dRowOf->i(), N, K, w4);
        moe_cuda_permute(dt, dS2->p, dSh2->p, 1, dRowOf->i(), N, K, w4);
        EXPECT_EQ(get_f32(*dSh2, g0.size()), s_home) << dname(dt);
        EXPECT_EQ(get_f32(*dS2, s_rows.size()), s_rows) << dname(dt);
        BufP dDx = put(dx0, dt), dDxm = put(dx0, dt);
        o->moe_sum_choices(dDx->p, dBack->p, NULL, N, K, D);
        o->moe_sum_choices(dDxm->p, dRowsK->p, map, N, K, D);
        EXPECT_EQ(get(*dDxm, dt, dx0.size()), get(*dDx, dt, dx0.size())) << dname(dt);
        // And against the sum itself, dx0 (as the GPU holds it) plus each token's K rows: the two
        // ways alone passed a kernel that overwrote dx instead of adding to it (mutation test,
        // 2026-12-07).
        Vec back_h = get(*dBack, dt, back.size()), dx_ref = dx0;
        for (size_t i = 0; i < dx_ref.size(); i++)
            for (int k = 0; k < K; k++) dx_ref[i] += back_h[((i / D) * K + k) * D + i % D];
        EXPECT_CLOSE(get(*dDx, dt, dx0.size()), dx_ref, dt, "moe sum of choices");
    }
}

// The expert-parallel dispatcher's backend calls (parallel/ep_dispatch.c runs the same code on
// both devices through them): the CUDA table's ep_plan, ep_recv_pos, scatter_rows and gather_rows
// give the CPU table's results exactly. One GPU runs no exchange, so this is where the GPU side of
// the EP path is checked without a second GPU; nccl_test runs it end to end.
TEST_F(Gpu, EpTableCallsMatchTheCpuTable) {
    const LayerOps *cpu = &layer_ops_cpu;
    // ep_plan: 5 experts in R = 8 slots (EP 2 x 4), expert 1 replicated on slots 1 and 5, expert 3
    // on slots 3, 6 and 7, every expert present many times (the replica choice rotates with the
    // pair's rank among its expert's pairs, offset by me).
    const int E = 5, R = 8, maxcnt = 3, n = 5000;
    const IVec logcnt = {1, 2, 1, 3, 1};
    const IVec log2phy = {0, -1, -1, 1, 5, -1, 2, -1, -1, 3, 6, 7, 4, -1, -1};
    const IVec idx = rnd_int(n, E);
    BufP dIdx = put_int(idx), dL2p = put_int(log2phy), dCnt = put_int(logcnt);
    for (int me = 0; me < 3; me++) {
        IVec send_pos(n), counts(R);
        cpu->ep_plan(send_pos.data(), counts.data(), idx.data(), n, E, log2phy.data(), logcnt.data(), maxcnt,
                     me, R);
        BufP dPos = put_int(IVec(n, -1)), dCounts = put_int(IVec(R, -1));
        dev()->ep_plan(dPos->i(), dCounts->i(), dIdx->i(), n, E, dL2p->i(), dCnt->i(), maxcnt, me, R);
        EXPECT_EQ(get_int(*dCounts, R), counts) << "me " << me;
        EXPECT_EQ(get_int(*dPos, n), send_pos) << "me " << me;
    }

    // ep_recv_pos: 3 sources x 3 slots of random sizes, block 4 and the last block empty.
    const int B = 9;
    IVec rows = rnd_int(B, 40);
    rows[4] = rows[B - 1] = 0;
    IVec table(2 * B);
    int m = 0;
    for (int b = 0; b < B; b++) table[b] = m, m += rows[b];  // arrival: source-major
    int e = 0;
    for (int s = 0; s < 3; s++)
        for (int j = 0; j < 3; j++) table[B + j * 3 + s] = e, e += rows[j * 3 + s];  // expert rows: slot-major
    IVec recv_pos(m);
    cpu->ep_recv_pos(recv_pos.data(), table.data(), B, m);
    BufP dTable = put_int(table), dRecv = put_int(IVec(m, -1));
    dev()->ep_recv_pos(dRecv->i(), dTable->i(), B, m);
    EXPECT_EQ(get_int(*dRecv, m), recv_pos);

    // scatter_rows (per choice and per token) and gather_rows through the send positions of one
    // plan: moving rows is exact in both dtypes.
    const int N = n / 5, K = 5, D = 24;
    IVec send_pos(n), counts(R);
    cpu->ep_plan(send_pos.data(), counts.data(), idx.data(), n, E, log2phy.data(), logcnt.data(), maxcnt, 0, R);
    BufP dPos = put_int(send_pos);
    for (CoreDtype dt : kDtypes) {
        const LayerOps *o = layer_ops_cuda(dt);
        Vec x = rnd((size_t)N * D), xk = rnd((size_t)n * D);
        BufP dX = put(x, dt), dXk = put(xk, dt);
        for (int per_choice = 0; per_choice < 2; per_choice++) {
            Vec ref((size_t)n * D);
            cpu->scatter_rows(ref.data(), per_choice ? xk.data() : x.data(), per_choice, send_pos.data(), N, K, D);
            BufP dRows = poisoned(ref.size(), dt);
            o->scatter_rows(dRows->p, per_choice ? dXk->p : dX->p, per_choice, dPos->i(), N, K, D);
            EXPECT_EQ(get(*dRows, dt, ref.size()), ref) << dname(dt) << " per_choice " << per_choice;
            if (!per_choice) continue;
            Vec back(ref.size());
            cpu->gather_rows(back.data(), ref.data(), send_pos.data(), n, D);
            EXPECT_EQ(back, xk);
            BufP dBack = poisoned(ref.size(), dt);
            o->gather_rows(dBack->p, dRows->p, dPos->i(), n, D);
            EXPECT_EQ(get(*dBack, dt, ref.size()), xk) << dname(dt);
        }
    }
}

// The whole MoE layer (local dispatcher, routed and shared experts, balance loss) on the GPU
// against the CPU: y, dx and every gradient. The router's gradient goes through the gates'
// gradient, which the backward makes from the experts' row dots (moe_gate_grad): a wrong dot or a
// wrong division fails it. fp32 with top-2 routing (the same choices as the CPU); bf16 with K = E,
// since bf16 rounding can flip a near-tie choice of top-k (model_gpu_test.cc says more), and bf16
// top-2 on a designed routing that no rounding can flip: every expert's group of rows has its own
// size, some none (with K = E all groups are N rows, so a mix-up of the groups' counts or first
// rows in the grouped GEMMs, which take the counts on the device in bf16, would pass). The bounds
// are model_gpu_test's per-tensor ones: a chain of five products and the router behind them.
TEST_F(Gpu, MoeLayerMatchesCpu) {
    struct Variant {
        CoreDtype dt;
        int K;
        bool designed;
    };
    for (const Variant v : {Variant{CORE_F32, 2, false}, Variant{CORE_BF16, 8, false}, Variant{CORE_BF16, 2, true}}) {
        const CoreDtype dt = v.dt;
        SCOPED_TRACE(v.designed ? "designed top-2 routing" : "random routing");
        MoeShape sh;
        sh.D = 64;
        sh.E = 8;
        sh.K = v.K;
        sh.S = 1;
        sh.Fe = 48;
        sh.rc = RouterCfg{sh.E, sh.K, 0, 1, 2.5f};
        sh.alpha = 0.1f;
        const int B = 2, T = 32, N = B * T, D = sh.D, E = sh.E, Fe = sh.Fe;
        const size_t nw = (size_t)E * Fe * D, ns = (size_t)sh.S * Fe * D;
        Vec router = rnd((size_t)E * D, -0.3f, 0.3f), bias = rnd(E, -0.05f, 0.05f);
        Vec w13 = rnd(2 * nw, -0.2f, 0.2f), w2 = rnd(nw, -0.2f, 0.2f);
        Vec sw13 = rnd(2 * ns, -0.2f, 0.2f), sw2 = rnd(ns, -0.2f, 0.2f);
        Vec x = rnd((size_t)N * D), dy = rnd((size_t)N * D);
        if (v.designed) {
            // Logit e of token t is x[t][e]: 4 for its two experts (score sigmoid 4 = 0.982), 0 for
            // the others (0.5), a gap no bias (±0.05) or rounding closes. Token t takes t mod 3 and 4
            // or 7: experts 0-2 about N/3 rows each, 4 four fifths of N, 7 one fifth, 3, 5 and 6 none.
            std::fill(router.begin(), router.end(), 0.0f);
            for (int e = 0; e < E; e++) router[(size_t)e * D + e] = 1.0f;
            for (int t = 0; t < N; t++)
                for (int e = 0; e < E; e++)
                    x[(size_t)t * D + e] = e == t % 3 || e == (t % 5 ? 4 : 7) ? 4.0f : 0.0f;
        }
        BufP dR = put(router, dt), dBias = put_f32(bias), dW13 = put(w13, dt), dW2 = put(w2, dt),
             dSw13 = put(sw13, dt), dSw2 = put(sw2, dt), dX = put(x, dt), dDy = put(dy, dt);

        // The CPU on the values the GPU holds.
        MoeParams pc = {router.data(), bias.data(), w13.data(), w2.data(), sw13.data(), sw2.data()};
        Vec y((size_t)N * D), dx((size_t)N * D, 0.0f), gr((size_t)E * D, 0.0f), g13(2 * nw), g2(nw), gs13(2 * ns),
            gs2(ns);
        MoeGrads gc = {gr.data(), g13.data(), g2.data(), gs13.data(), gs2.data()};
        MoeDispatcher *dc = moe_local_dispatcher_create(E);
        MoeActs ac;
        moe_forward(y.data(), &ac, x.data(), &sh, &pc, dc, B, T, NULL);
        moe_backward_input(dx.data(), &ac, dy.data(), &sh, &pc, dc);
        moe_backward_weight(&gc, &ac, dy.data(), &sh, dc, 0);
        moe_acts_free(&ac, dc);
        dc->destroy(dc);

        const LayerOps *o = layer_ops_cuda(dt);
        MoeParams pg = {dR->p, dBias->f(), dW13->p, dW2->p, dSw13->p, dSw2->p};
        Vec zx((size_t)N * D, 0.0f), zr((size_t)E * D, 0.0f);
        BufP dY = poisoned(y.size(), dt), dDx = put(zx, dt), dGr = put_f32(zr), dG13 = poisoned(2 * nw, CORE_F32),
             dG2 = poisoned(nw, CORE_F32), dGs13 = poisoned(2 * ns, CORE_F32), dGs2 = poisoned(ns, CORE_F32);
        MoeGrads gg = {dGr->f(), dG13->f(), dG2->f(), dGs13->f(), dGs2->f()};
        MoeDispatcher *dd = o->local_dispatcher(E);
        MoeActs ag;
        moe_forward(dY->p, &ag, dX->p, &sh, &pg, dd, B, T, NULL);
        moe_backward_input(dDx->p, &ag, dDy->p, &sh, &pg, dd);
        moe_backward_weight(&gg, &ag, dDy->p, &sh, dd, 0);
        moe_acts_free(&ag, dd);
        dd->destroy(dd);

        const double bound = dt == CORE_BF16 ? 2e-2 : 1e-4;
        auto expect = [&](const Vec &got, const Vec &ref, const char *what) {
            double e = rel_err(got, ref);
            printf("  moe layer %-28s %s  rel err %.2e\n", what, dname(dt), e);
            EXPECT_LT(e, bound) << what << " (" << dname(dt) << ")";
        };
        expect(get(*dY, dt, y.size()), y, "y");
        expect(get(*dDx, dt, dx.size()), dx, "dx");
        expect(get_f32(*dGr, gr.size()), gr, "router gradient");
        expect(get_f32(*dG13, 2 * nw), g13, "w13 gradient");
        expect(get_f32(*dG2, nw), g2, "w2 gradient");
        expect(get_f32(*dGs13, 2 * ns), gs13, "sw13 gradient");
        expect(get_f32(*dGs2, ns), gs2, "sw2 gradient");
    }
}

// A plan of idx (N, K) whose rows go out to the experts and come home (rows of 64 bf16 values),
// then its release.
void move_rows_then_release(const LayerOps *o, const int *idx, int N, int K, int E) {
    const int D = 64;
    MoeDispatcher *d = o->local_dispatcher(E);
    IVec counts(E);
    int n_rows;
    MoeDispatchPlan *p = d->plan(d, idx, N, K, &n_rows, counts.data());
    BufP x = poisoned((size_t)N * D, CORE_BF16), rows = poisoned((size_t)n_rows * D, CORE_BF16);
    BufP home = poisoned((size_t)N * K * D, CORE_BF16);
    d->to_experts(d, p, x->p, 0, rows->p, D);
    d->from_experts(d, p, rows->p, home->p, D);
    o->sync();
    d->release(d, p);
    d->destroy(d);
}

// The GPU dispatcher's plan leaves the counts in flight; plan_wait brings them: the host's count of
// each expert, while work queued between the two (here a copy of its own) runs; dev_counts has
// them on the device from the start; a plan released without its wait gives its staging back.
TEST_F(Gpu, LocalDispatcherCountsAtWait) {
    const int N = 300, K = 3, E = 16;
    IVec idx = rnd_int((size_t)N * K, E), want(E, 0);
    for (int e : idx) want[e]++;
    BufP dIdx = put_int(idx);
    const LayerOps *o = layer_ops_cuda(CORE_BF16);
    MoeDispatcher *d = o->local_dispatcher(E);
    ASSERT_NE(d->plan_wait, nullptr);
    for (int round = 0; round < 3; round++) {
        IVec counts(E, -1);
        int n_rows = 0;
        MoeDispatchPlan *p = d->plan(d, dIdx->i(), N, K, &n_rows, counts.data());
        EXPECT_EQ(n_rows, N * K);
        Vec big = rnd(1 << 20);
        BufP dBig = put_f32(big), dCopy(new Buf(big.size() * 4));
        o->copy(dCopy->p, dBig->p, big.size() * 4);
        ASSERT_NE(d->dev_counts, nullptr);
        IVec dev_counts(E);
        dev()->download(dev_counts.data(), d->dev_counts(d, p), E * sizeof(int));
        EXPECT_EQ(dev_counts, want);
        d->plan_wait(d, p);
        EXPECT_EQ(counts, want);
        EXPECT_EQ(get_f32(*dCopy, big.size()), big);
        d->release(d, p);
        MoeDispatchPlan *q = d->plan(d, dIdx->i(), N, K, &n_rows, counts.data());
        d->release(d, q);
    }
    d->destroy(d);
}

// A bad expert id ends the job at the plan's wait, also after rows moved through the plan (the
// layer's forward with dev_counts moves them before it waits): in bounds, no illegal access first.
// (Death tests apart: the sanitizer stage leaves them out.)
TEST_F(Gpu, LocalDispatcherBadIdDeath) {
    const int N = 300, K = 3, E = 16;
    IVec bad = rnd_int((size_t)N * K, E);
    bad[7] = E;
    BufP dBad = put_int(bad);
    const LayerOps *o = layer_ops_cuda(CORE_BF16);
    EXPECT_EXIT(
        {
            MoeDispatcher *b = o->local_dispatcher(E);
            IVec counts(E);
            int n_rows;
            moe_plan_now(b, dBad->i(), N, K, &n_rows, counts.data());
        },
        ::testing::ExitedWithCode(1), "moe: expert id 16 at position 7 is outside");
    EXPECT_EXIT(move_rows_then_release(o, dBad->i(), N, K, E), ::testing::ExitedWithCode(1),
                "moe: expert id 16 at position 7 is outside");
}

TEST_F(Gpu, MoeExpertIdOutOfRangeDeath) {
    IVec bad = {0, 1, 16, 2};
    BufP dBad = put_int(bad), dRowOf = poisoned(4, CORE_F32), dCounts = poisoned(16, CORE_F32);
    EXPECT_EXIT(moe_cuda_plan(dRowOf->i(), dCounts->i(), dBad->i(), 2, 2, 16),
                ::testing::ExitedWithCode(1), "moe: expert id 16 at position 2 is outside");
}

// ---------------------------------------------------------------------------------------------
// AdamW against framework/optimizer.c on a small parameter registry (a matrix with weight decay,
// a vector without), three steps with fresh gradients each.

TEST_F(Gpu, AdamW) {
    MoeConfig c;
    config_defaults(&c);
    ParamRegistry r;
    memset(&r, 0, sizeof r);
    // Sizes in multiples of 16 floats: the registry then leaves no alignment gaps between them.
    int64_t mat[2] = {37, 48}, vec[1] = {304};
    params_add(&r, "w", 0, PARAM_DENSE, 2, mat, 37, 0.02f, 0.0f);
    params_add(&r, "g", 0, PARAM_DENSE, 1, vec, 304, 0.0f, 1.0f);
    ASSERT_EQ(r.total, (size_t)(37 * 48 + 304));
    params_allocate(&r);
    size_t n = r.total;
    Vec p0 = rnd(n);
    memcpy(r.data, p0.data(), n * sizeof(float));
    AdamW o;
    adamw_init(&o, &r);
    BufP dP = put_f32(p0), dM(new Buf(n * 4)), dV(new Buf(n * 4));
    BufP dLow = poisoned(n, CORE_BF16);
    // A second copy steps each tensor as its first element and the misaligned rest, all four spans
    // in one call: the one-element path, which must give the 16-byte path's bits.
    BufP dP1 = put_f32(p0), dM1(new Buf(n * 4)), dV1(new Buf(n * 4)), dLow1 = poisoned(n, CORE_BF16);
    std::vector<AdamwSpan> whole, split;
    for (int i = 0; i < r.n; i++) {
        const ParamInfo *pi = &r.p[i];
        const long at = (long)pi->offset, numel = (long)pi->numel;
        whole.push_back({at, at, numel, pi->decay});
        split.push_back({at, at, 1, pi->decay});
        split.push_back({at + 1, at + 1, numel - 1, pi->decay});
    }
    const float lr = 3e-3f;
    for (int step = 1; step <= 3; step++) {
        Vec g = rnd(n, -0.5f, 0.5f);
        memcpy(r.grad, g.data(), n * sizeof(float));
        BufP dGr = put_f32(g);
        // Steps 2 and 3 clip: the factor scales the gradients as they are read.
        const float gscale = step == 1 ? 1.0f : 0.37f * (float)step;
        adamw_step(&o, &r, &c, lr, gscale);
        AdamwHyper h = {lr, c.beta1, c.beta2, c.adam_eps, c.weight_decay, step, gscale};
        adamw_cuda_step(dP->f(), dGr->f(), dM->f(), dV->f(), dLow->p, CORE_BF16, whole.data(), (int)whole.size(), &h);
        adamw_cuda_step(dP1->f(), dGr->f(), dM1->f(), dV1->f(), dLow1->p, CORE_BF16, split.data(), (int)split.size(),
                        &h);
    }
    EXPECT_EQ(get_f32(*dP1, n), get_f32(*dP, n)) << "one element a thread against four";
    EXPECT_EQ(get_f32(*dM1, n), get_f32(*dM, n));
    EXPECT_EQ(get_f32(*dV1, n), get_f32(*dV, n));
    EXPECT_EQ(get(*dLow1, CORE_BF16, n), get(*dLow, CORE_BF16, n));
    Vec p(r.data, r.data + n), m(o.m, o.m + n), v(o.v, o.v + n);
    Vec gp = get_f32(*dP, n);
    EXPECT_CLOSE(gp, p, CORE_F32, "adamw params (3 steps)");
    EXPECT_CLOSE(get_f32(*dM, n), m, CORE_F32, "adamw first moment");
    EXPECT_CLOSE(get_f32(*dV, n), v, CORE_F32, "adamw second moment");
    // The compute copy is the fp32 result rounded to bf16.
    Vec low = get(*dLow, CORE_BF16, n), gp_rounded = gp;
    put(gp_rounded, CORE_BF16);
    EXPECT_EQ(low, gp_rounded);
    adamw_free(&o);
    params_free(&r);
}

// AdamW over more spans than one launch takes (ADAMW_SPANS_PER_LAUNCH = 96), some empty, some
// misaligned, in one call: the same bits as one call per span.
TEST_F(Gpu, AdamWManySpans) {
    std::vector<AdamwSpan> spans;
    long n = 0;
    for (int i = 0; i < 250; i++) {
        const long len = i % 7 == 0 ? 0 : 1 + (i * 37) % 700;
        spans.push_back({n, n, len, i % 3 != 0});
        n += len + i % 2;  // odd gaps: misaligned starts
    }
    Vec p0 = rnd((size_t)n), g = rnd((size_t)n, -0.5f, 0.5f);
    BufP dG = put_f32(g);
    BufP dP = put_f32(p0), dM(new Buf(n * 4)), dV(new Buf(n * 4)), dLow = poisoned(n, CORE_BF16);
    BufP dP1 = put_f32(p0), dM1(new Buf(n * 4)), dV1(new Buf(n * 4)), dLow1 = poisoned(n, CORE_BF16);
    const AdamwHyper h = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 0.5f};
    adamw_cuda_step(dP->f(), dG->f(), dM->f(), dV->f(), dLow->p, CORE_BF16, spans.data(), (int)spans.size(), &h);
    for (const AdamwSpan &s : spans)
        adamw_cuda_step(dP1->f(), dG->f(), dM1->f(), dV1->f(), dLow1->p, CORE_BF16, &s, 1, &h);
    EXPECT_EQ(get_f32(*dP, n), get_f32(*dP1, n));
    EXPECT_EQ(get_f32(*dM, n), get_f32(*dM1, n));
    EXPECT_EQ(get_f32(*dV, n), get_f32(*dV1, n));
    // The compute copies: equal inside the spans; the gaps between them keep their poison (NaN).
    Vec low = get(*dLow, CORE_BF16, n), low1 = get(*dLow1, CORE_BF16, n), p = get_f32(*dP, n);
    for (size_t i = 0; i < spans.size(); i++) {
        const long end = spans[i].p_at + spans[i].n, next = i + 1 < spans.size() ? spans[i + 1].p_at : n;
        for (long j = spans[i].p_at; j < end; j++) ASSERT_EQ(low[j], low1[j]) << j;
        for (long j = end; j < next; j++) {
            EXPECT_EQ(p[j], p0[j]) << j;
            EXPECT_TRUE(std::isnan(low[j])) << j;
        }
    }
}

// A ZeRO-1 shard steps its own fp32 buffers (from g_at) into the full bf16 compute copy at another
// place (p_at). Where that place breaks the 16-byte alignment the fp32 side has (p_at − g_at not a
// multiple of 4), the step takes one element a thread: the same bits as the tensor stepped at p_at =
// g_at. No test had p_at ≠ g_at, and a table that ignored the copy's alignment passed (mutation test,
// 2026-12-07).
TEST_F(Gpu, AdamWIntoAComputeCopyAtAnotherPlace) {
    const long n = 1000;
    const AdamwHyper h = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 1.0f};
    Vec p0 = rnd((size_t)n), g = rnd((size_t)n, -0.5f, 0.5f);
    BufP dG = put_f32(g);
    BufP dP = put_f32(p0), dM(new Buf(n * 4)), dV(new Buf(n * 4)), dLow = poisoned(n, CORE_BF16);
    const AdamwSpan same = {0, 0, n, 1};
    adamw_cuda_step(dP->f(), dG->f(), dM->f(), dV->f(), dLow->p, CORE_BF16, &same, 1, &h);
    const Vec want = get_f32(*dP, n), want_low = get(*dLow, CORE_BF16, n);
    for (long at : {1L, 2L, 3L, 4L, 6L}) {
        BufP dP1 = put_f32(p0), dM1(new Buf(n * 4)), dV1(new Buf(n * 4)), dLow1 = poisoned(n + 8, CORE_BF16);
        const AdamwSpan moved = {at, 0, n, 1};
        adamw_cuda_step(dP1->f(), dG->f(), dM1->f(), dV1->f(), dLow1->p, CORE_BF16, &moved, 1, &h);
        EXPECT_EQ(get_f32(*dP1, n), want) << "p_at " << at;
        const Vec low = get(*dLow1, CORE_BF16, n + 8);
        EXPECT_EQ(Vec(low.begin() + at, low.begin() + at + n), want_low) << "p_at " << at;
        for (long j = 0; j < at; j++) EXPECT_TRUE(std::isnan(low[j])) << "before the span: " << j;
    }
}

// The two gradient passes of clipping: Σ g² (against a double sum) and g *= s.
TEST_F(Gpu, GradSquareSumAndScale) {
    for (long n : {1L, 1000L, 3000017L}) {
        Vec g = rnd((size_t)n);
        BufP dG = put_f32(g);
        double ref = 0;
        for (float x : g) ref += (double)x * x;
        // Into a device double that starts at 1: the call accumulates (+=).
        auto sum_from_one = [&] {
            Buf dSum(sizeof(double));
            double v = 1.0;
            dev()->upload(dSum.p, &v, sizeof v);
            const AdamwSpan all = {0, 0, n, 0};
            adamw_cuda_sqsum((double *)dSum.p, dG->f(), &all, 1);
            dev()->download(&v, dSum.p, sizeof v);
            return v;
        };
        double got = sum_from_one();
        EXPECT_LT(std::fabs(got - 1.0 - ref) / ref, 1e-10) << "n = " << n;
        EXPECT_EQ(got, sum_from_one()) << "the sum must not vary between runs";
        adamw_cuda_scale(dG->f(), n, 0.25f);
        for (float &x : g) x *= 0.25f;
        EXPECT_EQ(get_f32(*dG, g.size()), g);
    }
}

// Σ g² over more spans than one launch takes, some empty, with gaps between them that hold values
// which must not count: against a double sum of the spans, and the same bits on a rerun.
TEST_F(Gpu, GradSquareSumManySpans) {
    std::vector<AdamwSpan> spans;
    long n = 0;
    for (int i = 0; i < 300; i++) {
        const long len = i % 11 == 0 ? 0 : (i * 7919L) % 40000;
        spans.push_back({0, n, len, 0});
        n += len + 3;
    }
    Vec g = rnd((size_t)n);
    double ref = 0;
    for (const AdamwSpan &s : spans)
        for (long j = 0; j < s.n; j++) ref += (double)g[s.g_at + j] * g[s.g_at + j];
    for (const AdamwSpan &s : spans) g[s.g_at + s.n] = 1e6f;  // the gaps: would dominate the sum
    BufP dG = put_f32(g);
    auto sum = [&] {
        Buf dSum(sizeof(double));
        double v = 0.0;
        dev()->upload(dSum.p, &v, sizeof v);
        adamw_cuda_sqsum((double *)dSum.p, dG->f(), spans.data(), (int)spans.size());
        dev()->download(&v, dSum.p, sizeof v);
        return v;
    };
    const double got = sum();
    EXPECT_LT(std::fabs(got - ref) / ref, 1e-10);
    EXPECT_EQ(got, sum());
}

}  // namespace
