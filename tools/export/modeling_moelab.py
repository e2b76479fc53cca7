"""moelab's mixture-of-experts transformer (docs/architecture.md §2 of moelab) for PyTorch and transformers.

`moelab export` copies this file into a Hugging Face model folder, next to config.json and
model.safetensors, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

loads the model as `MoelabForCausalLM` (a `PreTrainedModel` with a causal-LM head: `forward` takes
`input_ids` and optional `labels` and returns logits and the mean cross-entropy; `generate` works,
recomputing the last max_position_embeddings tokens at each step, as `moelab sample` does: there is
no KV cache). The modules and their parameter
names are those of the safetensors file (docs/export.md of moelab has the map).

Without transformers the same model runs in plain PyTorch (moelab's CI does this with an older
PyTorch): `MoelabLM(config)` with config a namespace of config.json's keys, `load_safetensors`.

The math, per token sequence x (B, T):
    h = embed[x]
    each layer: h += attention(rmsnorm(h) * g_attn)        RoPE "rotate half", causal, GQA
                m = rmsnorm(h) * g_ffn
                dense layers: h += down(silu(gate m) * up m)
                MoE layers:   s = sigmoid or softmax of the router logits (E per token);
                              the K experts with the largest s + bias are chosen (ties: lower id);
                              g = s of the chosen, / their sum if norm_topk, * route_scale;
                              h += sum of the shared experts(m) + sum_chosen g_i expert_i(m)
    logits = (rmsnorm(h) * g_final) W_out^T,   W_out = embed when the embeddings are tied
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, theta):
    """x (B, heads, T, hd): rotates the pairs (i, i + hd/2) by the angle t * theta^(-2i/hd)."""
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64, device=x.device) / hd)   # (hd/2)
    ang = torch.arange(T, dtype=torch.float64, device=x.device)[:, None] * freq[None, :]   # (T, hd/2)
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    """Causal self-attention with grouped key/value heads: query head j reads kv head j // (H / Hkv)."""

    def __init__(self, c):
        super().__init__()
        self.H, self.Hkv, self.hd, self.theta = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rope_theta
        D = c.hidden_size
        self.q_proj = nn.Linear(D, self.H * self.hd, bias=False)
        self.k_proj = nn.Linear(D, self.Hkv * self.hd, bias=False)
        self.v_proj = nn.Linear(D, self.Hkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.H * self.hd, D, bias=False)

    def forward(self, a):
        B, T, _ = a.shape
        q = self.q_proj(a).view(B, T, self.H, self.hd).transpose(1, 2)       # (B, H, T, hd)
        k = self.k_proj(a).view(B, T, self.Hkv, self.hd).transpose(1, 2)     # (B, Hkv, T, hd)
        v = self.v_proj(a).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        q, k = rope(q, self.theta), rope(k, self.theta)
        group = self.H // self.Hkv
        k = k.repeat_interleave(group, dim=1)                                 # (B, H, T, hd)
        v = v.repeat_interleave(group, dim=1)
        # Written out (no scaled_dot_product_attention) so that old PyTorch versions run it too.
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.hd)                # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=a.device).triu(1)
        probs = torch.softmax(scores.float().masked_fill(future, float("-inf")), dim=-1).to(v.dtype)
        o = (probs @ v).transpose(1, 2).reshape(B, T, self.H * self.hd)     # (B, T, H*hd)
        return self.o_proj(o)


class SwiGLU(nn.Module):
    """down(silu(gate x) * up x): the dense feed-forward, each routed expert and each shared expert.
    gate and up are one (2 width, D) matrix, gate's rows first, as moelab stores them (w13)."""

    def __init__(self, D, width):
        super().__init__()
        self.gate_up_proj = nn.Linear(D, 2 * width, bias=False)
        self.down_proj = nn.Linear(width, D, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Router(nn.Module):
    """Scores (N, E) of the experts and the K chosen per token; the balancing bias only picks."""

    def __init__(self, c):
        super().__init__()
        self.E, self.K = c.n_routed_experts, c.num_experts_per_tok
        self.score, self.norm_topk, self.scale = c.scoring_func, c.norm_topk_prob, c.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.E, c.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.E))

    def forward(self, x):
        """x (N, D) -> gates (N, K), chosen expert ids (N, K)."""
        logits = (x @ self.weight.t()).float()
        s = torch.sigmoid(logits) if self.score == "sigmoid" else torch.softmax(logits, dim=-1)
        key = s + self.e_score_correction_bias.float()
        # A stable descending sort keeps equal keys in id order: ties go to the lower expert id.
        chosen = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :self.K]   # (N, K)
        g = s.gather(1, chosen)
        if self.norm_topk:
            g = g / g.sum(-1, keepdim=True)
        return g * self.scale, chosen


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        D = c.hidden_size
        self.gate = Router(c)
        self.experts = nn.ModuleList(SwiGLU(D, c.moe_intermediate_size) for _ in range(c.n_routed_experts))
        self.shared_experts = nn.ModuleList(SwiGLU(D, c.moe_intermediate_size) for _ in range(c.n_shared_experts))

    def forward(self, m):
        B, T, D = m.shape
        x = m.reshape(B * T, D)                                               # (N, D)
        g, chosen = self.gate(x)                                              # (N, K) each
        y = torch.zeros_like(x)
        for shared in self.shared_experts:
            y = y + shared(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)                 # tokens that chose e
            if rows.numel() > 0:
                y = y.index_add(0, rows, (g[rows, slot, None] * expert(x[rows]).float()).to(x.dtype))
        return y.view(B, T, D)


class DecoderLayer(nn.Module):
    def __init__(self, c, layer):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = SwiGLU(c.hidden_size, c.intermediate_size) if layer < c.n_dense_layers else MoE(c)

    def forward(self, h):
        h = h + self.self_attn(self.input_layernorm(h))
        return h + self.mlp(self.post_attention_layernorm(h))


class MoelabModel(nn.Module):
    """Token ids (B, T) -> final hidden states (B, T, D) after the last norm."""

    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, l) for l in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, input_ids):
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)


def _make_head(module, c):
    """The output head: its own lm_head, or none when the logits read the embedding (tied)."""
    module.tie_embeddings = bool(getattr(c, "tie_embeddings", False))
    module.lm_head = None if module.tie_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)


def _logits(module, input_ids):
    h = module.model(input_ids)
    w = module.model.embed_tokens.weight if module.tie_embeddings else module.lm_head.weight
    return h @ w.t()                                                          # (B, T, V)


def _loss(logits, labels):
    """Mean cross-entropy of predicting labels[:, t + 1] at position t (labels = input_ids, as in
    transformers; -100 is ignored)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


class MoelabLM(nn.Module):
    """The whole model in plain PyTorch (no transformers needed); the same parameter names."""

    def __init__(self, config):
        super().__init__()
        self.model = MoelabModel(config)
        _make_head(self, config)

    def forward(self, input_ids):
        return _logits(self, input_ids)


def load_safetensors(module, path):
    """Loads model.safetensors into a MoelabLM or MoelabForCausalLM: every tensor must match."""
    from safetensors.torch import load_file
    module.load_state_dict(load_file(path), strict=True)
    return module


try:
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput
    try:
        from transformers import GenerationMixin
    except ImportError:  # older transformers: PreTrainedModel generates by itself
        GenerationMixin = object
    _HAVE_TRANSFORMERS = True
except ImportError:  # plain PyTorch: MoelabLM only
    _HAVE_TRANSFORMERS = False


if _HAVE_TRANSFORMERS:
    class MoelabConfig(PretrainedConfig):
        model_type = "moelab"

        def __init__(self, vocab_size=2048, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, head_dim=None, max_position_embeddings=128, n_dense_layers=1,
                     intermediate_size=512, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                     moe_intermediate_size=128, scoring_func="sigmoid", routed_scaling_factor=1.0,
                     norm_topk_prob=True, rope_theta=10000.0, rms_norm_eps=1e-5, tie_embeddings=False,
                     **kwargs):
            self.vocab_size, self.hidden_size = vocab_size, hidden_size
            self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
            self.num_key_value_heads = num_key_value_heads
            self.head_dim = head_dim or hidden_size // num_attention_heads
            self.max_position_embeddings, self.n_dense_layers = max_position_embeddings, n_dense_layers
            self.intermediate_size, self.n_routed_experts = intermediate_size, n_routed_experts
            self.num_experts_per_tok, self.n_shared_experts = num_experts_per_tok, n_shared_experts
            self.moe_intermediate_size, self.scoring_func = moe_intermediate_size, scoring_func
            self.routed_scaling_factor, self.norm_topk_prob = routed_scaling_factor, norm_topk_prob
            self.rope_theta, self.rms_norm_eps, self.tie_embeddings = rope_theta, rms_norm_eps, tie_embeddings
            kwargs["tie_word_embeddings"] = False  # the head reads the embedding itself when tied
            kwargs.setdefault("use_cache", False)
            super().__init__(**kwargs)

    class MoelabForCausalLM(PreTrainedModel, GenerationMixin):
        config_class = MoelabConfig
        base_model_prefix = "model"
        _no_split_modules = ["DecoderLayer"]

        def __init__(self, config):
            super().__init__(config)
            self.model = MoelabModel(config)
            _make_head(self, config)
            self.post_init()

        def _init_weights(self, module):
            """Only for weights a checkpoint does not give (from_pretrained fills the rest)."""
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, Router):
                nn.init.normal_(module.weight, std=0.02)
                module.e_score_correction_bias.zero_()
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

        def get_input_embeddings(self):
            return self.model.embed_tokens

        def set_input_embeddings(self, value):
            self.model.embed_tokens = value

        def get_output_embeddings(self):
            return self.lm_head

        def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
            """No cache: each step reads the text again, its last max_position_embeddings tokens at
            most (the window the model was trained on, as `moelab sample` does)."""
            T = self.config.max_position_embeddings
            if attention_mask is not None:
                attention_mask = attention_mask[:, -T:]
            return {"input_ids": input_ids[:, -T:], "attention_mask": attention_mask}

        def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
            # attention_mask: the model attends causally to every position (moelab has no padding);
            # left-padded batches are therefore not supported.
            logits = _logits(self, input_ids)
            loss = _loss(logits, labels) if labels is not None else None
            return CausalLMOutput(loss=loss, logits=logits)
