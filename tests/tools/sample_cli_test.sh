#!/bin/bash
# `moelab sample`: trains a tiny model for a few steps with a checkpoint at the end, then samples from
# it: the output starts with the prompt, a fixed seed gives the same text twice, greedy decoding is
# deterministic, --device cpu is the default, the checkpoint's sampling keys are the defaults, and bad
# arguments end with one message and exit code 2.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp
here="$root/tests/tools"
"$moelab" data prepare --input "$here" --vocab 300 --out "$tmp/data" --val-fraction 0.2 >/dev/null
"$moelab" train --data "$tmp/data" --vocab-size 300 --steps 3 --seq-len 32 --batch-size 2 \
    --val-batches 1 --out "$tmp/ckpt" >/dev/null
ckpt="$tmp/ckpt/$(ls "$tmp/ckpt" | grep -E '^step_.*\.h5$' | sort | tail -1)"
[ -f "$ckpt" ] || { echo "no checkpoint written"; exit 1; }

a=$("$moelab" sample --ckpt "$ckpt" --prompt "Once upon" --tokens 20 --seed 5)
b=$("$moelab" sample --ckpt "$ckpt" --prompt "Once upon" --tokens 20 --seed 5)
[ "$a" = "$b" ] || { echo "same seed, different samples"; exit 1; }
c=$("$moelab" sample --ckpt "$ckpt" --prompt "Once upon" --tokens 20 --seed 5 --device cpu)
[ "$a" = "$c" ] || { echo "--device cpu is not the default"; exit 1; }
case "$a" in "Once upon"*) ;; *) echo "sample does not start with the prompt: $a"; exit 1 ;; esac
[ ${#a} -gt 9 ] || { echo "no tokens generated"; exit 1; }
g1=$("$moelab" sample --ckpt "$ckpt" --prompt "x" --tokens 10 --temperature 0 --seed 1)
g2=$("$moelab" sample --ckpt "$ckpt" --prompt "x" --tokens 10 --temperature 0 --seed 2)
[ "$g1" = "$g2" ] || { echo "greedy decoding depends on the seed"; exit 1; }
# The checkpoint's own sampling keys are sample's defaults, as export's generation_config.json says:
# a run trained with --temperature 0 samples greedily (it drew at a fixed 0.8; review, 2026-12-06).
"$moelab" train --data "$tmp/data" --vocab-size 300 --steps 1 --seq-len 32 --batch-size 2 --val-batches 1 \
    --temperature 0 --sample-tokens 0 --out "$tmp/greedy" >/dev/null
d1=$("$moelab" sample --ckpt "$tmp/greedy/step_1.h5" --prompt "x" --tokens 10 --seed 3)
d2=$("$moelab" sample --ckpt "$tmp/greedy/step_1.h5" --prompt "x" --tokens 10 --temperature 0)
d3=$("$moelab" sample --ckpt "$tmp/greedy/step_1.h5" --prompt "x" --tokens 10 --temperature 1 --seed 3)
[ "$d1" = "$d2" ] && [ "$d1" != "$d3" ] || { echo "the checkpoint's temperature 0 is not sample's default"; exit 1; }
# The same for top_k_sample; an explicit --top-k 0 (no cut-off) overrides the stored 1 (it was taken
# for "not given" by a mutant that passed before).
"$moelab" train --data "$tmp/data" --vocab-size 300 --steps 1 --seq-len 32 --batch-size 2 --val-batches 1 \
    --temperature 1 --top_k_sample 1 --sample-tokens 0 --out "$tmp/top1" >/dev/null
k1=$("$moelab" sample --ckpt "$tmp/top1/step_1.h5" --prompt "x" --tokens 40 --seed 3)
k2=$("$moelab" sample --ckpt "$tmp/top1/step_1.h5" --prompt "x" --tokens 40 --seed 4)
k3=$("$moelab" sample --ckpt "$tmp/top1/step_1.h5" --prompt "x" --tokens 40 --seed 3 --top-k 0)
k4=$("$moelab" sample --ckpt "$tmp/top1/step_1.h5" --prompt "x" --tokens 40 --seed 4 --top-k 0)
[ "$k1" = "$k2" ] && [ "$k3" != "$k4" ] || { echo "the stored top_k_sample 1 or an explicit --top-k 0 is not obeyed"; exit 1; }
# "--flag=value" is the same as "--flag value", as in every moelab command.
e=$("$moelab" sample --ckpt="$ckpt" --prompt="Once upon" --tokens=20 --seed=5)
[ "$a" = "$e" ] || { echo "--flag=value differs from --flag value"; exit 1; }

expect_usage() { expect_usage_of sample "$@"; }  # expect_usage REGEX ARGS...
expect_usage "--ckpt PATH is required" --tokens 5
expect_usage "--tokens 0 is too small: at least 1" --ckpt "$ckpt" --tokens 0
# An empty --data read /tokenizer.bin (second fuzzing pass).
expect_usage "sample: --data needs a value" --ckpt "$ckpt" --data ""
# A million tokens ran for hours before printing anything: bounded, with the bound in the message.
expect_usage "--tokens 1048576 is too large: at most 16384" --ckpt "$ckpt" --tokens 1048576
expect_usage "--tokens 'many' is not an integer" --ckpt "$ckpt" --tokens many
expect_usage "--temperature 'hot' is not a finite number" --ckpt "$ckpt" --temperature hot
expect_usage "--temperature 1e308 is too large: at most 100" --ckpt "$ckpt" --temperature 1e308
expect_usage "--seed '-1' is not a non-negative integer" --ckpt "$ckpt" --seed -1
# Negative values are refused, not taken for "the checkpoint's" (what sample keeps them for inside).
expect_usage "--temperature -0.5 is too small: at least 0" --ckpt "$ckpt" --temperature -0.5
expect_usage "--top-k -1 is too small: at least 0" --ckpt "$ckpt" --top-k -1
expect_usage "unknown option '--bogus'" --ckpt "$ckpt" --bogus 1
expect_usage "unknown option '--bogus'" --ckpt "$ckpt" --bogus=1
expect_usage "--tokens needs a value" --ckpt "$ckpt" --tokens
expect_usage "no_such" --ckpt "$tmp/no_such.h5"
expect_usage "sample: --prompt needs a value, not an empty one" --ckpt "$ckpt" --prompt ""
expect_usage "--device tpu: expected cpu, cuda" --ckpt "$ckpt" --device tpu
# A tokenizer of the same size but other merges (the data prepared again on other text) would decode
# the ids into other text without a word: the checkpoint's fingerprint of its tokenizer names it.
mkdir -p "$tmp/other"
for i in $(seq 1 60); do echo "$i pack my box with five dozen liquor jugs, said $((i * 3)) sphinxes."; done > "$tmp/other/b.txt"
"$moelab" data prepare --input "$tmp/other" --vocab 300 --out "$tmp/data_other" --val-fraction 0.2 >/dev/null
expect_usage "sample: .*data_other/tokenizer.bin is not the tokenizer .* was trained with \\(fingerprints" \
    --ckpt "$ckpt" --data "$tmp/data_other"
# A tokenizer of another vocabulary than the model's (token ids past its rows, or rows no id reaches).
"$moelab" data prepare --input "$here" --vocab 256 --out "$tmp/data256" --val-fraction 0.2 >/dev/null
expect_usage "^moelab: error: sample: .*/data256/tokenizer.bin has 256 tokens but the checkpoint's model has vocab_size 300" \
    --ckpt "$ckpt" --data "$tmp/data256"
# A run given a relative --data, sampled from another folder: the message says why the tokenizer is
# missing and how to name it (a new user's run from another folder said only "cannot open").
(cd "$tmp" && "$moelab" train --data data --vocab-size 300 --steps 1 --seq-len 32 --batch-size 2 \
    --val-batches 1 --sample-tokens 0 --out rel >/dev/null)
(cd / && expect_usage "cannot open tokenizer file data/tokenizer.bin.*relative to where it was trained; --data DIR names another" \
    --ckpt "$tmp/rel/step_1.h5")
"$moelab" sample --ckpt "$tmp/rel/step_1.h5" --data "$tmp/data" --tokens 2 > /dev/null
# A --data without a tokenizer is named as the flag's (it said "(--data; --data DIR names another)").
expect_usage "cannot open tokenizer file .*/nowhere/tokenizer.bin: No such file or directory \\(--data\\)$" \
    --ckpt "$ckpt" --data "$tmp/nowhere"
# Weights that overflow (finite, so the checkpoint is sound: here a final norm of 3e38) give logits
# that are not finite: exit 2 naming the checkpoint, not text of NUL bytes drawn from NaN with exit 0
# (review, 2026-12-06).
"${PYTHON:-/usr/bin/python3}" -c "import h5py, shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); f = h5py.File(sys.argv[2], 'r+'); f['model/final_norm'][...] = 3e38" \
    "$ckpt" "$tmp/huge.h5"
expect_usage "^moelab: error: sample: .*/huge.h5: the logits of token 1 are not finite" --ckpt "$tmp/huge.h5" --tokens 5
# sample checks the checkpoint as verify and export do: an object the stored config's model lacks
# (a config edited to tie the embeddings over a file with lm_head gave 20 newlines with exit 0) and
# damage in the optimizer's moments, which sampling never reads (review, 2026-12-06).
"${PYTHON:-/usr/bin/python3}" -c "import h5py, shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); h5py.File(sys.argv[2], 'r+').create_group('optim/m/stray')" \
    "$ckpt" "$tmp/stray.h5"
expect_usage "^moelab: error: checkpoint .*/stray.h5: group /optim/m holds [0-9]+ objects, but the stored config's model has" \
    --ckpt "$tmp/stray.h5" --tokens 5
# Into a pipe whose reader has gone (`| head`): the drawing stops, and the lost output is said with
# exit 1 (SIGPIPE ended it without a word: review, 2026-12-05).
rc=0
closed_stdout "$moelab" sample --ckpt "$ckpt" --tokens 5000 2> "$tmp/pipe.err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "cannot write standard output: Broken pipe" "$tmp/pipe.err" ||
    { echo "sample into a closed pipe: exit $rc"; cat "$tmp/pipe.err"; exit 1; }
"$moelab" sample --help > "$tmp/help"; grep -q "usage: moelab sample" "$tmp/help"
echo "sample_cli_test: ok"
