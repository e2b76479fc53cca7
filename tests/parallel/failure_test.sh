#!/bin/bash
# Failure modes of multi-rank runs; each must end every rank with a non-zero exit and one clear
# message, quickly:
#  - an operation some rank never joins (deadlock), exit 1: "<op> on group world timed out after 2s", a
#    receive naming its peer ("recv from rank 0 on group world ..."); the same for the EP
#    dispatcher's row exchange (an all-to-all-v) with a rank that hangs;
#  - a bad layout (DP % EP, E % EP) in the grid and in `moelab train`: exit 2 before any work;
#  - a reduction of 16-bit words (COMM_B16, moved only): exit 1 naming the operation;
#  - an expert id outside [0, E) in one rank's routing, at the EP dispatcher's plan: exit 1 naming it;
#  - bad data (a val.bin of another vocabulary) in `moelab train`: exit 2;
#  - ranks of one machine that together need more memory than it has: exit 2 before any step;
#  - a rank killed mid-step (the test seam MOELAB_TEST_SIGNAL_AT_STEP, announced with a warning; a
#    malformed value is exit 2): the job ends within the comm timeout, with a message naming the dead
#    rank (mpirun's) or the operation the survivors waited in (the timeout's).
set -uo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"
driver="$root/tests/parallel/comm_driver"
fail=0

# expect NAME CODE REGEX MAX_SECONDS NP PROGRAM ARGS...: exit status CODE ("nonzero": any but 0) and
# REGEX in the output, within MAX_SECONDS.
expect() {
    local name=$1 code=$2 regex=$3 max=$4 np=$5
    shift 5
    local t0=$SECONDS rc
    mpi "$np" -x MOELAB_TEST_SIGNAL_AT_STEP "$@" >"$tmp/$name.out" 2>&1
    rc=$?
    local took=$((SECONDS - t0))
    if { [ "$code" = nonzero ] && [ $rc -eq 0 ]; } || { [ "$code" != nonzero ] && [ $rc -ne "$code" ]; }; then
        echo "FAIL: $name exited with $rc, expected $code"; fail=1
    elif ! grep -Eq "$regex" "$tmp/$name.out"; then
        echo "FAIL: $name: no line matches /$regex/"; fail=1
    elif [ $took -gt "$max" ]; then
        echo "FAIL: $name took ${took}s (limit ${max}s)"; fail=1
    else
        echo "ok: $name (exit $rc in ${took}s)"; return
    fi
    sed 's/^/  | /' "$tmp/$name.out"
}

# every_rank NAME REGEX: both ranks of the two-rank case NAME said its error (REGEX): input that one
# rank finds bad but the other does not (a check that compares the ranks) must end both, not leave
# one to go on into a collective.
every_rank() {
    [ "$(grep -oE "moelab: error \[rank [01]\]: $2" "$tmp/$1.out" | cut -d" " -f4 | sort -u | wc -l)" -eq 2 ] ||
        { echo "FAIL: $1: not every rank said the error"; sed 's/^/  | /' "$tmp/$1.out"; fail=1; }
}

unset MOELAB_TEST_SIGNAL_AT_STEP
expect deadlock 1 'moelab: error \[rank 1\]: recv from rank 0 on group world timed out after 2s' 60 \
    2 "$driver" hang 2
expect stall 1 'moelab: error \[rank [01]\]: all-to-all-v on group world timed out after 2s' 60 \
    3 "$driver" stall 2
if grep -q "unreachable" "$tmp/stall.out"; then echo "FAIL: stall: the exchange completed without rank 2"; fail=1; fi
expect grid_dp_ep 2 'moelab: error \[rank [0-9]\]: grid: 4 data-parallel ranks .* cannot form expert-parallel groups of --ep 3' 60 \
    4 "$driver" grid 1 3 6
expect grid_e_ep 2 'moelab: error \[rank [0-9]\]: grid: 6 experts cannot be split evenly over --ep 4 ranks' 60 \
    4 "$driver" grid 1 4 6
expect grid_pp 2 'grid: 4 processes cannot form 3 pipeline stages' 60 4 "$driver" grid 3 1 6
expect b16_sum 1 'all-reduce on group world of 16-bit words: they are moved, never reduced' 60 2 "$driver" b16sum
# One rank's routing names an expert that does not exist: that rank names the fault, and the job ends
# on every rank at once (not at the timeout, not in a hang), the count exchange before the check or not.
expect bad_expert 1 'moelab: error \[rank 1\] parallel/ep_dispatch.c:[0-9]+: ep dispatcher: 1 of 4 routed pairs have an expert id outside \[0, 4\)' 60 \
    2 "$driver" badexpert
if grep -q "unreachable" "$tmp/bad_expert.out"; then echo "FAIL: bad_expert: the job went on"; fail=1; fi

prepare_corpus "$tmp/data"
args=(--data "$tmp/data" --batch-size 2 --seq-len 16 --d-model 32 --d-expert 16 --d-ff 64 --val-every 0
      --val-batches 1 --log-every 1)
expect train_e_ep 2 'moelab: error \[rank [0-9]\]: config: n_experts \(6\) must be divisible by ep \(4\)' 60 \
    4 "$moelab" train "${args[@]}" --n-experts 6 --ep 4 --steps 3
if grep -q "step" "$tmp/train_e_ep.out"; then echo "FAIL: train_e_ep did work before failing"; fail=1; fi
# Bad input that every rank finds (here a checkpoint of another model) is said by every rank: the
# first rank's MPI_Abort ended the other before its message (review, 2026-12-06).
mpi 2 "$moelab" train "${args[@]}" --ep 2 --steps 1 --out "$tmp/e2" >/dev/null 2>&1 ||
    { echo "FAIL: the run for the resume case failed"; fail=1; }
expect resume_other 2 'moelab: error \[rank [01]\]: .*n_experts' 60 2 "$moelab" train "${args[@]}" --ep 2 --steps 2 \
    --n-experts 16 --resume "$tmp/e2/step_1.h5"
every_rank resume_other ".*n_experts"
# Bad data (issue 14): a val.bin of another vocabulary than the tokenizer's is exit 2 on every rank.
"$moelab" data prepare --input "$tmp/data.txt" --vocab 300 --out "$tmp/v300" >/dev/null
mkdir -p "$tmp/mixed" && cp "$tmp/data/tokenizer.bin" "$tmp/data/train.bin" "$tmp/v300/val.bin" "$tmp/mixed/"
expect train_vocab 2 'moelab: error \[rank [0-9]\]: .*mixed/val.bin was written for a vocabulary of 300 tokens' 60 \
    2 "$moelab" train "${args[@]}" --data "$tmp/mixed" --ep 2 --steps 3

# Ranks of one machine add up their memory: two pipeline stages that need about 1 TB each are refused
# on every rank before the first step (one process each was SIGKILLed by the OOM killer).
mkdir -p "$tmp/long" && seq 1 40000 > "$tmp/long/a.txt"
"$moelab" data prepare --input "$tmp/long" --vocab 256 --out "$tmp/long_data" --val-fraction 0.5 >/dev/null
expect host_memory 2 'moelab: error \[rank [01]\]: config: a training step needs at least [0-9.]+ GiB of host memory for the 2 ranks on one machine' 60 \
    2 "$moelab" train --data "$tmp/long_data" --vocab-size 256 --n-layers 2 --n-dense-layers 2 --d-model 8 --n-heads 2 \
    --n-kv-heads 1 --d-ff 1048576 --batch-size 64 --seq-len 1024 --val-batches 1 --steps 1 --pp 2

# Ranks started with different settings (mpirun's MPMD form): a buffer overrun in the DP all-reduce
# when the model differed, a hang at the end of the shorter run when --steps did (fuzzing): exit 2.
expect mpmd_model 2 'ranks were started with different settings' 60 \
    1 "$moelab" train "${args[@]}" --steps 3 : -np 1 "$moelab" train "${args[@]}" --steps 3 --d-model 16
expect mpmd_steps 2 'ranks were started with different settings' 60 \
    1 "$moelab" train "${args[@]}" --steps 3 : -np 1 "$moelab" train "${args[@]}" --steps 4
every_rank mpmd_model "the 2 ranks were started with different settings"
every_rank mpmd_steps "the 2 ranks were started with different settings"
if grep -q "step" "$tmp/mpmd_steps.out"; then echo "FAIL: mpmd_steps did work before failing"; fail=1; fi
# Ranks on hosts that do not share a file system (here mpirun's -wdir per rank and relative paths):
# one name, other files. Ranks that resumed different checkpoints trained on from other steps until a
# collective timed out; other datasets trained in silence (review, 2026-12-06). Exit 2, before a step.
mkdir -p "$tmp/h0" "$tmp/h1"
"$moelab" train "${args[@]}" --steps 2 --save-every 1 --out "$tmp/h0/ck" >/dev/null 2>&1 ||
    { echo "FAIL: the run for the hosts cases failed"; fail=1; }
mkdir -p "$tmp/h1/ck" && cp "$tmp/h0/ck/step_2.h5" "$tmp/h1/ck/step_1.h5"
ln -sfn "$tmp/data" "$tmp/h0/data"
make_corpus "$tmp/other" && echo "another text" >>"$tmp/other/corpus.txt"
"$moelab" data prepare --input "$tmp/other" --vocab 256 --out "$tmp/h1/data" --val-fraction 0.1 >/dev/null
expect hosts_resume 2 'moelab: error \[rank [01]\]: the ranks resumed different checkpoints at --resume ck/step_1.h5' 60 \
    1 -wdir "$tmp/h0" "$moelab" train "${args[@]}" --steps 3 --resume ck/step_1.h5 \
    : -np 1 -wdir "$tmp/h1" "$moelab" train "${args[@]}" --steps 3 --resume ck/step_1.h5
expect hosts_data 2 'moelab: error \[rank [01]\]: the ranks read different datasets at --data data' 60 \
    1 -wdir "$tmp/h0" "$moelab" train "${args[@]}" --data data --steps 3 \
    : -np 1 -wdir "$tmp/h1" "$moelab" train "${args[@]}" --data data --steps 3
every_rank hosts_resume "the ranks resumed different checkpoints"
every_rank hosts_data "the ranks read different datasets"
for name in hosts_resume hosts_data; do
    if grep -q "^step .*loss" "$tmp/$name.out"; then echo "FAIL: $name did work before failing"; fail=1; fi
done

# The test seam (docs/architecture.md §2) takes RANK:STEP:SIGNAL only, and announces itself when set.
for bad in 1 1:2 1:2:KILLX 1:2:SEGV 1:x:KILL; do
    export MOELAB_TEST_SIGNAL_AT_STEP=$bad
    expect "seam_malformed_$bad" 2 "moelab: error \\[rank [0-9]\\]: MOELAB_TEST_SIGNAL_AT_STEP = '$bad': expected RANK:STEP:SIGNAL" \
        60 2 "$moelab" train "${args[@]}" --ep 2 --steps 1
done
export MOELAB_TEST_SIGNAL_AT_STEP=1:2:KILL
expect dead_rank nonzero '(: [a-z/ -]+ on group [a-z]+ timed out after 5s|process rank 1 .*exited on signal 9)' 60 \
    2 "$moelab" train "${args[@]}" --ep 2 --steps 6 --comm-timeout 5
grep -q "raising SIGKILL at step 2" "$tmp/dead_rank.out" || { echo "FAIL: rank 1 did not die at step 2"; fail=1; }
grep -q "warning.*test seam MOELAB_TEST_SIGNAL_AT_STEP=1:2:KILL is set" "$tmp/dead_rank.out" ||
    { echo "FAIL: the active test seam is not announced"; fail=1; }
exit $fail
