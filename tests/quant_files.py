"""The GGUF files people download, made here by llama.cpp's own quantizer (through
llama-cpp-python) and kept in a cache keyed by content.

Two sources:
- SmolLM2 (the embedded Q4_1 file, re-quantized): its width 576 is not a multiple of 256, so
  most of its matrices fall back to Q5_0/Q5_1/Q8_0/Q4_0/IQ4_NL, as in real files of small models;
- a tiny random llama whose widths are multiples of 256, so that every matrix is a genuine
  K-quant (or IQ4_XS) row.

A file's name is the hash of its source's bytes, the file type and llama-cpp-python's version;
it lives under tests/.model-cache (ignored by git), is written under a temporary name and
renamed, and is reused by later runs.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from peer import llama_quantize

CACHE = Path(__file__).resolve().parent / ".model-cache"

# llama.cpp file types (LLAMA_FTYPE_MOSTLY_<name>) and the ggml types each must contain in a
# model whose rows are all multiples of 256 long: the test of a file checks that it holds them,
# so that a quantizer change cannot silently leave a type untested.
FTYPES = {
    "Q4_K_M": {"Q4_K", "Q6_K"},
    "Q5_K_M": {"Q5_K", "Q6_K"},
    "Q6_K": {"Q6_K"},
    "Q3_K_M": {"Q3_K"},
    "Q2_K": {"Q2_K"},
    "IQ4_XS": {"IQ4_XS"},
    "BF16": {"BF16"},
}

# The tiny random model: widths multiples of 256, grouped-query attention, untied output.
TINY_256 = dict(hidden_size=256, intermediate_size=768, num_attention_heads=4,
                num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=1024,
                tie_word_embeddings=False)


def content_key(path: Path, *parts: str) -> str:
    """sha256 of the file's bytes and of `parts`, 16 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    for p in parts:
        h.update(b"\0" + p.encode())
    return h.hexdigest()[:16]


def quantized(src: Path, ftype: str, nthread: int = 2) -> Path:
    """src quantized by llama.cpp to LLAMA_FTYPE_MOSTLY_<ftype>, from the cache when there."""
    import llama_cpp
    CACHE.mkdir(exist_ok=True)
    dst = CACHE / f"{src.stem}.{content_key(src, ftype, llama_cpp.__version__)}.{ftype}.gguf"
    if dst.is_file():
        return dst
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        # allow_requantize: SmolLM2's embedded file is itself quantized (Q4_1)
        llama_quantize(src, tmp, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}"), nthread,
                       allow_requantize=True)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def tensor_types(path: Path) -> set[str]:
    """The ggml types of path's matrices."""
    import gguf
    return {t.tensor_type.name for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}
