// Tensor views (see tensor.h).
#include "framework/core/tensor.h"

#include <stdio.h>

#include "framework/core/check.h"

Tensor tensor_view(float *data, int ndim, const int64_t *shape) {
    CHECK(ndim >= 0 && ndim <= TENSOR_MAX_DIMS, "tensor rank %d out of range", ndim);
    Tensor t = {data, ndim, {1, 1, 1, 1}};
    for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
    return t;
}

Tensor tensor_2d(float *data, int64_t a, int64_t b) {
    int64_t s[2] = {a, b};
    return tensor_view(data, 2, s);
}

int64_t tensor_numel(const Tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

char *tensor_shape_str(const Tensor *t, char *buf, size_t n) {
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < t->ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (used < n) snprintf(buf + used, n - used, ")");
    return buf;
}
