// JSON reader and string writer (see json.h): a recursive-descent parser over a byte range that
// never reads past it, with a depth limit, building a tree of malloc'd values.
#include "framework/core/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"

typedef struct {
    const char *s;
    size_t n, i;
    char *err;      // (JSON_ERR_LEN) what was expected, without the place
    size_t at;      // the byte offset of the first failure
    int failed;
} Parser;

static int fail(Parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(Parser *p, const char *fmt, ...) {
    if (p->failed) return 0;
    p->failed = 1;
    p->at = p->i;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, JSON_ERR_LEN, fmt, ap);
    va_end(ap);
    return 0;
}

static void *xrealloc(void *q, size_t bytes) {
    void *r = realloc(q, bytes ? bytes : 1);
    // The machine's limit, not a bug of ours: exit 1 with no source location in the message.
    if (!r) core_failure_error("out of memory parsing JSON (%zu bytes)", bytes);
    return r;
}

static void skip_ws(Parser *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static int literal(Parser *p, const char *word) {
    const size_t k = strlen(word);
    if (p->n - p->i < k || memcmp(p->s + p->i, word, k) != 0) return fail(p, "expected a JSON value");
    p->i += k;
    return 1;
}

static int hex4(Parser *p, uint32_t *out) {
    if (p->n - p->i < 4) return fail(p, "truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        const char c = p->s[p->i + (size_t)k];
        const int d = c >= '0' && c <= '9' ? c - '0' : (c | 32) >= 'a' && (c | 32) <= 'f' ? (c | 32) - 'a' + 10 : -1;
        if (d < 0) return fail(p, "bad hex digit in \\u escape");
        v = v << 4 | (uint32_t)d;
    }
    p->i += 4;
    *out = v;
    return 1;
}

// Appends code point cp as UTF-8 (at most 4 bytes) to out at *len: the lead byte's mark and top
// bits, then 6 bits in each continuation byte.
static void put_utf8(char *out, size_t *len, uint32_t cp) {
    static const uint8_t lead[5] = {0, 0x00, 0xC0, 0xE0, 0xF0};
    uint8_t *o = (uint8_t *)out + *len;
    const int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    for (int k = n - 1; k > 0; k--, cp >>= 6) o[k] = (uint8_t)(0x80 | (cp & 0x3F));
    o[0] = (uint8_t)(lead[n] | cp);
    *len += (size_t)n;
}

// A string starting at the opening quote. The decoded text is never longer than the literal (an
// escape of k bytes decodes to at most k bytes), so one buffer of the literal's size suffices.
static int parse_string(Parser *p, JsonValue *v) {
    size_t end = p->i + 1;  // after the opening quote
    while (end < p->n && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->n) return fail(p, "unterminated string");  // named at its opening quote
    p->i++;
    // v owns the buffer at once: whatever fails below, json_free releases it with the rest.
    char *out = v->str = xrealloc(NULL, end - p->i + 1);
    size_t len = 0;
    while (p->s[p->i] != '"') {
        const uint8_t c = (uint8_t)p->s[p->i];
        if (c < 0x20) return fail(p, "control byte 0x%02x inside a string", c);
        if (c != '\\') {
            out[len++] = (char)c;
            p->i++;
            continue;
        }
        const char e = p->s[p->i + 1];
        p->i += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e != '\0' && simple) {
            out[len++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            continue;
        }
        if (e != 'u') {
            p->i -= 2;
            return fail(p, "bad escape in a string");
        }
        uint32_t cp;
        if (!hex4(p, &cp)) return 0;
        if (cp >= 0xD800 && cp < 0xDC00 && p->n - p->i >= 6 && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u') {
            const size_t at = p->i;
            uint32_t lo;
            p->i += 2;
            if (!hex4(p, &lo)) return 0;
            if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            else p->i = at;  // not a low surrogate: this one stands alone, the next escape is its own
        }
        if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;  // an unpaired surrogate has no UTF-8 form
        put_utf8(out, &len, cp);
    }
    p->i++;  // the closing quote
    out[len] = '\0';
    v->type = JSON_STRING;
    v->len = len;
    return 1;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

// A number as the grammar has it: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
static int parse_number(Parser *p, JsonValue *v) {
    const size_t start = p->i;
    if (p->s[p->i] == '-') p->i++;
    if (p->i >= p->n || !is_digit(p->s[p->i])) return fail(p, "expected a digit");
    if (p->s[p->i] == '0') p->i++;
    else while (p->i < p->n && is_digit(p->s[p->i])) p->i++;
    if (p->i < p->n && p->s[p->i] == '.') {
        p->i++;
        if (p->i >= p->n || !is_digit(p->s[p->i])) return fail(p, "expected a digit after '.'");
        while (p->i < p->n && is_digit(p->s[p->i])) p->i++;
    }
    if (p->i < p->n && (p->s[p->i] | 32) == 'e') {
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
        if (p->i >= p->n || !is_digit(p->s[p->i])) return fail(p, "expected a digit in the exponent");
        while (p->i < p->n && is_digit(p->s[p->i])) p->i++;
    }
    // strtod needs a terminated copy: the input is a byte range, not a C string.
    char *text = xrealloc(NULL, p->i - start + 1);
    memcpy(text, p->s + start, p->i - start);
    text[p->i - start] = '\0';
    v->type = JSON_NUMBER;
    v->number = strtod(text, NULL);
    free(text);
    if (!isfinite(v->number)) {
        p->i = start;
        return fail(p, "number out of the range of a double");
    }
    return 1;
}

static int parse_value(Parser *p, JsonValue *v, int depth);

// An array or object starting at its opening bracket; members of an object are "key": value.
static int parse_container(Parser *p, JsonValue *v, int depth) {
    const int object = p->s[p->i] == '{';
    const char close = object ? '}' : ']';
    v->type = object ? JSON_OBJECT : JSON_ARRAY;
    if (depth >= JSON_MAX_DEPTH) return fail(p, "nested deeper than %d levels", JSON_MAX_DEPTH);
    p->i++;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == close) {
        p->i++;
        return 1;
    }
    size_t cap = 0;
    for (;;) {
        if (v->len == cap) {
            cap = cap ? 2 * cap : 4;
            v->items = xrealloc(v->items, cap * sizeof *v->items);
            if (object) v->keys = xrealloc(v->keys, cap * sizeof *v->keys);
        }
        JsonValue *item = &v->items[v->len];
        memset(item, 0, sizeof *item);
        if (object) {
            JsonValue *key = &v->keys[v->len];
            memset(key, 0, sizeof *key);
            if (p->i >= p->n || p->s[p->i] != '"') return fail(p, "expected a member name in quotes");
            v->len++;  // counted now so that json_free releases a key whose value fails
            if (!parse_string(p, key)) return 0;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') return fail(p, "expected ':' after a member name");
            p->i++;
            skip_ws(p);
        } else {
            v->len++;
        }
        if (!parse_value(p, item, depth + 1)) return 0;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
            skip_ws(p);
            continue;
        }
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            return 1;
        }
        return fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(Parser *p, JsonValue *v, int depth) {
    if (p->i >= p->n) return fail(p, "expected a JSON value, found the end of the text");
    switch (p->s[p->i]) {
    case '{':
    case '[': return parse_container(p, v, depth);
    case '"': return parse_string(p, v);
    case 't': v->type = JSON_BOOL; v->boolean = 1; return literal(p, "true");
    case 'f': v->type = JSON_BOOL; return literal(p, "false");
    case 'n': v->type = JSON_NULL; return literal(p, "null");
    default:
        if (p->s[p->i] == '-' || is_digit(p->s[p->i])) return parse_number(p, v);
        return fail(p, "expected a JSON value");
    }
}

static void free_children(JsonValue *v) {
    for (size_t k = 0; v->items && k < v->len; k++) free_children(&v->items[k]);
    for (size_t k = 0; v->keys && k < v->len; k++) free(v->keys[k].str);
    free(v->items);
    free(v->keys);
    free(v->str);
}

JsonValue *json_parse(const char *s, size_t n, char *err) {
    char what[JSON_ERR_LEN];
    size_t at;
    JsonValue *v = json_parse_at(s, n, what, &at);
    if (!v) snprintf(err, JSON_ERR_LEN, "at byte %zu: %.200s", at, what);
    return v;
}

JsonValue *json_parse_at(const char *s, size_t n, char *err, size_t *at) {
    Parser p = {s, n, 0, err, 0, 0};
    JsonValue *v = xrealloc(NULL, sizeof *v);
    memset(v, 0, sizeof *v);
    skip_ws(&p);
    if (parse_value(&p, v, 0)) {
        skip_ws(&p);
        if (p.i == n) return v;
        fail(&p, "unexpected text after the JSON value");
    }
    *at = p.at;
    json_free(v);
    return NULL;
}

void json_free(JsonValue *v) {
    if (!v) return;
    free_children(v);
    free(v);
}

const JsonValue *json_get(const JsonValue *v, const char *key) {
    if (!v || v->type != JSON_OBJECT) return NULL;
    const size_t k = strlen(key);
    for (size_t i = 0; i < v->len; i++)
        if (v->keys[i].len == k && memcmp(v->keys[i].str, key, k) == 0) return &v->items[i];
    return NULL;
}

int json_utf8_len(const unsigned char *s, size_t n) {
    const size_t len = s[0] < 0x80            ? 1
                       : (s[0] & 0xE0) == 0xC0 ? 2
                       : (s[0] & 0xF0) == 0xE0 ? 3
                       : (s[0] & 0xF8) == 0xF0 ? 4
                                               : 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (len == 2 && s[0] < 0xC2) return 0;
    if (len == 3 && ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0))) return 0;
    if (len == 4 && ((s[0] == 0xF0 && s[1] < 0x90) || s[0] > 0xF4 || (s[0] == 0xF4 && s[1] >= 0x90))) return 0;
    return (int)len;
}

void json_write_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        const uint8_t c = (uint8_t)s[i];
        const int len = json_utf8_len((const unsigned char *)s + i, n - i);
        if (len == 0) fputs("\\ufffd", f);
        else if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c < 0x20 || c == 0x7F) fprintf(f, "\\u%04x", c);
        else fwrite(s + i, 1, (size_t)len, f);
        i += len ? (size_t)len : 1;
    }
    fputc('"', f);
}
