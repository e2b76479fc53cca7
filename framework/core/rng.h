// Counter-based random numbers: Philox-4x32-10. A value depends only on (key, counter), so the
// initial weights are keyed by (seed, layer, tensor name, expert id) and come out identical
// whatever the parallel layout, and a sampling stream can be saved and resumed as two integers.
#ifndef MOELAB_CORE_RNG_H
#define MOELAB_CORE_RNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One Philox-4x32-10 block: 4 random words for counter ctr under key key.
void rng_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

// 32-bit FNV-1a hash of a tensor name (part of a parameter's identity).
uint32_t rng_name_hash(const char *name);

// Fills out[0..n) with N(0, std^2) values keyed by (seed, layer, name, expert). layer and expert are
// -1 when not applicable. Element i is the same whatever n is, so a slice of experts can be
// generated alone.
void rng_normal_fill(float *out, size_t n, float std, uint64_t seed, int layer, const char *name,
                     int expert);

// A resumable stream of uniforms (sampling, data shuffling): state is (seed, stream, counter).
typedef struct {
    uint64_t seed;
    uint32_t stream;
    uint64_t counter;  // number of 4-word blocks consumed
} RngStream;

RngStream rng_stream(uint64_t seed, uint32_t stream);
uint32_t rng_next_u32(RngStream *s);     // uses one whole block per call: simple and resumable
float rng_next_uniform(RngStream *s);    // in [0, 1)

#ifdef __cplusplus
}
#endif
#endif
