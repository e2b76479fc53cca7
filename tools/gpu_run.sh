#!/bin/bash
# Runs what tools/gpu_build.sh put into .dist/, on the GPU machine, in stages (all but trace, pp,
# pp_bench and rehearse by default):
#   tests      the kernel suite (gpu_test) and the whole-model suite (model_gpu_test)
#   sanitizer  compute-sanitizer memcheck, racecheck and initcheck over the kernel suite, minus the
#              death tests and the tests of cuDNN (*Cudnn*); racecheck also leaves out the grouped
#              linear and MoE layer tests (the CUTLASS grouped GEMMs), which it cannot run, and
#              initcheck the MoE layer test, below; a filter narrows it, e.g.
#              STAGES=sanitizer bash tools/gpu_run.sh 'Gpu.LinearGrouped*'
#   kernels    the kernel benchmark at the bench config's shapes, and its library baselines in the
#              same run (tools/bench_torch_kernels.py: PyTorch's grouped GEMM, cuDNN and
#              FlashAttention-2 through scaled_dot_product_attention); KERNELS_SECTIONS="attention"
#              (kernel_bench's long sections) times only those; with KERNELS_BASELINE=NAME,
#              .dist/bin/NAME (another build carried along) and this kernel_bench take turns twice
#              (kernel_bench_<i>_<name>.txt): a change timed against its parent with the same cuDNN
#   train      `moelab train --device cuda` on the quickstart config and data (QS_STEPS steps,
#              default 600), and with QS_CPU=1 the same run on the CPU alongside and then in fp32 on
#              the GPU (--device cuda-fp32), each run's validation line at the end; then `moelab
#              sample` on each device, and a run whose last step (3) is skipped (not finite, by the
#              test seam MOELAB_TEST_NAN_STEPS) leaving step 2's weights and moments
#   bench      `moelab bench --device cuda` on configs/bench.cfg and configs/bench_wide.cfg (with the
#              time breakdown; bench_wide only on a GPU of more than 80 GB, where it fits, unless
#              BENCH_CONFIGS names the configs, e.g. "bench_wide"); BENCH_ARGS adds arguments to
#              every bench run (e.g. "--recompute 1"); with BENCH_BASELINE=NAME, first the same with
#              .dist/bin/NAME, another build carried along (bench_baseline.txt): a change measured
#              against its parent in one run
#   trace      the bench configs once more, each under the kernel trace (tools/trace, CUDA_INJECTION64_PATH):
#              GPU busy and idle time of the timed steps, idle gaps by length, host waits, kernels by
#              time, the first 3000 in order (trace_<config>.txt; TRACE_CONFIGS, default "bench
#              bench_wide"; TRACE_SECONDS a config, default 3); not in the default stages
#   reference  the model on cuda-fp32 (tolerance 1e-4) and cuda (bf16: 2e-2, final weights 0.25,
#              final router biases 1.5)
#              against the PyTorch reference of tests/reference (python3 with numpy and torch)
#   torch      tools/bench_torch.py, the PyTorch baseline of the same model (eager, torch.compile)
#   nccl       on NP GPUs (default 2) under mpirun: nccl_test (NCCL communicators, EP/DP training in
#              fp32 against one GPU, EPLB's device dispatcher and runtime against their host twins
#              and EPLB training against none), an unmatched NCCL all-reduce ending the job at its timeout,
#              and `moelab train --device cuda-fp32` with EP NP and DP NP against one GPU, and EP NP
#              with --recompute 1 against EP NP without it (every printed digit)
#   ep_bench   on 2 and 4 GPUs (EP_NPS, default "2 4", those the machine has): EP dispatch + combine
#              bandwidth (ep_bench a2a: one exchange per direction) against PyTorch's NCCL
#              all_to_all_single moving the same bytes per rank (tools/bench_a2a.py under torchrun),
#              with their ratio; and weak scaling of configs/bench.cfg at its per-GPU batch (ep_bench
#              train): tokens/s per GPU at EP n (with the shared experts overlapping the dispatch,
#              without any overlap, --ep-overlap 0, and with 2 token chunks, --ep-chunks 2, whose
#              combines and dispatches overlap the other chunk's expert GEMMs) and DP n, without
#              and with ZeRO-1 (--zero 1), against one GPU, with each run's GPU memory peak, as a
#              table (ep_bench_scaling.txt): each row against the one above says what each overlap
#              hides, the ZeRO-1 row what sharding the optimizer saves (and its log line the
#              optimizer state per rank); the one-GPU baseline runs its step as a CUDA graph, which
#              runs of several processes do not (docs/gpu.md): a second column compares with one GPU
#              kernel by kernel (--cuda-graph 0), so that the table tells the graph's share apart
#   pp         on PP_NP GPUs (default 4, or 2 on a machine with fewer): `moelab train --device
#              cuda-fp32` with 1F1B, DualPipe and DualPipeV at PP PP_NP, and at 4 GPUs DualPipe PP 2 x
#              EP 2 (8 micro-batches), against one GPU with the same batch; DualPipe and DualPipeV
#              (and at 4 GPUs DualPipe PP 2 x EP 2) with the F&B overlap (--fb-overlap 1) equal to
#              the same runs without it (every printed digit)
#   pp_bench   on PP_NP GPUs: configs/bench.cfg (bf16), 8 micro-batches of PP_BATCH (default 8)
#              sequences: step time of 1F1B, DualPipe and DualPipeV at PP PP_NP (the last two with the F&B
#              overlap off and on; step 3 untraced, step 4 traced), each rank's measured idle fraction
#              from --trace against the §5 formula, and the measured timelines as SVG; then the
#              baseline, PyTorch's Schedule1F1B and ScheduleDualPipeV (tools/bench_torch_pp.py under
#              torchrun) on the same model, micro-batches and stage cut
#   eplb       on NP GPUs, --device cuda-fp32, quickstart model: EP NP rebalancing every 2 steps (NP
#              redundant slots) against the same run without EPLB (losses, norms within 1e-5), the
#              max/mean rank load of a skewed router falling after a rebalance, and checkpoints:
#              resume on one GPU bit-exact (fp32 and bf16), resume under EP NP with EPLB within 1e-5
#   eplb_bench on NP GPUs: configs/bench.cfg (bf16) with a skewed router, with and without EPLB
#              (EPLB_STEPS steps, default 36, rebalancing every 10, E/4 redundant slots): step time and
#              per-rank expert GEMM time per 5-step window, as a table (eplb_bench.txt); steps 31-35
#              are the steady state (the window of a rebalance includes its moves, the last one the
#              validation pass)
#   rehearse   the programs of the nccl, ep_bench and pp_bench stages at one rank, on one GPU, so that
#              a session without a machine of several GPUs still finds them broken before one comes:
#              nccl_test (its EPLB runtime and training tests skip), ep_bench a2a and bench_a2a.py,
#              ep_bench train with ZeRO-1, `moelab train --schedule dualpipev --fb-overlap 1 --trace`
#              into `moelab schedule --from-trace`, bench_torch_pp.py with both schedules; one rank
#              times no link: its figures are no benchmark
#   export     `moelab export` of a quickstart checkpoint (EXPORT_CKPT, or one trained here on the GPU for
#              EXPORT_STEPS steps, default 300) into a Hugging Face folder, then tools/export/hf_check.py
#              (python3 with torch and transformers): AutoModelForCausalLM (trust_remote_code) and
#              AutoTokenizer load it, the tokenizer's ids equal moelab's on validation text, the
#              validation loss of 4 x 8 windows equals moelab's (CPU, export_probe) within 1e-4, and
#              generate writes text (greedy twice the same)
# Logs go to $OUT (the device tool's result folder), or to ./out when OUT is unset.
#   usage: [STAGES="tests train ..."] bash tools/gpu_run.sh [gtest filter]
set -uo pipefail
source "$(dirname "$0")/usage.sh" "$@"
cd "$(dirname "$0")/.." || exit 1
# NVLink multicast stays off everywhere (NCCL, PyTorch, NVSHMEM): see the device tool's KINDS.md.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
log=${OUT:-out}
mkdir -p "$log"
filter=${1:-*}
stages=" ${STAGES:-tests sanitizer kernels train bench reference torch nccl ep_bench eplb eplb_bench export} "
np=${NP:-2}  # GPUs of the nccl, eplb and eplb_bench stages
want() { [[ "$stages" == *" $1 "* ]]; }
# A misspelled stage ran nothing and reported "all passed".
known=" tests sanitizer kernels train bench trace reference torch nccl ep_bench eplb eplb_bench export pp pp_bench rehearse "
for s in $stages; do
    [[ "$known" == *" $s "* ]] || { echo "gpu_run: unknown stage '$s' in STAGES (known:$known)" >&2; exit 2; }
done
[ $# -le 1 ] || { echo "gpu_run: one test filter at most, got $#" >&2; exit 2; }
if [ ! -x .dist/bin/gpu_test ]; then
    echo "gpu_run: .dist/bin/gpu_test missing: run tools/gpu_build.sh first (on the build machine)"
    exit 2
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$log/gpu.txt"
date -u +"run at %Y-%m-%dT%H:%MZ" | tee -a "$log/gpu.txt"
# The machine's GPUs (MIG devices apart). Every rank takes the GPU of its local rank: mpirun of more
# ranks than GPUs ends in "GPU n requested, but this process sees m GPU(s)".
ngpu=$(nvidia-smi -L | grep -c '^GPU')
pp_np=${PP_NP:-$([ "$ngpu" -ge 4 ] && echo 4 || echo 2)}  # GPUs (= pipeline ranks) of the pp and pp_bench stages

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

# cuDNN for the fused attention (layers/attention_cudnn.cu loads libcudnn.so.9 at run time, and
# runs the tensor-core kernels without it): PyTorch's copy, from its nvidia-cudnn package (or its
# own lib/), with the NVRTC of the same CUDA release (cuDNN compiles some kernels at run time).
cudnn_dirs=$(python3 - 2>/dev/null <<'PY'
import importlib, os
for mod, lib in (("nvidia.cudnn", "libcudnn.so.9"), ("torch", "libcudnn.so.9"), ("nvidia.cuda_nvrtc", None)):
    try:
        d = os.path.join(list(importlib.import_module(mod).__path__)[0], "lib")
    except Exception:
        continue
    if lib is None or os.path.exists(os.path.join(d, lib)):
        print(d)
PY
)
if [ -n "$(for d in $cudnn_dirs; do ls "$d"/libcudnn.so.9 2>/dev/null; done)" ]; then
    for d in $cudnn_dirs; do export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d; done
    echo "gpu_run: cuDNN from PyTorch's packages: $cudnn_dirs" | tr '\n' ' '; echo
else
    echo "gpu_run: no libcudnn.so.9 in PyTorch's packages: attention runs the tensor-core kernels"
fi

rc=0
fail() { echo "gpu_run: $1 FAILED"; rc=1; }
# fits N STAGE: this machine has N GPUs, or STAGE fails (and is skipped) saying so.
fits() { [ "$1" -le "$ngpu" ] || { fail "$2: $1 GPUs wanted (NP, PP_NP), this machine has $ngpu"; return 1; }; }
# mpirun with the variables every rank needs, bounded in time: mpi NP PROGRAM [ARGS...]
mpi() {
    local n=$1
    shift
    timeout "${MPI_TIMEOUT:-300}" mpirun --allow-run-as-root --oversubscribe \
        --mca btl_vader_single_copy_mechanism none -x NCCL_NVLS_ENABLE \
        -x TORCH_SYMM_MEM_DISABLE_MULTICAST -x NVSHMEM_DISABLE_NVLS -x OMP_NUM_THREADS -x LD_LIBRARY_PATH \
        -np "$n" "$@"
}
# Field values of every line of a metrics file: fields FILE NAME.
fields() { grep -o "\"$2\": [-0-9.e]*" "$1" | awk '{print $2}'; }
# same_run REF RUN LABEL N [TOL]: the loss and grad_norm lines of metrics RUN equal REF's, line by
# line, within TOL relative (default 1e-5; 0: the printed digits equal), over exactly N lines.
same_run() {
    local ref=$1 run=$2 label=$3 n=$4 tol=${5:-1e-5} f
    for f in loss grad_norm; do
        paste <(fields "$ref" $f) <(fields "$run" $f) | awk -v run="$label" -v f=$f -v n="$n" -v tol="$tol" '
            { d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1
              printf "%s line %d %s: %s vs %s\n", run, NR, f, $2, $1
              if (d > tol * (s + 0.1)) bad = 1 }
            END { exit bad || NR != n }' || fail "$label: $f differs"
    done
}
qs_steps=${QS_STEPS:-600}
qs=(--config configs/quickstart.cfg --data .dist/data/quickstart --steps "$qs_steps")
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

# Out-of-bounds accesses, shared-memory races and reads of uninitialized memory, on the kernel
# tests minus the death tests (whose re-executed children would run outside the sanitizer). Each
# test is its own sanitized process and as many run at once as the machine has cores, at most 16
# (all of them on one GPU, whose memory they share): the tools' cost is on the host, and racecheck
# over the suite in one process needs far more than a device call's 10 minutes (2026-12-06 on an
# H100 with 16 cores: memcheck and racecheck 402 s together, initcheck 13 to 80 s).
if want sanitizer; then
    if command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck initcheck; do
            echo "== compute-sanitizer --tool $tool"
            # racecheck breaks the CUTLASS grouped forward and backward_input (2026-12-04: the process
            # fails with "Internal Sanitizer Error ... hardware exception" even with no kernel
            # instrumented, --kernel-name kns=no_such_kernel); memcheck covers their tests.
            skip="*Death*:*Cudnn*"
            [ "$tool" = racecheck ] && skip="$skip:*LinearGrouped*:*MoeLayer*"
            # initcheck does not see cuBLAS's writes (a probe had every word of a beta-0 GEMM's output
            # reported): it reports the MoE layer's kernels reading cuBLAS's outputs (router logits,
            # shared-expert products) from buffers no fill wrote (docs/gpu.md, "Not done yet").
            [ "$tool" = initcheck ] && skip="$skip:*MoeLayerMatchesCpu*"
            dir="$log/sanitizer_$tool"
            mkdir -p "$dir"
            .dist/bin/gpu_test --gtest_list_tests --gtest_filter="$filter:-$skip" |
                awk '/^[^ ]/ { suite = $1; next } { print suite $1 }' |
                xargs -P "$(($(nproc) < 16 ? $(nproc) : 16))" -I{} sh -c 'compute-sanitizer --tool "$1" --error-exitcode 1 \
                    .dist/bin/gpu_test --gtest_filter="$2" > "$3/$2.log" 2>&1 || echo "$2"' _ "$tool" {} "$dir" \
                > "$dir/failed.txt"
            echo "$(ls "$dir" | grep -c '\.log$') tests, $(grep -l "ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards" "$dir"/*.log | wc -l) clean"
            [ -s "$dir/failed.txt" ] && fail "compute-sanitizer $tool: $(tr '\n' ' ' < "$dir/failed.txt")(see $dir)"
        done
    else
        # Named in STAGES, the stage must run; in the default list, a machine without the tool
        # skips it with a line.
        if [ -n "${STAGES:-}" ]; then fail "sanitizer: compute-sanitizer not found, the stage did not run"
        else echo "gpu_run: compute-sanitizer not found: sanitizer stage skipped"; fi
    fi
fi

if want kernels; then
    # With KERNELS_BASELINE, that build and this one take turns twice (base, new, base, new), so that
    # a change is timed against its parent in one run, on the same card and the same cuDNN.
    runs=kernel_bench
    [ -n "${KERNELS_BASELINE:-}" ] && runs="$KERNELS_BASELINE kernel_bench $KERNELS_BASELINE kernel_bench"
    i=0
    for bin in $runs; do
        i=$((i + 1))
        out=$([ "$runs" = kernel_bench ] && echo kernel_bench || echo "kernel_bench_${i}_$bin")
        echo "== .dist/bin/$bin ${KERNELS_SECTIONS:-}"
        # The section names unquoted: each is an argument.
        ".dist/bin/$bin" ${KERNELS_SECTIONS:-} 2>&1 | tee "$log/$out.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "$bin"
    done
    echo "== bench_torch_kernels.py (the library baselines)"
    python3 tools/bench_torch_kernels.py 2>&1 | tee "$log/kernel_baselines.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail bench_torch_kernels
fi

if want train; then
    if [ -d .dist/data/quickstart ]; then
        echo "== moelab train --device cuda (quickstart, $qs_steps steps)"
        qs_ckpt=$(mktemp -d)
        .dist/bin/moelab train "${qs[@]}" --device cuda --metrics "$log/quickstart_cuda.jsonl" \
            --out "$qs_ckpt" 2>&1 | tee "$log/train_cuda.log" | grep -a -E "step .*val|validation|sample|^  [|]"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "moelab train --device cuda"
        # `moelab sample` from the run's checkpoint on each device, the same seed: fp32 on the GPU
        # draws the CPU's text but where a draw falls within rounding of a boundary; bf16 its own.
        for dev in cpu cuda-fp32 cuda; do
            echo "== moelab sample --device $dev"
            .dist/bin/moelab sample --ckpt "$qs_ckpt/step_$qs_steps.h5" --data .dist/data/quickstart \
                --prompt "The" --tokens 60 --seed 3 --device "$dev" > "$log/sample_$dev.txt" 2>&1 ||
                fail "moelab sample --device $dev"
            cat -v "$log/sample_$dev.txt"
        done
        rm -rf "$qs_ckpt"
        # A step made non-finite (the test seam MOELAB_TEST_NAN_STEPS) and skipped, on the GPU, where
        # the third step replays the CUDA graph: the checkpoint after it (the last step's, saved once
        # the final validation found its weights sound) holds the weights and AdamW moments of the
        # one before (`moelab ckpt inspect`'s tensor table, every digit).
        echo "== moelab train --device cuda, its last step (3) skipped"
        skip_ckpt=$(mktemp -d)
        MOELAB_TEST_NAN_STEPS=2 .dist/bin/moelab train "${qs[@]}" --steps 3 --device cuda --nonfinite-skip 1 \
            --save-every 1 --sample-tokens 0 --out "$skip_ckpt" > "$log/train_skip.log" 2>&1 ||
            fail "moelab train --device cuda with a skipped step"
        for s in 1 2 3; do
            .dist/bin/moelab ckpt inspect "$skip_ckpt/step_$s.h5" | sed -n '/^tensor/,$p' > "$log/skip_step_$s.txt"
        done
        # (Step 2's table differs from step 1's: the table shows an applied step.)
        if [ -s "$log/skip_step_2.txt" ] && cmp -s "$log/skip_step_2.txt" "$log/skip_step_3.txt" &&
            ! cmp -s "$log/skip_step_1.txt" "$log/skip_step_2.txt"; then
            echo "ok: the skipped step 3 left step 2's weights and moments"
        else
            fail "the skipped step 3 changed the weights or moments of step 2 ($log/skip_step_*.txt)"
        fi
        rm -rf "$skip_ckpt"
    else
        echo "gpu_run: no .dist/data/quickstart: training stage skipped"
    fi
fi

# bench_wide.cfg's step peaks at 79.3 GiB: on a GPU of 80 GB (an H100) it runs out of memory, so the
# bench and trace stages leave it out there, saying so.
gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1)
bench_configs=${BENCH_CONFIGS:-bench bench_wide}
if [ -z "${BENCH_CONFIGS:-}" ] && [ "${gpu_mib:-0}" -lt 100000 ]; then
    bench_configs="bench"
    if want bench || want trace; then
        echo "gpu_run: bench_wide.cfg left out: it needs a GPU of more than 80 GB, this one has $gpu_mib MiB" \
            "(BENCH_CONFIGS=bench_wide BENCH_ARGS=\"--recompute 1\" fits it)"
    fi
fi

if want bench; then
    for bin in ${BENCH_BASELINE:+"$BENCH_BASELINE"} moelab; do
        out=$([ "$bin" = moelab ] && echo bench_moelab || echo bench_baseline)
        echo "== .dist/bin/$bin bench --device cuda"
        # (BENCH_ARGS unquoted: each word is an argument.)
        ".dist/bin/$bin" bench --device cuda $(for c in $bench_configs; do echo --config configs/$c.cfg; done) \
            ${BENCH_ARGS:-} 2>&1 |
            tee "$log/$out.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "$bin bench"
    done
fi

# The same benchmark under the kernel trace (tools/trace): per config, the GPU's busy and idle time in
# the timed steps, the host waits and the kernels by time. CUPTI's own cost shows as the tokens/s
# against the bench stage's.
if want trace; then
    if [ ! -e .dist/trace/libkernel_trace.so ]; then
        fail "trace: .dist/trace/libkernel_trace.so missing (tools/gpu_build.sh)"
    else
        for cfg in ${TRACE_CONFIGS:-$bench_configs}; do
            echo "== moelab bench --device cuda --config configs/$cfg.cfg under tools/trace"
            LD_LIBRARY_PATH=$PWD/.dist/trace:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/.dist/trace/libkernel_trace.so \
                .dist/bin/moelab bench --device cuda --config configs/$cfg.cfg --seconds "${TRACE_SECONDS:-3}" \
                > "$log/trace_$cfg.txt" 2>&1 || fail "trace $cfg"
            grep -v "^kernel_trace: seq" "$log/trace_$cfg.txt" | grep -m 30 "^kernel_trace:\|\.cfg "
        done
    fi
fi

# dump_model runs the model on the GPU; moe_reference.py recomputes it in PyTorch (on the CPU).
if want reference; then
    if ! python3 -c "import numpy, torch" > "$log/reference_imports.txt" 2>&1; then
        fail "reference: python3 cannot import numpy and torch ($(tail -n 1 "$log/reference_imports.txt"))"
    else
        for dev in cuda-fp32 cuda; do
            # bf16 compute (measured on an H200, 2026-12-06, four configs and two more seeds): the
            # gradients of q and k (through the softmax) and of a norm gain come out 1.0-1.4e-2 from
            # float64 also with K = E, where no choice of experts can flip, so 2e-2 on logits, loss
            # and gradients (model_gpu_test's per-tensor bf16 bound against the CPU). The weights
            # after 5 AdamW steps: 0.05-0.16 (AdamW's first steps move a weight by about lr·sign(g),
            # and bf16 turns the sign of the gradients near zero; a choice of experts that flips
            # moves the experts' more), so 0.25; the router biases move by ±bias_rate a step by the
            # sign of their load, which one flipped choice turns: 0.2-0.9, so 1.5, which still fails
            # biases moved the wrong way (2); one left unmoved (1) fails the cuda-fp32 run's 1e-4.
            if [ $dev = cuda ]; then tol=2e-2 tol_final=0.25 tol_bias=1.5; else tol=1e-4 tol_final=1e-4 tol_bias=1e-4; fi
            echo "== dump_model --device $dev against the PyTorch reference (tolerance $tol, final.* $tol_final, router biases $tol_bias)"
            REF_DIR=tests/reference DUMP_MODEL=.dist/bin/dump_model PYTHON=python3 DEVICE=$dev TOL=$tol \
                TOL_FINAL=$tol_final TOL_BIAS=$tol_bias bash tests/reference/reference_model_test.sh > "$log/reference_$dev.log" 2>&1
            s=$?
            grep -E "^== |passed, .* failed|FAIL" "$log/reference_$dev.log"
            [ "$s" = 0 ] || fail "reference $dev (see reference_$dev.log)"
        done
    fi
fi

if want torch; then
    echo "== PyTorch baseline (tools/bench_torch.py)"
    for cfg in configs/bench.cfg configs/bench_wide.cfg; do
        timeout "${TORCH_TIMEOUT:-400}" python3 tools/bench_torch.py --config "$cfg" 2>&1 || exit 1
    done | tee "$log/bench_torch.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "bench_torch.py"
fi

if want nccl && fits "$np" nccl; then
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
        for run in ep dp; do same_run "$log/cli_one.jsonl" "$log/cli_$run.jsonl" "moelab train $run vs one GPU" 3; done
        # Recomputation under EP: the run without it, every printed digit (the CPU tests compare
        # the checkpoints bit for bit: tests/parallel/recompute_cli_test.sh).
        mpi "$np" .dist/bin/moelab "${a[@]}" --ep "$np" --recompute 1 --metrics "$log/cli_ep_recompute.jsonl" \
            > "$log/cli_ep_recompute.log" 2>&1 || fail "moelab train --ep $np --recompute 1"
        same_run "$log/cli_ep.jsonl" "$log/cli_ep_recompute.jsonl" "moelab train ep --recompute 1 vs ep" 3 0
    fi
fi

if want rehearse; then
    echo "== rehearsal: the programs of the nccl, ep_bench and pp_bench stages at one rank (no link is timed)"
    # rehearse NAME PATTERN COMMAND...: the command's log is rehearse_NAME.log; its lines that match
    # PATTERN show here.
    rehearse() {
        local name=$1 pattern=$2
        shift 2
        "$@" > "$log/rehearse_$name.log" 2>&1 || fail "rehearse $name (see rehearse_$name.log)"
        grep -E "$pattern" "$log/rehearse_$name.log"
    }
    torchrun1() { timeout "${TORCH_TIMEOUT:-400}" python3 -m torch.distributed.run --standalone --nproc_per_node=1 "$@"; }
    rehearse nccl_test "PASSED|FAILED" mpi 1 .dist/bin/nccl_test
    rehearse ep_bench_a2a "^ep_bench a2a:" mpi 1 .dist/bin/ep_bench a2a
    rehearse bench_a2a "^torch all_to_all_single:" torchrun1 tools/bench_a2a.py
    rehearse ep_bench_train "^ep_bench train:|^zero-1" mpi 1 .dist/bin/ep_bench train --config configs/bench.cfg \
        --ep 1 --zero 1 --steps 2
    if [ -d .dist/data/quickstart ]; then
        rehearse pp_train "^pipeline:|^step " mpi 1 .dist/bin/moelab train --config configs/bench.cfg \
            --data .dist/data/quickstart --vocab-size 2048 --steps 2 --log-every 1 --val-every 0 --val-batches 1 \
            --sample-tokens 0 --batch-size 2 --device cuda --schedule dualpipev --chunks 8 --fb-overlap 1 \
            --trace "$log/rehearse_trace.json"
        rehearse pp_schedule "^idle per rank" .dist/bin/moelab schedule --from-trace "$log/rehearse_trace.json" \
            --kind dualpipev --svg "$log/rehearse_timeline.svg"
    else
        echo "gpu_run: no .dist/data/quickstart: the rehearsal's pipeline run skipped"
    fi
    rehearse bench_torch_pp "^torch pipelining" torchrun1 tools/bench_torch_pp.py --config configs/bench.cfg \
        --vocab-size 2048 --schedule 1f1b,dualpipev --microbatches 8 --batch-size 2 --steps 2
fi

if want ep_bench; then
    # The GPU counts of this stage: EP_NPS (default "2 4"), those this machine has.
    ep_nps=""
    for n in ${EP_NPS:-2 4}; do if [ "$n" -ge 2 ] && [ "$n" -le "$ngpu" ]; then ep_nps="$ep_nps $n"; fi; done
    [ -n "$ep_nps" ] || fail "ep_bench: no GPU count of EP_NPS='${EP_NPS:-2 4}' fits this machine's $ngpu GPUs"
    : > "$log/ep_bench_a2a.txt"
    : > "$log/ep_bench_train.txt"
    # The GB/s per rank of the line of FILE starting with PREFIX (the first figure "= X GB/s per rank").
    gbs() { grep "^$2" "$1" | tail -1 | sed -n 's/.* = \([0-9.]*\) GB\/s per rank.*/\1/p'; }
    # Tokens/s per GPU of the last line of FILE starting with PREFIX.
    per_gpu() { grep "^$2" "$1" | tail -1 | sed -n 's/.*tokens\/s (\([0-9]*\) per GPU.*/\1/p'; }
    for n in $ep_nps; do
        echo "== EP dispatch + combine on $n GPUs, and PyTorch's all_to_all_single moving the same bytes"
        mpi "$n" .dist/bin/ep_bench a2a 2>&1 | tee "$log/ep_bench_a2a_$n.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench a2a on $n GPUs"
        timeout "${TORCH_TIMEOUT:-400}" python3 -m torch.distributed.run --standalone --nproc_per_node="$n" \
            tools/bench_a2a.py 2>&1 | grep -v "^W\|OMP_NUM_THREADS\|^\*" | tee -a "$log/ep_bench_a2a_$n.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "bench_a2a.py on $n GPUs"
        ours=$(gbs "$log/ep_bench_a2a_$n.txt" "ep_bench a2a:") theirs=$(gbs "$log/ep_bench_a2a_$n.txt" "torch all_to_all_single:")
        planned=$(grep "^ep_bench a2a:" "$log/ep_bench_a2a_$n.txt" | sed -n 's/.*with the plan [0-9.]* ms = \([0-9.]*\) GB\/s.*/\1/p')
        if [ -n "$ours" ] && [ -n "$theirs" ] && [ -n "$planned" ]; then
            awk -v n="$n" -v a="$ours" -v b="$theirs" -v c="$planned" 'BEGIN {
                printf "ep_bench a2a / torch all_to_all_single on %d GPUs: %.1f / %.1f GB/s per rank = %.2f ", n, a, b, a / b
                printf "(with the plan and its count exchange: %.1f GB/s = %.2f)\n", c, c / b }' | tee -a "$log/ep_bench_a2a_$n.txt"
        else
            fail "ep_bench a2a on $n GPUs: no GB/s figures to compare"
        fi
        cat "$log/ep_bench_a2a_$n.txt" >> "$log/ep_bench_a2a.txt"
    done
    echo "== weak scaling of configs/bench.cfg at its per-GPU batch: one GPU, then EP n (without overlap, with the shared-expert overlap, with 2 token chunks) and DP n for n in$ep_nps"
    .dist/bin/ep_bench train --config configs/bench.cfg --ep 1 2>&1 | sed 's/^ep_bench train:/ep_bench train one GPU:/' | tee -a "$log/ep_bench_train.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train on one GPU"
    .dist/bin/ep_bench train --config configs/bench.cfg --ep 1 --cuda-graph 0 2>&1 |
        sed 's/^ep_bench train:/ep_bench train one GPU no graph:/' | tee -a "$log/ep_bench_train.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train on one GPU without the CUDA graph"
    for n in $ep_nps; do
        mpi "$n" .dist/bin/ep_bench train --config configs/bench.cfg --ep "$n" 2>&1 | sed "s/^ep_bench train:/ep_bench train EP $n:/" | tee -a "$log/ep_bench_train.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train --ep $n"
        # Without the shared experts overlapping the dispatch (--ep-overlap 0), to measure the overlap.
        mpi "$n" .dist/bin/ep_bench train --config configs/bench.cfg --ep "$n" --ep-overlap 0 2>&1 | sed "s/^ep_bench train:/ep_bench train EP $n no overlap:/" | tee -a "$log/ep_bench_train.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train --ep $n without overlap"
        # Two token chunks per MoE layer on top of the shared-expert overlap (--ep-chunks 2).
        mpi "$n" .dist/bin/ep_bench train --config configs/bench.cfg --ep "$n" --ep-chunks 2 2>&1 | sed "s/^ep_bench train:/ep_bench train EP $n 2 chunks:/" | tee -a "$log/ep_bench_train.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train --ep $n --ep-chunks 2"
        mpi "$n" .dist/bin/ep_bench train --config configs/bench.cfg --ep 1 2>&1 | sed "s/^ep_bench train:/ep_bench train DP $n:/" | tee -a "$log/ep_bench_train.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train, DP $n"
        # ZeRO-1 (--zero 1): the AdamW moments and fp32 master weights sharded over the n DP
        # ranks; its log line says the optimizer state per rank, the peak column what the GPU saved.
        mpi "$n" .dist/bin/ep_bench train --config configs/bench.cfg --ep 1 --zero 1 2>&1 | sed "s/^ep_bench train:/ep_bench train DP $n ZeRO-1:/" | tee -a "$log/ep_bench_train.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "ep_bench train, DP $n ZeRO-1"
    done
    # Weak-scaling efficiency: tokens/s per GPU against the one-GPU run's, and each run's GPU memory peak.
    one=$(per_gpu "$log/ep_bench_train.txt" "ep_bench train one GPU:")
    one_kbk=$(per_gpu "$log/ep_bench_train.txt" "ep_bench train one GPU no graph:")
    peak() { grep "^$2" "$1" | tail -1 | sed -n 's/.*| peak \([0-9.]*\) GiB.*/\1/p'; }
    {
        printf "%-24s %16s %12s %21s %10s\n" "run" "tokens/s per GPU" "vs one GPU" "vs one GPU, no graph" "peak GiB"
        for run in "one GPU" "one_GPU_no_graph" $(for n in $ep_nps; do echo "EP_${n}_no_overlap EP_$n EP_${n}_2_chunks DP_$n DP_${n}_ZeRO-1"; done); do
            label=$(echo "$run" | tr '_' ' ')
            t=$(per_gpu "$log/ep_bench_train.txt" "ep_bench train $label:")
            m=$(peak "$log/ep_bench_train.txt" "ep_bench train $label:")
            awk -v l="$label" -v t="${t:-0}" -v o="${one:-0}" -v k="${one_kbk:-0}" -v m="${m:-0}" 'BEGIN {
                printf "%-24s %16.0f %11.1f%% %20.1f%% %10.2f\n", l, t, (o > 0 ? 100 * t / o : 0), (k > 0 ? 100 * t / k : 0), m }'
        done
        grep "zero-1: optimizer state" "$log/ep_bench_train.txt" | sed 's/^\[[^]]*\] *//' | sort -u
    } | tee "$log/ep_bench_scaling.txt"
fi

if want pp && fits "$pp_np" pp; then
    if [ -d .dist/data/quickstart ]; then
        echo "== moelab train --device cuda-fp32 --pp on $pp_np GPUs against one GPU (same global batch)"
        # 8 layers: DualPipeV at PP 4 cuts the model into 8 stages.
        a=(train --config configs/quickstart.cfg --data .dist/data/quickstart --steps 3 --log-every 1
           --val-every 0 --val-batches 1 --sample-tokens 0 --batch-size 4 --n-layers 8 --device cuda-fp32)
        runs=("1f1b $pp_np 1" "dualpipe $pp_np 1" "dualpipev $pp_np 1")
        [ "$pp_np" = 4 ] && runs+=("dualpipe 2 2")
        for run in "${runs[@]}"; do
            read -r kind pp ep <<< "$run"
            name=pp_${kind}_pp${pp}_ep$ep
            # DP = pp_np / pp pipelines of 8 micro-batches: the one-GPU run reads them all.
            accum=$((8 * pp_np / pp))
            [ -f "$log/pp_one_$accum.jsonl" ] || .dist/bin/moelab "${a[@]}" --grad-accum $accum \
                --metrics "$log/pp_one_$accum.jsonl" > "$log/pp_one_$accum.log" 2>&1 ||
                fail "moelab train on one GPU, --grad-accum $accum"
            mpi "$pp_np" .dist/bin/moelab "${a[@]}" --schedule $kind --pp $pp --ep $ep --chunks 8 \
                --metrics "$log/$name.jsonl" > "$log/$name.log" 2>&1 || fail "moelab train $name"
            grep "pipeline:" "$log/$name.log" | head -n 1
            same_run "$log/pp_one_$accum.jsonl" "$log/$name.jsonl" "moelab train $name vs one GPU" 3
        done
        # The F&B overlap only changes which kernels run at once: the same numbers as without it.
        # With EP the two halves' all-to-alls run at once too, each pipe on its own EP groups.
        fb_runs=("dualpipe $pp_np 1" "dualpipev $pp_np 1")
        [ "$pp_np" = 4 ] && fb_runs+=("dualpipe 2 2")
        for run in "${fb_runs[@]}"; do
            read -r kind pp ep <<< "$run"
            name=pp_${kind}_pp${pp}_ep$ep
            mpi "$pp_np" .dist/bin/moelab "${a[@]}" --schedule $kind --pp $pp --ep $ep --chunks 8 --fb-overlap 1 \
                --metrics "$log/${name}_fb.jsonl" > "$log/${name}_fb.log" 2>&1 || fail "moelab train $name --fb-overlap 1"
            grep "F&B ops" "$log/${name}_fb.log" | head -n 1
            same_run "$log/$name.jsonl" "$log/${name}_fb.jsonl" "moelab train $name, F&B overlap vs none" 3 0
        done
    else
        echo "gpu_run: no .dist/data/quickstart: pp stage skipped"
    fi
fi

if want pp_bench && fits "$pp_np" pp_bench; then
    if [ -d .dist/data/quickstart ]; then
        b=${PP_BATCH:-8}
        echo "== pipeline schedules on $pp_np GPUs: configs/bench.cfg (bf16), PP $pp_np, 8 micro-batches of $b x 2048"
        # The quickstart tokens, read with the bench model's vocabulary (ids < 2048 < 32768).
        a=(train --config configs/bench.cfg --data .dist/data/quickstart --vocab-size 2048 --steps 4
           --log-every 1 --val-every 0 --val-batches 1 --sample-tokens 0 --batch-size "$b" --device cuda)
        for run in "1f1b 0" "dualpipe 0" "dualpipe 1" "dualpipev 0" "dualpipev 1"; do
            read -r kind fb <<< "$run"
            name=$kind$([ "$fb" = 1 ] && echo _fb)
            mpi "$pp_np" .dist/bin/moelab "${a[@]}" --pp "$pp_np" --schedule $kind --chunks 8 --fb-overlap $fb \
                --trace "$log/pp_trace_$name.json" --metrics "$log/pp_bench_$name.jsonl" > "$log/pp_bench_$name.log" 2>&1 || {
                fail "moelab train --pp $pp_np --schedule $kind --fb-overlap $fb (bench.cfg)"; continue; }
            # Step times from the global tokens and the rate: step 3 (untraced) and the last step
            # (traced: the host waits for the GPU after every op).
            tps=$(grep -o '"tokens_per_s": [0-9.e+]*' "$log/pp_bench_$name.jsonl" | awk '{print $2}' | tail -n 2 | paste -sd' ')
            awk -v k=$kind -v fb=$fb -v t="$tps" -v n=$((8 * b * 2048)) 'BEGIN { split(t, r, " ")
                printf "%s, F&B overlap %s: step 3 %.1f ms (%.0f tok/s), last step (traced) %.1f ms (%.0f tok/s)\n",
                    k, fb ? "on" : "off", 1000 * n / r[1], r[1], 1000 * n / r[2], r[2] }' | tee -a "$log/pp_bench.txt"
            .dist/bin/moelab schedule --from-trace "$log/pp_trace_$name.json" --svg "$log/pp_timeline_$name.svg" \
                --kind $kind 2>&1 | grep -v "^rank" | tee -a "$log/pp_bench.txt"
            [ "${PIPESTATUS[0]}" = 0 ] || fail "moelab schedule --from-trace (pp_trace_$name.json)"
        done
        # The baseline: PyTorch's own schedules (torch.distributed.pipelining) on the same model, GPUs,
        # micro-batches and stage cut (the "layers per stage" of moelab's log: the ends, after a 0).
        cut_of() { grep -o 'layers per stage:.*' "$1" | head -1 | grep -o '[0-9]*)' | tr -d ')' | paste -sd, | sed 's/^/0,/'; }
        cuts="$(cut_of "$log/pp_bench_1f1b.log");$(cut_of "$log/pp_bench_dualpipev.log")"
        timeout "${TORCH_TIMEOUT:-400}" python3 -m torch.distributed.run --standalone --nproc_per_node="$pp_np" \
            tools/bench_torch_pp.py --config configs/bench.cfg --vocab-size 2048 --schedule 1f1b,dualpipev \
            --microbatches 8 --batch-size "$b" --bounds "$cuts" 2>&1 | grep -v "^W\|OMP_NUM_THREADS\|^\*" | tee -a "$log/pp_bench.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || fail "bench_torch_pp.py on $pp_np GPUs"
    else
        echo "gpu_run: no .dist/data/quickstart: pp_bench stage skipped"
    fi
fi

if want eplb && fits "$np" eplb; then
    if [ -d .dist/data/quickstart ]; then
        echo "== EPLB on $np GPUs (cuda-fp32): rebalancing every 2 steps against no rebalancing"
        # adam-eps 1e-6: replicas add partial gradients in another order, and with ε = 1e-8 AdamW's
        # first steps would magnify that rounding (docs/eplb.md). Step 7 runs on the placement of the
        # last rebalance (after step 6), so that every rebalance is checked by a step after it.
        e=(train --config configs/quickstart.cfg --data .dist/data/quickstart --steps 7 --log-every 1
           --val-every 0 --val-batches 1 --sample-tokens 0 --batch-size 4 --device cuda-fp32 --adam-eps 1e-6
           --router-skew -0.3 --ep "$np")
        mpi "$np" .dist/bin/moelab "${e[@]}" --metrics "$log/eplb_off.jsonl" > "$log/eplb_off.log" 2>&1 ||
            fail "moelab train --ep $np without EPLB"
        mpi "$np" .dist/bin/moelab "${e[@]}" --eplb-interval 2 --eplb-redundant "$np" \
            --metrics "$log/eplb_on.jsonl" > "$log/eplb_on.log" 2>&1 || fail "moelab train --ep $np --eplb-interval 2"
        grep "eplb: step" "$log/eplb_on.log"
        [ "$(grep -c "eplb: step [246]: rebalanced" "$log/eplb_on.log")" = 3 ] || fail "EPLB: not 3 rebalances"
        grep "copied between ranks" "$log/eplb_on.log" | grep -qv " 0 copied between ranks" ||
            fail "EPLB: no expert moved between GPUs"
        same_run "$log/eplb_off.jsonl" "$log/eplb_on.jsonl" "EPLB every 2 steps vs none" 7

        echo "== EPLB on $np GPUs: a skewed router (lr 0, no bias updates) is balanced by the first rebalance"
        mpi "$np" .dist/bin/moelab "${e[@]}" --lr 0 --min-lr 0 --bias-rate 0 --eplb-interval 2 \
            --eplb-redundant "$np" --metrics "$log/eplb_skew.jsonl" > "$log/eplb_skew.log" 2>&1 ||
            fail "moelab train, skewed router"
        # rank_imbalance: max/mean tokens per EP rank during each step, per MoE layer. Steps 1-2 ran on
        # the initial placement, steps 3-7 on rebalanced ones.
        grep -o '"rank_imbalance": \[[^]]*\]' "$log/eplb_skew.jsonl" | tr -d '[],' | awk '
            { m = 0; for (i = 2; i <= NF; i++) if ($i > m) m = $i
              printf "step %d: worst MoE layer max/mean rank load %.3f\n", NR, m
              if (NR <= 2) { if (NR == 1 || m < before) before = m } else if (m > after) after = m }
            END { printf "before (best of steps 1-2) %.3f, after (worst of steps 3-7) %.3f\n", before, after
                  exit !(NR == 7 && before >= 1.3 && after <= 0.8 * before && after <= 1.5) }' ||
            fail "EPLB: the skewed router's max/mean rank load did not fall (bounds: before >= 1.3, after <= 0.8 before and <= 1.5)"

        echo "== checkpoints on GPUs: resume after step 3 on one GPU (fp32 and bf16) is bit-exact"
        c=(train --config configs/quickstart.cfg --data .dist/data/quickstart --steps 6 --log-every 1
           --val-every 0 --val-batches 1 --sample-tokens 0 --batch-size 4)
        for dev in cuda-fp32 cuda; do
            rm -rf "$log/ck_$dev"
            .dist/bin/moelab "${c[@]}" --device $dev --out "$log/ck_$dev" --save-every 3 \
                --metrics "$log/ck_${dev}_full.jsonl" > "$log/ck_${dev}_full.log" 2>&1 || fail "moelab train --device $dev --out"
            .dist/bin/moelab "${c[@]}" --device $dev --resume "$log/ck_$dev/step_3.h5" \
                --metrics "$log/ck_${dev}_resumed.jsonl" > "$log/ck_${dev}_resumed.log" 2>&1 || fail "moelab train --device $dev --resume"
            grep '"step": [456],' "$log/ck_${dev}_full.jsonl" > "$log/ck_${dev}_tail.jsonl"
            same_run "$log/ck_${dev}_tail.jsonl" "$log/ck_${dev}_resumed.jsonl" "resume on one GPU ($dev)" 3 0
        done

        echo "== checkpoints on $np GPUs: EP $np with EPLB, resumed after the rebalance of step 4"
        rm -rf "$log/ck_ep"
        mpi "$np" .dist/bin/moelab "${e[@]}" --eplb-interval 2 --eplb-redundant "$np" --out "$log/ck_ep" \
            --save-every 4 --metrics "$log/ck_ep_full.jsonl" > "$log/ck_ep_full.log" 2>&1 || fail "moelab train --ep $np --out"
        mpi "$np" .dist/bin/moelab "${e[@]}" --eplb-interval 2 --eplb-redundant "$np" --resume "$log/ck_ep/step_4.h5" \
            --metrics "$log/ck_ep_resumed.jsonl" > "$log/ck_ep_resumed.log" 2>&1 || fail "moelab train --ep $np --resume"
        grep "resumed from" "$log/ck_ep_resumed.log"
        grep '"step": [56],' "$log/ck_ep_full.jsonl" > "$log/ck_ep_tail.jsonl"
        same_run "$log/ck_ep_tail.jsonl" "$log/ck_ep_resumed.jsonl" "resume under EP $np with EPLB" 2
    else
        echo "gpu_run: no .dist/data/quickstart: eplb stage skipped"
    fi
fi

if want eplb_bench && fits "$np" eplb_bench; then
    if [ -d .dist/data/quickstart ]; then
        steps=${EPLB_STEPS:-36}
        echo "== EPLB benchmark on $np GPUs: configs/bench.cfg (bf16), skewed router, $steps steps"
        # The quickstart data has 2048 tokens; no bias updates keep the skew from fading.
        b=(train --config configs/bench.cfg --data .dist/data/quickstart --vocab-size 2048 --steps "$steps"
           --log-every 5 --val-every 0 --val-batches 1 --sample-tokens 0 --router-skew -0.3 --bias-rate 0
           --ep "$np")
        mpi "$np" .dist/bin/moelab "${b[@]}" --metrics "$log/eplb_bench_off.jsonl" > "$log/eplb_bench_off.log" 2>&1 ||
            fail "eplb_bench without EPLB"
        mpi "$np" .dist/bin/moelab "${b[@]}" --eplb-interval 10 --eplb-redundant 16 \
            --metrics "$log/eplb_bench_on.jsonl" > "$log/eplb_bench_on.log" 2>&1 || fail "eplb_bench with EPLB"
        grep -h "eplb: step\|expert time" "$log/eplb_bench_on.log"
        # Per 5-step window: ms per step (from tokens/s), each GPU's ms per step in the expert GEMMs,
        # and the routed tokens' max/mean over EP ranks (mean over MoE layers).
        python3 - "$log/eplb_bench_off.jsonl" "$log/eplb_bench_on.jsonl" "$np" <<'PY' | tee "$log/eplb_bench.txt"
import json, sys
np_ = int(sys.argv[3])
print(f"EPLB benchmark: configs/bench.cfg (bf16), EP {np_} on {np_} GPUs, router_skew -0.3, no bias updates")
print("| run | steps | ms/step | expert ms/step per GPU | expert max/mean | routed max/mean over EP ranks (window's last step) |")
print("|---|---|---|---|---|---|")
for name, path in (("no EPLB", sys.argv[1]), ("EPLB every 10, 16 redundant", sys.argv[2])):
    prev = 0
    for line in open(path):
        m = json.loads(line)
        if "config" in m:  # the first line: the run's settings, not a step
            c = m["config"]
            tokens = c["batch_size"] * c["grad_accum"] * c["seq_len"] * np_  # a step's, every GPU a DP rank
            continue
        ex = m.get("expert_ms", [])
        mx = max(ex) / (sum(ex) / len(ex)) if ex and sum(ex) > 0 else float("nan")
        ri = m.get("rank_imbalance")
        routed = f"{sum(ri) / len(ri):.3f}" if ri else "-"
        print(f"| {name} | {prev + 1}-{m['step']} | {1e3 * tokens / m['tokens_per_s']:.1f} | "
              f"{' '.join(f'{x:.1f}' for x in ex)} | {mx:.3f} | {routed} |")
        prev = m["step"]
PY
        [ "${PIPESTATUS[0]}" = 0 ] || fail "eplb_bench table"
    else
        echo "gpu_run: no .dist/data/quickstart: eplb_bench stage skipped"
    fi
fi

if want export; then
    if [ ! -d .dist/data/quickstart ]; then
        echo "gpu_run: no .dist/data/quickstart: export stage skipped"
    elif ! python3 -c "import torch, transformers, numpy" > "$log/export_imports.txt" 2>&1; then
        fail "export: python3 cannot import torch, transformers and numpy ($(tail -n 1 "$log/export_imports.txt"))"
    else
        ckpt=${EXPORT_CKPT:-}
        if [ -z "$ckpt" ]; then
            echo "== moelab train --device cuda (quickstart, ${EXPORT_STEPS:-300} steps) for the export"
            rm -rf "$log/export_ckpt"
            .dist/bin/moelab train --config configs/quickstart.cfg --data .dist/data/quickstart \
                --steps "${EXPORT_STEPS:-300}" --sample-tokens 0 --device cuda --out "$log/export_ckpt" \
                > "$log/export_train.log" 2>&1 || fail "export: moelab train"
            grep -E "validation" "$log/export_train.log"
            ckpt=$(ls "$log"/export_ckpt/step_*.h5 2> /dev/null | sort -V | tail -n 1)
        fi
        if [ -n "$ckpt" ]; then
            echo "== moelab export $ckpt, then transformers (tools/export/hf_check.py)"
            rm -rf "$log/hf_quickstart"
            .dist/bin/moelab export --ckpt "$ckpt" --out "$log/hf_quickstart" --data .dist/data/quickstart ||
                fail "moelab export"
            # Local files only (no network here); transformers' module cache stays in the log folder.
            HF_HUB_OFFLINE=1 HF_HOME="$log/hf_home" timeout "${EXPORT_TIMEOUT:-600}" python3 tools/export/hf_check.py \
                "$log/hf_quickstart" "$ckpt" .dist/data/quickstart .dist/bin/export_probe 2>&1 | tee "$log/export.log"
            [ "${PIPESTATUS[0]}" = 0 ] || fail "export: hf_check.py (see export.log)"
        else
            fail "export: no checkpoint"
        fi
    fi
fi

if [ -n "${cpu_pid:-}" ]; then
    # The same steps in fp32 on the GPU separate precision (bf16 against fp32) from the device.
    echo "== moelab train --device cuda-fp32 (quickstart, $qs_steps steps)"
    .dist/bin/moelab train "${qs[@]}" --device cuda-fp32 --metrics "$log/quickstart_cuda-fp32.jsonl" \
        > "$log/train_cuda-fp32.log" 2>&1 || fail "moelab train --device cuda-fp32"
    wait "$cpu_pid" || fail "moelab train --device cpu"
    for dev in cpu cuda-fp32 cuda; do echo "$dev: $(grep -a -E "^validation" "$log/train_$dev.log")"; done
fi
echo "gpu_run: $([ $rc = 0 ] && echo all passed || echo FAILED)"
exit $rc
