// A safetensors file writer (the Hugging Face tensor format): an 8-byte little-endian header size
// N, N bytes of a JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {...}} padded with spaces so that the data starts at a multiple of 8, then the
// tensors' bytes, little-endian, back to back in the order given, with no gaps.
#ifndef MOELAB_TOOLS_EXPORT_SAFETENSORS_H
#define MOELAB_TOOLS_EXPORT_SAFETENSORS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ST_NAME_MAX 128

typedef enum { ST_F32 = 0, ST_BF16 = 1 } StDtype;

typedef struct {
    char name[ST_NAME_MAX];
    int ndim;
    int64_t shape[4];
    const float *data;   // (product of shape) values; written as the file's dtype
} StTensor;

// fp32 → bf16, rounding to nearest even (NaN stays NaN; a finite value of magnitude 2^128 · (1 −
// 2^−9) or more becomes infinite).
uint16_t st_bf16(float x);

// Writes the n tensors (names unique) with metadata {"format": "pt", meta[0]: meta[1], ...} (n_meta
// key/value pairs) to path, then fsyncs it. A failed write ends the process with one message naming
// path: exit 1 where the system failed (a full disk, an I/O error), else 2 (core_path_error).
void st_write(const char *path, const StTensor *t, int n, StDtype dtype, const char *const *meta, int n_meta);


#ifdef __cplusplus
}
#endif
#endif
