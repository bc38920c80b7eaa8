"""The pi_backend GGUF format in one place (docs/FORMAT.md), as gguf-py's constants.py is for
llama.cpp: the `pi.*` metadata keys, the tensor names with their symbolic shapes, the FFN modes,
the architectures and their flags, and the one reader of metadata fields.

The runtime (pi_backend.model, pi-bench) and the converter (pi_backend.convert) both read it.
The C engine has its own tables (ggml_ext/model.c `layer_specs` / `global_specs`, and the
tensors `pi_model_finalize` requires); tests/test_format.py checks them equal to these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

FORMAT_VERSION = 1


class Keys:
    """GGUF metadata keys written by the converter and read by the engine."""
    FORMAT_VERSION = "pi.format_version"        # u32, FORMAT_VERSION
    FFN_ACTIVATION = "pi.ffn_activation"        # string, one of ACTIVATIONS
    FFN_LAYOUT = "pi.ffn_layout"                # string, FFN_LAYOUT_SPLIT
    SPARSE_MODE = "pi.sparse_mode"              # string, one of FFN_MODES: the file's default
    THRESHOLDS = "pi.thresholds"                # f32 [n_layer]
    CALIBRATION = "pi.calibration"              # string, for people
    PREDICTOR_RANKS = "pi.predictor.ranks"      # u32 [n_layer]
    NEURON_ORDER = "pi.neuron_order"            # bool: blk.N.neuron_order tensors present
    SOURCE = "pi.source"                        # string: what the file was converted from
    HEAD_CANDIDATES = "pi.head.candidates"      # u32: the output preview's candidate count N
    HEAD_MARGIN = "pi.head.margin"              # f32: its fallback margin (logits per probe length)
    HEAD_WINDOW = "pi.head.window"              # f32: its fallback window (logits; absent: 0)
    HEAD_RECALL = "pi.head.recall"              # string, for people: the preview's measured recall
    POWERINFER_THRESHOLD = "powerinfer.sparse_threshold"   # f32, PowerInfer's global threshold
    ARCHITECTURE = "general.architecture"


FFN_LAYOUT_SPLIT = "split"

# FFN modes (pi.h pi_ffn_mode, in its order) and FFN activations (pi_act, in its order; the
# spelling of kernels.c's pi_acts). gelu_tanh: GELU's tanh approximation (Gemma).
FFN_DENSE, FFN_SPARSE, FFN_THRESHOLD = FFN_MODES = ("dense", "sparse", "threshold")
ACT_SILU, ACT_RELU, ACT_GELU_TANH = ACTIVATIONS = ("silu", "relu", "gelu_tanh")


# The `<arch>.rope.scaling.type` values the engine runs (llama.cpp's names): none, and linear
# (positions times 1 / `rope.scaling.factor`). llama 3's frequency-dependent scaling needs no key:
# it is the `rope_freqs.weight` tensor.
ROPE_SCALINGS = ("none", "linear")


# Tensor requirements (model.c `enum need`): every architecture's, and those of the ones with
# q/k norms (qwen3, gemma3) and with norms after attention and FFN (gemma3).
REQ_ALL, REQ_QK_NORM, REQ_POST_NORM = "all", "qk_norm", "post_norm"
# Output head modes (pi.h pi_head_mode, in its order): sparse needs the output preview.
HEAD_DENSE, HEAD_SPARSE = HEAD_MODES = ("dense", "sparse")


@dataclass(frozen=True)
class Arch:
    """Per-architecture flags (pi.h pi_arch, in its order; model.c's arch_table has `needs`)."""
    name: str
    rope_neox: bool   # rotate halves (NeoX); else adjacent pairs, with Q/K rows permuted
    qkv_bias: bool    # attn_q/k/v carry biases
    needs: tuple[str, ...] = (REQ_ALL,)   # the tensor requirements its models meet
    ffn_act: str = ACT_SILU               # the FFN activation of a plain (llama.cpp) file
    embd_scale: bool = False              # token embeddings times sqrt(n_embd)
    # sliding-window attention, as llama.cpp reads it: the pattern's period when the file has
    # no `attention.sliding_window_pattern` (None: the architecture has no sliding layers) and
    # the sliding layers' RoPE base without `rope.freq_base_swa`
    swa_period: int | None = None
    rope_freq_base_swa: float = 10000.0


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("llama", rope_neox=False, qkv_bias=False),
    Arch("qwen2", rope_neox=True, qkv_bias=True),
    Arch("qwen3", rope_neox=True, qkv_bias=False, needs=(REQ_ALL, REQ_QK_NORM)),
    Arch("gemma3", rope_neox=True, qkv_bias=False, needs=(REQ_ALL, REQ_QK_NORM, REQ_POST_NORM),
         ffn_act=ACT_GELU_TANH, embd_scale=True, swa_period=6),
)}

def llama_cpp_attn_scale(arch: str, n_layer: int, n_embd: int, n_head: int,
                         head_dim: int) -> float:
    """The q.k scale llama.cpp uses where a file has no `attention.scale` (its gemma3 graph
    ignores the key): 1/sqrt(head_dim), except Gemma 3 27B (gemma3 with 62 layers), which it
    scales by 1/sqrt(n_embd / n_head), that model's query_pre_attn_scalar. 0 when that size is
    not positive (hyperparameters the engine refuses)."""
    size = n_embd // n_head if arch == "gemma3" and n_layer == 62 and n_head > 0 else head_dim
    return 1.0 / math.sqrt(size) if size > 0 else 0.0


# ---- tensors -----------------------------------------------------------------------------------
# Symbolic dimensions (model.c `enum dim`): resolved from the hyperparameters.
DIM_ONE, DIM_EMBD, DIM_FF, DIM_VOCAB, DIM_Q, DIM_KV, DIM_RANK, DIM_ROT2, DIM_HEAD, DIM_HEAD_RANK = (
    "one", "embd", "ff", "vocab", "q", "kv", "rank", "rot2", "head", "head_rank")
# Kinds (model.c `enum kind`): norms, biases and other vectors are f32, matrices any weight type.
NORM, MATRIX, BIAS, VECTOR = "norm", "matrix", "bias", "vector"


@dataclass(frozen=True)
class TensorSpec:
    name: str         # after "blk.N." (per layer) or the whole name (global)
    kind: str         # NORM, MATRIX or BIAS
    rows: str         # DIM_*: numpy shape [rows][cols]; vectors have rows DIM_ONE
    cols: str
    need: str = ""    # REQ_*: pi_model_finalize refuses a model of an architecture with that
                      # requirement without it; "": optional

    def required_by(self, arch: str) -> bool:
        return bool(self.need) and self.need in ARCHS[arch].needs

    def shape(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The numpy shape for `dims` (see `dims`): (cols,) for a vector."""
        if self.rows == DIM_ONE:
            return (dims[self.cols],)
        return (dims[self.rows], dims[self.cols])


def dims(n_embd: int, n_ff: int, n_vocab: int, n_head: int, n_head_kv: int, head_dim: int,
         rank: int | None = None, n_rot: int | None = None,
         head_rank: int | None = None) -> dict[str, int]:
    """The symbolic dimensions' values (n_rot, the rotated dims per head: head_dim when None)."""
    out = {DIM_ONE: 1, DIM_EMBD: n_embd, DIM_FF: n_ff, DIM_VOCAB: n_vocab,
           DIM_Q: n_head * head_dim, DIM_KV: n_head_kv * head_dim,
           DIM_ROT2: (head_dim if n_rot is None else n_rot) // 2, DIM_HEAD: head_dim}
    if rank is not None:
        out[DIM_RANK] = rank
    if head_rank is not None:
        out[DIM_HEAD_RANK] = head_rank
    return out


class T:
    """Tensor names: per layer after "blk.N." (see `layer_name`), global as they are."""
    ATTN_NORM = "attn_norm.weight"
    ATTN_Q, ATTN_K, ATTN_V = "attn_q.weight", "attn_k.weight", "attn_v.weight"
    ATTN_Q_BIAS, ATTN_K_BIAS, ATTN_V_BIAS = "attn_q.bias", "attn_k.bias", "attn_v.bias"
    ATTN_Q_NORM, ATTN_K_NORM = "attn_q_norm.weight", "attn_k_norm.weight"   # [head_dim]
    ATTN_OUT = "attn_output.weight"
    ATTN_POST_NORM = "post_attention_norm.weight"   # RMSNorm of the attention output (gemma3)
    FFN_NORM = "ffn_norm.weight"
    FFN_POST_NORM = "post_ffw_norm.weight"          # RMSNorm of the FFN output (gemma3)
    FFN_GATE, FFN_UP = "ffn_gate.weight", "ffn_up.weight"
    FFN_DOWN = "ffn_down.weight"         # [d][n_ff], the plain layout
    FFN_DOWN_T = "ffn_down_t.weight"     # [n_ff][d], the split layout: one row per neuron
    FC1, FC2 = "fc1.weight", "fc2.weight"   # the predictor fc2(relu(fc1 x))
    NEURON_ORDER = "neuron_order"        # i32 [n_ff], for the converter; the engine skips it
    TOKEN_EMBD = "token_embd.weight"
    ROPE_FREQS = "rope_freqs.weight"     # f32 [n_rot/2]: RoPE frequency divisors (llama 3)
    OUTPUT_NORM = "output_norm.weight"
    OUTPUT = "output.weight"             # absent when tied to token_embd
    PREVIEW_A = "output_preview_a.weight"  # [head_rank][d]: the output preview's projection
    PREVIEW_B = "output_preview_b.weight"  # [n_vocab][head_rank]: p = B (A x) ~ output x


# The engine's tables, in model.c's order.
LAYER_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec(T.ATTN_NORM, NORM, DIM_ONE, DIM_EMBD, REQ_ALL),
    TensorSpec(T.ATTN_Q, MATRIX, DIM_Q, DIM_EMBD, REQ_ALL),
    TensorSpec(T.ATTN_K, MATRIX, DIM_KV, DIM_EMBD, REQ_ALL),
    TensorSpec(T.ATTN_V, MATRIX, DIM_KV, DIM_EMBD, REQ_ALL),
    TensorSpec(T.ATTN_Q_BIAS, BIAS, DIM_ONE, DIM_Q),
    TensorSpec(T.ATTN_K_BIAS, BIAS, DIM_ONE, DIM_KV),
    TensorSpec(T.ATTN_V_BIAS, BIAS, DIM_ONE, DIM_KV),
    TensorSpec(T.ATTN_Q_NORM, NORM, DIM_ONE, DIM_HEAD, REQ_QK_NORM),
    TensorSpec(T.ATTN_K_NORM, NORM, DIM_ONE, DIM_HEAD, REQ_QK_NORM),
    TensorSpec(T.ATTN_OUT, MATRIX, DIM_EMBD, DIM_Q, REQ_ALL),
    TensorSpec(T.ATTN_POST_NORM, NORM, DIM_ONE, DIM_EMBD, REQ_POST_NORM),
    TensorSpec(T.FFN_NORM, NORM, DIM_ONE, DIM_EMBD, REQ_ALL),
    TensorSpec(T.FFN_GATE, MATRIX, DIM_FF, DIM_EMBD, REQ_ALL),
    TensorSpec(T.FFN_UP, MATRIX, DIM_FF, DIM_EMBD, REQ_ALL),
    TensorSpec(T.FFN_DOWN, MATRIX, DIM_EMBD, DIM_FF),      # one of ffn_down, ffn_down_t
    TensorSpec(T.FFN_DOWN_T, MATRIX, DIM_FF, DIM_EMBD),
    TensorSpec(T.FC1, MATRIX, DIM_RANK, DIM_EMBD),
    TensorSpec(T.FC2, MATRIX, DIM_FF, DIM_RANK),
    TensorSpec(T.FFN_POST_NORM, NORM, DIM_ONE, DIM_EMBD, REQ_POST_NORM),
)
GLOBAL_TENSORS: tuple[TensorSpec, ...] = (
    TensorSpec(T.TOKEN_EMBD, MATRIX, DIM_VOCAB, DIM_EMBD, REQ_ALL),
    TensorSpec(T.OUTPUT_NORM, NORM, DIM_ONE, DIM_EMBD, REQ_ALL),
    TensorSpec(T.OUTPUT, MATRIX, DIM_VOCAB, DIM_EMBD),
    TensorSpec(T.ROPE_FREQS, VECTOR, DIM_ONE, DIM_ROT2),
    TensorSpec(T.PREVIEW_A, MATRIX, DIM_HEAD_RANK, DIM_EMBD),
    TensorSpec(T.PREVIEW_B, MATRIX, DIM_VOCAB, DIM_HEAD_RANK),
)
SPECS: dict[str, TensorSpec] = {s.name: s for s in LAYER_TENSORS + GLOBAL_TENSORS}


def layer_name(il: int, name: str) -> str:
    """The full name of per-layer tensor `name` of layer il: blk.<il>.<name>."""
    return f"blk.{il}.{name}"


def split_name(full: str) -> tuple[int | None, str]:
    """(layer, name) of a full tensor name; layer None for a global tensor."""
    if full.startswith("blk."):
        layer, _, name = full[4:].partition(".")
        if layer.isdigit() and name:
            return int(layer), name
    return None, full


# ---- metadata ----------------------------------------------------------------------------------
def ggml_type_name(type_id: int) -> str:
    """gguf's name of a ggml type id ("Q4_K"), for messages."""
    from gguf import GGMLQuantizationType
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"ggml type id {type_id}"


def field_value(field, *, text: bool = True) -> Any:
    """A gguf.ReaderField's value as Python: a scalar, a string (bytes with text=False), or a
    list of them; None for the nested arrays GGUF allows and no model uses."""
    from gguf import GGUFValueType as VT
    types = field.types
    if not types or (types[0] == VT.ARRAY and len(types) > 2):
        return None

    def string(part) -> Any:
        raw = bytes(part)
        return raw.decode("utf-8", "replace") if text else raw

    if types[0] == VT.ARRAY:
        if len(types) > 1 and types[1] == VT.STRING:
            return [string(field.parts[i]) for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == VT.STRING:
        return string(field.parts[field.data[0]])
    return field.parts[field.data[0]].tolist()[0]


def field_types(field) -> tuple[Any, Any]:
    """(value type, element type or None) of a gguf.ReaderField, as GGUFWriter.add_key_value
    takes them, so that a field is copied with `field_value(f, text=False)`."""
    from gguf import GGUFValueType as VT
    main = field.types[0]
    if main != VT.ARRAY:
        return main, None
    return main, field.types[-1] if len(field.types) > 1 else VT.UINT8
