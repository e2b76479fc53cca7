// Causal softmax attention with grouped-query heads: query head j reads key/value head
// j / (H / Hkv). The CPU path stores the (B, H, T, T) probabilities for the backward pass.
#ifndef MOELAB_LAYERS_ATTENTION_H
#define MOELAB_LAYERS_ATTENTION_H

#ifdef __cplusplus
extern "C" {
#endif

// Layouts: q (B, H, T, hd), k and v (B, Hkv, T, hd) are head-major, each head's (T, hd) rows
// contiguous, as RoPE writes them (layers/rope.h, ROPE_HEADS): cuDNN's deterministic backward
// runs faster on them (docs/BENCHMARKS.md); so are their gradients dq, dk, dv. out and dout are (B, T, H, hd), token-major: the
// rows of the Wo product that out feeds and dout comes from.
// out = softmax(q kᵀ / sqrt(hd) + causal mask) v; att (B, H, T, T) receives the probabilities
// (entries above the diagonal are 0).
void attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                       int B, int T, int H, int Hkv, int hd);
// dq, dk, dv += gradients given dout.
void attention_backward_input(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, const float *att, int B, int T, int H,
                              int Hkv, int hd);

#ifdef __cplusplus
}
#endif
#endif
