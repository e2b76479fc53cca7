#!/usr/bin/env python3
# The PyTorch baseline of the pipeline benchmark (tools/gpu_run.sh's pp_bench stage): the model of
# tools/bench_torch.py cut into the same stages as moelab's, trained by PyTorch's own pipeline
# schedules (torch.distributed.pipelining: Schedule1F1B, one stage per rank, and ScheduleDualPipeV,
# stages r and 2N-1-r on rank r), one process per GPU under torchrun, on the same global batch of C
# micro-batches, with what a step of moelab does besides the schedule: the global gradient norm and
# clipping, AdamW and the router bias update. What it leaves out: the sequence balance loss (the
# schedule's loss function sees only the last stage's output; α = 1e-4 of the loss, a negligible
# share of the FLOPs), so its losses are the cross-entropy alone.
#   usage: torchrun --standalone --nproc_per_node=N tools/bench_torch_pp.py [--config configs/bench.cfg]
#              [--schedule 1f1b,dualpipev] [--microbatches 8] [--batch-size B] [--bounds 0,3,6,9,12]
#              [--steps 4] [--warmup 1] [--device cuda|cpu] [--n-layers L] [--seq-len T] [--vocab-size V]
# --bounds gives the stages' first layers and the end, as moelab logs them ("layers per stage"); one
# list per schedule kind, ';'-separated in the order of --schedule (DualPipeV has 2N stages). Without
# it the layers are split evenly. --device cpu (gloo) is for trying the script on a machine without
# GPUs.
import argparse
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import (Layer, Rope, gemm_tflops, grouped_mm_fn, init_weights, load_config,  # noqa: E402
                         train_flops_per_token)


class Stage(nn.Module):
    """Layers [l0, l1) of the model, with the embedding on the first stage and the final norm and LM
    head on the last; each MoE layer adds its routed tokens per expert to its `acc` buffer."""

    def __init__(self, c, l0, l1, gmm, device):
        super().__init__()
        L, V, D = c["n_layers"], c["vocab_size"], c["d_model"]
        self.c, self.first, self.last, self.device = c, l0 == 0, l1 == L, device
        self.rope = Rope(c["seq_len"], D // c["n_heads"], c["rope_theta"])
        # Every rank draws a tensor from a generator keyed by its place in the model, so the
        # weights do not depend on the cut.
        torch.manual_seed(c["seed"])
        self.embed = nn.Parameter(torch.empty(V, D)) if self.first else None
        if self.embed is not None:
            init_weights(self, L)
        self.layers = nn.ModuleList()
        for l in range(l0, l1):
            torch.manual_seed(c["seed"] + 1 + l)
            layer = Layer(c, l >= c["n_dense_layers"], gmm)
            init_weights(layer, L)
            if layer.moe:
                layer.register_buffer("acc", torch.zeros(c["n_experts"], dtype=torch.long))
            self.layers.append(layer)
        if self.last:
            torch.manual_seed(c["seed"] + 1 + L)
            self.final_norm = nn.Parameter(torch.ones(D))
            self.lm_head = nn.Parameter(torch.empty(V, D))
            nn.init.normal_(self.lm_head, 0.0, 0.02)

    def forward(self, h):
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            if self.first:
                h = F.embedding(h, self.embed)
            for layer in self.layers:
                h = layer.attention(h, self.rope)
                h, _, counts = layer.ffn(h)
                if counts is not None:
                    layer.acc += counts
            if self.last:
                h = F.rms_norm(h, (h.shape[-1],), self.final_norm, self.c["norm_eps"])
                h = F.linear(h, self.lm_head)
        return h


def cross_entropy(logits, target):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


def run(c, kind, bounds, C, steps, warmup, device, gmm, peak):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleDualPipeV

    N, r = dist.get_world_size(), dist.get_rank()
    S = len(bounds) - 1
    held = [r] if kind == "1f1b" else [r, 2 * N - 1 - r]
    if S != (N if kind == "1f1b" else 2 * N):
        raise SystemExit(f"bench_torch_pp: {kind} on {N} ranks needs {N if kind == '1f1b' else 2 * N} stages, "
                         f"--bounds gives {S}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    mods = [Stage(c, bounds[s], bounds[s + 1], gmm, device).to(device) for s in held]
    stages = [PipelineStage(m, s, S, device) for m, s in zip(mods, held)]
    # scale_grads (the default): each micro-batch's gradient enters with weight 1/C, as in moelab.
    sched = (Schedule1F1B(stages[0], C, loss_fn=cross_entropy) if kind == "1f1b"
             else ScheduleDualPipeV(stages, C, loss_fn=cross_entropy))
    params = [p for m in mods for p in m.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=c["lr"],
                            betas=(c["beta1"], c["beta2"]), eps=c["adam_eps"], fused=device.type == "cuda")
    B, T, V, E, K = c["batch_size"], c["seq_len"], c["vocab_size"], c["n_experts"], c["top_k"]
    g = torch.Generator().manual_seed(3)
    tok = torch.randint(0, V, (C * B, T + 1), generator=g).to(device)  # every rank the same tokens
    x, y = tok[:, :T].contiguous(), tok[:, 1:].contiguous()
    has_first, has_last = 0 in held, S - 1 in held
    moe_layers = [l for m in mods for l in m.layers if l.moe]

    def step():
        opt.zero_grad(set_to_none=True)
        for layer in moe_layers:
            layer.acc.zero_()
        losses = []
        args = (x,) if has_first else ()
        if has_last:
            sched.step(*args, target=y, losses=losses)
        else:
            sched.step(*args)
        # The global gradient norm over the pipeline, then clipping (moelab's step tail).
        sq = torch.zeros((), device=device, dtype=torch.float64)
        for p in params:
            if p.grad is not None:
                sq += p.grad.double().pow(2).sum()
        dist.all_reduce(sq)
        scale = min(1.0, c["grad_clip"] / (math.sqrt(sq.item()) + 1e-6))
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
        opt.step()
        with torch.no_grad():  # the aux-loss-free bias update of every MoE layer this rank holds
            mean = K * C * B * T / E
            for layer in moe_layers:
                layer.bias += c["bias_rate"] * torch.sign(mean - layer.acc.float())
        loss = torch.zeros((), device=device)
        if has_last:
            loss += torch.stack([l.detach().float() for l in losses]).mean()
        dist.all_reduce(loss)
        return loss.item()

    first = step()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    dt = (time.perf_counter() - t0) / steps
    mem = torch.tensor([torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else 0.0],
                       device=device)
    dist.all_reduce(mem, op=dist.ReduceOp.MAX)
    tps = C * B * T / dt
    tflops = tps * train_flops_per_token(c) / 1e12 / N
    if r == 0:
        mfu = f", MFU {100 * tflops / peak:.1f} %" if peak else ""
        cut = " ".join(f"[{bounds[s]},{bounds[s + 1]})" for s in range(S))
        print(f"torch pipelining {kind}: PP {N}, {C} micro-batches of {B} x {T} | layers per stage: {cut} | "
              f"step {1000 * dt:.1f} ms | {tps:.0f} tokens/s ({tps / N:.0f} per GPU, {tflops:.1f} TFLOP/s per GPU{mfu}) "
              f"| peak {mem.item():.2f} GiB | loss (CE) {first:.4f} -> {last:.4f}", flush=True)


def even_bounds(L, S):
    return [round(s * L / S) for s in range(S + 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/bench.cfg")
    ap.add_argument("--schedule", default="1f1b,dualpipev")
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=0, help="sequences per micro-batch (default: the config's)")
    ap.add_argument("--bounds", default="", help="per schedule, ';'-separated: the stages' first layers and the end")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--n-layers", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=0)
    args = ap.parse_args()
    c = load_config(args.config)
    c["dtype"] = torch.bfloat16  # of the expert rows (the stages run under bf16 autocast)
    for key, v in (("batch_size", args.batch_size), ("n_layers", args.n_layers), ("seq_len", args.seq_len),
                   ("vocab_size", args.vocab_size)):
        if v > 0:
            c[key] = v
    if c["tie_embeddings"]:
        raise SystemExit("bench_torch_pp: tie_embeddings = true puts the embedding and the head on one stage")
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group("nccl", device_id=device)
        torch.backends.cuda.matmul.allow_tf32 = True
        gmm = grouped_mm_fn(device, torch.bfloat16)
        peak = gemm_tflops(device, torch.bfloat16, 8192)  # each GPU's bf16 GEMM rate, for the MFU
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
        gmm, peak = None, 0.0
    kinds = args.schedule.split(",")
    cuts = args.bounds.split(";") if args.bounds else [""] * len(kinds)
    if len(cuts) != len(kinds):
        raise SystemExit(f"bench_torch_pp: --bounds has {len(cuts)} lists for {len(kinds)} schedules")
    N = dist.get_world_size()
    if dist.get_rank() == 0:
        print(f"torch {torch.__version__}, {N} ranks on {args.device}: experts through "
              f"{'grouped_mm' if gmm else 'a per-expert loop'}", flush=True)
    import torch.distributed.pipelining as pipelining
    schedule_class = {"1f1b": "Schedule1F1B", "dualpipev": "ScheduleDualPipeV"}
    for kind, cut in zip(kinds, cuts):
        if kind not in schedule_class:
            raise SystemExit(f"bench_torch_pp: --schedule {kind}: expected 1f1b or dualpipev")
        if not hasattr(pipelining, schedule_class[kind]):
            if dist.get_rank() == 0:
                print(f"torch pipelining {kind}: torch {torch.__version__} has no {schedule_class[kind]}: not run",
                      flush=True)
            continue
        S = N if kind == "1f1b" else 2 * N
        bounds = [int(v) for v in cut.split(",")] if cut else even_bounds(c["n_layers"], S)
        # A stage needs a layer: an empty first stage would take activations for token ids.
        if len(bounds) != S + 1 or bounds[0] != 0 or bounds[-1] != c["n_layers"] or any(
                b1 <= b0 for b0, b1 in zip(bounds, bounds[1:])):
            raise SystemExit(f"bench_torch_pp: {kind} on {N} ranks has {S} stages: stage bounds {bounds} "
                             f"do not cut layers 0..{c['n_layers']} into {S} non-empty stages")
        run(c, kind, bounds, args.microbatches, args.steps, args.warmup, device, gmm, peak)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
