"""Shared types of the converter: the error users see, hyperparameters, lazy source tensors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pi_backend import format as F


class ConvertError(Exception):
    """A user-facing error: printed as one line, exit status 1, no traceback."""


@dataclass
class HParams:
    arch: str                 # GGUF architecture: one of pi_backend.format.ARCHS
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    ctx_len: int
    rope_theta: float
    rms_eps: float
    activation: str           # one of pi_backend.format.ACTIVATIONS
    tied: bool                # no output.weight: the output reuses token_embd
    name: str = ""
    rope_scaling: dict[str, Any] | None = None
    attn_scale: float | None = None   # the q.k scale when the checkpoint sets one (Gemma)
    final_softcap: float = 0.0        # logits = cap * tanh(logits / cap); 0: none
    n_swa: int = 0                    # sliding window of the sliding layers; 0: none
    swa_period: int = 0               # layer i slides iff i % swa_period < swa_period - 1
    rope_theta_swa: float = 10000.0   # the sliding layers' RoPE base
    # extra "<arch>.*" keys to carry verbatim (GGUF sources): key -> (value, type, sub_type)
    extra_kv: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)


@dataclass
class SourceTensor:
    """A tensor of the source, named and laid out as in a llama.cpp GGUF file (numpy shape,
    Q/K rows already permuted for the llama architecture). `load()` returns float32 data and
    is called once, when the tensor is written, so that only one tensor is held at a time."""
    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    src_type: str = ""        # what the source stores ("bf16", "Q4_1", ...), for the summary
    # a GGUF source: the ggml type and a loader of the stored bytes as they are (quantized rows
    # [rows][row bytes] as uint8, F32/F16 as their numpy dtype), for --outtype auto
    qtype: int | None = None
    load_raw: Callable[[], np.ndarray] | None = None


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of an HF q/k projection (or bias) from the rotate-half rope layout to the
    interleaved-pairs layout llama.cpp's llama architecture uses: within each head, rows
    [0..hd/2) and [hd/2..hd) are interleaved."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConvertError(f"cannot permute a q/k tensor with {rows} rows for {n_head} heads")
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))
