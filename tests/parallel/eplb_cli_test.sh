#!/bin/bash
# `moelab train` with EPLB under mpirun, end to end: with one process (EP 1), EP 2 on 2 ranks and EP 4
# on 4 ranks, a run that rebalances every 2 steps (with redundant slots) logs the same losses and
# gradient norms as the one-process run without EPLB on the same global batch (within 1e-5
# relative); the log shows each rebalance, the metrics carry expert loads and the EPLB figures, and
# `moelab plot` draws them. A checkpoint saved after a rebalance resumes bit-identically (with its
# placement) in one process, one saved between two rebalances under EP 2 (with the interval's load). Bad EPLB settings end every rank with exit 2 before any step.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" --steps 6 --log-every 5 --batch-size 4 --n-layers 3 --n-dense-layers 1
      --warmup-steps 1 --lr 0.003 --adam-eps 1e-6 --bias-rate 0.01 --balance-alpha 0.01 --router-skew -0.1)
eplb=(--eplb-interval 2)

"$moelab" train "${args[@]}" --grad-accum 4 --metrics "$tmp/one.jsonl" >"$tmp/one.log"
"$moelab" train "${args[@]}" --grad-accum 4 "${eplb[@]}" --eplb-redundant 1 --out "$tmp/ck1" --save-every 4 \
    --metrics "$tmp/ep1.jsonl" >"$tmp/ep1.log"
mpi 2 "$moelab" train "${args[@]}" --grad-accum 2 --ep 2 "${eplb[@]}" --eplb-redundant 2 \
    --out "$tmp/ck2" --save-every 3 --metrics "$tmp/ep2.jsonl" >"$tmp/ep2.log"
# The grid line counts the redundant slots (it said "4 of 8 experts per rank" for 5 slots a rank).
grep -q "grid: .* | 5 slots per rank (8 experts + 2 redundant) |" "$tmp/ep2.log" ||
    { echo "FAIL: the grid line of EP 2 with 2 redundant slots"; grep grid "$tmp/ep2.log"; exit 1; }
mpi 4 "$moelab" train "${args[@]}" --grad-accum 1 --ep 4 "${eplb[@]}" --eplb-redundant 4 \
    --metrics "$tmp/ep4.jsonl" >"$tmp/ep4.log"
# The hierarchical policy: 4 expert groups packed onto 2 nodes of 2 ranks.
mpi 4 "$moelab" train "${args[@]}" --grad-accum 1 --ep 4 "${eplb[@]}" --eplb-redundant 4 --eplb-groups 4 \
    --eplb-nodes 2 --metrics "$tmp/ep4h.jsonl" >"$tmp/ep4h.log"

# Field values of every metrics line: "name": value.
fields() { grep -o "\"$2\": [-0-9.e]*" "$1" | awk '{print $2}'; }
for run in ep1 ep2 ep4 ep4h; do
    # Logged: steps 2, 4, 5 and 6 (every 5th step, the last, and every step that rebalanced).
    [ "$(fields "$tmp/$run.jsonl" step | tr '\n' ' ')" = "2 4 5 6 " ] ||
        { echo "FAIL: $run logged steps $(fields "$tmp/$run.jsonl" step | tr '\n' ' ')"; exit 1; }
    close_steps "$tmp/one.jsonl" "$tmp/$run.jsonl" 56
    for s in 2 4 6; do
        grep -q "eplb: step $s: rebalanced | rank load max/mean before->after per MoE layer: [0-9.]*->[0-9.]* [0-9.]*->[0-9.]* |" \
            "$tmp/$run.log" || { echo "FAIL: $run does not log the rebalance after step $s:"; cat "$tmp/$run.log"; exit 1; }
    done
    [ "$(grep -c '"eplb": {"before": \[' "$tmp/$run.jsonl")" = 3 ] || { echo "FAIL: $run metrics lack the eplb figures"; exit 1; }
    [ "$(grep -c '"expert_load": \[\[' "$tmp/$run.jsonl")" = 4 ] || { echo "FAIL: $run metrics lack expert_load"; exit 1; }
    echo "ok: $run rebalances and matches the one-process run without EPLB"
done
# The expert time line's max/mean over the ranks (the compute imbalance EPLB removes) lies in [1, ranks].
for run in ep2:2 ep4:4; do
    awk -v n="${run#*:}" '/expert time \| ms\/step per rank/ { seen = 1; if ($NF < 1 || $NF > n + 0) bad = 1 }
        END { exit !(seen && !bad) }' "$tmp/${run%:*}.log" ||
        { echo "FAIL: ${run%:*}: expert time max/mean outside [1, ${run#*:}]:"; grep "expert time" "$tmp/${run%:*}.log"; exit 1; }
done
# The commands that load a whole checkpoint in one process take one with redundant slots (one
# process with 1 of them, two ranks with 2). Third fuzzing pass: they built the model with the run's
# slots, which could not take the file's logical experts (exit 1).
for ck in "$tmp/ck1/step_4.h5" "$tmp/ck2/step_3.h5"; do
    "$moelab" ckpt verify "$ck" | grep -q sound || { echo "FAIL: ckpt verify $ck"; exit 1; }
    "$moelab" ckpt inspect "$ck" | grep -q "eplb_redundant = [12]" || { echo "FAIL: ckpt inspect $ck"; exit 1; }
    "$moelab" sample --ckpt "$ck" --tokens 4 >"$tmp/sample.log" || { echo "FAIL: sample $ck"; exit 1; }
    rm -rf "$tmp/hf"
    "$moelab" export --ckpt "$ck" --out "$tmp/hf" >/dev/null && [ -s "$tmp/hf/model.safetensors" ] ||
        { echo "FAIL: export $ck"; exit 1; }
done
echo "ok: checkpoints with redundant slots verify, inspect, sample and export"
# Resume in one process after the rebalance of step 4 (its checkpoint holds the new placement), and
# under EP 2 from step 3, between two rebalances (its checkpoint also holds the tokens of step 3,
# which the rebalance of step 4 plans from): the later steps as in the uninterrupted runs, bit for bit.
"$moelab" train "${args[@]}" --grad-accum 4 "${eplb[@]}" --eplb-redundant 1 --resume "$tmp/ck1/step_4.h5" \
    --metrics "$tmp/r1.jsonl" >"$tmp/r1.log"
mpi 2 "$moelab" train "${args[@]}" --grad-accum 2 --ep 2 "${eplb[@]}" --eplb-redundant 2 \
    --resume "$tmp/ck2/step_3.h5" --out "$tmp/ck2r" --metrics "$tmp/r2.jsonl" >"$tmp/r2.log"
for r in 1 2; do
    at=$((5 - r))
    grep -q "resumed from $tmp/ck$r/step_$at.h5 at step $at" "$tmp/r$r.log" || { echo "FAIL: no resume"; cat "$tmp/r$r.log"; exit 1; }
    for f in loss grad_norm; do
        diff <(grep '"step": [56],' "$tmp/ep$r.jsonl" | fields /dev/stdin $f) <(grep '"step": [56],' "$tmp/r$r.jsonl" | fields /dev/stdin $f) ||
            { echo "FAIL: ep$r resumed at step $at: $f differs"; exit 1; }
    done
done
# The rebalance of step 4 saw the same interval's loads (its figures are theirs) and chose the same placement.
diff <(grep -o '"step": 4,.*' "$tmp/ep2.jsonl" | grep -o '"eplb": {[^}]*}') <(grep -o '"step": 4,.*' "$tmp/r2.jsonl" | grep -o '"eplb": {[^}]*}') ||
    { echo "FAIL: the rebalance after a resume between two rebalances planned from other loads"; exit 1; }
# The printed losses hide the last bits: the final checkpoints (weights, moments, placement) must be equal.
same_checkpoints "$tmp/ck2/step_6.h5" "$tmp/ck2r/step_6.h5"
echo "ok: resume after a rebalance (one process) and between two (EP 2) is bit-identical"
# The checkpoint is logical: one process without EPLB goes on from the EP 2 run's replicated slots.
"$moelab" train "${args[@]}" --grad-accum 4 --resume "$tmp/ck2/step_3.h5" --metrics "$tmp/r0.jsonl" >"$tmp/r0.log"
close_steps "$tmp/one.jsonl" "$tmp/r0.jsonl" 56
echo "ok: a checkpoint of replicated slots resumes in one process without EPLB"
# With EPLB of another slot count the saved placement cannot apply: the log says so (it was dropped
# without a word), and the run goes on.
"$moelab" train "${args[@]}" --grad-accum 4 "${eplb[@]}" --eplb-redundant 1 --resume "$tmp/ck2/step_3.h5" \
    --steps 4 >"$tmp/r3.log"
grep -q "eplb: $tmp/ck2/step_3.h5 placed 10 slots per MoE layer, this run has 9: the experts start in the identity placement" \
    "$tmp/r3.log" || { echo "FAIL: a dropped placement unsaid"; cat "$tmp/r3.log"; exit 1; }

# The plain run's metrics carry expert loads but no EPLB figures.
grep -q '"expert_load": \[\[' "$tmp/one.jsonl" && ! grep -q '"eplb"' "$tmp/one.jsonl" ||
    { echo "FAIL: the run without EPLB has wrong metrics fields"; exit 1; }

# Every rebalance on 4 ranks actually moved experts between them at least once.
grep -q "copied between ranks" "$tmp/ep4.log" && grep -v " 0 copied between ranks" "$tmp/ep4.log" | grep -q "copied between ranks" ||
    { echo "FAIL: no expert moved between ranks:"; grep eplb: "$tmp/ep4.log"; exit 1; }

"$moelab" plot --metrics "$tmp/ep4.jsonl" --out "$tmp/ep4.svg" >"$tmp/plot.log"
grep -q "plot: 4 logged steps x 2 MoE layers x 8 experts, 3 rebalances" "$tmp/plot.log" &&
    grep -q "Tokens per EP rank" "$tmp/ep4.svg" || { echo "FAIL: moelab plot"; cat "$tmp/plot.log"; exit 1; }
echo "ok: moelab plot"

# Bad settings: exit 2 on every rank with the rule, before any step.
set +e
mpi 2 "$moelab" train "${args[@]}" --ep 2 "${eplb[@]}" --eplb-redundant 1 >"$tmp/bad.log" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "eplb_redundant = 9 physical slots per MoE layer do not split evenly over --ep 2 ranks" "$tmp/bad.log" &&
    ! grep -qE "^(\[rank [0-9]+\] )?step +[0-9]+/" "$tmp/bad.log" || { echo "FAIL: bad --eplb-redundant (exit $rc):"; cat "$tmp/bad.log"; exit 1; }
set +e
"$moelab" train "${args[@]}" --eplb-redundant 2 >"$tmp/bad1.log" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "needs --eplb-interval > 0" "$tmp/bad1.log" || { echo "FAIL: redundant without interval"; cat "$tmp/bad1.log"; exit 1; }
set +e
mpi 2 "$moelab" train "${args[@]}" --ep 2 "${eplb[@]}" --eplb-groups 3 >"$tmp/bad2.log" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "error \[rank [01]\]: eplb: rule E % Ng == 0 broken" "$tmp/bad2.log" ||
    { echo "FAIL: --eplb-groups 3 with 8 experts (exit $rc):"; cat "$tmp/bad2.log"; exit 1; }
echo "ok: bad EPLB settings exit 2"
