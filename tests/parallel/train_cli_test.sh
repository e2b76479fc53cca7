#!/bin/bash
# `moelab train` under mpirun against the one-process run: the same global batch (4 micro-batches
# of 4 sequences per step) as 1 process × 4 micro-batches, 2 processes (EP 2) × 2, 4 processes
# (EP 2, so DP 4 > EP) × 1 and 4 processes (EP 4) × 1. The logged losses and gradient norms of every
# step must agree within 1e-5 relative; the log must show the grid.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" "${compared[@]}" --steps 3 --batch-size 4)

"$moelab" train "${args[@]}" --grad-accum 4 --metrics "$tmp/one.jsonl" >"$tmp/one.log"
mpi 2 "$moelab" train "${args[@]}" --grad-accum 2 --ep 2 --metrics "$tmp/ep2.jsonl" >"$tmp/ep2.log"
mpi 4 "$moelab" train "${args[@]}" --grad-accum 1 --ep 2 --metrics "$tmp/dp4ep2.jsonl" >"$tmp/dp4ep2.log"
mpi 4 "$moelab" train "${args[@]}" --grad-accum 1 --ep 4 --metrics "$tmp/ep4.jsonl" >"$tmp/ep4.log"

grep -q "grid: world 4 = pp 1 x dp 4, dp = ep 2 x edp 2 | 4 of 8 experts per rank" "$tmp/dp4ep2.log" ||
    { echo "FAIL: the grid is not in the log:"; cat "$tmp/dp4ep2.log"; exit 1; }
# The model line counts the whole model's parameters, every expert once, whatever the layout; what
# rank 0 holds of them follows in parentheses.
params() { grep -o '| [0-9.]*M parameters' "$1" | head -1; }
for run in ep2 dp4ep2 ep4; do
    [ -n "$(params "$tmp/one.log")" ] && [ "$(params "$tmp/$run.log")" = "$(params "$tmp/one.log")" ] ||
        { echo "FAIL: $run counts $(params "$tmp/$run.log"), the one-process run $(params "$tmp/one.log")"; exit 1; }
done
grep -qE "M parameters \([0-9.]+M on rank 0\)$" "$tmp/ep4.log" ||
    { echo "FAIL: no count of rank 0's parameters in the EP 4 log:"; grep "model:" "$tmp/ep4.log"; exit 1; }
[ "$(grep -c '"step"' "$tmp/one.jsonl")" = 3 ] || { echo "FAIL: expected 3 metrics lines"; exit 1; }

# The validation loss at the end too: every rank evaluates the same sequences (each DP rank read its
# own share, and the loss depended on the layout: review, 2026-12-05).
val() { grep -o '"val_loss": [-0-9.e]*' "$1" | tail -1 | awk '{print $2}'; }
for run in ep2 dp4ep2 ep4; do
    close_steps "$tmp/one.jsonl" "$tmp/$run.jsonl" 123
    awk -v a="$(val "$tmp/one.jsonl")" -v b="$(val "$tmp/$run.jsonl")" -v r=$run 'BEGIN { d = a - b
        if (a == "" || b == "" || (d < 0 ? -d : d) > 1e-5 * a) { print "FAIL: " r ": val_loss " b " vs " a; exit 1 } }'
    echo "ok: $run matches the one-process run"
done

# Ranks on one host take their share of its cores where neither --threads nor OMP_NUM_THREADS chose a
# number (a new user's README run: OpenMP's default gave each of 4 ranks a thread per core of 2,
# six times slower). --bind-to none: no rank's affinity parts the cores for it.
online=$(getconf _NPROCESSORS_ONLN) avail=$(nproc)
share=$((online / 4 > 1 ? online / 4 : 1))
share=$((share < avail ? share : avail))
env -u OMP_NUM_THREADS timeout 300 mpirun --allow-run-as-root --oversubscribe --bind-to none -x TEST_TMPDIR -np 4 \
    "$moelab" train "${args[@]}" --steps 1 --ep 2 >"$tmp/share.log"
grep -q "threads: $share OpenMP threads\? a rank (4 ranks share this host's $online cores" "$tmp/share.log" ||
    { echo "FAIL: no share of the cores (expected $share):"; cat "$tmp/share.log"; exit 1; }
for given in "--threads 1" ""; do  # chosen by the key, or by OMP_NUM_THREADS (mpi exports 1)
    mpi 4 "$moelab" train "${args[@]}" --steps 1 --ep 2 $given >"$tmp/given.log"
    ! grep -q "threads:" "$tmp/given.log" || { echo "FAIL: a chosen thread count was replaced:"; cat "$tmp/given.log"; exit 1; }
done
echo "ok: ranks share the host's cores"
