// RMSNorm: out = x / sqrt(mean(x²) + eps) * gain, per row of D values.
#ifndef MOELAB_LAYERS_RMSNORM_H
#define MOELAB_LAYERS_RMSNORM_H

#ifdef __cplusplus
extern "C" {
#endif

// out (N, D), rstd (N) saved for backward = 1 / sqrt(mean(inp²) + eps); inp (N, D), gain (D)
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *gain, int N, int D,
                     float eps);
// dinp (N, D) += ∂L/∂inp given dout (N, D)
void rmsnorm_backward_input(float *dinp, const float *dout, const float *inp, const float *gain,
                            const float *rstd, int N, int D);
// dgain (D) += Σ_n dout ⊙ inp · rstd
void rmsnorm_backward_weight(float *dgain, const float *dout, const float *inp, const float *rstd,
                             int N, int D);

#ifdef __cplusplus
}
#endif
#endif
