// `moelab sample`: loads a checkpoint and its tokenizer, and generates text from a prompt.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/ckpt.h"
#include "data/tokenizer.h"
#include "framework/core/check.h"
#include "framework/core/config.h"
#include "framework/core/mem.h"
#include "framework/core/rng.h"
#include "framework/model.h"
#include "framework/sample.h"
#include "tools/commands.h"

static void sample_help(void) {
    printf("usage: moelab sample --ckpt PATH [--prompt TEXT] [--tokens N] [--temperature T]\n"
           "                     [--top-k K] [--seed S] [--data DIR]\n\n"
           "Generates N tokens (default 200) after the prompt (default: a newline) from the model in\n"
           "the checkpoint. temperature 0 is greedy (default 0.8); top-k 0 samples from the whole\n"
           "vocabulary (default 40). The tokenizer is DIR/tokenizer.bin, where DIR defaults to the\n"
           "data directory the checkpoint was trained on.\n");
}

static long parse_long(const char *flag, const char *v, long lo, long hi) {
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < lo || x > hi)
        core_usage_error("sample: %s '%s': expected an integer in [%ld, %ld]", flag, v, lo, hi);
    return x;
}

int cmd_sample(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = "\n", *data = NULL;
    long n_new = 200, top_k = 40;
    unsigned long long seed = 1;
    float temperature = 0.8f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { sample_help(); return 0; }
        if (i + 1 >= argc) core_usage_error("sample: %s needs a value (see `moelab sample --help`)", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--ckpt")) ckpt = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--tokens")) n_new = parse_long(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--top-k")) top_k = parse_long(a, v, 0, 1 << 24);
        else if (!strcmp(a, "--seed")) seed = (unsigned long long)parse_long(a, v, 0, 1L << 62);
        else if (!strcmp(a, "--temperature")) {
            char *end;
            temperature = strtof(v, &end);
            if (*end != '\0' || !(temperature >= 0.0f && temperature <= 100.0f))
                core_usage_error("sample: --temperature '%s': expected a number in [0, 100]", v);
        } else core_usage_error("sample: unknown option '%s' (see `moelab sample --help`)", a);
    }
    if (!ckpt) core_usage_error("sample: --ckpt PATH is required (see `moelab sample --help`)");
    MoeConfig c;
    config_defaults(&c);
    ckpt_read_config(ckpt, &c);
    char path[2 * CONFIG_STR];
    snprintf(path, sizeof path, "%s/tokenizer.bin", data ? data : c.data);
    Tokenizer *tok = tok_load(path);
    if (tok->V != c.V)
        core_usage_error("sample: %s has %d tokens but the checkpoint's model has vocab_size %d", path,
                         tok->V, c.V);
    c.ep = 1;  // one process holds every expert, whatever layout saved the checkpoint
    Model *m = model_create(&c, 0, 1);
    CkptShard sh = ckpt_shard_of(m);
    ckpt_load(ckpt, &sh, m, NULL, NULL);

    size_t plen = strlen(prompt);
    uint32_t *ids = core_alloc((plen + 1) * sizeof *ids);
    int n_prompt = (int)tok_encode(tok, (const uint8_t *)prompt, plen, ids);
    if (n_prompt == 0) core_usage_error("sample: --prompt must not be empty");
    int *all = core_alloc((size_t)(n_prompt + n_new) * sizeof(int));
    for (int i = 0; i < n_prompt; i++) all[i] = (int)ids[i];
    RngStream rng = rng_stream(seed, 7);
    sample_generate(m, all, n_prompt, (int)n_new, temperature, (int)top_k, &rng, all);
    size_t cap = (size_t)(n_prompt + n_new) * 64 + 1;
    uint8_t *text = core_alloc(cap);
    uint32_t *u = core_alloc((size_t)(n_prompt + n_new) * sizeof *u);
    for (long i = 0; i < n_prompt + n_new; i++) u[i] = (uint32_t)all[i];
    size_t len = tok_decode(tok, u, (size_t)(n_prompt + n_new), text, cap);
    fwrite(text, 1, len, stdout);
    putchar('\n');
    core_free(u);
    core_free(text);
    core_free(all);
    core_free(ids);
    model_free(m);
    tok_free(tok);
    return 0;
}
