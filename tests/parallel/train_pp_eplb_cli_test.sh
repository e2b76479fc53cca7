#!/bin/bash
# EPLB in a pipeline, end to end: `moelab train --pp 2 --ep 2 --eplb-interval 2 --eplb-redundant 2`
# on 4 ranks (each stage balances its own MoE layers over its EP group) logs the same losses,
# cross-entropies and gradient norms as the same run without EPLB within 1e-5 relative, and its final
# checkpoint's logical weights and AdamW moments equal that run's within 1e-5 relative. The checkpoint
# holds the placement of both stages' layers, and a resume from the checkpoint after the first
# rebalance ends bit-identical to the uninterrupted run. The metrics carry the EPLB figures of every
# stage's MoE layers (`moelab plot` draws them). DualPipe (two copies of each stage, each
# balanced in its own EP group) matches too over 6 steps, and resumed between rebalances it ends
# bit-identical, two steps past the next rebalance.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
# Layers [0, 2) and [2, 4): each stage holds MoE layers (layer 0 is dense).
args=("${tiny[@]}" --steps 4 --log-every 1 --batch-size 2 --n-layers 4 --n-dense-layers 1
      --warmup-steps 1 --lr 0.003 --adam-eps 1e-6 --bias-rate 0.01 --balance-alpha 0.01 --router-skew -0.1
      --pp 2 --ep 2 --chunks 2 --save-every 2)
eplb=(--eplb-interval 2 --eplb-redundant 2)

mpi 4 "$moelab" train "${args[@]}" --out "$tmp/plain" --metrics "$tmp/plain.jsonl" >"$tmp/plain.log"
mpi 4 "$moelab" train "${args[@]}" "${eplb[@]}" --save-every 1 --out "$tmp/eplb" --metrics "$tmp/eplb.jsonl" \
    >"$tmp/eplb.log"
for s in 2 4; do
    # One line per rebalance, with the MoE layers of both stages: each a max/mean of at least 1 (a
    # layer whose stage's figures did not reach rank 0 reads 0).
    v='[1-9][0-9.]*->[1-9][0-9.]*'
    grep -q "eplb: step $s: rebalanced | rank load max/mean before->after per MoE layer: $v $v $v |" \
        "$tmp/eplb.log" ||
        { echo "FAIL: no rebalance logged after step $s:"; cat "$tmp/eplb.log"; exit 1; }
done
# The metrics' EPLB figures cover the MoE layers of both stages (1 on the first, 2 and 3 on the second).
[ "$(grep -c '"eplb": {"before": \[[1-9][0-9.]*, [1-9][0-9.]*, [1-9][0-9.]*\], "after": \[[1-9][0-9.]*, [1-9][0-9.]*, [1-9][0-9.]*\]' "$tmp/eplb.jsonl")" = 2 ] &&
    [ "$(grep -c '"rank_imbalance": \[[0-9.]*, [0-9.]*, [0-9.]*\]' "$tmp/eplb.jsonl")" = 4 ] ||
    { echo "FAIL: the metrics' eplb figures do not cover every stage's MoE layers:"; cat "$tmp/eplb.jsonl"; exit 1; }
"$moelab" plot --metrics "$tmp/eplb.jsonl" --out "$tmp/eplb.svg" >"$tmp/plot.log"
grep -q "plot: 4 logged steps x 3 MoE layers x 8 experts, 2 rebalances" "$tmp/plot.log" ||
    { echo "FAIL: moelab plot of the pipeline's metrics:"; cat "$tmp/plot.log"; exit 1; }
close_steps "$tmp/plain.jsonl" "$tmp/eplb.jsonl" 1234

same_checkpoints "$tmp/plain/step_4.h5" "$tmp/eplb/step_4.h5" 1e-5

# The saved placement covers the MoE layers of both stages (every expert has a slot in each).
"$py" - "$tmp/eplb/step_4.h5" <<'PY'
import sys, h5py, numpy as np
p = h5py.File(sys.argv[1], "r")["eplb/phy2log"][...]
assert p.shape == (4, 10), p.shape
assert (p[0] == -1).all(), p[0]
for l in (1, 2, 3):
    assert sorted(set(p[l])) == list(range(8)), (l, p[l])
PY
echo "ok: pipeline EPLB matches the run without EPLB; the checkpoint holds every stage's placement"

# Resume between the rebalances of steps 2 and 4, which plans from the tokens of step 3 too (the
# checkpoint holds them for the MoE layers of both stages): step 4 as in the uninterrupted run, bit
# for bit, its placement included.
mpi 4 "$moelab" train "${args[@]}" "${eplb[@]}" --resume "$tmp/eplb/step_3.h5" --out "$tmp/resumed" \
    --metrics "$tmp/resumed.jsonl" >"$tmp/resumed.log"
same_checkpoints "$tmp/eplb/step_4.h5" "$tmp/resumed/step_4.h5"
"$py" - "$tmp/eplb/step_4.h5" "$tmp/resumed/step_4.h5" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:])
assert np.array_equal(a["eplb/phy2log"][...], b["eplb/phy2log"][...])
PY
echo "ok: a pipeline EPLB run resumes bit-identically"

# DualPipe: both copies of each stage plan alike from the summed counts. Six steps, so that two use
# the placement of the rebalance after step 4.
dual=(--schedule dualpipe --chunks 4 --save-every 0 --steps 6)
mpi 4 "$moelab" train "${args[@]}" "${dual[@]}" --out "$tmp/dplain" --metrics "$tmp/dplain.jsonl" >"$tmp/dplain.log"
mpi 4 "$moelab" train "${args[@]}" "${dual[@]}" "${eplb[@]}" --save-every 1 --out "$tmp/deplb" --metrics "$tmp/deplb.jsonl" \
    >"$tmp/deplb.log"
close_steps "$tmp/dplain.jsonl" "$tmp/deplb.jsonl" 123456
same_checkpoints "$tmp/dplain/step_6.h5" "$tmp/deplb/step_6.h5" 1e-5
echo "ok: DualPipe with EPLB matches the run without EPLB"
# Resumed between its rebalances (step 3), a DualPipe EPLB run ends as the uninterrupted run, bit for
# bit: both copies of a stage must plan the rebalance after step 4 from the tokens of steps 3 and 4
# (a copy given step 4's alone placed its experts otherwise, and the copies' gradient sums of
# steps 5 and 6 added up other experts' rows).
mpi 4 "$moelab" train "${args[@]}" "${dual[@]}" "${eplb[@]}" --save-every 1 --resume "$tmp/deplb/step_3.h5" \
    --out "$tmp/dresumed" >"$tmp/dresumed.log"
same_checkpoints "$tmp/deplb/step_6.h5" "$tmp/dresumed/step_6.h5"
echo "ok: a DualPipe EPLB run resumes bit-identically"
