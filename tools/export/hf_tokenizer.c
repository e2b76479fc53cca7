// tokenizer.json for the `tokenizers` library (see hf_export.h). Why it encodes as data/tokenizer.c:
//  * ByteLevel (no regex, no prefix space) first maps every byte of the UTF-8 text to one character
//    of GPT-2's byte alphabet, so the Split that follows counts bytes, as tok_chunk_len does, and
//    cuts multi-byte characters where moelab does;
//  * Split (Isolated) with CHUNK_REGEX yields exactly tok_chunk_len's chunks (written out below);
//  * BPE applies the merges by rank, all occurrences left to right, as encode_chunk does; a token's
//    vocabulary string is its bytes in the byte alphabet, so merge i makes token 256 + i.
#include <stdlib.h>
#include <string.h>

#include "framework/core/json.h"
#include "framework/core/mem.h"
#include "tools/export/hf_export.h"

// GPT-2's byte alphabet: printable bytes stand for themselves, the others (0-32, 127-160, 173) take
// the code points 256, 257, ... in byte order.
static uint32_t byte_char(uint8_t b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    if (b <= 32) return 256u + b;
    if (b <= 160) return 256u + 33u + (uint32_t)(b - 127);
    return 256u + 33u + 34u;  // 173
}

// tok_chunk_len as a regex over the byte alphabet, alternatives tried in order at each position:
// a space and a run of letters, digits or other bytes (at most 64 bytes in all); such a run alone;
// a whitespace run that stops before a space starting a word (" the"); any whitespace run.
// Letters are ASCII letters and bytes >= 0x80: U+00A1-00AC, U+00AE-00FF (bytes 161-172, 174-255)
// and U+0122-0143 (128-160, 173). Whitespace is ' ' (U+0120) and \t \n \v \f \r (U+0109-010D);
// the other bytes are "other": 0-8, 14-31 (U+0100-0108, U+010E-011F), ASCII punctuation, 127 (U+0121).
#define L_ "A-Za-z\u00A1-\u00AC\u00AE-\u00FF\u0122-\u0143"
#define D_ "0-9"
#define O_ "\u0100-\u0108\u010E-\u011F!-/:-@\\[-`{-~\u0121"
#define W_ "\u0120\u0109-\u010D"
#define SP_ "\u0120"
static const char CHUNK_REGEX[] =
    SP_ "[" L_ "]{1,63}|" SP_ "[" D_ "]{1,63}|" SP_ "[" O_ "]{1,63}|[" L_ "]{1,64}|[" D_ "]{1,64}|[" O_ "]{1,64}"
    "|[" W_ "]{1,63}(?=" SP_ "[" L_ D_ O_ "])|[" W_ "]{1,64}";

// Writes token t's bytes in the byte alphabet as UTF-8 into out (at most 2 bytes per byte).
static size_t token_string(const Tokenizer *t, uint32_t id, char *out) {
    size_t n = 0;
    for (uint32_t k = t->off[id]; k < t->off[id + 1]; k++) {
        const uint32_t c = byte_char(t->bytes[k]);
        if (c < 0x80) {
            out[n++] = (char)c;
        } else {
            out[n++] = (char)(0xC0 | c >> 6);
            out[n++] = (char)(0x80 | (c & 0x3F));
        }
    }
    return n;
}

static const Tokenizer *g_cmp_tok;  // qsort has no context argument
static int cmp_bytes(const void *a, const void *b) {
    const Tokenizer *t = g_cmp_tok;
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    const uint32_t lx = t->off[x + 1] - t->off[x], ly = t->off[y + 1] - t->off[y];
    const int c = memcmp(t->bytes + t->off[x], t->bytes + t->off[y], lx < ly ? lx : ly);
    if (c) return c;
    return lx < ly ? -1 : lx > ly ? 1 : (x < y ? -1 : 1);
}

int hf_tokenizer_check(const Tokenizer *t, char *err) {
    uint32_t *ids = core_alloc(sizeof(uint32_t) * (size_t)t->V);
    for (int i = 0; i < t->V; i++) ids[i] = (uint32_t)i;
    g_cmp_tok = t;
    qsort(ids, (size_t)t->V, sizeof *ids, cmp_bytes);
    int bad = 0;
    for (int i = 1; i < t->V && !bad; i++) {
        const uint32_t a = ids[i - 1], b = ids[i];
        const uint32_t la = t->off[a + 1] - t->off[a];
        if (la == t->off[b + 1] - t->off[b] && memcmp(t->bytes + t->off[a], t->bytes + t->off[b], la) == 0) {
            snprintf(err, TOK_ERR_LEN,
                     "tokens %u and %u of the tokenizer have the same %u bytes; the BPE model of the "
                     "`tokenizers` library names tokens by their bytes and cannot hold both",
                     a < b ? a : b, a < b ? b : a, la);
            bad = 1;
        }
    }
    core_free(ids);
    return bad;
}

void hf_tokenizer_write(const Tokenizer *t, FILE *f) {
    // A token, or a merge's "left right": its two tokens hold at most TOK_CHUNK_MAX bytes together.
    char *s = core_alloc(2 * TOK_CHUNK_MAX + 2);
    fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n"
          "  \"added_tokens\": [],\n  \"normalizer\": null,\n"
          "  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [\n"
          "    {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false},\n"
          "    {\"type\": \"Split\", \"pattern\": {\"Regex\": ", f);
    json_write_string(f, CHUNK_REGEX, strlen(CHUNK_REGEX));
    fputs("}, \"behavior\": \"Isolated\", \"invert\": false}]},\n"
          "  \"post_processor\": null,\n"
          "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false},\n"
          "  \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": null,\n"
          "    \"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false,\n"
          "    \"vocab\": {", f);
    for (int i = 0; i < t->V; i++) {
        fputs(i ? ",\n      " : "\n      ", f);
        json_write_string(f, s, token_string(t, (uint32_t)i, s));
        fprintf(f, ": %d", i);
    }
    // Merges as "left right": no byte-alphabet character is a plain space, so the split is unambiguous.
    fputs("},\n    \"merges\": [", f);
    for (int i = 0; i < t->V - 256; i++) {
        const size_t a = token_string(t, t->merges[2 * i], s);
        s[a] = ' ';
        const size_t b = token_string(t, t->merges[2 * i + 1], s + a + 1);
        fputs(i ? ",\n      " : "\n      ", f);
        json_write_string(f, s, a + 1 + b);
    }
    fputs("]\n  }\n}\n", f);
    core_free(s);
}
