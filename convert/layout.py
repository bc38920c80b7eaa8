"""The output layout (docs/FORMAT.md) and the streaming GGUF writer.

Every output tensor is planned first (name, shape, type, byte size), so that the GGUF header and
tensor infos can be written before any data; then each tensor is loaded from the source,
reshaped (the FFN down weight is transposed into `ffn_down_t` BEFORE quantizing, so that its
quantization blocks run along d), quantized with gguf.quants (vectorized numpy, in row chunks)
and written, one at a time. The file is written under a temporary name and renamed at the end.
"""
from __future__ import annotations

import os
import resource
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT, GGUFValueType as VT

from pi_backend import format as F
from pi_backend.format import FORMAT_VERSION, Keys, T, field_types, field_value, layer_name

from .model import ConvertError, HParams, SourceTensor
from .predictors import Predictors

# "auto" (None): a GGUF source's tensors keep their types and bytes (only ffn_down_t is made);
# from a Hugging Face checkpoint it means f16 (convert resolves it: resolve_outtype).
AUTO = "auto"
OUTTYPES: dict[str, QT | None] = {AUTO: None, "f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0,
                                  "q4_0": QT.Q4_0, "q4_1": QT.Q4_1}
# ffn_down_t's types (--down-type): those gguf.quants can write, as ffn_down_t is re-quantized
DOWN_TYPES: dict[str, QT] = {"f32": QT.F32, "f16": QT.F16, "q8_0": QT.Q8_0, "q5_1": QT.Q5_1,
                             "q5_0": QT.Q5_0, "q4_1": QT.Q4_1, "q4_0": QT.Q4_0}
FILE_TYPES = {QT.F32: gguf.LlamaFileType.ALL_F32, QT.F16: gguf.LlamaFileType.MOSTLY_F16,
              QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
              QT.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1}

# A source's tensors, in the order they are written.
_LAYER_ORDER = [T.ATTN_NORM, T.ATTN_Q, T.ATTN_Q_BIAS, T.ATTN_Q_NORM, T.ATTN_K, T.ATTN_K_BIAS,
                T.ATTN_K_NORM, T.ATTN_V, T.ATTN_V_BIAS, T.ATTN_OUT, T.ATTN_POST_NORM, T.FFN_NORM,
                T.FFN_GATE, T.FFN_UP, T.FFN_DOWN, T.FFN_POST_NORM]
_ROPE_FREQS = T.ROPE_FREQS     # llama 3 sources; carried as it is
_GLOBALS_FIRST = [T.TOKEN_EMBD, _ROPE_FREQS]
_GLOBALS_LAST = [T.OUTPUT_NORM, T.OUTPUT]


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]        # numpy shape [rows][cols]
    qtype: QT
    produce: Callable[[], np.ndarray]   # float32 data in the final shape (raw: the stored bytes)
    raw: bool = False             # produce gives the source's bytes of qtype, written as they are
    why: str = ""                 # the summary's reason for qtype

    @property
    def nbytes(self) -> int:
        bs, ts = gguf.GGML_QUANT_SIZES[self.qtype]
        n = int(np.prod(self.shape))
        return n // bs * ts


@dataclass
class Summary:
    outfile: Path
    source: str
    vocab: str
    layout: str
    activation: str
    outtype: str
    n_tensors: int
    nbytes: int
    types: Counter
    seconds: float
    peak_rss_mib: float
    predictors: str
    warnings: list[str] = field(default_factory=list)
    report: str = ""              # calibration report (per-layer table), when calibrated
    placement: Counter = field(default_factory=Counter)   # (type, why) -> tensors

    def placement_lines(self) -> list[str]:
        """One line per reason: the types (with tensor counts) that reason placed."""
        by_why: dict[str, list[str]] = {}
        for (qtype, why), n in sorted(self.placement.items()):
            by_why.setdefault(why, []).append(f"{qtype} x{n}")
        return [f"{'types' if i == 0 else '':<10} {', '.join(v)}: {why}"
                for i, (why, v) in enumerate(by_why.items())]

    def text(self) -> str:
        types = ", ".join(f"{k} x{v}" for k, v in sorted(self.types.items()))
        lines = [
            f"wrote      {self.outfile}",
            f"source     {self.source}",
            f"size       {self.nbytes / 2**20:.1f} MiB, {self.n_tensors} tensors ({types})",
            f"outtype    {self.outtype}; layout {self.layout}; FFN activation {self.activation}",
            *self.placement_lines(),
            f"tokenizer  {self.vocab}",
            f"predictors {self.predictors}",
            f"time       {self.seconds:.1f} s; peak RSS {self.peak_rss_mib:.0f} MiB",
        ]
        lines += [f"warning    {w}" for w in self.warnings]
        if self.report:
            lines.append(self.report)
        return "\n".join(lines)


def _is_vector(name: str, shape: tuple[int, ...]) -> bool:
    """Norms, biases and rope_freqs: f32 vectors in every file the engine reads."""
    return len(shape) == 1 or name.endswith(".bias") or "norm" in name or name == _ROPE_FREQS


def pick_type(name: str, shape: tuple[int, ...], outtype: QT, warnings: list[str]) -> QT:
    if _is_vector(name, shape):
        return QT.F32
    if F.split_name(name)[1] in (T.FC1, T.FC2):
        return QT.F32 if outtype == QT.F32 else QT.F16
    if name in (T.TOKEN_EMBD, T.OUTPUT) and outtype in (QT.Q4_0, QT.Q4_1):
        # the output projection is the most sensitive matrix (llama.cpp's 4-bit file types keep
        # it at higher precision too): 4-bit files keep it at q8_0
        outtype = QT.Q8_0
    bs, _ = gguf.GGML_QUANT_SIZES[outtype]
    if shape[-1] % bs:
        warnings.append(f"{name}: row length {shape[-1]} is not a multiple of {bs}; kept f16")
        return QT.F16
    return outtype


def encode(a: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 -> the bytes (or f32/f16 array) of `qtype`, quantizing in row chunks."""
    if qtype == QT.F32:
        return np.ascontiguousarray(a, dtype=np.float32)
    if qtype == QT.F16:
        return np.ascontiguousarray(a, dtype=np.float16)
    if qtype == QT.I32:
        return np.ascontiguousarray(a, dtype=np.int32)
    a2 = a.reshape(-1, a.shape[-1])
    out = np.empty(gguf.quant_shape_to_byte_shape(a2.shape, qtype), dtype=np.uint8)
    step = max(1, (1 << 22) // a2.shape[1])
    for i in range(0, a2.shape[0], step):
        out[i:i + step] = gguf.quants.quantize(a2[i:i + step], qtype)
    return out


def plan_tensors(hp: HParams, src: dict[str, SourceTensor], outtype: QT | None, dense: bool,
                 preds: Predictors | None, warnings: list[str],
                 neuron_orders: list[np.ndarray] | None = None,
                 keep_down: bool = False, down_type: str | None = None) -> list[OutTensor]:
    """The output tensors in order. outtype None (auto): every source tensor as it is where the
    engine runs its type; ffn_down_t of down_type, or of the type chosen for the source's."""
    per_layer: list[dict[str, SourceTensor]] = [{} for _ in range(hp.n_layer)]
    glob: dict[str, SourceTensor] = {}
    for name, t in src.items():
        il, rest = F.split_name(name)
        if il is None:
            if name not in _GLOBALS_FIRST + _GLOBALS_LAST:
                raise ConvertError(f"unexpected tensor {name!r} in the source")
            glob[name] = t
            continue
        if il >= hp.n_layer or rest not in _LAYER_ORDER:
            raise ConvertError(f"unexpected tensor {name!r} in the source")
        per_layer[il][rest] = t
    for g in (T.TOKEN_EMBD, T.OUTPUT_NORM):
        if g not in glob:
            raise ConvertError(f"missing tensor {g} in the source")
    dims = F.dims(hp.n_embd, hp.n_ff, hp.n_vocab, hp.n_head, hp.n_head_kv, hp.head_dim)
    want = F.SPECS[T.TOKEN_EMBD].shape(dims)
    if glob[T.TOKEN_EMBD].shape != want:
        raise ConvertError(f"inconsistent shapes: token_embd is {list(glob[T.TOKEN_EMBD].shape)}"
                           f", expected {list(want)}")
    # what the engine requires of the architecture, and the plain down projection the split
    # one is made from
    required = [s.name for s in F.LAYER_TENSORS if s.required_by(hp.arch)] + [T.FFN_DOWN]
    for il, layer in enumerate(per_layer):
        for r in required:
            if r not in layer:
                raise ConvertError(f"missing tensor {layer_name(il, r)} in the source")
        for r in (T.FFN_GATE, T.FFN_UP, T.FFN_DOWN):
            shp = F.SPECS[r].shape(dims)
            if layer[r].shape != shp:
                raise ConvertError(f"inconsistent shapes: {layer_name(il, r)} is "
                                   f"{list(layer[r].shape)}, expected {list(shp)}")

    plan: list[OutTensor] = []

    def add(name: str, shape: tuple[int, ...], produce: Callable[[], np.ndarray],
            t: SourceTensor | None = None) -> None:
        if outtype is None and t is not None:
            plan.append(_kept(name, t, warnings))
            return
        ot = QT.F16 if outtype is None else outtype      # (QT.F32 is 0: no `or` here)
        qt = pick_type(name, shape, ot, warnings)
        why = ("norms and vectors are f32" if qt == QT.F32 and len(shape) == 1 else
               "predictors" if F.split_name(name)[1] in (T.FC1, T.FC2) else
               f"--outtype {ot.name.lower()}")
        plan.append(OutTensor(name, tuple(shape), qt, produce, why=why))

    for g in _GLOBALS_FIRST:
        if g in glob:
            add(g, glob[g].shape, glob[g].load, glob[g])
    for il, layer in enumerate(per_layer):
        for r in _LAYER_ORDER:
            if r not in layer:
                continue
            t = layer[r]
            if r == T.FFN_DOWN and not dense:
                if keep_down:  # the plain layout too: dense mode reads it at full speed
                    add(layer_name(il, r), t.shape, t.load, t)
                name, shape = layer_name(il, T.FFN_DOWN_T), F.SPECS[T.FFN_DOWN_T].shape(dims)
                qt, why = down_t_type(outtype, down_type, t.src_type, warnings)
                plan.append(OutTensor(name, shape, pick_type(name, shape, qt, warnings),
                                      _transposed(t.load), why=why))
            else:
                add(layer_name(il, r), t.shape, t.load, t)
        if preds is not None and not dense:
            rank = preds.ranks[il]
            add(layer_name(il, T.FC1), (rank, hp.n_embd), _pred(preds, il, 0))
            add(layer_name(il, T.FC2), (hp.n_ff, rank), _pred(preds, il, 1))
        if neuron_orders is not None and not dense:   # hot-first permutation (int32)
            order = np.ascontiguousarray(neuron_orders[il], dtype=np.int32)
            plan.append(OutTensor(layer_name(il, T.NEURON_ORDER), (hp.n_ff,), QT.I32,
                                  lambda o=order: o))
    for g in _GLOBALS_LAST:
        if g in glob:
            add(g, glob[g].shape, glob[g].load, glob[g])
    return plan


def _kept(name: str, t: SourceTensor, warnings: list[str]) -> OutTensor:
    """--outtype auto: the source's tensor as it is where the engine runs its type (matrices:
    any weight type of the kernels; vectors: f32); else re-encoded at q8_0 (or f16/f32)."""
    from pi_backend import kernels
    if t.qtype is not None and t.load_raw is not None:
        runs = (t.qtype == QT.F32 if _is_vector(name, t.shape)
                else t.qtype in kernels.weight_type_ids())
        if runs:
            return OutTensor(name, t.shape, QT(t.qtype), t.load_raw, raw=True,
                             why="as in the source")
        qt = pick_type(name, t.shape, QT.Q8_0, warnings)
        return OutTensor(name, t.shape, qt, t.load,
                         why=f"the source's {QT(t.qtype).name} is not a type pi_backend runs")
    return OutTensor(name, t.shape, pick_type(name, t.shape, QT.F16, warnings), t.load,
                     why="--outtype auto from floating-point weights")


def down_t_type(outtype: QT | None, down_type: str | None, src_type: str,
                warnings: list[str]) -> tuple[QT, str]:
    """ffn_down_t's type and why. The down weight is transposed, so a quantized source's blocks
    are re-quantized along the other axis: a source already quantized to few bits along n_ff
    (a llama.cpp ffn_down) loses much more when re-quantized to 4 bits along d (SmolLM2-135M
    Q4_1: +3.6% perplexity, KL 0.074 against its own ffn_down), so such a source gets q8_0,
    which keeps the cost within AUTO_DOWN_COST (docs/FORMAT.md gives the measurements)."""
    quantized = src_type.upper().startswith(("Q", "IQ", "TQ"))
    if down_type is not None:
        return DOWN_TYPES[down_type], "--down-type"
    if outtype is None:
        if quantized:
            return QT.Q8_0, (f"ffn_down ({src_type}) transposed and re-quantized along d: q8_0 "
                             f"keeps the cost within {AUTO_DOWN_COST:.1%} perplexity")
        return QT.F16, f"ffn_down ({src_type}) transposed, f16"
    if outtype in (QT.Q4_0, QT.Q4_1) and quantized:
        note = "ffn_down_t kept at q8_0: the source's 4-bit ffn_down re-quantized along the other axis loses too much"
        if note not in warnings:
            warnings.append(note)
        return QT.Q8_0, note
    return outtype, f"--outtype {outtype.name.lower()}, transposed"


# The perplexity cost --outtype auto allows ffn_down_t's re-quantization (issue: at most 0.5%).
AUTO_DOWN_COST = 0.005


def _transposed(load: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: np.ascontiguousarray(load().T)


def _pred(preds: Predictors, il: int, which: int) -> Callable[[], np.ndarray]:
    return lambda: preds.load(il)[which]


def _add_hparams(w: gguf.GGUFWriter, hp: HParams, source) -> None:
    if hp.extra_kv:     # a GGUF source: its keys, verbatim
        for key, (val, typ, sub) in hp.extra_kv.items():
            w.add_key_value(key, val, typ, sub)
        return
    if hp.name:
        w.add_name(hp.name)
    w.add_context_length(hp.ctx_len)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_rope_dimension_count(hp.head_dim)
    w.add_vocab_size(hp.n_vocab)
    if hp.head_dim != hp.n_embd // hp.n_head:
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    if hp.rope_scaling:
        kind = hp.rope_scaling.get("rope_type", hp.rope_scaling.get("type"))
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(hp.rope_scaling["factor"]))
    if hp.n_swa:
        w.add_sliding_window(hp.n_swa)
        w.add_sliding_window_pattern(hp.swa_period)
        w.add_rope_freq_base_swa(hp.rope_theta_swa)
    if hp.attn_scale is not None:
        w.add_attention_scale(hp.attn_scale)
    if hp.final_softcap:
        w.add_final_logit_softcapping(hp.final_softcap)


def _add_pi_meta(w: gguf.GGUFWriter, hp: HParams, preds: Predictors | None, source_desc: str,
                 reordered: bool = False) -> None:
    w.add_uint32(Keys.FORMAT_VERSION, FORMAT_VERSION)
    w.add_string(Keys.FFN_ACTIVATION, hp.activation)
    w.add_string(Keys.FFN_LAYOUT, F.FFN_LAYOUT_SPLIT)
    add_keys(w, predictor_keys(preds, reordered))
    w.add_string(Keys.SOURCE, source_desc)


def predictor_keys(preds, reordered: bool) -> dict:
    """The file's default FFN mode, whether neurons are reordered, and the predictors'
    thresholds and ranks (preds: anything with .thresholds, .ranks and .threshold, or None)."""
    keys = {Keys.SPARSE_MODE: F.FFN_SPARSE if preds is not None else F.FFN_DENSE,
            Keys.NEURON_ORDER: bool(reordered)}
    if preds is not None:
        keys[Keys.THRESHOLDS] = [float(x) for x in preds.thresholds]
        keys[Keys.PREDICTOR_RANKS] = [int(r) for r in preds.ranks]
        keys[Keys.POWERINFER_THRESHOLD] = float(preds.threshold)
    return keys


def add_keys(w: gguf.GGUFWriter, keys) -> None:
    """Adds metadata keys typed by their values: str, bool, float (f32), int (u32), and lists of
    ints (u32 arrays) or of numbers (f32 arrays)."""
    for k, v in keys.items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, (bool, np.bool_)):
            w.add_bool(k, bool(v))
        elif isinstance(v, (list, tuple, np.ndarray)):
            ints = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v)
            w.add_key_value(k, [int(x) if ints else float(x) for x in v], VT.ARRAY,
                            VT.UINT32 if ints else VT.FLOAT32)
        elif isinstance(v, (float, np.floating)):
            w.add_float32(k, float(v))
        else:
            w.add_uint32(k, int(v))


def copy_fields(reader, writer: gguf.GGUFWriter, skip=()) -> None:
    """Copies every metadata field of `reader` (a gguf.GGUFReader) to `writer` as it is, except
    the reader's own GGUF.* fields, the architecture (the writer has it) and the keys in skip."""
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == Keys.ARCHITECTURE or key in skip:
            continue
        writer.add_key_value(key, field_value(f, text=False), *field_types(f))


@contextmanager
def replacing_writer(dst: Path, arch: str, tag: str = "tmp"):
    """A GGUFWriter on a temporary file beside dst (".<name>.<pid>.<tag>"): closed and renamed
    to dst when the block ends, closed and removed when it raises."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{tag}")
    w = gguf.GGUFWriter(tmp, arch)
    try:
        yield w
        w.close()
        os.replace(tmp, dst)
    except BaseException:
        w.close()
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def write_model(source, outfile: Path, outtype_name: str, dense: bool,
                preds: Predictors | None, progress: bool = True,
                t0: float | None = None,
                neuron_orders: list[np.ndarray] | None = None,
                keep_down: bool = False, down_type: str | None = None) -> Summary:
    t0 = time.perf_counter() if t0 is None else t0
    hp: HParams = source.hparams
    outtype = OUTTYPES[outtype_name]
    warnings: list[str] = []
    if dense and hp.activation != F.ARCHS[hp.arch].ffn_act:
        warnings.append(f"--dense with a {hp.activation} FFN: llama.cpp's {hp.arch} graph "
                        f"applies {F.ARCHS[hp.arch].ffn_act}, so llama.cpp will not reproduce "
                        "this model")
    llama_cpp_scale = F.llama_cpp_attn_scale(hp.arch, hp.n_layer, hp.n_embd, hp.n_head,
                                             hp.head_dim)
    if dense and hp.attn_scale is not None and not np.isclose(hp.attn_scale, llama_cpp_scale,
                                                              rtol=1e-6, atol=0):
        warnings.append(f"--dense: llama.cpp's {hp.arch} graph ignores {hp.arch}.attention.scale "
                        f"({hp.attn_scale:g}, from query_pre_attn_scalar), so llama.cpp will not "
                        "reproduce this model")
    plan = plan_tensors(hp, source.tensors(), outtype, dense, preds, warnings, neuron_orders,
                        keep_down, down_type)
    file_type = (FILE_TYPES[outtype] if outtype is not None else
                 getattr(source, "file_type", None) or gguf.LlamaFileType.MOSTLY_F16)

    with replacing_writer(outfile, hp.arch) as w:
        _add_hparams(w, hp, source)
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab_desc = source.add_vocab(w, hp.n_vocab)
        if not dense:
            _add_pi_meta(w, hp, preds, source.description, neuron_orders is not None)
        for t in plan:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(plan), desc="pi-convert", unit="tensor", leave=False)
        try:
            for t in plan:
                a = t.produce()
                if t.raw:
                    if a.nbytes != t.nbytes:
                        raise ConvertError(f"inconsistent sizes: {t.name} has {a.nbytes} bytes, "
                                           f"expected {t.nbytes}")
                elif tuple(a.shape) != t.shape:
                    raise ConvertError(f"inconsistent shapes: {t.name} is {list(a.shape)}, "
                                       f"expected {list(t.shape)}")
                data = a if t.raw else encode(a, t.qtype)
                del a
                w.write_tensor_data(data)
                del data
                if bar is not None:
                    bar.set_postfix_str(t.name, refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pred_desc = "none"
    if preds is not None and not dense:
        pred_desc = (f"{len(preds.ranks)} layers from {preds.path}, ranks "
                     f"{min(preds.ranks)}..{max(preds.ranks)}, threshold {preds.threshold:g}")
    return Summary(
        outfile=outfile, source=source.description, vocab=vocab_desc,
        layout="dense (llama.cpp)" if dense else
        "split (ffn_down_t, and ffn_down for dense mode)" if keep_down else "split (ffn_down_t)",
        activation=hp.activation, outtype=outtype_name, n_tensors=len(plan),
        nbytes=outfile.stat().st_size, types=Counter(t.qtype.name.lower() for t in plan),
        placement=Counter((t.qtype.name.lower(), t.why) for t in plan),
        seconds=time.perf_counter() - t0, peak_rss_mib=rss, predictors=pred_desc,
        warnings=warnings)
