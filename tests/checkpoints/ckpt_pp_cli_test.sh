#!/bin/bash
# Checkpoints of pipeline-parallel runs through `moelab train` (issue 7's resharding test), on a tiny
# 3-layer model (dense layer 0, MoE layers 1 and 2) and the fixed generated corpus of
# tests/util/cli_lib.sh. Every run takes the same 16 sequences per step (DP × micro-batches × batch), so all of
# them continue the same run:
#  1. EP 2 × PP 2 with 1F1B (4 ranks) trains 6 steps and saves at steps 3 and 6 (4 parts + index);
#  2. resuming its step 3 (a) under EP 4 without a pipeline and (b) in one process gives steps 4-6
#     within 1e-5 of it, and (c) in the same layout bit for bit (logged values and the final
#     checkpoint's every tensor);
#  3. the one-process run's step-4 checkpoint resumes under DualPipe EP 2 × PP 2 (each rank loads
#     both copies of its stages), which saves at step 5 (only one copy of each stage); that resumes
#     in the same layout bit for bit, and as DualPipeV in one process (two stages, two parts) within
#     1e-5;
#  4. `moelab ckpt verify` accepts the pipeline checkpoints, and their expert counts are the whole
#     model's (every MoE layer counts each token K times, DualPipe's copies once);
#  and run 1 prints its samples before and after training, drawn through the pipeline.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" "${compared[@]}" --steps 6 --n-layers 3)
pp=(--pp 2 --ep 2 --chunks 2 --batch-size 4)                           # 1F1B, DP 2 × 2 × 4
dualpipe=(--pp 2 --ep 2 --schedule dualpipe --chunks 4 --batch-size 2)  # DP 2 × 4 × 2

# 1.
mpi 4 "$moelab" train "${args[@]}" "${pp[@]}" --out "$tmp/p" --save-every 3 --metrics "$tmp/p.jsonl" \
    --sample-tokens 4 >"$tmp/p.log"
grep -q "layers per stage: \[0,2) \[2,3)" "$tmp/p.log" || { echo "FAIL: unexpected stages:"; cat "$tmp/p.log"; exit 1; }
# The stages sample together through the pipeline (tests/parallel/sample_pp_cli_test.sh checks the text).
grep -q "sample before training (4 tokens" "$tmp/p.log" && grep -q "sample after training (4 tokens" "$tmp/p.log" ||
    { echo "FAIL: no samples:"; cat "$tmp/p.log"; exit 1; }
for k in 0 1 2 3; do
    [ -f "$tmp/p/step_3.h5.part-$k-of-4" ] || { echo "FAIL: no part $k:"; ls "$tmp/p"; exit 1; }
done

# A part of the second stage missing: exit 2 (ranks 2 and 3 read it), and rank 0 (whose stage is
# sound) leaves an earlier metrics file at the --metrics path as it was (it had cut it while the
# others still read). The LD_PRELOAD seam makes ranks 2 and 3 open the checkpoint a second late, so
# rank 0 would always be first.
mkdir "$tmp/gone"
cp "$tmp/p/step_3.h5" "$tmp/p/step_3.h5.part-"[012]-of-4 "$tmp/gone/"
echo '{"step": 1, "loss": 2.5}' > "$tmp/kept.jsonl"
# (mpirun hands its environment to the ranks it starts on this machine; under ASan the seam loads
# before the sanitizer's runtime, which it must be told to accept.)
LD_PRELOAD="$root/tests/checkpoints/slow_open.so" SLOW_OPEN_RANKS=2,3 SLOW_OPEN_MATCH="gone/step_3.h5" \
    ASAN_OPTIONS="verify_asan_link_order=0:detect_leaks=0" \
    expect_exit2 part_gone "step_3.h5.part-3-of-4" 4 "${args[@]}" "${pp[@]}" --resume "$tmp/gone/step_3.h5" \
    --metrics "$tmp/kept.jsonl"
[ "$(cat "$tmp/kept.jsonl")" = '{"step": 1, "loss": 2.5}' ] ||
    { echo "FAIL: a resume refused on ranks 2 and 3 changed --metrics:"; cat "$tmp/kept.jsonl"; exit 1; }

# 2.
mpi 4 "$moelab" train "${args[@]}" --ep 4 --batch-size 4 --resume "$tmp/p/step_3.h5" --metrics "$tmp/a.jsonl" >"$tmp/a.log"
"$moelab" train "${args[@]}" --grad-accum 4 --batch-size 4 --resume "$tmp/p/step_3.h5" --out "$tmp/b" --save-every 4 \
    --metrics "$tmp/b.jsonl" >"$tmp/b.log"
mpi 4 "$moelab" train "${args[@]}" "${pp[@]}" --resume "$tmp/p/step_3.h5" --out "$tmp/c" --save-every 6 \
    --metrics "$tmp/c.jsonl" >"$tmp/c.log"
grep -q "resumed from $tmp/p/step_3.h5 at step 3" "$tmp/a.log" || { echo "FAIL: no resume line"; cat "$tmp/a.log"; exit 1; }
close_steps "$tmp/p.jsonl" "$tmp/a.jsonl" 456
close_steps "$tmp/p.jsonl" "$tmp/b.jsonl" 456
same_steps "$tmp/p.jsonl" "$tmp/c.jsonl" 456
same_checkpoints "$tmp/p/step_6.h5" "$tmp/c/step_6.h5"
echo "ok: EP 2 x PP 2 (1F1B) -> EP 4, one process and the same layout continue the run"

# 3.
mpi 4 "$moelab" train "${args[@]}" "${dualpipe[@]}" --resume "$tmp/b/step_4.h5" --out "$tmp/q" --save-every 5 \
    --metrics "$tmp/q.jsonl" >"$tmp/q.log" 2>"$tmp/q.err"
# The batch's other split is said once (rank 0), not by every rank for each copy of its stages.
[ "$(grep -c "settings differ from the saved run" "$tmp/q.err")" = 1 ] ||
    { echo "FAIL: the changed settings not said once:"; cat "$tmp/q.err"; exit 1; }
mpi 4 "$moelab" train "${args[@]}" "${dualpipe[@]}" --resume "$tmp/q/step_5.h5" --out "$tmp/r" \
    --metrics "$tmp/r.jsonl" >"$tmp/r.log"
"$moelab" train "${args[@]}" --schedule dualpipev --chunks 4 --batch-size 4 --resume "$tmp/q/step_5.h5" --out "$tmp/v" \
    --metrics "$tmp/v.jsonl" >"$tmp/v.log"
[ -f "$tmp/q/step_5.h5.part-3-of-4" ] && [ -f "$tmp/v/step_6.h5.part-1-of-2" ] ||
    { echo "FAIL: DualPipe or DualPipeV parts missing:"; ls "$tmp/q" "$tmp/v"; exit 1; }
close_steps "$tmp/p.jsonl" "$tmp/q.jsonl" 56
same_steps "$tmp/q.jsonl" "$tmp/r.jsonl" 6
same_checkpoints "$tmp/q/step_6.h5" "$tmp/r/step_6.h5"
close_steps "$tmp/p.jsonl" "$tmp/v.jsonl" 6
echo "ok: one process -> DualPipe -> DualPipe and DualPipeV continue the run"

# 4.
for p in p/step_3.h5 p/step_6.h5 q/step_5.h5 v/step_6.h5; do
    "$moelab" ckpt verify "$tmp/$p" | grep -q "sound" || { echo "FAIL: verify $p"; exit 1; }
    "$py" - "$tmp/$p" <<'PY'
import sys, h5py
c = h5py.File(sys.argv[1], "r")["eplb/expert_counts"][...]
# 16 sequences of 16 tokens, each routed to K = 2 experts in MoE layers 1 and 2; layer 0 is dense.
assert c[0].sum() == 0 and c[1].sum() == 512 and c[2].sum() == 512, (sys.argv[1], c.tolist())
PY
done
echo "ok: moelab ckpt verify accepts the pipeline checkpoints; their expert counts cover the whole model"
