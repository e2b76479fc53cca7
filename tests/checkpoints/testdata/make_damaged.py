#!/usr/bin/python3
# Writes hdf5_attr_crash.h5 or hdf5_chunk_hang.h5 (README.md) from a sound single-file checkpoint,
# and hdf5_links_crash.h5 from hdf5_crash.h5:
#   make_damaged.py attr_crash CKPT OUT   (CKPT with a variable-length string attribute, as h5py writes)
#   make_damaged.py chunk_hang CKPT OUT   (CKPT with an expert tensor of several chunks)
#   make_damaged.py links_crash hdf5_crash.h5 OUT
import sys


def rot(x, k):
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


# HDF5's metadata checksum: Bob Jenkins' lookup3 hash ("hashlittle"), seed 0.
def checksum(data):
    m = 0xFFFFFFFF
    a = b = c = (0xDEADBEEF + len(data)) & m
    words = lambda k: [int.from_bytes(k[i:i + 4], "little") for i in (0, 4, 8)]
    i = 0
    while len(data) - i > 12:
        x, y, z = words(data[i:i + 12])
        a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
        a = (a - c) & m; a ^= rot(c, 4);  c = (c + b) & m
        b = (b - a) & m; b ^= rot(a, 6);  a = (a + c) & m
        c = (c - b) & m; c ^= rot(b, 8);  b = (b + a) & m
        a = (a - c) & m; a ^= rot(c, 16); c = (c + b) & m
        b = (b - a) & m; b ^= rot(a, 19); a = (a + c) & m
        c = (c - b) & m; c ^= rot(b, 4);  b = (b + a) & m
        i += 12
    if i == len(data):
        return c
    x, y, z = words(data[i:] + bytes(12 - (len(data) - i)))
    a, b, c = (a + x) & m, (b + y) & m, (c + z) & m
    c ^= b; c = (c - rot(b, 14)) & m
    a ^= c; a = (a - rot(c, 11)) & m
    b ^= a; b = (b - rot(a, 25)) & m
    c ^= b; c = (c - rot(b, 16)) & m
    a ^= c; a = (a - rot(c, 4)) & m
    b ^= a; b = (b - rot(a, 14)) & m
    c ^= b; c = (c - rot(b, 24)) & m
    return c


def u64(n):
    return n.to_bytes(8, "little")


# The first object of the file's one global heap collection ("GCOL", 16 bytes of header; an object:
# index u16, references u16, 4 reserved, length u64, then its bytes) claims 2^40 bytes.
def attr_crash(d):
    g = d.find(b"GCOL")
    assert g >= 0 and d.find(b"GCOL", g + 1) < 0, "one global heap collection expected"
    o = g + 16
    assert d[o:o + 2] == b"\x01\x00", "object 1 expected first"
    d[o + 8:o + 16] = u64(1 << 40)


# The file's first fixed array ("FAHD": signature, version, class, element size, log2 of a page's
# elements, elements u64, data block address u64, checksum) claims 2^40 elements in pages of 2^36;
# its data block ("FADB": signature, version, class, header address u64, then, when paged, one bit a
# page, then the checksum) marks its 16 pages unwritten. Both checksums are made right again.
def chunk_hang(d):
    h = d.find(b"FAHD")
    d[h + 7] = 36
    d[h + 8:h + 16] = u64(1 << 40)
    d[h + 24:h + 28] = checksum(bytes(d[h:h + 24])).to_bytes(4, "little")
    b = int.from_bytes(d[h + 16:h + 24], "little")
    assert d[b:b + 4] == b"FADB"
    d[b + 14:b + 16] = bytes(2)
    d[b + 16:b + 20] = checksum(bytes(d[b:b + 16])).to_bytes(4, "little")


# The fourth fractal heap direct block ("FHDB") of hdf5_crash.h5, which holds links of /optim/m, with
# one bit flipped (the low bit of its byte 12): its checksum fails, so the links of /optim/m no longer
# list, while the names looked up one by one that the reader needs before its crash still resolve.
def links_crash(d):
    at = -1
    for _ in range(4):
        at = d.find(b"FHDB", at + 1)
        assert at >= 0, "four fractal heap direct blocks expected"
    d[at + 12] ^= 0x01


if __name__ == "__main__":
    kind, src, dst = sys.argv[1:]
    data = bytearray(open(src, "rb").read())
    {"attr_crash": attr_crash, "chunk_hang": chunk_hang, "links_crash": links_crash}[kind](data)
    open(dst, "wb").write(data)
