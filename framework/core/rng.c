// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) and the
// parameter-keyed normal generator built on it.
#include "framework/core/rng.h"

#include <math.h>
#include <string.h>

#include "framework/core/mem.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void rng_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

uint32_t rng_name_hash(const char *name) {
    return core_fnv1a32(CORE_FNV32_START, name, strlen(name));
}

// (0, 1] from 32 random bits, never 0 so that log() is finite.
static double u01_open0(uint32_t x) { return ((double)x + 1.0) / 4294967296.0; }

void rng_normal_fill(float *out, size_t n, float std, uint64_t seed, int layer, const char *name,
                     int expert) {
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t id_name = rng_name_hash(name);
    const uint32_t id_pos = ((uint32_t)(layer + 1) << 16) ^ (uint32_t)(expert + 1);
    // Each block of 4 words gives 2 Box-Muller pairs: elements 4b .. 4b+3.
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < (n + 3) / 4; b++) {
        uint32_t ctr[4] = {(uint32_t)b, (uint32_t)((uint64_t)b >> 32), id_name, id_pos};
        uint32_t r[4];
        rng_philox4x32_10(ctr, key, r);
        for (int pair = 0; pair < 2; pair++) {
            double u1 = u01_open0(r[2 * pair]), u2 = u01_open0(r[2 * pair + 1]);
            double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
            size_t i = 4 * b + 2 * (size_t)pair;
            if (i < n) out[i] = (float)(std * rad * cos(th));
            if (i + 1 < n) out[i + 1] = (float)(std * rad * sin(th));
        }
    }
}

RngStream rng_stream(uint64_t seed, uint32_t stream) {
    RngStream s = {seed, stream, 0};
    return s;
}

uint32_t rng_next_u32(RngStream *s) {
    const uint32_t key[2] = {(uint32_t)s->seed, (uint32_t)(s->seed >> 32)};
    uint32_t ctr[4] = {(uint32_t)s->counter, (uint32_t)(s->counter >> 32), s->stream, 0xA5A5A5A5u};
    uint32_t r[4];
    rng_philox4x32_10(ctr, key, r);
    s->counter++;
    return r[0];
}

float rng_next_uniform(RngStream *s) { return (float)((rng_next_u32(s) >> 8) * (1.0 / 16777216.0)); }
