"""PowerInfer's own GGUF files (magic PWRI), and how they map onto our split-FFN format: the
engine runs them in place (pi_backend.model), pi-convert writes our file from them
(convert/powerinfer.py). docs/FORMAT.md has the summary.

What PowerInfer writes (SJTU-IPADS/PowerInfer: convert.py with its gguf-py fork, the loader and
graph of its llama.cpp, the sparse operators of its ggml.c, powerinfer-py's export_split.py):
- a GGUF v3 file written by gguf's writer, whose first 4 bytes are then overwritten with `PWRI`;
  all after them is GGUF's layout;
- `general.architecture` `llama` (ReluLLaMA: FFN relu(gate) * up), `bamboo` (FFN relu(gate) *
  relu(up)), `opt` or `falcon`; the standard `<arch>.*` and `tokenizer.*` keys, and
  `powerinfer.sparse_threshold` (f32, optional: 0 when absent);
- per layer our names and shapes: `ffn_gate`, `ffn_up` [n_ff][d], `ffn_down_t` [n_ff][d] (the
  down weight transposed; no `ffn_down`) and the predictor `fc1` [rank][d], `fc2` [n_ff][rank],
  which its loader requires in every layer; 2-D tensors in the file's type (f32, f16, q8_0, or
  what PowerInfer's quantize made of them, predictors included), norms f32;
- the predictor: logits = fc2 relu(fc1 x), x the FFN's input *before* ffn_norm (the residual
  stream, `ffn_inp` in its llama graph); neuron i runs when logit_i >= the threshold;
- the GPU placement in a separate PWRI file (architecture `generic.gpu_index`: `blk.N.gpu_idx`
  i32 [n_ff], `blk.N.gpu_bucket` i32 [k], key `split.vram_capacity`), never needed on the CPU.

The mapping (`map_model`): the tensor names are ours already; the keys become pi.ffn_activation
relu, pi.sparse_mode sparse, pi.thresholds (the threshold in every layer) and pi.predictor.ranks.
Our predictor reads the normed input xn = x / s * w (s: the RMS of x, w: ffn_norm's weight), so
x = s * (xn / w) and fc2 relu(fc1 x) = s * fc2 relu((fc1 / w) xn): fc1 with column j divided by
w_j gives PowerInfer's logits times s > 0, the same signs, hence the same picks at threshold 0
(PowerInfer's default). At another threshold the picks would depend on s, token by token: such
a file runs dense or in threshold mode. PowerInfer keeps logit >= t, we keep logit > t: they
differ on a logit of exactly t only.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from . import format as F
from .format import Keys, T, layer_name
from .gguf_check import (GGUF_MAGIC_BYTES as GGUF_MAGIC, PWRI_MAGIC as MAGIC, GGUFFormatError,
                         check_hparams, file_layout)

SPLIT_ARCH = "generic.gpu_index"        # PowerInfer's GPU split file
GPU_PARTS = ("gpu_idx", "gpu_bucket")   # its per-layer tensors (GPU placement only)
REQUIRED_PARTS = (T.FFN_DOWN_T, T.FC1, T.FC2)   # in every layer, as PowerInfer's loader wants
ARCHS = ("llama",)                      # what maps onto the engine
REFUSED = {                             # PowerInfer's other architectures, and why
    "bamboo": "its FFN is relu(gate) * relu(up), the engine's relu(gate) * up",
    "opt": "LayerNorm with biases, learned positions and an FFN without a gate",
    "falcon": "LayerNorm, parallel attention and an FFN without a gate",
}


class PowerInferError(ValueError):
    """A PowerInfer file that does not map onto the engine (one line; callers add the path)."""


def is_powerinfer_file(path) -> bool:
    """Whether `path` is a file that starts with PowerInfer's magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:    # missing, a directory, unreadable
        return False


def is_powerinfer(buf) -> bool:
    """Whether the bytes `buf` (a file's map) start with PowerInfer's magic."""
    return bytes(buf[:4]) == MAGIC


@contextlib.contextmanager
def vocab_file(path: str) -> Iterator[str]:
    """A path llama.cpp reads the vocabulary of `path` from: `path` itself, or for a PWRI file
    (llama.cpp refuses its magic) a temporary GGUF file of its header and metadata without
    tensors, removed on exit."""
    if not is_powerinfer_file(path):
        yield path
        return
    kv_end = file_layout(path).kv_end
    with open(path, "rb") as f:
        head = f.read(kv_end)
    fd, tmp = tempfile.mkstemp(prefix="pi-vocab-", suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as out:   # magic, version, no tensors, KV count, metadata
            out.write(GGUF_MAGIC + head[4:8] + (0).to_bytes(8, "little") + head[16:])
        yield tmp
    finally:
        os.unlink(tmp)


@dataclass
class Mapped:
    """A PowerInfer file as our format: the pi.* keys it implies, the per-layer parts the engine
    does not take from it (the GPU split; the predictors as stored), and per layer the parts it
    takes instead [(part, data as stored, ggml type)]: the predictor as ours reads it."""
    keys: dict
    drop: tuple[str, ...]
    add: dict[int, list] = field(default_factory=dict)
    threshold: float | None = None       # None: the predictors are not used
    ranks: list[int] = field(default_factory=list)


def map_model(fields: Mapping, tensors: Mapping[str, tuple[int, tuple]],
              read: Callable[[str], np.ndarray], use_predictors: bool | None = None) -> Mapped:
    """The mapping of a PowerInfer file (see the module docstring). fields: its metadata values;
    tensors: name -> (ggml type id, numpy shape); read(name): a tensor's bytes as stored (uint8).
    use_predictors: True (an error when they do not map), False (dropped), None (when they map).
    Raises PowerInferError."""
    arch = fields.get(Keys.ARCHITECTURE)
    if arch == SPLIT_ARCH:
        raise PowerInferError(f"architecture {SPLIT_ARCH!r}: this is PowerInfer's GPU split "
                              "index (blk.N.gpu_idx / gpu_bucket), not a model; the engine runs "
                              "the model file alone")
    if arch not in ARCHS:
        why = f": {REFUSED[arch]}" if isinstance(arch, str) and arch in REFUSED else ""
        raise PowerInferError(f"PowerInfer architecture {arch!r} is not supported{why} "
                              f"(supported: {', '.join(ARCHS)})")
    try:
        check_hparams(fields.get, arch)
    except GGUFFormatError as e:
        raise PowerInferError(str(e)) from None
    n_layer, d = (_need(fields, f"{arch}.{k}") for k in ("block_count", "embedding_length"))
    for il in range(n_layer):
        for part in REQUIRED_PARTS:
            if layer_name(il, part) not in tensors:
                raise PowerInferError(
                    f"tensor {layer_name(il, part)} is missing (a PowerInfer {arch} file has "
                    f"{', '.join(REQUIRED_PARTS)} in every layer)")
    thr = fields.get(Keys.POWERINFER_THRESHOLD, 0.0)
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise PowerInferError(f"metadata {Keys.POWERINFER_THRESHOLD} = {thr!r} must be a finite "
                              "number")
    if use_predictors is None:
        use_predictors = thr == 0
    elif use_predictors and thr != 0:
        raise PowerInferError(
            f"{Keys.POWERINFER_THRESHOLD} = {thr:g}: PowerInfer compares it with predictor logits "
            "of the FFN input before its norm, which the engine's match in sign only "
            "(threshold 0); run this file in 'dense' or 'threshold' FFN mode")
    keys = {Keys.FFN_ACTIVATION: F.ACT_RELU, Keys.FFN_LAYOUT: F.FFN_LAYOUT_SPLIT,
            Keys.SPARSE_MODE: F.FFN_SPARSE if use_predictors else F.FFN_DENSE,
            Keys.NEURON_ORDER: False}
    if not use_predictors:
        return Mapped(keys, GPU_PARTS + (T.FC1, T.FC2))
    out = Mapped(keys, GPU_PARTS + (T.FC1,), threshold=float(thr))
    for il in range(n_layer):
        data, qt = _normed_predictor(il, d, tensors, read)
        out.add[il] = [(T.FC1, data, qt)]
        out.ranks.append(int(data.shape[0]))
    keys.update({Keys.THRESHOLDS: [float(thr)] * n_layer, Keys.PREDICTOR_RANKS: out.ranks,
                 Keys.POWERINFER_THRESHOLD: float(thr)})
    return out


def _need(fields: Mapping, key: str) -> int:
    v = fields.get(key)
    if v is None:
        raise PowerInferError(f"metadata key {key!r} is missing")
    return int(v)


def _normed_predictor(il: int, d: int, tensors, read) -> tuple[np.ndarray, int]:
    """fc1 of layer il for the normed input: its column j divided by ffn_norm's weight w_j (in
    f64), stored as f16 when fc1 is f16 (f32 should that overflow), as f32 when fc1 is another
    float type, else (quantized) as q8_0."""
    norm, fc1 = layer_name(il, T.FFN_NORM), layer_name(il, T.FC1)
    if norm not in tensors:
        raise PowerInferError(f"tensor {norm} is missing")
    ntype, nshape = tensors[norm]
    if ntype != QT.F32 or tuple(nshape) != (d,):
        raise PowerInferError(f"tensor {norm} is {F.ggml_type_name(ntype)} {list(nshape)}, expected "
                              f"F32 [{d}]")
    w = read(norm).view(np.float32).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(w) | (w == 0))
    if bad.size:
        raise PowerInferError(f"{norm}[{bad[0]}] = {w[bad[0]]:g}: PowerInfer's predictor reads "
                              "the FFN input before this norm, which a zero or non-finite weight "
                              "leaves unrecoverable")
    ftype, fshape = tensors[fc1]
    if len(fshape) != 2 or fshape[1] != d:
        raise PowerInferError(f"tensor {fc1} has shape {list(fshape)}, expected [rank, {d}]")
    try:
        qt = QT(ftype)
        a = gguf.quants.dequantize(read(fc1).reshape(fshape[0], -1), qt).reshape(fshape)
    except (ValueError, NotImplementedError):
        raise PowerInferError(f"tensor {fc1}: its type {F.ggml_type_name(ftype)} cannot be "
                              "read") from None
    folded = a.astype(np.float64) / w
    if not np.all(np.isfinite(folded)):
        raise PowerInferError(f"tensor {fc1} has non-finite weights")
    if qt == QT.F16:
        half = folded.astype(np.float16)
        if np.all(np.isfinite(half)):
            return half, QT.F16
    if gguf.GGML_QUANT_SIZES[qt][0] == 1:    # a float type
        return folded.astype(np.float32), QT.F32
    return gguf.quants.quantize(folded.astype(np.float32), QT.Q8_0), QT.Q8_0
