// Linear (matrix multiply) layer: out = inp · Wᵀ with W stored (OC, IC) as in PyTorch. Every weight
// matrix of the model goes through these three calls (cblas_sgemm on the CPU).
// Convention for every layer in layers/: backward_input and backward_weight ACCUMULATE (+=) into their
// gradient outputs; callers zero gradient buffers when they need a fresh sum.
#ifndef MOELAB_LAYERS_LINEAR_H
#define MOELAB_LAYERS_LINEAR_H

#ifdef __cplusplus
extern "C" {
#endif

// out (N, OC) = inp (N, IC) · W(OC, IC)ᵀ
void linear_forward(float *out, const float *inp, const float *W, int N, int IC, int OC);
// dinp (N, IC) += dout (N, OC) · W (OC, IC)
void linear_backward_input(float *dinp, const float *dout, const float *W, int N, int IC, int OC);
// dW (OC, IC) += dout (N, OC)ᵀ · inp (N, IC)
void linear_backward_weight(float *dW, const float *dout, const float *inp, int N, int IC, int OC);

#ifdef __cplusplus
}
#endif
#endif
