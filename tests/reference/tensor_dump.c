// Tensor dump writer (format in tensor_dump.h). Every write is checked: a full disk or a closed
// pipe ends the run with one message instead of leaving a truncated dump for the reference to trip on.
#include "tests/reference/tensor_dump.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

static const char TDUMP_MAGIC[8] = {'M', 'L', 'T', 'D', 'U', 'M', 'P', '1'};
// Longest entry name accepted; names are parameter paths such as "grad.layers.3.experts.w13".
enum { TDUMP_MAX_NAME = 4096 };

struct TensorDump {
    FILE *f;
    char path[1024];  // for error messages (truncated if longer)
    uint32_t count;   // entries written so far
};

static void put(TensorDump *td, const void *p, size_t size, size_t n) {
    CHECK(fwrite(p, size, n, td->f) == n, "tensor dump '%s': write failed: %s", td->path,
          strerror(errno));
}

static void put_u32(TensorDump *td, uint32_t v) { put(td, &v, sizeof v, 1); }

TensorDump *tdump_open(const char *path) {
    // The format is little-endian and data is written as it lies in memory.
    const uint16_t probe = 1;
    CHECK(*(const uint8_t *)&probe == 1, "tensor dumps need a little-endian host");
    FILE *f = fopen(path, "wb");
    if (!f) core_usage_error("cannot create tensor dump '%s': %s", path, strerror(errno));
    TensorDump *td = core_alloc(sizeof *td);
    td->f = f;
    snprintf(td->path, sizeof td->path, "%s", path);
    put(td, TDUMP_MAGIC, 1, sizeof TDUMP_MAGIC);
    put_u32(td, 0);  // entry count, patched by tdump_close
    return td;
}

// One entry of any dtype: validates the header fields, then writes header and data.
static void tdump_entry(TensorDump *td, const char *name, uint32_t dtype, size_t elem,
                        const void *data, int ndim, const int64_t *dims) {
    CHECK(td != NULL, "tensor dump: entry '%s' written to a NULL dump", name ? name : "(null)");
    CHECK(name != NULL && name[0] != '\0', "tensor dump '%s': empty entry name", td->path);
    size_t len = strlen(name);
    CHECK(len <= TDUMP_MAX_NAME, "tensor dump '%s': entry name longer than %d bytes", td->path,
          TDUMP_MAX_NAME);
    CHECK(ndim >= 0 && ndim <= TDUMP_MAX_NDIM, "tensor dump '%s': entry '%s' has ndim %d (0..%d)",
          td->path, name, ndim, TDUMP_MAX_NDIM);
    CHECK(ndim == 0 || dims != NULL, "tensor dump '%s': entry '%s' has no dims", td->path, name);
    CHECK(td->count < UINT32_MAX, "tensor dump '%s': too many entries", td->path);
    // Element count with an overflow guard: dims come from callers' shape arithmetic.
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        CHECK(dims[i] >= 0, "tensor dump '%s': entry '%s' has dims[%d] = %lld", td->path, name, i,
              (long long)dims[i]);
        CHECK(dims[i] == 0 || n <= SIZE_MAX / elem / (size_t)dims[i],
              "tensor dump '%s': entry '%s' is too large", td->path, name);
        n *= (size_t)dims[i];
    }
    CHECK(n == 0 || data != NULL, "tensor dump '%s': entry '%s' has no data", td->path, name);
    put_u32(td, (uint32_t)len);
    put(td, name, 1, len);
    put_u32(td, dtype);
    put_u32(td, (uint32_t)ndim);
    if (ndim > 0) put(td, dims, sizeof(int64_t), (size_t)ndim);
    if (n > 0) put(td, data, elem, n);
    td->count++;
}

void tdump_f32(TensorDump *td, const char *name, const float *data, int ndim, const int64_t *dims) {
    tdump_entry(td, name, TDUMP_F32, sizeof(float), data, ndim, dims);
}

void tdump_i32(TensorDump *td, const char *name, const int32_t *data, int ndim,
               const int64_t *dims) {
    tdump_entry(td, name, TDUMP_I32, sizeof(int32_t), data, ndim, dims);
}

void tdump_u8(TensorDump *td, const char *name, const uint8_t *data, int ndim, const int64_t *dims) {
    tdump_entry(td, name, TDUMP_U8, sizeof(uint8_t), data, ndim, dims);
}

void tdump_close(TensorDump *td) {
    CHECK(td != NULL, "tensor dump: tdump_close(NULL)");
    // Flush before seeking: a late write error (e.g. disk full) in the buffered data shows up here.
    CHECK(fflush(td->f) == 0, "tensor dump '%s': write failed: %s", td->path, strerror(errno));
    CHECK(fseek(td->f, (long)sizeof TDUMP_MAGIC, SEEK_SET) == 0, "tensor dump '%s': seek failed: %s",
          td->path, strerror(errno));
    put_u32(td, td->count);
    CHECK(fclose(td->f) == 0, "tensor dump '%s': write failed: %s", td->path, strerror(errno));
    core_free(td);
}
