// A small JSON reader (RFC 8259: the whole grammar, into a tree of values) and the string escaper of
// the JSON we write. moelab's one JSON reader: JSON Lines corpora, Chrome traces (moelab schedule
// --from-trace), training metrics (moelab plot); the escaper serves the Hugging Face export. Fuzzed
// by tests/data/fuzz_jsonl.c.
#ifndef MOELAB_CORE_JSON_H
#define MOELAB_CORE_JSON_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// Nesting deeper than this is refused (so that a hostile line cannot exhaust the stack).
#define JSON_MAX_DEPTH 256
// Size of the caller's buffer for json_parse's error message.
#define JSON_ERR_LEN 256

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue JsonValue;
struct JsonValue {
    JsonType type;
    int boolean;        // JSON_BOOL
    double number;      // JSON_NUMBER
    char *str;          // JSON_STRING: the decoded bytes (UTF-8), NUL-terminated; may hold NULs
    size_t len;         // JSON_STRING: bytes in str; JSON_ARRAY, JSON_OBJECT: number of items
    JsonValue *items;   // JSON_ARRAY, JSON_OBJECT: (len) the elements or the members' values
    JsonValue *keys;    // JSON_OBJECT: (len) the members' names, as JSON_STRING values
};

// Parses the n bytes at s as exactly one JSON value (surrounded by optional whitespace). Returns
// NULL on malformed text with a message in err (JSON_ERR_LEN bytes) naming the byte offset and what
// was expected. String escapes are decoded to UTF-8; an unpaired \uD800-\uDFFF escape becomes
// U+FFFD; other bytes of a string are kept as they are (not checked to be UTF-8). A number beyond
// the range of a double is refused (it would read as infinity).
JsonValue *json_parse(const char *s, size_t n, char *err);
// json_parse for callers that name the place their own way (a line and column, a line of a file):
// on malformed text err holds only what was expected and *at the byte offset where it went wrong.
JsonValue *json_parse_at(const char *s, size_t n, char *err, size_t *at);
void json_free(JsonValue *v);
// The value of the first member named key of an object, or NULL (also when v is not an object).
const JsonValue *json_get(const JsonValue *v, const char *key);

// Writes the n bytes at s as a JSON string literal (quotes, escapes for '"', '\\' and control bytes),
// every byte that is no UTF-8 written as U+FFFD: a path from the command line may hold any byte, and
// a line of the metrics file must stay JSON that any reader takes.
void json_write_string(FILE *f, const char *s, size_t n);
// The length (1 to 4) of the UTF-8 sequence that starts the n > 0 bytes at s, or 0 where it is
// not one: a stray or missing continuation byte, a sequence cut short, an overlong or surrogate form.
int json_utf8_len(const unsigned char *s, size_t n);

#ifdef __cplusplus
}
#endif
#endif
