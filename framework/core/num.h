// The one checked number parser of the command lines and config files. A value is the whole string,
// in base 10, within the caller's bounds; each way of failing has its own message, so that a value
// past a bound is reported as too large or too small (with the bound), never as "not an integer".
#ifndef MOELAB_CORE_NUM_H
#define MOELAB_CORE_NUM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// The largest expert load (a token count) any input may hold: an EPLB load file, a metrics file's
// loads, a checkpoint's /eplb counts. Far above any run's counts, and low enough that their sums,
// means and shares stay finite numbers (1e308 + 1e308 made a layer's sum inf in `moelab plot`; a
// checkpoint count near 2^63 overflowed when a resumed run added its own).
#define NUM_MAX_LOAD 1e15

// Size of the caller's buffer for the messages below.
#define NUM_ERR_LEN 256

typedef enum { NUM_OK = 0, NUM_SYNTAX, NUM_TOO_SMALL, NUM_TOO_LARGE } NumStatus;

// An integer in [lo, hi] into *v. On failure *v is untouched and err (NUM_ERR_LEN bytes) holds one
// of "NAME 'S' is not an integer", "NAME S is too small: at least LO", "NAME S is too large: at most HI".
NumStatus num_parse_int(const char *name, const char *s, long long lo, long long hi, long long *v, char *err);
// A non-negative integer up to hi (for seeds: the whole unsigned 64-bit range).
NumStatus num_parse_u64(const char *name, const char *s, unsigned long long hi, unsigned long long *v,
                        char *err);
// A finite real number in [lo, hi] (decimal or exponent form; "nan" and "inf" are not accepted):
// "NAME 'S' is not a finite number", or too small / too large as above.
NumStatus num_parse_real(const char *name, const char *s, double lo, double hi, double *v, char *err);

#ifdef __cplusplus
}
#endif
#endif
