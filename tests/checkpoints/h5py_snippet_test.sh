#!/bin/bash
# The h5py snippet of docs/checkpoint-format.md ("Reading a checkpoint with h5py alone"), run as it
# stands with Debian's /usr/bin/python3 + python3-h5py on a single-file checkpoint and on an index
# of two part files (from another working directory): every tensor, both AdamW moments, the config
# and the step must equal what make_ckpt wrote. Also checks that h5ls lists the index's tensors.
set -euo pipefail
root="$TEST_SRCDIR/moelab"
tmp="${TEST_TMPDIR:-/tmp}"
py=/usr/bin/python3
"$py" -c "import h5py, numpy" || { echo "FAIL: $py lacks h5py (apt-get install python3-h5py)"; exit 1; }

"$root/tests/checkpoints/make_ckpt" "$tmp"
awk '/^## Reading a checkpoint with h5py alone/ { on = 1 } on && /^```python/ { code = 1; next }
     code && /^```/ { exit } code { print }' "$root/docs/checkpoint-format.md" >"$tmp/snippet.py"
[ "$(wc -l <"$tmp/snippet.py")" -ge 5 ] || { echo "FAIL: no snippet found in the doc"; exit 1; }

mkdir -p "$tmp/elsewhere"
cd "$tmp/elsewhere"
"$py" - "$tmp" <<'PY'
import struct, sys
import numpy as np
tmp = sys.argv[1]
exec(open(tmp + "/snippet.py").read())

expected = {}
with open(tmp + "/expected.bin", "rb") as f:
    while True:
        head = f.read(4)
        if not head:
            break
        name = f.read(struct.unpack("<I", head)[0]).decode()
        nd = struct.unpack("<I", f.read(4))[0]
        dims = struct.unpack("<%dq" % nd, f.read(8 * nd))
        moments = struct.unpack("<I", f.read(4))[0]
        n = int(np.prod(dims))
        vals = [np.frombuffer(f.read(4 * n), "<f4").reshape(dims) for _ in range(3 if moments else 1)]
        expected[name] = vals

for path in (tmp + "/single.h5", tmp + "/index.h5"):
    config, model, adam, step = read_checkpoint(path)
    assert step == 5, (path, step)
    assert config["d_model"] == "16" and config["n_experts"] == "4", config
    assert set(model) == set(expected), (path, sorted(set(model) ^ set(expected)))
    for name, vals in expected.items():
        assert model[name].dtype == np.float32 and model[name].shape == vals[0].shape, (path, name)
        assert np.array_equal(model[name], vals[0]), (path, name)
        if len(vals) == 3:
            assert np.array_equal(adam["m"][name], vals[1]), (path, "m", name)
            assert np.array_equal(adam["v"][name], vals[2]), (path, "v", name)
        else:
            assert name not in adam["m"], (path, name)
    print("ok: %s: %d tensors and their moments read with h5py alone" % (path, len(model)))
PY
command -v h5ls >/dev/null || { echo "FAIL: h5ls missing (tools/install_deps.sh installs hdf5-tools)"; exit 1; }
listing=$(h5ls -r "$tmp/index.h5")
grep -q "^/model/layers.1.experts.w13 .*Dataset {4, 16, 16}" <<<"$listing" ||
    { echo "FAIL: h5ls does not show the logical expert tensor:"; echo "$listing"; exit 1; }
echo "ok: h5ls lists the logical tensors of the index"
