// libFuzzer target for the config-file reader (framework/core/config.c and the number parser under
// it): any byte string must load or end in one usage error, never crash or hang; a file that loads
// must write back (config_write) as a file that loads to the same config, and validate or fail with
// a message. Errors end the process through the abort hook, which here jumps back to the target.
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/config.h"

static jmp_buf g_back;
static int g_code;

static void back_to_target(int code) {
    g_code = code;
    longjmp(g_back, 1);
}

// Loads text (n bytes) over the defaults into c; returns the exit code the reader ended with (0: none).
static int load(MoeConfig *c, const char *text, size_t n) {
    config_defaults(c);
    FILE *f = fmemopen((void *)text, n, "r");
    if (!f) abort();
    g_code = 0;
    if (setjmp(g_back) == 0) config_load_stream(c, f, "fuzz.cfg");
    fclose(f);
    return g_code;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    core_set_abort_hook(back_to_target);
    if (size == 0) return 0;  // fmemopen needs a buffer of at least one byte
    static MoeConfig a, b;    // static: longjmp leaves no automatic variable in doubt
    const int rc = load(&a, (const char *)data, size);
    if (rc != 0 && rc != CORE_EXIT_USAGE) abort();  // bad text is a usage error, nothing else
    if (rc != 0) return 0;
    // What loaded writes back and reads back to the very same bytes.
    char *text = NULL;
    size_t n = 0;
    FILE *w = open_memstream(&text, &n);
    if (!w) abort();
    config_write(&a, w);
    fclose(w);
    if (load(&b, text, n) != 0 || memcmp(&a, &b, sizeof a) != 0) abort();
    free(text);
    g_code = 0;
    if (setjmp(g_back) == 0) config_validate(&a);
    if (g_code != 0 && g_code != CORE_EXIT_USAGE) abort();
    return 0;
}
