// safetensors writer (see safetensors.h). The header is built in memory first: its length fixes
// every tensor's place in the file.
#include "tools/export/safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "framework/core/check.h"
#include "framework/core/json.h"
#include "framework/core/mem.h"

uint16_t st_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x7FFFFFu)) return (uint16_t)(u >> 16 | 0x40);  // quiet NaN
    u += 0x7FFFu + (u >> 16 & 1u);
    return (uint16_t)(u >> 16);
}

static uint64_t numel(const StTensor *t) {
    uint64_t k = 1;
    for (int d = 0; d < t->ndim; d++) k *= (uint64_t)t->shape[d];
    return k;
}

void st_write(const char *path, const StTensor *t, int n, StDtype dtype, const char *const *meta, int n_meta) {
    const size_t esize = dtype == ST_BF16 ? 2 : 4;
    char *hdr = NULL;
    size_t hlen = 0;
    FILE *h = open_memstream(&hdr, &hlen);
    CHECK(h != NULL, "open_memstream: %s", strerror(errno));
    fputs("{\"__metadata__\":{\"format\":\"pt\"", h);
    for (int i = 0; i < n_meta; i++) {
        fputc(',', h);
        json_write_string(h, meta[2 * i], strlen(meta[2 * i]));
        fputc(':', h);
        json_write_string(h, meta[2 * i + 1], strlen(meta[2 * i + 1]));
    }
    fputc('}', h);
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const uint64_t bytes = numel(&t[i]) * esize;
        fputc(',', h);
        json_write_string(h, t[i].name, strlen(t[i].name));
        fprintf(h, ":{\"dtype\":\"%s\",\"shape\":[", dtype == ST_BF16 ? "BF16" : "F32");
        for (int d = 0; d < t[i].ndim; d++) fprintf(h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        fprintf(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off, (unsigned long long)(off + bytes));
        off += bytes;
    }
    fputc('}', h);
    if (fclose(h) != 0) core_failure_error("export: out of memory building the safetensors header of %s", path);
    // Pad with spaces so that the data (after the 8-byte size and the header) is 8-byte aligned.
    const size_t padded = (hlen + 7) / 8 * 8;

    FILE *f = fopen(path, "wb");
    if (!f) core_path_error(errno, "export: cannot create %s: %s", path, strerror(errno));
    uint8_t size_le[8];
    for (int b = 0; b < 8; b++) size_le[b] = (uint8_t)((uint64_t)padded >> (8 * b));
    int ok = fwrite(size_le, 1, 8, f) == 8 && fwrite(hdr, 1, hlen, f) == hlen;
    for (size_t k = hlen; k < padded; k++) ok = ok && fputc(' ', f) != EOF;
    free(hdr);
    // Values in blocks, converted to the file's dtype (little-endian, as is this machine).
    enum { BLOCK = 1 << 16 };
    uint16_t *half = core_alloc(BLOCK * sizeof(uint16_t));
    for (int i = 0; i < n && ok; i++) {
        const uint64_t k = numel(&t[i]);
        if (dtype == ST_F32) {
            ok = fwrite(t[i].data, 4, k, f) == k;
            continue;
        }
        for (uint64_t s = 0; s < k && ok; s += BLOCK) {
            const size_t m = k - s < BLOCK ? (size_t)(k - s) : BLOCK;
            for (size_t j = 0; j < m; j++) half[j] = st_bf16(t[i].data[s + j]);
            ok = fwrite(half, 2, m, f) == m;
        }
    }
    core_free(half);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) ok = 0, err = errno;
    if (!ok) core_path_error(err, "export: cannot write %s: %s", path, strerror(err));
}
