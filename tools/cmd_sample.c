// `moelab sample`: loads a checkpoint and its tokenizer, and generates text from a prompt.
#include <stdio.h>
#include <string.h>

#include "checkpoints/ckpt.h"
#include "data/tokenizer.h"
#include "framework/backend.h"
#include "framework/core/check.h"
#include "framework/core/config.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/num.h"
#include "framework/core/rng.h"
#include "framework/model.h"
#include "framework/sample.h"
#include "tools/ckpt_model.h"
#include "tools/commands.h"

static void sample_help(void) {
    printf("usage: moelab sample --ckpt PATH [--prompt TEXT] [--tokens N] [--temperature T]\n"
           "                     [--top-k K] [--seed S] [--data DIR] [--device cpu|cuda|cuda-fp32]\n\n"
           "Generates N tokens (default 200, at most 16384) after the prompt (default: a newline)\n"
           "from the model in the checkpoint (checked first as `moelab ckpt verify` checks it),\n"
           "printing the text as it goes. temperature 0 is greedy;\n"
           "top-k 0 samples from the whole vocabulary; both default to the checkpoint's training\n"
           "config (its temperature and top_k_sample: 0.8 and 40 unless set); --seed picks the\n"
           "random numbers (default 1: the same text every time). The tokenizer is\n"
           "DIR/tokenizer.bin, where DIR defaults to the data directory the checkpoint was trained on.\n"
           "--device runs the model on the CPU (default) or on GPU 0, in bf16 (cuda) or fp32.\n");
}

// At most this many tokens a run: each one is a forward of the model's whole window, and 2^14 tokens
// of the tiny config already take a few minutes on a CPU (the text streams out as it is drawn).
enum { MAX_TOKENS = 1 << 14 };

static long long int_flag(const char *flag, const char *v, long long lo, long long hi) {
    char err[NUM_ERR_LEN];
    long long x;
    if (num_parse_int(flag, v, lo, hi, &x, err)) core_usage_error("sample: %s", err);
    return x;
}

// Prints the text of ids (n), flushed: a long sample shows its progress token by token.
static void print_tokens(const Tokenizer *tok, const int *ids, int n) {
    size_t len;
    uint8_t *text = tok_decode_ints(tok, ids, (size_t)n, &len);
    fwrite(text, 1, len, stdout);
    core_stdout_flush();
    core_free(text);
}

int cmd_sample(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = "\n", *data = NULL, *device = "cpu";
    int n_new = 200, top_k = -1;  // -1: the checkpoint's
    unsigned long long seed = 1;
    float temperature = -1.0f;    // < 0: the checkpoint's
    char err[NUM_ERR_LEN];
    // "--flag value" and "--flag=value".
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { sample_help(); return 0; }
        static const char *const flags[] = {"--ckpt", "--prompt", "--data", "--device", "--tokens", "--top-k",
                                            "--seed", "--temperature", NULL};
        const size_t n = cmd_flag_len(a);
        if (!cmd_flag_in(a, n, flags))
            core_usage_error("sample: unknown option '%.*s' (see `moelab sample --help`)", (int)n, a);
        const char *v = cmd_flag_value(argc, argv, &i);
        // No flag takes "" (`--ckpt=` was "checkpoint : No such file or directory").
        if (!v || !*v)
            core_usage_error("sample: %.*s needs a value%s (see `moelab sample --help`)", (int)n, a,
                             v ? ", not an empty one" : "");
        if (cmd_flag_is(a, n, "--ckpt")) ckpt = v;
        else if (cmd_flag_is(a, n, "--prompt")) prompt = v;
        else if (cmd_flag_is(a, n, "--data")) data = v;
        else if (cmd_flag_is(a, n, "--device")) device = v;
        else if (cmd_flag_is(a, n, "--tokens")) n_new = (int)int_flag("--tokens", v, 1, MAX_TOKENS);
        else if (cmd_flag_is(a, n, "--top-k")) top_k = (int)int_flag("--top-k", v, 0, 1 << 24);
        else if (cmd_flag_is(a, n, "--seed")) {
            if (num_parse_u64("--seed", v, UINT64_MAX, &seed, err)) core_usage_error("sample: %s", err);
        } else {  // --temperature
            double x;
            if (num_parse_real("--temperature", v, 0, 100, &x, err)) core_usage_error("sample: %s", err);
            temperature = (float)x;
        }
    }
    if (!ckpt) core_usage_error("sample: --ckpt PATH is required (see `moelab sample --help`)");
    const LayerOps *ops = backend_ops(device);  // a bad name is a usage error before any reading
    MoeConfig c;
    ckpt_read_config_whole(ckpt, &c);
    // The run's own sampling keys, as export's generation_config.json writes them (sample drew at a
    // fixed 0.8 and 40 where the exported model decoded greedily: review, 2026-12-06).
    if (temperature < 0) temperature = c.temperature;
    if (top_k < 0) top_k = c.top_k_sample;
    char path[2 * CONFIG_STR];
    Tokenizer *tok = ckpt_tokenizer_load("sample", ckpt, &c, data, path, sizeof path);
    Model *m = ckpt_model_load(ckpt, &c, NULL);
    if (ops != &layer_ops_cpu) {
        backend_configure(&c, 1);
        model_to_device(m, ops);
    }

    size_t plen = strlen(prompt);
    uint32_t *ids = core_alloc((plen + 1) * sizeof *ids);
    int n_prompt = (int)tok_encode(tok, (const uint8_t *)prompt, plen, ids);
    CHECK(n_prompt > 0, "sample: a prompt of %zu bytes encoded to no token", plen);  // "" is refused above
    int *all = core_alloc((size_t)(n_prompt + n_new) * sizeof(int));
    for (int i = 0; i < n_prompt; i++) all[i] = (int)ids[i];
    print_tokens(tok, all, n_prompt);
    // One token per call, printed as soon as it is drawn (the same draws as one call for all).
    RngStream rng = rng_stream(seed, 7);
    // A reader that went away (`| head`) ends the drawing: main reports the lost output.
    for (int len = n_prompt; len < n_prompt + n_new && !ferror(stdout); len++) {
        if (!sample_generate(m, all, len, 1, temperature, top_k, &rng, all)) {
            putchar('\n');
            core_usage_error("sample: %s: the logits of token %d are not finite (NaN or infinite): its weights "
                             "overflow the model's arithmetic", ckpt, len - n_prompt + 1);
        }
        print_tokens(tok, all + len, 1);
    }
    putchar('\n');
    core_free(all);
    core_free(ids);
    model_free(m);
    tok_free(tok);
    return 0;
}
