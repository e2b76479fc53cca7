// Token shards: a 32-byte header (magic "MOELTOK1", u32 version, u32 vocab size, u64 token count,
// u32 token width in bytes (2 or 4), u32 tokenizer fingerprint), then the token ids, little-endian.
// A streaming writer, and a memory-mapped reader that validates the whole file when it opens it.
#ifndef MOELAB_DATA_SHARD_H
#define MOELAB_DATA_SHARD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "framework/core/mem.h"  // core_get_u32le

#ifdef __cplusplus
extern "C" {
#endif

#define SHARD_MAGIC "MOELTOK1"
// Version 2 records the fingerprint of the tokenizer that wrote the ids (data/tokenizer.h); version
// 1 files, which have 0 there, are still read, with the fingerprint unknown.
#define SHARD_VERSION 2u
#define SHARD_HEADER_BYTES 32
// Size of the caller's buffer for the error messages of the *_try functions.
#define SHARD_ERR_LEN 512

typedef struct {
    uint32_t vocab;       // every token id is < vocab
    uint32_t width;       // bytes per token: 2 (vocab <= 65536) or 4
    uint64_t n;           // number of tokens
    uint32_t tok_fp;      // tok_fingerprint of the tokenizer of the ids; 0: not recorded (version 1)
    const uint8_t *data;  // (n * width) the token ids, little-endian
    void *map;            // the mapping (NULL for a parsed buffer that the caller owns)
    size_t map_bytes;
} Shard;

// Token i of the shard (i < n).
static inline uint32_t shard_token(const Shard *s, uint64_t i) {
    const uint8_t *p = s->data + i * s->width;
    return s->width == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : core_get_u32le(p);
}

// Validates a shard image (n bytes; name is used in messages) and points s into it. On error
// returns -1 with one message naming `name` in err (SHARD_ERR_LEN bytes); 0 on success.
int shard_parse_try(const uint8_t *buf, size_t n, const char *name, Shard *s, char *err);
// Memory-maps path and validates it, as shard_parse_try; where a call failed (open, fstat, mmap)
// returns its errno instead of -1, with the message in err (core_path_error's rule then tells a
// missing file, exit 2, from no memory or file handles, exit 1).
int shard_open_try(const char *path, Shard *s, char *err);
// Memory-maps path; a missing or malformed shard is a usage error naming the file (exit 2), the
// system's failure (no memory to map, no file handle) an environment failure (exit 1).
void shard_open(const char *path, Shard *s);
void shard_close(Shard *s);

// Writes a shard in pieces into f, a seekable stream at its start that the caller opened and
// closes (dataset preparation writes through a CoreOut, framework/core/file.h). A failed write
// only sets f's error flag: the caller's checked close reports it. name is used in messages.
typedef struct ShardWriter ShardWriter;
// Token width is 2 bytes when vocab <= 65536, else 4; tok_fp is the tokenizer's fingerprint (not 0).
ShardWriter *shard_writer_open(FILE *f, const char *name, uint32_t vocab, uint32_t tok_fp);
void shard_writer_put(ShardWriter *w, const uint32_t *ids, size_t n);  // ids: (n), each < vocab
// Fills in the header's token count and frees w (f stays open); returns the token count.
uint64_t shard_writer_close(ShardWriter *w);

#ifdef __cplusplus
}
#endif
#endif
