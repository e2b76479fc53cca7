#!/bin/bash
# `moelab train --zero 1` (ZeRO-1, parallel/zero1.h) end to end under mpirun, on the byte-level fixed
# corpus (tests/util/cli_lib.sh) and the same global batch per step in every run:
#  1. --help lists the key; --zero 2 ends every rank with exit 2 and one message naming the problem;
#  2. DP 2 (EP 1) and DP 4 (EP 2, so experts are sharded over expert-DP 2) with --zero 1 log the
#     optimizer memory per rank, and their losses and gradient norms of every step are within 1e-5
#     of the one-process run's; with one process --zero 1 says there is nothing to shard and
#     changes nothing;
#  3. the ZeRO-1 checkpoints (moments gathered from the shards) hold the same weights and moments as
#     the unsharded DP 2 run's within 1e-5 relative per tensor, and the same step and AdamW t;
#  4. the ZeRO-1 checkpoint of step 3 resumes in one process (another layout), and the one-process
#     checkpoint of step 3 resumes under --zero 1 with 2 ranks: steps 4-6 within 1e-5 of the
#     uninterrupted run, and neither resume warns of a changed setting but grad_accum (zero is a
#     layout key);
#  5. pipelines of 2 stages x DP 2 with --zero 1 (1F1B; DualPipe, whose stage copies each shard
#     their optimizer, with EP 2; DualPipeV, two stages per rank) match a 4-layer one-process run
#     of the same micro-batches within 1e-5 for 3 steps, and DualPipe's ZeRO-1 checkpoint of step 2
#     resumes in one process;
#  6. with EPLB (EP 2 x expert-DP 2 on 4 ranks, redundant slots, a skewed router, rebalances every 2
#     steps that copy experts between ranks) --zero 1 matches the same run without it: losses and
#     gradient norms within 1e-5, the checkpoints of step 6 (moments gathered, placement saved) too;
#     its checkpoint of step 3, between two rebalances, resumes under --zero 1 and matches steps 4-6;
#  7. the host memory check counts the whole copies a rebalance holds under ZeRO-1: with the
#     machine's memory set by the test seam MOELAB_TEST_HOST_MEMORY_MIB between what a step needs and
#     what a rebalance needs, the EPLB run is exit 2 on every rank naming the rebalance, and the same
#     run without EPLB trains, and so does one shorter than its rebalance interval.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" "${compared[@]}" --steps 6 --batch-size 4)

# 1.
"$moelab" train --help > "$tmp/help"
grep -Eq -- "--zero .*ZeRO stage" "$tmp/help" || { echo "FAIL: --help has no --zero"; exit 1; }
expect_exit2 bad_value "zero = 2 is too large: at most 1" 1 "${args[@]}" --zero 2

# 2.
"$moelab" train "${args[@]}" --grad-accum 4 --out "$tmp/one" --save-every 3 --metrics "$tmp/one.jsonl" >"$tmp/one.log"
mpi 2 "$moelab" train "${args[@]}" --grad-accum 2 --out "$tmp/dp2" --metrics "$tmp/dp2.jsonl" >"$tmp/dp2.log"
mpi 2 "$moelab" train "${args[@]}" --grad-accum 2 --zero 1 --out "$tmp/z2" --save-every 3 \
    --metrics "$tmp/z2.jsonl" >"$tmp/z2.log"
mpi 4 "$moelab" train "${args[@]}" --grad-accum 1 --ep 2 --zero 1 --metrics "$tmp/z4.jsonl" >"$tmp/z4.log"
memory="zero-1: optimizer state [0-9.]+ MiB per rank instead of [0-9.]+ \(AdamW moments and fp32 master copy of 1/4 of the dense"
grep -Eq "$memory and 1/2 of the expert floats" "$tmp/z4.log" ||
    { echo "FAIL: no memory line in the DP 4 log:"; cat "$tmp/z4.log"; exit 1; }
"$moelab" train "${args[@]}" --grad-accum 4 --zero 1 --metrics "$tmp/z1.jsonl" >"$tmp/z1.log"
grep -q "zero-1: one data-parallel rank, nothing to shard" "$tmp/z1.log" ||
    { echo "FAIL: the one-process run does not say that --zero 1 has nothing to shard:"; cat "$tmp/z1.log"; exit 1; }
same_steps "$tmp/one.jsonl" "$tmp/z1.jsonl" 123456
for run in dp2 z2 z4; do
    close_steps "$tmp/one.jsonl" "$tmp/$run.jsonl" 123456
    echo "ok: $run matches the one-process run"
done

# 3.
same_checkpoints "$tmp/dp2/step_6.h5" "$tmp/z2/step_6.h5" 1e-5

# 4.
# The resumes name no changed setting but grad_accum, the other split of the same global batch (zero
# is a layout key). (Warnings go to stderr: the check read the stdout log, where none can be.)
"$moelab" train "${args[@]}" --grad-accum 4 --resume "$tmp/z2/step_3.h5" --metrics "$tmp/r1.jsonl" >"$tmp/r1.log" \
    2>"$tmp/r1.err"
mpi 2 "$moelab" train "${args[@]}" --grad-accum 2 --zero 1 --resume "$tmp/one/step_3.h5" \
    --metrics "$tmp/r2.jsonl" >"$tmp/r2.log" 2>"$tmp/r2.err"
for run in r1 r2; do
    if grep "settings differ from the saved run" "$tmp/$run.err" | grep -qvE "new values: grad_accum [0-9]+ -> [0-9]+$"; then
        echo "FAIL: $run warns of changed settings:"; cat "$tmp/$run.err"; exit 1
    fi
    close_steps "$tmp/one.jsonl" "$tmp/$run.jsonl" 456
    echo "ok: $run (resumed at step 3) matches the uninterrupted run"
done

# 5.
# The layouts run DP 2 x 4 micro-batches of 2 sequences: their reference is the one-process run of
# the same 8 micro-batches of 2 (cutting the sequences into micro-batches of 4 instead moves step
# 3's gradient norm by about 1e-5 on its own: tests/parallel/train_pp_cli_test.sh).
args4=("${args[@]}" --n-layers 4 --steps 3 --batch-size 2)
"$moelab" train "${args4[@]}" --grad-accum 8 --metrics "$tmp/one4.jsonl" >"$tmp/one4.log"
mpi 4 "$moelab" train "${args4[@]}" --pp 2 --schedule 1f1b --chunks 4 --zero 1 \
    --metrics "$tmp/p1f1b.jsonl" >"$tmp/p1f1b.log"
mpi 4 "$moelab" train "${args4[@]}" --pp 2 --ep 2 --schedule dualpipe --chunks 4 --zero 1 \
    --out "$tmp/pdual" --save-every 2 --metrics "$tmp/pdual.jsonl" >"$tmp/pdual.log"
mpi 4 "$moelab" train "${args4[@]}" --pp 2 --schedule dualpipev --chunks 4 --zero 1 \
    --metrics "$tmp/pdualv.jsonl" >"$tmp/pdualv.log"
grep -Eq "zero-1: optimizer state .* of 1/2 of the dense and 1/1 of the expert floats" "$tmp/pdual.log" ||
    { echo "FAIL: no memory line in the DualPipe log:"; cat "$tmp/pdual.log"; exit 1; }
"$moelab" train "${args4[@]}" --grad-accum 8 --resume "$tmp/pdual/step_2.h5" --metrics "$tmp/pr.jsonl" >"$tmp/pr.log"
for run in p1f1b pdual pdualv; do
    close_steps "$tmp/one4.jsonl" "$tmp/$run.jsonl" 123
    echo "ok: $run matches the one-process run"
done
close_steps "$tmp/one4.jsonl" "$tmp/pr.jsonl" 3
echo "ok: DualPipe's ZeRO-1 checkpoint resumes in one process"

# 6.
# EPLB's settings as in eplb_cli_test.sh: high expert ids busiest, so that the rebalances move experts,
# and an AdamW eps that keeps reassociated tiny gradients from moving weights visibly.
eargs=("${args[@]}" --grad-accum 1 --ep 2 --eplb-interval 2 --eplb-redundant 2 --router-skew -0.1
       --adam-eps 1e-6 --save-every 3)
mpi 4 "$moelab" train "${eargs[@]}" --out "$tmp/e4" --metrics "$tmp/e4.jsonl" >"$tmp/e4.log"
mpi 4 "$moelab" train "${eargs[@]}" --zero 1 --out "$tmp/ez4" --metrics "$tmp/ez4.jsonl" >"$tmp/ez4.log"
grep -Eq "eplb: step [246]: rebalanced .* [1-9][0-9]* copied between ranks" "$tmp/ez4.log" ||
    { echo "FAIL: no rebalance of the ZeRO-1 run copied an expert between ranks:"; grep eplb: "$tmp/ez4.log"; exit 1; }
close_steps "$tmp/e4.jsonl" "$tmp/ez4.jsonl" 123456
same_checkpoints "$tmp/e4/step_6.h5" "$tmp/ez4/step_6.h5" 1e-5
mpi 4 "$moelab" train "${eargs[@]}" --zero 1 --resume "$tmp/ez4/step_3.h5" --metrics "$tmp/ezr.jsonl" >"$tmp/ezr.log"
close_steps "$tmp/ez4.jsonl" "$tmp/ezr.jsonl" 456
echo "ok: ZeRO-1 with EPLB matches the unsharded EPLB run, and its checkpoint resumes"

# 7. Experts of 32 768 floats a row make a rebalance's whole copies of the weights and moments far
# larger than the activations of micro-batches of one sequence; the first run, with 1 MiB, reports what is held
# and what a rebalance adds, and the machine is then set halfway between. No redundant slots, so that
# the run without EPLB holds the same.
margs=("${args[@]}" --grad-accum 1 --ep 2 --eplb-interval 1 --d-expert 32768 --steps 1 --zero 1 --batch-size 1)
export MOELAB_TEST_HOST_MEMORY_MIB=1
expect_exit2 rebalance_memory "config: an EPLB rebalance under ZeRO-1 needs at least [0-9.]+ GiB of host memory for the 4 ranks on one machine" \
    4 "${margs[@]}"
[ "$(grep -c "error .*an EPLB rebalance under ZeRO-1 needs" "$tmp/rebalance_memory.out")" -eq 4 ] ||
    { echo "FAIL: not every rank refused the config:"; cat "$tmp/rebalance_memory.out"; exit 1; }
read -r held whole < <(grep -m1 -o "([0-9.]* GiB held .*, and [0-9.]* GiB for the whole" "$tmp/rebalance_memory.out" |
    awk '{print substr($1, 2), $(NF-4)}')
export MOELAB_TEST_HOST_MEMORY_MIB=$(awk -v h="$held" -v w="$whole" 'BEGIN {printf "%d", (h + w / 2) * 1024}')
echo "held $held GiB, whole copies $whole GiB: machine set to $MOELAB_TEST_HOST_MEMORY_MIB MiB"
expect_exit2 rebalance_memory_half "config: an EPLB rebalance under ZeRO-1 needs at least" 4 "${margs[@]}"
mpi 4 "$moelab" train "${margs[@]}" --eplb-interval 0 >"$tmp/no_eplb.log" 2>&1 ||
    { echo "FAIL: the run without EPLB was refused at $MOELAB_TEST_HOST_MEMORY_MIB MiB:"; cat "$tmp/no_eplb.log"; exit 1; }
# A run shorter than its interval never rebalances: it needs no more either.
mpi 4 "$moelab" train "${margs[@]}" --eplb-interval 2 >"$tmp/short_eplb.log" 2>&1 ||
    { echo "FAIL: a run shorter than its EPLB interval was refused at $MOELAB_TEST_HOST_MEMORY_MIB MiB:"; cat "$tmp/short_eplb.log"; exit 1; }
unset MOELAB_TEST_HOST_MEMORY_MIB
echo "ok: the memory check counts a rebalance's whole copies under ZeRO-1"
