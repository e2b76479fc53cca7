#!/usr/bin/env python3
# The PyTorch baseline of `moelab bench` (issue 3 item 4): the model of docs/architecture.md §2
# written as a good PyTorch user would (on a GPU bf16 autocast over fp32 master weights and fused
# AdamW; scaled_dot_product_attention; experts as grouped GEMMs over sorted rows where the build has
# them, else a loop over experts), timed in eager mode and under torch.compile on synthetic tokens,
# with the same FLOP count and GEMM baseline: the bf16 GEMM 8192^3 on a GPU; on the CPU (--device
# cpu: fp32 throughout, as moelab's CPU backend, on --threads threads) the fp32 GEMM 1024^3, the
# size moelab bench's sgemm baseline times.
# It times as `moelab bench` does: at least --steps steps and --seconds seconds (the defaults are
# moelab's), each step waited for, so that both runs' routers have had as many aux-loss-free bias
# updates by the end (skewed expert loads slow a grouped GEMM, PyTorch's weight gradient the most).
#   usage: python3 tools/bench_torch.py [--config configs/bench.cfg] [--mode eager,compile]
#                                       [--steps N] [--seconds S] [--warmup N]
#                                       [--device cuda|cpu] [--threads N]
import argparse
import math
import re
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_config(path):
    """key = value lines (the format moelab reads), with moelab's defaults for absent keys."""
    c = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, seq_len=64, n_dense_layers=1,
             d_ff=192, n_experts=8, top_k=2, n_shared=1, d_expert=64, score="sigmoid", route_scale=1.0,
             norm_topk=True, bias_rate=1e-3, balance_alpha=1e-4, rope_theta=10000.0, norm_eps=1e-5,
             tie_embeddings=False, batch_size=8, grad_accum=1, lr=3e-3, weight_decay=0.1, grad_clip=1.0,
             beta1=0.9, beta2=0.95, adam_eps=1e-8, seed=1337)
    with open(path) as f:
        for line in f:
            # A comment starts at a '#' at the line's start or after a blank, as moelab reads it.
            line = re.split(r"(?:^|[ \t])#", line, maxsplit=1)[0].strip()
            if not line:
                continue
            k, v = (s.strip() for s in line.split("=", 1))
            k = k.replace("-", "_")
            if k not in c:
                continue
            d = c[k]
            c[k] = (v in ("true", "1")) if isinstance(d, bool) else type(d)(v)
    return c


def train_flops_per_token(c):
    """model_train_flops_per_token of framework/model.c."""
    D, hd = c["d_model"], c["d_model"] / c["n_heads"]
    qd, kd = c["n_heads"] * hd, c["n_kv_heads"] * hd
    attn = qd * D + 2 * kd * D + D * qd + 2 * qd * (c["seq_len"] + 1) / 2.0
    dense = 3 * D * c["d_ff"]
    moe = c["n_experts"] * D + (c["top_k"] + c["n_shared"]) * 3 * D * c["d_expert"]
    n_moe = c["n_layers"] - c["n_dense_layers"]
    fwd = 2 * (c["n_layers"] * attn + c["n_dense_layers"] * dense + n_moe * moe + c["vocab_size"] * D)
    return 3 * fwd


def grouped_mm_fn(dev, dt):
    """torch's grouped GEMM over row ranges, if this build has a working one for device dev and dtype
    dt (checked against a loop)."""
    fn = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    if fn is None:
        return None
    try:
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(96, 64, device=dev, dtype=dt, generator=g, requires_grad=True)
        w = torch.randn(3, 32, 64, device=dev, dtype=dt, generator=g, requires_grad=True)
        offs = torch.tensor([16, 48, 96], device=dev, dtype=torch.int32)
        y = fn(x, w.transpose(-2, -1), offs=offs)
        ref = torch.cat([x[0:16] @ w[0].T, x[16:48] @ w[1].T, x[48:96] @ w[2].T])
        y.float().sum().backward()
        ok = torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=2e-2) and w.grad is not None
        return fn if ok else None
    except Exception as e:  # an unsupported card or build: use the per-expert loop
        print(f"grouped_mm unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); per-expert loop")
        return None


class Rope(nn.Module):
    def __init__(self, T, hd, theta):
        super().__init__()
        i = torch.arange(hd // 2, dtype=torch.float64)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-2 * i / hd)[None, :]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, x):  # (B, T, h, hd), "rotate half" pairs (i, i + hd/2)
        T, half = x.shape[1], x.shape[-1] // 2
        cos, sin = self.cos[:T, None, :].to(x.dtype), self.sin[:T, None, :].to(x.dtype)
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Layer(nn.Module):
    def __init__(self, c, moe, gmm):
        super().__init__()
        D, H, Hkv = c["d_model"], c["n_heads"], c["n_kv_heads"]
        hd = D // H
        self.c, self.moe, self.gmm, self.H, self.Hkv, self.hd = c, moe, gmm, H, Hkv, hd
        self.attn_norm = nn.Parameter(torch.ones(D))
        self.wq = nn.Parameter(torch.empty(H * hd, D))
        self.wk = nn.Parameter(torch.empty(Hkv * hd, D))
        self.wv = nn.Parameter(torch.empty(Hkv * hd, D))
        self.wo = nn.Parameter(torch.empty(D, H * hd))
        self.ffn_norm = nn.Parameter(torch.ones(D))
        E, S, Fe = c["n_experts"], c["n_shared"], c["d_expert"]
        if not moe:
            self.w1 = nn.Parameter(torch.empty(c["d_ff"], D))
            self.w3 = nn.Parameter(torch.empty(c["d_ff"], D))
            self.w2 = nn.Parameter(torch.empty(D, c["d_ff"]))
        else:
            self.router = nn.Parameter(torch.empty(E, D))
            self.register_buffer("bias", torch.zeros(E))
            self.ew1 = nn.Parameter(torch.empty(E, Fe, D))
            self.ew3 = nn.Parameter(torch.empty(E, Fe, D))
            self.ew2 = nn.Parameter(torch.empty(E, D, Fe))
            # The S shared experts as one SwiGLU of width S·Fe: the same sum, one GEMM each.
            self.sw1 = nn.Parameter(torch.empty(S * Fe, D))
            self.sw3 = nn.Parameter(torch.empty(S * Fe, D))
            self.sw2 = nn.Parameter(torch.empty(D, S * Fe))

    def attention(self, x, rope):
        B, T, D = x.shape
        a = F.rms_norm(x, (D,), self.attn_norm, self.c["norm_eps"])
        q = rope(F.linear(a, self.wq).view(B, T, self.H, self.hd)).transpose(1, 2)
        k = rope(F.linear(a, self.wk).view(B, T, self.Hkv, self.hd)).transpose(1, 2)
        v = F.linear(a, self.wv).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return x + F.linear(o.transpose(1, 2).reshape(B, T, D), self.wo)

    def experts(self, xs, counts):  # xs (rows, D) sorted by expert; counts (E)
        if self.gmm is not None:
            offs = counts.cumsum(0).to(torch.int32)
            a = self.gmm(xs, self.ew1.to(xs.dtype).transpose(-2, -1), offs=offs)
            b = self.gmm(xs, self.ew3.to(xs.dtype).transpose(-2, -1), offs=offs)
            return self.gmm(F.silu(a) * b, self.ew2.to(xs.dtype).transpose(-2, -1), offs=offs)
        out, start = torch.empty_like(xs), 0
        for e, n in enumerate(counts.tolist()):
            if n:
                h = F.silu(F.linear(xs[start:start + n], self.ew1[e])) * F.linear(xs[start:start + n], self.ew3[e])
                out[start:start + n] = F.linear(h, self.ew2[e])
            start += n
        return out

    def ffn(self, x):
        B, T, D = x.shape
        m = F.rms_norm(x, (D,), self.ffn_norm, self.c["norm_eps"])
        if not self.moe:
            return x + F.linear(F.silu(F.linear(m, self.w1)) * F.linear(m, self.w3), self.w2), None, None
        c, E, K = self.c, self.c["n_experts"], self.c["top_k"]
        mt = m.reshape(B * T, D)
        s = torch.sigmoid(F.linear(mt, self.router).float())  # (N, E) scores in fp32
        if c["score"] == "softmax":
            s = torch.softmax(F.linear(mt, self.router).float(), dim=-1)
        idx = torch.topk(s + self.bias, K, dim=-1).indices  # (N, K)
        g = s.gather(1, idx)
        if c["norm_topk"]:
            g = g / g.sum(-1, keepdim=True)
        g = g * c["route_scale"]
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)  # rows by expert, then token, then choice
        counts = torch.bincount(flat, minlength=E)
        ys = self.experts(mt[order // K].to(self.c["dtype"]), counts)
        y_nk = torch.empty_like(ys)
        y_nk[order] = ys
        y = (y_nk.view(B * T, K, D) * g.unsqueeze(-1).to(ys.dtype)).sum(1)
        y = y + F.linear(F.silu(F.linear(mt, self.sw1)) * F.linear(mt, self.sw3), self.sw2)
        # Sequence balance loss (DeepSeek-V3 eqs. 17-20), gradient through P only.
        st = s.view(B, T, E)
        P = (st / st.sum(-1, keepdim=True)).mean(1)  # (B, E)
        onehot = torch.zeros(B, T, E, device=x.device).scatter_(2, idx.view(B, T, K), 1.0)
        f = onehot.sum(1) * (E / (K * T))  # (B, E)
        bal = (f * P).sum(-1).mean()
        return x + y.view(B, T, D), bal, counts


def init_weights(module, L):
    """§2's initialization of every matrix of module (a model of L layers, or a part of one): normal
    with std 0.02, the output projections 0.02/sqrt(2L)."""
    s_out = 0.02 / math.sqrt(2 * L)
    for n, p in module.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, 0.0, s_out if n.split(".")[-1] in ("wo", "w2", "ew2", "sw2") else 0.02)


class Model(nn.Module):
    def __init__(self, c, gmm):
        super().__init__()
        self.c = c
        V, D, L = c["vocab_size"], c["d_model"], c["n_layers"]
        self.embed = nn.Parameter(torch.empty(V, D))
        self.layers = nn.ModuleList([Layer(c, l >= c["n_dense_layers"], gmm) for l in range(L)])
        self.final_norm = nn.Parameter(torch.ones(D))
        self.lm_head = None if c["tie_embeddings"] else nn.Parameter(torch.empty(V, D))
        self.rope = Rope(c["seq_len"], D // c["n_heads"], c["rope_theta"])
        init_weights(self, L)

    def forward(self, x, y):
        h = F.embedding(x, self.embed)
        bal, counts = 0.0, []
        for layer in self.layers:
            h = layer.attention(h, self.rope)
            h, b, cnt = layer.ffn(h)
            if b is not None:
                bal, counts = bal + b, counts + [cnt]
        h = F.rms_norm(h, (h.shape[-1],), self.final_norm, self.c["norm_eps"])
        logits = F.linear(h, self.embed if self.lm_head is None else self.lm_head)
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.reshape(-1))
        return ce + self.c["balance_alpha"] * bal, counts


def sync(dev):
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def gemm_tflops(dev, dt, n, reps=10):
    """The best of reps n^3 GEMMs, the peak MFU is given against."""
    a = torch.randn(n, n, device=dev, dtype=dt)
    b = torch.randn(n, n, device=dev, dtype=dt)
    best = 1e30
    for r in range(reps + 1):
        sync(dev)
        t0 = time.perf_counter()
        a @ b
        sync(dev)
        if r:
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def run(c, dev, mode, gmm, min_steps, min_seconds, warmup, peak):
    torch.manual_seed(c["seed"])
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = Model(c, gmm).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=c["lr"],
                            betas=(c["beta1"], c["beta2"]), eps=c["adam_eps"], fused=dev == "cuda")
    B, T, V = c["batch_size"], c["seq_len"], c["vocab_size"]
    g = torch.Generator(device=dev).manual_seed(3)
    tok = torch.randint(0, V, (c["grad_accum"], B, T + 1), device=dev, generator=g)
    fwd = torch.compile(model) if mode == "compile" else model
    E, K = c["n_experts"], c["top_k"]

    def step():
        opt.zero_grad(set_to_none=True)
        total, all_counts = 0.0, None
        for a in range(c["grad_accum"]):
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                loss, counts = fwd(tok[a, :, :T], tok[a, :, 1:])
            (loss / c["grad_accum"]).backward()
            total += loss.detach() / c["grad_accum"]
            cs = torch.stack(counts)
            all_counts = cs if all_counts is None else all_counts + cs
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"], foreach=True)
        opt.step()
        with torch.no_grad():  # aux-loss-free bias update, as moelab's step does
            mean = K * c["grad_accum"] * B * T / E
            for layer, cnt in zip([l for l in model.layers if l.moe], all_counts):
                layer.bias += c["bias_rate"] * torch.sign(mean - cnt.float())
        return total, all_counts

    t_compile = time.perf_counter()
    first = step()[0].item()
    t_compile = time.perf_counter() - t_compile
    for _ in range(warmup):
        step()
    sync(dev)
    t0 = time.perf_counter()
    steps, elapsed = 0, 0.0
    while steps < min_steps or elapsed < min_seconds:
        last, counts = step()
        last = last.item()  # waits for the step, as moelab bench's loss does
        steps += 1
        elapsed = time.perf_counter() - t0
    dt = elapsed / steps
    tps = c["grad_accum"] * B * T / dt
    tflops = tps * train_flops_per_token(c) / 1e12
    # On the CPU the process's peak resident set (the model's tensors and PyTorch's own).
    mem = (torch.cuda.max_memory_allocated() if dev == "cuda" else
           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30
    print(f"{'torch ' + mode:<22} {sum(p.numel() for p in model.parameters()) / 1e6:9.2f} {steps:7d} {dt:10.3f} "
          f"{tps:10.0f} {tflops:10.{1 if dev == 'cuda' else 4}f} {100 * tflops / peak:7.1f}% {mem:9.2f} {first:8.3f}/{last:.3f}"
          f"   (first step {t_compile:.1f} s)", flush=True)
    # The same line as moelab bench's: how skewed the last step's expert loads were.
    load = counts.float().amax(dim=1) / counts.float().mean(dim=1)
    print(f"  expert load max/mean at the last step: {load.mean().item():.2f} mean over the MoE layers, "
          f"{load.max().item():.2f} the worst", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/bench.cfg")
    ap.add_argument("--mode", default="eager,compile")
    ap.add_argument("--steps", type=int, default=3, help="time at least this many steps")
    ap.add_argument("--seconds", type=float, default=5.0, help="and at least this many seconds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    args = ap.parse_args()
    c = load_config(args.config)
    dev = args.device
    c["dtype"] = torch.bfloat16 if dev == "cuda" else torch.float32
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    gmm = grouped_mm_fn(dev, c["dtype"])
    if dev == "cuda":
        peak = gemm_tflops(dev, torch.bfloat16, 8192)
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: bf16 GEMM 8192^3 = {peak:.1f} TFLOP/s; "
              f"experts through {'grouped_mm' if gmm else 'a per-expert loop'}\n")
    else:
        peak = gemm_tflops(dev, torch.float32, 1024)
        print(f"torch {torch.__version__} on the CPU, {torch.get_num_threads()} threads: fp32 GEMM 1024^3 = "
              f"{peak * 1e3:.1f} GFLOP/s; experts through {'grouped_mm' if gmm else 'a per-expert loop'}\n")
    print(f"{'config':<22} {'params(M)':>9} {'steps':>7} {'step (s)':>10} {'tokens/s':>10} {'TFLOP/s':>10} "
          f"{'MFU':>8} {'peak GiB':>9} {'loss first/last':>17}")
    for mode in args.mode.split(","):
        run(c, dev, mode, gmm, args.steps, args.seconds, args.warmup, peak)
        if dev == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
