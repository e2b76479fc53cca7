#!/bin/bash
# The scripts in tools/: --help prints each one's usage (its header comment) and exits 0 before it
# does anything (the quickstart's and the test suite's used to start installing and building), those
# that take no arguments refuse one with exit code 2, and the GPU scripts refuse bad stages and flags.
set -euo pipefail
tools="$TEST_SRCDIR/moelab/tools"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for s in "$tools"/*.sh; do
    name=$(basename "$s")
    [ "$name" = usage.sh ] && continue
    for flag in --help -h; do
        set +e
        bash "$s" "$flag" >"$tmp/out" 2>"$tmp/err"
        rc=$?
        set -e
        [ $rc -eq 0 ] || { echo "$name $flag: exit $rc"; cat "$tmp/err"; exit 1; }
        grep -q "usage:" "$tmp/out" || { echo "$name $flag: no usage line:"; cat "$tmp/out"; exit 1; }
        ! grep -q "^#" "$tmp/out" || { echo "$name $flag: comment markers left in:"; cat "$tmp/out"; exit 1; }
    done
    n=$((n + 1))
done
[ $n -ge 5 ] || { echo "only $n scripts found in $tools"; exit 1; }
for name in run_tests.sh install_deps.sh; do
    set +e
    bash "$tools/$name" --bogus >"$tmp/out" 2>"$tmp/err"
    rc=$?
    set -e
    [ $rc -eq 2 ] || { echo "$name --bogus: exit $rc, expected 2"; exit 1; }
    grep -q "unexpected argument '--bogus'" "$tmp/err" || { echo "$name --bogus:"; cat "$tmp/err"; exit 1; }
done
# Bad arguments of the GPU scripts, refused before anything runs (a misspelled stage ran nothing and
# reported "all passed"; --output_base without its DIR was a shell error).
expect2() {  # expect2 REGEX COMMAND...: exit 2 and REGEX on stderr
    local re=$1 rc=0
    shift
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ $rc -eq 2 ] && grep -qE -e "$re" "$tmp/err" || { echo "$*: exit $rc:"; cat "$tmp/err"; exit 1; }
}
STAGES="tests,train" expect2 "unknown stage 'tests,train'" bash "$tools/gpu_run.sh"
STAGES=test expect2 "unknown stage 'test'" bash "$tools/gpu_run.sh"
STAGES=tests expect2 "one test filter at most, got 2" bash "$tools/gpu_run.sh" 'A*' 'B*'
expect2 "--output_base needs a DIR" bash "$tools/gpu_build.sh" --output_base
echo "scripts_help_test: $n scripts"
