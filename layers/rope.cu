// Rotary position embedding on the GPU ("rotate half", see rope.h): one thread per (row, W
// consecutive pair indices), looping over the heads, so each angle is computed once per row as on
// the CPU.
#include "layers/rope_cuda.h"

// Rotates pairs (i, i + hd/2), i in [i0, i0 + W), of every head of row n by sign · angle. W = 16
// bytes of T where the head size and the pointers allow (8 bf16, 4 fp32), else 1: neighbouring
// threads take neighbouring pairs of one row, so a warp moves whole 16-byte runs (one element a
// thread ran at 1-2 TB/s). Two heads are read before either is written, for more loads in flight;
// each pair is read fully before it is written, so out may equal inp. The products are rounded one
// by one (no fused multiply-add), as the CPU computes them, whatever W.
template <typename T, int W>
__global__ void rope_kernel(T *out, const T *inp, int N, int Tseq, int nh, int hd, float theta,
                            float sign) {
    const int half = hd / 2, groups = half / W;
    const long p = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long)N * groups) return;
    const int n = (int)(p / groups), i0 = (int)(p % groups) * W, t = n % Tseq;
    // The angles in double, as on the CPU: t · theta^(−2i/hd) reaches thousands of radians for
    // long sequences, where float would lose the phase.
    float c[W], s[W];
#pragma unroll
    for (int j = 0; j < W; j++) {
        const double ang = (double)t * pow((double)theta, -2.0 * (i0 + j) / hd);
        c[j] = (float)cos(ang);
        s[j] = sign * (float)sin(ang);
    }
    for (int h0 = 0; h0 < nh; h0 += 2) {
        float x1[2][W], x2[2][W];
#pragma unroll
        for (int b = 0; b < 2; b++)
            if (h0 + b < nh) {
                const size_t o = ((size_t)n * nh + h0 + b) * hd + i0;
                core_ld_vec<W>(x1[b], inp + o);
                core_ld_vec<W>(x2[b], inp + o + half);
            }
#pragma unroll
        for (int b = 0; b < 2; b++)
            if (h0 + b < nh) {
                float y1[W], y2[W];
#pragma unroll
                for (int j = 0; j < W; j++) {
                    y1[j] = __fsub_rn(__fmul_rn(x1[b][j], c[j]), __fmul_rn(x2[b][j], s[j]));
                    y2[j] = __fadd_rn(__fmul_rn(x2[b][j], c[j]), __fmul_rn(x1[b][j], s[j]));
                }
                const size_t o = ((size_t)n * nh + h0 + b) * hd + i0;
                core_st_vec<W>(out + o, y1);
                core_st_vec<W>(out + o + half, y2);
            }
    }
}

template <typename T>
static void rotate(void *out, const void *inp, int N, int Tseq, int nh, int hd, float theta,
                   float sign) {
    constexpr int W = 16 / sizeof(T);
    const void *ptrs[] = {out, inp};
    if (core_vec_ok(W, sizeof(T), hd / 2, ptrs, 2)) {
        rope_kernel<T, W><<<core_blocks((long)N * (hd / 2 / W), 256), 256, 0, core_stream()>>>(
            (T *)out, (const T *)inp, N, Tseq, nh, hd, theta, sign);
    } else {
        rope_kernel<T, 1><<<core_blocks((long)N * (hd / 2), 256), 256, 0, core_stream()>>>(
            (T *)out, (const T *)inp, N, Tseq, nh, hd, theta, sign);
    }
    CUDA_CHECK_LAUNCH();
}

static void rope_check(int N, int T, int nh, int hd, float theta) {
    CHECK(N >= 0 && T > 0 && nh > 0 && hd > 0, "rope: bad shape N=%d T=%d nh=%d hd=%d", N, T, nh,
          hd);
    CHECK(hd % 2 == 0, "rope: head size %d must be even (pairs i, i + hd/2)", hd);
    CHECK(theta > 0.0f, "rope: theta must be positive, got %g", (double)theta);
}

void rope_cuda_forward(CoreDtype dt, void *out, const void *inp, int N, int T, int nh, int hd,
                       float theta) {
    rope_check(N, T, nh, hd, theta);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, rotate, out, inp, N, T, nh, hd, theta, 1.0f);
}

void rope_cuda_backward_input(CoreDtype dt, void *dinp, const void *dout, int N, int T, int nh,
                              int hd, float theta) {
    rope_check(N, T, nh, hd, theta);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, rotate, dinp, dout, N, T, nh, hd, theta, -1.0f);
}
