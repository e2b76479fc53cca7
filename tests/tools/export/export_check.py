"""Checks a `moelab export` folder against the checkpoint and tokenizer it came from (tests/tools/export).

    export_check.py weights DIR CKPT [--bf16]   model.safetensors: the format's header and alignment,
        and every tensor (name, shape, value) against the checkpoint read with h5py, under the
        name map of docs/export.md (written out here independently of the exporter)
    export_check.py tokenizer DIR TOKENIZER PROBE CORPUS
        tokenizer.json through the `tokenizers` library against moelab's tokenizer (PROBE encode)
        on every file of CORPUS and on random text: identical ids
    export_check.py logits DIR CKPT PROBE       modeling_moelab.py in plain PyTorch (MoelabLM) against
        moelab's forward (PROBE logits) on random tokens: relative error <= 1e-4

Exits 1 with a message on the first difference.
"""
import importlib.util
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import types

import numpy as np


def fail(msg):
    print(f"export_check: FAIL: {msg}")
    sys.exit(1)


def expected_tensors(model, cfg):
    """{Hugging Face name: float32 array} from the checkpoint's /model group (docs/export.md)."""
    per_layer = {"attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
                 "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
                 "wo": "self_attn.o_proj.weight", "ffn_norm": "post_attention_layernorm.weight",
                 "w13": "mlp.gate_up_proj.weight", "w2": "mlp.down_proj.weight",
                 "router": "mlp.gate.weight", "router_bias": "mlp.gate.e_score_correction_bias"}
    stacks = {"experts": "experts", "shared": "shared_experts"}
    proj = {"w13": "gate_up_proj", "w2": "down_proj"}
    out = {}
    for name, value in model.items():
        if name == "embed":
            out["model.embed_tokens.weight"] = value
        elif name == "final_norm":
            out["model.norm.weight"] = value
        elif name == "lm_head":
            out["lm_head.weight"] = value
        else:
            _, l, rest = name.split(".", 2)
            if rest in per_layer:
                out[f"model.layers.{l}.{per_layer[rest]}"] = value
            else:
                stack, w = rest.split(".")
                for e in range(value.shape[0]):
                    out[f"model.layers.{l}.mlp.{stacks[stack]}.{e}.{proj[w]}.weight"] = value[e]
    return out


def bf16_round(x):
    """float32 -> bfloat16 bits (nearest even), as uint16."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r


def check_weights(folder, ckpt, bf16):
    import h5py
    path = os.path.join(folder, "model.safetensors")
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    if n % 8 or raw[8:9] != b"{":
        fail(f"header of {n} bytes: not a multiple of 8, or not starting with '{{'")
    text = raw[8:8 + n].decode("utf-8")
    if text.rstrip(" ") != text.rstrip() or not text.rstrip(" ").endswith("}"):
        fail("header padding is not spaces after the JSON object")
    header = json.loads(text)
    meta = header.pop("__metadata__")
    if meta.get("format") != "pt" or not all(isinstance(v, str) for v in meta.values()):
        fail(f"__metadata__ {meta}")
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    at = 0
    for b, e in spans:
        if b != at:
            fail(f"data has a gap or overlap at byte {at}")
        at = e
    if 8 + n + at != len(raw):
        fail(f"data ends at {8 + n + at}, the file has {len(raw)} bytes")
    with h5py.File(ckpt, "r") as f:
        model = {k: d[...] for k, d in f["model"].items()}
        cfg = dict(line.split(" = ", 1) for line in f.attrs["config"].decode().splitlines())
    want = expected_tensors(model, cfg)
    if bf16:
        import torch
        from safetensors.torch import load_file  # numpy has no bfloat16: compare the bits
        got = load_file(path)
        if set(got) != set(want):
            fail(f"tensor names differ: missing {sorted(set(want) - set(got))[:5]}, "
                 f"extra {sorted(set(got) - set(want))[:5]}")
        for name, value in want.items():
            t = got[name]
            if t.dtype != torch.bfloat16 or tuple(t.shape) != value.shape:
                fail(f"{name}: {t.dtype} {tuple(t.shape)}, expected bfloat16 {value.shape}")
            if not np.array_equal(t.view(torch.int16).numpy().view(np.uint16), bf16_round(value)):
                fail(f"{name}: bf16 values differ from the checkpoint's rounded to nearest even")
    else:
        from safetensors.numpy import load_file
        got = load_file(path)
        if set(got) != set(want):
            fail(f"tensor names differ: missing {sorted(set(want) - set(got))[:5]}, "
                 f"extra {sorted(set(got) - set(want))[:5]}")
        for name, value in want.items():
            if got[name].dtype != np.float32 or got[name].shape != value.shape:
                fail(f"{name}: {got[name].dtype} {got[name].shape}, expected float32 {value.shape}")
            if not np.array_equal(got[name], value):
                fail(f"{name}: values differ from the checkpoint")
    print(f"export_check: weights ok: {len(want)} tensors ({'bf16' if bf16 else 'fp32'}), header {n} bytes")


def run_probe(probe, *args):
    return subprocess.run([probe, *args], check=True, stdout=subprocess.PIPE).stdout.decode()


def moelab_encode(probe, tokenizer_bin, texts):
    with tempfile.TemporaryDirectory() as tmp:
        rec, out = os.path.join(tmp, "rec"), os.path.join(tmp, "ids")
        with open(rec, "wb") as f:
            for t in texts:
                b = t.encode("utf-8")
                f.write(struct.pack("<I", len(b)) + b)
        run_probe(probe, "encode", tokenizer_bin, rec, out)
        data, at, ids = open(out, "rb").read(), 0, []
        while at < len(data):
            k = struct.unpack_from("<I", data, at)[0]
            ids.append(list(struct.unpack_from(f"<{k}I", data, at + 4)))
            at += 4 + 4 * k
        return ids


def random_texts(rng):
    """Random text that stresses the chunker: every byte class, runs past the 64-byte chunk limit
    (" " + "th" * 32 cuts the merge "th" there only at the limit itself), multi-byte characters cut
    by it, and text decoded from random bytes."""
    pieces = [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x00", "\x1f", "\x7f", "a", "Z", "7", "!", "\"",
              "\\", "é", "ß", "中文", "😀", "\u00ad", "\u0120", " the", "don't", "--", "...", "x" * 70,
              " " * 70, "9" * 70, "é" * 40, "\n" * 66, " " * 63 + "a", " " * 64 + "a", " " * 65 + "a",
              " " + "th" * 32]
    texts = []
    for _ in range(300):
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40))))
    for _ in range(200):
        texts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400))).decode("utf-8", "ignore"))
        texts.append(bytes(rng.randrange(128) for _ in range(rng.randrange(0, 400))).decode("ascii"))
    return texts


def check_tokenizer(folder, tokenizer_bin, probe, corpus):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    texts, skipped = [], 0
    for root, _, files in sorted(os.walk(corpus)):
        for name in sorted(files):
            if name.startswith(".") or name.endswith((".dat", ".u8")):
                continue
            try:
                texts.append(open(os.path.join(root, name), "rb").read().decode("utf-8"))
            except UnicodeDecodeError:  # `tokenizers` takes str: text that is not UTF-8 cannot go in
                skipped += 1
    n_corpus = len(texts)
    texts += random_texts(random.Random(1234))
    want = moelab_encode(probe, tokenizer_bin, texts)
    if len(want) != len(texts):  # zip below would compare only the shorter list
        fail(f"export_probe encoded {len(want)} of {len(texts)} texts")
    for i, (t, w) in enumerate(zip(texts, want)):
        got = tok.encode(t).ids
        if got != w:
            k = next((j for j in range(min(len(got), len(w))) if got[j] != w[j]), min(len(got), len(w)))
            fail(f"text {i} ({'corpus' if i < n_corpus else 'random'}, {len(t)} chars): ids differ at "
                 f"{k}: tokenizers {got[k:k + 8]}, moelab {w[k:k + 8]}; text near there {t[:200]!r}")
        if tok.decode(got) != t:
            fail(f"text {i}: decode(encode(text)) != text")
    n_tokens = sum(len(w) for w in want)
    print(f"export_check: tokenizer ok: {n_corpus} corpus files ({skipped} not UTF-8, skipped) and "
          f"{len(texts) - n_corpus} random texts, {n_tokens} tokens identical")


def load_modeling(folder):
    sys.dont_write_bytecode = True  # leave the folder as the exporter wrote it
    spec = importlib.util.spec_from_file_location("modeling_moelab", os.path.join(folder, "modeling_moelab.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_logits(folder, ckpt, probe):
    import torch
    mod = load_modeling(folder)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    model = mod.load_safetensors(mod.MoelabLM(types.SimpleNamespace(**cfg)), os.path.join(folder, "model.safetensors"))
    model.eval()
    B, T, V = 3, cfg["max_position_embeddings"], cfg["vocab_size"]
    tokens = np.random.default_rng(7).integers(0, V, size=(B, T + 1), dtype=np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        tpath, lpath = os.path.join(tmp, "tokens"), os.path.join(tmp, "logits")
        tokens.tofile(tpath)
        ce_c = float(run_probe(probe, "logits", ckpt, tpath, str(B), str(T), lpath))
        want = np.fromfile(lpath, dtype=np.float32).reshape(B, T, V)
    with torch.no_grad():
        ids = torch.from_numpy(tokens.astype(np.int64))
        got = model(ids[:, :T]).numpy()
        ce_py = float(torch.nn.functional.cross_entropy(torch.from_numpy(got).reshape(-1, V), ids[:, 1:].reshape(-1)))
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    print(f"export_check: logits rel err {rel:.2e}, max abs {np.abs(got - want).max():.2e}; "
          f"cross-entropy moelab {ce_c:.6f}, exported {ce_py:.6f}")
    if not rel <= 1e-4 or not abs(ce_c - ce_py) <= 1e-4 * max(1.0, abs(ce_c)):
        fail("the exported model's logits differ from moelab's")


def main(argv):
    if len(argv) >= 3 and argv[0] == "weights":
        check_weights(argv[1], argv[2], "--bf16" in argv[3:])
    elif len(argv) == 5 and argv[0] == "tokenizer":
        check_tokenizer(*argv[1:])
    elif len(argv) == 4 and argv[0] == "logits":
        check_logits(*argv[1:])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
