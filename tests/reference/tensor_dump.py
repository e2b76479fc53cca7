"""Reader and writer of moelab tensor dumps (the format of tensor_dump.h), for the PyTorch reference.

Format (little-endian): b"MLTDUMP1", u32 count, then per entry: u32 name_len, name (UTF-8, no NUL),
u32 dtype (0 float32, 1 int32, 2 uint8), u32 ndim, i64 dims[ndim], raw row-major data.
`python3 tensor_dump.py FILE` lists a dump's entries.
"""
import struct
import sys

import numpy as np

MAGIC = b"MLTDUMP1"
MAX_NDIM = 16
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<i4"), 2: np.dtype("u1")}
CODES = {np.dtype("float32"): 0, np.dtype("int32"): 1, np.dtype("uint8"): 2}


class DumpError(ValueError):
    """A dump file that does not follow the format (names the file and the entry)."""


def read_dump(path):
    """Returns {name: numpy array} in file order; raises DumpError on any malformed byte."""
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(n, what):
        nonlocal pos
        if n > len(buf) - pos:
            raise DumpError(f"{path}: truncated at byte {pos} while reading {what} "
                            f"(need {n} bytes, {len(buf) - pos} left)")
        chunk = buf[pos:pos + n]
        pos += n
        return chunk

    if take(len(MAGIC), "the magic") != MAGIC:
        raise DumpError(f"{path}: not a tensor dump (magic is not {MAGIC!r})")
    (count,) = struct.unpack("<I", take(4, "the entry count"))
    out = {}
    for e in range(count):
        where = f"entry {e}"
        (name_len,) = struct.unpack("<I", take(4, f"{where} name length"))
        try:
            name = take(name_len, f"{where} name").decode("utf-8")
        except UnicodeDecodeError as err:
            raise DumpError(f"{path}: {where} name is not UTF-8 ({err})") from None
        where = f"entry {e} '{name}'"
        if not name:
            raise DumpError(f"{path}: {where}: empty name")
        if name in out:
            raise DumpError(f"{path}: {where}: duplicate name")
        dtype_code, ndim = struct.unpack("<II", take(8, f"{where} dtype and ndim"))
        if dtype_code not in DTYPES:
            raise DumpError(f"{path}: {where}: unknown dtype code {dtype_code}")
        if ndim > MAX_NDIM:
            raise DumpError(f"{path}: {where}: ndim {ndim} exceeds {MAX_NDIM}")
        dims = struct.unpack(f"<{ndim}q", take(8 * ndim, f"{where} dims"))
        if any(d < 0 for d in dims):
            raise DumpError(f"{path}: {where}: negative dimension in {dims}")
        dtype = DTYPES[dtype_code]
        n = int(np.prod(dims, dtype=np.int64)) if ndim else 1
        data = take(n * dtype.itemsize, f"{where} data")
        out[name] = np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))
    if pos != len(buf):
        raise DumpError(f"{path}: {len(buf) - pos} bytes after the last of {count} entries")
    return out


def write_dump(path, entries):
    """Writes {name: array} (float32, int32 or uint8 arrays) in the format above."""
    parts = [MAGIC, struct.pack("<I", len(entries))]
    for name, arr in entries.items():
        arr = np.asarray(arr)
        if arr.dtype not in CODES:
            raise DumpError(f"{path}: entry '{name}': dtype {arr.dtype} is not float32/int32/uint8")
        if arr.ndim > MAX_NDIM:
            raise DumpError(f"{path}: entry '{name}': ndim {arr.ndim} exceeds {MAX_NDIM}")
        raw = name.encode("utf-8")
        if not raw:
            raise DumpError(f"{path}: empty entry name")
        parts += [struct.pack("<I", len(raw)), raw, struct.pack("<II", CODES[arr.dtype], arr.ndim),
                  struct.pack(f"<{arr.ndim}q", *arr.shape),
                  np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()]
    with open(path, "wb") as f:
        f.write(b"".join(parts))


def main(argv):
    if len(argv) != 2:
        print("usage: tensor_dump.py DUMP   (lists the entries of a tensor dump)", file=sys.stderr)
        return 2
    try:
        d = read_dump(argv[1])
    except (OSError, DumpError) as err:
        print(f"tensor_dump.py: error: {err}", file=sys.stderr)
        return 2
    for name, a in d.items():
        norm = np.linalg.norm(a.astype(np.float64).ravel())
        print(f"{name:40s} {str(a.dtype):8s} {str(a.shape):20s} norm {norm:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
