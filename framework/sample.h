// Text generation from a model: autoregressive sampling with temperature and top-k, one forward of
// the whole window per new token — simple and exact, fine at the sizes we sample.
#ifndef MOELAB_FRAMEWORK_SAMPLE_H
#define MOELAB_FRAMEWORK_SAMPLE_H

#include "framework/core/rng.h"
#include "framework/model.h"

#ifdef __cplusplus
extern "C" {
#endif

// Appends n_new tokens to prompt (n_prompt ≥ 1 tokens) and writes all n_prompt + n_new tokens to out.
// The window is the last min(len, T) tokens (on a GPU padded to T). temperature 0 means greedy;
// top_k 0 means no cut-off. m is on any device (its last logits row is brought to the host).
// Returns the tokens drawn: n_new, or fewer where the logits of the next were not finite (NaN or
// infinite: weights that overflow), where it stops.
int sample_generate(Model *m, const int *prompt, int n_prompt, int n_new, float temperature,
                    int top_k, RngStream *rng, int *out);

// The logits (V floats, host) that follow the first w of the T tokens of window (zero after them),
// from whatever runs the model (sample_generate_by).
typedef void (*SampleLogits)(void *ctx, const int *window, int w, float *row);
// sample_generate with the logits of `logits` (ctx passed on): the window, its sliding and the
// draws, shared by every way of running the model (one process, a pipeline).
int sample_generate_by(SampleLogits logits, void *ctx, int V, int T, const int *prompt, int n_prompt,
                       int n_new, float temperature, int top_k, RngStream *rng, int *out);

// The logits of row `row` of logits (rows of V in the activation dtype of o, in o's memory) into
// out (V floats, host).
void sample_logits_row(const LayerOps *o, const void *logits, int row, int V, float *out);


#ifdef __cplusplus
}
#endif
#endif
