"""Logits against llama-cpp-python, with the bound measured on llama.cpp itself (its one-token
path against its batched path on the same file and text): the engine tests share these."""
from __future__ import annotations

import numpy as np


def llama_cpp_lanes() -> int | None:
    """The f32 vector width of the llama.cpp CPU build llama-cpp-python runs (its system info: the
    instruction sets it was compiled for): 16 for an AVX-512 build, 8 for AVX2, None otherwise."""
    import llama_cpp
    info = llama_cpp.llama_print_system_info().decode()
    if "AVX512 = 1" in info:
        return 16
    return 8 if "AVX2 = 1" in info else None


def ref_logits(ref, tokens):
    ref.reset()
    ref.eval(tokens)
    return np.array(ref.scores[:len(tokens)], dtype=np.float32)


def ref_logits_one_by_one(ref, tokens):
    ref.reset()
    for t in tokens:
        ref.eval([t])
    return np.array(ref.scores[:len(tokens)], dtype=np.float32)


def llama_quantize(src, dst, ftype: int, nthread: int | None = None,
                   allow_requantize: bool = False) -> None:
    """llama.cpp's own quantizer (through llama-cpp-python): the file src to dst in ftype (a
    llama_cpp.LLAMA_FTYPE_* value), on nthread threads (llama.cpp's default when None);
    allow_requantize: src may itself be quantized."""
    import ctypes

    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = allow_requantize
    if nthread is not None:
        params.nthread = nthread
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama.cpp's quantizer failed ({rc}) on {src}"


def within_peer_noise(d: dict, peer: dict) -> bool:
    """Whether divergence d is within twice llama.cpp's own (peer): both are another summation
    order than the batched path's, and 256 positions leave a token or two of sampling noise."""
    return 1 - d["top1"] <= 2 * (1 - peer["top1"]) and d["kl"] <= 2 * peer["kl"]


def as_close_as_peer(d: dict, peer: dict, n: int) -> bool:
    """Whether our distance d to the exact model (transformers on the file's weights) is within
    llama.cpp's (peer) over n positions. Both engines quantize the activations the same way, so
    their KL to the exact model is the same error: ours within 1.5x. Top-1 misses fall on the
    exact model's near-ties, a count that varies run to run like a Poisson count: ours within
    twice the peer's plus three of its standard deviations."""
    misses, peer_misses = (1 - d["top1"]) * n, (1 - peer["top1"]) * n
    return d["kl"] <= 1.5 * peer["kl"] and misses <= 2 * peer_misses + 3 * (peer_misses + 1) ** 0.5


def divergence(a, b) -> dict:
    """How far logits a [n, vocab] are from logits b: top-1 agreement, mean KL(b || a), max |a - b|
    (the KL in double: f32 rounding would leave a noise of about 1e-8, negative at times)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    la = a - a.max(-1, keepdims=True)
    lb = b - b.max(-1, keepdims=True)
    la = la - np.log(np.exp(la).sum(-1, keepdims=True))
    lb = lb - np.log(np.exp(lb).sum(-1, keepdims=True))
    kl = float(np.mean(np.sum(np.exp(lb) * (lb - la), -1)))
    return {"top1": float(np.mean(a.argmax(-1) == b.argmax(-1))), "kl": kl,
            "max": float(np.abs(a - b).max())}


def response_shape(o, first_item: bool = False):
    """The structure of an API response, ours or llama-cpp-python's: keys and value types, not
    values (a float of any width, numpy's too, is "number"); first_item: a list by its first
    item only (lists of different lengths compare equal)."""
    if isinstance(o, dict):
        return {k: response_shape(v, first_item) for k, v in o.items()}
    if isinstance(o, list):
        return [response_shape(v, first_item) for v in (o[:1] if first_item else o)]
    if isinstance(o, (float, np.floating)):
        return "number"
    return type(o).__name__
