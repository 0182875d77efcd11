"""Tiny safetensors reader/writer on numpy (Debian's torch 1.13 has no safetensors module).

Format: 8-byte little-endian header length n, n bytes of JSON {name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}, then the raw little-endian data.
BF16 (numpy has no such type) is read as float32 (exact: a bf16 is the top half of an f32) and
written from float32 with round-to-nearest-even, as torch's .to(torch.bfloat16).
"""
import json
import struct

import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def bf16_bits(a):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even (NaN kept quiet)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    r[nan] = 0x7FC0
    return r


def bf16_round(a):
    """float32 values rounded to bf16 and back (what a BF16 file stores)."""
    return (bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


def load(path):
    """Returns {name: numpy array} (copies, writable); BF16 tensors come back as float32."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES and info["dtype"] != "BF16":
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        b, e = info["data_offsets"]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(data[base + b:base + e], dtype="<u2").astype(np.uint32)
            out[name] = (bits << 16).view(np.float32).reshape(info["shape"]).copy()
            continue
        arr = np.frombuffer(data[base + b:base + e], dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"]).astype(_DTYPES[info["dtype"]], copy=True)
    return out


def save(path, tensors, metadata=None, bf16=()):
    """tensors: {name: numpy array}; written in name order, 8-byte aligned header. Names in
    bf16 (float arrays) are stored as BF16."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if name in bf16:
            raw, dt = bf16_bits(a).astype("<u2").tobytes(), "BF16"
        elif a.dtype in _NAMES:
            raw, dt = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(), _NAMES[a.dtype]
        else:
            raise ValueError(f"tensor {name}: unsupported dtype {a.dtype}")
        header[name] = {"dtype": dt, "shape": list(a.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
