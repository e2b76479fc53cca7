#!/bin/bash
# Builds the libFuzzer targets of the token-shard, tokenizer-file, config-file and JSON Lines readers with
# clang and runs each for a few seconds (FUZZ_SECONDS, default 5) from small valid seeds. Fails on any crash, leak or
# sanitizer report. The fuzzer's seed is fixed, so that a run explores the same inputs in the same order.
# Runs from the repository root or as a Bazel sh_test (sources in runfiles).
set -euo pipefail

seconds="${FUZZ_SECONDS:-5}"
if [[ -n "${TEST_SRCDIR:-}" ]]; then root="$TEST_SRCDIR/moelab"; else root="$(cd "$(dirname "$0")/../.." && pwd)"; fi
work="${TEST_TMPDIR:-$(mktemp -d)}"
cc="${CLANG:-clang}"
command -v "$cc" >/dev/null || { echo "fuzz_smoke: $cc not found (install Debian's clang)" >&2; exit 1; }

srcs=("$root/data/tokenizer.c" "$root/data/shard.c" "$root/data/jsonl.c" "$root/framework/core/json.c"
      "$root/framework/core/log.c" "$root/framework/core/mem.c" "$root/framework/core/config.c"
      "$root/framework/core/num.c" "$root/framework/core/file.c")
flags=(-g -O1 -std=c11 -D_GNU_SOURCE -I"$root" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)

# Seeds: one valid file of each kind (a 2-token shard of version 1, and of version 2 with a tokenizer
# fingerprint; a tokenizer with merges ab and abc; a config with a comment and keys of every type;
# JSON Lines with a document, a bad line and an empty one).
mkdir -p "$work/corpus_shard" "$work/corpus_tokfile" "$work/corpus_config" "$work/corpus_jsonl"
printf 'MOELTOK1\x01\0\0\0\x2c\x01\0\0\x02\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x05\0\x2b\x01' > "$work/corpus_shard/seed"
printf 'MOELTOK1\x02\0\0\0\x2c\x01\0\0\x02\0\0\0\0\0\0\0\x02\0\0\0\xd4\xc3\xb2\xa1\x05\0\x2b\x01' > "$work/corpus_shard/seed2"
printf 'MOELBPE1\x01\0\0\0\x02\x01\0\0\x61\0\0\0\x62\0\0\0\0\x01\0\0\x63\0\0\0' > "$work/corpus_tokfile/seed"
printf '# seed\nd_model = 32\nlr=0.00123456789  # peak\nseed = 18446744073709551615\nnorm_topk = true\nscore = softmax\ndata = /tmp/x\n' \
    > "$work/corpus_config/seed"
# The config target's dictionary: every key of the table in config.c, and the values' special words.
{ grep -o '^    {"[a-z0-9_]*", "[^"]*", K_' "$root/framework/core/config.c" | cut -d'"' -f2 | sed 's/.*/"&"/'
  printf '"%s"\n' " = " "#" "true" "false" "sigmoid" "softmax" "1f1b" "dualpipev" "cuda" "1e-30" "nan"; } \
    > "$work/config.dict"

printf '{"text": "a\\u00e9\\ud83d\\ude00\\n", "n": [1, -2.5e3, true, null, {}]}\nnot json\n\n{"x": 1}\n' > "$work/corpus_jsonl/seed"

# The config reader prints one message per rejected input: stderr is closed (-close_fd_mask=2);
# libFuzzer and the sanitizers still report on their own copy of it.
for target in shard tokfile config jsonl; do
    "$cc" "${flags[@]}" "$root/tests/data/fuzz_$target.c" "${srcs[@]}" -o "$work/fuzz_$target" -lm
    echo "fuzz_smoke: fuzz_$target for ${seconds}s"
    dict=()
    [[ $target == config ]] && dict=(-dict="$work/config.dict")
    if ! "$work/fuzz_$target" -seed=1 -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 -close_fd_mask=2 \
            "${dict[@]}" -artifact_prefix="$work/crash_$target-" "$work/corpus_$target" > "$work/log_$target" 2>&1; then
        tail -n 40 "$work/log_$target" >&2
        echo "fuzz_smoke: fuzz_$target found a failure (input saved under $work/crash_$target-*)" >&2
        exit 1
    fi
    grep '^Done' "$work/log_$target"
done
echo "fuzz_smoke: ok"
