#!/bin/bash
# `moelab export` end to end: checkpoints of two model variants (one file, and an index of two EP parts
# under an EPLB plan with replicas) exported as fp32 and bf16 folders; export_check.py compares the
# safetensors file with the checkpoint, tokenizer.json (through `tokenizers`) with moelab's tokenizer on
# the fortunes corpus and random text, and the exported modeling file (Debian's PyTorch) with moelab's
# logits. Then the bad input: damaged, other-version, diverged (NaN) and part-less checkpoints, a wrong
# tokenizer, and an existing folder, each one message with exit code 2 and nothing left behind.
set -euo pipefail
trap 'echo "export_test: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp, closed_stdout
probe="$root/tests/tools/export/export_probe"
check=("${PYTHON:-/usr/bin/python3}" "$root/tests/tools/export/export_check.py")
corpus=/usr/share/games/fortunes
# Whether any of the paths exists (printing the first): globs that match nothing stay as written.
any_exists() {
    local p
    for p in "$@"; do [ -e "$p" ] && { echo "left: $p"; return 0; }; done
    return 1
}
[ -d "$corpus" ] || { echo "export_test: $corpus missing (apt-get install fortunes)"; exit 1; }

"$moelab" data prepare --input "$corpus" --vocab 512 --out "$tmp/data" > /dev/null
# Sigmoid scores, shared expert, untied head, GQA; softmax scores, route_scale, tied embeddings,
# no shared expert, every layer MoE, one kv head.
mkdir -p "$tmp/a" "$tmp/b"
"$probe" make "$tmp/a"
"$probe" make "$tmp/b" --score softmax --norm-topk false --route-scale 2.5 --n-shared 0 \
    --tie-embeddings true --n-kv-heads 1 --n-dense-layers 0
for v in a b; do
    for ck in single eplb; do
        "$moelab" export --ckpt "$tmp/$v/$ck.h5" --out "$tmp/hf_${v}_$ck" --data "$tmp/data" > /dev/null
        "${check[@]}" weights "$tmp/hf_${v}_$ck" "$tmp/$v/single.h5"
        "${check[@]}" logits "$tmp/hf_${v}_$ck" "$tmp/$v/$ck.h5" "$probe"
    done
done
"$moelab" export --ckpt="$tmp/a/eplb.h5" --out="$tmp/hf_bf16" --data="$tmp/data" --dtype=bf16 > /dev/null
"${check[@]}" weights "$tmp/hf_bf16" "$tmp/a/single.h5" --bf16
grep -q '"torch_dtype": "bfloat16"' "$tmp/hf_bf16/config.json"
"${check[@]}" tokenizer "$tmp/hf_a_single" "$tmp/data/tokenizer.bin" "$probe" "$corpus"
cmp "$tmp/hf_a_single/modeling_moelab.py" "$root/tools/export/modeling_moelab.py"
# config.json's sizes are the checkpoint's stored config (as `ckpt inspect` prints it), and
# tokenizer_config.json's model_max_length its seq_len. The logits check above takes T from
# config.json itself, so a max_position_embeddings of seq_len - 1 passed it.
for v in a b; do
    "$moelab" ckpt inspect "$tmp/$v/single.h5" > "$tmp/inspect_$v.txt"
    "${check[0]}" - "$tmp/inspect_$v.txt" "$tmp/hf_${v}_single" <<'PY'
import json, sys
text = open(sys.argv[1]).read().split("\nconfig:\n", 1)[1]
stored = {k.strip(): v.strip() for k, _, v in (l.partition("=") for l in text.splitlines() if "=" in l)}
cfg = json.load(open(sys.argv[2] + "/config.json"))
tok = json.load(open(sys.argv[2] + "/tokenizer_config.json"))
want = {"vocab_size": "vocab_size", "hidden_size": "d_model", "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads", "num_key_value_heads": "n_kv_heads", "max_position_embeddings": "seq_len",
        "n_dense_layers": "n_dense_layers", "intermediate_size": "d_ff", "n_routed_experts": "n_experts",
        "num_experts_per_tok": "top_k", "n_shared_experts": "n_shared", "moe_intermediate_size": "d_expert"}
for hf, key in want.items():
    assert cfg[hf] == int(stored[key]), (hf, cfg[hf], key, stored[key])
assert cfg["head_dim"] == int(stored["d_model"]) // int(stored["n_heads"]), cfg["head_dim"]
assert tok["model_max_length"] == int(stored["seq_len"]), tok["model_max_length"]
PY
done

# Bad input: exit 2, the message, and no folder (nor temporary one) left behind.
expect_usage() {  # expect_usage REGEX OUT ARGS...: one line on stderr, and no temporary folder left
    local re=$1 out=$2; shift 2
    expect_usage_of export "$re" --out "$out" "$@"
    [ "$(wc -l < "$tmp/err")" -eq 1 ] || { echo "export $*: more than one line:"; cat "$tmp/err"; exit 1; }
    if any_exists "$out".tmp-* "$out".old-*; then echo "export $*: left a temporary folder"; exit 1; fi
}
bad="$tmp/bad"
mkdir -p "$bad"
head -c 5000 "$tmp/a/single.h5" > "$bad/truncated.h5"
expect_usage "truncated" "$tmp/out1" --ckpt "$bad/truncated.h5" --data "$tmp/data"
expect_usage "export: --data needs a value" "$tmp/out1" --ckpt "$tmp/a/single.h5" --data ""
expect_usage "export: --force takes no value" "$tmp/out1" --ckpt "$tmp/a/single.h5" --force=1
"${check[0]}" -c "import h5py, shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); h5py.File(sys.argv[2], 'r+').attrs['format_version'] = 3" \
    "$tmp/a/single.h5" "$bad/v3.h5"
expect_usage "version" "$tmp/out1" --ckpt "$bad/v3.h5" --data "$tmp/data"
"${check[0]}" -c "import h5py, shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); f = h5py.File(sys.argv[2], 'r+'); d = f['model/layers.1.wq']; d[0, 3] = float('nan')" \
    "$tmp/a/single.h5" "$bad/nan.h5"
expect_usage "layers.1.wq holds 1 NaN or infinite values" "$tmp/out1" --ckpt "$bad/nan.h5" --data "$tmp/data"
# A finite weight beyond bf16's range was exported as infinite with exit 0 (review, 2026-12-06); in
# fp32 it is an ordinary value.
"${check[0]}" -c "import h5py, shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); f = h5py.File(sys.argv[2], 'r+'); d = f['model/layers.1.wq']; d[0, 3] = 3.4e38" \
    "$tmp/a/single.h5" "$bad/huge.h5"
expect_usage "huge.h5: layers.1.wq holds 3.4e\\+38, beyond bf16's range .*--dtype fp32" "$tmp/out1" --ckpt "$bad/huge.h5" \
    --data "$tmp/data" --dtype bf16
"$moelab" export --ckpt "$bad/huge.h5" --out "$tmp/huge_fp32" --data "$tmp/data" > /dev/null
rm -r "$tmp/huge_fp32"
cp "$tmp/a/eplb.h5" "$tmp/a/eplb.h5.part-0-of-2" "$bad/"
expect_usage "part-1-of-2" "$tmp/out1" --ckpt "$bad/eplb.h5" --data "$tmp/data"
expect_usage "no_such" "$tmp/out1" --ckpt "$bad/no_such.h5" --data "$tmp/data"
expect_usage "tokenizer" "$tmp/out1" --ckpt "$tmp/a/single.h5" --data "$bad"
# export_probe's checkpoints name no data directory: without --data there is no tokenizer to look for.
expect_usage "export: .*/single.h5 names no data directory: pass --data DIR" "$tmp/out1" --ckpt "$tmp/a/single.h5"
"$moelab" data prepare --input "$corpus" --vocab 300 --out "$tmp/data300" > /dev/null
expect_usage "300 tokens but .* vocab_size 512" "$tmp/out1" --ckpt "$tmp/a/single.h5" --data "$tmp/data300"
# A tokenizer with two tokens of the same bytes: 257 = (ab)c and 260 = a(bc) both spell "abc", with
# 259 = "xbc", of the same length, between them by id (the check compares bytes, not lengths and ids).
mkdir -p "$tmp/dup" "$tmp/c"
"${check[0]}" -c "import struct, sys; m = [(97, 98), (256, 99), (98, 99), (120, 258), (97, 258)]
open(sys.argv[1], 'wb').write(b'MOELBPE1' + struct.pack('<II', 1, 261) + b''.join(struct.pack('<II', *p) for p in m))" \
    "$tmp/dup/tokenizer.bin"
"$probe" make "$tmp/c" --vocab-size 261
expect_usage "tokens 257 and 260 of the tokenizer have the same 3 bytes" "$tmp/out1" --ckpt "$tmp/c/single.h5" --data "$tmp/dup"
[ ! -e "$tmp/out1" ] || { echo "a failed export left $tmp/out1"; exit 1; }
expect_usage "--ckpt PATH is required" "$tmp/out1"
expect_usage "^moelab: error: export: --out needs a value" "$tmp/out1" --ckpt "$tmp/a/single.h5" --out
expect_usage "--dtype 'fp16'" "$tmp/out1" --ckpt "$tmp/a/single.h5" --dtype fp16
expect_usage "unknown option '--bogus'" "$tmp/out1" --ckpt "$tmp/a/single.h5" --bogus 1
expect_usage "unknown option '--bogus'" "$tmp/out1" --ckpt "$tmp/a/single.h5" --bogus=1
expect_usage "--dtype 'fp16'" "$tmp/out1" --ckpt="$tmp/a/single.h5" --dtype=fp16

# An existing folder: refused when not empty unless --force, which replaces only an earlier export.
# stdout a pipe whose reader has gone: the export reports the lost output (exit 1) and leaves no
# temporary folder (SIGPIPE ended it with one left: review, 2026-12-05).
rc=0
closed_stdout "$moelab" export --ckpt "$tmp/a/single.h5" --out "$tmp/piped" --data "$tmp/data" 2> "$tmp/pipe.err" ||
    rc=$?
[ "$rc" -eq 1 ] && ! ls -d "$tmp"/piped.tmp-* 2>/dev/null ||
    { echo "export into a closed pipe: exit $rc"; cat "$tmp/pipe.err"; ls "$tmp"; exit 1; }
# generation_config.json as transformers takes it (review, 2026-12-05): a whole-number temperature
# is a float (an integer is refused for sampling), top_k the run's top_k_sample, and temperature 0
# (greedy) is do_sample false.
for t in 2 0; do
    mkdir -p "$tmp/temp$t"
    "$probe" make "$tmp/temp$t" --temperature $t --top_k_sample 7
    "$moelab" export --ckpt "$tmp/temp$t/single.h5" --out "$tmp/hf_temp$t" --data "$tmp/data" > /dev/null
done
/usr/bin/python3 - "$tmp/hf_temp2" "$tmp/hf_temp0" <<'PY'
import json, sys
t2, t0 = (json.load(open(d + "/generation_config.json")) for d in sys.argv[1:])
assert t2["do_sample"] is True and isinstance(t2["temperature"], float) and t2["temperature"] == 2.0, t2
assert t2["top_k"] == 7, t2
assert t0["do_sample"] is False and "temperature" not in t0 and "top_k" not in t0, t0
PY
mkdir "$tmp/empty"
"$moelab" export --ckpt "$tmp/a/single.h5" --out "$tmp/empty" --data "$tmp/data" > /dev/null
[ -f "$tmp/empty/model.safetensors" ]
expect_usage "not empty .*--force" "$tmp/hf_a_single" --ckpt "$tmp/b/single.h5" --data "$tmp/data"
"${check[@]}" weights "$tmp/hf_a_single" "$tmp/a/single.h5" > /dev/null  # untouched
# Python's byte code of the modeling file is part of an export (importing it from the folder writes it).
mkdir "$tmp/hf_a_single/__pycache__"
touch "$tmp/hf_a_single/__pycache__/modeling_moelab.cpython-311.pyc"
"$moelab" export --ckpt "$tmp/b/single.h5" --out "$tmp/hf_a_single/" --data "$tmp/data" --force > /dev/null
[ ! -e "$tmp/hf_a_single/__pycache__" ] || { echo "--force kept the old __pycache__"; exit 1; }
"${check[@]}" weights "$tmp/hf_a_single" "$tmp/b/single.h5"
if any_exists "$tmp"/*.tmp-* "$tmp"/*.old-*; then echo "--force left a folder behind"; exit 1; fi
# SIGTERM the moment the folders are exchanged (an LD_PRELOAD seam; where the file system has no
# exchange the old folder goes aside instead, under the same hold): the new export stays, and
# nothing of the old one, its __pycache__ included, is left under a temporary name.
mkdir "$tmp/hf_a_single/__pycache__"
touch "$tmp/hf_a_single/__pycache__/modeling_moelab.cpython-311.pyc"
rc=0
LD_PRELOAD="$root/tests/tools/export/sigterm_after_rename.so" ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0 \
    "$moelab" export --ckpt "$tmp/b/single.h5" --out "$tmp/hf_a_single" --data "$tmp/data" --force > /dev/null 2>&1 || rc=$?
[ $rc -eq 143 ] || { echo "export under SIGTERM after the exchange: exit $rc, expected 143"; exit 1; }
"${check[@]}" weights "$tmp/hf_a_single" "$tmp/b/single.h5" > /dev/null
if any_exists "$tmp"/*.tmp-* "$tmp"/*.old-*; then echo "SIGTERM after the exchange left a folder behind"; exit 1; fi
# Two exports to one new --out at once: the one that renames second finds the folder made by the
# other (here a seam makes it just before the rename). It leaves that folder as it is and says why,
# where it said "cannot rename ...: Directory not empty" (sweep, 2026-12-05).
rc=0
LD_PRELOAD="$root/tests/tools/export/folder_appears_before_rename.so" ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0 \
    "$moelab" export --ckpt "$tmp/b/single.h5" --out "$tmp/hf_race" --data "$tmp/data" > "$tmp/race.log" 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "hf_race was created by another process while this export was written" "$tmp/race.log" ||
    { echo "export whose --out appeared meanwhile: exit $rc, expected 2 and its message:"; cat "$tmp/race.log"; exit 1; }
[ "$(ls "$tmp/hf_race")" = README.md ] || { echo "the other process's folder was changed"; exit 1; }
if any_exists "$tmp"/hf_race.tmp-*; then echo "the refused export left its temporary folder"; exit 1; fi
# An --out that another moelab command holds (a running train's empty --out; flock(1) stands in for
# it) is refused: the swap took the folder from under the train, whose later checkpoints went into
# a folder nothing names, and let a second train and `ckpt clean` in (sweep, 2026-12-05).
mkdir "$tmp/hf_held"
rc=0
flock "$tmp/hf_held" "$moelab" export --ckpt "$tmp/b/single.h5" --out "$tmp/hf_held" --data "$tmp/data" \
    > "$tmp/held.log" 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "hf_held is in use by another moelab command running now" "$tmp/held.log" ||
    { echo "export into a held --out: exit $rc, expected 2 and its message:"; cat "$tmp/held.log"; exit 1; }
[ -z "$(ls "$tmp/hf_held")" ] || { echo "the held --out was changed"; exit 1; }
if any_exists "$tmp"/hf_held.tmp-*; then echo "the refused export left its temporary folder"; exit 1; fi
echo keep > "$tmp/hf_b_single/README.md"
expect_usage "holds 'README.md'" "$tmp/hf_b_single" --ckpt "$tmp/a/single.h5" --data "$tmp/data" --force
[ -f "$tmp/hf_b_single/README.md" ]
rm "$tmp/hf_b_single/README.md"
mkdir "$tmp/hf_b_single/__pycache__"
touch "$tmp/hf_b_single/__pycache__/other.pyc"
expect_usage "holds '__pycache__'" "$tmp/hf_b_single" --ckpt "$tmp/a/single.h5" --data "$tmp/data" --force
[ -f "$tmp/hf_b_single/__pycache__/other.pyc" ]
touch "$tmp/file"
expect_usage "not a directory" "$tmp/file" --ckpt "$tmp/a/single.h5" --data "$tmp/data"
# '.', '..' and a link cannot be renamed into place: refused before any work (fourth fuzzing pass:
# exit 1 at the very end, naming a source line, and an empty NAME.old-XXXXXX left behind).
mkdir -p "$tmp/dot"
(cd "$tmp/dot" && expect_usage "name the folder itself, not '.' or '..'" . --ckpt "$tmp/a/single.h5" --data "$tmp/data")
expect_usage "name the folder itself, not '.' or '..'" "$tmp/dot/." --ckpt "$tmp/a/single.h5" --data "$tmp/data"
ln -s "$tmp/hf_a_single" "$tmp/link"
expect_usage "link is a symbolic link" "$tmp/link" --ckpt "$tmp/a/single.h5" --data "$tmp/data" --force
if any_exists "$tmp"/*.old-* "$tmp"/dot/*.old-* "$tmp"/.*.old-*; then echo "a refused --out left a folder"; exit 1; fi
"${check[@]}" weights "$tmp/hf_a_single" "$tmp/b/single.h5" > /dev/null  # the link's target untouched
"$moelab" export --help > "$tmp/help"; grep -q "usage: moelab export" "$tmp/help"
echo "export_test: ok"
