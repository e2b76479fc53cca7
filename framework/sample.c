// Autoregressive sampling (see sample.h).
#include "framework/sample.h"

#include <math.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

int sample_pick(const float *logits, int V, float temperature, int top_k, RngStream *rng,
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
        for (int i = j + 1; i < V; i++)
            if (logits[work_i[i]] > logits[work_i[arg]]) arg = i;
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

void sample_generate(Model *m, const int *prompt, int n_prompt, int n_new, float temperature,
                     int top_k, RngStream *rng, int *out) {
    CHECK(n_prompt >= 1, "sampling needs a prompt of at least one token");
    const int V = m->cfg.V, T = m->cfg.T;
    memmove(out, prompt, (size_t)n_prompt * sizeof(int));  // out may be prompt itself
    float *wp = core_alloc((size_t)V * sizeof(float));
    int *wi = core_alloc((size_t)V * sizeof(int));
    for (int len = n_prompt; len < n_prompt + n_new; len++) {
        int w = len < T ? len : T;
        ModelActs a;
        model_forward(m, &a, out + len - w, 1, w, 0);
        // The model is on the CPU (sample.h), whose activation dtype is fp32.
        const float *logits = a.logits;  // (w, V)
        out[len] = sample_pick(logits + (size_t)(w - 1) * V, V, temperature, top_k, rng, wp, wi);
        model_acts_free(m, &a);
    }
    core_free(wp);
    core_free(wi);
}
