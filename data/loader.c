// The data loader (semantics in loader.h): a memory-mapped shard, the current epoch's permutation,
// and a position in the endless stream of epochs.
#include "data/loader.h"

#include <string.h>

#include "data/shard.h"
#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "framework/core/rng.h"

struct Loader {
    Shard shard;
    char *path;
    int T, B, rank, world, shuffle;
    uint64_t seed;
    uint64_t S;           // number of sequences
    uint32_t *perm;       // (S) the order of perm_epoch
    uint64_t perm_epoch;  // UINT64_MAX until a permutation has been made
    LoaderPos pos;
};

// Uniform integer in [0, n) without modulo bias (Lemire's multiply-and-reject).
static uint32_t uniform_below(RngStream *r, uint32_t n) {
    uint64_t m = (uint64_t)rng_next_u32(r) * n;
    if ((uint32_t)m < n) {
        const uint32_t reject_below = (0u - n) % n;
        while ((uint32_t)m < reject_below) m = (uint64_t)rng_next_u32(r) * n;
    }
    return (uint32_t)(m >> 32);
}

static void make_perm(Loader *l, uint64_t epoch) {
    for (uint64_t i = 0; i < l->S; i++) l->perm[i] = (uint32_t)i;
    if (l->shuffle) {
        CHECK(epoch <= UINT32_MAX, "epoch %llu is beyond the shuffle stream's 2^32 epochs",
              (unsigned long long)epoch);
        RngStream r = rng_stream(l->seed, (uint32_t)epoch);
        for (uint64_t i = l->S - 1; i > 0; i--) {
            const uint32_t j = uniform_below(&r, (uint32_t)(i + 1));
            const uint32_t t = l->perm[i];
            l->perm[i] = l->perm[j];
            l->perm[j] = t;
        }
    }
    l->perm_epoch = epoch;
}

Loader *loader_open(const char *path, int T, int B, int rank, int world, uint64_t seed, int shuffle) {
    CHECK(T >= 1 && B >= 1, "loader for %s: T = %d and B = %d must be positive", path, T, B);
    CHECK(world >= 1 && rank >= 0 && rank < world, "loader for %s: rank %d is outside [0, %d)", path, rank, world);
    Loader *l = core_alloc(sizeof *l);
    shard_open(path, &l->shard);
    if (l->shard.n < (uint64_t)T + 1)
        core_usage_error("%s: %llu token%s too few for one sequence of T + 1 = %d tokens", path,
                         (unsigned long long)l->shard.n, l->shard.n == 1 ? " is" : "s are", T + 1);
    l->S = (l->shard.n - 1) / (uint64_t)T;
    if (l->S > UINT32_MAX)
        core_usage_error("%s: %llu sequences of %d tokens are more than a loader handles (2^32 - 1)",
                         path, (unsigned long long)l->S, T);
    l->path = core_alloc(strlen(path) + 1);
    strcpy(l->path, path);
    l->T = T;
    l->B = B;
    l->rank = rank;
    l->world = world;
    l->seed = seed;
    l->shuffle = shuffle;
    l->perm = core_alloc(sizeof(uint32_t) * l->S);
    l->perm_epoch = UINT64_MAX;
    return l;
}

void loader_next(Loader *l, int *tokens) {
    const uint64_t first = l->pos.index + (uint64_t)l->rank * (uint64_t)l->B;
    for (int b = 0; b < l->B; b++) {
        // Stream position -> (epoch, index): positions only grow, so one cached permutation is
        // rebuilt only when a batch crosses into the next epoch.
        const uint64_t g = first + (uint64_t)b;
        const uint64_t epoch = l->pos.epoch + g / l->S;
        if (epoch != l->perm_epoch) make_perm(l, epoch);
        const uint64_t start = (uint64_t)l->perm[g % l->S] * (uint64_t)l->T;
        for (int t = 0; t <= l->T; t++) tokens[(size_t)b * (l->T + 1) + t] = (int)shard_token(&l->shard, start + t);
    }
    const uint64_t next = l->pos.index + (uint64_t)l->B * (uint64_t)l->world;
    l->pos.epoch += next / l->S;
    l->pos.index = next % l->S;
}

LoaderPos loader_get_pos(const Loader *l) { return l->pos; }

void loader_set_pos(Loader *l, LoaderPos pos) {
    if (pos.index >= l->S)
        core_usage_error("%s: saved loader position %llu is beyond its %llu sequences of %d tokens "
                         "(was it saved on other data or another sequence length?)",
                         l->path, (unsigned long long)pos.index, (unsigned long long)l->S, l->T);
    l->pos = pos;
}

uint64_t loader_num_sequences(const Loader *l) { return l->S; }

uint32_t loader_vocab(const Loader *l) { return l->shard.vocab; }

// FNV-1a (64 bits) of x's 8 bytes, little-endian, going on from h.
static uint64_t fnv_u64(uint64_t h, uint64_t x) {
    uint8_t b[8];
    core_put_u32le(b, (uint32_t)x);
    core_put_u32le(b + 4, (uint32_t)(x >> 32));
    return core_fnv1a64(h, b, sizeof b);
}

uint64_t loader_fingerprint(const Loader *l) {
    const Shard *s = &l->shard;
    const uint64_t runs = 64, len = 64, gap = s->n / runs;
    uint64_t h = fnv_u64(CORE_FNV64_START, s->n);
    for (uint64_t r = 0; r < runs; r++)
        for (uint64_t i = r * gap; i < r * gap + len && i < s->n; i++) h = fnv_u64(h, shard_token(s, i));
    return h ? h : 1;
}

uint32_t loader_tok_fp(const Loader *l) { return l->shard.tok_fp; }

void loader_close(Loader *l) {
    if (!l) return;
    shard_close(&l->shard);
    core_free(l->perm);
    core_free(l->path);
    core_free(l);
}
