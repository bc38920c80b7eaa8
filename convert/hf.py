"""Hugging Face checkpoint directories: config.json + (sharded) safetensors, read without torch.

The safetensors files are parsed here (an 8-byte header length, a JSON header, raw data) and
each tensor is memory-mapped only when it is loaded, so bf16/f16/f32 checkpoints of any size
are streamed one tensor at a time with numpy alone.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pi_backend import format as F
from pi_backend.format import T

from .model import ConvertError, HParams, SourceTensor, permute_qk

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}

# A layer's tensors: Hugging Face name after "model.layers.N." -> ours after "blk.N."
_LAYER_MAP = {
    "input_layernorm.weight": T.ATTN_NORM,
    "post_attention_layernorm.weight": T.FFN_NORM,
    "self_attn.q_proj.weight": T.ATTN_Q,
    "self_attn.k_proj.weight": T.ATTN_K,
    "self_attn.v_proj.weight": T.ATTN_V,
    "self_attn.o_proj.weight": T.ATTN_OUT,
    "self_attn.q_proj.bias": T.ATTN_Q_BIAS,
    "self_attn.k_proj.bias": T.ATTN_K_BIAS,
    "self_attn.v_proj.bias": T.ATTN_V_BIAS,
    "self_attn.q_norm.weight": T.ATTN_Q_NORM,
    "self_attn.k_norm.weight": T.ATTN_K_NORM,
    "mlp.gate_proj.weight": T.FFN_GATE,
    "mlp.up_proj.weight": T.FFN_UP,
    "mlp.down_proj.weight": T.FFN_DOWN,
}
# Gemma's four norms: post_attention_layernorm follows attention, the FFN has its own pre-norm
_GEMMA_LAYER_MAP = {**_LAYER_MAP,
                    "post_attention_layernorm.weight": T.ATTN_POST_NORM,
                    "pre_feedforward_layernorm.weight": T.FFN_NORM,
                    "post_feedforward_layernorm.weight": T.FFN_POST_NORM}


@dataclass(frozen=True)
class HFArch:
    """How a Hugging Face architecture maps onto ours."""
    arch: str                           # our (llama.cpp's) architecture
    layer_map: dict[str, str] = field(default_factory=lambda: _LAYER_MAP)
    # every norm weight w is stored as w + norm_shift: Gemma's RMSNorm multiplies by (1 + w),
    # which llama.cpp's converter stores as such so that the engine multiplies by the weight
    norm_shift: float = 0.0


ARCHITECTURES = {
    "LlamaForCausalLM": HFArch("llama"),
    "MistralForCausalLM": HFArch("llama"),
    "Qwen2ForCausalLM": HFArch("qwen2"),
    "Qwen3ForCausalLM": HFArch("qwen3"),
    "Gemma3ForCausalLM": HFArch("gemma3", _GEMMA_LAYER_MAP, norm_shift=1.0),
}
# Hugging Face activation names -> ours
ACTIVATIONS = {"silu": F.ACT_SILU, "relu": F.ACT_RELU, "gelu_pytorch_tanh": F.ACT_GELU_TANH}
# a layer of layer_types (transformers) slides or attends to every position
_SLIDING, _FULL = "sliding_attention", "full_attention"
_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")


class _STFile:
    """One safetensors file: the header, and lazy memory-mapped access to its tensors."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise ConvertError(f"{path.name}: not a safetensors file (too short)")
                (n,) = struct.unpack("<Q", raw)
                if n > 100 * 1024 * 1024:
                    raise ConvertError(f"{path.name}: not a safetensors file (bad header length)")
                header = json.loads(f.read(n))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path.name}: cannot read safetensors header ({e})") from None
        self.base = 8 + n
        self.size = path.stat().st_size
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = info["dtype"]
            start, end = info["data_offsets"]
            self.entries[name] = (dtype, tuple(info["shape"]), start, end)

    def dtype(self, name: str) -> str:
        return self.entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def load(self, name: str) -> np.ndarray:
        dtype, shape, start, end = self.entries[name]
        if dtype not in _ST_DTYPES:
            raise ConvertError(f"{self.path.name}: tensor {name} has unsupported dtype {dtype}")
        np_dtype = np.dtype(_ST_DTYPES[dtype])
        count = math.prod(shape)
        if end - start != count * np_dtype.itemsize or self.base + end > self.size:
            raise ConvertError(f"{self.path.name}: tensor {name} is truncated or inconsistent")
        if count == 0:
            return np.zeros(shape, np.float32)
        mm = np.memmap(self.path, dtype=np_dtype, mode="r", offset=self.base + start, shape=shape)
        if dtype == "BF16":
            out32 = np.empty(shape, dtype=np.uint32)       # one f32-sized buffer, no temporaries
            np.left_shift(mm, 16, out=out32, dtype=np.uint32, casting="unsafe")
            out = out32.view(np.float32)
        else:
            out = np.asarray(mm, dtype=np.float32)
            if out is mm or np.shares_memory(out, mm):
                out = np.array(mm, dtype=np.float32)
        del mm
        return out


def _cfg(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


def hf_arch(config: dict[str, Any], where: str = "config.json") -> HFArch:
    archs = config.get("architectures") or []
    arch_name = archs[0] if archs else config.get("model_type", "?")
    if arch_name not in ARCHITECTURES:
        raise ConvertError(f"unsupported architecture {arch_name!r} in {where} "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch_name]


def _swa_period(layer_types: list, n_layer: int, where: str) -> int | None:
    """The period of llama.cpp's sliding-window pattern (layer i slides iff
    i % period < period - 1; 0: every layer) that gives transformers' layer_types; None when no
    layer slides."""
    slides = [t == _SLIDING for t in layer_types]
    if len(slides) != n_layer or any(t not in (_SLIDING, _FULL) for t in layer_types):
        raise ConvertError(f"{where}: layer_types must list {_SLIDING!r} or {_FULL!r} for each of "
                           f"the {n_layer} layers")
    if not any(slides):
        return None
    for period in [0] + list(range(2, n_layer + 2)):
        if slides == [period == 0 or i % period < period - 1 for i in range(n_layer)]:
            return period
    raise ConvertError(f"{where}: layer_types {layer_types} is not a sliding-window pattern the "
                       "engine runs (supported: every layer sliding, or the last layer of each "
                       "period of layers global)")


def _rope(config: dict[str, Any], layer_type: str, where: str) -> tuple[float, dict | None]:
    """(RoPE base, scaling or None) of one kind of layer, from transformers' rope_parameters
    (one dict, or one per layer type) or the older rope_theta / rope_scaling /
    rope_local_base_freq keys."""
    rope = config.get("rope_parameters") or {}
    if layer_type in rope:  # per layer type
        rope = rope[layer_type] or {}
    elif layer_type == _SLIDING:  # older Gemma 3 configs: plain RoPE on the sliding layers
        return float(_cfg(config, "rope_local_base_freq", default=10000.0)), None
    theta = float(_cfg(config, "rope_theta", default=rope.get("rope_theta", 10000.0)))
    scaling = config.get("rope_scaling") or None
    if scaling is None and rope.get("rope_type", "default") != "default":
        scaling = rope
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            scaling = None
        elif kind not in ("linear", "llama3") or (layer_type == _SLIDING and kind != "linear"):
            raise ConvertError(f"unsupported rope scaling {kind!r} in {where} (supported: "
                               "linear, llama3)")
    return theta, scaling


def read_hparams(config: dict[str, Any], where: str = "config.json") -> HParams:
    arch = hf_arch(config, where).arch
    act = _cfg(config, "hidden_act", "hidden_activation", default="silu")
    if act not in ACTIVATIONS:
        raise ConvertError(f"unsupported activation {act!r} in {where} "
                           f"(supported: {', '.join(ACTIVATIONS)})")
    try:
        n_embd = int(config["hidden_size"])
        n_ff = int(config["intermediate_size"])
        n_layer = int(config["num_hidden_layers"])
        n_head = int(config["num_attention_heads"])
        n_vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: missing or bad hyperparameter {e}") from None
    n_head_kv = int(_cfg(config, "num_key_value_heads", default=n_head))
    head_dim = int(_cfg(config, "head_dim", default=n_embd // n_head))
    rope_theta, scaling = _rope(config, _FULL, where)
    for opt in ("mlp_bias", "use_sliding_window", "attn_logit_softcapping"):
        if config.get(opt):
            raise ConvertError(f"unsupported option {opt}={config[opt]} in {where}")
    if n_head % n_head_kv:
        raise ConvertError(f"{where}: num_attention_heads {n_head} is not a multiple of "
                           f"num_key_value_heads {n_head_kv}")
    hp = HParams(
        arch=arch, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, n_vocab=n_vocab,
        ctx_len=int(_cfg(config, "max_position_embeddings", default=4096)),
        rope_theta=rope_theta,
        rms_eps=float(_cfg(config, "rms_norm_eps", default=1e-6)),
        activation=ACTIVATIONS[act],
        tied=bool(config.get("tie_word_embeddings", False)),
        name=str(config.get("_name_or_path") or ""),
        rope_scaling=scaling,
        final_softcap=float(config.get("final_logit_softcapping") or 0.0),
    )
    if config.get("query_pre_attn_scalar") is not None:
        hp.attn_scale = float(config["query_pre_attn_scalar"]) ** -0.5
    if F.ARCHS[arch].swa_period is not None and config.get("sliding_window"):
        layer_types = config.get("layer_types")
        if layer_types is None:  # older configs: the period itself
            p = int(_cfg(config, "sliding_window_pattern", "_sliding_window_pattern",
                         default=F.ARCHS[arch].swa_period))
            layer_types = [_SLIDING if p == 0 or i % p < p - 1 else _FULL for i in range(n_layer)]
        period = _swa_period(layer_types, n_layer, where)
        if period is not None:
            hp.n_swa, hp.swa_period = int(config["sliding_window"]), period
            hp.rope_theta_swa, swa_scaling = _rope(config, _SLIDING, where)
            if swa_scaling is not None:
                raise ConvertError(f"unsupported rope scaling of the sliding layers in {where} "
                                   "(supported: none)")
    return hp


def llama3_rope_factors(hp: HParams) -> np.ndarray:
    """Per-frequency divisors for llama3-style rope scaling (llama.cpp's rope_freqs tensor)."""
    s = hp.rope_scaling or {}
    factor = float(s.get("factor", 8.0))
    low = float(s.get("low_freq_factor", 1.0))
    high = float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (hp.rope_theta ** (np.arange(0, hp.head_dim, 2, dtype=np.float64) / hp.head_dim))
    wavelen = 2 * math.pi / freqs
    smooth = np.clip((old_ctx / wavelen - low) / (high - low), 0.0, 1.0)
    out = 1.0 / ((1.0 - smooth) / factor + smooth)
    out[wavelen < old_ctx / high] = 1.0
    out[wavelen > old_ctx / low] = factor
    return out.astype(np.float32)


class HFSource:
    kind = "hf"

    def __init__(self, path: Path):
        self.path = path
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise ConvertError(f"{path}: no config.json (not a Hugging Face model directory)")
        try:
            self.config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConvertError(f"{cfg_path}: cannot parse ({e})") from None
        self.arch = hf_arch(self.config, str(cfg_path))
        self.hparams = read_hparams(self.config, str(cfg_path))
        self.files = self._open_files()
        self.description = f"{path.name} (Hugging Face, {self._dtypes()})"

    # -- files ------------------------------------------------------------------------------
    def _open_files(self) -> dict[str, _STFile]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise ConvertError(f"{index}: cannot parse ({e})") from None
            names = sorted(set(weight_map.values()))
            for n in names:
                if not (self.path / n).is_file():
                    raise ConvertError(f"missing shard {self.path / n} (listed in {index.name})")
        else:
            names = sorted(p.name for p in self.path.glob("*.safetensors"))
            if not names:
                if any(self.path.glob("*.bin")) or any(self.path.glob("*.pth")):
                    raise ConvertError(f"{self.path}: only PyTorch .bin/.pth weights found; "
                                       "save the model as safetensors first")
                raise ConvertError(f"{self.path}: no *.safetensors weights found")
        by_tensor: dict[str, _STFile] = {}
        for n in names:
            f = _STFile(self.path / n)
            for t in f.entries:
                by_tensor[t] = f
        return by_tensor

    def _dtypes(self) -> str:
        return "/".join(sorted({f.dtype(n).lower() for n, f in self.files.items()}))

    # -- tensors ----------------------------------------------------------------------------
    def _gguf_name(self, hf_name: str) -> str | None:
        if hf_name in _GLOBAL_MAP:
            return _GLOBAL_MAP[hf_name]
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
        layer_map = self.arch.layer_map
        if m and m.group(2) in layer_map:
            return F.layer_name(int(m.group(1)), layer_map[m.group(2)])
        return None

    def expected_shape(self, name: str) -> tuple[int, ...] | None:
        hp = self.hparams
        spec = F.SPECS.get(F.split_name(name)[1])
        if spec is None:
            return None
        return spec.shape(F.dims(hp.n_embd, hp.n_ff, hp.n_vocab, hp.n_head, hp.n_head_kv,
                                 hp.head_dim))

    def tensors(self) -> dict[str, SourceTensor]:
        hp = self.hparams
        out: dict[str, SourceTensor] = {}
        for hf_name, f in self.files.items():
            name = self._gguf_name(hf_name)
            if name is None:
                if _IGNORED.search(hf_name):
                    continue
                raise ConvertError(f"unexpected tensor {hf_name!r} in {f.path.name} "
                                   f"(not a {hp.arch} checkpoint?)")
            il, part = F.split_name(name)
            if il is not None and il >= hp.n_layer:
                raise ConvertError(f"tensor {hf_name} is beyond num_hidden_layers={hp.n_layer}")
            shape = f.shape(hf_name)
            want = self.expected_shape(name)
            if want is not None and shape != want:
                raise ConvertError(f"inconsistent shapes: {hf_name} is {list(shape)}, "
                                   f"config.json implies {list(want)}")
            permute = None   # adjacent-pair rope: Q/K rows interleaved as llama.cpp does
            if not F.ARCHS[hp.arch].rope_neox and part in (T.ATTN_Q, T.ATTN_Q_BIAS):
                permute = hp.n_head
            elif not F.ARCHS[hp.arch].rope_neox and part in (T.ATTN_K, T.ATTN_K_BIAS):
                permute = hp.n_head_kv
            spec = F.SPECS.get(part)
            shift = self.arch.norm_shift if spec is not None and spec.kind == F.NORM else 0.0
            out[name] = SourceTensor(name, shape, _loader(f, hf_name, permute, shift),
                                     f.dtype(hf_name).lower())
        if "output.weight" in out and hp.tied:
            hp.tied = False   # an explicit lm_head wins over the config flag
        if "output.weight" not in out:
            hp.tied = True
        kind = hp.rope_scaling and hp.rope_scaling.get("rope_type", hp.rope_scaling.get("type"))
        if kind == "llama3":
            out[T.ROPE_FREQS] = SourceTensor(T.ROPE_FREQS, (hp.head_dim // 2,),
                                             lambda: llama3_rope_factors(hp), "f32")
        return out

    def add_vocab(self, writer, n_vocab: int) -> str:
        from .vocab import add_hf_vocab
        return add_hf_vocab(writer, self.path, n_vocab, self.hparams)

    def close(self) -> None:
        self.files = {}


def _loader(f: _STFile, name: str, permute_heads: int | None, shift: float = 0.0):
    def load() -> np.ndarray:
        a = f.load(name)
        if permute_heads is not None:
            a = np.ascontiguousarray(permute_qk(a, permute_heads))
        if shift:
            a += np.float32(shift)
        return a
    return load


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


__all__ = ["HFSource", "read_hparams", "is_hf_dir", "ARCHITECTURES", "ACTIVATIONS"]
