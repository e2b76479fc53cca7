// Token shard writer and memory-mapped reader (format in shard.h). The reader checks magic,
// version, width, vocab, size and every token id before anyone reads a token, so that a bad file
// is one clear error naming it, never a wrong training run.
#include "data/shard.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/mem.h"

// The message into err, and -1 for the caller to return.
#define fail(err, ...) (core_set_err((err), SHARD_ERR_LEN, __VA_ARGS__), -1)

int shard_parse_try(const uint8_t *buf, size_t n, const char *name, Shard *s, char *err) {
    memset(s, 0, sizeof *s);
    if (n < SHARD_HEADER_BYTES)
        return fail(err, "%s: not a token shard: %zu bytes, shorter than the %d-byte header", name, n,
                    SHARD_HEADER_BYTES);
    if (memcmp(buf, SHARD_MAGIC, 8) != 0)
        return fail(err, "%s: not a token shard: bad magic (expected \"%s\")", name, SHARD_MAGIC);
    const uint32_t version = core_get_u32le(buf + 8), vocab = core_get_u32le(buf + 12);
    const uint64_t count = (uint64_t)core_get_u32le(buf + 16) | (uint64_t)core_get_u32le(buf + 20) << 32;
    const uint32_t width = core_get_u32le(buf + 24), tok_fp = core_get_u32le(buf + 28);
    if (version != 1 && version != SHARD_VERSION)
        return fail(err, "%s: unknown token shard version %u (this build reads versions 1 and %u)", name,
                    version, SHARD_VERSION);
    if (width != 2 && width != 4) return fail(err, "%s: token width %u is neither 2 nor 4", name, width);
    if (vocab == 0 || (width == 2 && vocab > 65536))
        return fail(err, "%s: vocabulary size %u does not fit %u-byte tokens", name, vocab, width);
    if ((version == 1) != (tok_fp == 0))
        return fail(err, "%s: tokenizer fingerprint %u in a version %u header (%s)", name, tok_fp, version,
                    version == 1 ? "version 1 has 0 there" : "0 is not a fingerprint");
    const size_t have = n - SHARD_HEADER_BYTES;
    if (count > have / width || count * width != have)
        return fail(err, "%s: %s: header says %llu tokens of %u bytes, the file holds %zu bytes after the header",
                    name, count > have / width ? "truncated" : "trailing bytes",
                    (unsigned long long)count, width, have);
    s->vocab = vocab;
    s->width = width;
    s->n = count;
    s->tok_fp = tok_fp;
    s->data = buf + SHARD_HEADER_BYTES;
    for (uint64_t i = 0; i < count; i++) {
        const uint32_t t = shard_token(s, i);
        if (t >= vocab) {
            memset(s, 0, sizeof *s);
            return fail(err, "%s: token %u at position %llu is >= the vocabulary size %u", name, t,
                        (unsigned long long)i, vocab);
        }
    }
    return 0;
}

int shard_open_try(const char *path, Shard *s, char *err) {
    memset(s, 0, sizeof *s);
    // Only a regular file can be mapped, and opening a FIFO to find out would block for ever.
    const char *why;
    FILE *f = core_open_regular(path, &why);
    if (!f) {
        const int e = errno;  // 0 where the path is no regular file (core_open_regular)
        core_set_err(err, SHARD_ERR_LEN, "cannot open token shard %s: %s", path, why);
        return e ? e : -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        const int e = errno;
        fclose(f);
        core_set_err(err, SHARD_ERR_LEN, "cannot read token shard %s: %s", path, strerror(e));
        return e;
    }
    const size_t bytes = (size_t)st.st_size;
    // mmap of 0 bytes fails; a too-short file is reported by the parser instead.
    void *map = NULL;
    if (bytes > 0) {
        map = mmap(NULL, bytes, PROT_READ, MAP_PRIVATE, fileno(f), 0);
        if (map == MAP_FAILED) {
            const int e = errno;
            fclose(f);
            core_set_err(err, SHARD_ERR_LEN, "cannot map token shard %s: %s", path, strerror(e));
            return e;
        }
    }
    fclose(f);
    static const uint8_t empty[1];
    if (shard_parse_try(map ? map : empty, bytes, path, s, err) != 0) {
        if (map) munmap(map, bytes);
        return -1;
    }
    s->map = map;
    s->map_bytes = bytes;
    return 0;
}

void shard_open(const char *path, Shard *s) {
    char err[SHARD_ERR_LEN];
    const int e = shard_open_try(path, s, err);
    if (e > 0) core_path_error(e, "%s", err);  // exit 1 where the system failed (no memory to map)
    if (e) core_usage_error("%s", err);
}

void shard_close(Shard *s) {
    if (s->map) munmap(s->map, s->map_bytes);
    memset(s, 0, sizeof *s);
}

struct ShardWriter {
    FILE *f;
    char *name;
    uint32_t vocab, width, tok_fp;
    uint64_t n;
    uint8_t buf[1 << 16];  // tokens encoded here before each fwrite
};

static void write_header(ShardWriter *w) {
    uint8_t h[SHARD_HEADER_BYTES] = {0};
    memcpy(h, SHARD_MAGIC, 8);
    core_put_u32le(h + 8, SHARD_VERSION);
    core_put_u32le(h + 12, w->vocab);
    core_put_u32le(h + 16, (uint32_t)w->n);
    core_put_u32le(h + 20, (uint32_t)(w->n >> 32));
    core_put_u32le(h + 24, w->width);
    core_put_u32le(h + 28, w->tok_fp);
    fwrite(h, 1, sizeof h, w->f);
}

ShardWriter *shard_writer_open(FILE *f, const char *name, uint32_t vocab, uint32_t tok_fp) {
    CHECK(vocab > 0, "token shard %s: vocabulary size must be positive", name);
    CHECK(tok_fp != 0, "token shard %s: 0 is not a tokenizer fingerprint", name);
    ShardWriter *w = core_alloc(sizeof *w);
    w->f = f;
    w->name = core_alloc(strlen(name) + 1);
    strcpy(w->name, name);
    w->vocab = vocab;
    w->width = vocab <= 65536 ? 2 : 4;
    w->tok_fp = tok_fp;
    write_header(w);  // with count 0 until close rewrites it
    return w;
}

void shard_writer_put(ShardWriter *w, const uint32_t *ids, size_t n) {
    const size_t per = sizeof w->buf / w->width;
    for (size_t i = 0; i < n; i += per) {
        const size_t m = n - i < per ? n - i : per;
        for (size_t k = 0; k < m; k++) {
            const uint32_t t = ids[i + k];
            CHECK(t < w->vocab, "token shard %s: token %u is >= the vocabulary size %u", w->name, t, w->vocab);
            for (uint32_t b = 0; b < w->width; b++) w->buf[k * w->width + b] = (uint8_t)(t >> (8 * b));
        }
        fwrite(w->buf, 1, m * w->width, w->f);
    }
    w->n += n;
}

uint64_t shard_writer_close(ShardWriter *w) {
    // The tokens go out first. After a failed write (the stream's error flag, set by a failed
    // flush too) the stream stays where the write failed: the caller's close meets the same cause
    // there again and reports it, discarding the file, header and all. After a flush that succeeds,
    // only a stream that cannot seek (the caller's mistake) can fail to go back to the header.
    if (fflush(w->f) == 0 && !ferror(w->f)) {
        CHECK(fseek(w->f, 0, SEEK_SET) == 0, "token shard %s: cannot seek back to the header: %s", w->name,
              strerror(errno));
        write_header(w);
    }
    const uint64_t n = w->n;
    core_free(w->name);
    core_free(w);
    return n;
}
