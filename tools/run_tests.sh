#!/bin/bash
# The whole test suite, from a fresh clone: install packages, run every test (optimized build), run
# it again under AddressSanitizer + UndefinedBehaviorSanitizer, and compile the CUDA backend (whose
# GPU tests are tagged manual: they run on a GPU machine, see docs/gpu.md).
#   usage: bash tools/run_tests.sh
set -euo pipefail
source "$(dirname "$0")/usage.sh" "$@"
usage_no_args "$@"
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
passed=0
# Runs one `bazel test` (failing the script if it fails) and adds its passed tests to the total.
suite() {
    bazel test "$@" //... --test_output=errors 2>&1 | tee "$log"
    local n
    n=$(grep -oE 'Executed [0-9]+ out of [0-9]+ tests?: [0-9]+ tests? pass' "$log" | tail -1 |
        grep -oE '[0-9]+ tests? pass' | grep -oE '^[0-9]+' || echo 0)
    passed=$((passed + n))
}
suite
suite --config=debug
if command -v nvcc >/dev/null 2>&1; then
    bazel build --config=cuda //...
else
    echo "run_tests: nvcc not found: the CUDA backend was not compiled"
fi
echo "run_tests: all tests passed (the suite twice: optimized, then under ASan + UBSan)"
echo "run_tests: ${passed} passed, 0 failed"
