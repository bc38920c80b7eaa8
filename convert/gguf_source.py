"""Existing llama.cpp GGUF files (an architecture of pi_backend.format.ARCHS) as a conversion
source.

Tensors are memory-mapped by gguf.GGUFReader and dequantized to float32 one at a time with
gguf.quants. A llama.cpp file already has its Q/K rows permuted, so they are kept as they are.
The tokenizer (every `tokenizer.*` key, chat template included) is copied verbatim.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import gguf
from gguf import GGUFValueType as VT

from pi_backend import format as F
from pi_backend.format import Keys, T, field_types, field_value
from pi_backend.gguf_check import GGUFFormatError, check_file, check_hparams

from .model import ConvertError, HParams, SourceTensor

SUPPORTED_ARCHS = tuple(F.ARCHS)
# keys re-derived by the writer, never copied
_REDERIVED = {Keys.ARCHITECTURE, "general.file_type", "general.quantization_version",
              "general.alignment"}


def _typed_value(field) -> tuple[Any, VT, VT | None]:
    """A reader field as (value, type, sub_type), strings kept as raw bytes, as GGUFWriter's
    add_key_value takes it; value None for a nested array."""
    return (field_value(field, text=False), *field_types(field))


class GGUFSource:
    kind = "gguf"

    def __init__(self, path: Path):
        self.path = path
        try:
            check_file(path)  # bounds every count and offset before the reader walks them
            self.reader = gguf.GGUFReader(path, "r")
        except (ValueError, OSError, IndexError, KeyError) as e:
            raise ConvertError(f"{path}: not a readable GGUF file ({e})") from None
        r = self.reader
        arch = self._get(Keys.ARCHITECTURE)
        if arch is None:
            raise ConvertError(f"{path}: no {Keys.ARCHITECTURE} key")
        arch = arch.decode("utf-8", "replace") if isinstance(arch, bytes) else arch
        if arch not in SUPPORTED_ARCHS:
            raise ConvertError(f"unsupported architecture {arch!r} in {path.name} "
                               f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        if isinstance(self._get(f"{arch}.feed_forward_length"), list):
            raise ConvertError(f"{path.name}: per-layer feed_forward_length is not supported")
        try:
            check_hparams(self._get, arch)
        except GGUFFormatError as e:
            raise ConvertError(f"{path.name}: {e}") from None
        if self._get(Keys.FORMAT_VERSION) is not None:
            raise ConvertError(f"{path.name} is already a pi_backend file; convert from its source")
        if any(F.split_name(t.name)[1] == T.FFN_DOWN_T for t in r.tensors):
            raise ConvertError(f"{path.name} has a split FFN already; convert from its source")

        def need(key: str) -> Any:
            v = self._get(f"{arch}.{key}")
            if v is None:
                raise ConvertError(f"{path.name}: missing key {arch}.{key}")
            return v

        self.tensor_map = {t.name: t for t in r.tensors}
        n_embd = int(need("embedding_length"))
        n_head = int(need("attention.head_count"))
        if T.TOKEN_EMBD not in self.tensor_map:
            raise ConvertError(f"{path.name}: no {T.TOKEN_EMBD} tensor")
        if len(self.tensor_map[T.TOKEN_EMBD].shape) != 2:
            raise ConvertError(f"{path.name}: {T.TOKEN_EMBD} is not a matrix")
        n_vocab = int(self.tensor_map[T.TOKEN_EMBD].shape[1])
        n_ff = need("feed_forward_length")
        head_dim = int(self._get(f"{arch}.attention.key_length") or
                       self._get(f"{arch}.rope.dimension_count") or n_embd // n_head)
        self.hparams = HParams(
            arch=arch,
            n_layer=int(need("block_count")),
            n_embd=n_embd,
            n_ff=int(n_ff),
            n_head=n_head,
            n_head_kv=int(self._get(f"{arch}.attention.head_count_kv") or n_head),
            head_dim=head_dim,
            n_vocab=n_vocab,
            ctx_len=int(need("context_length")),
            rope_theta=float(self._get(f"{arch}.rope.freq_base") or 10000.0),
            rms_eps=float(need("attention.layer_norm_rms_epsilon")),
            activation=F.ARCHS[arch].ffn_act,    # llama.cpp's graph of the architecture
            tied=T.OUTPUT not in self.tensor_map,
            name=(self._get("general.name") or b"").decode("utf-8", "replace")
            if isinstance(self._get("general.name"), bytes) else str(self._get("general.name") or ""),
        )
        # carry every other key except the ones the writer derives again
        self.hparams.extra_kv = {}
        for key, field in r.fields.items():
            if key.startswith("GGUF.") or key in _REDERIVED or key.startswith("tokenizer."):
                continue
            typed = _typed_value(field)
            if typed[0] is not None:
                self.hparams.extra_kv[key] = typed
        self.file_type = self._get("general.file_type")   # what --outtype auto writes back
        types = sorted({t.tensor_type.name for t in r.tensors})
        self.description = f"{path.name} (GGUF, {'/'.join(types)})"

    def _get(self, key: str) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return None
        return field_value(f, text=False)

    def tensors(self) -> dict[str, SourceTensor]:
        out: dict[str, SourceTensor] = {}
        for name, t in self.tensor_map.items():
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            out[name] = SourceTensor(name, shape, _loader(t, shape, self.path.name),
                                     t.tensor_type.name, int(t.tensor_type),
                                     lambda t=t: np.asarray(t.data))
        return out

    def add_vocab(self, writer, n_vocab: int) -> str:
        n_tokens = 0
        model = "?"
        for key, field in self.reader.fields.items():
            if not key.startswith("tokenizer."):
                continue
            val, typ, sub = _typed_value(field)
            writer.add_key_value(key, val, typ, sub)
            if key == "tokenizer.ggml.tokens":
                n_tokens = len(val)
            elif key == "tokenizer.ggml.model":
                model = val.decode("utf-8", "replace") if isinstance(val, bytes) else str(val)
        if n_tokens == 0:
            raise ConvertError(f"{self.path.name}: no tokenizer (tokenizer.ggml.tokens) to carry over")
        if n_tokens != n_vocab:
            raise ConvertError(f"inconsistent shapes: {n_tokens} tokens but token_embd has "
                               f"{n_vocab} rows")
        return f"{model}, {n_tokens} tokens (copied from the source GGUF)"

    def close(self) -> None:
        self.tensor_map = {}
        self.reader = None  # type: ignore[assignment]


def _loader(t, shape: tuple[int, ...], fname: str):
    def load() -> np.ndarray:
        qtype = gguf.GGMLQuantizationType(t.tensor_type)
        data = t.data
        try:
            if qtype == gguf.GGMLQuantizationType.F32:
                a = np.array(data, dtype=np.float32)
            elif qtype == gguf.GGMLQuantizationType.F16:
                a = np.asarray(data).astype(np.float32)
            else:
                # row chunks: peak memory stays at the f32 tensor plus a small chunk
                raw = np.asarray(data).reshape(-1, data.shape[-1])
                rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                a = np.empty((rows, shape[-1]), dtype=np.float32)
                step = max(1, (1 << 22) // shape[-1])
                for i in range(0, rows, step):
                    a[i:i + step] = gguf.quants.dequantize(raw[i:i + step], qtype).reshape(-1, shape[-1])
        except NotImplementedError:
            raise ConvertError(f"{fname}: tensor {t.name} has type {qtype.name}, "
                               "which cannot be dequantized") from None
        return np.ascontiguousarray(a.reshape(shape), dtype=np.float32)
    return load


def is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False
