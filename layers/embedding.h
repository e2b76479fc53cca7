// Token embedding: out[n] = table[tokens[n]]. It has no input gradient (tokens are integers).
// Both calls take the vocabulary size V so that a token outside [0, V) is one clear error instead
// of a read (forward) or a write (backward) outside the table.
#ifndef MOELAB_LAYERS_EMBEDDING_H
#define MOELAB_LAYERS_EMBEDDING_H

#ifdef __cplusplus
extern "C" {
#endif

// out (N, D) = table (V, D)[tokens (N)]
void embedding_forward(float *out, const int *tokens, const float *table, int N, int V, int D);
// dtable (V, D) += scatter-add of dout (N, D) at rows tokens (N)
void embedding_backward_weight(float *dtable, const float *dout, const int *tokens, int N, int V,
                               int D);

#ifdef __cplusplus
}
#endif
#endif
