// Tensor views: a pointer plus a shape (up to 4 dims, row-major). Views never own memory; the
// model's contiguous buffers do.
#ifndef MOELAB_CORE_TENSOR_H
#define MOELAB_CORE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TENSOR_MAX_DIMS 4

typedef struct {
    float *data;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
} Tensor;

Tensor tensor_view(float *data, int ndim, const int64_t *shape);
Tensor tensor_2d(float *data, int64_t a, int64_t b);
int64_t tensor_numel(const Tensor *t);
// Formats the shape as "(a, b, c)" into buf; returns buf.
char *tensor_shape_str(const Tensor *t, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
