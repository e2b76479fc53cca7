// Byte-level BPE (see tokenizer.h): the chunker, encode/decode, the tokenizer file, and training
// with incremental pair counts (a pair -> words index and a lazy max-heap), so that each merge
// touches only the chunks that contain the merged pair.
#include "data/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/mem.h"

// ---------------------------------------------------------------------------------------------
// Chunker

enum { C_LETTER, C_DIGIT, C_OTHER, C_SPACE, C_WS };  // C_SPACE is ' ', C_WS the other whitespace

static int byte_class(uint8_t c) {
    if (c >= 0x80 || ((c | 32) >= 'a' && (c | 32) <= 'z')) return C_LETTER;
    if (c >= '0' && c <= '9') return C_DIGIT;
    if (c == ' ') return C_SPACE;
    if (c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r') return C_WS;
    return C_OTHER;
}

size_t tok_chunk_len(const uint8_t *x, size_t n) {
    const size_t max = n < TOK_CHUNK_MAX ? n : TOK_CHUNK_MAX;
    size_t i = 0;
    int c = byte_class(x[0]);
    if (c == C_SPACE && n > 1 && byte_class(x[1]) < C_SPACE) {
        i = 1;  // the space leads the word (or number, or punctuation run) after it
        c = byte_class(x[1]);
    }
    if (c < C_SPACE) {
        while (i < max && byte_class(x[i]) == c) i++;
        return i;
    }
    while (i < max && byte_class(x[i]) >= C_SPACE) i++;
    // Leave the last space of a whitespace run to the word that follows, as in " the".
    if (i > 1 && i < n && byte_class(x[i]) < C_SPACE && x[i - 1] == ' ') i--;
    return i;
}

// ---------------------------------------------------------------------------------------------
// Small helpers: hashing, error messages

static uint64_t hash_u64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static uint64_t pair_key(uint32_t a, uint32_t b) { return (uint64_t)a << 32 | b; }

#define set_err(err, ...) core_set_err((err), TOK_ERR_LEN, __VA_ARGS__)

// ---------------------------------------------------------------------------------------------
// Building a tokenizer from merges (validating them), encode, decode

static uint32_t pair_lookup(const Tokenizer *t, uint32_t a, uint32_t b) {
    const uint64_t k = pair_key(a, b);
    for (size_t s = hash_u64(k) & (t->pair_cap - 1);; s = (s + 1) & (t->pair_cap - 1)) {
        if (t->pair_key[s] == k) return t->pair_tok[s];
        if (t->pair_key[s] == UINT64_MAX) return UINT32_MAX;
    }
}

// Builds the tokenizer of merges (n, 2). Returns NULL with a message naming `name` if a merge refers
// to a token not yet defined, repeats an earlier merge, or makes a token longer than a chunk.
static Tokenizer *build(const uint32_t *merges, int n, const char *name, char *err) {
    Tokenizer *t = core_alloc(sizeof *t);
    t->V = 256 + n;
    t->merges = core_alloc(sizeof(uint32_t) * 2 * (size_t)n);
    if (n > 0) memcpy(t->merges, merges, sizeof(uint32_t) * 2 * (size_t)n);
    t->off = core_alloc(sizeof(uint32_t) * ((size_t)t->V + 1));
    t->pair_cap = 16;
    while (t->pair_cap < 2 * (size_t)n) t->pair_cap *= 2;
    t->pair_key = malloc(sizeof(uint64_t) * t->pair_cap);
    t->pair_tok = core_alloc(sizeof(uint32_t) * t->pair_cap);
    CHECK(t->pair_key != NULL, "out of memory for a tokenizer of %d merges", n);
    memset(t->pair_key, 0xff, sizeof(uint64_t) * t->pair_cap);
    // Token lengths first (bounded by TOK_CHUNK_MAX, so the byte table has at most V * 64 bytes).
    for (int i = 0; i <= 256; i++) t->off[i] = (uint32_t)i;
    for (int i = 0; i < n; i++) {
        const uint32_t a = merges[2 * i], b = merges[2 * i + 1], id = 256 + (uint32_t)i;
        if (a >= id || b >= id) {
            set_err(err, "%s: merge %d (token %u) uses token %u, which is not defined before it",
                    name, i, id, a >= id ? a : b);
            tok_free(t);
            return NULL;
        }
        const uint32_t len = (t->off[a + 1] - t->off[a]) + (t->off[b + 1] - t->off[b]);
        if (len > TOK_CHUNK_MAX) {
            set_err(err, "%s: merge %d makes a token of %u bytes, longer than the %d-byte chunk limit",
                    name, i, len, TOK_CHUNK_MAX);
            tok_free(t);
            return NULL;
        }
        t->off[id + 1] = t->off[id] + len;
        size_t s = hash_u64(pair_key(a, b)) & (t->pair_cap - 1);
        while (t->pair_key[s] != UINT64_MAX && t->pair_key[s] != pair_key(a, b))
            s = (s + 1) & (t->pair_cap - 1);
        if (t->pair_key[s] != UINT64_MAX) {
            set_err(err, "%s: merge %d repeats merge %u (%u, %u)", name, i, t->pair_tok[s] - 256, a, b);
            tok_free(t);
            return NULL;
        }
        t->pair_key[s] = pair_key(a, b);
        t->pair_tok[s] = id;
    }
    t->bytes = core_alloc(t->off[t->V]);
    for (int i = 0; i < 256; i++) t->bytes[i] = (uint8_t)i;
    for (int i = 0; i < n; i++) {
        const uint32_t a = merges[2 * i], b = merges[2 * i + 1], id = 256 + (uint32_t)i;
        const uint32_t la = t->off[a + 1] - t->off[a];
        memcpy(t->bytes + t->off[id], t->bytes + t->off[a], la);
        memcpy(t->bytes + t->off[id] + la, t->bytes + t->off[b], t->off[b + 1] - t->off[b]);
    }
    return t;
}

Tokenizer *tok_from_merges(const uint32_t *merges, int n_merges) {
    CHECK(n_merges >= 0 && n_merges <= TOK_VOCAB_MAX - 256, "bad merge count %d", n_merges);
    char err[TOK_ERR_LEN];
    Tokenizer *t = build(merges, n_merges, "merges", err);
    CHECK(t != NULL, "%s", err);
    return t;
}

void tok_free(Tokenizer *t) {
    if (!t) return;
    core_free(t->merges);
    core_free(t->off);
    core_free(t->bytes);
    free(t->pair_key);
    core_free(t->pair_tok);
    core_free(t);
}

// Replaces every (a, b) in t (n tokens) by x, left to right; returns the new length.
static size_t replace_pair(uint32_t *t, size_t n, uint32_t a, uint32_t b, uint32_t x) {
    size_t j = 0;
    for (size_t i = 0; i < n;) {
        if (i + 1 < n && t[i] == a && t[i + 1] == b) {
            t[j++] = x;
            i += 2;
        } else {
            t[j++] = t[i++];
        }
    }
    return j;
}

// BPE on one chunk (n <= TOK_CHUNK_MAX): apply the lowest-ranked merge present (all its occurrences,
// left to right, as training did) until none applies. Ranks order merges exactly as training made
// them, and a merge can only create pairs of higher rank, so this reproduces training's segmentation.
static size_t encode_chunk(const Tokenizer *t, const uint8_t *x, size_t n, uint32_t *out) {
    for (size_t i = 0; i < n; i++) out[i] = x[i];
    size_t m = n;
    while (m >= 2) {
        uint32_t best = UINT32_MAX;
        for (size_t i = 0; i + 1 < m; i++) {
            const uint32_t id = pair_lookup(t, out[i], out[i + 1]);
            if (id < best) best = id;
        }
        if (best == UINT32_MAX) break;
        m = replace_pair(out, m, t->merges[2 * (best - 256)], t->merges[2 * (best - 256) + 1], best);
    }
    return m;
}

size_t tok_encode(const Tokenizer *t, const uint8_t *x, size_t n, uint32_t *out) {
    if (t->V == 256) {
        for (size_t i = 0; i < n; i++) out[i] = x[i];
        return n;
    }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        const size_t len = tok_chunk_len(x + i, n - i);
        m += encode_chunk(t, x + i, len, out + m);
        i += len;
    }
    return m;
}

size_t tok_decode(const Tokenizer *t, const uint32_t *ids, size_t n, uint8_t *out, size_t cap) {
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(ids[i] < (uint32_t)t->V, "token id %u is outside the vocabulary of %d", ids[i], t->V);
        const uint32_t o = t->off[ids[i]], l = t->off[ids[i] + 1] - o;
        if (len < cap) memcpy(out + len, t->bytes + o, len + l <= cap ? l : cap - len);
        len += l;
    }
    return len;
}

uint8_t *tok_decode_ints(const Tokenizer *t, const int *ids, size_t n, size_t *len) {
    uint32_t *u = core_alloc(n * sizeof *u);
    for (size_t i = 0; i < n; i++) u[i] = (uint32_t)ids[i];
    *len = tok_decode(t, u, n, NULL, 0);  // the length only
    uint8_t *text = core_alloc(*len + 1);
    tok_decode(t, u, n, text, *len);
    core_free(u);
    return text;
}

// ---------------------------------------------------------------------------------------------
// The tokenizer file

void tok_write(const Tokenizer *t, FILE *f) {
    const size_t n = TOK_HEADER_BYTES + 8 * (size_t)(t->V - 256);
    uint8_t *buf = core_alloc(n);
    memcpy(buf, TOK_MAGIC, 8);
    core_put_u32le(buf + 8, TOK_VERSION);
    core_put_u32le(buf + 12, (uint32_t)t->V);
    for (int i = 0; i < 2 * (t->V - 256); i++)
        core_put_u32le(buf + TOK_HEADER_BYTES + 4 * (size_t)i, t->merges[i]);
    fwrite(buf, 1, n, f);
    core_free(buf);
}

uint32_t tok_fingerprint(const Tokenizer *t) {
    uint32_t h = CORE_FNV32_START;
    for (int i = -1; i < 2 * (t->V - 256); i++) {
        uint8_t w[4];
        core_put_u32le(w, i < 0 ? (uint32_t)t->V : t->merges[i]);
        h = core_fnv1a32(h, w, sizeof w);
    }
    return h ? h : 1;  // 0 stands for "not recorded" in shards and checkpoints
}

Tokenizer *tok_parse_try(const uint8_t *buf, size_t n, const char *name, char *err) {
    if (n < TOK_HEADER_BYTES) {
        set_err(err, "%s: not a tokenizer file: %zu bytes, shorter than the %d-byte header", name, n,
                TOK_HEADER_BYTES);
        return NULL;
    }
    if (memcmp(buf, TOK_MAGIC, 8) != 0) {
        set_err(err, "%s: not a tokenizer file: bad magic (expected \"%s\")", name, TOK_MAGIC);
        return NULL;
    }
    const uint32_t version = core_get_u32le(buf + 8), V = core_get_u32le(buf + 12);
    if (version != TOK_VERSION) {
        set_err(err, "%s: unknown tokenizer file version %u (this build reads version %u)", name,
                version, TOK_VERSION);
        return NULL;
    }
    if (V < 256 || V > TOK_VOCAB_MAX) {
        set_err(err, "%s: vocabulary size %u is outside [256, %d]", name, V, TOK_VOCAB_MAX);
        return NULL;
    }
    const size_t want = TOK_HEADER_BYTES + 8 * (size_t)(V - 256);
    if (n != want) {
        set_err(err, "%s: %s: a vocabulary of %u needs %zu bytes, the file has %zu", name,
                n < want ? "truncated" : "trailing bytes", V, want, n);
        return NULL;
    }
    const int n_merges = (int)V - 256;
    uint32_t *merges = core_alloc(sizeof(uint32_t) * 2 * (size_t)n_merges);
    for (int i = 0; i < 2 * n_merges; i++)
        merges[i] = core_get_u32le(buf + TOK_HEADER_BYTES + 4 * (size_t)i);
    Tokenizer *t = build(merges, n_merges, name, err);
    core_free(merges);
    return t;
}

Tokenizer *tok_load_try(const char *path, char *err) {
    // Only a regular file: a FIFO would block the open for ever, and a directory reports a length
    // it does not have.
    const char *why;
    FILE *f = core_open_regular(path, &why);
    if (!f) {
        set_err(err, "cannot open tokenizer file %s: %s", path, why);
        return NULL;
    }
    // Refuse anything larger than the largest valid file before reading it into memory.
    const size_t max = TOK_HEADER_BYTES + 8 * (size_t)(TOK_VOCAB_MAX - 256);
    char *buf;
    size_t n;
    const int e = core_read_all(f, max, &buf, &n);
    fclose(f);
    if (e == EFBIG && n > max)
        set_err(err, "%s: not a tokenizer file: %zu bytes, larger than any tokenizer (%zu)", path, n, max);
    else if (e) set_err(err, "cannot read tokenizer file %s: %s", path, core_read_error(e));
    if (e) return NULL;
    Tokenizer *t = tok_parse_try((const uint8_t *)buf, n, path, err);
    core_free(buf);
    return t;
}

Tokenizer *tok_load(const char *path) {
    char err[TOK_ERR_LEN];
    Tokenizer *t = tok_load_try(path, err);
    if (!t) core_usage_error("%s", err);
    return t;
}

// ---------------------------------------------------------------------------------------------
// Training

// A growable array of any element type.
#define GROW(arr, n, cap)                                                                   \
    do {                                                                                    \
        if ((n) == (cap)) {                                                                 \
            (cap) = (cap) ? 2 * (cap) : 16;                                                 \
            void *grown_ = realloc((arr), sizeof *(arr) * (size_t)(cap));                   \
            CHECK(grown_ != NULL, "out of memory growing a tokenizer-training table to %zu entries", \
                  (size_t)(cap));                                                           \
            (arr) = grown_;                                                                 \
        }                                                                                   \
    } while (0)

// Distinct chunks of the corpus with their counts; a word is such a chunk as a token sequence.
typedef struct {
    uint64_t off;    // start in the chunk byte pool, later in the token pool
    uint32_t len;    // bytes, later tokens (shrinks as merges apply)
    int64_t count;   // occurrences in the corpus
} Word;

typedef struct {
    uint32_t a, b;    // the pair (left token, right token)
    int64_t count;    // sum of the counts of the words where it occurs (overlaps counted)
    uint32_t *where;  // (n_where) words that contain or contained it (may repeat)
    uint32_t n_where, cap_where;
    uint32_t stamp;   // the merge step that last queued it for the heap
} Pair;

typedef struct {
    int64_t count;
    uint32_t pair;
} HeapEntry;

typedef struct {
    Word *words;
    size_t n_words, cap_words;
    uint32_t *toks;   // (total word length) the token pool
    Pair *pairs;
    size_t n_pairs, cap_pairs;
    uint64_t *map_key;  // (map_cap) open-addressing table pair key -> pair index, UINT64_MAX = empty
    uint32_t *map_val;  // (map_cap)
    size_t map_cap;
    HeapEntry *heap;
    size_t n_heap, cap_heap;
    uint32_t *touched;  // pairs created or grown in the current merge step
    size_t n_touched, cap_touched;
    uint32_t step;
} Trainer;

// Heap order: larger count first; equal counts by the lower (left, right).
static int heap_before(const Trainer *tr, HeapEntry x, HeapEntry y) {
    if (x.count != y.count) return x.count > y.count;
    const Pair *p = &tr->pairs[x.pair], *q = &tr->pairs[y.pair];
    return pair_key(p->a, p->b) < pair_key(q->a, q->b);
}

static void heap_push(Trainer *tr, int64_t count, uint32_t pair) {
    GROW(tr->heap, tr->n_heap, tr->cap_heap);
    size_t i = tr->n_heap++;
    const HeapEntry e = {count, pair};
    while (i > 0 && heap_before(tr, e, tr->heap[(i - 1) / 2])) {
        tr->heap[i] = tr->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    tr->heap[i] = e;
}

static HeapEntry heap_pop(Trainer *tr) {
    const HeapEntry top = tr->heap[0], last = tr->heap[--tr->n_heap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= tr->n_heap) break;
        if (c + 1 < tr->n_heap && heap_before(tr, tr->heap[c + 1], tr->heap[c])) c++;
        if (!heap_before(tr, tr->heap[c], last)) break;
        tr->heap[i] = tr->heap[c];
        i = c;
    }
    if (tr->n_heap > 0) tr->heap[i] = last;
    return top;
}

static void map_grow(Trainer *tr) {
    const size_t old_cap = tr->map_cap;
    uint64_t *old_key = tr->map_key;
    uint32_t *old_val = tr->map_val;
    tr->map_cap = old_cap ? 2 * old_cap : 1024;
    tr->map_key = malloc(sizeof(uint64_t) * tr->map_cap);
    tr->map_val = malloc(sizeof(uint32_t) * tr->map_cap);
    CHECK(tr->map_key && tr->map_val, "out of memory for a pair table of %zu entries", tr->map_cap);
    memset(tr->map_key, 0xff, sizeof(uint64_t) * tr->map_cap);
    for (size_t s = 0; s < old_cap; s++) {
        if (old_key[s] == UINT64_MAX) continue;
        size_t d = hash_u64(old_key[s]) & (tr->map_cap - 1);
        while (tr->map_key[d] != UINT64_MAX) d = (d + 1) & (tr->map_cap - 1);
        tr->map_key[d] = old_key[s];
        tr->map_val[d] = old_val[s];
    }
    free(old_key);
    free(old_val);
}

// Index of pair (a, b), created with count 0 if new.
static uint32_t pair_get(Trainer *tr, uint32_t a, uint32_t b) {
    if (2 * (tr->n_pairs + 1) > tr->map_cap) map_grow(tr);
    const uint64_t k = pair_key(a, b);
    size_t s = hash_u64(k) & (tr->map_cap - 1);
    while (tr->map_key[s] != UINT64_MAX) {
        if (tr->map_key[s] == k) return tr->map_val[s];
        s = (s + 1) & (tr->map_cap - 1);
    }
    GROW(tr->pairs, tr->n_pairs, tr->cap_pairs);
    const uint32_t id = (uint32_t)tr->n_pairs++;
    tr->pairs[id] = (Pair){.a = a, .b = b};
    tr->map_key[s] = k;
    tr->map_val[s] = id;
    return id;
}

// Adds delta to pair (a, b)'s count; a positive delta records word w in its index and queues it.
static void pair_add(Trainer *tr, uint32_t a, uint32_t b, int64_t delta, uint32_t w) {
    const uint32_t id = pair_get(tr, a, b);
    Pair *p = &tr->pairs[id];
    p->count += delta;
    if (delta <= 0) return;
    if (p->n_where == 0 || p->where[p->n_where - 1] != w) {
        GROW(p->where, p->n_where, p->cap_where);
        p->where[p->n_where++] = w;
    }
    if (p->stamp != tr->step) {
        p->stamp = tr->step;
        GROW(tr->touched, tr->n_touched, tr->cap_touched);
        tr->touched[tr->n_touched++] = id;
    }
}

// Replaces (a, b) by x in word w (left to right) and updates the pair counts: the word's old pairs
// lose its count, its new pairs gain it. Pairs without x come back unchanged (net zero); only pairs
// with x are new, so only they need the word recorded and a heap entry.
static void merge_word(Trainer *tr, uint32_t w, uint32_t a, uint32_t b, uint32_t x) {
    Word *wd = &tr->words[w];
    uint32_t *t = tr->toks + wd->off;
    const uint32_t n = wd->len;
    uint32_t i = 0;
    while (i + 1 < n && !(t[i] == a && t[i + 1] == b)) i++;
    if (i + 1 >= n) return;  // an index entry left over from before an earlier merge in this word
    const int64_t c = wd->count;
    for (i = 0; i + 1 < n; i++) pair_add(tr, t[i], t[i + 1], -c, w);
    const uint32_t j = (uint32_t)replace_pair(t, n, a, b, x);
    wd->len = j;
    for (i = 0; i + 1 < j; i++) {
        if (t[i] == x || t[i + 1] == x) pair_add(tr, t[i], t[i + 1], c, w);
        else tr->pairs[pair_get(tr, t[i], t[i + 1])].count += c;
    }
}

// Counts the distinct chunks of the corpus into tr->words (with their bytes in *pool).
static void count_chunks(Trainer *tr, const uint8_t *const *docs, const size_t *lens, int n_docs,
                         uint8_t **pool_out, const TokProgress *progress) {
    uint8_t *pool = NULL;
    size_t n_pool = 0, cap_pool = 0;
    uint32_t *table = NULL;  // (cap) word index + 1, 0 = empty
    uint64_t *hashes = NULL; // (cap) hash of the word in that slot
    size_t cap = 0;
    size_t total = 0, done = 0;
    for (int d = 0; d < n_docs; d++) total += lens[d];
    for (int d = 0; d < n_docs; d++) {
        const uint8_t *x = docs[d];
        for (size_t i = 0; i < lens[d];) {
            const size_t len = tok_chunk_len(x + i, lens[d] - i);
            // FNV-1a over the chunk, finished by a mixer.
            const uint64_t h = hash_u64(core_fnv1a64(CORE_FNV64_START, x + i, len));
            if (2 * (tr->n_words + 1) > cap) {
                const size_t ncap = cap ? 2 * cap : 1 << 14;
                uint32_t *nt = calloc(ncap, sizeof *nt);
                uint64_t *nh = malloc(ncap * sizeof *nh);
                CHECK(nt && nh, "out of memory for a chunk table of %zu entries", ncap);
                for (size_t s = 0; s < cap; s++) {
                    if (!table[s]) continue;
                    size_t q = hashes[s] & (ncap - 1);
                    while (nt[q]) q = (q + 1) & (ncap - 1);
                    nt[q] = table[s];
                    nh[q] = hashes[s];
                }
                free(table);
                free(hashes);
                table = nt;
                hashes = nh;
                cap = ncap;
            }
            size_t s = h & (cap - 1);
            for (; table[s]; s = (s + 1) & (cap - 1)) {
                const Word *wd = &tr->words[table[s] - 1];
                if (hashes[s] == h && wd->len == len && memcmp(pool + wd->off, x + i, len) == 0) break;
            }
            if (table[s]) {
                tr->words[table[s] - 1].count++;
            } else {
                while (n_pool + len > cap_pool) {
                    cap_pool = cap_pool ? 2 * cap_pool : 1 << 16;
                    pool = realloc(pool, cap_pool);
                    CHECK(pool != NULL, "out of memory for %zu bytes of distinct chunks", cap_pool);
                }
                memcpy(pool + n_pool, x + i, len);
                GROW(tr->words, tr->n_words, tr->cap_words);
                tr->words[tr->n_words++] = (Word){n_pool, (uint32_t)len, 1};
                n_pool += len;
                table[s] = (uint32_t)tr->n_words;
                hashes[s] = h;
            }
            i += len;
        }
        done += lens[d];
        if (progress) progress->fn(progress->ctx, "counting chunks", total ? (double)done / total : 1.0);
    }
    free(table);
    free(hashes);
    *pool_out = pool;
}

Tokenizer *tok_train(const uint8_t *const *docs, const size_t *lens, int n_docs, int V,
                     const TokProgress *progress) {
    CHECK(V >= 256 && V <= TOK_VOCAB_MAX, "vocabulary size %d is outside [256, %d]", V, TOK_VOCAB_MAX);
    if (V == 256) return tok_from_merges(NULL, 0);
    Trainer tr = {0};
    tr.step = 1;  // stamps start at 0, so every pair counted below is queued once
    uint8_t *pool;
    count_chunks(&tr, docs, lens, n_docs, &pool, progress);
    // Words as token sequences (bytes are tokens 0..255), and every adjacent pair counted once per
    // occurrence, weighted by the word's count.
    size_t total = 0;
    for (size_t w = 0; w < tr.n_words; w++) total += tr.words[w].len;
    tr.toks = malloc(sizeof(uint32_t) * (total ? total : 1));
    CHECK(tr.toks != NULL, "out of memory for %zu chunk tokens", total);
    for (size_t w = 0; w < tr.n_words; w++) {
        Word *wd = &tr.words[w];
        const uint8_t *x = pool + wd->off;
        for (uint32_t k = 0; k < wd->len; k++) tr.toks[wd->off + k] = x[k];
        for (uint32_t k = 0; k + 1 < wd->len; k++) pair_add(&tr, x[k], x[k + 1], wd->count, (uint32_t)w);
    }
    free(pool);
    for (size_t i = 0; i < tr.n_touched; i++) heap_push(&tr, tr.pairs[tr.touched[i]].count, tr.touched[i]);

    const int want = V - 256;
    uint32_t *merges = core_alloc(sizeof(uint32_t) * 2 * (size_t)(want > 0 ? want : 1));
    int n = 0;
    while (n < want && tr.n_heap > 0) {
        // Lazy heap: counts only fall between pushes, so a stale entry is re-queued with its current
        // count, and the first entry whose count is current is the true maximum.
        const HeapEntry e = heap_pop(&tr);
        Pair *p = &tr.pairs[e.pair];
        if (e.count != p->count) {
            if (p->count > 0) heap_push(&tr, p->count, e.pair);
            continue;
        }
        const uint32_t a = p->a, b = p->b, x = 256 + (uint32_t)n;
        merges[2 * n] = a;
        merges[2 * n + 1] = b;
        n++;
        uint32_t *where = p->where;  // p may move when new pairs grow the table
        const uint32_t n_where = p->n_where;
        p->where = NULL;
        p->n_where = p->cap_where = 0;
        tr.step = (uint32_t)n + 1;
        tr.n_touched = 0;
        for (uint32_t k = 0; k < n_where; k++) merge_word(&tr, where[k], a, b, x);
        free(where);
        CHECK(tr.pairs[e.pair].count == 0, "BPE training lost count of pair (%u, %u)", a, b);
        for (size_t i = 0; i < tr.n_touched; i++) heap_push(&tr, tr.pairs[tr.touched[i]].count, tr.touched[i]);
        if (progress && (n % 64 == 0 || n == want)) progress->fn(progress->ctx, "merging", (double)n / want);
    }
    Tokenizer *t = tok_from_merges(merges, n);
    core_free(merges);
    for (size_t i = 0; i < tr.n_pairs; i++) free(tr.pairs[i].where);
    free(tr.pairs);
    free(tr.words);
    free(tr.toks);
    free(tr.map_key);
    free(tr.map_val);
    free(tr.heap);
    free(tr.touched);
    return t;
}
