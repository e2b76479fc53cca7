#!/bin/bash
# The whole test suite, from a fresh clone: install packages, run every test (optimized build), run
# it again under AddressSanitizer + UndefinedBehaviorSanitizer, and compile the CUDA backend (whose
# GPU tests are tagged manual: they run on a GPU machine, see docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bazel test //... --test_output=errors
bazel test --config=debug //... --test_output=errors
if command -v nvcc >/dev/null 2>&1; then
    bazel build --config=cuda //...
else
    echo "run_tests: nvcc not found: the CUDA backend was not compiled"
fi
echo "run_tests: all tests passed"
