// The checked number parser (see num.h): strtoll / strtoull / strtod, with every failure told apart.
#include "framework/core/num.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

// strto* skip leading blanks and read "0x" prefixes; a config value or flag is plain decimal text.
static int plain_start(const char *s) { return *s != '\0' && !isspace((unsigned char)*s); }

NumStatus num_parse_int(const char *name, const char *s, long long lo, long long hi, long long *v, char *err) {
    char *end;
    errno = 0;
    const long long x = plain_start(s) ? strtoll(s, &end, 10) : 0;
    if (!plain_start(s) || end == s || *end != '\0') {
        snprintf(err, NUM_ERR_LEN, "%s '%s' is not an integer", name, s);
        return NUM_SYNTAX;
    }
    // strtoll saturates out-of-range text at LLONG_MIN / LLONG_MAX with ERANGE: past the bounds too.
    if (x < lo || (errno == ERANGE && x < 0)) {
        snprintf(err, NUM_ERR_LEN, "%s %s is too small: at least %lld", name, s, lo);
        return NUM_TOO_SMALL;
    }
    if (x > hi || errno == ERANGE) {
        snprintf(err, NUM_ERR_LEN, "%s %s is too large: at most %lld", name, s, hi);
        return NUM_TOO_LARGE;
    }
    *v = x;
    return NUM_OK;
}

NumStatus num_parse_u64(const char *name, const char *s, unsigned long long hi, unsigned long long *v,
                        char *err) {
    // strtoull accepts "-1" as ULLONG_MAX; a sign is not part of an unsigned value.
    if (*s == '-' || *s == '+') {
        snprintf(err, NUM_ERR_LEN, "%s '%s' is not a non-negative integer", name, s);
        return NUM_SYNTAX;
    }
    char *end;
    errno = 0;
    const unsigned long long x = plain_start(s) ? strtoull(s, &end, 10) : 0;
    if (!plain_start(s) || end == s || *end != '\0') {
        snprintf(err, NUM_ERR_LEN, "%s '%s' is not a non-negative integer", name, s);
        return NUM_SYNTAX;
    }
    if (x > hi || errno == ERANGE) {
        snprintf(err, NUM_ERR_LEN, "%s %s is too large: at most %llu", name, s, hi);
        return NUM_TOO_LARGE;
    }
    *v = x;
    return NUM_OK;
}

NumStatus num_parse_real(const char *name, const char *s, double lo, double hi, double *v, char *err) {
    char *end;
    errno = 0;
    const double x = plain_start(s) ? strtod(s, &end) : 0;
    // strtod also reads hexadecimal floats; a value with 'x' or 'X' is not plain decimal.
    int hex = 0;
    for (const char *p = s; *p; p++) hex |= *p == 'x' || *p == 'X';
    if (!plain_start(s) || end == s || *end != '\0' || hex || isnan(x)) {
        snprintf(err, NUM_ERR_LEN, "%s '%s' is not a finite number", name, s);
        return NUM_SYNTAX;
    }
    // Overflow (1e999, inf) is too large or too small by its sign; underflow (1e-999) reads as its
    // nearest value, 0 or a denormal, and is then judged by the bounds like any other value.
    if (x < lo) {
        snprintf(err, NUM_ERR_LEN, "%s %s is too small: at least %g", name, s, lo);
        return NUM_TOO_SMALL;
    }
    if (x > hi) {
        snprintf(err, NUM_ERR_LEN, "%s %s is too large: at most %g", name, s, hi);
        return NUM_TOO_LARGE;
    }
    // "-0" is 0: its sign would only show up again where the value is printed ("cost of F -0").
    *v = x == 0 ? 0.0 : x;
    return NUM_OK;
}
