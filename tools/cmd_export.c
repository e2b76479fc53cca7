// `moelab export`: a checkpoint as a Hugging Face model folder (tools/export/hf_export.h does the
// work; this file only parses flags).
#include <stdio.h>
#include <string.h>

#include "framework/core/check.h"
#include "tools/commands.h"
#include "tools/export/hf_export.h"

static void export_help(void) {
    printf("usage: moelab export --ckpt PATH --out DIR [--dtype fp32|bf16] [--data DIR] [--force]\n\n"
           "Writes the model of a checkpoint (a single file or an index with its parts, saved by any\n"
           "parallel layout or EPLB placement) and its tokenizer as a Hugging Face model folder:\n"
           "  model.safetensors       the weights (--dtype: fp32, the default, or bf16)\n"
           "  config.json, generation_config.json\n"
           "  modeling_moelab.py      the model for transformers (trust_remote_code=True)\n"
           "  tokenizer.json, tokenizer_config.json   encodes exactly as moelab's tokenizer\n\n"
           "In Python (with transformers):\n"
           "  from transformers import AutoModelForCausalLM, AutoTokenizer\n"
           "  model = AutoModelForCausalLM.from_pretrained(\"DIR\", trust_remote_code=True)\n"
           "  tok = AutoTokenizer.from_pretrained(\"DIR\")\n\n"
           "The tokenizer is DIR/tokenizer.bin of --data (default: the data directory the checkpoint\n"
           "was trained on). The folder is written under a temporary name and renamed at the end; an\n"
           "existing non-empty --out is refused unless --force, which replaces only an earlier export.\n"
           "A damaged checkpoint, one with a missing part or non-finite weights, or a tokenizer of\n"
           "another size is refused (exit 2) before anything is written.\n"
           "Layout and tensor names: docs/export.md.\n");
}

int cmd_export(int argc, char **argv) {
    HfExportOptions o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            export_help();
            return 0;
        }
        if (!strcmp(a, "--force")) {
            o.force = 1;
            continue;
        }
        if (!strncmp(a, "--force=", 8))
            return core_usage_report("export: --force takes no value (see `moelab export --help`)");
        // "--flag value" and "--flag=value".
        static const char *const flags[] = {"--ckpt", "--out", "--data", "--dtype", NULL};
        const size_t n = cmd_flag_len(a);
        if (!cmd_flag_in(a, n, flags))
            return core_usage_report("export: unknown option '%.*s' (see `moelab export --help`)", (int)n, a);
        const char *v = cmd_flag_value(argc, argv, &i);
        if (!v || !*v)
            return core_usage_report("export: %.*s needs a value%s (see `moelab export --help`)", (int)n, a,
                                     v ? ", not an empty one" : "");
        if (cmd_flag_is(a, n, "--ckpt")) o.ckpt = v;
        else if (cmd_flag_is(a, n, "--out")) o.out_dir = v;
        else if (cmd_flag_is(a, n, "--data")) o.data_dir = v;
        else {  // --dtype
            if (strcmp(v, "fp32") && strcmp(v, "bf16"))
                return core_usage_report("export: --dtype '%s': expected fp32 or bf16", v);
            o.bf16 = !strcmp(v, "bf16");
        }
    }
    if (!o.ckpt) return core_usage_report("export: --ckpt PATH is required (see `moelab export --help`)");
    if (!o.out_dir || !*o.out_dir) return core_usage_report("export: --out DIR is required (see `moelab export --help`)");
    hf_export(&o);
    return 0;
}
