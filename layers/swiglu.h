// SwiGLU feed-forward network: out = W2 (silu(W1 x) ⊙ (W3 x)). The dense FFN, the shared experts and
// every routed expert are this one function on different rows and weights.
#ifndef MOELAB_LAYERS_SWIGLU_H
#define MOELAB_LAYERS_SWIGLU_H

#ifdef __cplusplus
extern "C" {
#endif

// W1 and W3 are one matrix W13 (2F, D): W1's F rows, then W3's. Its one product with x gives each
// row's a = W1 x and b = W3 x side by side, and the backward's one product takes their gradients
// side by side too: one GEMM each way where two would run (and the second add its result to the
// first's), docs/gpu.md "W1 and W3 as one product".

// Activations of one FFN call over N rows, kept from forward to backward. Elements of the
// backend's activation dtype (layers/ops.h; fp32 for the CPU functions below).
typedef struct {
    void *ab;   // (N, 2F) row n = [a | b] = [W1 x_n | W3 x_n]
    void *h;    // (N, F) silu(a) ⊙ b; may be dropped (NULL) after the forward: backward_weight
                // recomputes it
    void *dab;  // (N, 2F) [∂L/∂a | ∂L/∂b], written by backward_input, read by backward_weight
} SwigluActs;

// The gate over rows of F: h (rows, F) = silu(a) ⊙ b, a and b the halves of ab's rows (rows, 2F).
void swiglu_act_forward(float *h, const float *ab, long rows, int F);
// dab (rows, 2F) = the gate's gradients given dh (rows, F) (written, not added); dh is then
// overwritten with the gate's output h (the W2 weight gradient's operand, which the forward may
// have dropped). s (rows), where not NULL, = Σ_f dh·h per row (fp32 sums): the MoE layer's gate
// gradient without the expert outputs (layers/moe.c).
void swiglu_act_backward(float *dab, float *s, float *dh, const float *ab, long rows, int F);

// out (N, D) = W2 (D, F) · (silu(W1 x) ⊙ (W3 x)), [W1; W3] = w13 (2F, D); x (N, D). Fills acts->ab, h.
void swiglu_forward(float *out, SwigluActs *acts, const float *x, const float *w13, const float *w2, int N,
                    int D, int F);
// dx (N, D) += ∂L/∂x given dout (N, D); writes (=) acts->dab for backward_weight. scratch_dh is
// (N, F) scratch memory.
void swiglu_backward_input(float *dx, SwigluActs *acts, float *scratch_dh, const float *dout,
                           const float *w13, const float *w2, int N, int D, int F);
// dw13 (2F, D), dw2 (D, F) += weight gradients from x, dout and the saved acts (after
// backward_input has filled acts->dab).
void swiglu_backward_weight(float *dw13, float *dw2, const SwigluActs *acts, const float *x,
                            const float *dout, int N, int D, int F);

#ifdef __cplusplus
}
#endif
#endif
