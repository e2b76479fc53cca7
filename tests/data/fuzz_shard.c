// libFuzzer target for the token-shard reader: any byte string must parse or be rejected with a
// message, never crash; a shard that parses must have every token below its vocabulary.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data/shard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Shard s;
    char err[SHARD_ERR_LEN];
    if (shard_parse_try(data, size, "fuzz", &s, err) != 0) {
        if (strncmp(err, "fuzz: ", 6) != 0) abort();  // every message names the file
        return 0;
    }
    for (uint64_t i = 0; i < s.n; i++)
        if (shard_token(&s, i) >= s.vocab) abort();
    return 0;
}
