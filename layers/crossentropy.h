// Softmax cross-entropy over the vocabulary, fused: the forward returns per-row losses and keeps the
// log-sum-exp; the backward turns logits into ∂L/∂logits = (softmax − onehot) · dloss.
#ifndef MOELAB_LAYERS_CROSSENTROPY_H
#define MOELAB_LAYERS_CROSSENTROPY_H

#ifdef __cplusplus
extern "C" {
#endif

// losses (N) = lse − logits[target], lse (N) saved; logits (N, V), targets (N) in [0, V).
void crossentropy_forward(float *losses, float *lse, const float *logits, const int *targets, int N,
                          int V);
// dlogits (N, V) = dloss · (softmax(logits) − onehot(target)), written without being read; dloss is
// the weight of every row (1/N for a mean over N rows). dlogits may be logits: the model turns its
// logits into their gradient in place, which saves an (N, V) buffer (a gigabyte at the bench shapes).
void crossentropy_backward_input(float *dlogits, const float *logits, const float *lse,
                                 const int *targets, float dloss, int N, int V);

#ifdef __cplusplus
}
#endif
#endif
