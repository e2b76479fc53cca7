// Pipeline stage partitioning (docs/architecture.md §5, docs/pipeline.md "Executor"): a cost per layer
// from the config (forward FLOPs per token), plus the embedding on the first stage and the head and
// loss on the last, and the contiguous split of the layers into S stages that minimizes the most
// expensive stage.
#ifndef MOELAB_PARALLEL_STAGE_PARTITION_H
#define MOELAB_PARALLEL_STAGE_PARTITION_H

#include "framework/core/config.h"

#ifdef __cplusplus
extern "C" {
#endif

// Forward FLOPs per token (2 per multiply-add): layer (L) attention projections + causal attention
// (average window (T+1)/2) + the dense SwiGLU, or the router and K routed + S shared experts;
// *embed = D (one row gathered per token); *head = 2·V·D for the logits + 4·V for the softmax and
// cross-entropy.
void stage_costs(const MoeConfig *c, double *layer, double *embed, double *head);

// Splits layers 0..L−1 with costs layer (L) into S ≥ 1 contiguous stages of at least one layer
// (L ≥ S), the first also costing `embed` and the last `head`, so that the largest stage cost is as
// small as possible; among the optimal splits, each stage in turn from the first takes as many
// layers as it can. bounds (S + 1): stage s holds layers [bounds[s], bounds[s + 1]).
void stage_partition(const double *layer, int L, double embed, double head, int S, int *bounds);

#ifdef __cplusplus
}
#endif
#endif
