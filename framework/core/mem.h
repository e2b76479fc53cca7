// Memory: checked host allocation (device memory is the backend table's, layers/ops.h).
// Every buffer of the model and the optimizer goes through here so that a failed allocation is
// one clear error naming the size, never a NULL dereference later. Also the little-endian u32
// fields of the byte buffers that moelab's files are made of, and the FNV-1a hash of bytes.
#ifndef MOELAB_CORE_MEM_H
#define MOELAB_CORE_MEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { CORE_CPU = 0, CORE_CUDA = 1 } CoreDevice;

// Host memory, 64-byte aligned, zero-filled. Never returns NULL.
void *core_alloc(size_t bytes);
// The same, every byte set to `fill` instead (the CPU's poisoned buffers, layers/ops.c).
void *core_alloc_filled(size_t bytes, int fill);
// The same, not filled: its bytes are whatever the heap held (a buffer written before it is read).
void *core_alloc_uninit(size_t bytes);
void core_free(void *p);
// A growing array's next room: a zeroed buffer of cap elements of es bytes that starts with the n
// elements of old (NULL when n is 0), which it frees.
void *core_grow(void *old, size_t n, size_t cap, size_t es);
// This machine's physical memory in bytes: the bound of sizes given on a command line, checked
// before anything is allocated (an allocation beyond it would only swap or be killed).
double core_host_memory_bytes(void);
// The memory this process holds now (its resident set less mapped files), in bytes; 0 where the
// system does not say.
double core_host_resident_bytes(void);

// The u32 stored little-endian at p, and storing one there: the byte order of every file moelab
// writes (token shards, tokenizers, checkpoints' chunk checksums), whatever the host's.
static inline uint32_t core_get_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void core_put_u32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

// FNV-1a over n bytes, going on from h (CORE_FNV32_START or CORE_FNV64_START to begin): the
// fingerprints that files store and ranks compare, and short hashes of names. Not for security.
#define CORE_FNV32_START 2166136261u
#define CORE_FNV64_START 1469598103934665603ull
static inline uint32_t core_fnv1a32(uint32_t h, const void *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ ((const uint8_t *)p)[i]) * 16777619u;
    return h;
}
static inline uint64_t core_fnv1a64(uint64_t h, const void *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ ((const uint8_t *)p)[i]) * 1099511628211ull;
    return h;
}

#ifdef __cplusplus
}
#endif
#endif
