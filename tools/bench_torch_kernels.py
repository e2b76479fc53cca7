#!/usr/bin/env python3
"""The library baselines of tests/gpu/kernel_bench.cc, measured with PyTorch on the same GPU:

  expert GEMMs   torch._grouped_mm (CUTLASS's Hopper grouped GEMM inside PyTorch) for the three
                 products of the up projection at the bench shapes (98,304 rows over 64 experts,
                 D 1024, Fe 512) and the wide ones (98,304 rows over 32 experts, D 2048, Fe 1408),
                 uniform, jittered and skewed counts made exactly as kernel_bench makes them;
  attention      causal GQA scaled_dot_product_attention, forward and backward, on each backend
                 PyTorch has here (cuDNN, FlashAttention-2), at B 8 T 2048 H 16 Hkv 4 hd 64 and
                 B 4 T 4096 H 16 Hkv 4 hd 128.

Each row is the median of 10 timed calls after 3 warm-ups, with CUDA events, in ms and TFLOP/s
(kernel_bench times with a host clock and one sync per call: its numbers are, if anything, a
little low next to these). A benchmark: it checks nothing.
  usage: python3 tools/bench_torch_kernels.py
"""
import argparse
import math
import sys

import torch
import torch.nn.functional as F


def median_ms(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def expert_counts(R, E, spread):
    """kernel_bench's counts: even, jittered (weights 1 + 0.3 sin(2.7 e + 1)), or skewed (Zipf
    1/(e+1) over the first E-4 experts); the rest to expert 0."""
    live = E - 4 if spread == "skewed" else E
    w = [1.0 / (e + 1) if spread == "skewed" else 1.0 + 0.3 * math.sin(2.7 * e + 1.0) if spread == "jittered"
         else 1.0 for e in range(live)]
    wsum = 0.0
    for x in w:
        wsum += x
    c = [int(R * w[e] / wsum) for e in range(live)] + [0] * (E - live)
    c[0] += R - sum(c)
    return c


def row(name, ms, flops):
    print(f"  {name:<40} {ms:8.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s", flush=True)


def expert_gemms(R, E, D, Fe):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(R, D, device="cuda", dtype=torch.bfloat16, generator=g)
    h = torch.randn(R, Fe, device="cuda", dtype=torch.bfloat16, generator=g)
    W = torch.randn(E, Fe, D, device="cuda", dtype=torch.bfloat16, generator=g) * 0.03  # (E, Fe, D)
    flops = 2.0 * R * D * Fe
    for spread in ("uniform", "jittered", "skewed"):
        c = expert_counts(R, E, spread)
        offs = torch.tensor(c, device="cuda", dtype=torch.int32).cumsum(0, dtype=torch.int32)
        print(f"torch._grouped_mm, {R} rows over {E} experts, D {D} Fe {Fe} "
              f"({spread}, largest {max(c)})")
        products = [
            ("forward D->Fe", lambda: torch._grouped_mm(x, W.transpose(1, 2), offs=offs)),
            ("backward_input", lambda: torch._grouped_mm(h, W, offs=offs)),
            ("backward_weight (bf16 dW)", lambda: torch._grouped_mm(h.t(), x, offs=offs)),
        ]
        for name, fn in products:
            try:
                row(name, median_ms(fn), flops)
            except Exception as e:  # a product this PyTorch lacks is reported, not fatal
                print(f"  {name:<40} n/a ({type(e).__name__}: {str(e).splitlines()[0][:100]})")


def attention(B, T, H, Hkv, hd):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, T, hd, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, T, hd, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, T, hd, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    fwd_flops = 4.0 * B * H * T * T * hd / 2  # causal: half the score matrix, two products
    print(f"scaled_dot_product_attention, causal, B {B} T {T} H {H} Hkv {Hkv} hd {hd}")
    for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("FlashAttention-2", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                # FlashAttention takes GQA only through repeated heads; cuDNN takes it as is.
                kk, vv = (k, v) if backend == SDPBackend.CUDNN_ATTENTION else (
                    k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1))
                gqa = backend == SDPBackend.CUDNN_ATTENTION
                fwd = lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
                o = fwd()
                do = torch.randn_like(o)
                row(f"{name} forward", median_ms(fwd), fwd_flops)
                bwd = lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
                row(f"{name} backward", median_ms(bwd), 2.5 * fwd_flops)
        except Exception as e:
            print(f"  {name:<40} n/a ({type(e).__name__}: {str(e).splitlines()[0][:100]})")


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not torch.cuda.is_available():
        print("bench_torch_kernels: no GPU visible", file=sys.stderr)
        return 1
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}")
    expert_gemms(8 * 2048 * 6, 64, 1024, 512)
    expert_gemms(4 * 4096 * 6, 32, 2048, 1408)
    attention(8, 2048, 16, 4, 64)
    attention(4, 4096, 16, 4, 128)
    return 0


if __name__ == "__main__":
    sys.exit(main())
