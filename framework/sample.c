// Autoregressive sampling (see sample.h).
#include "framework/sample.h"

#include <math.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

// Draws one token from logits (V) with temperature and top-k. work is scratch of V floats + V ints.
static int sample_pick(const float *logits, int V, float temperature, int top_k, RngStream *rng,
                       float *work_p, int *work_i) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature <= 0.0f) return best;
    // Keep the k largest logits (partial selection, ties to the lower id), then softmax over them.
    int k = top_k > 0 && top_k < V ? top_k : V;
    for (int i = 0; i < V; i++) work_i[i] = i;
    for (int j = 0; j < k; j++) {
        int arg = j;
        // By (logit, then the lower id): the swaps move ids out of order, so a tie at the cut-off
        // kept whichever tied id sat first (review, 2026-12-06).
        for (int i = j + 1; i < V; i++) {
            const float x = logits[work_i[i]], y = logits[work_i[arg]];
            if (x > y || (x == y && work_i[i] < work_i[arg])) arg = i;
        }
        int tmp = work_i[j]; work_i[j] = work_i[arg]; work_i[arg] = tmp;
        if (k == V && j > 64) break;  // no cut-off: order beyond the head does not matter
    }
    double sum = 0;
    for (int j = 0; j < k; j++) {
        work_p[j] = expf((logits[work_i[j]] - logits[best]) / temperature);
        sum += work_p[j];
    }
    double u = rng_next_uniform(rng) * sum, acc = 0;
    for (int j = 0; j < k; j++) {
        acc += work_p[j];
        if (u < acc) return work_i[j];
    }
    return work_i[k - 1];
}

void sample_logits_row(const LayerOps *o, const void *logits, int row, int V, float *out) {
    const char *r = (const char *)logits + (size_t)row * V * o->act_size;  // (V) of dt
    if (o->dev == CORE_CPU) {
        o->from_act(out, r, V);
        return;
    }
    float *dev = o->alloc((size_t)V * sizeof(float));
    o->from_act(dev, r, V);
    o->download(out, dev, (size_t)V * sizeof(float));
    o->free(dev);
}

int sample_generate_by(SampleLogits logits, void *ctx, int V, int T, const int *prompt, int n_prompt,
                       int n_new, float temperature, int top_k, RngStream *rng, int *out) {
    CHECK(n_prompt >= 1, "sampling needs a prompt of at least one token");
    memmove(out, prompt, (size_t)n_prompt * sizeof(int));  // out may be prompt itself
    int *window = core_alloc((size_t)T * sizeof(int));
    float *row = core_alloc((size_t)V * sizeof(float));    // the logits of the last position
    float *wp = core_alloc((size_t)V * sizeof(float));
    int *wi = core_alloc((size_t)V * sizeof(int));
    int len = n_prompt;
    for (; len < n_prompt + n_new; len++) {
        const int w = len < T ? len : T;
        memcpy(window, out + len - w, (size_t)w * sizeof(int));
        memset(window + w, 0, (size_t)(T - w) * sizeof(int));
        logits(ctx, window, w, row);
        // Weights that overflow (a checkpoint of huge but finite values) give NaN logits, from
        // which the draw picked token 0 every time: text of NUL bytes, exit 0 (review, 2026-12-06).
        int finite = 1;
        for (int i = 0; i < V && finite; i++) finite = isfinite(row[i]);
        if (!finite) break;
        out[len] = sample_pick(row, V, temperature, top_k, rng, wp, wi);
    }
    core_free(window);
    core_free(row);
    core_free(wp);
    core_free(wi);
    return len - n_prompt;
}

// A whole model's logits for sample_generate. On a GPU every forward takes the full window of T
// tokens, padded with token 0 after the last one: the attention then runs one shape (cuDNN builds a
// plan per shape, which would cost more than the forward), and in a causal model no position sees
// the ones after it, nor does the router's choice for a token depend on other tokens. The CPU runs
// the growing window.
static void model_logits(void *ctx, const int *window, int w, float *row) {
    Model *m = ctx;
    const LayerOps *o = m->ops;
    ModelActs a;
    model_forward(m, &a, window, 1, o->dev != CORE_CPU ? m->cfg.T : w, 0);
    sample_logits_row(o, a.logits, w - 1, m->cfg.V, row);
    model_acts_free(m, &a);
}

int sample_generate(Model *m, const int *prompt, int n_prompt, int n_new, float temperature,
                    int top_k, RngStream *rng, int *out) {
    return sample_generate_by(model_logits, m, m->cfg.V, m->cfg.T, prompt, n_prompt, n_new, temperature, top_k,
                              rng, out);
}
