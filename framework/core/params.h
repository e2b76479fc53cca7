// The named parameter registry: every tensor of the model lives in one contiguous buffer (and its
// gradient in a second one of the same layout), described by name, logical shape, kind and offset.
// Checkpoints, expert-parallel sharding, gradient sync and EPLB all find tensors through it. It lives
// in framework/core so that checkpoints/, which stores what it describes, depends on it alone and
// not on the model.
#ifndef MOELAB_CORE_PARAMS_H
#define MOELAB_CORE_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    PARAM_DENSE = 0,   // replicated over data parallel, averaged over DP
    PARAM_EXPERT = 1,  // leading axis = experts; this rank holds a block of slots, averaged over expert-DP
    PARAM_BUFFER = 2,  // state without gradient (router balancing bias)
} ParamKind;

#define PARAM_NAME_MAX 64

typedef struct {
    char name[PARAM_NAME_MAX];
    int ndim;
    int64_t shape[4];     // logical shape; for PARAM_EXPERT shape[0] is the number of experts
    int64_t local_rows;   // PARAM_EXPERT: slots held here (shape[0] locally); else shape[0]
    size_t offset;        // in floats, into the registry's buffers
    size_t numel;         // floats held here
    int layer;            // -1 for tensors outside the layers
    ParamKind kind;
    int decay;            // AdamW weight decay applies (matrices)
    float init_std;       // N(0, init_std²) at initialization; 0 means "fill with init_value"
    float init_value;
} ParamInfo;

typedef struct {
    int n, cap;
    ParamInfo *p;
    size_t total;         // floats in each buffer
    float *data;          // (total) values; a model whose optimizer keeps the fp32 values elsewhere
                          // holds only the untrained ones here (params_untrained_floats)
    float *grad;          // (total) gradients (zero for PARAM_BUFFER entries)
} ParamRegistry;

// Declares a tensor; returns its index. local_rows < shape[0] only for expert tensors under EP.
// Its offset is rounded up to 16 floats (64 bytes, for vector loads): code that walks the registry
// must take the gaps as they come (and must not take every offset to be a multiple of 16).
int params_add(ParamRegistry *r, const char *name, int layer, ParamKind kind, int ndim,
               const int64_t *shape, int64_t local_rows, float init_std, float init_value);
// The same, placed right after the tensor declared last with no gap, so that tensors read as one
// matrix stay one: the attention's wq, wk, wv are the stacked (qd + 2·kd, D) Wqkv of a single
// product (framework/model.c). Needs a tensor declared before it.
int params_add_packed(ParamRegistry *r, const char *name, int layer, ParamKind kind, int ndim,
                      const int64_t *shape, int64_t local_rows, float init_std, float init_value);
// Allocates data and grad once every tensor is declared.
void params_allocate(ParamRegistry *r);
// Index of a name, or -1.
int params_find(const ParamRegistry *r, const char *name);
float *params_ptr(const ParamRegistry *r, const char *name);   // CHECKs that the name exists
float *params_grad(const ParamRegistry *r, const char *name);  // likewise
// The floats of the untrained tensors (PARAM_BUFFER), which a registry that holds its trained values
// elsewhere (ZeRO-1's master shard) keeps in data alone: the declarer places them first, and this
// CHECKs that no trained tensor starts before their end, which it returns.
size_t params_untrained_floats(const ParamRegistry *r);
void params_zero_grad(ParamRegistry *r);
void params_free(ParamRegistry *r);

#ifdef __cplusplus
}
#endif
#endif
