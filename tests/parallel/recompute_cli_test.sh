#!/bin/bash
# `moelab train --recompute 1` (each layer's forward again right before its backward, framework/
# model.c) under mpirun, on the byte-level fixed corpus (tests/util/cli_lib.sh):
#  1. with 1F1B, which runs a micro-batch's weight pass right after its input pass (layer by layer:
#     model_backward), the run trains the weights and AdamW moments of the same layout without it,
#     bit for bit: EP 2 (the recomputed forward exchanges its rows again; the DP sync of the dense
#     gradients then runs after the backward), DP 2 (the sync overlapping the backward layer by
#     layer), EP 2 x expert-DP 2 on 4 ranks, 2 pipeline stages x DP 2 (several micro-batches in
#     flight per stage, the gradient between the stages from the recomputing backward), DP 2 with
#     ZeRO-1 (the reduce-scatters started layer by layer), and EP 2 with EPLB (2 redundant slots,
#     a skewed router, a rebalance after step 2: the recomputed forwards route over the new
#     placement);
#  2. so do DualPipe and DualPipeV, whose input passes recompute every layer of the stage and keep
#     them for weight passes that may run later: DualPipe and DualPipeV at PP 2, and DualPipe at
#     PP 2 x EP 2; and DualPipe at PP 2 with each stage's first layer only recomputing
#     (--recompute-layers 1);
#  3. so do EP 2 and DualPipe at PP 2 whose recomputing layers keep their attention's output too
#     (--recompute-keep-attention 1): their recompute runs no attention.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, tiny, the run checks
source "$root/tests/parallel/mpi_env.sh"

prepare_corpus "$tmp/data"
args=("${tiny[@]}" "${compared[@]}" --steps 3 --batch-size 4 --n-layers 4 --sample-tokens 0)

# layout NAME NP ARGS...: the layout trained without and with --recompute 1, its checkpoints compared.
layout() {
    local name=$1 np=$2 r
    shift 2
    for r in 0 1; do
        mpi "$np" "$moelab" train "${args[@]}" "$@" --recompute $r --out "$tmp/$name$r" >"$tmp/$name$r.log"
    done
    same_checkpoints "$tmp/${name}0/step_3.h5" "$tmp/${name}1/step_3.h5" bits
}

# 1.
layout ep2 2 --ep 2 --grad-accum 2
layout dp2 2 --grad-accum 2
layout ep2_edp2 4 --ep 2
layout pp2_dp2 4 --pp 2 --chunks 4
layout zero1 2 --grad-accum 2 --zero 1
layout eplb 2 --ep 2 --grad-accum 2 --eplb-interval 2 --eplb-redundant 2 --router-skew 0.5

# 2.
layout dualpipe 2 --pp 2 --schedule dualpipe --chunks 4
layout dualpipev 2 --pp 2 --schedule dualpipev --chunks 4
layout dualpipe_ep2 4 --pp 2 --ep 2 --schedule dualpipe --chunks 4
mpi 2 "$moelab" train "${args[@]}" --pp 2 --schedule dualpipe --chunks 4 --recompute 1 --recompute-layers 1 \
    --out "$tmp/dualpipe_k1" > "$tmp/dualpipe_k1.log"
same_checkpoints "$tmp/dualpipe0/step_3.h5" "$tmp/dualpipe_k1/step_3.h5" bits

# 3.
mpi 2 "$moelab" train "${args[@]}" --ep 2 --grad-accum 2 --recompute 1 --recompute-keep-attention 1 \
    --out "$tmp/ep2_ka" > "$tmp/ep2_ka.log"
same_checkpoints "$tmp/ep20/step_3.h5" "$tmp/ep2_ka/step_3.h5" bits
mpi 2 "$moelab" train "${args[@]}" --pp 2 --schedule dualpipe --chunks 4 --recompute 1 --recompute-keep-attention 1 \
    --out "$tmp/dualpipe_ka" > "$tmp/dualpipe_ka.log"
same_checkpoints "$tmp/dualpipe0/step_3.h5" "$tmp/dualpipe_ka/step_3.h5" bits
