// Tensor dumps: a flat binary file of named tensors that the C model writes and the PyTorch
// reference (tests/reference/tensor_dump.py, moe_reference.py) reads, so both can be compared.
// Format (little-endian): "MLTDUMP1", u32 count, then per entry: u32 name_len, name (no NUL),
// u32 dtype (TDUMP_F32 | TDUMP_I32 | TDUMP_U8), u32 ndim, i64 dims[ndim], raw data (row-major).
#ifndef MOELAB_TESTS_REFERENCE_TENSOR_DUMP_H
#define MOELAB_TESTS_REFERENCE_TENSOR_DUMP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { TDUMP_F32 = 0, TDUMP_I32 = 1, TDUMP_U8 = 2 };
// Most dimensions an entry may have (the reader enforces the same limit).
enum { TDUMP_MAX_NDIM = 16 };

typedef struct TensorDump TensorDump;  // opaque: an open dump file and its entry count

// Creates (truncates) the file at path; a path that cannot be created is a usage error (exit 2).
TensorDump *tdump_open(const char *path);
// Appends one entry. data holds prod(dims) elements (may be NULL when that product is 0);
// ndim in [0, TDUMP_MAX_NDIM] (ndim 0 is a scalar), every dims[i] >= 0, name non-empty.
void tdump_f32(TensorDump *td, const char *name, const float *data, int ndim, const int64_t *dims);
void tdump_i32(TensorDump *td, const char *name, const int32_t *data, int ndim, const int64_t *dims);
void tdump_u8(TensorDump *td, const char *name, const uint8_t *data, int ndim, const int64_t *dims);
// Writes the entry count into the header, flushes and closes; frees td.
void tdump_close(TensorDump *td);

#ifdef __cplusplus
}
#endif
#endif
