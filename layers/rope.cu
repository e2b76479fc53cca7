// Rotary position embedding on the GPU ("rotate half", see rope.h): one thread per (row, W
// consecutive pair indices), looping over the heads, so each angle is computed once per row as on
// the CPU. Rows are read and written at strides of their own (rope.h).
#include "layers/rope_cuda.h"

#include "layers/rope.h"  // rope_check

// Rotates pairs (i, i + hd/2), i in [i0, i0 + W), of every head of row n by sign · angle. W = 16
// bytes of T where the head size, the row strides and the pointers allow (8 bf16, 4 fp32), else 1: neighbouring
// threads take neighbouring pairs of one row, so a warp moves whole 16-byte runs (one element a
// thread ran at 1-2 TB/s). Two heads are read before either is written, for more loads in flight;
// each pair is read fully before it is written, so out may equal inp. The products are rounded one
// by one (no fused multiply-add), as the CPU computes them, whatever W. Row n of out starts at
// element n·out_ld, of inp at n·inp_ld.
template <typename T, int W>
__global__ void rope_kernel(T *out, long out_ld, const T *inp, long inp_ld, int N, int Tseq, int nh,
                            int hd, float theta, float sign) {
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
                const T *x = inp + n * inp_ld + (long)(h0 + b) * hd + i0;
                core_ld_vec<W>(x1[b], x);
                core_ld_vec<W>(x2[b], x + half);
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
                T *y = out + n * out_ld + (long)(h0 + b) * hd + i0;
                core_st_vec<W>(y, y1);
                core_st_vec<W>(y + half, y2);
            }
    }
}

template <typename T>
static void rotate(void *out, int out_ld, const void *inp, int inp_ld, int N, int Tseq, int nh,
                   int hd, float theta, float sign) {
    constexpr int W = 16 / sizeof(T);
    // 16-byte accesses need every access 16-byte aligned: both pointers, the half head (pair i +
    // hd/2) and both row strides a whole number of W elements (the heads then are too).
    const void *ptrs[] = {out, inp};
    if (core_vec_ok(W, sizeof(T), hd / 2, ptrs, 2) && out_ld % W == 0 && inp_ld % W == 0) {
        rope_kernel<T, W><<<core_blocks((long)N * (hd / 2 / W), 256), 256, 0, core_stream()>>>(
            (T *)out, out_ld, (const T *)inp, inp_ld, N, Tseq, nh, hd, theta, sign);
    } else {
        rope_kernel<T, 1><<<core_blocks((long)N * (hd / 2), 256), 256, 0, core_stream()>>>(
            (T *)out, out_ld, (const T *)inp, inp_ld, N, Tseq, nh, hd, theta, sign);
    }
    CUDA_CHECK_LAUNCH();
}

void rope_cuda_forward(CoreDtype dt, void *out, int out_ld, const void *inp, int inp_ld, int N,
                       int T, int nh, int hd, float theta) {
    rope_check(out_ld, inp_ld, N, T, nh, hd, theta);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, rotate, out, out_ld, inp, inp_ld, N, T, nh, hd, theta, 1.0f);
}

void rope_cuda_backward_input(CoreDtype dt, void *dinp, int dinp_ld, const void *dout, int dout_ld,
                              int N, int T, int nh, int hd, float theta) {
    rope_check(dinp_ld, dout_ld, N, T, nh, hd, theta);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, rotate, dinp, dinp_ld, dout, dout_ld, N, T, nh, hd, theta, -1.0f);
}
