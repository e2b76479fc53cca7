// Token embedding on the CPU: a row gather forward and a deterministic scatter-add backward.
#include "layers/embedding.h"

#include <omp.h>
#include <string.h>

#include "framework/core/check.h"

static void embedding_check(const int *tokens, int N, int V, int D) {
    CHECK(N >= 0 && V > 0 && D > 0, "embedding: bad shape N=%d V=%d D=%d", N, V, D);
    for (int n = 0; n < N; n++)
        CHECK(tokens[n] >= 0 && tokens[n] < V,
              "embedding: token %d at position %d is outside [0, %d)", tokens[n], n, V);
}

void embedding_forward(float *out, const int *tokens, const float *table, int N, int V, int D) {
    embedding_check(tokens, N, V, D);
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * D, table + (size_t)tokens[n] * D, (size_t)D * sizeof(float));
}

void embedding_backward_weight(float *dtable, const float *dout, const int *tokens, int N, int V,
                               int D) {
    embedding_check(tokens, N, V, D);
    // A token may repeat, so rows collide. Each thread owns the table rows v with v % nth == th and
    // adds into them in token order: no two threads touch one row, and every row sums its
    // contributions in the same order whatever the thread count, so the result is bit-identical.
#pragma omp parallel
    {
        int nth = omp_get_num_threads(), th = omp_get_thread_num();
        for (int n = 0; n < N; n++) {
            if (tokens[n] % nth != th) continue;
            float *row = dtable + (size_t)tokens[n] * D;
            const float *g = dout + (size_t)n * D;
            for (int d = 0; d < D; d++) row[d] += g[d];
        }
    }
}
