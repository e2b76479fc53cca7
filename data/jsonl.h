// JSON Lines corpora: one document per line, the string value of a named member of the line's JSON
// object. Lines that give no document are counted and described (line number and reason), never
// dropped silently; `moelab data prepare` reports them or, with --strict, stops at the first.
#ifndef MOELAB_DATA_JSONL_H
#define MOELAB_DATA_JSONL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// How many of the lines without a document are described in detail (the rest are only counted).
#define JSONL_REPORT 5
#define JSONL_REASON_LEN 320

typedef struct {
    uint64_t line;                    // 1-based line number
    char reason[JSONL_REASON_LEN];    // e.g. "not JSON: at byte 7: expected ':' after a member name"
} JsonlBadLine;

typedef struct {
    uint8_t *text;        // the documents' bytes, back to back (at most as many as the input)
    uint64_t *off;        // (n + 1) document i is text[off[i] .. off[i + 1])
    size_t n;             // documents
    uint64_t lines;       // lines read (a final '\n' does not start another line)
    uint64_t bad;         // lines that gave no document
    JsonlBadLine first_bad[JSONL_REPORT];  // the first min(bad, JSONL_REPORT) of them
} JsonlDocs;

// Splits buf (n bytes) into lines and takes member `field` of each. A line gives no document when
// it is empty, is not JSON, is not an object, lacks the member, or the member is not a string.
// stop_at_first: return after the first such line (for --strict). Free with jsonl_free.
void jsonl_parse(const uint8_t *buf, size_t n, const char *field, int stop_at_first, JsonlDocs *out);
void jsonl_free(JsonlDocs *d);

#ifdef __cplusplus
}
#endif
#endif
