// AdamW with fp32 moments, the learning-rate schedule (linear warm-up, then cosine decay to min_lr),
// and global-norm gradient clipping. Only trained tensors (not PARAM_BUFFER) are touched; weight decay
// applies to matrices only (ParamInfo.decay).
#ifndef MOELAB_FRAMEWORK_OPTIMIZER_H
#define MOELAB_FRAMEWORK_OPTIMIZER_H

#include "framework/core/config.h"
#include "framework/core/params.h"
#include "layers/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

struct DpSync;

typedef struct {
    float *m, *v;   // (total) first and second moments, same layout as the parameter registry; under
                    // ZeRO-1 (shard != NULL) only this rank's shard of them, in the shard's layout
    float *w;       // ZeRO-1: the fp32 master copy of this rank's shard (shard layout); else NULL,
                    // the registry's values being the master copy
    size_t total;   // floats of the registry
    long t;         // steps taken
    const LayerOps *ops;  // the backend holding m, v and the registry's buffers (layers/ops.h)
    void *p_low;    // (total) compute copy of the weights in ops->dt that each step refreshes, or NULL
    struct DpSync *shard;  // ZeRO-1 (parallel/zero1.h): the sharded gradient sync, or NULL
} AdamW;

// On the host, for a registry in host memory.
void adamw_init(AdamW *o, const ParamRegistry *r);
// On backend ops, for a registry whose buffers live there (model_to_device); p_low as in AdamW.
void adamw_init_on(AdamW *o, const ParamRegistry *r, const LayerOps *ops, void *p_low);
void adamw_free(AdamW *o);
// Learning rate of step `step` (0-based): lr·(step+1)/warmup during warm-up, then
// min_lr + ½(lr − min_lr)(1 + cos(π·p)), p = (step − warmup)/max(1, steps − warmup) capped at 1.
float optim_lr(const MoeConfig *c, int step);
// Σ g² over the trained tensors of kind `kind` (-1: all trained kinds), accumulated in double, for
// a registry whose buffers live on backend ops.
double optim_grad_sqsum_on(const LayerOps *ops, const ParamRegistry *r, int kind);
// Clip factor for a global gradient norm: min(1, clip / norm) (1 when clip is 0).
float optim_clip_factor(float norm, float clip);
// One AdamW step with learning rate lr (PyTorch's AdamW: p ← p(1 − lr·wd), then the Adam update) of an
// unsharded optimizer (ZeRO-1 steps with zero1_step) on the gradients times gscale (the clip factor,
// optim_clip_factor; the buffers keep their values).
void adamw_step(AdamW *o, ParamRegistry *r, const MoeConfig *c, float lr, float gscale);

#ifdef __cplusplus
}
#endif
#endif
