#!/bin/bash
# Builds the libFuzzer target of the checked checkpoint reader (fuzz_ckpt.c) with clang and runs it
# for a few seconds (FUZZ_SECONDS, default 5) from the checkpoints make_ckpt writes (a single file, and
# an index whose part files lie next to the fuzzed input). Fails on any crash or sanitizer report.
# Leaks are not checked: the reader's error exit is caught by a longjmp, which leaks by design (a real
# run exits there). Runs as a Bazel sh_test (sources and make_ckpt in runfiles).
set -euo pipefail

seconds="${FUZZ_SECONDS:-5}"
root="$TEST_SRCDIR/moelab"
work="${TEST_TMPDIR:-$(mktemp -d)}"
cc="${CLANG:-clang}"
command -v "$cc" >/dev/null || { echo "fuzz_ckpt_smoke: $cc not found (install Debian's clang)" >&2; exit 1; }

srcs=("$root/checkpoints/format.c" "$root/checkpoints/h5.c" "$root/framework/core/config.c" "$root/framework/core/json.c"
      "$root/framework/core/num.c" "$root/framework/core/log.c" "$root/framework/core/mem.c")
flags=(-g -O1 -std=c11 -D_GNU_SOURCE -I"$root" -I/usr/include/hdf5/serial -Wno-unknown-pragmas
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
"$cc" "${flags[@]}" "$root/tests/checkpoints/fuzz_ckpt.c" "${srcs[@]}" -o "$work/fuzz_ckpt" \
    -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5 -lm

mkdir -p "$work/seeds" "$work/run"
"$root/tests/checkpoints/make_ckpt" "$work/run" >/dev/null
mv "$work/run/single.h5" "$work/run/index.h5" "$work/seeds/"
echo "fuzz_ckpt_smoke: fuzz_ckpt for ${seconds}s"
if ! FUZZ_CKPT_DIR="$work/run" ASAN_OPTIONS=detect_leaks=0 "$work/fuzz_ckpt" -max_total_time="$seconds" \
        -max_len=65536 -rss_limit_mb=2048 -artifact_prefix="$work/crash-" "$work/seeds" >"$work/log" 2>&1; then
    tail -n 40 "$work/log" >&2
    echo "fuzz_ckpt_smoke: fuzz_ckpt found a failure (input saved under $work/crash-*)" >&2
    exit 1
fi
grep '^Done' "$work/log"
echo "fuzz_ckpt_smoke: ok"
