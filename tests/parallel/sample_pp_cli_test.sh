#!/bin/bash
# The samples that `moelab train` prints before and after training where each rank holds stages of
# the model (the tokens drawn through the pipeline, framework/pipe_train.h pipe_sample_generate),
# against `moelab sample --ckpt` with the same settings from a checkpoint of the same weights, which
# draws in one process from the whole model: 1F1B and DualPipeV on 2 ranks, DualPipe PP 2 x EP 2 on
# 4 ranks, DualPipeV in one process (two stages), and 1F1B PP 2 x EP 2 on 4 ranks with EPLB
# (redundant slots, rebalances that copy experts between ranks) and ZeRO-1. After training the
# reference is the run's own final checkpoint; before training the step-0 checkpoint of a
# one-process `--steps 0` run, whose weights every layout starts from (the same seed and router skew).
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, compared
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" "${compared[@]}" --n-layers 4 --sample-tokens 48 --temperature 0.8 --top-k-sample 40)

# sample_of LOG WHEN: the text lines of the sample LOG prints WHEN ("before training", ...).
sample_of() { awk -v h="sample $2 (" 'index($0, h) { f = 1; next } f && /^  \| / { print; next } { f = 0 }' "$1"; }

# ckpt_sample CKPT: `moelab sample` of CKPT with the run's settings (its seed is train's default),
# written as the trainer writes a sample: without the prompt (a newline) and the last newline, each
# line after "  | ", and bytes below 32 but the tab as \xNN.
ckpt_sample() {
    "$moelab" sample --ckpt "$1" --tokens 48 --temperature 0.8 --top-k 40 --seed 1337 |
        perl -0777 -ne 's/\A\n//; s/\n\z//;
                        s/([\x00-\x08\x0a-\x1f])/$1 eq "\n" ? "\n  | " : sprintf("\\x%02x", ord $1)/ge;
                        print "  | $_\n"'
}

# same_sample NAME LOG WHEN CKPT: LOG's sample WHEN is the one `moelab sample` draws from CKPT.
same_sample() {
    local got want
    got=$(sample_of "$2" "$3")
    want=$(ckpt_sample "$4")
    [ -n "$got" ] || { echo "FAIL: $1: no sample $3 in:"; cat "$2"; exit 1; }
    [ "$got" = "$want" ] || { echo "FAIL: $1: sample $3"; echo "$got"; echo "differs from $4's:"; echo "$want"; exit 1; }
    echo "ok: $1: the sample $3 is $4's"
}

"$moelab" train "${args[@]}" --steps 0 --out "$tmp/init" >"$tmp/init.log"
same_sample one-process "$tmp/init.log" "before training" "$tmp/init/step_0.h5"
# The skewed router (the EPLB run's, so that its rebalance moves experts) starts from other weights.
"$moelab" train "${args[@]}" --steps 0 --router-skew -0.1 --out "$tmp/init_skew" >"$tmp/init_skew.log"

# name ranks layout...: a 3-step run of each layout, its samples against the checkpoints.
runs=(
    "1f1b 2 --pp 2 --chunks 4 --batch-size 4"
    "dualpipev 2 --pp 2 --schedule dualpipev --chunks 4 --batch-size 4"
    "dualpipe-ep 4 --pp 2 --ep 2 --schedule dualpipe --chunks 4 --batch-size 2"
    "dualpipev-one 1 --schedule dualpipev --chunks 4 --batch-size 4"
    "1f1b-eplb-zero1 4 --pp 2 --ep 2 --chunks 2 --batch-size 2 --eplb-interval 2 --eplb-redundant 2 --zero 1 --router-skew -0.1"
)
for run in "${runs[@]}"; do
    read -r -a r <<<"$run"
    name=${r[0]} np=${r[1]}
    mpi "$np" "$moelab" train "${args[@]}" --steps 3 "${r[@]:2}" --out "$tmp/$name" >"$tmp/$name.log"
    init="$tmp/init/step_0.h5"
    [[ " ${r[*]} " = *" --router-skew "* ]] && init="$tmp/init_skew/step_0.h5"
    same_sample "$name" "$tmp/$name.log" "before training" "$init"
    same_sample "$name" "$tmp/$name.log" "after training" "$tmp/$name/step_3.h5"
done

# The EPLB run's samples came after experts moved between ranks (replicas in the checkpoint's slots).
grep -Eq "eplb: step 2: rebalanced .* [1-9][0-9]* copied between ranks" "$tmp/1f1b-eplb-zero1.log" ||
    { echo "FAIL: no rebalance in the EPLB run:"; cat "$tmp/1f1b-eplb-zero1.log"; exit 1; }
echo "ok: every pipeline layout samples the text moelab sample draws from its weights"
