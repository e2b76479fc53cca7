// Rotary position embedding on the GPU ("rotate half", see rope.h): one thread per (row, W
// consecutive pair indices), looping over the heads, so each angle is computed once per row as on
// the CPU. Rows are read and written in layouts of their own: at a stride, or head-major (rope.h);
// the same kernel copies v unrotated into and out of the head-major layout.
#include "layers/rope_cuda.h"

#include "layers/rope.h"  // rope_check, rope_layout

// Rotates pairs (i, i + hd/2), i in [i0, i0 + W), of every head of row n by sign · angle (or, where
// ROTATE is false, copies them). W = 16 bytes of T where the head size, the layouts and the
// pointers allow (8 bf16, 4 fp32), else 1: neighbouring threads take neighbouring pairs of one
// row, so a warp moves whole 16-byte runs (one element a thread ran at 1-2 TB/s); in the
// head-major layout the next row's run follows on. Two heads are read before either is written,
// for more loads in flight; each pair is read fully before it is written, so out may equal inp.
// The products are rounded one by one (no fused multiply-add), as the CPU computes them, whatever
// W. Head h of row n of out starts at element (n / T)·lo.seq + (n % T)·lo.row + h·lo.head, of inp
// likewise at li's.
template <typename T, int W, bool ROTATE>
__global__ void rope_kernel(T *out, RopeLayout lo, const T *inp, RopeLayout li, int N, int Tseq,
                            int nh, int hd, float theta, float sign) {
    const int half = hd / 2, groups = half / W;
    const long p = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long)N * groups) return;
    const int n = (int)(p / groups), i0 = (int)(p % groups) * W, t = n % Tseq, b = n / Tseq;
    // The angles in double, as on the CPU: t · theta^(−2i/hd) reaches thousands of radians for
    // long sequences, where float would lose the phase.
    float c[W], s[W];
#pragma unroll
    for (int j = 0; j < W; j++) {
        const double ang = ROTATE ? (double)t * pow((double)theta, -2.0 * (i0 + j) / hd) : 0.0;
        c[j] = ROTATE ? (float)cos(ang) : 1.0f;
        s[j] = ROTATE ? sign * (float)sin(ang) : 0.0f;
    }
    const T *x0 = inp + b * li.seq + t * li.row + i0;
    T *y0 = out + b * lo.seq + t * lo.row + i0;
    for (int h0 = 0; h0 < nh; h0 += 2) {
        float x1[2][W], x2[2][W];
#pragma unroll
        for (int k = 0; k < 2; k++)
            if (h0 + k < nh) {
                const T *x = x0 + (h0 + k) * li.head;
                core_ld_vec<W>(x1[k], x);
                core_ld_vec<W>(x2[k], x + half);
            }
#pragma unroll
        for (int k = 0; k < 2; k++)
            if (h0 + k < nh) {
                T *y = y0 + (h0 + k) * lo.head;
                if constexpr (!ROTATE) {  // a copy: the values as loaded (exact, fp32 holds bf16)
                    core_st_vec<W>(y, x1[k]);
                    core_st_vec<W>(y + half, x2[k]);
                } else {
                    float y1[W], y2[W];
#pragma unroll
                    for (int j = 0; j < W; j++) {
                        y1[j] = __fsub_rn(__fmul_rn(x1[k][j], c[j]), __fmul_rn(x2[k][j], s[j]));
                        y2[j] = __fadd_rn(__fmul_rn(x2[k][j], c[j]), __fmul_rn(x1[k][j], s[j]));
                    }
                    core_st_vec<W>(y, y1);
                    core_st_vec<W>(y + half, y2);
                }
            }
    }
}

template <typename T, bool ROTATE>
static void rotate(void *out, int out_ld, const void *inp, int inp_ld, int N, int Tseq, int nh,
                   int hd, float theta, float sign) {
    constexpr int W = 16 / sizeof(T);
    const RopeLayout lo = rope_layout(out_ld, Tseq, nh, hd), li = rope_layout(inp_ld, Tseq, nh, hd);
    // 16-byte accesses need every access 16-byte aligned: both pointers, the half head (pair i +
    // hd/2) and both row strides a whole number of W elements (the heads then are too; head-major
    // rows are hd apart).
    const void *ptrs[] = {out, inp};
    if (core_vec_ok(W, sizeof(T), hd / 2, ptrs, 2) && out_ld % W == 0 && inp_ld % W == 0) {
        rope_kernel<T, W, ROTATE><<<core_blocks((long)N * (hd / 2 / W), 256), 256, 0, core_stream()>>>(
            (T *)out, lo, (const T *)inp, li, N, Tseq, nh, hd, theta, sign);
    } else {
        rope_kernel<T, 1, ROTATE><<<core_blocks((long)N * (hd / 2), 256), 256, 0, core_stream()>>>(
            (T *)out, lo, (const T *)inp, li, N, Tseq, nh, hd, theta, sign);
    }
    CUDA_CHECK_LAUNCH();
}

template <typename T>
static void rotated(void *out, int out_ld, const void *inp, int inp_ld, int N, int Tseq, int nh, int hd,
                 float theta, float sign) {
    rotate<T, true>(out, out_ld, inp, inp_ld, N, Tseq, nh, hd, theta, sign);
}
template <typename T>
static void copied(void *out, int out_ld, const void *inp, int inp_ld, int N, int Tseq, int nh, int hd) {
    rotate<T, false>(out, out_ld, inp, inp_ld, N, Tseq, nh, hd, 1.0f, 0.0f);
}

void rope_cuda_forward(CoreDtype dt, void *out, int out_ld, const void *inp, int inp_ld, int N,
                       int T, int nh, int hd, float theta) {
    rope_check(out_ld, inp_ld, N, T, nh, hd, theta);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, rotated, out, out_ld, inp, inp_ld, N, T, nh, hd, theta, 1.0f);
}

void rope_cuda_backward_input(CoreDtype dt, void *dinp, int dinp_ld, const void *dout, int dout_ld,
                              int N, int T, int nh, int hd, float theta) {
    rope_check(dinp_ld, dout_ld, N, T, nh, hd, theta);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, rotated, dinp, dinp_ld, dout, dout_ld, N, T, nh, hd, theta, -1.0f);
}

void rope_cuda_copy(CoreDtype dt, void *out, int out_ld, const void *inp, int inp_ld, int N, int T,
                    int nh, int hd) {
    rope_check(out_ld, inp_ld, N, T, nh, hd, 1.0f);
    if (N == 0) return;
    CORE_DTYPE_CALL(dt, copied, out, out_ld, inp, inp_ld, N, T, nh, hd);
}
