// Byte-level BPE tokenizer: training from text to a target vocabulary, encode, decode, and the
// versioned tokenizer file. Tokens 0..255 are the 256 bytes; token 256 + i is merge i, the
// concatenation of two earlier tokens. decode(encode(x)) == x for every byte string.
#ifndef MOELAB_DATA_TOKENIZER_H
#define MOELAB_DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// Text is cut into chunks before BPE (see tok_chunk_len); no merge crosses a chunk boundary, and no
// chunk (hence no token) is longer than this.
#define TOK_CHUNK_MAX 64
// Largest vocabulary a tokenizer may have (file format limit, and far above any useful size here).
#define TOK_VOCAB_MAX (1 << 20)
// File format: "MOELBPE1", u32 version, u32 vocab size V, then V - 256 merges as (u32 left, u32 right),
// all little-endian. The file size must be exactly 16 + 8 * (V - 256).
#define TOK_MAGIC "MOELBPE1"
#define TOK_VERSION 1u
#define TOK_HEADER_BYTES 16
// Size of the caller's buffer for the error messages of the *_try functions.
#define TOK_ERR_LEN 512

typedef struct {
    int V;               // vocabulary size: 256 + number of merges
    uint32_t *merges;    // (V - 256, 2): token 256 + i is merges[2i] followed by merges[2i + 1]
    uint32_t *off;       // (V + 1): token t decodes to bytes[off[t] .. off[t + 1])
    uint8_t *bytes;      // (off[V]) the byte strings of all tokens, back to back
    uint64_t *pair_key;  // (pair_cap) open-addressing table (left << 32 | right) -> merged token,
    uint32_t *pair_tok;  // (pair_cap) with an empty slot marked by pair_key == UINT64_MAX
    size_t pair_cap;     // power of two, at least twice the number of merges
} Tokenizer;

// Progress report for long work: frac in [0, 1]. May be NULL where a function takes one.
typedef struct {
    void (*fn)(void *ctx, const char *stage, double frac);
    void *ctx;
} TokProgress;

// Length of the chunk that starts at x[0] (n > 0 bytes available): a run of letters (ASCII letters
// and every byte >= 0x80, so UTF-8 words stay whole), of digits, or of other non-space bytes, each
// with at most one leading space; or a run of whitespace, less its last space when a non-space
// byte follows (that space leads the next chunk). At most TOK_CHUNK_MAX bytes.
size_t tok_chunk_len(const uint8_t *x, size_t n);

// Learns V - 256 merges from documents docs[i] (lens[i] bytes each): repeatedly merges the most
// frequent adjacent pair (ties: the lowest (left, right)), counting pairs inside chunks weighted by
// how often each chunk occurs. Stops early, with a smaller V, if no adjacent pair is left.
Tokenizer *tok_train(const uint8_t *const *docs, const size_t *lens, int n_docs, int V,
                     const TokProgress *progress);
// The tokenizer of the given merges ((n_merges, 2), assumed valid); n_merges = 0 gives raw bytes.
Tokenizer *tok_from_merges(const uint32_t *merges, int n_merges);
void tok_free(Tokenizer *t);

// Encodes x (n bytes) into out (capacity n: a token is at least one byte); returns the token count.
size_t tok_encode(const Tokenizer *t, const uint8_t *x, size_t n, uint32_t *out);
// Decodes ids (n tokens, each < V) into out; writes at most cap bytes and returns the full length.
size_t tok_decode(const Tokenizer *t, const uint32_t *ids, size_t n, uint8_t *out, size_t cap);
// Decodes a model's token ids (n ints, each in [0, V)) into a new buffer (core_free it) of *len bytes.
uint8_t *tok_decode_ints(const Tokenizer *t, const int *ids, size_t n, size_t *len);

// Writes the tokenizer file's bytes to f. A failed write only sets f's error flag: the caller's
// checked close reports it (dataset preparation writes through a CoreOut, framework/core/file.h).
void tok_write(const Tokenizer *t, FILE *f);
// Parses a tokenizer file image (n bytes; name is used in messages). On error returns NULL and puts
// one message naming `name` in err (TOK_ERR_LEN bytes).
Tokenizer *tok_parse_try(const uint8_t *buf, size_t n, const char *name, char *err);
// Reads and parses path, as tok_parse_try.
Tokenizer *tok_load_try(const char *path, char *err);
// Reads path; a missing or malformed file is a usage error naming the file (exit 2).
Tokenizer *tok_load(const char *path);
// A 32-bit fingerprint of the merges (FNV-1a of the tokenizer file's V and merge words), never 0.
// Token shards and checkpoints record the fingerprint of the tokenizer their ids belong to, so that
// files of two `moelab data prepare` runs with the same vocabulary size are still told apart.
uint32_t tok_fingerprint(const Tokenizer *t);

#ifdef __cplusplus
}
#endif
#endif
