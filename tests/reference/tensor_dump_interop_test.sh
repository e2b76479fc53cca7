#!/bin/bash
# The C writer and the Python reader agree: tensor_dump_example writes a known dump and
# tensor_dump.py must read back exactly those names, dtypes, shapes and values.
set -euo pipefail
dir="$TEST_SRCDIR/moelab/tests/reference"
out="$TEST_TMPDIR/example.bin"
"$dir/tensor_dump_example" "$out"
/usr/bin/python3 - "$dir" "$out" <<'PY'
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from tensor_dump import read_dump
d = read_dump(sys.argv[2])
want = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5,
        "ids": np.array([7, -1, 2147483647], np.int32),
        "config_text": np.frombuffer(b"k = v\n", np.uint8),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32)}
assert list(d) == list(want), f"names {list(d)}, expected {list(want)}"
for k, v in want.items():
    assert d[k].dtype == v.dtype and d[k].shape == v.shape and np.array_equal(d[k], v), \
        f"{k}: got {d[k].dtype} {d[k].shape} {d[k]!r}, expected {v.dtype} {v.shape} {v!r}"
print("interop: pass")
PY
# The listing mode runs on the same file and names every entry.
listing=$(/usr/bin/python3 "$dir/tensor_dump.py" "$out")
for name in a ids config_text scalar empty; do
    grep -q "^$name " <<<"$listing" || { echo "listing lacks $name:"; echo "$listing"; exit 1; }
done
