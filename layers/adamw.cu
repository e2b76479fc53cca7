// AdamW on the GPU (see adamw_cuda.h): one thread per parameter, the same arithmetic as
// framework/optimizer.c (bias corrections divided in double), so the CPU and GPU steps agree to
// the last bits up to fused multiply-adds.
#include "layers/adamw_cuda.h"

#include <math.h>

template <typename L>
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, long n, float lr,
                             float b1, float b2, float eps, float decay, double bc1, double bc2,
                             L *p_low) {
    long j = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float gj = g[j];
    float mj = b1 * m[j] + (1.0f - b1) * gj;
    float vj = b2 * v[j] + (1.0f - b2) * gj * gj;
    float mhat = (float)(mj / bc1), vhat = (float)(vj / bc2);
    float pj = p[j] * decay - lr * mhat / (sqrtf(vhat) + eps);
    m[j] = mj;
    v[j] = vj;
    p[j] = pj;
    if (p_low) core_st(p_low + j, pj);
}

template <typename L>
static void step(float *p, const float *g, float *m, float *v, long n, const AdamwHyper *h,
                 float decay, void *p_low) {
    double bc1 = 1.0 - pow(h->beta1, (double)h->t), bc2 = 1.0 - pow(h->beta2, (double)h->t);
    adamw_kernel<L><<<core_blocks(n, 256), 256, 0, core_stream()>>>(
        p, g, m, v, n, h->lr, h->beta1, h->beta2, h->eps, decay, bc1, bc2, (L *)p_low);
    CUDA_CHECK_LAUNCH();
}

void adamw_cuda_step(float *p, const float *g, float *m, float *v, long n, const AdamwHyper *h,
                     int decay, void *p_low, CoreDtype low_dt) {
    CHECK(n >= 0 && h->t >= 1, "adamw: bad element count %ld or step %ld", n, h->t);
    if (n == 0) return;
    float d = decay ? 1.0f - h->lr * h->weight_decay : 1.0f;
    CORE_DTYPE_CALL(low_dt, step, p, g, m, v, n, h, d, p_low);
}
