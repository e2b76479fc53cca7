// Rotary position embedding, "rotate half" form: within each head of size hd, element i pairs with
// i + hd/2 and both rotate by angle t · theta^(−2i/hd), t = position of the row in its sequence.
#ifndef MOELAB_LAYERS_ROPE_H
#define MOELAB_LAYERS_ROPE_H

#ifdef __cplusplus
extern "C" {
#endif

// Rows are strided: row n of a tensor starts at element n·ld (ld ≥ nh·hd, the elements between
// consecutive rows), so that a row's nh·hd values can sit inside a wider row (the attention's
// stacked q, k, v projections, framework/model.c). ld = nh·hd is a plain (N, nh, hd) tensor.
// out (N rows at out_ld) = rotation of inp (N rows at inp_ld); row n sits at position n % T.
// out may equal inp when out_ld equals inp_ld (in place); otherwise the two must not overlap.
void rope_forward(float *out, int out_ld, const float *inp, int inp_ld, int N, int T, int nh, int hd,
                  float theta);
// dinp (N rows at dinp_ld) = inverse rotation of dout (N rows at dout_ld), written (not added);
// dinp may equal dout as above.
void rope_backward_input(float *dinp, int dinp_ld, const float *dout, int dout_ld, int N, int T,
                         int nh, int hd, float theta);
// The arguments' checks of both calls (one clear error for a bad shape, odd head size, theta ≤ 0
// or a stride shorter than a row), shared with the GPU kernels (rope_cuda.h).
void rope_check(int out_ld, int inp_ld, int N, int T, int nh, int hd, float theta);

#ifdef __cplusplus
}
#endif
#endif
