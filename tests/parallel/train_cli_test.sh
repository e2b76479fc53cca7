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
[ "$(grep -c '"step"' "$tmp/one.jsonl")" = 3 ] || { echo "FAIL: expected 3 metrics lines"; exit 1; }

for run in ep2 dp4ep2 ep4; do
    close_steps "$tmp/one.jsonl" "$tmp/$run.jsonl" 123
    echo "ok: $run matches the one-process run"
done
