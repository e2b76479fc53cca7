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
// ld = ROPE_HEADS instead means the head-major (N / T, nh, T, hd) tensor that attention reads q, k
// and v in and writes their gradients in (layers/attention.h); N must then be a multiple of T.
#define ROPE_HEADS 0
// out (N rows at out_ld) = rotation of inp (N rows at inp_ld); row n sits at position n % T.
// out may equal inp when out_ld equals inp_ld (in place); otherwise the two must not overlap.
void rope_forward(float *out, int out_ld, const float *inp, int inp_ld, int N, int T, int nh, int hd,
                  float theta);
// dinp (N rows at dinp_ld) = inverse rotation of dout (N rows at dout_ld), written (not added);
// dinp may equal dout as above.
void rope_backward_input(float *dinp, int dinp_ld, const float *dout, int dout_ld, int N, int T,
                         int nh, int hd, float theta);
// out (N rows at out_ld) = inp (N rows at inp_ld), unrotated: the attention's v, which RoPE leaves
// alone, into the layout that RoPE writes q and k in, and its gradient back (same rules as above).
void rope_copy(float *out, int out_ld, const float *inp, int inp_ld, int N, int T, int nh, int hd);
// The arguments' checks of these calls (one clear error for a bad shape, odd head size, theta ≤ 0,
// a stride shorter than a row or head-major rows that are not whole sequences), shared with the
// GPU kernels (rope_cuda.h).
void rope_check(int out_ld, int inp_ld, int N, int T, int nh, int hd, float theta);
// Where a tensor of rows at ld (or ROPE_HEADS) keeps head h of row n: at element
// (n / T)·seq + (n % T)·row + h·head, for the CPU's loops and the GPU's kernels alike.
typedef struct {
    long seq, row, head;
} RopeLayout;
RopeLayout rope_layout(int ld, int T, int nh, int hd);

#ifdef __cplusplus
}
#endif
#endif
