#!/bin/bash
# `moelab train --ep-chunks C` (token chunks of the EP MoE layer, docs/parallel.md) end to end:
#  1. --help lists the key; 0, 9 and more chunks than a micro-batch's tokens end every rank with
#     exit 2 and one message naming the problem;
#  2. EP 2 on 2 ranks with 2, 3 and 8 (the most) chunks, and EP 4 on 4 ranks with 3 chunks, train
#     as with one chunk and as the one-process run of the same global batch: losses, cross-entropy
#     and gradient norms of every step within 1e-5 (the expert weight gradients add up chunk by
#     chunk, so the bits may differ); the metrics' first line records ep_chunks;
#  3. the sample after training (forward passes of 1, 2, ... tokens, fewer than the chunks) runs
#     with EP 2 and 3 chunks: empty chunks, never a rank that skips an exchange.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" "${compared[@]}" --steps 3 --batch-size 4)

# 1.
"$moelab" train --help > "$tmp/help"
grep -Eq -- "--ep_chunks +1 +token chunks per EP MoE layer" "$tmp/help" ||
    { echo "FAIL: --help has no ep_chunks"; exit 1; }
expect_exit2 zero "ep_chunks = 0 is too small: at least 1" 2 "${args[@]}" --ep 2 --ep-chunks 0
expect_exit2 nine "ep_chunks = 9 is too large: at most 8" 2 "${args[@]}" --ep 2 --ep-chunks 9
expect_exit2 more_than_tokens "ep_chunks \(5\) must not exceed the tokens of a micro-batch, batch_size \* seq_len \(4\)" \
    2 "${args[@]}" --ep 2 --ep-chunks 5 --batch-size 1 --seq-len 4

# 2.
"$moelab" train "${args[@]}" --grad-accum 4 --metrics "$tmp/one.jsonl" >"$tmp/one.log"
for c in 1 2 3 8; do  # 8: the most the key allows (the dispatcher once took one fewer: mutation, 2026-12-07)
    mpi 2 "$moelab" train "${args[@]}" --grad-accum 2 --ep 2 --ep-chunks $c --metrics "$tmp/ep2c$c.jsonl" \
        >"$tmp/ep2c$c.log" 2>&1
done
mpi 4 "$moelab" train "${args[@]}" --grad-accum 1 --ep 4 --ep-chunks 3 --metrics "$tmp/ep4c3.jsonl" >"$tmp/ep4c3.log" 2>&1
head -1 "$tmp/ep2c3.jsonl" | grep -q '"ep_chunks": 3' || { echo "FAIL: no ep_chunks 3 in the metrics' first line"; exit 1; }
# The chunks change something here: no warning that they do not (it is for --ep 1, below).
! grep -q "changes nothing" "$tmp/ep2c3.log" "$tmp/ep4c3.log" || { echo "FAIL: EP runs warned that the chunks change nothing"; exit 1; }
# At --ep 1 under mpirun (DP 2) one line says that they do not.
mpi 2 "$moelab" train "${args[@]}" --ep-chunks 2 --steps 1 >"$tmp/dp2c2.log" 2>&1
[ "$(grep -c "ep-chunks 2 changes nothing with --ep 1" "$tmp/dp2c2.log")" = 1 ] ||
    { echo "FAIL: DP 2 with --ep-chunks 2 did not warn once:"; cat "$tmp/dp2c2.log"; exit 1; }
for run in ep2c2 ep2c3 ep2c8; do
    close_steps "$tmp/ep2c1.jsonl" "$tmp/$run.jsonl" 123
    echo "ok: $run matches one chunk"
done
for run in ep2c3 ep4c3; do
    close_steps "$tmp/one.jsonl" "$tmp/$run.jsonl" 123
    echo "ok: $run matches the one-process run"
done

# 3.
mpi 2 "$moelab" train "${args[@]}" --steps 1 --grad-accum 2 --ep 2 --ep-chunks 3 --sample-tokens 4 >"$tmp/sample.log" 2>&1 ||
    { echo "FAIL: sampling with 3 chunks:"; cat "$tmp/sample.log"; exit 1; }
grep -q "sample after training (4 tokens" "$tmp/sample.log" || { echo "FAIL: no sample in:"; cat "$tmp/sample.log"; exit 1; }
echo "ok: the sample runs with empty chunks"
