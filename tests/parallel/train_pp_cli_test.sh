#!/bin/bash
# `moelab train --pp` under mpirun against the one-process run: the same 4 micro-batches of 4
# sequences per step as DualPipe on 2 ranks (--chunks 4) and DualPipeV on 2 ranks; the logged
# losses and gradient norms of every step agree within 1e-5 relative; so do 1F1B, DualPipe and
# DualPipeV on 4 ranks over the GPU transport run on MPI (MOELAB_TEST_PIPE_LINKS=1). The DualPipe
# run's --trace must draw with `moelab schedule --from-trace`, the CPU accepts --fb-overlap 1 (with
# EP too: DualPipe PP 2 x EP 2) and runs the F&B halves in turn, and bad pipeline arguments end
# with one message.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" "${compared[@]}" --steps 3 --batch-size 4 --n-layers 4)

"$moelab" train "${args[@]}" --grad-accum 4 --metrics "$tmp/one.jsonl" >"$tmp/one.log"
mpi 2 "$moelab" train "${args[@]}" --pp 2 --schedule dualpipe --chunks 4 --trace "$tmp/trace.json" \
    --metrics "$tmp/dualpipe.jsonl" >"$tmp/dualpipe.log"
mpi 2 "$moelab" train "${args[@]}" --pp 2 --schedule dualpipev --chunks 4 --fb-overlap 1 \
    --metrics "$tmp/dualpipev.jsonl" >"$tmp/dualpipev.log"
grep -q "F&B ops run their forward and backward one after the other (no overlap on the CPU)" \
    "$tmp/dualpipev.log" || { echo "FAIL: --fb-overlap is not logged:"; cat "$tmp/dualpipev.log"; exit 1; }

grep -q "pipeline: dualpipe, 2 ranks, 4 micro-batches per step | layers per stage: \[0,2) \[2,4)" \
    "$tmp/dualpipe.log" || { echo "FAIL: the partition is not in the log:"; cat "$tmp/dualpipe.log"; exit 1; }
# DualPipe's rank 0 holds both stages (its own and the copy of rank 1's), so the whole model: its
# count said a third of it (review, 2026-12-06).
grep -qE "^\[rank 0\] model: .* \| [0-9.]+M parameters$" "$tmp/dualpipe.log" ||
    { echo "FAIL: DualPipe's rank 0 does not hold the whole model:"; grep "model:" "$tmp/dualpipe.log"; exit 1; }

# With EP each pipe's dispatcher has an EP group of its own; the overlap's flag is accepted. At DP 2
# and 2 sequences per micro-batch its reference is the one-process run of the same 8 micro-batches
# of 2 sequences (one2): the same sequences cut into micro-batches of 4 instead move step 3's
# gradient norm by about 1e-5 on their own (the micro-batches' gradients add in another order, and
# AdamW magnifies the difference where a gradient is near its eps; measured in one process on an
# AMD EPYC, 2026-12-03: batch 4 vs batch 2 differ by 8.5e-6, batch 4 vs batch 1 by 1.4e-5).
"$moelab" train "${args[@]}" --grad-accum 8 --batch-size 2 --metrics "$tmp/one2.jsonl" >"$tmp/one2.log"
mpi 4 "$moelab" train "${args[@]}" --pp 2 --ep 2 --schedule dualpipe --chunks 4 --batch-size 2 --fb-overlap 1 \
    --metrics "$tmp/dualpipe_ep.jsonl" >"$tmp/dualpipe_ep.log"
grep -q "F&B ops run their forward and backward one after the other (no overlap on the CPU)" \
    "$tmp/dualpipe_ep.log" || { echo "FAIL: --fb-overlap with EP is not logged:"; cat "$tmp/dualpipe_ep.log"; exit 1; }

for run in dualpipe dualpipev; do
    close_steps "$tmp/one.jsonl" "$tmp/$run.jsonl" 123
    echo "ok: $run matches the one-process run"
done
close_steps "$tmp/one2.jsonl" "$tmp/dualpipe_ep.jsonl" 123
echo "ok: dualpipe_ep matches the one-process run of its micro-batches"

# The GPU transport (one communicator per directed link, receives in the sender's order into a
# mailbox) run over MPI: the 4-rank schedules, whose links form both phases of pairs.
args8=("${args[@]}" --n-layers 8)
"$moelab" train "${args8[@]}" --grad-accum 8 --metrics "$tmp/one8.jsonl" >"$tmp/one8.log"
for kind in 1f1b dualpipe dualpipev; do
    MOELAB_TEST_PIPE_LINKS=1 mpi 4 "$moelab" train "${args8[@]}" --pp 4 --schedule $kind --chunks 8 \
        --metrics "$tmp/links_$kind.jsonl" >"$tmp/links_$kind.log"
    grep -q "one MPI communicator per directed link" "$tmp/links_$kind.log" ||
        { echo "FAIL: $kind did not run over the links:"; cat "$tmp/links_$kind.log"; exit 1; }
    close_steps "$tmp/one8.jsonl" "$tmp/links_$kind.jsonl" 123
    echo "ok: $kind over per-link communicators matches the one-process run"
done
# The seam takes 1 only: another value is refused, not taken for unset.
rc=0
MOELAB_TEST_PIPE_LINKS=yes "$moelab" train "${args[@]}" >"$tmp/links_bad.log" 2>&1 || rc=$?
[ $rc = 2 ] && grep -q "MOELAB_TEST_PIPE_LINKS = 'yes': expected 1 (or unset)" "$tmp/links_bad.log" ||
    { echo "FAIL: MOELAB_TEST_PIPE_LINKS=yes (exit $rc):"; cat "$tmp/links_bad.log"; exit 1; }

# The pipeline's metrics carry the whole model's expert loads (summed over the stages): every MoE
# layer routes each of the step's 4 x 4 x 16 tokens to top-k = 2 experts.
for run in dualpipe dualpipev; do
    /usr/bin/python3 - "$tmp/$run.jsonl" "$tmp/one.jsonl" <<'PY' || { echo "FAIL: $run expert_load"; exit 1; }
import json, sys
runs = [[d["expert_load"] for d in map(json.loads, open(p)) if "step" in d] for p in sys.argv[1:]]
assert [len(s) for s in runs[0]] == [len(s) for s in runs[1]], runs
assert all(sum(layer) == 512 for step in runs[0] for layer in step), runs[0]
PY
done
echo "ok: the pipelines log the whole model's expert loads"

# The measured timeline: every op of both ranks, drawn.
"$moelab" schedule --from-trace "$tmp/trace.json" --svg "$tmp/trace.svg" >"$tmp/from_trace.txt"
ops=$(grep -c '"ph": "X"' "$tmp/trace.json")
[ "$ops" = "$("$moelab" schedule --kind dualpipe --pp 2 --chunks 4 --format json | grep -o '"op"' | wc -l)" ] ||
    { echo "FAIL: the trace has $ops op events"; cat "$tmp/trace.json"; exit 1; }
grep -q "<svg" "$tmp/trace.svg" && [ "$(grep -c 'class="op"' "$tmp/trace.svg")" = "$ops" ] ||
    { echo "FAIL: the SVG does not draw the $ops ops"; exit 1; }
grep -q "rank 1" "$tmp/from_trace.txt" || { echo "FAIL: no per-rank idle time:"; cat "$tmp/from_trace.txt"; exit 1; }
# With --kind, the mean costs as docs/pipeline.md defines them, recomputed from the trace: B over
# every backward, one that defers its W (B...*) counted with the mean W; F&B likewise (review,
# 2026-12-06: B took the full backwards alone).
"$moelab" schedule --from-trace "$tmp/trace.json" --svg "$tmp/trace.svg" --kind dualpipe >"$tmp/costs.txt"
python3 - "$tmp/trace.json" "$tmp/costs.txt" <<'PY' || { echo "FAIL: the measured mean costs"; cat "$tmp/costs.txt"; exit 1; }
import json, re, sys
ev = [e for e in json.load(open(sys.argv[1]))["traceEvents"] if e.get("ph") == "X"]
def durs(pat): return [e["dur"] for e in ev if re.fullmatch(pat, e["name"])]
mean = lambda x: sum(x) / len(x)
f, w = mean(durs(r"F\d+[du]")), mean(durs(r"W\d+[du]"))
full, defer = durs(r"B\d+[du]"), durs(r"B\d+[du]\*")
fbs, fbd = durs(r"FB\(.*\)"), durs(r"FB\(.*\)\*")
assert full and defer, "the trace has no full and deferring backwards to tell the rules apart"
b = (sum(full) + sum(defer) + len(defer) * w) / (len(full) + len(defer))
fb = (sum(fbs) + sum(fbd) + len(fbd) * w) / (len(fbs) + len(fbd))
got = [float(x) for x in re.search(r"F ([\d.e+-]+), B ([\d.e+-]+), W ([\d.e+-]+), F&B ([\d.e+-]+)",
                                    open(sys.argv[2]).read()).groups()]
for name, g, want in zip("F B W F&B".split(), got, [f, b, w, fb]):
    assert abs(g - want) <= 1e-5 * want, (name, g, want)
PY
echo "ok: the trace of $ops ops draws"

# Bad pipeline arguments: one message and exit status 2.
expect_usage() {
    local want=$1
    shift
    set +e
    "$@" >"$tmp/err.log" 2>&1
    local rc=$?
    set -e
    [ $rc -eq 2 ] && grep -qF -- "$want" "$tmp/err.log" ||
        { echo "FAIL: expected '$want' (exit $rc):"; cat "$tmp/err.log"; exit 1; }
}
expect_usage "with 3 micro-batches per step (--chunks 3): dualpipe needs an even number of micro-batches (chunks = 3)" \
    mpi 2 "$moelab" train "${args[@]}" --pp 2 --schedule dualpipe --chunks 3
expect_usage "cuts the model into 8 stages of at least one layer, but n_layers = 4" \
    mpi 4 "$moelab" train "${args[@]}" --pp 4 --schedule dualpipev --chunks 8
expect_usage "--chunks 4 and --grad-accum 2 both set the micro-batches per step" \
    "$moelab" train "${args[@]}" --chunks 4 --grad-accum 2
printf 'chunks = 4\ngrad_accum = 2\n' > "$tmp/both.cfg"
expect_usage "config: chunks = 4 and grad_accum = 2 both set the micro-batches per step: set one" \
    "$moelab" train "${args[@]}" --config "$tmp/both.cfg"
echo "ok: bad arguments are refused"
