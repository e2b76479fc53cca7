// Rotary position embedding, "rotate half" form: within each head of size hd, element i pairs with
// i + hd/2 and both rotate by angle t · theta^(−2i/hd), t = position of the row in its sequence.
#ifndef MOELAB_LAYERS_ROPE_H
#define MOELAB_LAYERS_ROPE_H

#ifdef __cplusplus
extern "C" {
#endif

// out (N, nh, hd) = rotation of inp (N, nh, hd); row n sits at position n % T. out may equal inp.
void rope_forward(float *out, const float *inp, int N, int T, int nh, int hd, float theta);
// dinp (N, nh, hd) = inverse rotation of dout (N, nh, hd), written (not added); dinp may equal dout.
void rope_backward_input(float *dinp, const float *dout, int N, int T, int nh, int hd, float theta);

#ifdef __cplusplus
}
#endif
#endif
