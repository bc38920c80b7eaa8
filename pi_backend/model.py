"""Open a GGUF file, check it, and hand its tensors to the C engine in place (no copies).

The file is memory-mapped by gguf.GGUFReader; the C model keeps pointers into that map, so the
Model object owns the map for as long as the C model lives. PowerInfer's files (magic PWRI) are
read the same way, their keys and predictors mapped onto ours by pi_backend/powerinfer.py.
"""
from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import pickle
import weakref
from typing import Sequence

import gguf
import numpy as np

from . import _lib
from . import format as F
from . import kernels
from . import powerinfer
from ._lib import call, check, fptr
from .format import Keys, field_value
from .gguf_check import GGUFFormatError, check_file, check_hparams

FFN_MODES = {F.FFN_DENSE: _lib.PI_FFN_DENSE, F.FFN_SPARSE: _lib.PI_FFN_SPARSE,
             F.FFN_THRESHOLD: _lib.PI_FFN_THRESHOLD}
ARCHS = {name: getattr(_lib, f"PI_ARCH_{name.upper()}") for name in F.ARCHS}
ACTS = {name: getattr(_lib, f"PI_ACT_{name.upper()}") for name in F.ACTIVATIONS}
HEAD_MODES = {F.HEAD_DENSE: _lib.PI_HEAD_DENSE, F.HEAD_SPARSE: _lib.PI_HEAD_SPARSE}
# Large arrays that are not worth turning into metadata strings.
_BULKY = (gguf.Keys.Tokenizer.LIST, gguf.Keys.Tokenizer.MERGES, gguf.Keys.Tokenizer.TOKEN_TYPE,
          gguf.Keys.Tokenizer.SCORES)


class ModelError(ValueError):
    """The file cannot be run: unreadable, corrupt, or of an unsupported kind."""


class ContextOverflowError(ValueError):
    """More tokens than the context holds."""


@functools.lru_cache(maxsize=None)
def _map_reader_class():
    from gguf import GGUFReader

    class MapReader(GGUFReader):
        """gguf.GGUFReader over a plain ndarray view of its memory map (`mmap` keeps the
        np.memmap). The reader slices the map a few times per metadata value, about 200k times
        for a 49k-token vocabulary, and every np.memmap slice carries a dict of its own: plain
        views make the parse take half the memory and a third of the time. It reads PowerInfer's
        files too (`powerinfer` tells it read one): their magic check sees GGUF's."""

        @property
        def data(self):
            return self._array

        @data.setter
        def data(self, mm):
            self.mmap = mm
            self._array = mm.view(np.ndarray)
            self.powerinfer = powerinfer.is_powerinfer(self._array)
            if self.powerinfer:   # the reader's first read is its magic check
                self._get = self._magic_as_gguf

        def _magic_as_gguf(self, offset, dtype, count=1, override_order=None):
            """The first read of a PowerInfer file: its magic reads as GGUF's. Every later read
            is the class's `_get` again (a read of anything else first falls through to it, and
            the reader then refuses the magic)."""
            del self._get
            if offset == 0 and count == 1 and np.dtype(dtype).itemsize == 4:
                return np.frombuffer(powerinfer.GGUF_MAGIC, dtype=np.uint32)
            return self._get(offset, dtype, count, override_order)
    return MapReader


def read_gguf(path: str):
    """A gguf.GGUFReader for `path` (a GGUF or PowerInfer file), with every failure turned into
    a one-line ModelError. The header is bounds-checked first (gguf_check), so the reader only
    walks a sane file."""
    if not os.path.exists(path):
        raise ModelError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ModelError(f"model path is a directory, not a GGUF file: {path}")
    try:
        check_file(path)
        return _map_reader_class()(path, "r")
    except Exception as e:  # the reader raises many kinds on truncated or corrupt files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"cannot read GGUF file {path}: {msg}") from None


def _anonymous_copy(a: np.ndarray) -> np.ndarray:
    """A copy of `a` in page-aligned anonymous memory of its own: pi_model_finalize's release
    of a repacked matrix's pages (rounded out to whole pages) then drops nothing else."""
    out = np.frombuffer(mmap.mmap(-1, max(a.nbytes, 1)), dtype=a.dtype, count=a.size)
    out = out.reshape(a.shape)
    out[...] = a
    return out


def _release_pages(memmap) -> None:
    """Drops the file pages read while loading (the metadata, what the model copied) from this
    process (they stay in the page cache and fault back in where the engine still reads the file
    in place)."""
    mm = getattr(memmap, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass  # advisory only


class Model:
    """A GGUF model loaded for the C engine.

    repack: copy the matrices that only run dense (attention, output, and the FFN matrices no
    sparse mode reads) into the 8-row interleaved layout of the fast dense kernels; the file's
    pages are then released, so memory stays about the file size.
    """

    def __init__(self, path: str, *, ffn_mode: str | None = None, repack: bool = True,
                 head_mode: str | None = None, rope_freq_base: float = 0.0,
                 rope_freq_scale: float = 0.0):
        """head_mode: 'sparse' (the default where the file has an output preview) or 'dense'
        (the preview is then not loaded and the output matrix is repacked as usual).
        rope_freq_base / rope_freq_scale: llama.cpp's overrides of the (global layers') RoPE
        base and linear scale; 0: the file's."""
        self._ptr = _lib.pi_model_p()
        self._contexts = weakref.WeakSet()  # the open ones, closed by close()
        self._n_contexts = 0                # open contexts, counted (the C model outlives them)
        self._closed = False
        try:
            self._load(path, ffn_mode, repack, head_mode, rope_freq_base, rope_freq_scale)
        except BaseException as e:
            self.close()  # a failed load frees the C model now, not at garbage collection
            if isinstance(e, _lib.PiError):
                raise ModelError(f"{getattr(self, 'path', path)}: {e}") from None
            raise

    def _load(self, path, ffn_mode: str | None, repack: bool, head_mode: str | None,
              rope_freq_base: float = 0.0, rope_freq_scale: float = 0.0) -> None:
        self.path = os.fspath(path)
        reader = read_gguf(self.path)
        self._map = reader.mmap  # the memmap the C model points into
        self.powerinfer = reader.powerinfer  # a PowerInfer (PWRI) file
        # The parse of a large vocabulary makes ~70 MB of small objects. Python frees a block of
        # small objects only once every one in it is free, so a value kept from amid the parse
        # would keep a megabyte of it resident: what is kept leaves the parse as one pickle (a
        # single buffer outside those blocks) and is rebuilt after the parse is gone.
        tokens = reader.fields.get(gguf.Keys.Tokenizer.LIST)
        kept = pickle.dumps((
            {k: field_value(f) for k, f in reader.fields.items()
             if not k.startswith("GGUF.") and k not in _BULKY},
            len(tokens.data) if tokens is not None else None,
            [(t.name, int(t.tensor_type), [int(v) for v in t.shape], int(t.data_offset),
              int(t.n_bytes)) for t in reader.tensors]))
        reader = tokens = None
        _lib.trim_heap()
        self.fields, n_tokens, tensors = pickle.loads(kept)
        del kept
        added = self._map_powerinfer(tensors, ffn_mode) if self.powerinfer else {}
        self.metadata = {k: (str(v) if not isinstance(v, str) else v)
                         for k, v in self.fields.items()}
        self.hparams = self._hparams(n_tokens, tensors)
        for name, value in (("rope_freq_base", rope_freq_base),
                            ("rope_freq_scale", rope_freq_scale)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0 (0: the model's), got {value}")
            if value:
                setattr(self.hparams, name, float(value))
        call("pi_model_create", ctypes.byref(self.hparams), ctypes.byref(self._ptr))
        self._tensors = {}
        raw = self._map.view(np.ndarray)
        for name, type_id, ne, offset, nbytes in tensors:
            self._attach(name, type_id, ne, raw[offset:offset + nbytes])
        for name, (type_id, ne, data) in added.items():
            self._attach(name, type_id, ne, data)
        del tensors, added, raw
        thr = self.fields.get(Keys.THRESHOLDS)
        if thr is not None:
            if not isinstance(thr, list) or not all(isinstance(v, (int, float)) for v in thr):
                raise ModelError(f"{self.path}: {Keys.THRESHOLDS} must be an array of numbers")
            self.thresholds = np.ascontiguousarray(thr, dtype=np.float32)
            call("pi_model_set_thresholds", self._ptr, fptr(self.thresholds), len(self.thresholds))
        self._set_head(head_mode)
        call("pi_model_set_repack", self._ptr,
             _lib.PI_REPACK_RELEASE if repack else _lib.PI_REPACK_NONE)
        call("pi_model_finalize", self._ptr)
        packed = ctypes.c_int64()
        call("pi_model_repacked_bytes", self._ptr, ctypes.byref(packed))
        self.repacked_bytes = packed.value
        if packed.value:
            _release_pages(self._map)
        modes = ctypes.c_int32()
        call("pi_model_ffn_modes", self._ptr, ctypes.byref(modes))
        self.ffn_modes = tuple(k for k, v in FFN_MODES.items() if modes.value & (1 << v))
        mode = ffn_mode or self.fields.get(Keys.SPARSE_MODE) or F.FFN_DENSE
        if not isinstance(mode, str):
            raise ModelError(f"{self.path}: {Keys.SPARSE_MODE} must be a string")
        self.default_ffn_mode = self._check_mode(mode)
        call("pi_model_head_modes", self._ptr, ctypes.byref(modes))
        self.head_modes = tuple(k for k, v in HEAD_MODES.items() if modes.value & (1 << v))
        self.default_head_mode = self._check_head_mode(head_mode or self.head_modes[-1])

    def _set_head(self, head_mode: str | None) -> None:
        """Enables the sparse head with the file's candidate count, margin and window (pi.head.*) unless
        head_mode is 'dense': the model then keeps the output matrix in rows8, as without a
        preview, and never reads the preview."""
        if head_mode is not None and head_mode not in HEAD_MODES:
            raise ValueError(f"unknown head mode {head_mode!r}; expected one of "
                             f"{', '.join(HEAD_MODES)}")
        n, margin = self.fields.get(Keys.HEAD_CANDIDATES), self.fields.get(Keys.HEAD_MARGIN)
        if (n is None and margin is None) or head_mode == F.HEAD_DENSE:
            return
        window = self.fields.get(Keys.HEAD_WINDOW, 0.0)
        if (not isinstance(n, int) or isinstance(n, bool)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (margin, window))):
            raise ModelError(f"{self.path}: {Keys.HEAD_CANDIDATES} must be an integer and "
                             f"{Keys.HEAD_MARGIN} and {Keys.HEAD_WINDOW} numbers")
        call("pi_model_set_head", self._ptr, n, float(margin), float(window))

    # ---- construction ------------------------------------------------------------------------
    def _get(self, key, default=None, required=True):
        v = self.fields.get(key, default)
        if v is None and required:
            raise ModelError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return v

    def _hparams(self, n_tokens, tensors) -> _lib.pi_hparams:
        """The C hyperparameters from the metadata; n_tokens: the vocabulary's length, tensors:
        (name, type, ne, offset, bytes) of each tensor (for token_embd's shape)."""
        arch = self._get(Keys.ARCHITECTURE)
        if not isinstance(arch, str) or arch not in ARCHS:
            raise ModelError(f"{self.path}: unsupported architecture {arch!r} "
                             f"(supported: {', '.join(ARCHS)})")
        a = arch
        act = self.fields.get(Keys.FFN_ACTIVATION, F.ARCHS[arch].ffn_act)
        if not isinstance(act, str) or act not in ACTS:
            raise ModelError(f"{self.path}: unsupported FFN activation {Keys.FFN_ACTIVATION} = "
                             f"{act!r} (supported: {', '.join(ACTS)})")
        self.ffn_activation = act
        try:
            check_hparams(self.fields.get, arch)
        except GGUFFormatError as e:
            raise ModelError(f"{self.path}: {e}") from None
        n_embd = int(self._get(f"{a}.embedding_length"))
        n_head = int(self._get(f"{a}.attention.head_count"))
        head_dim = int(self.fields.get(f"{a}.attention.key_length") or n_embd // n_head)
        n_vocab = self.fields.get(f"{a}.vocab_size") or n_tokens
        if n_vocab is None:
            emb = [ne for name, _, ne, _, _ in tensors if name == F.T.TOKEN_EMBD]
            if not emb:
                raise ModelError(f"{self.path}: no vocabulary size and no {F.T.TOKEN_EMBD}")
            n_vocab = int(emb[0][1])
        scaling = self.fields.get(f"{a}.rope.scaling.type", "none")
        factor = float(self.fields.get(f"{a}.rope.scaling.factor") or 1.0)
        if scaling not in F.ROPE_SCALINGS:
            raise ModelError(f"{self.path}: RoPE scaling {a}.rope.scaling.type = {scaling!r} is "
                             f"not supported (supported: {', '.join(F.ROPE_SCALINGS)}; llama3 "
                             f"scaling is the {F.T.ROPE_FREQS} tensor)")
        self.n_ctx_train = int(self.fields.get(f"{a}.context_length") or 2048)
        n_layer = int(self._get(f"{a}.block_count"))
        return _lib.pi_hparams(
            arch=ARCHS[arch], ffn_act=ACTS[act], n_vocab=int(n_vocab), n_embd=n_embd,
            n_ff=int(self._get(f"{a}.feed_forward_length")),
            n_layer=n_layer, n_head=n_head,
            n_head_kv=int(self.fields.get(f"{a}.attention.head_count_kv") or n_head),
            head_dim=head_dim,
            n_rot=int(self.fields.get(f"{a}.rope.dimension_count") or head_dim),
            rope_neox=int(F.ARCHS[arch].rope_neox),
            rope_freq_base=float(self.fields.get(f"{a}.rope.freq_base") or 10000.0),
            rope_freq_scale=1.0 / factor if scaling == "linear" else 1.0,
            norm_eps=float(self._get(f"{a}.attention.layer_norm_rms_epsilon")),
            **self._attention_extras(a, n_layer, n_embd, n_head, head_dim))

    def _attention_extras(self, a: str, n_layer: int, n_embd: int, n_head: int,
                          head_dim: int) -> dict:
        """The hyperparameters beyond llama's, as llama.cpp reads them (0 where they do not
        apply): the attention and embedding scales, the sliding window (for an architecture
        with sliding layers: `attention.sliding_window`, its `sliding_window_pattern` period and
        the sliding layers' `rope.freq_base_swa`, with llama.cpp's defaults) and the final logit
        soft cap."""
        spec = F.ARCHS[a]
        scale = (self.fields.get(f"{a}.attention.scale") or
                 F.llama_cpp_attn_scale(a, n_layer, n_embd, n_head, head_dim))
        out = {"attn_scale": float(scale),
               "embd_scale": math.sqrt(n_embd) if spec.embd_scale else 0.0,
               "final_softcap": float(self.fields.get(f"{a}.final_logit_softcapping") or 0.0)}
        n_swa = self.fields.get(f"{a}.attention.sliding_window") if spec.swa_period else None
        if n_swa:
            period = self.fields.get(f"{a}.attention.sliding_window_pattern", spec.swa_period)
            out.update(n_swa=int(n_swa), swa_period=int(period), rope_freq_scale_swa=1.0,
                       rope_freq_base_swa=float(self.fields.get(f"{a}.rope.freq_base_swa")
                                                or spec.rope_freq_base_swa))
        return out

    def _map_powerinfer(self, tensors: list, ffn_mode: str | None) -> dict:
        """A PowerInfer file's keys and predictors as ours (pi_backend/powerinfer.py): its keys
        go into self.fields, the tensors the engine does not take from it leave `tensors`, and
        the ones it takes instead are returned, name -> (ggml type, GGUF dims, data)."""
        raw = self._map.view(np.ndarray)
        spans = {name: (off, off + n) for name, _, _, off, n in tensors}
        dims = {name: ne for name, _, ne, _, _ in tensors}
        try:
            pw = powerinfer.map_model(
                self.fields, {name: (t, tuple(reversed(ne))) for name, t, ne, _, _ in tensors},
                lambda name: raw[slice(*spans[name])],
                use_predictors=True if ffn_mode in (None, F.FFN_SPARSE) else None)
        except ValueError as e:
            raise ModelError(f"{self.path}: {e}") from None
        self.fields.update(pw.keys)
        tensors[:] = [t for t in tensors if F.split_name(t[0])[1] not in pw.drop]
        added = {}
        for il, parts in pw.add.items():
            for part, data, qt in parts:   # the same shapes as the parts they replace
                name = F.layer_name(il, part)
                added[name] = (qt, dims[name], _anonymous_copy(data))
        return added

    def _attach(self, name: str, type_id: int, ne: list, data: np.ndarray) -> None:
        """Hands tensor `name` (ggml type, GGUF dims ne, its bytes as stored) to the C model: a
        slice of the map, which gguf_check.check_file has placed inside the file, or an array
        of page-aligned memory of its own (pi_model_finalize may release its pages)."""
        n_cols = ne[0]
        n_rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
        if F.split_name(name)[1] == F.T.NEURON_ORDER:  # metadata for the converter; the engine needs none
            return
        if type_id not in kernels.weight_type_ids():
            raise ModelError(f"{self.path}: tensor {name} has type {F.ggml_type_name(type_id)}, which "
                             f"pi_backend does not run (supported: {', '.join(kernels.weight_types()).upper()})")
        dtype = {_lib.PI_TYPE_F32: np.float32, _lib.PI_TYPE_F16: np.float16}.get(type_id, np.uint8)
        data = data.view(dtype).reshape(n_rows, -1)
        try:
            call("pi_model_set_tensor", self._ptr, name.encode(), type_id, n_rows, n_cols,
                 ctypes.c_void_p(data.ctypes.data))
        except _lib.PiError as e:
            raise ModelError(f"{self.path}: {e}") from None
        self._tensors[name] = (type_id, data)

    def _check_mode(self, mode: str) -> str:
        if mode not in FFN_MODES:
            raise ValueError(f"unknown FFN mode {mode!r}; expected one of {', '.join(FFN_MODES)}")
        if mode not in self.ffn_modes:
            raise ValueError(f"FFN mode {mode!r} is not available for {os.path.basename(self.path)}"
                             f" (available: {', '.join(self.ffn_modes)})")
        return mode

    def _check_head_mode(self, mode: str) -> str:
        if mode not in HEAD_MODES:
            raise ValueError(f"unknown head mode {mode!r}; expected one of {', '.join(HEAD_MODES)}")
        if mode not in self.head_modes:
            raise ValueError(f"head mode {mode!r} is not available for {os.path.basename(self.path)}"
                             " (it has no output preview, or was loaded with head_mode='dense'; pi-convert --head-preview adds one)")
        return mode

    # ---- properties --------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    @property
    def n_embd(self) -> int:
        return self.hparams.n_embd

    @property
    def n_layer(self) -> int:
        return self.hparams.n_layer

    @property
    def n_ff(self) -> int:
        return self.hparams.n_ff

    @property
    def ptr(self):
        return self._ptr

    def tensor(self, name: str):
        """(ggml type id, the raw data as mapped from the file) of tensor `name`."""
        if name not in self._tensors:
            raise KeyError(f"{self.path}: no tensor {name}")
        return self._tensors[name]

    def set_thresholds(self, thresholds) -> None:
        """Sets the per-layer FFN thresholds ([n_layer]: |act(gate)| in threshold mode, the
        predictor logit in sparse mode). They are the model's, shared by all its contexts, and
        read at each decode step."""
        thr = np.ascontiguousarray(thresholds, dtype=np.float32).reshape(-1)
        if len(thr) != self.n_layer:
            raise ValueError(f"{len(thr)} thresholds for {self.n_layer} layers")
        call("pi_model_set_thresholds", self._ptr, fptr(thr), len(thr))
        self.thresholds = thr

    def new_context(self, n_ctx: int = 512, n_threads: int = 1, n_batch: int = 512,
                    ffn_mode: str | None = None, head_mode: str | None = None,
                    n_seq: int = 1) -> "Context":
        """A context of n_seq sequences of n_ctx positions each (decode_seqs runs them
        together; eval runs sequence 0)."""
        return Context(self, n_ctx, n_threads, n_batch, ffn_mode or self.default_ffn_mode,
                       head_mode or self.default_head_mode, n_seq)

    def close(self) -> None:
        """Closes the model's open contexts (their eval then raises) and frees the C model."""
        self._closed = True
        for ctx in list(self._contexts):
            ctx.close()
        if self._n_contexts == 0:  # otherwise (contexts collected in a cycle) the last one frees
            self._free()

    def _context_opened(self, ctx: "Context") -> None:
        self._contexts.add(ctx)
        self._n_contexts += 1

    def _context_closed(self) -> None:
        self._n_contexts -= 1
        if self._closed and self._n_contexts == 0:
            self._free()

    def _free(self) -> None:
        if self._ptr:
            _lib.lib().pi_model_free(self._ptr)
            self._ptr = _lib.pi_model_p()
        self._tensors = {}
        self._map = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Context:
    """One or more sequences (each its own KV cache), buffers and a worker pool, on a shared
    Model."""

    def __init__(self, model: Model, n_ctx: int, n_threads: int, n_batch: int, ffn_mode: str,
                 head_mode: str = F.HEAD_DENSE, n_seq: int = 1):
        if n_ctx <= 0 or n_threads <= 0 or n_batch <= 0 or n_seq <= 0:
            raise ValueError(f"n_ctx={n_ctx}, n_threads={n_threads}, n_batch={n_batch} and "
                             f"n_seq={n_seq} must be positive")
        if model._closed:
            raise ValueError(f"the model {os.path.basename(model.path)} is closed")
        self.model = model  # kept alive while this context is open
        self.n_ctx = int(n_ctx)
        self.n_seq = int(n_seq)
        self._ptr = _lib.pi_context_p()
        call("pi_context_create_seqs", model.ptr, self.n_ctx, int(n_batch), int(n_threads),
             self.n_seq, ctypes.byref(self._ptr))
        model._context_opened(self)
        self.ffn_mode = F.FFN_DENSE
        self.set_ffn_mode(ffn_mode)
        self.head_mode = F.HEAD_DENSE
        self.set_head_mode(head_mode)
        # One-token steps (decoding) reuse a token and a logits buffer whose pointers are made
        # once: the pointer conversions cost more than a small model's whole step.
        self._decode = _lib.lib().pi_decode
        self._tok1 = np.zeros(1, np.int32)
        self._last = np.empty(model.n_vocab, np.float32)
        self._tok1_p, self._last_p = _lib.iptr(self._tok1), fptr(self._last)

    def set_ffn_mode(self, mode: str) -> None:
        self.model._check_mode(mode)
        call("pi_context_set_ffn_mode", self._ptr, FFN_MODES[mode])
        self.ffn_mode = mode

    def set_head_mode(self, mode: str) -> None:
        """'dense': the full output matrix; 'sparse': the output preview picks the rows (the
        last token's logits of an eval without logits_all; the others run the full head)."""
        self.model._check_head_mode(mode)
        call("pi_context_set_head_mode", self._ptr, HEAD_MODES[mode])
        self.head_mode = mode

    def _span(self, what: str, tokens: Sequence[int], n_past: int) -> int:
        """len(tokens), checked: at least one, and positions n_past.. inside the context."""
        n = len(tokens)
        if n == 0:
            raise ValueError(f"{what} needs at least one token")
        if n_past < 0 or n_past + n > self.n_ctx:
            raise ContextOverflowError(
                f"Requested tokens ({n_past + n}) exceed context window of {self.n_ctx}")
        return n

    def eval(self, tokens: Sequence[int], n_past: int, logits_all: bool = False) -> np.ndarray:
        """Runs tokens at positions n_past.. and returns the logits of the last token
        ([n_vocab]) or of every token ([n_tokens, n_vocab])."""
        n = self._span("eval", tokens, n_past)
        if n == 1 and not logits_all:
            self._tok1[0] = tokens[0]
            status = self._decode(self._ptr, self._tok1_p, 1, int(n_past), self._last_p, 0)
            if status:
                self._fail(status)
            return self._last.copy()
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        nv = self.model.n_vocab
        out = np.empty((n, nv) if logits_all else (nv,), dtype=np.float32)
        status = self._decode(self._ptr, _lib.iptr(toks), n, int(n_past), fptr(out),
                              1 if logits_all else 0)
        if status:
            self._fail(status)
        return out

    def hidden(self, tokens: Sequence[int], n_past: int) -> np.ndarray:
        """Runs tokens like eval() and returns their final normed hidden states ([n_tokens,
        n_embd]: what the output head reads; llama.cpp's embeddings) instead of logits."""
        n = self._span("hidden", tokens, n_past)
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        out = np.empty((n, self.model.n_embd), dtype=np.float32)
        status = _lib.lib().pi_decode_hidden(self._ptr, _lib.iptr(toks), n, int(n_past), fptr(out))
        if status:
            self._fail(status)
        return out

    def decode_seqs(self, tokens: Sequence[int], seq: Sequence[int], pos: Sequence[int],
                    want: Sequence[bool]) -> np.ndarray:
        """Runs token i of sequence seq[i] at position pos[i], all in one pass over the weights,
        and returns the logits of the tokens with want[i] ([n_want, n_vocab], in order). A
        sequence's first token here continues its cache (a position <= seq_len), its next ones
        follow one by one; the logits are those of running each sequence alone."""
        n = len(tokens)
        if n == 0:
            raise ValueError("decode_seqs needs at least one token")
        if not len(seq) == len(pos) == len(want) == n:
            raise ValueError(f"decode_seqs: {n} tokens, {len(seq)} sequences, {len(pos)} positions "
                             f"and {len(want)} flags: one of each per token")
        over = [p for p in pos if p >= self.n_ctx]
        if over:
            raise ContextOverflowError(
                f"Requested tokens ({max(over) + 1}) exceed context window of {self.n_ctx}")
        toks, sq, ps = (np.ascontiguousarray(v, dtype=np.int32) for v in (tokens, seq, pos))
        w = np.ascontiguousarray(want, dtype=np.int8)
        out = np.empty((int(np.count_nonzero(w)), self.model.n_vocab), np.float32)
        status = _lib.lib().pi_decode_seqs(self._ptr, _lib.iptr(toks), _lib.iptr(sq), _lib.iptr(ps),
                                           n, w.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
                                           fptr(out))
        if status:
            self._fail(status)
        return out

    def get_state(self, n_tokens: int) -> bytes:
        """The KV cache of positions 0 .. n_tokens - 1 (pi_context_get_state's buffer)."""
        size = ctypes.c_int64()
        call("pi_context_state_size", self._ptr, int(n_tokens), ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        call("pi_context_get_state", self._ptr, int(n_tokens), buf, size.value)
        return buf.raw

    def set_state(self, n_tokens: int, state: bytes) -> None:
        """Writes a get_state buffer back into positions 0 .. n_tokens - 1 (checked: size and
        the model's shape)."""
        state = bytes(state)
        call("pi_context_set_state", self._ptr, int(n_tokens), state, len(state))

    def seq_len(self, seq: int) -> int:
        """Positions of sequence seq's cache written so far."""
        v = ctypes.c_int32()
        call("pi_context_seq_len", self._ptr, int(seq), ctypes.byref(v))
        return v.value

    def _fail(self, status: int) -> None:
        """Raises for a failed pi_decode: a closed context or non-finite logits (the model's
        fault: ModelError) are told apart from the library's other errors (PiError)."""
        if not self._ptr:
            raise ValueError("this context is closed (or its model was closed)")
        if status == _lib.PI_ERR_NUMERIC:
            msg = _lib.lib().pi_last_error().decode("utf-8", "replace")
            raise ModelError(f"{self.model.path}: {msg}")
        check(status)

    def record(self, tokens: Sequence[int], n_past: int, *, ffn_in: bool = True,
               gate: bool = True, h: bool = True) -> dict:
        """Runs tokens like eval() and returns, per token and layer, the FFN input
        ([n, n_layer, d]), the gate pre-activation and the down input act(gate)*up
        ([n, n_layer, n_ff]); the arrays not asked for are omitted."""
        n, L = len(tokens), self.model.n_layer
        d, ff = self.model.n_embd, self.model.n_ff
        bufs = {"ffn_in": np.empty((n, L, d), np.float32) if ffn_in else None,
                "gate": np.empty((n, L, ff), np.float32) if gate else None,
                "h": np.empty((n, L, ff), np.float32) if h else None}
        ptrs = [fptr(b) if b is not None else None for b in bufs.values()]
        call("pi_context_set_recorder", self._ptr, *ptrs, n)
        try:
            self.eval(tokens, n_past)
        finally:
            call("pi_context_set_recorder", self._ptr, None, None, None, 0)
        return {k: v for k, v in bufs.items() if v is not None}

    def stats(self) -> dict:
        s = _lib.pi_stats()
        call("pi_context_stats", self._ptr, ctypes.byref(s))
        n = s.ffn_neurons
        return {"tokens": s.tokens, "ffn_neurons": n, "ffn_active": s.ffn_active,
                "ffn_down_active": s.ffn_down_active,
                "ffn_sparsity": 1.0 - s.ffn_active / n if n else 0.0,
                "ffn_down_sparsity": 1.0 - s.ffn_down_active / n if n else 0.0,
                "ffn_pass_neurons": s.ffn_pass_neurons, "ffn_pass_active": s.ffn_pass_active,
                "ffn_pass_down": s.ffn_pass_down, "ffn_bytes": s.ffn_bytes,
                **self.head_stats()}

    def head_stats(self) -> dict:
        """The sparse head's steps, fallbacks to the full head and exact rows computed."""
        v = [ctypes.c_int64() for _ in range(3)]
        call("pi_context_head_stats", self._ptr, *(ctypes.byref(x) for x in v))
        return {"head_steps": v[0].value, "head_fallbacks": v[1].value,
                "head_exact_rows": v[2].value}

    def reset_stats(self) -> None:
        call("pi_context_reset_stats", self._ptr)

    def close(self) -> None:
        if self._ptr:
            _lib.lib().pi_context_free(self._ptr)
            self._ptr = _lib.pi_context_p()
            self.model._context_closed()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
