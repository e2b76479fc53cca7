#!/bin/bash
# A diverging run (lr 10, no clipping, beta2 0.5, adam_eps 1e-30: the loss passes 1e5 and turns NaN
# within about 40 steps) through `moelab train`:
#  1. one process stops at the first non-finite step with exit 1 and one message naming the step and
#     the last good checkpoint; every checkpoint left is finite (`ckpt verify` passes), every metrics
#     line is valid JSON without NaN, no temporary file is left, and no sample of garbage is drawn;
#     resumed from that checkpoint it diverges again and names the resumed file good;
#  2. with --nonfinite-skip 3 the run skips three non-finite steps in a row (counted in the metrics),
#     then stops at the fourth the same way; one that may skip them all and so skips to its end ends
#     diverged too (its final validation is NaN), with nothing saved from its skipped steps;
#  2c. weights broken by a step whose loss was finite: a validation that is not finite ends the run
#     before its save, and a checkpoint saved of such weights (no validation at its step) is not the
#     one named good; the one named resumes;
#  3. the pipeline trainer (DualPipeV in one process) and two ranks under mpirun (EP 2) stop alike,
#     every rank with exit 1 and the message;
#  4. steps made non-finite on demand (the test seam MOELAB_TEST_NAN_STEPS, on a run that learns):
#     the count of skips in a row starts again after a finite step, a skipped step is neither saved
#     nor logged, and the checkpoint a skipped step called into question is named good only once a
#     validation of its weights (they are sound here) has cleared it; one process and EP 2 alike.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" --steps 300 --log-every 1 --batch-size 4 --warmup-steps 0 --bias-rate 0.01
      --balance-alpha 0.01 --lr 10 --min-lr 10 --grad-clip 0 --beta2 0.5 --adam-eps 1e-30 --sample-tokens 16)

# check_diverged NAME: the run in $tmp/NAME{,.log,.jsonl} ended as case 1 describes.
check_diverged() {
    local name=$1 log="$tmp/$1.log"
    grep -qE "moelab: error.*training diverged at step [0-9]+: loss [^,]+, gradient norm .*the last good checkpoint is $tmp/$name/step_[0-9]+\.h5" "$log" ||
        { echo "FAIL: $name: no divergence message:"; tail -5 "$log"; exit 1; }
    ! grep -q "sample after training" "$log" || { echo "FAIL: $name sampled after diverging"; exit 1; }
    ls "$tmp/$name" >"$tmp/$name.ls"
    grep -q '^step_[0-9]*\.h5$' "$tmp/$name.ls" || { echo "FAIL: $name saved nothing"; exit 1; }
    ! grep -q tmp- "$tmp/$name.ls" || { echo "FAIL: $name left temporary files:"; cat "$tmp/$name.ls"; exit 1; }
    local last
    last=$(grep -m1 -oE "last good checkpoint is [^ ]+\.h5" "$log" | awk '{print $5}')
    "$moelab" ckpt verify "$last" | grep -q sound || { echo "FAIL: $name: $last does not verify"; exit 1; }
    for f in "$tmp/$name"/step_*.h5; do
        case "$f" in *.part-*) continue ;; esac
        "$moelab" ckpt verify "$f" >/dev/null || { echo "FAIL: $name: $f does not verify"; exit 1; }
    done
    # Python's json accepts NaN and Infinity unless told not to.
    "$py" - "$tmp/$name.jsonl" <<'PY' || { echo "FAIL: $name: invalid metrics"; exit 1; }
import json, sys
def bad(c): raise ValueError("non-finite number " + c)
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no metrics"
for l in lines: json.loads(l, parse_constant=bad)
PY
}

# 1.
rc=0
"$moelab" train "${args[@]}" --out "$tmp/a" --save-every 5 --keep 2 --metrics "$tmp/a.jsonl" >"$tmp/a.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: the diverging run exited $rc, not 1:"; tail -5 "$tmp/a.log"; exit 1; }
check_diverged a
grep -q "a lower --lr or a --grad-clip, or let --nonfinite-skip N skip such steps)$" "$tmp/a.log" ||
    { echo "FAIL: a run without --nonfinite-skip is not told of it:"; tail -1 "$tmp/a.log"; exit 1; }
# Resumed from that checkpoint (without --out), the run diverges again and names the resumed file good:
# its weights were validated at the resume.
last=$(grep -m1 -oE "last good checkpoint is [^ ]+\.h5" "$tmp/a.log" | awk '{print $5}')
rc=0
"$moelab" train "${args[@]}" --resume "$last" >"$tmp/ar.log" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "training diverged at step [0-9]*: .*the last good checkpoint is $last (resume from it" "$tmp/ar.log" ||
    { echo "FAIL: the run resumed from $last (exit $rc) did not name it good:"; tail -3 "$tmp/ar.log"; exit 1; }
echo "ok: one process stops at the first non-finite step"

# 2.
rc=0
"$moelab" train "${args[@]}" --nonfinite-skip 3 --out "$tmp/s" --save-every 5 --metrics "$tmp/s.jsonl" >"$tmp/s.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: the skipping run exited $rc, not 1:"; tail -5 "$tmp/s.log"; exit 1; }
check_diverged s
for k in 1 2 3; do
    grep -q "step skipped ($k in a row, at most 3" "$tmp/s.log" || { echo "FAIL: skip $k not reported"; exit 1; }
done
grep -q "too many in a row" "$tmp/s.log" || { echo "FAIL: no stop after 3 skips"; tail -3 "$tmp/s.log"; exit 1; }
! grep -q "or let --nonfinite-skip N" "$tmp/s.log" || { echo "FAIL: a skipping run is told to skip"; exit 1; }
grep -q '"skipped_steps": 0' "$tmp/s.jsonl" || { echo "FAIL: no skipped_steps counter in the metrics"; exit 1; }
echo "ok: --nonfinite-skip 3 skips three steps in a row, then stops"

# 2b. Skipping to the end: the last applied step left weights that are finite but give nothing but NaN
# (every step after it skipped, the final validation NaN). The run ended with exit 0 and saved them
# as its result; now it is diverged: exit 1, nothing saved from the skipped steps.
rc=0
# (Softmax scores scaled by 1e6 and beta2 0: the second step's update, just under the limit AdamW
# takes, leaves weights whose every forward is NaN.)
"$moelab" train "${args[@]}" --steps 8 --nonfinite-skip 1000 --score softmax --route-scale 1e6 --norm-topk false \
    --beta2 0 --batch-size 2 --out "$tmp/z" --save-every 1 --metrics "$tmp/z.jsonl" >"$tmp/z.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: the run that skipped to its end exited $rc, not 1:"; tail -5 "$tmp/z.log"; exit 1; }
grep -q "step 8: loss .*step skipped" "$tmp/z.log" || { echo "FAIL: the run did not skip to its end:"; tail -3 "$tmp/z.log"; exit 1; }
grep -q "training diverged at step 8: validation loss [-a-z]*nan after the last step (itself skipped)" "$tmp/z.log" ||
    { echo "FAIL: no divergence at the end:"; tail -3 "$tmp/z.log"; exit 1; }
first_skip=$(grep -m1 -oE "step [0-9]+: loss .*step skipped" "$tmp/z.log" | awk '{print $2}' | tr -d :)
for f in "$tmp"/z/step_*.h5; do
    [ -e "$f" ] || continue
    n=${f##*/step_}; n=${n%.h5}
    [ "$n" -lt "$first_skip" ] || { echo "FAIL: $f saved at or after the first skipped step $first_skip"; exit 1; }
done
echo "ok: a run that skips to its end is diverged, and saves nothing from its skipped steps"

# 2c. With beta2 0 the second step's update (its loss finite) leaves weights whose every forward is
# NaN. They were saved and named "the last good checkpoint", whose resume was refused (review,
# 2026-12-06). resumes NAME: the checkpoint the run NAME named good validates at resume.
resumes() {
    local last step rc=0
    last=$(grep -m1 -oE "last good checkpoint is [^ ,]+\.h5" "$tmp/$1.log" | awk '{print $5}')
    [ -n "$last" ] || { echo "FAIL: $1 named no good checkpoint:"; tail -2 "$tmp/$1.log"; exit 1; }
    step=${last##*/step_}
    "$moelab" train "${args[@]}" --beta2 0 --steps "${step%.h5}" --resume "$last" >"$tmp/$1.resume.log" 2>&1 || rc=$?
    [ $rc = 0 ] || { echo "FAIL: $1: $last, named good, did not resume:"; tail -2 "$tmp/$1.resume.log"; exit 1; }
}
rc=0
"$moelab" train "${args[@]}" --beta2 0 --steps 12 --val-every 1 --out "$tmp/v" --save-every 1 >"$tmp/v.log" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "training diverged at step \([0-9]*\): validation loss [-a-z]*nan; nothing was saved" "$tmp/v.log" ||
    { echo "FAIL: a validation that is not finite did not end the run (exit $rc):"; tail -3 "$tmp/v.log"; exit 1; }
n=$(grep -oE "training diverged at step [0-9]+" "$tmp/v.log" | awk '{print $4}')
[ ! -e "$tmp/v/step_$n.h5" ] || { echo "FAIL: the weights of step $n, whose validation is NaN, were saved"; exit 1; }
resumes v
rc=0
"$moelab" train "${args[@]}" --beta2 0 --steps 12 --out "$tmp/w" --save-every 1 >"$tmp/w.log" 2>&1 || rc=$?
[ $rc = 1 ] && grep -qE "the last good checkpoint is $tmp/w/step_[0-9]+\.h5, not the newer $tmp/w/step_[0-9]+\.h5, whose weights gave a loss that is not finite" "$tmp/w.log" ||
    { echo "FAIL: the checkpoint of broken weights was not set aside (exit $rc):"; tail -3 "$tmp/w.log"; exit 1; }
resumes w
# Skipped steps after the save keep its weights in question; --keep 1 has removed the one before.
rc=0
"$moelab" train "${args[@]}" --beta2 0 --steps 12 --nonfinite-skip 3 --keep 1 --out "$tmp/k" --save-every 1 >"$tmp/k.log" 2>&1 || rc=$?
[ $rc = 1 ] && grep -qE "no checkpoint of this run holds good weights: not $tmp/k/step_[0-9]+\.h5, whose weights gave a loss that is not finite" "$tmp/k.log" ||
    { echo "FAIL: a checkpoint of broken weights, the good one removed by --keep 1 (exit $rc):"; tail -3 "$tmp/k.log"; exit 1; }
echo "ok: weights that broke at a finite step are neither saved after a NaN validation nor named good"

# 3.
rc=0
"$moelab" train "${args[@]}" --schedule dualpipev --chunks 2 --out "$tmp/p" --save-every 5 --metrics "$tmp/p.jsonl" \
    >"$tmp/p.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: the pipeline run exited $rc, not 1:"; tail -5 "$tmp/p.log"; exit 1; }
check_diverged p
rc=0
mpi 2 "$moelab" train "${args[@]}" --ep 2 --out "$tmp/e" --save-every 5 --metrics "$tmp/e.jsonl" >"$tmp/e.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: the EP 2 run exited $rc, not 1:"; tail -5 "$tmp/e.log"; exit 1; }
check_diverged e
for r in 0 1; do
    grep -q "error \[rank $r\]: training diverged" "$tmp/e.log" || { echo "FAIL: rank $r did not report"; cat "$tmp/e.log"; exit 1; }
done
echo "ok: the pipeline trainer and EP 2 under mpirun stop alike, on every rank"

# 4. (0-based steps in the seam: NAN_STEPS=1,2 are the steps logged as 2 and 3.)
sane=("${tiny[@]}" --steps 8 --log-every 1 --batch-size 4 --sample-tokens 0)
rc=0
MOELAB_TEST_NAN_STEPS=1,2,4,5 "$moelab" train "${sane[@]}" --nonfinite-skip 2 --out "$tmp/n" --save-every 1 \
    --metrics "$tmp/n.jsonl" >"$tmp/n.log" 2>&1 || rc=$?
[ $rc = 0 ] || { echo "FAIL: a run with two skips in a row, twice, at most 2, exited $rc:"; tail -5 "$tmp/n.log"; exit 1; }
grep -q "warning.*test seam MOELAB_TEST_NAN_STEPS=1,2,4,5 is set" "$tmp/n.log" ||
    { echo "FAIL: the seam was not announced"; head -5 "$tmp/n.log"; exit 1; }
[ "$(grep -oE "step [0-9]: loss nan, .*step skipped \([0-9] in a row, at most 2; [0-9] in all\)" "$tmp/n.log" |
     sed -E 's/step ([0-9]):.*\(([0-9]) in a row.*; ([0-9]) in all\)/\1 \2 \3/' | tr '\n' ' ')" = "2 1 1 3 2 2 5 1 3 6 2 4 " ] ||
    { echo "FAIL: the skips:"; grep skipped "$tmp/n.log"; exit 1; }
[ "$(ls "$tmp/n" | tr '\n' ' ')" = "step_1.h5 step_4.h5 step_7.h5 step_8.h5 " ] ||
    { echo "FAIL: saved other steps than the applied ones:"; ls "$tmp/n"; exit 1; }
[ "$(sed -n 's/^{"step": \([0-9]*\),.*"skipped_steps": \([0-9]*\).*/\1:\2/p' "$tmp/n.jsonl" | tr '\n' ' ')" = "1:0 4:2 7:4 8:4 " ] ||
    { echo "FAIL: the metrics' steps and skip counts:"; cut -c1-60 "$tmp/n.jsonl"; exit 1; }
echo "ok: the skips in a row count again after a finite step; skipped steps are not saved or logged"
# Every rank skips alike, and one line says so (each of them wrote it, and the lines mixed: sweep
# 2026-12-07).
rc=0
MOELAB_TEST_NAN_STEPS=1 mpi 2 "$moelab" train "${sane[@]}" --steps 3 --ep 2 --nonfinite-skip 1 >"$tmp/ns.log" 2>&1 || rc=$?
[ $rc = 0 ] || { echo "FAIL: EP 2 with one skipped step exited $rc:"; tail -5 "$tmp/ns.log"; exit 1; }
[ "$(grep -c "step skipped" "$tmp/ns.log")" = 1 ] || { echo "FAIL: the skip not said once:"; cat "$tmp/ns.log"; exit 1; }
echo "ok: under mpirun one line says that a step was skipped"
# check_named NAME GOOD: the run NAME stopped at its step 6 with exit 1, naming GOOD the last good
# checkpoint without setting a newer one aside.
check_named() {
    grep -qE "training diverged at step 6: loss nan, gradient norm [0-9.e+-]+ \(not finite or too large\)(, too many in a row)?; nothing was saved from it, the last good checkpoint is $tmp/$1/$2 \(resume from it with" "$tmp/$1.log" ||
        { echo "FAIL: $1 did not name $2 good:"; tail -3 "$tmp/$1.log"; exit 1; }
}
# Step 3 (skipped) calls step_2.h5 into question, step 5 step_4.h5; step 6 is one skip too many. The
# weights of step_4.h5 are still the model's: validated at the stop, they clear it.
rc=0
MOELAB_TEST_NAN_STEPS=2,4,5 "$moelab" train "${sane[@]}" --nonfinite-skip 1 --out "$tmp/q" --save-every 2 >"$tmp/q.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: exit $rc, not 1:"; tail -3 "$tmp/q.log"; exit 1; }
check_named q step_4.h5
# Without skips the run stops at step 6 itself: step_4.h5's weights had step 5 applied (finite),
# which cleared them; --keep 1 leaves nothing older.
rc=0
MOELAB_TEST_NAN_STEPS=5 "$moelab" train "${sane[@]}" --out "$tmp/r" --save-every 2 --keep 1 >"$tmp/r.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: exit $rc, not 1:"; tail -3 "$tmp/r.log"; exit 1; }
check_named r step_4.h5
rc=0
mpi 2 -x MOELAB_TEST_NAN_STEPS=2,4,5 "$moelab" train "${sane[@]}" --ep 2 --nonfinite-skip 1 --out "$tmp/t" \
    --save-every 2 >"$tmp/t.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: the EP 2 run exited $rc, not 1:"; tail -5 "$tmp/t.log"; exit 1; }
for r in 0 1; do
    grep -q "error \[rank $r\]: training diverged at step 6: .*the last good checkpoint is $tmp/t/step_4.h5 (resume" "$tmp/t.log" ||
        { echo "FAIL: rank $r did not report step_4.h5 good"; cat "$tmp/t.log"; exit 1; }
done
echo "ok: a checkpoint called into question by a skipped step is named good once its weights validate"
# The seam takes 0-based steps, comma-separated, and nothing else (exit 2 at the first step, which
# applies nothing).
for bad in "" x 1, ,1 -1 1,,2 2x 99999999999; do
    rc=0
    MOELAB_TEST_NAN_STEPS=$bad "$moelab" train "${sane[@]}" >"$tmp/bad.log" 2>&1 || rc=$?
    [ $rc = 2 ] && grep -qF "MOELAB_TEST_NAN_STEPS = '$bad': expected STEP[,STEP...], 0-based steps" "$tmp/bad.log" &&
        ! grep -q "^step  *1/" "$tmp/bad.log" ||
        { echo "FAIL: MOELAB_TEST_NAN_STEPS='$bad' (exit $rc):"; tail -2 "$tmp/bad.log"; exit 1; }
done
echo "ok: a malformed MOELAB_TEST_NAN_STEPS is refused"
