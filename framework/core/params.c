// Named parameter registry (see params.h).
#include "framework/core/params.h"

#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

// Declares a tensor at the registry's end, its offset rounded up to a multiple of `align` floats.
static int add_aligned(ParamRegistry *r, const char *name, int layer, ParamKind kind, int ndim,
                       const int64_t *shape, int64_t local_rows, float init_std, float init_value,
                       size_t align) {
    CHECK(r->data == NULL, "params_add('%s') after params_allocate", name);
    CHECK(strlen(name) < PARAM_NAME_MAX, "parameter name '%s' too long", name);
    CHECK(params_find(r, name) < 0, "parameter '%s' declared twice", name);
    CHECK(ndim >= 1 && ndim <= 4, "parameter '%s': rank %d", name, ndim);
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->p = core_grow(r->p, (size_t)r->n, (size_t)r->cap, sizeof *r->p);
    }
    ParamInfo *pi = &r->p[r->n];
    memset(pi, 0, sizeof *pi);
    strcpy(pi->name, name);
    pi->ndim = ndim;
    for (int i = 0; i < 4; i++) pi->shape[i] = i < ndim ? shape[i] : 1;
    pi->local_rows = local_rows;
    size_t row = 1;
    for (int i = 1; i < ndim; i++) row *= (size_t)shape[i];
    pi->numel = row * (size_t)local_rows;
    pi->offset = (r->total + align - 1) / align * align;
    r->total = pi->offset + pi->numel;
    pi->layer = layer;
    pi->kind = kind;
    pi->decay = ndim >= 2 && kind != PARAM_BUFFER;
    pi->init_std = init_std;
    pi->init_value = init_value;
    return r->n++;
}

int params_add(ParamRegistry *r, const char *name, int layer, ParamKind kind, int ndim,
               const int64_t *shape, int64_t local_rows, float init_std, float init_value) {
    // 16-float alignment keeps every tensor 64-byte aligned for vector loads.
    return add_aligned(r, name, layer, kind, ndim, shape, local_rows, init_std, init_value, 16);
}

int params_add_packed(ParamRegistry *r, const char *name, int layer, ParamKind kind, int ndim,
                      const int64_t *shape, int64_t local_rows, float init_std, float init_value) {
    CHECK(r->n > 0, "params_add_packed('%s'): no tensor declared before it to follow", name);
    return add_aligned(r, name, layer, kind, ndim, shape, local_rows, init_std, init_value, 1);
}

void params_allocate(ParamRegistry *r) {
    r->data = core_alloc(r->total * sizeof(float));
    r->grad = core_alloc(r->total * sizeof(float));
}

int params_find(const ParamRegistry *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->p[i].name, name) == 0) return i;
    return -1;
}

float *params_ptr(const ParamRegistry *r, const char *name) {
    int i = params_find(r, name);
    CHECK(i >= 0, "no parameter named '%s'", name);
    return r->data + r->p[i].offset;
}

float *params_grad(const ParamRegistry *r, const char *name) {
    int i = params_find(r, name);
    CHECK(i >= 0, "no parameter named '%s'", name);
    return r->grad + r->p[i].offset;
}

size_t params_untrained_floats(const ParamRegistry *r) {
    size_t end = 0, first_trained = r->total;
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *p = &r->p[i];
        if (p->kind == PARAM_BUFFER) {
            if (p->offset + p->numel > end) end = p->offset + p->numel;
        } else if (p->offset < first_trained) {
            first_trained = p->offset;
        }
    }
    CHECK(end <= first_trained, "the registry's untrained tensors do not all come before its trained ones "
          "(they end at float %zu, a trained tensor starts at %zu)", end, first_trained);
    return end;
}

void params_zero_grad(ParamRegistry *r) { memset(r->grad, 0, r->total * sizeof(float)); }

void params_free(ParamRegistry *r) {
    core_free(r->data);
    core_free(r->grad);
    core_free(r->p);
    memset(r, 0, sizeof *r);
}
