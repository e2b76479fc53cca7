// Causal softmax attention with grouped-query heads: query head j reads key/value head
// j / (H / Hkv). The CPU path stores the (B, H, T, T) probabilities for the backward pass.
#ifndef MOELAB_LAYERS_ATTENTION_H
#define MOELAB_LAYERS_ATTENTION_H

#ifdef __cplusplus
extern "C" {
#endif

// out (B, T, H, hd) = softmax(q kᵀ / sqrt(hd) + causal mask) v
// q (B, T, H, hd), k and v (B, T, Hkv, hd); att (B, H, T, T) receives the probabilities
// (entries above the diagonal are 0).
void attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                       int B, int T, int H, int Hkv, int hd);
// dq (B, T, H, hd), dk and dv (B, T, Hkv, hd) += gradients given dout (B, T, H, hd).
void attention_backward_input(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, const float *att, int B, int T, int H,
                              int Hkv, int hd);

#ifdef __cplusplus
}
#endif
#endif
