"""Independent PyTorch reference of the moelab model (docs/architecture.md §2), its loss and its optimizer.

`moe_reference.py DUMP` recomputes, in float64 from the dump's config, tokens and float32 parameters,
the logits, losses, every parameter gradient and the losses of a few AdamW steps, and compares them
with the C model's values in the same dump (relative error ‖c − ref‖ / ‖ref‖). `--selftest` checks the
reference itself (finite differences, a naive attention, PyTorch's AdamW) and that the comparator
both passes an exact dump and fails a perturbed one. See README.md for the dump's contents.
"""
import argparse
import math
import os
import re
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tensor_dump import DumpError, read_dump, write_dump  # noqa: E402

torch.set_default_dtype(torch.float64)
F64 = torch.float64


class InputError(Exception):
    """The dump cannot be used (bad config, missing or misshapen parameter, bad tokens): exit 2."""


# ------------------------------------------------------------------------------------------------
# Config: the `key = value` text that framework/core/config.c writes. Only the keys the math needs.

INT_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "n_dense_layers", "d_ff",
            "n_experts", "top_k", "n_shared", "d_expert", "warmup_steps", "steps")
FLOAT_KEYS = ("route_scale", "bias_rate", "balance_alpha", "rope_theta", "norm_eps", "lr", "min_lr",
              "weight_decay", "grad_clip", "beta1", "beta2", "adam_eps", "router_skew")
BOOL_KEYS = ("norm_topk", "tie_embeddings")


class Config:
    """Model and optimizer settings; attribute names follow docs/architecture.md (V, D, L, H, ...)."""

    def __init__(self, kv):
        def need(key):
            if key not in kv:
                raise InputError(f"config_text has no '{key}' key")
            return kv[key]

        def as_int(key):
            try:
                return int(need(key))
            except ValueError:
                raise InputError(f"config: {key} = '{kv[key]}' is not an integer") from None

        def as_float(key):
            try:
                return float(need(key))
            except ValueError:
                raise InputError(f"config: {key} = '{kv[key]}' is not a number") from None

        def as_bool(key):
            v = need(key)
            if v not in ("true", "false", "1", "0"):
                raise InputError(f"config: {key} = '{v}' is not true|false|1|0")
            return v in ("true", "1")

        self.V, self.D, self.L = as_int("vocab_size"), as_int("d_model"), as_int("n_layers")
        self.H, self.Hkv, self.n_dense = as_int("n_heads"), as_int("n_kv_heads"), as_int("n_dense_layers")
        self.F, self.E, self.K = as_int("d_ff"), as_int("n_experts"), as_int("top_k")
        self.S, self.Fe = as_int("n_shared"), as_int("d_expert")
        self.score = need("score")
        self.route_scale, self.norm_topk = as_float("route_scale"), as_bool("norm_topk")
        self.bias_rate, self.alpha = as_float("bias_rate"), as_float("balance_alpha")
        self.theta, self.eps = as_float("rope_theta"), as_float("norm_eps")
        self.tie = as_bool("tie_embeddings")
        # router_skew only sets the balancing biases' starting values (docs/architecture.md §2),
        # which come with the other initial parameters (param.*): nothing else to do with it.
        self.router_skew = as_float("router_skew")
        self.lr, self.min_lr = as_float("lr"), as_float("min_lr")
        self.warmup, self.steps = as_int("warmup_steps"), as_int("steps")
        self.wd, self.clip = as_float("weight_decay"), as_float("grad_clip")
        self.beta1, self.beta2, self.adam_eps = as_float("beta1"), as_float("beta2"), as_float("adam_eps")
        rules = [
            (self.score in ("sigmoid", "softmax"), f"score = '{self.score}' is not sigmoid|softmax"),
            (self.H > 0 and self.D % self.H == 0, "d_model must be divisible by n_heads"),
            (self.H > 0 and (self.D // self.H) % 2 == 0, "head size must be even for RoPE"),
            (self.Hkv > 0 and self.H % self.Hkv == 0, "n_heads must be divisible by n_kv_heads"),
            (1 <= self.K <= self.E, "top_k must be in [1, n_experts]"),
            (0 <= self.n_dense <= self.L, "n_dense_layers must be in [0, n_layers]"),
        ]
        for ok, msg in rules:
            if not ok:
                raise InputError(f"config: {msg}")
        self.hd = self.D // self.H


def strip_comment(line):
    """The line before its comment: a `#` at its start or after a blank (one glued to other
    characters is part of a value, `out = runs/run#2`), as moelab's config reader cuts it."""
    m = re.search(r"(^|[ \t])#", line)
    return line[:m.start()] if m else line


def parse_config_text(text):
    """{key: value string} from `key = value` lines and their comments (strip_comment)."""
    kv = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = strip_comment(line).strip()
        if not line:
            continue
        if "=" not in line:
            raise InputError(f"config_text line {lineno}: expected 'key = value', got '{line}'")
        key, value = line.split("=", 1)
        kv[key.strip()] = value.strip()
    return kv


# ------------------------------------------------------------------------------------------------
# Parameters: names and shapes (all Linear weights are (out, in): y = x Wᵀ).

def param_shapes(c):
    """{name: shape} of every parameter, in model order."""
    shapes = {"embed": (c.V, c.D)}
    for l in range(c.L):
        p = f"layers.{l}."
        shapes.update({p + "attn_norm": (c.D,), p + "wq": (c.H * c.hd, c.D),
                       p + "wk": (c.Hkv * c.hd, c.D), p + "wv": (c.Hkv * c.hd, c.D),
                       p + "wo": (c.D, c.H * c.hd), p + "ffn_norm": (c.D,)})
        if l < c.n_dense:
            shapes.update({p + "w13": (2 * c.F, c.D), p + "w2": (c.D, c.F)})
            continue
        shapes.update({p + "router": (c.E, c.D), p + "router_bias": (c.E,),
                       p + "experts.w13": (c.E, 2 * c.Fe, c.D), p + "experts.w2": (c.E, c.D, c.Fe)})
        if c.S > 0:
            shapes.update({p + "shared.w13": (c.S, 2 * c.Fe, c.D), p + "shared.w2": (c.S, c.D, c.Fe)})
    shapes["final_norm"] = (c.D,)
    if not c.tie:
        shapes["lm_head"] = (c.V, c.D)
    return shapes


def is_trained(name):
    """Every parameter but the balancing biases gets a gradient."""
    return not name.endswith("router_bias")


# ------------------------------------------------------------------------------------------------
# The model (§2).

def rmsnorm(x, g, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope(x, theta):
    """x (B, heads, T, hd): rotate pairs (i, i + hd/2) by angle t · θ^(−2i/hd), t = position."""
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    freq = theta ** (-2.0 * torch.arange(half, dtype=F64) / hd)                 # (hd/2)
    ang = torch.arange(T, dtype=F64)[:, None] * freq[None, :]                   # (T, hd/2)
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention(a, wq, wk, wv, wo, c):
    """a (B, T, D) → (B, T, D). Head j owns rows j·hd..(j+1)·hd−1 of wq (and of wk, wv for kv heads);
    query head j reads kv head j // (H/Hkv)."""
    B, T, _ = a.shape
    q = (a @ wq.T).view(B, T, c.H, c.hd).transpose(1, 2)        # (B, H, T, hd)
    k = (a @ wk.T).view(B, T, c.Hkv, c.hd).transpose(1, 2)      # (B, Hkv, T, hd)
    v = (a @ wv.T).view(B, T, c.Hkv, c.hd).transpose(1, 2)      # (B, Hkv, T, hd)
    q, k = rope(q, c.theta), rope(k, c.theta)
    group = c.H // c.Hkv
    k = k.repeat_interleave(group, dim=1)                       # (B, H, T, hd): index j → j // group
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(c.hd)          # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    o = (probs @ v).transpose(1, 2).reshape(B, T, c.H * c.hd)   # (B, T, H·hd)
    return o @ wo.T


def swiglu(x, w13, w2):
    """x (N, D), w13 (2F, D) = [W1; W3] as moelab stores them, w2 (D, F) → W2(silu(W1 x) ⊙ W3 x), (N, D)."""
    F = w13.shape[0] // 2
    w1, w3 = w13[:F], w13[F:]
    return (torch.nn.functional.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def topk_mask(key, K):
    """key (N, E) → (N, E) bool: the K largest per row, ties to the lower index. Expert i is chosen
    iff fewer than K experts precede it in the order (larger key first, then lower index); written
    out rather than trusting torch.topk's tie order."""
    E = key.shape[-1]
    ki, kj = key[:, :, None], key[:, None, :]                     # (N, E, 1), (N, 1, E)
    idx = torch.arange(E)
    j_lower = idx[None, None, :] < idx[None, :, None]             # [.., i, j]: j < i
    precedes = (kj > ki) | ((kj == ki) & j_lower)                 # (N, E, E): j precedes i
    return precedes.sum(-1) < K


def routing_margin(key, K):
    """Smallest gap, over tokens, between the K-th and (K+1)-th largest key (inf when K == E):
    where it is tiny, float32 rounding in the C model may legitimately choose differently."""
    if K >= key.shape[-1] or key.shape[0] == 0:
        return math.inf
    top = torch.sort(key, dim=-1, descending=True).values
    return float((top[:, K - 1] - top[:, K]).min())


def moe(m, p, pre, c):
    """m (B, T, D) → y (B, T, D), sequence balance loss (mean over sequences), tokens per expert (E),
    chosen mask (B·T, E) and routing margin."""
    B, T, D = m.shape
    x = m.reshape(B * T, D)                                       # (N, D)
    logits = x @ p[pre + "router"].T                              # (N, E)
    s = torch.sigmoid(logits) if c.score == "sigmoid" else torch.softmax(logits, dim=-1)
    key = (s + p[pre + "router_bias"]).detach()
    chosen = topk_mask(key, c.K)                                  # (N, E), no gradient
    g = s * chosen                                                # gradient flows through s only
    if c.norm_topk:
        g = g / g.sum(-1, keepdim=True)
    g = g * c.route_scale
    y = torch.zeros_like(x)
    for j in range(c.S):
        y = y + swiglu(x, p[pre + "shared.w13"][j], p[pre + "shared.w2"][j])
    for i in range(c.E):
        rows = chosen[:, i].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        out = swiglu(x[rows], p[pre + "experts.w13"][i], p[pre + "experts.w2"][i])
        y = y.index_add(0, rows, g[rows, i:i + 1] * out)
    # Sequence balance loss: f is a count (constant), P carries the gradient.
    f = c.E / (c.K * T) * chosen.view(B, T, c.E).sum(1).to(F64)           # (B, E)
    P = (s / s.sum(-1, keepdim=True)).view(B, T, c.E).mean(1)              # (B, E)
    l_bal = (f * P).sum(-1).mean()
    return y.view(B, T, D), l_bal, chosen.sum(0), chosen, routing_margin(key, c.K)


def forward(p, tokens, c):
    """tokens (B, T+1) int → dict: logits (B, T, V), ce, loss = ce + α Σ L_bal, counts [per MoE
    layer (E)], chosen [per MoE layer (B·T, E)], margin."""
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise InputError(f"tokens must be (B, T+1) with T >= 1, got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= c.V):
        raise InputError(f"tokens outside [0, {c.V})")
    x, targets = tokens[:, :-1], tokens[:, 1:]
    h = p["embed"][x]                                             # (B, T, D)
    l_bal, counts, chosen, margin = 0.0, [], [], math.inf
    for l in range(c.L):
        pre = f"layers.{l}."
        a = rmsnorm(h, p[pre + "attn_norm"], c.eps)
        h = h + attention(a, p[pre + "wq"], p[pre + "wk"], p[pre + "wv"], p[pre + "wo"], c)
        m = rmsnorm(h, p[pre + "ffn_norm"], c.eps)
        if l < c.n_dense:
            B, T, D = m.shape
            h = h + swiglu(m.reshape(B * T, D), p[pre + "w13"], p[pre + "w2"]).view(B, T, D)
            continue
        y, lb, cnt, ch, mg = moe(m, p, pre, c)
        h = h + y
        l_bal = l_bal + lb
        counts.append(cnt)
        chosen.append(ch)
        margin = min(margin, mg)
    h = rmsnorm(h, p["final_norm"], c.eps)
    logits = h @ (p["embed"] if c.tie else p["lm_head"]).T       # (B, T, V)
    ce = (torch.logsumexp(logits, -1) - logits.gather(-1, targets[..., None]).squeeze(-1)).mean()
    return {"logits": logits, "ce": ce, "loss": ce + c.alpha * l_bal, "counts": counts,
            "chosen": chosen, "margin": margin}


def loss_and_grads(p, tokens, c):
    """forward() plus {name: gradient} for every trained parameter (zeros where unused)."""
    out = forward(p, tokens, c)
    names = [n for n in p if is_trained(n)]
    grads = torch.autograd.grad(out["loss"], [p[n] for n in names], allow_unused=True)
    out["grads"] = {n: torch.zeros_like(p[n]) if g is None else g for n, g in zip(names, grads)}
    return out


# ------------------------------------------------------------------------------------------------
# Optimizer step: clipping, learning-rate schedule, AdamW, aux-loss-free bias update.

def lr_at(s, c):
    """Learning rate of step s (0-based): linear warm-up, then cosine decay to min_lr."""
    if s < c.warmup:
        return c.lr * (s + 1) / c.warmup
    prog = min((s - c.warmup) / max(1, c.steps - c.warmup), 1.0)
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + math.cos(math.pi * prog))


def clip_grads(grads, clip):
    """Scales all gradients by clip/‖g‖ when clip > 0 and the global norm exceeds it; returns the norm."""
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    if clip > 0 and norm > clip:
        for g in grads.values():
            g.mul_(clip / norm)
    return norm


def adamw_step(p, grads, state, t, lr, c):
    """torch.optim.AdamW's math, step t (1-based); decay only on tensors of 2 or more dims."""
    with torch.no_grad():
        for n, g in grads.items():
            m, v = state.setdefault(n, (torch.zeros_like(g), torch.zeros_like(g)))
            if p[n].ndim >= 2:
                p[n].mul_(1.0 - lr * c.wd)
            m.mul_(c.beta1).add_(g, alpha=1.0 - c.beta1)
            v.mul_(c.beta2).addcmul_(g, g, value=1.0 - c.beta2)
            m_hat = m / (1.0 - c.beta1 ** t)
            v_hat = v / (1.0 - c.beta2 ** t)
            p[n].sub_(lr * m_hat / (torch.sqrt(v_hat) + c.adam_eps))


def bias_update(b, counts, n_tokens, c):
    """b_i += γ · sign(c̄ − c_i), c̄ = K · n_tokens / E (in place)."""
    cbar = c.K * n_tokens / c.E
    with torch.no_grad():
        b.add_(c.bias_rate * torch.sign(cbar - counts.to(F64)))


def train_steps(p0, steps_tokens, c):
    """steps_tokens (S, A, B, T+1): S optimizer steps of A micro-batches from params p0.
    Returns the S step losses (each computed before its update), the smallest routing margin and
    the parameters after the last step."""
    p = {n: t.detach().clone().requires_grad_(is_trained(n)) for n, t in p0.items()}
    state, losses, margin = {}, [], math.inf
    moe_layers = range(c.n_dense, c.L)
    for s in range(steps_tokens.shape[0]):
        A = steps_tokens.shape[1]
        grads = {n: torch.zeros_like(t) for n, t in p.items() if is_trained(n)}
        counts = [torch.zeros(c.E, dtype=torch.int64) for _ in moe_layers]
        loss, n_tokens = 0.0, 0
        for a in range(A):
            out = loss_and_grads(p, steps_tokens[s, a], c)
            loss += float(out["loss"]) / A
            for n, g in out["grads"].items():
                grads[n] += g / A
            for cnt, mb in zip(counts, out["counts"]):
                cnt += mb
            n_tokens += out["logits"].shape[0] * out["logits"].shape[1]
            margin = min(margin, out["margin"])
        losses.append(loss)
        clip_grads(grads, c.clip)
        adamw_step(p, grads, state, s + 1, lr_at(s, c), c)
        for l, cnt in zip(moe_layers, counts):
            bias_update(p[f"layers.{l}.router_bias"], cnt, n_tokens, c)
    return np.array(losses), margin, p


# ------------------------------------------------------------------------------------------------
# Reading a dump and comparing.

def load_inputs(d):
    """Config, tokens and parameters (float64 tensors, trained ones requiring grad) from a dump."""
    if "config_text" not in d:
        raise InputError("dump has no 'config_text' entry")
    c = Config(parse_config_text(bytes(d["config_text"].astype(np.uint8)).decode("utf-8")))
    p = {}
    for name, shape in param_shapes(c).items():
        key = "param." + name
        if key not in d:
            raise InputError(f"dump has no '{key}' (expected shape {shape})")
        if d[key].shape != shape or d[key].dtype != np.float32:
            raise InputError(f"'{key}' is {d[key].dtype} {d[key].shape}, expected float32 {shape}")
        p[name] = torch.tensor(d[key], dtype=F64, requires_grad=is_trained(name))
    extra = sorted(k for k in d if k.startswith("param.") and k[len("param."):] not in p)
    if extra:
        raise InputError(f"dump has parameters this config does not define: {', '.join(extra)}")
    for key in ("tokens", "steps.tokens"):
        if key in d and d[key].dtype != np.int32:
            raise InputError(f"'{key}' is {d[key].dtype}, expected int32")
    if "tokens" not in d:
        raise InputError("dump has no 'tokens' entry")
    if "steps.tokens" in d and d["steps.tokens"].ndim != 4:
        raise InputError(f"'steps.tokens' is {d['steps.tokens'].shape}, expected (S, A, B, T+1)")
    return c, p


def rel_err(got, ref):
    """‖got − ref‖ / ‖ref‖ in float64 (the absolute ‖got‖ when ref is all zeros); NaN stays NaN."""
    got = np.asarray(got, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    diff = float(np.linalg.norm(got - ref))
    norm = float(np.linalg.norm(ref))
    return diff / norm if norm > 0 else diff


def compute_reference(c, p, tokens, steps_tokens, with_final):
    """{output name: float64 numpy array} for every value the C model dumps (with the parameters
    after the steps, `final.<name>`, when with_final), and the routing margin."""
    out = loss_and_grads(p, tokens, c)
    ref = {"logits": out["logits"].detach().numpy(), "loss": np.array([float(out["loss"])]),
           "ce_loss": np.array([float(out["ce"])]),
           "balance_loss": np.array([float(out["loss"]) - float(out["ce"])])}
    for n, g in out["grads"].items():
        ref["grad." + n] = g.numpy()
    margin = out["margin"]
    if steps_tokens is not None:
        ref["steps.loss"], m2, final = train_steps(p, steps_tokens, c)
        margin = min(margin, m2)
        if with_final:
            ref.update({"final." + n: t.detach().numpy() for n, t in final.items()})
    return ref, margin


def compare(d, tol, tol_final=None, require_final=False, backend=None, tol_bias=None):
    """Rows (name, rel err or None, passed, note) comparing dump d with the reference; the routing
    margin. final.* entries use tol_final (default tol), the final router biases tol_bias (default
    tol_final); require_final: they must be there; backend: the dump's `backend` must name it. Raises
    InputError when the dump cannot be used."""
    c, p = load_inputs(d)
    steps = d["steps.tokens"] if "steps.tokens" in d else None
    # final.* (the parameters after the steps) is optional, but all or nothing: once one is there,
    # every parameter's must be.
    with_final = require_final or any(k.startswith("final.") for k in d)
    ref, margin = compute_reference(c, p, d["tokens"], steps, with_final)
    if steps is None:
        ref["steps.loss"] = None  # listed so that its absence fails below
    # The balance term alone (loss − ce_loss): a few thousandths of the loss, so that no tolerance on
    # the loss could see it dropped or halved.
    if "loss" in d and "ce_loss" in d:
        d = dict(d)
        d["balance_loss"] = d["loss"].astype(np.float64) - d["ce_loss"].astype(np.float64)
    rows = []
    if backend is not None:
        # What ran: a driver that ignored its --device ran every "GPU" comparison on the CPU.
        got = bytes(d["backend"].astype(np.uint8)).decode("utf-8") if "backend" in d else None
        rows.append(("backend", None, got == backend,
                     "missing from dump" if got is None else f"'{got}'" + ("" if got == backend else
                                                                           f", expected '{backend}'")))
    for name, r in ref.items():
        if name not in d:
            rows.append((name, None, False, "missing from dump"))
            continue
        if r is None:
            rows.append((name, None, False, "dump has steps.loss but no steps.tokens"))
            continue
        got = d[name]
        if got.shape != r.shape:
            rows.append((name, None, False, f"shape {got.shape}, expected {r.shape}"))
            continue
        err = rel_err(got, r)
        bound = tol_final if name.startswith("final.") and tol_final is not None else tol
        if name.startswith("final.") and name.endswith(".router_bias") and tol_bias is not None:
            bound = tol_bias
        rows.append((name, err, err <= bound, "NaN" if math.isnan(err) else ""))
    known = set(ref) | {"config_text", "tokens", "steps.tokens", "backend"}
    for name in d:
        if name not in known and not name.startswith("param."):
            rows.append((name, None, False, "unexpected entry (no reference value)"))
    return rows, margin


def run_compare(path, tol, quiet=False, tol_final=None, require_final=False, backend=None, tol_bias=None):
    """Compares the dump at path; prints the table (or the error) unless quiet. Exit code: 0 all pass, 1 a
    comparison failed, 2 the dump is unusable."""
    try:
        rows, margin = compare(read_dump(path), tol, tol_final, require_final, backend, tol_bias)
    except (OSError, DumpError, InputError) as err:
        if not quiet:
            print(f"moe_reference.py: error: {err}", file=sys.stderr)
        return 2, []
    failed = [r for r in rows if not r[2]]
    if not quiet:
        final = "" if tol_final is None else f", final.* {tol_final:g}"
        final += "" if tol_bias is None else f", final router biases {tol_bias:g}"
        print(f"{'name':44s} {'rel err':>12s}  result   (tolerance {tol:g}{final})")
        for name, err, ok, note in rows:
            e = "-" if err is None else f"{err:.3e}"
            print(f"{name:44s} {e:>12s}  {'pass' if ok else 'FAIL'}  {note}")
        print(f"smallest routing margin (K-th minus (K+1)-th score+bias): {margin:.3e}")
        if failed and margin < 1e-5:
            print("note: a margin this small can flip a choice under float32 rounding: if the "
                  "failures start at an MoE layer, try another seed before suspecting the model")
        print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return (1 if failed else 0), [r[0] for r in failed]


# ------------------------------------------------------------------------------------------------
# Self-test: the reference against finite differences, a naive attention and PyTorch's AdamW; the
# comparator against an exact dump (must pass) and perturbed ones (must fail).

class SelftestFailure(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise SelftestFailure(msg)


def f32(x):
    """The float32 value of x, as the C model holds config numbers."""
    return float(np.float32(x))


def config_text(kv):
    """`key = value` lines as config_write prints them (floats rounded to float32)."""
    lines = []
    for k, v in kv.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, float):
            v = "%.9g" % f32(v)
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def small_config(**over):
    kv = {"vocab_size": 29, "d_model": 16, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
          "seq_len": 7, "n_dense_layers": 1, "d_ff": 24, "n_experts": 6, "top_k": 2, "n_shared": 1,
          "d_expert": 12, "score": "sigmoid", "route_scale": 1.0, "norm_topk": True,
          "bias_rate": 0.05, "balance_alpha": 0.01, "rope_theta": 10000.0, "norm_eps": 1e-5,
          "tie_embeddings": False, "lr": 0.01, "min_lr": 0.001, "warmup_steps": 1, "steps": 4,
          "weight_decay": 0.1, "grad_clip": 1.0, "beta1": 0.9, "beta2": 0.95, "adam_eps": 1e-8,
          "router_skew": 0.0, "batch_size": 2, "grad_accum": 2}
    kv.update(over)
    return kv


def random_params(c, gen):
    """Random float32-representable parameters (float64 tensors), biases non-zero so they matter."""
    p = {}
    for name, shape in param_shapes(c).items():
        if name.endswith("norm"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("router_bias"):
            t = 0.05 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
        p[name] = t.float().double().requires_grad_(is_trained(name))
    return p


def random_tokens(c, shape, gen):
    return torch.randint(0, c.V, shape, generator=gen).numpy().astype(np.int32)


def make_exact_dump(kv, seed, S, with_final):
    """A dump whose C-side values are the reference's own (cast to float32)."""
    c = Config({k: str(v) for k, v in parse_config_text(config_text(kv)).items()})
    gen = torch.Generator().manual_seed(seed)
    p = random_params(c, gen)
    B, T, A = kv["batch_size"], kv["seq_len"], kv["grad_accum"]
    tokens = random_tokens(c, (B, T + 1), gen)
    steps = random_tokens(c, (S, A, B, T + 1), gen)
    ref, _ = compute_reference(c, p, tokens, steps, with_final)
    d = {"config_text": np.frombuffer(config_text(kv).encode(), dtype=np.uint8), "tokens": tokens,
         "steps.tokens": steps}
    d.update({"param." + n: t.detach().numpy().astype(np.float32) for n, t in p.items()})
    d.update({n: v.astype(np.float32) for n, v in ref.items()})
    return d, c


def check_dump_format(tmp):
    path = os.path.join(tmp, "fmt.bin")
    entries = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5,
               "ids": np.array([7, -1, 2 ** 31 - 1], dtype=np.int32),
               "text": np.frombuffer(b"k = v\n", dtype=np.uint8), "scalar": np.array(3.5, np.float32),
               "empty": np.zeros((0, 4), np.float32)}
    write_dump(path, entries)
    back = read_dump(path)
    expect(list(back) == list(entries), "dump round trip changed the entry order")
    for k, v in entries.items():
        expect(back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v),
               f"dump round trip changed '{k}'")
    # The exact bytes of a one-entry dump, written out by hand from the format.
    write_dump(path, {"xy": np.array([1.0, -2.0], np.float32)})
    want = (b"MLTDUMP1" + (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + b"xy"
            + (0).to_bytes(4, "little") + (1).to_bytes(4, "little") + (2).to_bytes(8, "little")
            + np.array([1.0, -2.0], "<f4").tobytes())
    with open(path, "rb") as f:
        expect(f.read() == want, "dump bytes differ from the format")
    bad = {"truncated": want[:-1], "bad magic": b"MLTDUMP2" + want[8:], "trailing": want + b"\0",
           "bad dtype": want[:18] + (9).to_bytes(4, "little") + want[22:],
           "count too high": want[:8] + (2).to_bytes(4, "little") + want[12:]}
    for what, raw in bad.items():
        with open(path, "wb") as f:
            f.write(raw)
        try:
            read_dump(path)
            raise SelftestFailure(f"reader accepted a dump with {what}")
        except DumpError:
            pass


def check_topk_ties(tmp):
    gen = torch.Generator().manual_seed(3)
    key = torch.randint(0, 3, (50, 7), generator=gen).to(F64) / 4  # many exact ties
    for K in (1, 2, 3, 7):
        mask = topk_mask(key, K)
        for n in range(key.shape[0]):
            want = sorted(range(7), key=lambda i: (-float(key[n, i]), i))[:K]
            expect(sorted(mask[n].nonzero().squeeze(1).tolist()) == sorted(want),
                   f"top-{K} of {key[n].tolist()} is not {want}")


def naive_attention(a, wq, wk, wv, wo, c):
    """Token-by-token attention with RoPE written from the formula, for checking attention()."""
    B, T, _ = a.shape
    q, k, v = a @ wq.T, a @ wk.T, a @ wv.T
    half = c.hd // 2

    def rotate(vec, t):
        out = vec.clone()
        for i in range(half):
            ang = t * c.theta ** (-2.0 * i / c.hd)
            x1, x2 = vec[i], vec[i + half]
            out[i] = x1 * math.cos(ang) - x2 * math.sin(ang)
            out[i + half] = x2 * math.cos(ang) + x1 * math.sin(ang)
        return out

    o = torch.zeros(B, T, c.H * c.hd)
    for b in range(B):
        for j in range(c.H):
            kvh = j // (c.H // c.Hkv)
            qs = [rotate(q[b, t, j * c.hd:(j + 1) * c.hd], t) for t in range(T)]
            ks = [rotate(k[b, t, kvh * c.hd:(kvh + 1) * c.hd], t) for t in range(T)]
            for t in range(T):
                sc = torch.stack([qs[t] @ ks[u] / math.sqrt(c.hd) for u in range(t + 1)])
                w = torch.exp(sc - sc.max())
                w = w / w.sum()
                o[b, t, j * c.hd:(j + 1) * c.hd] = sum(w[u] * v[b, u, kvh * c.hd:(kvh + 1) * c.hd]
                                                       for u in range(t + 1))
    return o @ wo.T


def check_attention(tmp):
    c = Config({k: str(v) for k, v in parse_config_text(config_text(
        small_config(d_model=12, n_heads=6, n_kv_heads=2, rope_theta=50.0))).items()})
    gen = torch.Generator().manual_seed(5)
    B, T = 2, 5
    a = torch.randn(B, T, c.D, generator=gen)
    ws = [torch.randn(s, generator=gen) / math.sqrt(c.D) for s in
          ((c.H * c.hd, c.D), (c.Hkv * c.hd, c.D), (c.Hkv * c.hd, c.D), (c.D, c.H * c.hd))]
    got, want = attention(a, *ws, c), naive_attention(a, *ws, c)
    expect(rel_err(got, want) < 1e-12, f"attention differs from the naive one ({rel_err(got, want):.2e})")


def check_adamw_and_schedule(tmp):
    c = Config({k: str(v) for k, v in parse_config_text(config_text(
        small_config(lr=1.0, min_lr=0.1, warmup_steps=2, steps=6))).items()})
    for s, want in ((0, 0.5), (1, 1.0), (2, 1.0), (4, 0.55), (6, 0.1), (10, 0.1)):
        # 1e-7, not exact: config numbers are float32 (0.1 is 0.100000001).
        expect(abs(lr_at(s, c) - want) < 1e-7, f"lr_at({s}) = {lr_at(s, c)}, expected {want}")
    gen = torch.Generator().manual_seed(9)
    shapes = {"w": (3, 4), "e": (2, 3, 4), "g": (4,)}
    p = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    tp = {n: t.clone().requires_grad_() for n, t in p.items()}
    opt = torch.optim.AdamW([{"params": [tp["w"], tp["e"]], "weight_decay": c.wd},
                             {"params": [tp["g"]], "weight_decay": 0.0}],
                            lr=0.3, betas=(c.beta1, c.beta2), eps=c.adam_eps)
    state = {}
    for t in range(1, 4):
        grads = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
        adamw_step(p, grads, state, t, 0.3, c)
        for n in shapes:
            tp[n].grad = grads[n].clone()
        opt.step()
    for n in shapes:
        expect(rel_err(p[n], tp[n].detach()) < 1e-12, f"AdamW differs from torch.optim.AdamW on '{n}'")
    cb = Config({k: str(v) for k, v in parse_config_text(config_text(
        small_config(n_experts=4, top_k=2))).items()})
    b = torch.zeros(4)
    bias_update(b, torch.tensor([3, 1, 2, 2]), 4, cb)  # c̄ = 2·4/4 = 2
    expect(torch.allclose(b, cb.bias_rate * torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=0, rtol=1e-15),
           f"bias update gave {b.tolist()}")
    g = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}
    norm = clip_grads(g, 1.0)
    expect(abs(norm - 5.0) < 1e-12 and abs(float(g["a"][0]) - 0.6) < 1e-12 and
           abs(float(g["b"][0, 0]) - 0.8) < 1e-12, "gradient clipping is wrong")


def check_finite_differences(tmp):
    """Autograd against central differences (float64) on a tiny model, for elements of several
    parameters, with the routing unchanged by the perturbation."""
    for over in ({}, {"score": "softmax", "norm_topk": False, "route_scale": 2.5,
                      "tie_embeddings": True, "n_shared": 0}):
        kv = small_config(vocab_size=11, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1,
                          d_ff=10, n_experts=4, d_expert=6, balance_alpha=0.3, **over)
        c = Config({k: str(v) for k, v in parse_config_text(config_text(kv)).items()})
        gen = torch.Generator().manual_seed(11)
        p = random_params(c, gen)
        tokens = random_tokens(c, (2, 6), gen)
        base = loss_and_grads(p, tokens, c)
        h = 1e-6
        for name in p:
            if not is_trained(name):
                continue
            flat = p[name].detach().view(-1)
            for idx in torch.randint(0, flat.numel(), (2,), generator=gen).tolist():
                vals = []
                for sign in (1, -1):
                    with torch.no_grad():
                        old = float(flat[idx])
                        flat[idx] = old + sign * h
                        out = forward(p, tokens, c)
                        flat[idx] = old
                    expect(all(torch.equal(a, b) for a, b in zip(out["chosen"], base["chosen"])),
                           f"finite differences on {name}[{idx}] changed the routing")
                    vals.append(float(out["loss"]))
                fd = (vals[0] - vals[1]) / (2 * h)
                ad = float(base["grads"][name].view(-1)[idx])
                expect(abs(fd - ad) <= 1e-7 + 1e-5 * abs(ad),
                       f"d loss / d {name}[{idx}]: autograd {ad:.10g}, finite differences {fd:.10g}")


def check_comparator(tmp):
    cases = [("sigmoid, shared expert, untied, clip, final params", small_config(), 3, True),
             ("softmax, tied, no shared, no norm_topk, skew", small_config(
                 score="softmax", tie_embeddings=True, n_shared=0, norm_topk=False, route_scale=2.5,
                 n_dense_layers=0, n_layers=2, grad_clip=0.0, router_skew=0.5, grad_accum=1), 3,
              False)]
    for what, kv, S, with_final in cases:
        d, c = make_exact_dump(kv, seed=21, S=S, with_final=with_final)
        path = os.path.join(tmp, "exact.bin")
        write_dump(path, d)
        code, failed = run_compare(path, 1e-4, quiet=True)
        expect(code == 0, f"{what}: exact dump fails on {failed}")
        # The backend the driver names, checked when asked: missing, another, the one asked for.
        for dumped, ok in ((None, False), ("cuda bf16", False), ("cpu", True)):
            named = dict(d)
            if dumped is not None:
                named["backend"] = np.frombuffer(dumped.encode(), np.uint8)
            write_dump(path, named)
            code, failed = run_compare(path, 1e-4, quiet=True, backend="cpu")
            expect((code, failed) == ((0, []) if ok else (1, ["backend"])),
                   f"{what}: backend {dumped} against cpu gave exit {code}, failures {failed}")
        # The balance term dropped from the loss (loss = ce_loss): within 1e-2 of the loss, so that
        # only the balance term's own row sees it.
        dropped = dict(d)
        dropped["loss"] = d["ce_loss"].copy()
        write_dump(path, dropped)
        code, failed = run_compare(path, 1e-2, quiet=True)
        expect((code, failed) == (1, ["balance_loss"]),
               f"{what}: balance term dropped gave exit {code}, failures {failed}, expected ['balance_loss']")
        write_dump(path, d)
        code, failed = run_compare(path, 1e-4, quiet=True, require_final=True)
        expect(code == (0 if with_final else 1) and all(f.startswith("final.") for f in failed),
               f"{what}: --require-final gave exit {code}, failures {failed}")
        gname = "grad.layers.1.experts.w13"
        perturbed = {
            "grad scaled 1e-3": (gname, lambda d: d[gname] * np.float32(1.001)),
            "one logit shifted by 3e-4 of the norm": ("logits", lambda d: d["logits"] + 3e-4 * (
                np.linalg.norm(d["logits"]) * (np.arange(d["logits"].size) == 5).reshape(
                    d["logits"].shape))),
            "last step loss": ("steps.loss", lambda d: d["steps.loss"] * np.float32(
                1 + 1e-3 * (np.arange(S) == S - 1))),
            "NaN loss": ("loss", lambda d: np.array([np.nan], np.float32)),
            "missing grad": ("grad.embed", None),
            "unexpected grad": ("grad.layers.1.router_bias", lambda d: np.zeros(c.E, np.float32)),
        }
        if with_final:
            # --tol-bias applies to the final router biases alone: a bias moved one update the other
            # way passes a loose one, a final weight moved as far relative to its size does not.
            bname = "final.layers.2.router_bias"
            wname = "final.layers.0.wq"
            for name, change in ((bname, lambda d: d[bname] + 2 * c.bias_rate * (np.arange(c.E) == 0)),
                                 (wname, lambda d: d[wname] * np.float32(1.01))):
                bad = dict(d)
                bad[name] = change(d).astype(np.float32)
                write_dump(path, bad)
                code, failed = run_compare(path, 1e-4, quiet=True, tol_bias=10.0)
                want = (0, []) if name == bname else (1, [wname])
                expect((code, failed) == want, f"{what}: --tol-bias 10 with {name} moved gave exit {code}, "
                                               f"failures {failed}, expected {want}")
            # One expert's bias moved one update the other way; one missing final tensor.
            bname = "final.layers.2.router_bias"
            perturbed["final bias"] = (bname, lambda d: d[bname] + 2 * c.bias_rate * (
                np.arange(c.E) == 0))
            perturbed["missing final"] = ("final.layers.0.wq", None)
        for how, (name, change) in perturbed.items():
            bad = dict(d)
            if change is None:
                del bad[name]
            else:
                bad[name] = change(d).astype(np.float32)
            write_dump(path, bad)
            code, failed = run_compare(path, 1e-4, quiet=True)
            # The loss also fails the balance term derived from it.
            want = [name] + (["balance_loss"] if name == "loss" else [])
            expect(code == 1 and failed == want,
                   f"{what}: dump with {how} gave exit {code}, failures {failed}, expected {want}")
        bad = dict(d)
        del bad["param.layers.1.wq"]
        write_dump(path, bad)
        expect(run_compare(path, 1e-4, quiet=True)[0] == 2, f"{what}: missing parameter not refused")


def selftest():
    checks = [("dump format", check_dump_format), ("top-k tie order", check_topk_ties),
              ("attention vs naive loop", check_attention),
              ("AdamW, schedule, clip, bias update", check_adamw_and_schedule),
              ("finite differences", check_finite_differences),
              ("comparator passes exact, fails perturbed", check_comparator)]
    # The self-test's tensors are tiny: threads only add contention on a shared CI machine.
    torch.set_num_threads(1)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in checks:
            try:
                fn(tmp)
                print(f"selftest {name}: pass")
            except SelftestFailure as err:
                failures += 1
                print(f"selftest {name}: FAIL: {err}")
    return 1 if failures else 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump", nargs="?", help="tensor dump written by the C model")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative error tolerance (1e-4)")
    ap.add_argument("--tol-final", type=float, default=None,
                    help="tolerance of final.* (the parameters after the AdamW steps; default --tol)")
    ap.add_argument("--tol-bias", type=float, default=None,
                    help="tolerance of the final router biases (default --tol-final): each step moves a "
                         "bias by ±bias_rate by the sign of its load, which a flipped choice can turn")
    ap.add_argument("--require-final", action="store_true",
                    help="the dump must hold final.* (the parameters after the steps)")
    ap.add_argument("--backend", default=None,
                    help="the dump's `backend` must be this (cpu, cuda fp32, cuda bf16)")
    ap.add_argument("--selftest", action="store_true", help="check the reference and the comparator")
    args = ap.parse_args(argv)
    if args.selftest == (args.dump is not None):
        ap.error("give either a DUMP or --selftest")
    if args.selftest:
        return selftest()
    return run_compare(args.dump, args.tol, tol_final=args.tol_final, tol_bias=args.tol_bias,
                       require_final=args.require_final,
                       backend=args.backend)[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
