#!/bin/bash
# A full disk during `moelab train`: on a small tmpfs filled to several points before the run, the
# run ends with exit 1 and one message naming the file and "No space left on device" (never a
# signal), leaves no temporary file, and every checkpoint it did save verifies. A metrics file on a
# full disk fails the run too (exit 1), instead of leaving an empty file behind with exit 0. Under
# mpirun (EP 2) the job ends the same way and leaves no part file without its index, also where the
# index is what fails; the temporary file of a rank ended by another's MPI_Abort (no handler ran) is
# what `moelab ckpt clean` removes.
# Needs `mount -t tmpfs` (root); where mounting is not allowed the test says so and passes.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
mnt="$tmp/mnt"
mkdir -p "$mnt"
# Only root may mount: elsewhere the cases cannot run and the test says so. As root (CI, the README's
# test command) a failed mount is a failure, so that a machine that lost the right is noticed.
if ! mount -t tmpfs -o size=1M tmpfs "$mnt" 2>"$tmp/mount.err"; then
    if [ "$(id -u)" = 0 ]; then
        echo "FAIL: root cannot mount a tmpfs here ($(cat "$tmp/mount.err")): the full-disk cases did not run"
        exit 1
    fi
    echo "SKIP: not root, cannot mount a tmpfs ($(cat "$tmp/mount.err")): the full-disk cases did not run"
    exit 0
fi
# The mount goes whatever happens below (a failed check exits through this trap too), and so does
# mpi_env.sh's session directory.
trap 'umount "$mnt" || umount -l "$mnt"; rm -rf "$MPI_SESSION_DIR"' EXIT

args=("${tiny[@]}" --steps 3 --log-every 1 --batch-size 4 --save-every 1)

# run_full FILL_KB [mpi NP] ARGS...: fills the tmpfs with FILL_KB KB, runs `moelab train ARGS` (under
# mpirun with NP ranks after `mpi NP`), expects exit 1 with the full-disk message and no temporary
# file; every saved checkpoint must verify once `ckpt clean` removed the parts of uncommitted saves.
run_full() {
    local fill=$1 rc=0 launch=()
    shift
    if [ "$1" = mpi ]; then launch=(mpi "$2"); shift 2; fi
    rm -rf "${mnt:?}"/*
    head -c "${fill}K" /dev/zero >"$mnt/fill" 2>/dev/null || true
    "${launch[@]}" "$moelab" train "${args[@]}" "$@" >"$tmp/run.log" 2>&1 || rc=$?
    [ $rc = 1 ] || { echo "FAIL: fill ${fill}K: exit $rc, expected 1:"; tail -3 "$tmp/run.log"; exit 1; }
    grep -q "moelab: error.*No space left on device" "$tmp/run.log" ||
        { echo "FAIL: fill ${fill}K: no full-disk message:"; tail -3 "$tmp/run.log"; exit 1; }
    # HDF5's own report of a failed write (time, file, descriptor, errno, ...) is cut to the system's message.
    ! grep -q "error message = '" "$tmp/run.log" || { echo "FAIL: fill ${fill}K: HDF5's whole I/O report:"; tail -3 "$tmp/run.log"; exit 1; }
    [ ${#launch[@]} -gt 0 ] || [ "$(grep -c "moelab: error" "$tmp/run.log")" = 1 ] ||
        { echo "FAIL: fill ${fill}K: not one message"; exit 1; }
    # No part file without its index: the ranks put their parts in place only once every one has
    # written its own, and an index that fails takes the save's parts with it (a full disk at the
    # index's flush left all of them, review 2026-12-05).
    for p in "$mnt"/o/*.part-*; do
        [ -e "$p" ] || continue
        # A part's temporary file (step_2.h5.part-1-of-2.tmp-170) is the case below, not a part put
        # in place: matched here, it failed a CI run whenever a rank died before removing it.
        case "$p" in *.tmp-*) continue ;; esac
        [ -e "${p%.part-*}" ] || { echo "FAIL: fill ${fill}K: part file without its index: $p"; exit 1; }
    done
    # Under mpirun a rank ended by another rank's MPI_Abort in the middle of its own save may leave its
    # temporary file (no exit handler runs); `ckpt clean` is what removes it. One process leaves none.
    [ ${#launch[@]} = 0 ] || [ ! -d "$mnt/o" ] || "$moelab" ckpt clean "$mnt/o" >/dev/null
    find "$mnt" -name '*.tmp-*' >"$tmp/left"
    [ ! -s "$tmp/left" ] || { echo "FAIL: fill ${fill}K: temporary files left:"; cat "$tmp/left"; exit 1; }
    [ ! -d "$mnt/o" ] || "$moelab" ckpt clean "$mnt/o" >/dev/null
    for f in "$mnt"/o/step_*.h5; do
        [ -e "$f" ] || continue
        "$moelab" ckpt verify "$f" >/dev/null || { echo "FAIL: fill ${fill}K: $f does not verify"; exit 1; }
    done
    echo "ok: fill ${fill}K: exit 1, $(ls "$mnt/o" 2>/dev/null | wc -l) checkpoint(s) kept, no temporary file"
}

# A checkpoint of this model is about 0.55 MB: the saves fail at several points of the file.
for fill in 0 150 300 450 600 750 900; do run_full $fill --out "$mnt/o"; done
run_full 1024 --metrics "$mnt/m.jsonl"
# The metrics file keeps its whole lines only: none at all when the first does not fit (an empty
# file was left), every line whole where a later one does not (a cut last line made `moelab plot`
# refuse the whole file; sweep, 2026-12-05).
[ ! -e "$mnt/m.jsonl" ] || { echo "FAIL: a metrics file was left with no line in it"; exit 1; }
for fill in 1008 1016; do  # the config line and some of the steps' lines fit
    run_full $fill --metrics "$mnt/m.jsonl" --steps 1000
    [ "$(wc -l <"$mnt/m.jsonl")" -gt 1 ] && [ "$(tail -c 1 "$mnt/m.jsonl" | od -An -c | tr -d ' ')" = '\n' ] ||
        { echo "FAIL: fill ${fill}K: the metrics file does not end on a whole step line:"; tail -c 200 "$mnt/m.jsonl"; exit 1; }
    "$moelab" plot --metrics "$mnt/m.jsonl" --out "$tmp/m.svg" >/dev/null ||
        { echo "FAIL: fill ${fill}K: moelab plot refuses the metrics file left"; exit 1; }
    echo "ok: fill ${fill}K: the metrics file keeps its $(wc -l <"$mnt/m.jsonl") whole lines"
done
# A resumed run whose first line does not fit cuts the file back to the lines it kept (its run's up to
# the resumed step), not to nothing. Blank padding (passed over, kept) makes the file one page whole,
# so that the cut frees nothing and the new config line needs one more page of the full tmpfs.
"$moelab" train "${args[@]}" --out "$tmp/mo" --metrics "$tmp/m0.jsonl" >/dev/null 2>&1 ||
    { echo "FAIL: the run for the resumed metrics case failed"; exit 1; }
rm -rf "${mnt:?}"/*
"$py" - "$tmp/m0.jsonl" "$mnt/m.jsonl" "$tmp/kept.jsonl" <<'PY'
import sys
cfg, s1, s2, s3 = open(sys.argv[1], "rb").read().splitlines(keepends=True)
pad = 4096 - len(cfg) - len(s1) - len(s2) - len(s3)
kept = cfg + b" " * (pad - 1) + b"\n" + s1 + s2
open(sys.argv[2], "wb").write(kept + s3)
open(sys.argv[3], "wb").write(kept)
PY
head -c 1024K /dev/zero >"$mnt/fill" 2>/dev/null || true
rc=0
"$moelab" train "${args[@]}" --resume "$tmp/mo/step_2.h5" --metrics "$mnt/m.jsonl" >"$tmp/run.log" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "cannot write --metrics $mnt/m.jsonl: No space left on device" "$tmp/run.log" ||
    { echo "FAIL: resumed metrics on a full disk: exit $rc:"; tail -3 "$tmp/run.log"; exit 1; }
cmp -s "$mnt/m.jsonl" "$tmp/kept.jsonl" ||
    { echo "FAIL: the resumed run's kept metrics lines were not left as they were"; ls -l "$mnt"; exit 1; }
echo "ok: a resumed run's metrics file that fills the disk keeps the lines it kept"
for fill in 0 300 600; do run_full $fill mpi 2 --ep 2 --out "$mnt/o"; done
# Fills at which the first save's parts fit and its index does not (448-484K with this model on
# 2026-12-05): at least one of them must fail at the index, or the case above went untested.
index_failed=0
for fill in 440 450 460 470 480 490; do
    run_full $fill mpi 2 --ep 2 --out "$mnt/o"
    grep -q "error \[rank 0\].*checkpoint $mnt/o/step_[0-9]*\.h5: " "$tmp/run.log" && index_failed=1
done
[ $index_failed = 1 ] || { echo "FAIL: no fill made the index fail (the model's checkpoint size changed?)"; exit 1; }
# A save over another run's checkpoint of the same step whose parts do not fit (that run's model has
# larger experts): the old checkpoint stays whole, byte for byte. It was removed before the writing,
# so that such a save lost both (2026-12-05).
rm -rf "${mnt:?}"/*
mpi 2 "$moelab" train "${args[@]}" --steps 1 --ep 2 --out "$mnt/o" >"$tmp/run.log" 2>&1 ||
    { echo "FAIL: the first run into an empty tmpfs failed:"; tail -3 "$tmp/run.log"; exit 1; }
(cd "$mnt/o" && md5sum step_1.h5*) >"$tmp/before"
rc=0
mpi 2 "$moelab" train "${args[@]}" --steps 1 --ep 2 --d-expert 64 --out "$mnt/o" >"$tmp/run.log" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "moelab: error.*No space left on device" "$tmp/run.log" ||
    { echo "FAIL: the save over another run's checkpoint: exit $rc, expected 1 (a full disk):"; tail -3 "$tmp/run.log"; exit 1; }
"$moelab" ckpt clean "$mnt/o" >/dev/null
(cd "$mnt/o" && md5sum step_1.h5*) | diff "$tmp/before" - ||
    { echo "FAIL: a save that failed in its parts changed or removed the checkpoint it was to replace"; exit 1; }
"$moelab" ckpt verify "$mnt/o/step_1.h5" >/dev/null || { echo "FAIL: the old checkpoint does not verify"; exit 1; }
echo "ok: a save that fails in its parts keeps the other run's checkpoint of its step"

# export on a full disk: exit 1 with one user-facing line (it was check.h's "error [rank 0]
# tools/export/safetensors.c:84: ...", a source location in a one-process command: sweep,
# 2026-12-06), and no temporary folder left beside --out.
rm -rf "${mnt:?}"/*
"$moelab" train "${args[@]}" --steps 1 --out "$tmp/ck" >/dev/null 2>&1 || { echo "FAIL: train for export"; exit 1; }
for fill in 880 920 960 1000; do
    rm -rf "${mnt:?}"/*
    head -c "${fill}K" /dev/zero >"$mnt/fill" 2>/dev/null || true
    rc=0
    "$moelab" export --ckpt "$tmp/ck/step_1.h5" --out "$mnt/hf" >"$tmp/export.log" 2>&1 || rc=$?
    [ $rc = 1 ] && [ "$(grep -c "moelab: error" "$tmp/export.log")" = 1 ] &&
        grep -q "^moelab: error: export: cannot [a-z]* .*: No space left on device$" "$tmp/export.log" ||
        { echo "FAIL: export, fill ${fill}K: exit $rc, expected 1 and one full-disk line:"; cat "$tmp/export.log"; exit 1; }
    [ "$(ls -A "$mnt")" = fill ] || { echo "FAIL: export, fill ${fill}K: left $(ls -A "$mnt")"; exit 1; }
done
echo "ok: export on a full disk: exit 1, one line, nothing left"

# data prepare and train into new folders on a full disk: exit 1, and the folders they made are gone
# with their temporaries (the empty folders were left: review, 2026-12-06).
rm -rf "${mnt:?}"/*
mkdir -p "$tmp/text" && seq 1 20000 >"$tmp/text/a.txt"
head -c 1024K /dev/zero >"$mnt/fill" 2>/dev/null || true
rc=0
"$moelab" data prepare --input "$tmp/text" --vocab 300 --out "$mnt/new/data" >"$tmp/prep.log" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "No space left on device" "$tmp/prep.log" ||
    { echo "FAIL: data prepare on a full disk: exit $rc, expected 1:"; cat "$tmp/prep.log"; exit 1; }
rc=0
"$moelab" train "${args[@]}" --out "$mnt/run/ck" >"$tmp/run.log" 2>&1 || rc=$?
[ $rc = 1 ] || { echo "FAIL: train on a full disk: exit $rc, expected 1:"; tail -3 "$tmp/run.log"; exit 1; }
[ "$(ls -A "$mnt")" = fill ] || { echo "FAIL: a full disk left $(ls -A "$mnt")"; exit 1; }
echo "ok: data prepare and train on a full disk leave no folder they made"

