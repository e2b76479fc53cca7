// JSON Lines documents (see jsonl.h): each line parsed by framework/core/json.c.
#include "data/jsonl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "framework/core/file.h"
#include "framework/core/json.h"
#include "framework/core/mem.h"

static void bad_line(JsonlDocs *d, uint64_t line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void bad_line(JsonlDocs *d, uint64_t line, const char *fmt, ...) {
    if (d->bad < JSONL_REPORT) {
        JsonlBadLine *b = &d->first_bad[d->bad];
        b->line = line;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->reason, sizeof b->reason, fmt, ap);
        va_end(ap);
    }
    d->bad++;
}

static const char *type_name(JsonType t) {
    static const char *const names[] = {"null", "a boolean", "a number", "a string", "an array", "an object"};
    return names[t];
}

void jsonl_parse(const uint8_t *buf, size_t n, const char *field, int stop_at_first, JsonlDocs *out) {
    memset(out, 0, sizeof *out);
    // Bounds: a document is at most its line, and there are at most n / 2 + 1 non-empty lines.
    out->text = core_alloc(n + 1);
    out->off = core_alloc(sizeof(uint64_t) * (n / 2 + 2));
    uint64_t used = 0;
    char err[JSON_ERR_LEN];
    // A UTF-8 byte order mark (some editors' first bytes) is no part of the first line, as in a
    // config file (it was that line's "not JSON: at byte 0", of an invisible character).
    const size_t bom = core_bom_len((const char *)buf, n);
    for (size_t start = bom; start < n && !(stop_at_first && out->bad > 0);) {
        const uint8_t *nl = memchr(buf + start, '\n', n - start);
        const size_t end = nl ? (size_t)(nl - buf) : n;
        const uint64_t line = ++out->lines;
        const char *s = (const char *)buf + start;
        const size_t len = end - start;
        start = end + 1;
        size_t k = 0;
        while (k < len && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r')) k++;
        if (k == len) {
            bad_line(out, line, "empty line");
            continue;
        }
        JsonValue *v = json_parse(s, len, err);
        if (!v) {
            bad_line(out, line, "not JSON: %s", err);
            continue;
        }
        const JsonValue *f = json_get(v, field);
        if (v->type != JSON_OBJECT) bad_line(out, line, "not a JSON object but %s", type_name(v->type));
        else if (!f) bad_line(out, line, "no member \"%s\"", field);
        else if (f->type != JSON_STRING) bad_line(out, line, "member \"%s\" is %s, not a string", field, type_name(f->type));
        else {
            memcpy(out->text + used, f->str, f->len);
            used += f->len;
            out->off[++out->n] = used;
        }
        json_free(v);
    }
}

void jsonl_free(JsonlDocs *d) {
    core_free(d->text);
    core_free(d->off);
    memset(d, 0, sizeof *d);
}
