// SwiGLU feed-forward network: out = W2 (silu(W1 x) ⊙ (W3 x)). The dense FFN, the shared experts and
// every routed expert are this one function on different rows and weights.
#ifndef MOELAB_LAYERS_SWIGLU_H
#define MOELAB_LAYERS_SWIGLU_H

#ifdef __cplusplus
extern "C" {
#endif

// Activations of one FFN call over N rows, kept from forward to backward. All (N, F), elements of
// the backend's activation dtype (layers/ops.h; fp32 for the CPU functions below).
typedef struct {
    void *a;   // W1 x
    void *b;   // W3 x
    void *h;   // silu(a) ⊙ b; may be dropped (NULL) after the forward: backward_weight recomputes it
    void *da;  // ∂L/∂a, written by backward_input, read by backward_weight
    void *db;  // ∂L/∂b, likewise
} SwigluActs;

// Elementwise gate: h (N, F) = silu(a) ⊙ b
void swiglu_act_forward(float *h, const float *a, const float *b, long n);
// da, db (n) = gradients given dh (n) (written, not added); dh is then overwritten with the gate's
// output h = silu(a) ⊙ b (the W2 weight gradient's operand, which the forward may have dropped).
void swiglu_act_backward(float *da, float *db, float *dh, const float *a, const float *b, long n);
// The same over `rows` rows of F, and s (rows) = Σ_f dh·h per row (fp32 sums): the MoE layer's
// gate gradient without the expert outputs (layers/moe.c).
void swiglu_act_backward_dot(float *da, float *db, float *s, float *dh, const float *a, const float *b,
                             long rows, int F);

// out (N, D) = W2 (D, F) · (silu(W1 (F, D) x) ⊙ (W3 (F, D) x)); x (N, D). Fills acts->a, b, h.
void swiglu_forward(float *out, SwigluActs *acts, const float *x, const float *w1, const float *w3,
                    const float *w2, int N, int D, int F);
// dx (N, D) += ∂L/∂x given dout (N, D); writes (=) acts->da and acts->db for backward_weight.
// scratch_dh is (N, F) scratch memory.
void swiglu_backward_input(float *dx, SwigluActs *acts, float *scratch_dh, const float *dout,
                           const float *w1, const float *w3, const float *w2, int N, int D, int F);
// dw1, dw3 (F, D), dw2 (D, F) += weight gradients from x, dout and the saved acts (after
// backward_input has filled acts->da, acts->db).
void swiglu_backward_weight(float *dw1, float *dw3, float *dw2, const SwigluActs *acts,
                            const float *x, const float *dout, int N, int D, int F);

#ifdef __cplusplus
}
#endif
#endif
