#!/bin/bash
# Runs the GPU tests that tools/gpu_build.sh put into .dist/, on the GPU machine: the whole gtest
# suite, then compute-sanitizer (memcheck, racecheck) over the kernels, the kernel benchmark at the
# bench config's shapes, and a moelab smoke check.
# Logs go to $OUT (the device tool's result folder), or to ./out when OUT is unset.
#   usage: bash tools/gpu_run.sh [gtest filter]
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
log=${OUT:-out}
mkdir -p "$log"
filter=${1:-*}
if [ ! -x .dist/bin/gpu_test ]; then
    echo "gpu_run: .dist/bin/gpu_test missing: run tools/gpu_build.sh first (on the build machine)"
    exit 2
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$log/gpu.txt"
date -u +"run at %Y-%m-%dT%H:%MZ" | tee -a "$log/gpu.txt"

# Use the carried copy of a library only where this machine lacks it.
fallback=$(mktemp -d)
for lib in $(ldd .dist/bin/* | awk '/not found/ {print $1}' | sort -u); do
    if [ -e ".dist/lib/$lib" ]; then ln -sf "$PWD/.dist/lib/$lib" "$fallback/$lib"; fi
done
export LD_LIBRARY_PATH=$fallback${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ldd .dist/bin/gpu_test > "$log/ldd.txt"
if grep -q "not found" "$log/ldd.txt"; then
    echo "gpu_run: libraries missing on this machine:"; grep "not found" "$log/ldd.txt"; exit 1
fi

rc=0
echo "== gpu_test"
.dist/bin/gpu_test --gtest_filter="$filter" --gtest_output="xml:$log/gpu_test.xml" 2>&1 |
    tee "$log/gpu_test.log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1

# Out-of-bounds accesses and shared-memory races, on the same tests minus the death tests (whose
# re-executed children would run outside the sanitizer).
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer --tool $tool"
        compute-sanitizer --tool "$tool" --error-exitcode 1 .dist/bin/gpu_test \
            --gtest_filter="$filter:-*Death*" > "$log/sanitizer_$tool.log" 2>&1
        s=$?
        tail -n 3 "$log/sanitizer_$tool.log"
        [ "$s" = 0 ] || { echo "gpu_run: compute-sanitizer $tool failed (see its log)"; rc=1; }
    done
else
    echo "gpu_run: compute-sanitizer not found: sanitizer pass skipped"
fi

echo "== kernel_bench"
.dist/bin/kernel_bench 2>&1 | tee "$log/kernel_bench.txt"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1

echo "== moelab --help"
.dist/bin/moelab --help > "$log/moelab_help.txt" 2>&1 || rc=1
head -n 3 "$log/moelab_help.txt"
echo "gpu_run: $([ $rc = 0 ] && echo all passed || echo FAILED)"
exit $rc
