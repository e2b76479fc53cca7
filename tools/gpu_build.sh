#!/bin/bash
# Builds the GPU test binaries (kernels, whole model, NCCL and EP under mpirun), the kernel and EP
# benchmarks, the reference comparison's dump_model, the export check's export_probe, the kernel
# trace (tools/trace) and moelab with --config=cuda on this machine (nvcc needed, no GPU) and copies them
# into .dist/ (git-ignored), ready to carry to the GPU machine, which has no Bazel; tools/gpu_run.sh
# runs them there. Where the fortunes corpus is installed it also prepares the quickstart data
# (.dist/data/quickstart, 2 MB) for gpu_run.sh's training stages. The GPU machine has CUDA,
# OpenBLAS, OpenMPI and HDF5 (docs/architecture.md §9); for one that lacks some, --with-libs also copies
# the libraries the binaries name directly (not CUDA's) into .dist/lib, which gpu_run.sh uses only for what is missing there.
# Mind the 64 MiB a device call may carry: OpenBLAS alone is about 35 MB.
#   usage: tools/gpu_build.sh [--output_base DIR] [--with-libs]   (DIR: a private output base)
set -euo pipefail
source "$(dirname "$0")/usage.sh" "$@"
cd "$(dirname "$0")/.."
bazel=(bazel)
with_libs=0
while [ $# -gt 0 ]; do
    case "$1" in
        --output_base)
            [ $# -ge 2 ] || { echo "gpu_build: --output_base needs a DIR" >&2; exit 2; }
            bazel+=(--output_base="$2"); shift 2 ;;
        --with-libs) with_libs=1; shift ;;
        *) echo "usage: tools/gpu_build.sh [--output_base DIR] [--with-libs]" >&2; exit 2 ;;
    esac
done

"${bazel[@]}" build --config=cuda //tests/gpu:gpu_test //tests/gpu:model_gpu_test //tests/gpu:kernel_bench \
    //tests/gpu:nccl_test //tests/gpu:ep_bench //tests/reference:dump_model //tests/tools/export:export_probe //tools:moelab \
    //tools/trace:libkernel_trace.so
bin=$("${bazel[@]}" info --config=cuda bazel-bin)

rm -rf .dist
mkdir -p .dist/bin .dist/lib
cp "$bin/tests/gpu/gpu_test" "$bin/tests/gpu/model_gpu_test" "$bin/tests/gpu/kernel_bench" \
    "$bin/tests/gpu/nccl_test" "$bin/tests/gpu/ep_bench" "$bin/tests/reference/dump_model" \
    "$bin/tests/tools/export/export_probe" "$bin/tools/moelab" \
    .dist/bin/
chmod u+w .dist/bin/*
# The kernel trace (gpu_run.sh's trace stage) with the CUPTI it was built against (4 MB).
mkdir -p .dist/trace
cp "$bin/tools/trace/libkernel_trace.so" .dist/trace/
cp -L "$(ldd .dist/trace/libkernel_trace.so | awk '$1 ~ /^libcupti/ {print $3; exit}')" .dist/trace/
chmod u+w .dist/trace/*
corpus=/usr/share/games/fortunes
if [ -d "$corpus" ]; then
    .dist/bin/moelab data prepare --input "$corpus" --vocab 2048 --out .dist/data/quickstart > /dev/null
else
    echo "gpu_build: $corpus missing (apt-get install fortunes): no quickstart data, gpu_run.sh skips training"
fi
if [ "$with_libs" = 1 ]; then
    # The libraries the binaries name (DT_NEEDED), except the C/C++ runtime and CUDA's.
    needed=$(objdump -p .dist/bin/* | awk '/NEEDED/ {print $2}' | sort -u)
    for name in $needed; do
        case "$name" in
            libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux* | \
                libstdc++* | libgcc_s* | libcuda* | libcublas* | libnccl*) continue ;;
        esac
        path=$(ldd .dist/bin/* | awk -v n="$name" '$1 == n && $3 ~ /^\// {print $3; exit}')
        [ -n "$path" ] && cp -L "$path" .dist/lib/
    done
fi
du -sh .dist
echo "gpu_build: .dist/ is ready; on the GPU machine run: bash tools/gpu_run.sh"
