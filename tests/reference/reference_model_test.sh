#!/bin/bash
# The C model against the independent PyTorch reference: for several configs, dump_model writes the
# parameters, a batch, logits, loss, every gradient and 5 AdamW step losses; moe_reference.py
# recomputes them all and fails on a relative error above 1e-4.
# Outside Bazel (tools/gpu_run.sh's `reference` stage) the environment says what to run:
# REF_DIR (this folder), DUMP_MODEL (the binary), PYTHON, DEVICE (dump_model's --device),
# TOL, TOL_FINAL and TOL_BIAS (moe_reference.py's --tol, --tol-final and --tol-bias).
set -euo pipefail
here="${REF_DIR:-$TEST_SRCDIR/moelab/tests/reference}"
dump_model="${DUMP_MODEL:-$here/dump_model}"
python="${PYTHON:-/usr/bin/python3}"
device="${DEVICE:-cpu}"
tol="${TOL:-1e-4}"
out="${TEST_TMPDIR:-$(mktemp -d)}"
# The backend table each device runs (its name, which dump_model dumps and the comparison checks).
case "$device" in
    cpu) backend="cpu" ;;
    cuda) backend="cuda bf16" ;;
    cuda-fp32) backend="cuda fp32" ;;
    *) echo "reference_model_test: unknown DEVICE '$device' (cpu, cuda, cuda-fp32)" >&2; exit 2 ;;
esac
run() {
    local name=$1; shift
    echo "== $name ($device): $*"
    "$dump_model" "$out/$name.dump" --device "$device" "$@"
    "$python" "$here/moe_reference.py" --tol "$tol" --tol-final "${TOL_FINAL:-$tol}" \
        --tol-bias "${TOL_BIAS:-${TOL_FINAL:-$tol}}" --require-final --backend "$backend" "$out/$name.dump"
}
# Sigmoid scores, norm_topk, shared expert, untied head, GQA 4:2, balance loss, 2 micro-batches.
run sigmoid
# Softmax scores without normalization, route_scale, no shared expert, tied embeddings, MHA, and
# skewed starting balancing biases (router_skew; the reference once added the skew to the logits too).
run softmax --score softmax --norm-topk false --route-scale 2.5 --n-shared 0 \
    --tie-embeddings true --n-kv-heads 4 --router-skew 0.5
# K = E (every expert chosen), multi-query attention, two shared experts, all layers MoE, no clipping.
run all_experts --top-k 8 --n-kv-heads 1 --n-shared 2 --n-dense-layers 0 --grad-clip 0
# Head size 64 (D 256, 4 heads): on a GPU in bf16 the attention of bench.cfg (cuDNN's, or the
# tensor-core kernels), which the head size 16 above does not reach. AdamW's eps 1e-6, as the CPU
# layout suites train (docs/parallel.md §6): at 1e-8 this larger model has weight elements whose
# first gradients are of the order of eps, where lr·g/(|g| + eps) turns the ~1e-7 difference of
# the two implementations' sums into a visibly different update. On an AMD EPYC (OpenBLAS's Zen
# kernels) the final weights then differed from PyTorch's by up to 9.9e-3 while every gradient
# agreed within 1e-6 (2026-12-06; an Intel host had passed); at 1e-6 they agree within 3.1e-6.
run head_size_64 --d-model 256 --n-heads 4 --n-kv-heads 2 --adam-eps 1e-6
