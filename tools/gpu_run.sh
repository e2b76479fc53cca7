#!/bin/bash
# Runs what tools/gpu_build.sh put into .dist/, on the GPU machine, in stages (all by default):
#   tests      the kernel suite (gpu_test) and the whole-model suite (model_gpu_test)
#   sanitizer  compute-sanitizer memcheck and racecheck over the kernel suite
#   kernels    the kernel benchmark at the bench config's shapes
#   train      `moelab train --device cuda` on the quickstart config and data (QS_STEPS steps,
#              default 600), and the same run on the CPU alongside when QS_CPU=1
#   bench      `moelab bench --device cuda --config configs/bench.cfg`
#   torch      tools/bench_torch.py, the PyTorch baseline of the same model (eager, torch.compile)
# Logs go to $OUT (the device tool's result folder), or to ./out when OUT is unset.
#   usage: [STAGES="tests train ..."] bash tools/gpu_run.sh [gtest filter]
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
log=${OUT:-out}
mkdir -p "$log"
filter=${1:-*}
stages=" ${STAGES:-tests sanitizer kernels train bench torch} "
want() { [[ "$stages" == *" $1 "* ]]; }
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
fail() { echo "gpu_run: $1 FAILED"; rc=1; }
qs_steps=${QS_STEPS:-600}
qs=(--config configs/quickstart.cfg --data .dist/data/quickstart --steps "$qs_steps" --sample-tokens 0)
if want train && [ "${QS_CPU:-0}" = 1 ] && [ -d .dist/data/quickstart ]; then
    # The CPU reference runs alongside the GPU stages (it needs no GPU).
    .dist/bin/moelab train "${qs[@]}" --device cpu --metrics "$log/quickstart_cpu.jsonl" > "$log/train_cpu.log" 2>&1 &
    cpu_pid=$!
fi

if want tests; then
    for t in gpu_test model_gpu_test; do
        echo "== $t"
        .dist/bin/$t --gtest_filter="$filter" --gtest_output="xml:$log/$t.xml" 2>&1 | tee "$log/$t.log"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "$t"
    done
fi

# Out-of-bounds accesses and shared-memory races, on the kernel tests minus the death tests (whose
# re-executed children would run outside the sanitizer).
if want sanitizer; then
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck; do
            echo "== compute-sanitizer --tool $tool"
            compute-sanitizer --tool "$tool" --error-exitcode 1 .dist/bin/gpu_test \
                --gtest_filter="$filter:-*Death*" > "$log/sanitizer_$tool.log" 2>&1
            s=$?
            tail -n 3 "$log/sanitizer_$tool.log"
            [ "$s" = 0 ] || fail "compute-sanitizer $tool (see its log)"
        done
    else
        echo "gpu_run: compute-sanitizer not found: sanitizer pass skipped"
    fi
fi

if want kernels; then
    echo "== kernel_bench"
    .dist/bin/kernel_bench 2>&1 | tee "$log/kernel_bench.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail kernel_bench
fi

if want train; then
    if [ -d .dist/data/quickstart ]; then
        echo "== moelab train --device cuda (quickstart, $qs_steps steps)"
        .dist/bin/moelab train "${qs[@]}" --device cuda --metrics "$log/quickstart_cuda.jsonl" 2>&1 |
            tee "$log/train_cuda.log" | grep -E "step .*val|validation"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "moelab train --device cuda"
    else
        echo "gpu_run: no .dist/data/quickstart: training stage skipped"
    fi
fi

if want bench; then
    echo "== moelab bench --device cuda"
    .dist/bin/moelab bench --device cuda --config configs/bench.cfg 2>&1 | tee "$log/bench_moelab.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "moelab bench"
fi

if want torch; then
    echo "== PyTorch baseline (tools/bench_torch.py)"
    timeout "${TORCH_TIMEOUT:-400}" python3 tools/bench_torch.py --config configs/bench.cfg 2>&1 |
        tee "$log/bench_torch.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "bench_torch.py"
fi

if [ -n "${cpu_pid:-}" ]; then
    wait "$cpu_pid" || fail "moelab train --device cpu"
    grep -E "validation" "$log/train_cpu.log"
fi
echo "gpu_run: $([ $rc = 0 ] && echo all passed || echo FAILED)"
exit $rc
