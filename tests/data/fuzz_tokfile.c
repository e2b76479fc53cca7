// libFuzzer target for the tokenizer-file reader: any byte string must parse or be rejected with a
// message, never crash; a tokenizer that parses must round-trip the input itself through
// encode/decode, whatever its merges.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"
#include "framework/core/mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[TOK_ERR_LEN];
    Tokenizer *t = tok_parse_try(data, size, "fuzz", err);
    if (!t) {
        if (strncmp(err, "fuzz: ", 6) != 0) abort();  // every message names the file
        return 0;
    }
    uint32_t *ids = core_alloc(sizeof(uint32_t) * (size + 1));
    uint8_t *back = core_alloc(size + 1);
    const size_t n = tok_encode(t, data, size, ids);
    if (tok_decode(t, ids, n, back, size) != size || memcmp(back, data, size) != 0) abort();
    core_free(ids);
    core_free(back);
    tok_free(t);
    return 0;
}
