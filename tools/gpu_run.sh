#!/bin/bash
# Runs what tools/gpu_build.sh put into .dist/, on the GPU machine, in stages (all by default):
#   tests      the kernel suite (gpu_test) and the whole-model suite (model_gpu_test)
#   sanitizer  compute-sanitizer memcheck and racecheck over the kernel suite
#   kernels    the kernel benchmark at the bench config's shapes
#   train      `moelab train --device cuda` on the quickstart config and data (QS_STEPS steps,
#              default 600), and the same run on the CPU alongside when QS_CPU=1
#   bench      `moelab bench --device cuda --config configs/bench.cfg` (with its time breakdown)
#   reference  the model on cuda-fp32 (tolerance 1e-4) and cuda (bf16: 1e-2, final weights 5e-2)
#              against the PyTorch reference of tests/reference (python3 with numpy and torch)
#   torch      tools/bench_torch.py, the PyTorch baseline of the same model (eager, torch.compile)
#   nccl       on NP GPUs (default 2) under mpirun: nccl_test (NCCL communicators, EP/DP training in
#              fp32 against one GPU), an unmatched NCCL all-reduce ending the job at its timeout,
#              and `moelab train --device cuda-fp32` with EP NP and DP NP against one GPU
#   ep_bench   on NP GPUs: EP dispatch + combine bandwidth (ep_bench a2a) against PyTorch's NCCL
#              all_to_all_single moving the same bytes (tools/bench_a2a.py), and training tokens/s
#              of configs/bench.cfg with EP 1 on one GPU, EP NP and DP NP (ep_bench train)
#   pp         on 4 GPUs: `moelab train --device cuda-fp32` with 1F1B PP 4, DualPipe PP 4, DualPipeV
#              PP 4 and DualPipe PP 2 x EP 2 (8 micro-batches) against one GPU with the same batch
#   pp_bench   on 4 GPUs: configs/bench.cfg (bf16), 8 micro-batches of PP_BATCH (default 8)
#              sequences: step time of 1F1B, DualPipe and DualPipeV at PP 4, each rank's measured
#              idle fraction from --trace against the §5 formula, and the measured timelines as SVG
# Logs go to $OUT (the device tool's result folder), or to ./out when OUT is unset.
#   usage: [STAGES="tests train ..."] bash tools/gpu_run.sh [gtest filter]
set -uo pipefail
cd "$(dirname "$0")/.."
# NVLink multicast stays off everywhere (NCCL, PyTorch, NVSHMEM): see the device tool's KINDS.md.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
log=${OUT:-out}
mkdir -p "$log"
filter=${1:-*}
stages=" ${STAGES:-tests sanitizer kernels train bench reference torch nccl ep_bench} "
np=${NP:-2}  # GPUs of the nccl and ep_bench stages
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
# mpirun with the variables every rank needs, bounded in time: mpi NP PROGRAM [ARGS...]
mpi() {
    local n=$1
    shift
    timeout "${MPI_TIMEOUT:-300}" mpirun --allow-run-as-root --oversubscribe \
        --mca btl_vader_single_copy_mechanism none -x NCCL_NVLS_ENABLE \
        -x TORCH_SYMM_MEM_DISABLE_MULTICAST -x NVSHMEM_DISABLE_NVLS -x OMP_NUM_THREADS -x LD_LIBRARY_PATH \
        -np "$n" "$@"
}
# Compares the loss and grad_norm of every step of run (metrics file) with the reference's within
# 1e-5 relative and expects `steps` steps: same_as ONE.jsonl RUN.jsonl LABEL STEPS
same_as() {
    local f
    for f in loss grad_norm; do
        paste <(grep -o "\"$f\": [-0-9.e]*" "$1" | awk '{print $2}') \
              <(grep -o "\"$f\": [-0-9.e]*" "$2" | awk '{print $2}') | awk -v run="$3" -v f=$f -v n="$4" '
            { d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1
              printf "%s step %d %s: %s vs one GPU %s\n", run, NR, f, $2, $1
              if (d > 1e-5 * s + 1e-6) bad = 1 }
            END { exit bad || NR != n }' || fail "moelab train $3 $f differs from one GPU"
    done
}
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

# dump_model runs the model on the GPU; moe_reference.py recomputes it in PyTorch (on the CPU).
if want reference; then
    if ! python3 -c "import numpy, torch" > "$log/reference_imports.txt" 2>&1; then
        fail "reference: python3 cannot import numpy and torch ($(tail -n 1 "$log/reference_imports.txt"))"
    else
        for dev in cuda-fp32 cuda; do
            # bf16 compute: about 3 significant digits per operation, so 1e-2 on logits, loss and
            # gradients; the weights after 5 AdamW steps amplify sign flips of tiny gradients.
            if [ $dev = cuda ]; then tol=1e-2 tol_final=5e-2; else tol=1e-4 tol_final=1e-4; fi
            echo "== dump_model --device $dev against the PyTorch reference (tolerance $tol, final.* $tol_final)"
            REF_DIR=tests/reference DUMP_MODEL=.dist/bin/dump_model PYTHON=python3 DEVICE=$dev TOL=$tol \
                TOL_FINAL=$tol_final bash tests/reference/reference_model_test.sh > "$log/reference_$dev.log" 2>&1
            s=$?
            grep -E "^== |passed, .* failed|FAIL" "$log/reference_$dev.log"
            [ "$s" = 0 ] || fail "reference $dev (see reference_$dev.log)"
        done
    fi
fi

if want torch; then
    echo "== PyTorch baseline (tools/bench_torch.py)"
    timeout "${TORCH_TIMEOUT:-400}" python3 tools/bench_torch.py --config configs/bench.cfg 2>&1 |
        tee "$log/bench_torch.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "bench_torch.py"
fi

if want nccl; then
    echo "== nccl_test on $np GPUs"
    mpi "$np" .dist/bin/nccl_test --gtest_filter="$filter" 2>&1 | tee "$log/nccl_test.log"
    [ "${PIPESTATUS[0]}" = 0 ] || fail nccl_test
    echo "== an unmatched NCCL all-reduce ends the job at its 3 s timeout"
    start=$(date +%s)
    MPI_TIMEOUT=90 mpi "$np" .dist/bin/nccl_test --gtest_also_run_disabled_tests --gtest_filter='*TimesOut' \
        > "$log/nccl_timeout.log" 2>&1
    s=$?
    took=$(($(date +%s) - start))
    grep "timed out" "$log/nccl_timeout.log"
    if [ "$s" != 0 ] && [ "$s" != 124 ] && [ "$took" -lt 60 ] &&
        grep -q "all-reduce on group world timed out after 3s" "$log/nccl_timeout.log"; then
        echo "ok: the job exited $s after ${took}s with the timeout message"
    else
        fail "NCCL timeout (exit $s after ${took}s, see nccl_timeout.log)"
    fi
    if [ -d .dist/data/quickstart ]; then
        echo "== moelab train --device cuda-fp32: EP $np and DP $np against one GPU (same global batch)"
        a=(train --config configs/quickstart.cfg --data .dist/data/quickstart --steps 3 --log-every 1
           --val-every 0 --val-batches 1 --sample-tokens 0 --batch-size 4 --device cuda-fp32)
        .dist/bin/moelab "${a[@]}" --grad-accum "$np" --metrics "$log/cli_one.jsonl" > "$log/cli_one.log" 2>&1 ||
            fail "moelab train on one GPU"
        mpi "$np" .dist/bin/moelab "${a[@]}" --ep "$np" --metrics "$log/cli_ep.jsonl" > "$log/cli_ep.log" 2>&1 ||
            fail "moelab train --ep $np"
        mpi "$np" .dist/bin/moelab "${a[@]}" --ep 1 --metrics "$log/cli_dp.jsonl" > "$log/cli_dp.log" 2>&1 ||
            fail "moelab train, DP $np"
        grep "grid:" "$log/cli_ep.log"
        for run in ep dp; do same_as "$log/cli_one.jsonl" "$log/cli_$run.jsonl" $run 3; done
    fi
fi

if want ep_bench; then
    echo "== EP dispatch + combine on $np GPUs, and PyTorch's all_to_all_single moving the same bytes"
    mpi "$np" .dist/bin/ep_bench a2a 2>&1 | tee "$log/ep_bench_a2a.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench a2a"
    timeout "${TORCH_TIMEOUT:-400}" python3 -m torch.distributed.run --standalone --nproc_per_node="$np" \
        tools/bench_a2a.py 2>&1 | grep -v "^W\|OMP_NUM_THREADS\|^\*" | tee -a "$log/ep_bench_a2a.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "bench_a2a.py"
    echo "== training tokens/s, configs/bench.cfg at its per-GPU batch: EP $np, EP 1 on one GPU, DP $np"
    mpi "$np" .dist/bin/ep_bench train --config configs/bench.cfg --ep "$np" 2>&1 | tee "$log/ep_bench_train.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train --ep $np"
    .dist/bin/ep_bench train --config configs/bench.cfg --ep 1 2>&1 | tee -a "$log/ep_bench_train.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train on one GPU"
    mpi "$np" .dist/bin/ep_bench train --config configs/bench.cfg --ep 1 2>&1 | tee -a "$log/ep_bench_train.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train, DP $np"
fi

if want pp; then
    if [ -d .dist/data/quickstart ]; then
        echo "== moelab train --device cuda-fp32 --pp on 4 GPUs against one GPU (same global batch)"
        # 8 layers: DualPipeV at PP 4 cuts the model into 8 stages.
        a=(train --config configs/quickstart.cfg --data .dist/data/quickstart --steps 3 --log-every 1
           --val-every 0 --val-batches 1 --sample-tokens 0 --batch-size 4 --n-layers 8 --device cuda-fp32)
        # PP 2 x EP 2 has two data-parallel pipelines: the one-GPU run reads both (16 micro-batches).
        for accum in 8 16; do
            .dist/bin/moelab "${a[@]}" --grad-accum $accum --metrics "$log/pp_one_$accum.jsonl" \
                > "$log/pp_one_$accum.log" 2>&1 || fail "moelab train on one GPU, --grad-accum $accum"
        done
        for run in "1f1b 4 1" "dualpipe 4 1" "dualpipev 4 1" "dualpipe 2 2"; do
            read -r kind pp ep <<< "$run"
            name=pp_${kind}_pp${pp}_ep$ep
            mpi 4 .dist/bin/moelab "${a[@]}" --schedule $kind --pp $pp --ep $ep --chunks 8 \
                --metrics "$log/$name.jsonl" > "$log/$name.log" 2>&1 || fail "moelab train $name"
            grep "pipeline:" "$log/$name.log" | head -n 1
            same_as "$log/pp_one_$((8 * 4 / pp)).jsonl" "$log/$name.jsonl" $name 3
        done
    else
        echo "gpu_run: no .dist/data/quickstart: pp stage skipped"
    fi
fi

if want pp_bench; then
    if [ -d .dist/data/quickstart ]; then
        b=${PP_BATCH:-8}
        echo "== pipeline schedules on 4 GPUs: configs/bench.cfg (bf16), PP 4, 8 micro-batches of $b x 2048"
        # The quickstart tokens, read with the bench model's vocabulary (ids < 2048 < 32768).
        a=(train --config configs/bench.cfg --data .dist/data/quickstart --vocab-size 2048 --steps 4
           --log-every 1 --val-every 0 --val-batches 1 --sample-tokens 0 --batch-size "$b" --device cuda)
        for kind in 1f1b dualpipe dualpipev; do
            mpi 4 .dist/bin/moelab "${a[@]}" --pp 4 --schedule $kind --chunks 8 --trace "$log/pp_trace_$kind.json" \
                --metrics "$log/pp_bench_$kind.jsonl" > "$log/pp_bench_$kind.log" 2>&1 || {
                fail "moelab train --pp 4 --schedule $kind (bench.cfg)"; continue; }
            # The last step (the traced one): its time from the global tokens and the rate.
            tps=$(grep -o '"tokens_per_s": [0-9.e+]*' "$log/pp_bench_$kind.jsonl" | tail -n 1 | awk '{print $2}')
            awk -v k=$kind -v t="$tps" -v n=$((8 * b * 2048)) \
                'BEGIN { printf "%s: last step %.1f ms (%.0f tok/s)\n", k, 1000 * n / t, t }' | tee -a "$log/pp_bench.txt"
            .dist/bin/moelab schedule --from-trace "$log/pp_trace_$kind.json" --svg "$log/pp_timeline_$kind.svg" \
                --kind $kind 2>&1 | grep -v "^rank" | tee -a "$log/pp_bench.txt"
            [ "${PIPESTATUS[0]}" = 0 ] || fail "moelab schedule --from-trace (pp_trace_$kind.json)"
        done
    else
        echo "gpu_run: no .dist/data/quickstart: pp_bench stage skipped"
    fi
fi

if [ -n "${cpu_pid:-}" ]; then
    wait "$cpu_pid" || fail "moelab train --device cpu"
    grep -E "validation" "$log/train_cpu.log"
fi
echo "gpu_run: $([ $rc = 0 ] && echo all passed || echo FAILED)"
exit $rc
