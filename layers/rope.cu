// Rotary position embedding on the GPU ("rotate half", see rope.h): one thread per (row, pair
// index i), looping over the heads, so each angle is computed once per row as on the CPU.
#include "layers/rope_cuda.h"

// Rotates pair (i, i + hd/2) of every head of row n by sign · angle and stores it. Each pair is
// read fully before it is written, so out may equal inp.
template <typename T>
__global__ void rope_kernel(T *out, const T *inp, int N, int Tseq, int nh, int hd, float theta,
                            float sign) {
    int half = hd / 2;
    long p = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long)N * half) return;
    int n = (int)(p / half), i = (int)(p % half), t = n % Tseq;
    // The angle in double, as on the CPU: t · theta^(−2i/hd) reaches thousands of radians for
    // long sequences, where float would lose the phase.
    double ang = (double)t * pow((double)theta, -2.0 * i / hd);
    float c = (float)cos(ang), s = sign * (float)sin(ang);
    for (int h = 0; h < nh; h++) {
        size_t o = ((size_t)n * nh + h) * hd + i;
        float x1 = core_ld(inp + o), x2 = core_ld(inp + o + half);
        core_st(out + o, x1 * c - x2 * s);
        core_st(out + o + half, x2 * c + x1 * s);
    }
}

template <typename T>
static void rotate(void *out, const void *inp, int N, int Tseq, int nh, int hd, float theta,
                   float sign) {
    long n = (long)N * (hd / 2);
    rope_kernel<T><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
        (T *)out, (const T *)inp, N, Tseq, nh, hd, theta, sign);
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
