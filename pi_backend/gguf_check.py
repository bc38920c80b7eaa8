"""Checks a GGUF file's structure, and the hyperparameters read from it, before anything trusts them.

gguf.GGUFReader believes the counts and lengths it reads: a flipped bit in an array count makes it
loop once per claimed element (past the end of the file it reads empty slices and never stops), a
tensor offset past the end yields a short view, and a changed tensor type reads its neighbour's
bytes. `check_file` walks the same header first, over the mapped bytes and without building a
Python object per array element, and bounds every count, length, type and offset by the file:

    magic (GGUF, or PowerInfer's PWRI: pi_backend/powerinfer.py), version, byte order
                -> tensor count, KV count (each bounded by the bytes left)
    per KV:     key (length, UTF-8, unique), value type, value (string length; array: element
                type, count; fixed-size elements skipped arithmetically, string elements walked)
    per tensor: name (length, UTF-8, unique), n_dims 1..4, dims >= 1, ggml type with a block
                size, row length a multiple of it, data offset aligned
    data:       every tensor inside the file; sorted by offset, the tensors are packed with
                padding only (no overlap, no gap a changed type could hide in)

`check_hparams` range-checks the model hyperparameters in the metadata (type, positive, not
absurd, finite) so that no bad value reaches arithmetic or the C library.

Errors are GGUFFormatError (a ValueError): one line naming the field and its offset. Callers add
the path and raise their own kind (ModelError, ConvertError).
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from typing import NamedTuple

import numpy as np
from gguf import (GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType,
                  GGUFReader, GGUFValueType, Keys)

READ_VERSIONS = (2, 3)         # what gguf.GGUFReader reads
MAX_DIMS = 4                   # ggml's GGML_MAX_DIMS
MAX_NAME = 64                  # ggml's GGML_MAX_NAME: a tensor name is shorter
MAX_ARRAY = 1 << 24            # elements in one metadata array (the largest vocabularies: 2^18)
# The fewest bytes one entry can take: key length, type, a 1-byte value / name length, n_dims,
# one dim, type, offset.
MIN_KV_BYTES = 8 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8
_SCALAR_BYTES = {t: np.dtype(np_type).itemsize
                 for t, np_type in GGUFReader.gguf_scalar_to_np.items()}
# The magics read: gguf's, and PowerInfer's (its converter writes a GGUF file, then PWRI over
# the first 4 bytes; the rest of the layout is the same: pi_backend/powerinfer.py).
GGUF_MAGIC_BYTES, PWRI_MAGIC = GGUF_MAGIC.to_bytes(4, "little"), b"PWRI"
MAGICS = (GGUF_MAGIC_BYTES, PWRI_MAGIC)


class Layout(NamedTuple):
    """Where a checked file's parts are: its magic, the end of its metadata (where the tensor
    infos begin) and the start of its data section."""
    magic: bytes
    kv_end: int
    data_start: int


class GGUFFormatError(ValueError):
    """The file is not a well-formed GGUF file (or its metadata is out of range)."""


class _Cursor:
    """Reads little- or big-endian integers from the mapped file, bounds-checked."""

    def __init__(self, buf, order: str):
        self.buf, self.size, self.off = buf, len(buf), 0
        self.u32, self.u64 = struct.Struct(order + "I"), struct.Struct(order + "Q")

    def left(self) -> int:
        return self.size - self.off

    def need(self, n: int, what: str, at: int | None = None) -> None:
        if n > self.left():
            at = self.off if at is None else at
            raise GGUFFormatError(f"{what} at offset {at} needs {n} bytes but the file ends at "
                                  f"{self.size}")

    def int(self, st: struct.Struct, what: str) -> int:
        self.need(st.size, what)
        v = st.unpack_from(self.buf, self.off)[0]
        self.off += st.size
        return v

    def skip_string(self, what: str) -> int:
        """Skips a string (u64 length, bytes); returns its start offset."""
        start = self.off
        n = self.int(self.u64, f"{what} length")
        self.need(n, f"{what} of length {n}", start)
        self.off += n
        return start

    def text(self, what: str) -> str:
        start = self.skip_string(what)
        raw = bytes(self.buf[start + 8:self.off])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(f"{what} at offset {start} is not UTF-8") from None


def _value_type(raw: int, what: str, at: int) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise GGUFFormatError(f"{what} at offset {at}: unknown value type {raw}") from None


def _skip_value(cur: _Cursor, key: str) -> GGUFValueType:
    """Skips the value of `key` (its type first); returns the value type."""
    at = cur.off
    vt = _value_type(cur.int(cur.u32, f"type of {key}"), f"type of {key}", at)
    if vt == GGUFValueType.STRING:
        cur.skip_string(f"value of {key}")
    elif vt == GGUFValueType.ARRAY:
        at = cur.off
        et = _value_type(cur.int(cur.u32, f"array type of {key}"), f"array type of {key}", at)
        count = cur.int(cur.u64, f"array length of {key}")
        if et == GGUFValueType.ARRAY:
            raise GGUFFormatError(f"{key} at offset {at}: nested arrays are not supported")
        size = 8 if et == GGUFValueType.STRING else _SCALAR_BYTES[et]  # the least per element
        if count > MAX_ARRAY or count * size > cur.left():
            raise GGUFFormatError(f"{key} at offset {at}: array of {count} {et.name} elements "
                                  f"does not fit in the {cur.left()} bytes left in the file")
        if et == GGUFValueType.STRING:
            # each step moves past at least 8 bytes, so this loop ends within the file
            for _ in range(count):
                cur.skip_string(f"element of {key}")
        else:
            cur.off += count * size
    else:
        cur.need(_SCALAR_BYTES[vt], f"value of {key}")
        cur.off += _SCALAR_BYTES[vt]
    return vt


def _tensor_info(cur: _Cursor, alignment: int) -> tuple[str, int, int]:
    """One tensor info: (name, data offset, data bytes), each field checked."""
    at = cur.off
    name = cur.text("tensor name")
    if not name or len(name.encode()) >= MAX_NAME:
        raise GGUFFormatError(f"tensor name at offset {at} has {len(name.encode())} bytes "
                              f"(must be 1..{MAX_NAME - 1})")
    n_dims = cur.int(cur.u32, f"n_dims of tensor {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFFormatError(f"tensor {name} at offset {at}: n_dims = {n_dims} "
                              f"(must be 1..{MAX_DIMS})")
    dims = [cur.int(cur.u64, f"dims of tensor {name}") for _ in range(n_dims)]
    raw_type = cur.int(cur.u32, f"type of tensor {name}")
    offset = cur.int(cur.u64, f"data offset of tensor {name}")
    if min(dims) < 1:
        raise GGUFFormatError(f"tensor {name} at offset {at}: dimensions {dims} must be positive")
    try:
        qtype = GGMLQuantizationType(raw_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise GGUFFormatError(f"tensor {name} at offset {at}: unknown ggml type {raw_type}") from None
    if dims[0] % block:
        raise GGUFFormatError(f"tensor {name} at offset {at}: row length {dims[0]} is not a "
                              f"multiple of the {qtype.name} block size {block}")
    if offset % alignment:
        raise GGUFFormatError(f"tensor {name} at offset {at}: data offset {offset} is not a "
                              f"multiple of the alignment {alignment}")
    return name, offset, math.prod(dims) // block * type_size  # Python ints: no overflow


def _check_extents(tensors: list[tuple[str, int, int]], data_start: int, size: int,
                   alignment: int) -> None:
    """Every tensor inside the file; in offset order packed with padding only (as gguf and
    llama.cpp write them): a changed type or offset shows as an overlap, a gap or an overrun."""
    for name, offset, nbytes in tensors:
        if data_start + offset + nbytes > size:
            raise GGUFFormatError(f"tensor {name}: data [{data_start + offset}, "
                                  f"{data_start + offset + nbytes}) runs past the end of the file "
                                  f"({size} bytes)")
    end_prev, prev = 0, None
    for name, offset, nbytes in sorted(tensors, key=lambda t: t[1]):
        if offset < end_prev:
            raise GGUFFormatError(f"tensor {name}: data at offset {offset} overlaps tensor {prev} "
                                  f"(which ends at {end_prev})")
        padded = -(-end_prev // alignment) * alignment
        if offset != padded:
            raise GGUFFormatError(f"tensor {name}: data at offset {offset}, expected {padded} "
                                  f"(right after {prev or 'the start of the data section'})")
        end_prev, prev = offset + nbytes, name


def check_layout(buf) -> Layout:
    """Checks the GGUF bytes `buf` (a mapped file); returns where its parts are."""
    size = len(buf)
    if size < 24:
        raise GGUFFormatError(f"file of {size} bytes is too short for a GGUF header")
    magic = bytes(buf[:4])
    if magic not in MAGICS:
        raise GGUFFormatError("no GGUF magic (nor PowerInfer's PWRI) at offset 0")
    version = struct.unpack_from("<I", buf, 4)[0]
    if version & 0xFFFF == 0 and struct.unpack_from(">I", buf, 4)[0] in READ_VERSIONS:
        raise GGUFFormatError("big-endian GGUF files are not supported")
    if version not in READ_VERSIONS:
        raise GGUFFormatError(f"GGUF version {version} at offset 4 is not supported "
                              f"(supported: {', '.join(map(str, READ_VERSIONS))})")
    cur = _Cursor(buf, "<")
    cur.off = 8
    n_tensors = cur.int(cur.u64, "tensor count")
    n_kv = cur.int(cur.u64, "KV count")
    if n_kv > cur.left() // MIN_KV_BYTES or n_tensors > cur.left() // MIN_TENSOR_INFO_BYTES:
        raise GGUFFormatError(f"header claims {n_tensors} tensors and {n_kv} metadata keys, more "
                              f"than the {size} bytes of the file can hold")
    keys: set[str] = set()
    alignment = GGUF_DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        at = cur.off
        key = cur.text("metadata key")
        if key in keys:
            raise GGUFFormatError(f"metadata key {key!r} at offset {at} is duplicated")
        keys.add(key)
        value_at = cur.off + 4
        vt = _skip_value(cur, repr(key))
        if key == Keys.General.ALIGNMENT:
            alignment = cur.u32.unpack_from(buf, value_at)[0] if vt == GGUFValueType.UINT32 else 0
            if alignment <= 0 or alignment & (alignment - 1):
                raise GGUFFormatError(f"{key} at offset {at} must be a UINT32 power of two")
    kv_end = cur.off
    names: set[str] = set()
    tensors = []
    for _ in range(n_tensors):
        t = _tensor_info(cur, alignment)
        if t[0] in names:
            raise GGUFFormatError(f"tensor {t[0]} is listed twice")
        names.add(t[0])
        tensors.append(t)
    data_start = -(-cur.off // alignment) * alignment
    _check_extents(tensors, data_start, size, alignment)
    return Layout(magic, kv_end, data_start)


def check_buffer(buf) -> int:
    """Checks the GGUF bytes `buf` (a mapped file); returns the data section's offset."""
    return check_layout(buf).data_start


def file_layout(path: str | os.PathLike) -> Layout:
    """Checks the GGUF file at `path` (see the module docstring); returns where its parts are."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            return check_layout(f.read())
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return check_layout(mm)


def check_file(path: str | os.PathLike) -> int:
    """Checks the GGUF file at `path` (see the module docstring); returns the data offset."""
    return file_layout(path).data_start


# ---- hyperparameters ------------------------------------------------------------------------
# key (after "<arch>.") -> (kind, least, most). Generous upper bounds: far above any model of
# this kind, far below what would overflow a size or exhaust memory before a shape check.
HPARAM_LIMITS = {
    "block_count": (int, 1, 4096),
    "embedding_length": (int, 1, 1 << 17),
    "feed_forward_length": (int, 1, 1 << 20),
    "attention.head_count": (int, 1, 4096),
    "attention.head_count_kv": (int, 1, 4096),
    "attention.key_length": (int, 1, 4096),
    "attention.value_length": (int, 1, 4096),
    "rope.dimension_count": (int, 1, 4096),
    "vocab_size": (int, 1, 1 << 24),
    "context_length": (int, 1, 1 << 24),
    "rope.freq_base": (float, 0.0, 1e12),
    "rope.scaling.factor": (float, 0.0, 1e6),
    "attention.layer_norm_rms_epsilon": (float, 0.0, 1.0),
    "attention.sliding_window": (int, 0, 1 << 24),
    "attention.sliding_window_pattern": (int, 0, 4096),
    "rope.freq_base_swa": (float, 0.0, 1e12),
    "attention.scale": (float, 0.0, 1e3),
    "final_logit_softcapping": (float, 0.0, 1e6),
}


def check_hparams(get, arch: str) -> None:
    """Range-checks the hyperparameters of `arch` present in the metadata; `get(key)` returns a
    key's value (None when absent). Floats must be finite and above `least`; ints in range."""
    for suffix, (kind, lo, hi) in HPARAM_LIMITS.items():
        key = f"{arch}.{suffix}"
        v = get(key)
        if v is None:
            continue
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise GGUFFormatError(f"metadata {key} = {_short(v)} must be an integer")
            if not lo <= v <= hi:
                raise GGUFFormatError(f"metadata {key} = {v} is out of range {lo}..{hi}")
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise GGUFFormatError(f"metadata {key} = {_short(v)} must be a number")
            if not (math.isfinite(v) and lo < v <= hi):
                raise GGUFFormatError(f"metadata {key} = {v} must be finite, above {lo} and at "
                                      f"most {hi:g}")


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
