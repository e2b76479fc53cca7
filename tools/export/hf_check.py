"""An exported moelab model in transformers, against moelab (tools/gpu_run.sh, stage `export`).

    hf_check.py DIR CKPT DATA PROBE [--device cuda] [--batches N]

Loads DIR with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) (fp32) and
AutoTokenizer.from_pretrained(DIR), then checks, printing each result:
  1. tokenizer: AutoTokenizer's ids equal moelab's (PROBE encode) on the text of the first 4096
     validation tokens, and decode gives the text back;
  2. validation loss: the mean cross-entropy of N batches (default 4) of 8 windows of T + 1 tokens
     from DATA/val.bin, by transformers (labels=input_ids) and by moelab (PROBE logits, on the CPU),
     equal within 1e-4 relative;
  3. generate: do_sample with generation_config.json's settings from a prompt, 100 new tokens, and
     greedy decoding twice gives the same text.
Exits 1 on a failed check. Needs torch, transformers and numpy; no network (local files only).
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch


def read_shard(path):
    """Token ids of a moelab shard: 32-byte header (magic, version, vocab, count, width), then ids."""
    raw = open(path, "rb").read()
    magic, _, vocab, n, width = struct.unpack_from("<8sIIQI", raw, 0)
    if magic != b"MOELTOK1" or width not in (2, 4):
        sys.exit(f"hf_check: {path} is not a moelab token shard")
    return np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4", count=n, offset=32).astype(np.int64), vocab


def probe(exe, *args):
    return subprocess.run([exe, *args], check=True, stdout=subprocess.PIPE).stdout.decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("ckpt")
    ap.add_argument("data")
    ap.add_argument("probe")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, default=4)
    a = ap.parse_args()
    # After the arguments, so that --help works where transformers is not installed.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ok = True

    # trust_remote_code for the tokenizer too: the folder ships modeling code, and transformers 5
    # otherwise asks on the terminal whether to run it (seen on the GPU machine, 2026-12-02).
    tok = AutoTokenizer.from_pretrained(a.dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(a.dir, trust_remote_code=True, torch_dtype=torch.float32)
    model.to(a.device).eval()
    print(f"hf_check: loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters())} parameters) "
          f"and {type(tok).__name__} (vocabulary {len(tok)}) on {a.device}")
    val, _ = read_shard(os.path.join(a.data, "val.bin"))
    T = model.config.max_position_embeddings

    # 1. The tokenizer on real text: the validation split's first tokens, decoded.
    text = tok.decode(val[:4096].tolist())
    with tempfile.TemporaryDirectory() as tmp:
        rec, out = os.path.join(tmp, "rec"), os.path.join(tmp, "ids")
        b = text.encode("utf-8")
        open(rec, "wb").write(struct.pack("<I", len(b)) + b)
        probe(a.probe, "encode", os.path.join(a.data, "tokenizer.bin"), rec, out)
        ids = open(out, "rb").read()
        want = list(struct.unpack_from(f"<{struct.unpack_from('<I', ids)[0]}I", ids, 4))
    got = tok(text)["input_ids"]
    same = got == want and tok.decode(got) == text
    print(f"hf_check: tokenizer {'ok' if same else 'FAILED'}: {len(got)} ids from {len(b)} bytes of validation text")
    ok &= same

    # 2. Validation loss on the same windows, by transformers and by moelab.
    n = 8
    ces_hf, ces_c = [], []
    for k in range(a.batches):
        start = k * n * (T + 1)
        if start + n * (T + 1) > len(val):
            break
        batch = val[start:start + n * (T + 1)].reshape(n, T + 1)
        with torch.no_grad():
            ids_t = torch.from_numpy(batch).to(a.device)
            ces_hf.append(float(model(input_ids=ids_t, labels=ids_t).loss))
        with tempfile.TemporaryDirectory() as tmp:
            tp, lp = os.path.join(tmp, "tokens"), os.path.join(tmp, "logits")
            batch.astype(np.int32).tofile(tp)
            ces_c.append(float(probe(a.probe, "logits", a.ckpt, tp, str(n), str(T), lp)))
    hf, c = float(np.mean(ces_hf)), float(np.mean(ces_c))
    same = len(ces_hf) > 0 and abs(hf - c) <= 1e-4 * abs(c)
    print(f"hf_check: validation loss {'ok' if same else 'FAILED'}: transformers {hf:.6f}, moelab {c:.6f} "
          f"({len(ces_hf)} batches of {n} x {T} tokens)")
    ok &= same

    # 3. generate.
    prompt = tok("The", return_tensors="pt").to(a.device)
    torch.manual_seed(0)
    # One process: synced_gpus=False also spares transformers a probe of torch.distributed.fsdp.
    out = model.generate(**prompt, max_new_tokens=100, synced_gpus=False)  # sampling per generation_config.json
    sample = tok.decode(out[0])
    greedy = [tok.decode(model.generate(**prompt, max_new_tokens=40, do_sample=False, temperature=None,
                                        top_k=None, synced_gpus=False)[0]) for _ in range(2)]
    same = out.shape[1] == prompt["input_ids"].shape[1] + 100 and greedy[0] == greedy[1]
    print(f"hf_check: generate {'ok' if same else 'FAILED'}:\n--- sampled ---\n{sample}\n--- greedy ---\n{greedy[0]}\n---")
    ok &= same
    print(f"hf_check: {'all passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
