#!/bin/bash
# A polite signal stops `moelab train` after the step under way, with that step's checkpoint:
#  1. one process and SIGTERM (a batch system's preemption): exit 143, the stop line naming the step
#     and the checkpoint, a sound checkpoint of that step and no temporary file; resumed from it, the
#     next steps are those of a run that was never stopped, to every printed digit, and the metrics
#     file given again holds every step once;
#  2. Ctrl-C (SIGINT) without --out: exit 130, "nothing saved";
#  3. two ranks under mpirun (EP 2) and SIGUSR1 to mpirun, which forwards it to every rank: both stop
#     after the same step and write its checkpoint in two parts, sound; so do they when SIGTERM
#     reaches rank 1 alone;
#  4. a second signal ends the run at once: rank 1 stopped (SIGSTOP), rank 0 waits in the step's
#     exchange; its first SIGTERM is announced, its second ends it within seconds;
#  5. a signal raised as a given step begins (the test seam MOELAB_TEST_SIGNAL_AT_STEP): before the
#     last step the run stops after that very step; during the last one it completes (exit 0, its
#     final validation, summary and checkpoint) and only the sample after training is left out, in
#     one process and when rank 1 alone gets it.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, prepare_corpus
source "$root/tests/parallel/mpi_env.sh"            # mpi
prepare_corpus "$tmp/data"
# A failing check leaves no run behind (each runs in a process group of its own, below); mpi_env.sh's
# own exit trap removes the MPI session folder.
pid=
trap '[ -n "$pid" ] && kill -KILL -- -"$pid" 2>/dev/null; rm -rf "$MPI_SESSION_DIR"' EXIT
# A constant learning rate (no warm-up, min_lr = lr), so that a run's steps do not depend on --steps:
# the stopped run (1 000 000 steps) and the run it is compared with (a few) take the same steps.
args=("${tiny[@]}" --n-layers 2 --batch-size 2 --log-every 1 --warmup-steps 0 --lr 0.003 --min-lr 0.003
      --sample-tokens 0 --val-every 0)

# start LOG ARGS...: `moelab train ARGS` in the background (job control on, so that SIGINT reaches
# it as a terminal's Ctrl-C would), its output in LOG; waits for its first step line. Sets $pid.
start() {
    local log=$1
    shift
    set -m
    "$@" >"$log" 2>&1 &
    pid=$!
    set +m
    for _ in $(seq 600); do
        grep -q "step  *1/" "$log" && return
        kill -0 "$pid" 2>/dev/null || { echo "FAIL: the run ended before its first step:"; cat "$log"; exit 1; }
        sleep 0.1
    done
    echo "FAIL: no step within 60 s:"; cat "$log"; exit 1
}

# finish PID LOG CODE: the run's exit code is CODE.
finish() {
    local rc=0
    wait "$1" || rc=$?
    [ $rc -eq "$3" ] || { echo "FAIL: exit $rc, expected $3:"; cat "$2"; exit 1; }
}

# 1. One process, SIGTERM.
start "$tmp/a.log" "$moelab" train "${args[@]}" --steps 1000000 --out "$tmp/a" --metrics "$tmp/a.jsonl"
kill -TERM "$pid"
finish "$pid" "$tmp/a.log" 143
pid=
grep -q "^moelab: signal received: stopping after this step" "$tmp/a.log" ||
    { echo "FAIL: the signal was not announced:"; cat "$tmp/a.log"; exit 1; }
n=$(sed -n 's/^stopped by SIGTERM after step \([0-9]*\) of 1000000: go on with --resume .*step_\1\.h5$/\1/p' "$tmp/a.log")
[ -n "$n" ] || { echo "FAIL: no stop line naming the step and its checkpoint:"; tail -n 5 "$tmp/a.log"; exit 1; }
[ "$(ls "$tmp/a")" = "step_$n.h5" ] || { echo "FAIL: expected step_$n.h5 alone:"; ls -a "$tmp/a"; exit 1; }
"$moelab" ckpt verify "$tmp/a/step_$n.h5" >/dev/null
echo "ok: SIGTERM stopped the run after step $n with its checkpoint"
# Resumed as a batch system requeues a job (the same command, and --resume), steps n+1 and n+2 are
# the uninterrupted run's, and the metrics file goes on: every step 1..n+2 once, as the uninterrupted
# run logged it, after the stopped run's config line and, before step n+1, the resumed run's.
m=$((n + 2))
"$moelab" train "${args[@]}" --steps $m --resume "$tmp/a/step_$n.h5" --metrics "$tmp/a.jsonl" >"$tmp/r.log"
"$moelab" train "${args[@]}" --steps $m --metrics "$tmp/u.jsonl" >"$tmp/u.log"
steps() { grep '"step"' "$1" | sed 's/, "tokens_per_s": [0-9.]*//'; }
[ "$(steps "$tmp/a.jsonl")" = "$(steps "$tmp/u.jsonl")" ] && [ "$(grep -c '"config"' "$tmp/a.jsonl")" -eq 2 ] &&
    [ "$(grep -n '"config"' "$tmp/a.jsonl" | sed -n '2s/:.*"resumed_at": \([0-9]*\)}$/ \1/p')" = "$((n + 2)) $n" ] ||
    { echo "FAIL: the resumed metrics:"; cut -c1-80 "$tmp/a.jsonl"; echo "  uninterrupted:"; cut -c1-80 "$tmp/u.jsonl"; exit 1; }
echo "ok: resumed from it, steps $((n + 1)) and $m equal the uninterrupted run's, its metrics file goes on"

# A step that its --save-every has just saved is not saved a second time by the stop.
start "$tmp/e.log" "$moelab" train "${args[@]}" --steps 1000000 --save-every 1 --keep 1 --out "$tmp/e"
kill -TERM "$pid"
finish "$pid" "$tmp/e.log" 143
pid=
n=$(sed -n 's/^stopped by SIGTERM after step \([0-9]*\) of 1000000: go on with --resume .*step_\1\.h5$/\1/p' "$tmp/e.log")
[ -n "$n" ] && [ "$(grep -c "^saved .*/step_$n\.h5$" "$tmp/e.log")" -eq 1 ] ||
    { echo "FAIL: the stopped step was not saved once:"; tail -n 5 "$tmp/e.log"; exit 1; }
echo "ok: a step saved by --save-every is not saved again by the stop"

# 2. Ctrl-C without --out.
start "$tmp/b.log" "$moelab" train "${args[@]}" --steps 1000000
kill -INT "$pid"
finish "$pid" "$tmp/b.log" 130
pid=
grep -q "^stopped by SIGINT (Ctrl-C) after step [0-9]* of 1000000: nothing saved (no --out)$" "$tmp/b.log" ||
    { echo "FAIL: no stop line:"; tail -n 5 "$tmp/b.log"; exit 1; }
echo "ok: Ctrl-C without --out"

# 3. Two ranks, SIGUSR1 to mpirun. `mpi` runs mpirun under timeout: the signal goes to mpirun itself.
start "$tmp/c.log" mpi 2 "$moelab" train "${args[@]}" --ep 2 --steps 1000000 --out "$tmp/c"
mpirun_pid=$(pgrep -f -- "^mpirun .*--out $tmp/c\$")
kill -USR1 "$mpirun_pid"
rc=0
wait "$pid" || rc=$?
pid=
[ $rc -ne 0 ] && [ $rc -ne 124 ] || { echo "FAIL: mpirun exited with $rc"; cat "$tmp/c.log"; exit 1; }
n=$(sed -n 's/^\[rank 0\] stopped by SIGUSR1 after step \([0-9]*\) of 1000000: go on with --resume .*$/\1/p' "$tmp/c.log")
[ -n "$n" ] || { echo "FAIL: no stop line:"; cat "$tmp/c.log"; exit 1; }
[ "$(ls "$tmp/c" | tr '\n' ' ')" = "step_$n.h5 step_$n.h5.part-0-of-2 step_$n.h5.part-1-of-2 " ] ||
    { echo "FAIL: expected step $n's index and two parts:"; ls -a "$tmp/c"; exit 1; }
"$moelab" ckpt verify "$tmp/c/step_$n.h5" >/dev/null
echo "ok: SIGUSR1 to mpirun stopped both ranks after step $n with its checkpoint"

rank_pid() {  # rank_pid DIR R: the process of rank R of the job saving into --out DIR
    local p
    for p in $(pgrep -f -- "--out $1 "); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" && { echo "$p"; return; }
    done
}
# A signal to one rank alone (rank 1): the ranks agree on it, and both stop after the same step with
# its checkpoint, rank 0 saying so.
start "$tmp/f.log" mpi 2 "$moelab" train "${args[@]}" --ep 2 --steps 1000000 --out "$tmp/f" --comm-timeout 20
r1=$(rank_pid "$tmp/f" 1)
[ -n "$r1" ] || { echo "FAIL: rank 1 not found"; exit 1; }
kill -TERM "$r1"
rc=0
wait "$pid" || rc=$?
pid=
n=$(sed -n 's/^\[rank 0\] stopped by SIGTERM after step \([0-9]*\) of 1000000: go on with --resume .*$/\1/p' "$tmp/f.log")
[ -n "$n" ] && [ -e "$tmp/f/step_$n.h5.part-1-of-2" ] || { echo "FAIL: rank 0 did not stop with rank 1 (exit $rc):"; cat "$tmp/f.log"; exit 1; }
"$moelab" ckpt verify "$tmp/f/step_$n.h5" >/dev/null
echo "ok: SIGTERM to rank 1 alone stopped both ranks after step $n with its checkpoint"

# 4. A second signal ends the run at once. Rank 1 stopped, rank 0 waits in the step's exchange (for
# up to --comm-timeout, 60 s here).
start "$tmp/d.log" mpi 2 "$moelab" train "${args[@]}" --ep 2 --steps 1000000 --out "$tmp/d" --comm-timeout 60
r0=$(rank_pid "$tmp/d" 0) r1=$(rank_pid "$tmp/d" 1)
[ -n "$r0" ] && [ -n "$r1" ] || { echo "FAIL: ranks not found ($r0, $r1)"; exit 1; }
kill -STOP "$r1"
kill -TERM "$r0"
for _ in $(seq 100); do grep -q "signal received" "$tmp/d.log" && break; sleep 0.1; done
grep -q "signal received" "$tmp/d.log" || { echo "FAIL: the first signal was not announced"; cat "$tmp/d.log"; exit 1; }
t0=$SECONDS
kill -TERM "$r0"
rc=0
wait "$pid" || rc=$?
pid=
[ $rc -ne 0 ] && [ $((SECONDS - t0)) -lt 30 ] ||
    { echo "FAIL: exit $rc after $((SECONDS - t0)) s, expected non-zero at once"; cat "$tmp/d.log"; exit 1; }
grep -q "rank 0 .*exited on signal 15" "$tmp/d.log" ||
    { echo "FAIL: rank 0 did not die of the second SIGTERM:"; cat "$tmp/d.log"; exit 1; }
grep -q "stopped by" "$tmp/d.log" && { echo "FAIL: the run stopped politely after a second signal"; exit 1; }
ls "$tmp/d" 2>/dev/null | grep -q "tmp-" && { echo "FAIL: temporaries left:"; ls "$tmp/d"; exit 1; }
echo "ok: a second signal ended the run at once (exit $rc)"

# 5. (The seam counts steps from 0: step 2 is the one logged as 3.)
rc=0
MOELAB_TEST_SIGNAL_AT_STEP=0:2:TERM "$moelab" train "${args[@]}" --steps 4 --out "$tmp/g" >"$tmp/g.log" 2>&1 || rc=$?
[ $rc = 143 ] && grep -q "^stopped by SIGTERM after step 3 of 4: go on with --resume $tmp/g/step_3.h5$" "$tmp/g.log" ||
    { echo "FAIL: SIGTERM as step 3 began (exit $rc):"; tail -n 3 "$tmp/g.log"; exit 1; }
echo "ok: SIGTERM during step 3 of 4 stopped the run after it"
# last_step LOG: the run of LOG completed although a SIGTERM came during its last step (4 of 4).
last_step() {
    grep -q "SIGTERM during the last step: the run is complete, no sample drawn$" "$1" &&
        grep -q "^\(\[rank 0\] \)\?validation loss .* nats/token" "$1" && ! grep -q "stopped by\|sample after training" "$1" ||
        { echo "FAIL: $1: a SIGTERM during the last step:"; cat "$1"; exit 1; }
}
rc=0
MOELAB_TEST_SIGNAL_AT_STEP=0:3:TERM "$moelab" train "${args[@]}" --steps 4 --sample-tokens 8 --out "$tmp/h" >"$tmp/h.log" 2>&1 || rc=$?
[ $rc = 0 ] || { echo "FAIL: exit $rc:"; tail -n 3 "$tmp/h.log"; exit 1; }
last_step "$tmp/h.log"
"$moelab" ckpt verify "$tmp/h/step_4.h5" >/dev/null
rc=0
mpi 2 -x MOELAB_TEST_SIGNAL_AT_STEP=1:3:TERM "$moelab" train "${args[@]}" --ep 2 --steps 4 --sample-tokens 8 \
    --out "$tmp/i" >"$tmp/i.log" 2>&1 || rc=$?
[ $rc = 0 ] || { echo "FAIL: the EP 2 run exited $rc:"; cat "$tmp/i.log"; exit 1; }
last_step "$tmp/i.log"
"$moelab" ckpt verify "$tmp/i/step_4.h5" >/dev/null
echo "ok: SIGTERM during the last step: the run completes, saved, without its sample (one process, EP 2)"
